"""Adapter from the service layer's :class:`~brug.gateway.service.Gateway` to what the
control server needs (:class:`~brug.gateway.control.commands.GatewayLike`), and
:func:`open_control`, the one call ``brug run`` makes to restore state and serve control.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brug.gateway.control.commands import PortBuild
from brug.gateway.control.persist import restore_state
from brug.gateway.control.server import ControlServer, ControlSettings
from brug.gateway.engine import Engine

if TYPE_CHECKING:
    from brug.gateway.service import BuiltPort, Gateway
    from brug.gateway.site import SiteConfig

log = logging.getLogger(__name__)


class ReloadError(ValueError):
    """A site file that cannot be applied live (nothing was changed)."""

    user_error = True


class ServiceGateway:
    """Wraps a service :class:`Gateway` for the control server."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self._overrides: dict[str, str] = {}

    @property
    def engine(self) -> Engine:
        return self.gw.engine

    @property
    def site_path(self) -> Path | None:
        return Path(self.gw.site.path)

    @property
    def talkgroup_overrides(self) -> dict[str, str]:
        return self._overrides

    def profiles(self) -> list[dict[str, Any]]:
        from brug.hw_profiles.profile import list_profiles

        return [{"name": n} for n in list_profiles()]

    def talkgroups(self) -> list[dict[str, Any]]:
        """Talkgroups the site's ports are on (network, talkgroup, ports)."""
        rows: dict[tuple[str, str], list[str]] = {}
        for name, spec in self.gw.site.ports.items():
            s = spec.settings
            tg = self._overrides.get(name, s.talkgroup)
            if tg:
                rows.setdefault((s.network, tg), []).append(name)
        return [{"network": n, "talkgroup": t, "ports": p} for (n, t), p in sorted(rows.items())]

    def build_port(self, name: str, profile: str) -> PortBuild:
        """Re-resolve port ``name`` of the site file with ``profile`` and build it."""
        from brug.gateway.site import parse_site
        from brug.hw_profiles.profile import list_profiles

        site = self.gw.site
        if "/" not in profile and profile not in list_profiles():
            raise KeyError(f"profiles: {', '.join(list_profiles())}")
        data = copy.deepcopy(dict(site.raw))
        ports = dict(data.get("ports") or {})
        if name not in ports:
            raise KeyError(f"port {name!r} is not in the site file")
        raw = dict(ports[name])
        raw["profile"] = profile
        ports[name] = raw
        data["ports"] = ports
        site2 = parse_site(data, {}, site.path)
        return self._pb(self.gw.build(site2.ports[name]))

    @staticmethod
    def _pb(b: BuiltPort) -> PortBuild:
        return PortBuild(b.port, b.settings, b.squelch, b.ptt)

    def reload(self) -> dict[str, Any]:
        """Validate the site file, then apply changed ports and all patches in one engine
        call; on any failure nothing changes (the ports built for it are stopped)."""
        from brug.gateway.site import load_site

        old: SiteConfig = self.gw.site
        new = load_site(old.path)                     # raises ConfigError: nothing applied
        if set(new.ports) != set(old.ports):
            raise ReloadError(f"{old.path}: ports added or removed; restart `brug run` to "
                              "apply that")
        if new.engine != old.engine:
            raise ReloadError(f"{old.path}: engine settings changed; restart `brug run`")
        eng = self.engine
        live = eng.submit(lambda e: {n: e.port_settings(n).profile for n in e.port_names}
                          ).result(5.0)
        # ports whose site entry changed, or whose profile was switched live since
        changed = [n for n in new.ports if new.ports[n] != old.ports[n]
                   or live.get(n) != new.ports[n].settings.profile]
        built: dict[str, PortBuild] = {}
        try:
            for n in changed:
                b = self._pb(self.gw.build(new.ports[n]))
                b.port.start(eng.rate, eng.block)
                built[n] = b
        except BaseException:
            for b in built.values():
                b.port.stop()
            raise

        def apply(e: Engine) -> list[Any]:
            saved = {n: (list(p["members"]), p["mode"], dict(p["priorities"]))
                     for n, p in e.snapshot()["patches"].items()}
            try:
                for n in e.patch_names():
                    e.delete_patch(n)
                for p in new.patches.values():
                    e.create_patch(p.name, p.members, p.mode, dict(p.priorities))
            except BaseException:
                for n in e.patch_names():
                    e.delete_patch(n)
                for n, (m, mode, prio) in saved.items():
                    e.create_patch(n, m, mode, prio)
                raise
            return [e.replace_port(n, b.port, b.settings, b.squelch, b.ptt, start=False)
                    for n, b in built.items()]

        try:
            olds = eng.submit(apply).result(10.0)
        except BaseException:
            for b in built.values():
                b.port.stop()
            raise
        for p in olds:
            p.stop()
        self.gw.site = new
        self._overrides.clear()
        return {"ports_replaced": changed, "patches": sorted(new.patches)}


def open_control(gateway: Gateway, start: bool = True) -> ControlServer | None:
    """Restore the saved state and start the control plane for a service gateway.

    Call it *before* ``gateway.start()`` (the restore must come before the first tick).
    Returns ``None`` when the site file has no ``control:`` section with ``enabled: false``.
    """
    site = gateway.site
    section = dict(site.control or {})
    if section.pop("enabled", True) is False:
        return None
    base = Path(site.path).parent
    settings = ControlSettings.from_mapping(section, base=base)
    adapter = ServiceGateway(gateway)
    if settings.state_file is not None:
        path = settings.state_file
        if gateway.engine.running:     # already ticking: restore between two ticks
            warnings = gateway.engine.submit(lambda e: restore_state(path, adapter)).result(10.0)
        else:
            warnings = restore_state(path, adapter)
        for w in warnings:
            log.warning("%s", w)
    srv = ControlServer(adapter, settings)
    if start:
        srv.start()
    return srv
