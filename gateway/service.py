"""The gateway service: a site file turned into a running engine with ports and drivers.

:class:`Gateway` builds every port (sound card, RTP, site link, memory) and its signalling
drivers from a :class:`~brug.gateway.site.SiteConfig`, creates the patches, and runs the
engine on the real-time clock in its own thread until stopped. On stop (SIGINT/SIGTERM in
``brug run``) every port is unkeyed before its device closes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from brug.gateway.engine import Engine, PortSettings
from brug.gateway.events import EventBus
from brug.gateway.ports.base import MemoryPort, Port
from brug.gateway.signalling import LineSquelch, Ptt, make_ptt, make_squelch
from brug.gateway.site import PortSpec, SiteConfig
from brug.hw_profiles.yamlconf import ConfigError


@dataclass
class BuiltPort:
    """A port with its settings and drivers, ready for :meth:`Engine.add_port`."""

    port: Port
    settings: PortSettings
    squelch: LineSquelch | None
    ptt: Ptt


def _device_names(kind: str) -> list[str]:
    import sounddevice as sd

    key = "max_input_channels" if kind == "input" else "max_output_channels"
    return [str(d["name"]) for d in sd.query_devices() if int(d[key]) > 0]


def resolve_device(site: SiteConfig, spec: PortSpec, kind: str) -> str:
    """Find the sound device for ``spec``'s input or output.

    ``brug_be1`` means ``brug_be1_in`` / ``brug_be1_out`` where those exist (virtual cards),
    else the one device whose name contains it (case-insensitive). Raises ConfigError naming
    the site file line when there is none or more than one.
    """
    want = spec.input_device if kind == "input" else spec.output_device
    key = f"ports.{spec.name}.device"
    if want is None:
        raise ConfigError(site.path, spec.line, key, f"no {kind} device given")
    names = _device_names(kind)
    suffix = "_in" if kind == "input" else "_out"
    for candidate in (want + suffix, want):
        if candidate in names:
            return candidate
    hits = [n for n in names if want.lower() in n.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(names) or "(none: is a sound server running? try `brug soundcards up`)"
    if not hits:
        raise ConfigError(site.path, spec.line, key,
                          f"no {kind} sound device matches {want!r}; {kind} devices: {listing}")
    raise ConfigError(site.path, spec.line, key, f"{want!r} matches several {kind} devices: "
                      f"{', '.join(hits)}; name one exactly")


def driver_params(spec: PortSpec, which: str) -> dict[str, Any]:
    """Keyword arguments for the port's squelch or PTT driver factory."""
    params = dict(spec.squelch_params if which == "squelch" else spec.ptt_params)
    params.setdefault("name", spec.name)
    if spec.pei is not None:
        params.setdefault("pei", dict(spec.pei))
    if spec.settings.talkgroup:
        params.setdefault("talkgroup", spec.settings.talkgroup)
    if spec.settings.network:
        params.setdefault("network", spec.settings.network)
    return params


def build_port(site: SiteConfig, spec: PortSpec) -> BuiltPort:
    """Build the device port and drivers of one site-file port (nothing is started)."""
    port: Port
    if spec.kind == "soundcard":
        from brug.gateway.ports.soundcard import SoundCardPort

        buffers: dict[str, Any] = dict(spec.buffers)    # latency, rx/tx set points
        port = SoundCardPort(spec.name, resolve_device(site, spec, "input"),
                             resolve_device(site, spec, "output"), rate_hz=spec.rate_hz,
                             channels=spec.channels, channel=spec.channel, **buffers)
    elif spec.kind == "rtp":
        from brug.gateway.rtp.port import RtpPort

        port = RtpPort.from_config(spec.name, dict(spec.raw))
    elif spec.kind == "link":
        from brug.gateway.rtp.link import LinkPort

        port = LinkPort.from_config(spec.name, dict(spec.raw))
    else:
        port = MemoryPort(spec.name)
    s = spec.settings
    try:
        squelch = None if s.squelch.type == "vox" else \
            make_squelch(s.squelch.type, **driver_params(spec, "squelch"))
        ptt = make_ptt(s.ptt.type, **driver_params(spec, "ptt"))
        bind = getattr(port, "bind_drivers", None)
        if callable(bind):
            bind(squelch, ptt)
    except (TypeError, ValueError) as exc:
        raise ConfigError(site.path, spec.line, f"ports.{spec.name}", str(exc)) from None
    return BuiltPort(port, s, squelch, ptt)


class Gateway:
    """A site's engine, ports and patches, run on the real-time clock.

    Parameters
    ----------
    site:
        The loaded site file.
    builder:
        Builds one port from its spec (default :func:`build_port`); tests and drills may pass
        one that builds memory ports.
    """

    def __init__(self, site: SiteConfig,
                 builder: Callable[[SiteConfig, PortSpec], BuiltPort] = build_port,
                 events: EventBus | None = None) -> None:
        self.site = site
        self.builder = builder
        self.engine = Engine(site.engine, events)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        for spec in site.ports.values():
            b = builder(site, spec)
            self.engine.add_port(b.port, b.settings, b.squelch, b.ptt)
        for patch in site.patches.values():
            self.engine.create_patch(patch.name, patch.members, patch.mode,
                                     dict(patch.priorities))

    def build(self, spec: PortSpec) -> BuiltPort:
        """Build a port for a (new) spec with this gateway's builder; used by profile switches."""
        return self.builder(self.site, spec)

    def start(self) -> None:
        """Start ports and the engine thread. Returns at once."""
        self.engine.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self.engine.run_realtime, args=(self._stop,),
                                        name="brug-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the engine thread, unkey every port, close every device. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.engine.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
