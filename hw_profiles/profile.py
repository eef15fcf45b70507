"""Hardware profiles: what a terminal's accessory interface looks like, as frozen dataclasses.

A profile is one YAML file grouped by subsystem (``audio``, ``squelch``, ``ptt``, ``timing``,
``filters``, ``codec``, ``pei``). It is loaded once, range-checked, and never changed; a site
override produces a new :class:`Profile` through :func:`merge_overrides`. Every mistake is a
:class:`~brug.hw_profiles.yamlconf.ConfigError` naming file, line and key path, and an unknown
``type`` lists the valid ones. See docs/profiles.md for the schema.

Units: levels in dBFS (sound card) and dBu (line), times in ms unless the key says ``_s``,
rates in Hz.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from brug.hw_profiles.yamlconf import ConfigError, Positions, join_key, load_yaml

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

KINDS = ("analog", "ip", "tetra")
POLARITIES = ("active_high", "active_low")
RATES_HZ = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
BAUDS = (9600, 19200, 38400, 57600, 115200)
CODECS = ("codec2", "l16", "opus", "pcma", "pcmu")
CM108_INPUTS = ("mute_play", "mute_rec", "vol_down", "vol_up")

#: Squelch/COR types and the parameters each accepts besides the common ones.
#: Kept equal to ``brug.gateway.signalling.squelch_types()`` (a test checks it).
SQUELCH_PARAMS: dict[str, tuple[str, ...]] = {
    "vox": ("open_dbfs", "close_dbfs"),
    "serial_cts": ("port", "polarity", "poll_ms"),
    "serial_dsr": ("port", "polarity", "poll_ms"),
    "serial_dcd": ("port", "polarity", "poll_ms"),
    "cm108": ("hid_path", "input", "polarity", "poll_ms"),
    "pei": (),
    "none": (),
    "open": (),
}
SQUELCH_COMMON = ("type", "attack_ms", "hang_ms")
#: PTT types and their parameters (``brug.gateway.signalling.ptt_types()``).
PTT_PARAMS: dict[str, tuple[str, ...]] = {
    "serial_rts": ("port", "polarity"),
    "serial_dtr": ("port", "polarity"),
    "cm108": ("hid_path", "gpio", "polarity"),
    "pei": (),
    "none": (),
}

# (kind, min, max) per scalar key; kind is "int", "num", "str", "bool", or a tuple of choices.
Spec = tuple[Any, float | None, float | None]
_PARAM_SPECS: dict[str, Spec] = {
    "attack_ms": ("num", 0, 1000), "hang_ms": ("num", 0, 10000),
    "open_dbfs": ("num", -90, 0), "close_dbfs": ("num", -90, 0),
    "port": ("str", None, None), "polarity": (POLARITIES, None, None),
    "poll_ms": ("num", 1, 500), "hid_path": ("str", None, None),
    "input": (CM108_INPUTS, None, None), "gpio": ("int", 1, 8),
}
_SECTIONS: dict[str, dict[str, Spec]] = {
    "audio": {
        "device": ("str", None, None), "rate_hz": (RATES_HZ, None, None),
        "channels": ("int", 1, 8), "channel": ("int", 0, 7),
        "rx_level_dbfs": ("num", -60, 0), "tx_level_dbfs": ("num", -60, 0),
        "line_out_dbu": ("num", -30, 20), "line_in_dbu": ("num", -30, 20),
    },
    "timing": {
        "ptt_lead_ms": ("num", 0, 3000), "ptt_hang_ms": ("num", 0, 10000),
        "tot_s": ("num", 1, 3600), "cor_guard_ms": ("num", 0, 5000),
    },
    "filters": {
        "highpass_hz": ("num", 0, 1000), "lowpass_hz": ("num", 1000, 24000),
        "deemphasis": ("bool", None, None), "preemphasis": ("bool", None, None),
        "squelch_tail_ms": ("num", 0, 1000), "dc_block": ("bool", None, None),
        "hum_notch_hz": ((0, 50, 60), None, None),
    },
    "codec": {
        "name": (CODECS, None, None), "payload_type": ("int", 0, 127),
        "ptime_ms": ((10, 20, 30, 40, 60), None, None), "rate_hz": (RATES_HZ, None, None),
    },
    "pei": {
        "port": ("str", None, None), "baud": (BAUDS, None, None),
        "timeout_ms": ("num", 100, 10000), "keepalive_s": ("num", 0.2, 60),
        "setup_ms": ("num", 0, 5000),
    },
}
_TOP_KEYS = ("schema", "name", "description", "kind", "technology", "sources", "extends",
             "audio", "squelch", "ptt", "timing", "filters", "codec", "pei")


@dataclass(frozen=True)
class AudioSpec:
    """Sound-card side. ``device`` is a case-insensitive substring of the device name."""

    device: str | None
    rate_hz: int = 48000
    channels: int = 1
    channel: int = 0
    rx_level_dbfs: float = -18.0
    tx_level_dbfs: float = -18.0
    line_out_dbu: float | None = None
    line_in_dbu: float | None = None


@dataclass(frozen=True)
class DriverSpec:
    """A squelch or PTT driver: its registry ``type`` and keyword ``params``."""

    type: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class TimingSpec:
    """PTT lead/hang (ms), time-out timer (s), COR guard after unkeying (ms)."""

    ptt_lead_ms: float = 0.0
    ptt_hang_ms: float = 0.0
    tot_s: float = 180.0
    cor_guard_ms: float = 0.0


@dataclass(frozen=True)
class FiltersSpec:
    """Voice filters (brug.codecs.filters): a receive band-pass ``highpass_hz``..``lowpass_hz``
    (0 / at or above half the engine rate: that edge off), FM ``deemphasis`` on receive and
    ``preemphasis`` on transmit (750 us), a ``dc_block`` (20 Hz), a mains ``hum_notch_hz``
    (50 or 60 with two harmonics; 0: off), and ``squelch_tail_ms`` removed from the end of
    every over this port receives."""

    highpass_hz: float = 300.0
    lowpass_hz: float = 3400.0
    deemphasis: bool = False
    preemphasis: bool = False
    squelch_tail_ms: float = 0.0
    dc_block: bool = False
    hum_notch_hz: int = 0

    def chain_spec(self) -> dict[str, Any]:
        """The mapping :func:`brug.codecs.filters.build_chain` (and the engine) takes."""
        d: dict[str, Any] = {"highpass_hz": self.highpass_hz, "lowpass_hz": self.lowpass_hz,
                             "deemphasis": self.deemphasis, "preemphasis": self.preemphasis,
                             "squelch_tail_ms": self.squelch_tail_ms,
                             "dc_block": self.dc_block}
        if self.hum_notch_hz:
            d["hum_notch"] = self.hum_notch_hz
        return d


@dataclass(frozen=True)
class CodecSpec:
    name: str = "pcma"
    payload_type: int = 8
    ptime_ms: int = 20
    rate_hz: int = 8000


@dataclass(frozen=True)
class PeiSpec:
    """TETRA PEI serial link. ``setup_ms`` is the expected group-call set-up time."""

    port: str
    baud: int = 115200
    init: tuple[str, ...] = ()
    timeout_ms: float = 1000.0
    keepalive_s: float = 1.0
    setup_ms: float = 300.0


@dataclass(frozen=True)
class Profile:
    """One loaded, validated hardware profile. All attributes are read-only.

    Use :meth:`to_port_dict` for the site-file shape, :func:`merge_overrides` for site
    overrides.
    """

    name: str
    kind: str
    description: str
    source: str
    audio: AudioSpec
    squelch: DriverSpec
    ptt: DriverSpec
    timing: TimingSpec
    filters: FiltersSpec
    codec: CodecSpec | None
    pei: PeiSpec | None
    technology: str = ""
    extends: str | None = None
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    #: Key path -> (file, line) of every key, through the ``extends`` chain (for errors).
    where: Mapping[str, tuple[str, int]] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False)

    def to_port_dict(self) -> dict[str, Any]:
        """Return the profile in the site file's port shape (a fresh, mutable dict).

        Keys: ``profile``, ``kind``, ``device``, ``rate_hz``, ``channels``, ``channel``,
        ``rx_level_dbfs``, ``tx_level_dbfs``, ``squelch: {type, ...}``, ``ptt: {type,
        lead_ms, hang_ms, tot_s, guard_ms, ...}``, ``filters: {...}``, ``codec`` (dict or
        None), ``pei`` (dict or None). Driver params go straight to
        ``make_squelch(type, **params)`` / ``make_ptt(type, **params)``.
        """
        a = self.audio
        t = self.timing
        return {
            "profile": self.name, "kind": self.kind, "device": a.device,
            "rate_hz": a.rate_hz, "channels": a.channels, "channel": a.channel,
            "rx_level_dbfs": a.rx_level_dbfs, "tx_level_dbfs": a.tx_level_dbfs,
            "squelch": {"type": self.squelch.type, **self.squelch.params},
            "ptt": {"type": self.ptt.type, "lead_ms": t.ptt_lead_ms, "hang_ms": t.ptt_hang_ms,
                    "tot_s": t.tot_s, "guard_ms": t.cor_guard_ms, **self.ptt.params},
            "filters": self.filters.chain_spec(),
            "codec": dict(vars(self.codec)) if self.codec else None,
            "pei": ({**vars(self.pei), "init": list(self.pei.init)} if self.pei else None),
        }


# ---------------------------------------------------------------- loading

Where = dict[str, tuple[str, int]]   # key path -> (file, line)


def list_profiles() -> list[str]:
    """Names of the bundled profiles (file stems under ``hw_profiles/profiles``), sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(name_or_path: str | Path) -> Path:
    """Resolve a bundled profile name or a path to a file."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s:
        return Path(s)
    return PROFILE_DIR / f"{s}.yaml"


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile by bundled name (``astrid-mtm5400``) or by file path.

    Raises
    ------
    ConfigError
        For any mistake, naming file, line and key path; an unknown profile name lists the
        bundled ones.
    """
    path = profile_path(name_or_path)
    if not path.exists() and path.parent == PROFILE_DIR:
        raise ConfigError(str(name_or_path), 0, "",
                          f"unknown profile {str(name_or_path)!r}; bundled profiles: "
                          f"{', '.join(list_profiles())}")
    raw, where = _load_raw(path, ())
    return _build(raw, where, path)


def _load_raw(path: Path, chain: tuple[str, ...]) -> tuple[dict[str, Any], Where]:
    data, pos = load_yaml(path)
    src = str(path)
    if data is None:
        raise ConfigError(path, 1, "", "the profile is empty")
    if not isinstance(data, dict):
        raise ConfigError(path, 1, "", f"a profile must be a mapping of sections, "
                                       f"not {type(data).__name__}")
    where: Where = {k: (src, ln) for k, ln in pos.items()}
    parent = data.get("extends")
    if parent is None:
        return data, where
    if not isinstance(parent, str):
        raise ConfigError(path, pos["extends"], "extends", "must be a profile name")
    ppath = profile_path(parent) if "/" in parent or parent.endswith(".yaml") else (
        path.parent / f"{parent}.yaml")
    if not ppath.exists():
        ppath = profile_path(parent)
    key = str(ppath.resolve())
    if key in chain or ppath.resolve() == path.resolve():
        raise ConfigError(path, pos["extends"], "extends", f"extends={parent!r} is circular")
    if not ppath.exists():
        raise ConfigError(path, pos["extends"], "extends",
                          f"extends={parent!r}: no such profile (bundled: "
                          f"{', '.join(list_profiles())})")
    base, bwhere = _load_raw(ppath, (*chain, str(path.resolve())))
    base = {k: v for k, v in base.items() if k not in ("name", "extends", "description")}
    merged = _deep_merge(base, data)
    bwhere = {k: v for k, v in bwhere.items()
              if not k.startswith(("name", "extends", "description"))}
    bwhere.update(where)
    return merged, bwhere


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            # a different driver type replaces the parent's driver params entirely
            if "type" in v and v.get("type") != out[k].get("type"):
                out[k] = copy.deepcopy(dict(v))
            else:
                out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class _Ctx:
    def __init__(self, where: Where, default_file: str, prefix: str = "") -> None:
        self.where = where
        self.file = default_file
        self.prefix = prefix

    def err(self, keypath: str, message: str) -> ConfigError:
        file, line = self.locate(keypath)
        kp = join_key(self.prefix, keypath) if self.prefix else keypath
        if self.prefix and message.startswith(keypath):
            message = kp + message[len(keypath):]
        return ConfigError(file, line, kp, message)

    def locate(self, keypath: str) -> tuple[str, int]:
        kp = keypath
        while kp:
            if kp in self.where:
                return self.where[kp]
            kp = kp.rsplit(".", 1)[0] if "." in kp else ""
        return self.file, 1


def _check(ctx: _Ctx, keypath: str, value: Any, spec: Spec) -> Any:
    kind, lo, hi = spec
    if isinstance(kind, tuple):
        if value not in kind or isinstance(value, bool):
            valid = ", ".join(str(c) for c in kind)
            raise ctx.err(keypath, f"{keypath}={value!r} is not one of: {valid}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ctx.err(keypath, f"{keypath}={value!r} must be true or false")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ctx.err(keypath, f"{keypath}={value!r} must be a non-empty string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.err(keypath, f"{keypath}={value!r} must be a number")
    if kind == "int" and not float(value).is_integer():
        raise ctx.err(keypath, f"{keypath}={value!r} must be a whole number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ctx.err(keypath, f"{keypath}={value!r} is out of range [{lo}, {hi}]")
    return int(value) if kind == "int" else float(value)


def _section(ctx: _Ctx, raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    sec = raw.get(name)
    if sec is None:
        return {}
    if not isinstance(sec, Mapping):
        raise ctx.err(name, f"{name} must be a mapping, not {type(sec).__name__}")
    spec = _SECTIONS[name]
    out: dict[str, Any] = {}
    for k, v in sec.items():
        kp = f"{name}.{k}"
        if k == "init" and name == "pei":
            if not isinstance(v, list):
                raise ctx.err(kp, f"{kp} must be a list of AT commands")
            for i, c in enumerate(v):
                if not isinstance(c, str) or not c.upper().startswith("AT"):
                    raise ctx.err(f"{kp}[{i}]", f"{kp}[{i}]={c!r} must be an AT command "
                                                 "(starting with AT)")
            out[k] = tuple(v)
            continue
        if k not in spec:
            raise ctx.err(kp, f"unknown key {kp!r}; valid keys: "
                              f"{', '.join(sorted([*spec, *(['init'] if name == 'pei' else [])]))}")
        out[str(k)] = _check(ctx, kp, v, spec[k])
    return out


def _driver(ctx: _Ctx, raw: Mapping[str, Any], name: str,
            table: Mapping[str, tuple[str, ...]], common: tuple[str, ...]) -> DriverSpec:
    sec = raw.get(name)
    if sec is None:
        raise ctx.err(name, f"missing section {name!r} (with a 'type': "
                            f"{', '.join(sorted(table))})")
    if not isinstance(sec, Mapping):
        raise ctx.err(name, f"{name} must be a mapping, not {type(sec).__name__}")
    typ = sec.get("type")
    if typ is None:
        raise ctx.err(name, f"{name}.type is missing; valid types: {', '.join(sorted(table))}")
    if typ not in table:
        raise ctx.err(f"{name}.type",
                      f"{name}.type={typ!r} is not one of: {', '.join(sorted(table))}")
    allowed = (*common, *table[typ])
    params: dict[str, Any] = {}
    for k, v in sec.items():
        kp = f"{name}.{k}"
        if k == "type":
            continue
        if k not in allowed:
            raise ctx.err(kp, f"unknown key {kp!r} for {name}.type={typ!r}; valid keys: "
                              f"{', '.join(sorted(allowed))}")
        params[str(k)] = _check(ctx, kp, v, _PARAM_SPECS[k])
    for need in ("port",):
        if need in table[typ] and need not in params:
            raise ctx.err(name, f"{name}.{need} is required for {name}.type={typ!r}")
    return DriverSpec(typ, MappingProxyType(params))


def _build(raw: Mapping[str, Any], where: Where, path: Path | str,
           prefix: str = "") -> Profile:
    ctx = _Ctx(where, str(path), prefix)
    for k in raw:
        if k not in _TOP_KEYS:
            raise ctx.err(str(k), f"unknown key {k!r}; valid keys: {', '.join(_TOP_KEYS)}")
    name = raw.get("name", Path(str(path)).stem)
    if not isinstance(name, str) or not name:
        raise ctx.err("name", f"name={name!r} must be a non-empty string")
    kind = _check(ctx, "kind", raw.get("kind", "analog"), (KINDS, None, None))
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise ctx.err("description", "description must be a string")
    tech = raw.get("technology", "")
    if not isinstance(tech, str):
        raise ctx.err("technology", "technology must be a string")

    a = _section(ctx, raw, "audio")
    if kind != "ip" and not a.get("device"):
        raise ctx.err("audio", "audio.device is required (a substring of the sound device "
                               "name) for a radio interface")
    audio = AudioSpec(**{"device": None, **a})
    if audio.channel >= audio.channels:
        raise ctx.err("audio.channel", f"audio.channel={audio.channel} needs at least "
                                       f"{audio.channel + 1} channels "
                                       f"(audio.channels={audio.channels})")
    squelch = _driver(ctx, raw, "squelch", SQUELCH_PARAMS, SQUELCH_COMMON)
    if squelch.type == "vox":
        op = squelch.params.get("open_dbfs", -35.0)
        cl = squelch.params.get("close_dbfs", -40.0)
        if cl > op:
            raise ctx.err("squelch.close_dbfs", f"squelch.close_dbfs={cl} must not be above "
                                                f"squelch.open_dbfs={op} (hysteresis)")
    ptt = _driver(ctx, raw, "ptt", PTT_PARAMS, ("type",))
    timing = TimingSpec(**_section(ctx, raw, "timing"))
    filters = FiltersSpec(**_section(ctx, raw, "filters"))
    if filters.highpass_hz >= filters.lowpass_hz:
        raise ctx.err("filters.lowpass_hz", f"filters.lowpass_hz={filters.lowpass_hz} must "
                                            f"be above filters.highpass_hz="
                                            f"{filters.highpass_hz}")
    c = _section(ctx, raw, "codec")
    codec = CodecSpec(**c) if "codec" in raw else None
    if kind == "ip" and codec is None:
        raise ctx.err("codec", "an IP port needs a codec section (codec.name: "
                               f"{', '.join(CODECS)})")
    p = _section(ctx, raw, "pei")
    pei: PeiSpec | None = None
    if "pei" in raw:
        if "port" not in p:
            raise ctx.err("pei", "pei.port is required (the PEI serial device)")
        pei = PeiSpec(**p)
    for drv in (squelch, ptt):
        sec = "squelch" if drv is squelch else "ptt"
        if drv.type == "pei" and pei is None:
            raise ctx.err(f"{sec}.type", f"{sec}.type='pei' needs a pei section "
                                         "(pei.port, pei.baud)")
    extends = raw.get("extends")
    return Profile(name=name, kind=kind, description=desc, source=str(path), audio=audio,
                   squelch=squelch, ptt=ptt, timing=timing, filters=filters, codec=codec,
                   pei=pei, technology=tech, extends=extends if isinstance(extends, str) else None,
                   raw=MappingProxyType(copy.deepcopy(dict(raw))),
                   where=MappingProxyType(dict(where)))


# ---------------------------------------------------------------- site overrides

#: Site-file port keys that belong to the site loader and are ignored here.
SITE_KEYS = ("profile", "network", "talkgroup", "name", "description", "gssi")
_SITE_AUDIO = {"device": "device", "rate_hz": "rate_hz", "channels": "channels",
               "channel": "channel", "rx_level_dbfs": "rx_level_dbfs",
               "tx_level_dbfs": "tx_level_dbfs"}
_SITE_TIMING = {"lead_ms": "ptt_lead_ms", "hang_ms": "ptt_hang_ms", "tot_s": "tot_s",
                "guard_ms": "cor_guard_ms"}


def merge_overrides(profile: Profile, overrides: Mapping[str, Any], source: str,
                    positions: Positions | None = None, prefix: str = "",
                    ignore: Iterable[str] = SITE_KEYS) -> Profile:
    """Apply a site file's port overrides to ``profile`` and validate the result.

    Parameters
    ----------
    profile:
        The base profile (from :func:`load_profile`).
    overrides:
        The site file's port mapping: ``device``, ``rate_hz``, ``channels``, ``channel``,
        ``rx_level_dbfs``, ``tx_level_dbfs``, ``squelch: {type, open_dbfs, ...}``,
        ``ptt: {type, lead_ms, hang_ms, tot_s, guard_ms, ...driver params}``, and whole
        profile sections (``filters``, ``codec``, ``pei``, ``timing``, ``audio``). Keys in
        ``ignore`` (``profile``, ``network``, ``talkgroup``, ...) are skipped.
    source:
        The site file path, for error messages.
    positions:
        ``load_yaml`` positions of the site file; keys are looked up as ``prefix + "." + key``.
    prefix:
        Key path of the port in the site file, e.g. ``"ports.be1"``.

    Raises
    ------
    ConfigError
        Naming the site file, the line and the full key path (``ports.be1.ptt.type``) for an
        override, or the profile file for a key that came from the profile.
    """
    ign = set(ignore)
    over: dict[str, Any] = {}
    keymap: dict[str, str] = {}   # profile key path -> site key path (relative to prefix)
    for k, v in overrides.items():
        if k in ign:
            continue
        if k in _SITE_AUDIO:
            over.setdefault("audio", {})[_SITE_AUDIO[k]] = v
            keymap[f"audio.{_SITE_AUDIO[k]}"] = k
        elif k == "ptt" and isinstance(v, Mapping):
            p = {}
            for pk, pv in v.items():
                if pk in _SITE_TIMING:
                    over.setdefault("timing", {})[_SITE_TIMING[pk]] = pv
                    keymap[f"timing.{_SITE_TIMING[pk]}"] = f"ptt.{pk}"
                else:
                    p[pk] = pv
                    keymap[f"ptt.{pk}"] = f"ptt.{pk}"
            if p:
                over["ptt"] = p
        elif k in ("squelch", "timing", "filters", "codec", "pei", "audio") and isinstance(
                v, Mapping):
            over[k] = dict(v)
            keymap[k] = k
            for sk in v:
                keymap[f"{k}.{sk}"] = f"{k}.{sk}"
        elif k in ("squelch", "ptt", "timing", "filters", "codec", "pei", "audio"):
            over[k] = v
            keymap[k] = k
        else:
            valid = sorted({*_SITE_AUDIO, *ign, "squelch", "ptt", "timing", "filters", "codec",
                            "pei", "audio"})
            raise ConfigError(source, (positions or {}).get(join_key(prefix, k), 0),
                              join_key(prefix, k),
                              f"unknown port key {k!r}; valid keys: {', '.join(valid)}")
    # where each key came from (profile files), then the site file for overridden keys
    base_src = profile.source
    where: Where = dict(profile.where)
    pos = positions or {}
    for pk, sk in keymap.items():
        where[pk] = (source, pos.get(join_key(prefix, sk), 0))
    raw = _deep_merge(profile.raw, over)
    try:
        return _build(raw, where, base_src)
    except ConfigError as exc:
        if exc.path != ConfigError(source, 0, "", "").path:
            raise            # the offending key is written in the profile: point there
        # re-express a key that came from the site file with its site key path
        for pk, sk in keymap.items():
            if exc.keypath == pk or exc.keypath.startswith(pk + "."):
                site_kp = join_key(prefix, sk + exc.keypath[len(pk):])
                msg = exc.message
                if msg.startswith(exc.keypath):
                    msg = site_kp + msg[len(exc.keypath):]
                raise ConfigError(source, exc.line, site_kp, msg) from None
        raise

