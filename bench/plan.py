"""How a scenario meets the engine: one port per network/talkgroup pair, and the patch.

Without a site file every ``network/talkgroup`` pair of the scenario becomes one port named
``<network>.<talkgroup>`` (so its output is ``tx/<network>.<talkgroup>.wav``); the pairs of
the scenario's patch are joined in one half-duplex patch, the others get ports too and must stay
silent to everybody. Defaults per technology (``networks[].technology`` in the script):

========  ==========================================  ========  =======  ======  =======
kind      COR                                          lead ms   hang ms  TOT s   guard ms
========  ==========================================  ========  =======  ======  =======
tetra     terminal call state (scripted, +40 ms)        300       200      60      100
lte       MCPTT floor-taken state (scripted, +20 ms)    150       200      60      100
analog    VOX -40/-46 dBFS, attack 10 ms, hang 300 ms   50        200      180     250
ip        always open (console), full mix               0         0        0       0
========  ==========================================  ========  =======  ======  =======

A site file (the gateway's, ``brug run SITE.yaml``) may name the ports instead: each port whose
``network``/``talkgroup`` match a pair of the scenario takes that pair, with the settings of its
profile and overrides; a COR line the bench cannot have (PEI, serial, CM108) is replaced by the
scripted call state, PTT by a lead time. Pairs the site does not map get default ports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brug.bench.scenario import Scenario, ScenarioError, port_name
from brug.gateway.engine import EngineConfig, PortSettings, PttSettings, SquelchSettings

#: COR of a scripted port: the engine polls the bench's ScriptedSquelch.
SCRIPTED = "scripted"


@dataclass(frozen=True)
class TechDefaults:
    kind: str
    squelch: SquelchSettings
    ptt: PttSettings
    cor_delay_ms: float = 0.0


TECH_DEFAULTS: dict[str, TechDefaults] = {
    "tetra": TechDefaults("tetra", SquelchSettings(type=SCRIPTED, attack_ms=0.0, hang_ms=0.0),
                          PttSettings(lead_ms=300.0, hang_ms=200.0, tot_s=60.0, guard_ms=100.0),
                          cor_delay_ms=40.0),
    "lte": TechDefaults("lte", SquelchSettings(type=SCRIPTED, attack_ms=0.0, hang_ms=0.0),
                        PttSettings(lead_ms=150.0, hang_ms=200.0, tot_s=60.0, guard_ms=100.0),
                        cor_delay_ms=20.0),
    "analog": TechDefaults("analog", SquelchSettings(type="vox", open_dbfs=-40.0,
                                                     close_dbfs=-46.0, attack_ms=10.0,
                                                     hang_ms=300.0),
                           PttSettings(lead_ms=50.0, hang_ms=200.0, tot_s=180.0,
                                       guard_ms=250.0)),
    "ip": TechDefaults("ip", SquelchSettings(type="vox", open_dbfs=-45.0, close_dbfs=-50.0,
                                             attack_ms=5.0, hang_ms=300.0),
                       PttSettings(lead_ms=0.0, hang_ms=0.0, tot_s=0.0, guard_ms=0.0)),
}

_TECH_WORDS = (("tetra", "tetra"), ("mcptt", "lte"), ("lte", "lte"), ("broadband", "lte"),
               ("analog", "analog"), ("analogue", "analog"), (" fm", "analog"),
               ("vhf", "analog"), ("uhf", "analog"), ("console", "ip"), ("ip", "ip"))


def technology_kind(technology: str) -> str | None:
    """Map a script's free-text ``technology`` to a kind: tetra, lte, analog, ip (or None)."""
    t = f" {technology.lower()} "
    for word, kind in _TECH_WORDS:
        if word in t:
            return kind
    return None


@dataclass(frozen=True)
class PortPlan:
    """One engine port of a replay.

    ``device_rate_hz`` is the rate of the terminal's audio (the network's native rate offline,
    the sound card's rate in a realtime replay); ``cor_delay_ms`` delays the scripted COR after
    key-up (scripted squelch only).
    """

    name: str
    pair: str
    kind: str
    device_rate_hz: int
    settings: PortSettings
    cor_delay_ms: float
    in_patch: bool

    @property
    def scripted(self) -> bool:
        return self.settings.squelch.type != "vox"


@dataclass(frozen=True)
class ReplayPlan:
    """Ports and patch of one replay of ``scenario``."""

    scenario: Scenario
    engine: EngineConfig
    ports: tuple[PortPlan, ...]
    patch_name: str
    patch_members: tuple[str, ...]
    mode: str = "half_duplex"
    priorities: Mapping[str, int] = field(default_factory=dict)
    site: str | None = None

    def port(self, name: str) -> PortPlan:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(name)

    def port_of_pair(self, pair: str) -> PortPlan:
        for p in self.ports:
            if p.pair == pair:
                return p
        raise KeyError(pair)

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready list of the ports and their timing, for metrics.json and the report."""
        out = []
        for p in self.ports:
            s = p.settings
            out.append({"port": p.name, "pair": p.pair, "kind": p.kind,
                        "device_rate_hz": p.device_rate_hz, "in_patch": p.in_patch,
                        "squelch": s.squelch.type, "cor_delay_ms": p.cor_delay_ms,
                        "lead_ms": s.ptt.lead_ms, "hang_ms": s.ptt.hang_ms,
                        "tot_s": s.ptt.tot_s, "guard_ms": s.ptt.guard_ms,
                        "priority": self.priorities.get(p.name, 0)})
        return out


def _kind_of(scenario: Scenario, pair: str) -> str:
    tech = scenario.technology(pair)
    kind = technology_kind(tech)
    if kind is None:
        net = pair.split("/", 1)[0]
        raise ScenarioError(scenario.path, 0, f"networks[{net}].technology",
                            f"cannot tell the kind of technology {tech!r}; name one of: "
                            "TETRA, LTE MCPTT, analog FM, IP console")
    return kind


def default_plan(scenario: Scenario, engine: EngineConfig | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> ReplayPlan:
    """One port per pair with the defaults of its technology; the scenario's patch.

    ``overrides`` maps a kind (``tetra``) or a port name to PttSettings / SquelchSettings
    field overrides, e.g. ``{"tetra": {"lead_ms": 400}}``.
    """
    overrides = overrides or {}
    ports = []
    for pair in scenario.pairs():
        kind = _kind_of(scenario, pair)
        d = TECH_DEFAULTS[kind]
        name = port_name(pair)
        ptt, sq, delay = d.ptt, d.squelch, d.cor_delay_ms
        for key in (kind, name):
            o = dict(overrides.get(key, {}))
            delay = float(o.pop("cor_delay_ms", delay))
            ptt = dataclasses.replace(ptt, **{k: v for k, v in o.items()
                                             if k in PttSettings.__dataclass_fields__})
            sq = dataclasses.replace(sq, **{k: v for k, v in o.items()
                                           if k in SquelchSettings.__dataclass_fields__
                                           and k not in PttSettings.__dataclass_fields__})
        net, tg = pair.split("/", 1)
        settings = PortSettings(name=name, network=net, talkgroup=tg, squelch=sq, ptt=ptt,
                                kind="memory")
        ports.append(PortPlan(name, pair, kind, scenario.native_rate(pair), settings, delay,
                              pair in scenario.patch_members))
    members = tuple(port_name(m) for m in scenario.patch_members)
    return ReplayPlan(scenario, engine or EngineConfig(), tuple(ports), scenario.patch_id,
                      members)


def site_plan(scenario: Scenario, site_path: str | Path) -> ReplayPlan:
    """Ports and patch from a gateway site file; unmapped pairs get default ports.

    Raises
    ------
    ScenarioError / ConfigError
        When the site names a network/talkgroup the scenario does not have, maps one pair to
        two ports, or has no patch joining scenario ports.
    """
    from brug.gateway.site import load_site

    site = load_site(site_path)
    base = default_plan(scenario, site.engine)
    by_pair: dict[str, PortPlan] = {}
    pairs = set(scenario.pairs())
    for name, spec in site.ports.items():
        s = spec.settings
        pair = f"{s.network}/{s.talkgroup}"
        if pair not in pairs:
            raise ScenarioError(site_path, spec.line, f"ports.{name}",
                                f"network/talkgroup {pair!r} is not in scenario "
                                f"{scenario.id!r} (pairs: {', '.join(sorted(pairs))})")
        if pair in by_pair:
            raise ScenarioError(site_path, spec.line, f"ports.{name}",
                                f"{pair!r} is already mapped to port {by_pair[pair].name!r}")
        kind = _kind_of(scenario, pair)
        sq = s.squelch
        delay = 0.0
        if sq.type != "vox":
            sq = dataclasses.replace(sq, type=SCRIPTED)
            delay = TECH_DEFAULTS[kind].cor_delay_ms
        settings = dataclasses.replace(s, squelch=sq, ptt=dataclasses.replace(s.ptt, type="none"),
                                       kind="memory")
        by_pair[pair] = PortPlan(name, pair, kind, scenario.native_rate(pair), settings, delay,
                                 pair in scenario.patch_members)
    ports = tuple(by_pair.get(p.pair, p) for p in base.ports)
    names = {p.name for p in ports}
    if len(names) != len(ports):
        raise ScenarioError(site_path, 0, "ports", "a site port name clashes with a default "
                                                   "port name of an unmapped pair")
    mapped = {p.name for p in by_pair.values()}
    for pname, patch in site.patches.items():
        if set(patch.members) & mapped:
            unknown = [m for m in patch.members if m not in mapped]
            if unknown:
                raise ScenarioError(site_path, patch.line, f"patches.{pname}.members",
                                    f"ports {', '.join(unknown)} carry no scenario talkgroup")
            members = tuple(patch.members)
            ports = tuple(dataclasses.replace(p, in_patch=p.name in members) for p in ports)
            return ReplayPlan(scenario, site.engine, ports, pname, members,
                              patch.mode, dict(patch.priorities), site=str(site_path))
    raise ScenarioError(site_path, 0, "patches", "no patch joins ports of the scenario")
