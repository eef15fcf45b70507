"""Traffic scenarios (``schema: radio-traffic-script/1``): load, validate, loop, stretch.

A scenario is a timeline of push-to-talk transmissions on the talkgroups of several networks,
one of which set of talkgroups is patched together. Each transmission keys up at ``start_s``,
plays one audio file at its network's native rate and releases at ``end_s``. The bench replays
it through the engine and checks that every patched transmission reaches the other members and
that nothing else does.

Every mistake in a script is a :class:`ScenarioError` naming the file, the line and the key path
(``transmissions[3].talkgroup``), so ``brug bench`` prints one line instead of a traceback.

Times in the public API are seconds (``float``) unless a name ends in ``_samples``.

Examples
--------
>>> sc = load_scenario(BUNDLED_SCENARIO)
>>> sc.pairs()[:2]
['be_astrid/BE-DISP', 'be_astrid/BE-TAC3']
>>> len(sc.looped(3).transmissions) == 3 * len(sc.transmissions)
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from brug.hw_profiles.yamlconf import ConfigError, Positions, load_yaml

SCHEMA = "radio-traffic-script/1"
TRAFFIC_DIR = Path(__file__).resolve().parent / "traffic"
#: The scenario shipped with the bench (four networks, one patch, 37 transmissions, 311 s).
BUNDLED_SCENARIO = TRAFFIC_DIR / "op_harbour_shared.yaml"


class ScenarioError(ConfigError):
    """A mistake in a traffic script or a bench site file: ``file:line: keypath: message``."""

    user_error = True


@dataclass(frozen=True)
class Network:
    """One radio network of the scenario (``native_rate_hz`` picks the 8k or 48k files)."""

    id: str
    name: str
    technology: str
    native_rate_hz: int
    talkgroups: tuple[str, ...]


@dataclass(frozen=True)
class Transmission:
    """One over: PTT key-up at ``start_s``, release at ``end_s`` (seconds from scenario start).

    ``file`` is resolved to an absolute path; ``expect_forward_to`` lists the
    ``network/talkgroup`` pairs the script expects to hear it (the patch members but the
    source). ``loop`` is the repetition index when the scenario was looped; ``source_id`` the
    id in the script (``id`` gets a ``@loop`` suffix after looping).
    """

    id: str
    start_s: float
    end_s: float
    network: str
    talkgroup: str
    unit: str
    file: Path
    expect_forward_to: tuple[str, ...] = ()
    overlaps_with: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    note: str = ""
    line: int = 0
    loop: int = 0
    source_id: str = ""

    @property
    def pair(self) -> str:
        """``network/talkgroup`` of the transmitting unit."""
        return f"{self.network}/{self.talkgroup}"

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Scenario:
    """A validated traffic script. Build with :func:`load_scenario`."""

    path: Path
    id: str
    title: str
    total_duration_s: float
    networks: tuple[Network, ...]
    patch_id: str
    patch_members: tuple[str, ...]
    transmissions: tuple[Transmission, ...]
    loops: int = 1
    stretch: float = 1.0
    _audio_cache: dict[Path, tuple[npt.NDArray[np.float32], int]] = field(
        default_factory=dict, repr=False, compare=False)

    def network(self, net_id: str) -> Network:
        for n in self.networks:
            if n.id == net_id:
                return n
        raise KeyError(net_id)

    def pairs(self) -> list[str]:
        """Every ``network/talkgroup`` pair of the scenario, sorted."""
        return sorted(f"{n.id}/{tg}" for n in self.networks for tg in n.talkgroups)

    def native_rate(self, pair: str) -> int:
        """Native rate (Hz) of the network of ``pair``."""
        return self.network(pair.split("/", 1)[0]).native_rate_hz

    def technology(self, pair: str) -> str:
        return self.network(pair.split("/", 1)[0]).technology

    def audio(self, tx: Transmission) -> tuple[npt.NDArray[np.float32], int]:
        """Return ``(samples, rate_hz)`` of ``tx``'s file, mono float32, cut at ``end_s``.

        Files are read once and cached (the same clip recurs in every loop).
        """
        cached = self._audio_cache.get(tx.file)
        if cached is None:
            x, fs = sf.read(tx.file, dtype="float32", always_2d=True)
            cached = (np.ascontiguousarray(x[:, 0]), int(fs))
            self._audio_cache[tx.file] = cached
        x, fs = cached
        n = min(len(x), int(round(tx.duration_s * fs)))
        return x[:n], fs

    def looped(self, n: int) -> Scenario:
        """The scenario played ``n`` times back to back (period ``total_duration_s``).

        Transmission ids get a ``@k`` suffix for loop ``k`` (0-based) when ``n > 1``.
        """
        if n < 1:
            raise ValueError(f"loops must be >= 1, got {n}")
        if n == 1:
            return self
        period = self.total_duration_s
        out: list[Transmission] = []
        for k in range(n):
            for tx in self.transmissions:
                out.append(dataclasses.replace(
                    tx, id=f"{tx.source_id}@{k}", start_s=tx.start_s + k * period,
                    end_s=tx.end_s + k * period, loop=k,
                    overlaps_with=tuple(f"{o}@{k}" for o in tx.overlaps_with)))
        return dataclasses.replace(self, transmissions=tuple(out),
                                   total_duration_s=period * n, loops=self.loops * n,
                                   _audio_cache=self._audio_cache)

    def stretched(self, factor: float) -> Scenario:
        """Scale the idle gaps (nobody on air) by ``factor``; overs and overlaps keep their timing.

        A transmission that starts while another is on air keeps its offset to it, so
        simultaneous key-ups stay simultaneous. ``factor`` 2 doubles every silence.
        """
        if factor <= 0:
            raise ValueError(f"stretch factor must be > 0, got {factor}")
        if factor == 1.0:
            return self
        txs = sorted(self.transmissions, key=lambda t: t.start_s)
        out: list[Transmission] = []
        idle = 0.0          # idle seconds so far (nobody on air)
        busy_until = 0.0
        for tx in txs:
            if tx.start_s > busy_until:
                idle += tx.start_s - busy_until
            shift = (factor - 1.0) * idle
            out.append(dataclasses.replace(tx, start_s=tx.start_s + shift,
                                           end_s=tx.end_s + shift))
            busy_until = max(busy_until, tx.end_s)
        tail = max(0.0, self.total_duration_s - busy_until)
        total = busy_until + (factor - 1.0) * idle + factor * tail
        return dataclasses.replace(self, transmissions=tuple(out), total_duration_s=total,
                                   stretch=self.stretch * factor,
                                   _audio_cache=self._audio_cache)

    def truncated(self, seconds: float) -> Scenario:
        """Only the transmissions that end by ``seconds``; the run lasts ``seconds``."""
        txs = tuple(t for t in self.transmissions if t.end_s <= seconds)
        return dataclasses.replace(self, transmissions=txs, total_duration_s=float(seconds),
                                   _audio_cache=self._audio_cache)


# --------------------------------------------------------------------------- loading


class _Checker:
    def __init__(self, path: Path, pos: Positions) -> None:
        self.path = path
        self.pos = pos

    def err(self, keypath: str, message: str) -> ScenarioError:
        line = self.pos.get(keypath, 0)
        parent = keypath
        while not line and parent:
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            line = self.pos.get(parent, 0)
        return ScenarioError(self.path, line, keypath, message)

    def get(self, raw: Mapping[str, Any], prefix: str, key: str, kind: type | tuple[type, ...],
            default: Any = ...) -> Any:
        kp = f"{prefix}.{key}" if prefix else key
        if key not in raw:
            if default is ...:
                raise self.err(prefix or kp, f"missing required key {key!r}")
            return default
        value = raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.err(kp, f"expected {want}, got {type(value).__name__} {value!r}")
        return value

    def str_list(self, raw: Mapping[str, Any], prefix: str, key: str) -> tuple[str, ...]:
        items = self.get(raw, prefix, key, list, [])
        for i, it in enumerate(items):
            if not isinstance(it, str):
                raise self.err(f"{prefix}.{key}[{i}]", f"expected a string, got {it!r}")
        return tuple(items)


def load_scenario(path: str | Path, *, check_audio: bool = True) -> Scenario:
    """Load and validate a traffic script.

    Parameters
    ----------
    path:
        The YAML script (``schema: radio-traffic-script/1``).
    check_audio:
        Also open every audio file's header and check it exists, is readable and has the
        network's native rate.

    Raises
    ------
    ScenarioError
        On any mistake, naming file, line and key path.
    """
    path = Path(path)
    try:
        data, pos = load_yaml(path)
    except ConfigError as exc:
        raise ScenarioError(exc.path, exc.line, exc.keypath, exc.message) from None
    c = _Checker(path, pos)
    if not isinstance(data, dict):
        raise ScenarioError(path, 1, "", "a traffic script must be a YAML mapping")
    schema = c.get(data, "", "schema", str)
    if schema != SCHEMA:
        raise c.err("schema", f"schema must be {SCHEMA!r}, got {schema!r}")
    root = c.get(data, "", "audio_root", (str, int, float), ".")
    audio_root = (path.parent / str(root)).resolve()
    sid = c.get(data, "", "id", str, path.stem)
    title = c.get(data, "", "title", str, sid)

    raw_nets = c.get(data, "", "networks", list)
    if not raw_nets:
        raise c.err("networks", "at least one network is required")
    networks: list[Network] = []
    for i, rn in enumerate(raw_nets):
        p = f"networks[{i}]"
        if not isinstance(rn, dict):
            raise c.err(p, "a network must be a mapping")
        nid = c.get(rn, p, "id", str)
        if "/" in nid or not nid:
            raise c.err(f"{p}.id", f"network id {nid!r} must be non-empty and contain no '/'")
        if any(n.id == nid for n in networks):
            raise c.err(f"{p}.id", f"duplicate network id {nid!r}")
        rate = c.get(rn, p, "native_rate_hz", int)
        if not 8000 <= rate <= 192000:
            raise c.err(f"{p}.native_rate_hz", f"must be 8000..192000 Hz, got {rate}")
        tgs = c.str_list(rn, p, "talkgroups")
        if not tgs:
            raise c.err(f"{p}.talkgroups", "at least one talkgroup is required")
        if len(set(tgs)) != len(tgs):
            raise c.err(f"{p}.talkgroups", "duplicate talkgroup")
        networks.append(Network(nid, c.get(rn, p, "name", str, nid),
                                c.get(rn, p, "technology", str, ""), rate, tgs))
    all_pairs = {f"{n.id}/{tg}" for n in networks for tg in n.talkgroups}

    def check_pair(kp: str, pair: str) -> None:
        if pair not in all_pairs:
            raise c.err(kp, f"{pair!r} is not a network/talkgroup of this scenario "
                            f"(known: {', '.join(sorted(all_pairs))})")

    raw_patch = c.get(data, "", "patch", dict, {})
    patch_id = c.get(raw_patch, "patch", "id", str, "PATCH")
    members = c.str_list(raw_patch, "patch", "members")
    for i, m in enumerate(members):
        check_pair(f"patch.members[{i}]", m)
    if members and len(members) < 2:
        raise c.err("patch.members", "a patch needs at least two members")

    total = c.get(data, "", "total_duration_s", float, None)
    raw_txs = c.get(data, "", "transmissions", list)
    txs: list[Transmission] = []
    ids: set[str] = set()
    last_start = -1.0
    for i, rt in enumerate(raw_txs):
        p = f"transmissions[{i}]"
        if not isinstance(rt, dict):
            raise c.err(p, "a transmission must be a mapping")
        tid = str(c.get(rt, p, "id", (str, int)))
        if tid in ids:
            raise c.err(f"{p}.id", f"duplicate transmission id {tid!r}")
        ids.add(tid)
        start = c.get(rt, p, "start_s", float)
        end = c.get(rt, p, "end_s", float)
        if start < 0:
            raise c.err(f"{p}.start_s", f"must be >= 0, got {start}")
        if end <= start:
            raise c.err(f"{p}.end_s", f"end_s {end} must be after start_s {start}")
        if start < last_start:
            raise c.err(f"{p}.start_s", f"transmissions must be sorted by start_s "
                                        f"({start} < {last_start})")
        last_start = start
        net = c.get(rt, p, "network", str)
        tg = c.get(rt, p, "talkgroup", (str, int))
        if not any(n.id == net for n in networks):
            raise c.err(f"{p}.network", f"unknown network {net!r} "
                                        f"(known: {', '.join(n.id for n in networks)})")
        if f"{net}/{tg}" not in all_pairs:
            known = next(n for n in networks if n.id == net).talkgroups
            raise c.err(f"{p}.talkgroup", f"talkgroup {tg!r} is not one of network {net!r}'s "
                                          f"({', '.join(known)})")
        expect = c.str_list(rt, p, "expect_forward_to")
        for j, e in enumerate(expect):
            check_pair(f"{p}.expect_forward_to[{j}]", e)
        fname = c.get(rt, p, "file", str)
        fpath = (audio_root / fname).resolve()
        if check_audio:
            try:
                info = sf.info(str(fpath))
            except (OSError, RuntimeError) as exc:
                raise c.err(f"{p}.file", f"cannot open audio file {fname!r}: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from None
            rate = next(n for n in networks if n.id == net).native_rate_hz
            if info.samplerate != rate:
                raise c.err(f"{p}.file", f"{fname!r} is {info.samplerate} Hz but network "
                                         f"{net!r} plays {rate} Hz files")
        txs.append(Transmission(
            id=tid, start_s=start, end_s=end, network=net, talkgroup=str(tg),
            unit=str(c.get(rt, p, "unit", (str, int), "")), file=fpath,
            expect_forward_to=expect, overlaps_with=c.str_list(rt, p, "overlaps_with"),
            tags=c.str_list(rt, p, "tags"), note=str(c.get(rt, p, "note", str, "")),
            line=pos.get(p, 0), source_id=tid))
    for i, t in enumerate(txs):
        for j, o in enumerate(t.overlaps_with):
            if o not in ids:
                raise c.err(f"transmissions[{i}].overlaps_with[{j}]",
                            f"unknown transmission id {o!r}")
    last_end = max((t.end_s for t in txs), default=0.0)
    if total is None:
        total = last_end + 2.0
    elif total < last_end:
        raise c.err("total_duration_s", f"{total} s is shorter than the last transmission "
                                        f"(ends at {last_end} s)")
    return Scenario(path=path, id=sid, title=title, total_duration_s=float(total),
                    networks=tuple(networks), patch_id=patch_id, patch_members=members,
                    transmissions=tuple(txs))


def port_name(pair: str) -> str:
    """Default port name of a ``network/talkgroup`` pair: ``network.talkgroup``."""
    return pair.replace("/", ".", 1)


def place(segments: Sequence[tuple[int, npt.NDArray[np.float32]]], length: int,
          ) -> npt.NDArray[np.float32]:
    """Mix ``(offset_samples, samples)`` segments into one array of ``length`` samples."""
    out = np.zeros(length, np.float32)
    for off, x in segments:
        if off >= length:
            continue
        n = min(len(x), length - off)
        out[off:off + n] += x[:n]
    return out
