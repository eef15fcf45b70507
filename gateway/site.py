"""The site file: engine settings, control endpoints, ports and patches, in one YAML file.

A site file as small as this works; every setting a port needs can be given inline, and a
``profile:`` (see ``brug profiles list``) supplies defaults that inline keys override::

    engine: {rate_hz: 16000, block_ms: 5}
    ports:
      be1: {device: brug_be1, network: be_astrid, talkgroup: BE-TAC3,
            squelch: {type: vox}, ptt: {type: none, lead_ms: 0}}
      nl1: {profile: c2000-mtm5400, device: brug_nl1, network: nl_c2000, talkgroup: NL-OPS2}
    patches:
      OP-TEST: {members: [be1, nl1], mode: half_duplex, priorities: {be1: 1}}

``device: brug_be1`` means ``brug_be1_in`` for capture and ``brug_be1_out`` for playback when
those exist (virtual cards), else a device whose name contains ``brug_be1``;
``device: {input: ..., output: ...}`` names them apart. Every mistake raises
:class:`~brug.hw_profiles.yamlconf.ConfigError` naming the file, line and key path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brug.gateway.engine import (
    EngineConfig,
    PortSettings,
    PttSettings,
    SquelchSettings,
    build_filters,
)
from brug.gateway.signalling import ptt_types, squelch_types
from brug.hw_profiles import load_profile, merge_overrides
from brug.hw_profiles.yamlconf import ConfigError, Positions, load_yaml, load_yaml_text
from brug.talkgroups.floor import Mode

#: Engine reference level: nominal speech is brought to this level inside the engine, dBFS.
REFERENCE_DBFS = -18.0
#: AGC settings a site port may give (``agc: {target_dbfs: -18}``): key -> (min, max).
_AGC_KEYS: dict[str, tuple[float, float]] = {
    "target_dbfs": (-40, -6), "max_gain_db": (0, 40), "min_gain_db": (-40, 0),
    "attack_ms": (1, 5000), "release_ms": (1, 20000), "gate_dbfs": (-90, -20),
}

PORT_KINDS = ("soundcard", "rtp", "link", "memory")
_SQUELCH_KEYS = ("type", "open_dbfs", "close_dbfs", "attack_ms", "hang_ms")
#: COR types that carry call-control state rather than an audio-derived line: never masked
#: while transmitting, so a network pre-emption is seen.
CALL_CONTROL_COR = ("pei", "ed137")
_PTT_KEYS = ("type", "lead_ms", "hang_ms", "tot_s", "guard_ms", "grant_timeout_ms")
_PORT_KEYS = ("type", "profile", "device", "rate_hz", "channels", "channel", "network",
              "talkgroup", "squelch", "ptt", "rx_gain_db", "tx_gain_db", "rx_level_dbfs",
              "tx_level_dbfs", "filters", "codec", "pei", "timing", "audio", "description",
              "gssi", "name", "agc", "buffers")
#: ``buffers`` of a sound-card port: key -> (lowest, highest, SoundCardPort argument); ms
_BUFFER_KEYS = {"latency_ms": (2.0, 200.0, "latency"), "rx_ms": (0.0, 200.0, "rx_setpoint_ms"),
                "tx_ms": (1.0, 200.0, "tx_setpoint_ms")}
_ENGINE_KEYS = {"rate_hz": (8000, 48000), "block_ms": (1.0, 40.0), "preroll_ms": (0.0, 1000.0),
                "history_s": (1.0, 60.0), "catchup_dbfs": (-90.0, 0.0),
                "catchup_max_blocks": (0, 64), "manual_key_limit_s": (1.0, 300.0)}


@dataclass(frozen=True)
class PortSpec:
    """One port of the site file, resolved (profile merged, inline overrides applied)."""

    name: str
    kind: str
    settings: PortSettings
    input_device: str | None = None
    output_device: str | None = None
    rate_hz: int = 48000
    channels: int = 1
    channel: int = 0
    squelch_params: Mapping[str, Any] = field(default_factory=dict)
    ptt_params: Mapping[str, Any] = field(default_factory=dict)
    pei: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0
    #: sound-card buffering, as :class:`~brug.gateway.ports.soundcard.SoundCardPort` keyword
    #: arguments (``latency`` in s, the set points in ms); empty: its defaults
    buffers: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PatchSpec:
    name: str
    members: tuple[str, ...]
    mode: str = "half_duplex"
    priorities: Mapping[str, int] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class SiteConfig:
    """A loaded, validated site file."""

    path: str
    engine: EngineConfig
    control: Mapping[str, Any]
    ports: Mapping[str, PortSpec]
    patches: Mapping[str, PatchSpec]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


class _Ctx:
    def __init__(self, path: str, pos: Positions) -> None:
        self.path, self.pos = path, pos

    def err(self, key: str, msg: str) -> ConfigError:
        line = self.pos.get(key, 0)
        k = key
        while not line and "." in k:
            k = k.rsplit(".", 1)[0]
            line = self.pos.get(k, 0)
        return ConfigError(self.path, line, key, msg)

    def number(self, key: str, v: Any, lo: float, hi: float, integer: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.err(key, f"must be a number, got {v!r}")
        if integer and v != int(v):
            raise self.err(key, f"must be a whole number, got {v!r}")
        if not lo <= v <= hi:
            raise self.err(key, f"{v!r} is outside {lo:g}..{hi:g}")
        return v

    def mapping(self, key: str, v: Any) -> Mapping[str, Any]:
        if not isinstance(v, Mapping):
            raise self.err(key, f"must be a mapping, got {type(v).__name__}")
        return v


def load_site(path: str | Path) -> SiteConfig:
    """Load and validate a site file; raises ConfigError (file, line, key path)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(str(path), 0, "", "no such site file")
    data, pos = load_yaml(p)
    return parse_site(data, pos, str(path))


def parse_site_text(text: str, path: str = "<site>") -> SiteConfig:
    data, pos = load_yaml_text(text, path)
    return parse_site(data, pos, path)


def parse_site(data: Any, pos: Positions, path: str) -> SiteConfig:
    ctx = _Ctx(path, pos)
    if not isinstance(data, Mapping):
        raise ConfigError(path, 1, "", "a site file is a mapping with engine, ports, patches")
    for k in data:
        if k not in ("engine", "control", "ports", "patches", "site", "description"):
            raise ctx.err(str(k), f"unknown section {k!r}; sections: engine, control, ports, "
                          "patches, site, description")
    eng = dict(ctx.mapping("engine", data.get("engine") or {}))
    for k, v in eng.items():
        if k == "clock":
            continue
        if k not in _ENGINE_KEYS:
            raise ctx.err(f"engine.{k}", f"unknown key; valid keys: "
                          f"{', '.join([*_ENGINE_KEYS, 'clock'])}")
        lo, hi = _ENGINE_KEYS[k]
        ctx.number(f"engine.{k}", v, lo, hi, integer=k in ("rate_hz", "catchup_max_blocks"))
    engine = EngineConfig(**eng)
    if engine.block * 1000 != round(engine.rate_hz * engine.block_ms):
        raise ctx.err("engine.block_ms", f"{engine.block_ms} ms is not a whole number of "
                      f"samples at {engine.rate_hz} Hz")
    control = dict(ctx.mapping("control", data.get("control") or {}))
    ports_raw = ctx.mapping("ports", data.get("ports") or {})
    if not ports_raw:
        raise ctx.err("ports", "a site needs at least one port")
    ports = {str(n): _port(ctx, str(n), ctx.mapping(f"ports.{n}", v), engine.rate_hz)
             for n, v in ports_raw.items()}
    if "clock" in eng:
        clock = eng["clock"]
        cards = [n for n, spec in ports.items() if spec.kind == "soundcard"]
        if not isinstance(clock, str) or (clock not in ("none", "first", "floor") and
                                          clock not in cards):
            raise ctx.err("engine.clock", f"{clock!r} is not a sound-card port; give one of: "
                          f"{', '.join([*cards, 'first', 'floor', 'none'])}")
    patches: dict[str, PatchSpec] = {}
    used: dict[str, str] = {}
    for n, v in ctx.mapping("patches", data.get("patches") or {}).items():
        spec = _patch(ctx, str(n), ctx.mapping(f"patches.{n}", v), ports)
        for m in spec.members:
            if m in used:
                raise ctx.err(f"patches.{n}.members", f"port {m!r} is already in patch "
                              f"{used[m]!r}; a port can be in one patch")
            used[m] = spec.name
        patches[spec.name] = spec
    return SiteConfig(path, engine, control, ports, patches, data)


def _port(ctx: _Ctx, name: str, raw: Mapping[str, Any], engine_rate: int) -> PortSpec:
    key = f"ports.{name}"
    if "." in name or not name:
        raise ctx.err(key, "port names may not be empty or contain '.' (used in event topics)")
    kind = str(raw.get("type", "soundcard"))
    if kind not in PORT_KINDS:
        raise ctx.err(f"{key}.type", f"{kind!r} is not one of: {', '.join(PORT_KINDS)}")
    for k in raw:
        if k not in _PORT_KEYS and kind == "soundcard":
            raise ctx.err(f"{key}.{k}", f"unknown port key {k!r}; valid keys: "
                          f"{', '.join(sorted(_PORT_KEYS))}")
    d: dict[str, Any] = dict(raw)
    profile_name = raw.get("profile")
    if profile_name is not None:
        prof = load_profile(str(profile_name)) if "/" not in str(profile_name) else \
            load_profile(Path(ctx.path).parent / str(profile_name))
        over = {k: v for k, v in raw.items()
                if k not in ("type", "rx_gain_db", "tx_gain_db", "agc", "buffers")
                and not (k == "device" and isinstance(v, Mapping))}
        merged = merge_overrides(prof, over, ctx.path, ctx.pos, key).to_port_dict()
        merged.update({k: raw[k] for k in ("network", "talkgroup", "rx_gain_db", "tx_gain_db",
                                           "agc") if k in raw})
        if isinstance(raw.get("device"), Mapping):
            merged["device"] = raw["device"]
        d = merged
    dev = d.get("device")
    inp = out = None
    if isinstance(dev, Mapping):
        for k in dev:
            if k not in ("input", "output"):
                raise ctx.err(f"{key}.device.{k}", "device takes input and output")
        inp, out = dev.get("input"), dev.get("output")
    elif dev is not None:
        inp = out = str(dev)
    if kind == "soundcard" and inp is None and out is None:
        raise ctx.err(f"{key}.device", "a sound-card port needs a device (a name such as "
                      "brug_be1, or {input: ..., output: ...}); `brug devices` lists them")
    rate = int(ctx.number(f"{key}.rate_hz", d.get("rate_hz", 48000), 8000, 192000, True))
    buffers: dict[str, float] = {}
    for k, v in ctx.mapping(f"{key}.buffers", raw.get("buffers") or {}).items():
        if k not in _BUFFER_KEYS:
            raise ctx.err(f"{key}.buffers.{k}", f"unknown key; valid keys: "
                          f"{', '.join(_BUFFER_KEYS)}")
        lo, hi, arg = _BUFFER_KEYS[k]
        ms = float(ctx.number(f"{key}.buffers.{k}", v, lo, hi))
        buffers[arg] = ms / 1000.0 if arg == "latency" else ms
    channels = int(ctx.number(f"{key}.channels", d.get("channels", 1), 1, 32, True))
    channel = int(ctx.number(f"{key}.channel", d.get("channel", 0), 0, channels - 1, True))
    sq_raw = dict(ctx.mapping(f"{key}.squelch", d.get("squelch") or {"type": "vox"}))
    sq_type = str(sq_raw.get("type", "vox"))
    if sq_type not in squelch_types():
        raise ctx.err(f"{key}.squelch.type", f"{sq_type!r} is not one of: "
                      f"{', '.join(squelch_types())}")
    sq_num = {k: float(ctx.number(f"{key}.squelch.{k}", sq_raw[k], -120 if "dbfs" in k else 0,
                                  0 if "dbfs" in k else 60000))
              for k in _SQUELCH_KEYS[1:] if k in sq_raw}
    if sq_type != "vox":        # a line or call state is clean: no debounce unless asked for
        sq_num.setdefault("attack_ms", 0.0)
        sq_num.setdefault("hang_ms", 0.0)
    if sq_num.get("close_dbfs", -46.0) > sq_num.get("open_dbfs", -40.0):
        raise ctx.err(f"{key}.squelch.close_dbfs", "must not be above squelch.open_dbfs "
                      "(hysteresis: close below open)")
    ptt_raw = dict(ctx.mapping(f"{key}.ptt", d.get("ptt") or {"type": "none"}))
    ptt_type = str(ptt_raw.get("type", "none"))
    if ptt_type not in ptt_types():
        raise ctx.err(f"{key}.ptt.type", f"{ptt_type!r} is not one of: "
                      f"{', '.join(ptt_types())}")
    limits = {"lead_ms": 5000, "hang_ms": 10000, "tot_s": 3600, "guard_ms": 5000,
              "grant_timeout_ms": 30000}
    ptt_num = {k: float(ctx.number(f"{key}.ptt.{k}", ptt_raw[k], 0, limits[k]))
               for k in _PTT_KEYS[1:] if k in ptt_raw}
    rx_gain = float(ctx.number(f"{key}.rx_gain_db", d.get("rx_gain_db", 0.0), -60, 30))
    tx_gain = float(ctx.number(f"{key}.tx_gain_db", d.get("tx_gain_db", 0.0), -60, 30))
    if "rx_level_dbfs" in d and "rx_gain_db" not in raw:
        rx_gain = REFERENCE_DBFS - float(d["rx_level_dbfs"])
    if "tx_level_dbfs" in d and "tx_gain_db" not in raw:
        tx_gain = float(d["tx_level_dbfs"]) - REFERENCE_DBFS
    agc_raw = d.get("agc", False)
    agc: dict[str, Any] | None = None
    if agc_raw is True:
        agc = {}
    elif isinstance(agc_raw, Mapping):
        agc = {}
        for k, v in agc_raw.items():
            if k not in _AGC_KEYS:
                raise ctx.err(f"{key}.agc.{k}", f"unknown AGC key; valid keys: "
                              f"{', '.join(_AGC_KEYS)}")
            lo, hi = _AGC_KEYS[k]
            agc[str(k)] = float(ctx.number(f"{key}.agc.{k}", v, lo, hi))
    elif agc_raw not in (False, None):
        raise ctx.err(f"{key}.agc", "must be true, false or a mapping of AGC settings")
    filters = dict(ctx.mapping(f"{key}.filters", d.get("filters") or {}))
    try:
        build_filters(filters, engine_rate)
    except ValueError as exc:
        raise ctx.err(f"{key}.filters", str(exc)) from None
    settings = PortSettings(
        name=name, network=str(d.get("network", "")), talkgroup=str(d.get("talkgroup", "")),
        squelch=SquelchSettings(type=sq_type, **sq_num,
                                mask_while_tx=bool(sq_raw.get("mask_while_tx",
                                                              sq_type not in CALL_CONTROL_COR)),
                                params={k: v for k, v in sq_raw.items()
                                        if k not in (*_SQUELCH_KEYS, "mask_while_tx")}),
        ptt=PttSettings(type=ptt_type, **ptt_num,
                        params={k: v for k, v in ptt_raw.items() if k not in _PTT_KEYS}),
        rx_gain_db=rx_gain, tx_gain_db=tx_gain,
        profile=str(profile_name) if profile_name is not None else None, kind=kind,
        filters=filters, agc=agc)
    return PortSpec(name=name, kind=kind, settings=settings, input_device=inp,
                    output_device=out, rate_hz=rate, channels=channels, channel=channel,
                    squelch_params=settings.squelch.params, ptt_params=settings.ptt.params,
                    pei=d.get("pei"), raw=dict(raw), line=ctx.pos.get(key, 0),
                    buffers=buffers)


def _patch(ctx: _Ctx, name: str, raw: Mapping[str, Any],
           ports: Mapping[str, PortSpec]) -> PatchSpec:
    key = f"patches.{name}"
    for k in raw:
        if k not in ("members", "mode", "priorities", "description"):
            raise ctx.err(f"{key}.{k}", "unknown patch key; valid keys: members, mode, "
                          "priorities, description")
    members = raw.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise ctx.err(f"{key}.members", "a patch needs a list of at least 2 member ports")
    for i, m in enumerate(members):
        if str(m) not in ports:
            raise ctx.err(f"{key}.members[{i}]", f"unknown port {m!r}; ports: "
                          f"{', '.join(ports)}")
    if len(set(map(str, members))) != len(members):
        raise ctx.err(f"{key}.members", "a port is listed twice")
    mode = str(raw.get("mode", "half_duplex"))
    if mode not in [m.value for m in Mode]:
        raise ctx.err(f"{key}.mode", f"{mode!r} is not one of: "
                      f"{', '.join(m.value for m in Mode)}")
    prio: dict[str, int] = {}
    for p, v in ctx.mapping(f"{key}.priorities", raw.get("priorities") or {}).items():
        if str(p) not in members:
            raise ctx.err(f"{key}.priorities.{p}", f"{p!r} is not a member of {name!r}")
        prio[str(p)] = int(ctx.number(f"{key}.priorities.{p}", v, -100, 100, True))
    return PatchSpec(name, tuple(map(str, members)), mode, prio, ctx.pos.get(key, 0))
