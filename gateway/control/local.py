"""A small in-process gateway for the control plane: an engine plus named port factories.

It satisfies :class:`~brug.gateway.control.commands.GatewayLike` without a site file, for
drills, examples and tests that run the control plane on :class:`MemoryPort` ports; the
service layer (``brug run``) provides the full one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brug.gateway.control.commands import PortBuild
from brug.gateway.control.protocol import ProtocolError
from brug.gateway.engine import Engine, PortSettings
from brug.gateway.ports.base import MemoryPort

PortFactory = Callable[[str], PortBuild]


def memory_profile(profile: str, **settings: Any) -> PortFactory:
    """A factory building a :class:`MemoryPort` with ``PortSettings(**settings)``."""
    def build(name: str) -> PortBuild:
        return PortBuild(MemoryPort(name), PortSettings(name=name, profile=profile,
                                                        kind="memory", **settings))
    return build


class LocalGateway:
    """Engine + profile factories + talkgroup list; runs the engine on a real-time thread.

    Parameters
    ----------
    engine:
        The engine (ports already added).
    profiles:
        Profile name -> factory building a port for a port name.
    talkgroups:
        Rows for ``talkgroup.list``.
    reloader:
        Called by ``site.reload``; without it the request answers ``unavailable``.
    """

    def __init__(self, engine: Engine, profiles: dict[str, PortFactory] | None = None,
                 talkgroups: list[dict[str, Any]] | None = None,
                 reloader: Callable[[], dict[str, Any]] | None = None,
                 site_path: Path | None = None) -> None:
        self._engine = engine
        self._profiles = dict(profiles or {})
        self._talkgroups = list(talkgroups or [])
        self._reloader = reloader
        self._site_path = site_path
        self._overrides: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def site_path(self) -> Path | None:
        return self._site_path

    @property
    def talkgroup_overrides(self) -> dict[str, str]:
        return self._overrides

    def profiles(self) -> list[dict[str, Any]]:
        return [{"name": n} for n in sorted(self._profiles)]

    def talkgroups(self) -> list[dict[str, Any]]:
        return list(self._talkgroups)

    def build_port(self, name: str, profile: str) -> PortBuild:
        try:
            factory = self._profiles[profile]
        except KeyError:
            raise KeyError(f"profiles: {', '.join(sorted(self._profiles)) or '(none)'}") from None
        return factory(name)

    def reload(self) -> dict[str, Any]:
        if self._reloader is None:
            raise ProtocolError("unavailable", "this gateway has no site file to reload")
        return self._reloader()

    def run(self) -> None:
        """Start the engine on its real-time clock in a thread (returns when it ticks)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._engine.run_realtime, args=(self._stop,),
                                        name="brug-engine", daemon=True)
        self._thread.start()
        self._engine.submit(lambda e: None).result(5.0)

    def shutdown(self) -> None:
        """Stop the engine thread and the engine."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._engine.stop()


def memory_gateway(names: list[str], rate_hz: int = 16000, block_ms: float = 5.0,
                   profiles: tuple[str, ...] = ("mem-a", "mem-b"),
                   talkgroups: list[dict[str, Any]] | None = None) -> LocalGateway:
    """An engine with one :class:`MemoryPort` per name (profile ``profiles[0]``, VOX squelch)
    and ``memory_profile`` factories for every name in ``profiles``; not yet running."""
    from brug.gateway.engine import EngineConfig

    eng = Engine(EngineConfig(rate_hz=rate_hz, block_ms=block_ms))
    for n in names:
        eng.add_port(MemoryPort(n), PortSettings(name=n, profile=profiles[0], kind="memory"))
    return LocalGateway(eng, {p: memory_profile(p) for p in profiles}, talkgroups)
