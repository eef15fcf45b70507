"""Replay a traffic scenario through the real engine and write what came out.

Offline (:func:`replay_offline`): the engine on its virtual clock with file ports, as fast as
the CPU allows. Each port's receive audio is prepared once: every transmission's file is
resampled (soxr, very high quality) from its network's native rate to the engine rate and placed
at ``start_s``. What the gateway sends to each port is resampled back to the port's device rate
while the run goes and streamed to ``tx/<port>.wav``, so memory does not grow with the run.

Realtime (:func:`brug.bench.realtime.replay_realtime`): the same scenario through virtual sound
cards and real PortAudio streams.

Both write the replay output of DESIGN.md into ``DIR``: ``tx/<port>.wav`` (device rate, the full
run), ``events.jsonl`` (engine events with sample-exact ``t`` and ``t_s``), ``metrics.json``
and ``report.md`` with PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import psutil
import soundfile as sf
import soxr

from brug.bench.metrics import measure, run_figures, scenario_info, summarize
from brug.bench.plan import ReplayPlan
from brug.bench.scenario import Scenario
from brug.bench.squelch import ScriptedSquelch
from brug.gateway.engine import Engine
from brug.gateway.events import Event
from brug.gateway.ports.base import Block, Port
from brug.gateway.signalling import NoPtt

Array = npt.NDArray[np.float32]
#: Loop periods are rounded up to this (s), a whole number of samples at every usual rate.
PERIOD_GRID_S = 0.01


def quantize_period(sc: Scenario) -> Scenario:
    """Round the scenario length up to 10 ms so loops stay sample-exact at every rate."""
    total = math.ceil(round(sc.total_duration_s / PERIOD_GRID_S, 6)) * PERIOD_GRID_S
    return dataclasses.replace(sc, total_duration_s=round(total, 6),
                               _audio_cache=sc._audio_cache)


# --------------------------------------------------------------------------- receive side


def port_segments(plan: ReplayPlan, rate_hz: int) -> dict[str, list[tuple[int, Array]]]:
    """Per port, ``(offset_samples, audio)`` of every transmission at ``rate_hz`` (one loop).

    Clips are resampled from the network's native rate with soxr (VHQ) once per file.
    """
    sc = plan.scenario
    cache: dict[Path, Array] = {}
    out: dict[str, list[tuple[int, Array]]] = {p.name: [] for p in plan.ports}
    for tx in sc.transmissions:
        y = cache.get(tx.file)
        if y is None:
            x, fs = sc.audio(tx)
            y = x if fs == rate_hz else np.asarray(
                soxr.resample(x, fs, rate_hz, quality="VHQ"), np.float32)
            cache[tx.file] = y
        n = int(round(tx.duration_s * rate_hz))
        out[plan.port_of_pair(tx.pair).name].append(
            (int(round(tx.start_s * rate_hz)), y[:n]))
    for segs in out.values():
        segs.sort(key=lambda s: s[0])
    return out


def cor_schedule(plan: ReplayPlan, name: str, rate_hz: int) -> list[tuple[int, int, str]]:
    """Scripted COR intervals of port ``name`` in engine samples (key-up + delay .. release)."""
    pp = plan.port(name)
    out = []
    for tx in plan.scenario.transmissions:
        if tx.pair != pp.pair:
            continue
        o = int(round((tx.start_s + pp.cor_delay_ms / 1000.0) * rate_hz))
        c = int(round(tx.end_s * rate_hz))
        if c > o:
            out.append((o, c, f"call {tx.unit or tx.id}".strip()))
    return out


class TxSink:
    """Collects a port's engine-rate output, resamples it to the device rate in 1 s chunks and
    hands the chunks to ``consumers`` (a WAV writer, a loop buffer).

    :meth:`push` runs on the engine thread once per tick: one slice copy, no allocation
    (about 0.6 us for a 5 ms block; the resampling and the consumers run once per chunk).
    """

    def __init__(self, engine_rate: int, device_rate: int,
                 consumers: Sequence[Callable[[Array], None]], chunk: int | None = None) -> None:
        self.engine_rate = engine_rate
        self.device_rate = device_rate
        self.consumers = list(consumers)
        self._buf = np.zeros(chunk or engine_rate, np.float32)
        self._cap = len(self._buf)
        self._n = 0
        self._rs = (None if engine_rate == device_rate else
                    soxr.ResampleStream(engine_rate, device_rate, 1, dtype="float32",
                                        quality="HQ"))
        self.samples_in = 0

    def push(self, block: Block) -> None:
        n = len(block)
        k = self._n
        if k + n > self._cap:
            self._flush(False)
            k = 0
        self._buf[k:k + n] = block
        self._n = k + n
        self.samples_in += n

    def _flush(self, last: bool) -> None:
        x = self._buf[:self._n]
        y = x.copy() if self._rs is None else self._rs.resample_chunk(x, last=last)
        self._n = 0
        if len(y):
            for c in self.consumers:
                c(y)

    def close(self) -> None:
        """Flush what is buffered, including the resampler's tail."""
        self._flush(True)


class WavWriter:
    """Streams float32 chunks into a 16-bit WAV file (``tx/<port>.wav``)."""

    def __init__(self, path: Path, rate_hz: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = sf.SoundFile(str(path), "w", samplerate=rate_hz, channels=1, subtype="PCM_16")

    def __call__(self, y: Array) -> None:
        self._f.write(y)

    def close(self) -> None:
        self._f.close()


class FeedPort(Port):
    """A file port on the virtual clock.

    Receive side: the scripted transmissions of this port (engine rate, sparse segments),
    optionally repeating every ``period`` samples. Transmit side: every block the gateway writes
    goes to ``sink``. ``read`` costs one or two slice copies per tick (about 0.5 us for a 5 ms
    block: silence, or inside one transmission).
    """

    def __init__(self, name: str, segments: Sequence[tuple[int, Array]], sink: TxSink | None,
                 period: int | None = None) -> None:
        super().__init__(name)
        self._off = [s[0] for s in segments]
        self._end = [s[0] + len(s[1]) for s in segments]
        self._x = [s[1] for s in segments]
        self._count = len(segments)
        self._period = period
        self._sink = sink
        self._pos = 0
        self._i = 0

    def start(self, engine_rate: int, block: int) -> None:
        self._pos = 0
        self._i = 0

    def _fill(self, out: Block, pos: int) -> None:
        end = pos + len(out)
        i = self._i
        ends, offs, count = self._end, self._off, self._count
        while i < count and ends[i] <= pos:
            i += 1
        self._i = i
        # the usual blocks: silence (no transmission reaches into it), or all inside one
        # transmission that no other overlaps there: a copy, the same samples as the sum
        # below gives (which would only turn a -0.0 into 0.0)
        if i == count or offs[i] >= end:
            out[:] = 0.0
            return
        off = offs[i]
        if off <= pos and ends[i] >= end and (i + 1 == count or offs[i + 1] >= end):
            out[:] = self._x[i][pos - off:end - off]
            return
        j = i
        first = True
        while j < len(offs) and offs[j] < end:
            a, b = max(pos, offs[j]), min(end, ends[j])
            if b > a:
                if first:
                    out[:] = 0.0
                    first = False
                out[a - pos:b - pos] += self._x[j][a - offs[j]:b - offs[j]]
            j += 1
        if first:
            out[:] = 0.0

    def read(self, out: Block) -> None:
        n = len(out)
        per = self._period
        if per is not None and self._pos + n > per:
            k = per - self._pos
            self._fill(out[:k], self._pos)
            self._pos, self._i = 0, 0
            self._fill(out[k:], 0)
            self._pos = n - k
            return
        self._fill(out, self._pos)
        self._pos += n
        if per is not None and self._pos >= per:
            self._pos, self._i = 0, 0

    def write(self, block: Block) -> None:
        if self._sink is not None:
            self._sink.push(block)

    def stop(self) -> None:
        pass


# --------------------------------------------------------------------------- events, resources


class EventLog:
    """Engine events to ``events.jsonl`` (streamed) and to an in-memory list the caller drains."""

    def __init__(self, path: Path | None, rate_hz: int) -> None:
        self.rate = rate_hz
        self._f: IO[str] | None = open(path, "w", encoding="utf-8") if path else None
        self.pending: list[dict[str, Any]] = []
        self.count = 0

    def __call__(self, events: list[Event]) -> None:
        for e in events:
            d = e.to_json(self.rate)
            self.pending.append(d)
            if self._f is not None:
                self._f.write(json.dumps(d, separators=(",", ":")) + "\n")
        self.count += len(events)

    def take(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


@dataclass
class ResourceSampler:
    """CPU (% of one core) and resident memory (MB) of this process over the run."""

    every_s: float = 1.0
    samples: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)
        self._t0 = time.monotonic()
        self._last = -1e9

    def maybe(self, sim_s: float, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            self.samples.append((round(now - self._t0, 3), round(sim_s, 3),
                                 round(self._proc.memory_info().rss / 2**20, 3),
                                 round(self._proc.cpu_percent(None), 1)))

    def figures(self, warmup_frac: float = 0.2, warmup_sim_s: float = 0.0) -> dict[str, Any]:
        """RSS start/end/min/max (MB), growth after warm-up and its trend (MB per sim hour).

        Warm-up is the first ``warmup_frac`` of the samples, or up to simulated second
        ``warmup_sim_s`` when that is later (caches, first-use imports, allocator pools).
        """
        s = self.samples
        if not s:
            return {"samples": []}
        rss = np.array([v[2] for v in s])
        sim = np.array([v[1] for v in s])
        k = max(int(len(s) * warmup_frac), int(np.searchsorted(sim, warmup_sim_s)))
        k = min(k, len(s) - 1)
        tail_rss, tail_sim = rss[k:], sim[k:]
        slope = 0.0
        if len(tail_rss) >= 3 and tail_sim[-1] > tail_sim[0]:
            slope = float(np.polyfit(tail_sim / 3600.0, tail_rss, 1)[0])
        cpu = [v[3] for v in s[1:]] or [0.0]
        return {"rss_start_mb": round(float(rss[0]), 2), "rss_end_mb": round(float(rss[-1]), 2),
                "rss_max_mb": round(float(rss.max()), 2),
                "rss_growth_after_warmup_mb": round(float(tail_rss.max() - tail_rss.min()), 3),
                "rss_trend_mb_per_h": round(slope, 4),
                "cpu_mean_pct": round(float(np.mean(cpu)), 1),
                "cpu_max_pct": round(float(np.max(cpu)), 1),
                "samples": [list(v) for v in s]}


class Progress:
    """One progress line on stderr: simulated time, speed (x real time), running figures."""

    def __init__(self, total_s: float, label: str, enabled: bool = True) -> None:
        self.total = total_s
        self.label = label
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._t0 = time.monotonic()
        self._last = 0.0

    def update(self, sim_s: float, extra: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.5 if self.tty else 10.0):
            return
        self._last = now
        wall = max(now - self._t0, 1e-6)
        frac = min(1.0, sim_s / self.total) if self.total else 1.0
        bar = "#" * int(frac * 20)
        line = (f"{self.label} [{bar:<20}] {_hms(sim_s)} / {_hms(self.total)} "
                f"{sim_s / wall:6.1f}x {extra}")
        if self.tty:
            sys.stderr.write("\r" + line[:150].ljust(150))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------- offline replay


@dataclass
class Rig:
    """An engine wired to a plan's file ports and sinks (shared by replay and soak)."""

    engine: Engine
    sinks: dict[str, TxSink]
    log: EventLog
    squelches: dict[str, ScriptedSquelch]
    period: int


def build_offline(plan: ReplayPlan, consumers: Mapping[str, Sequence[Callable[[Array], None]]],
                  events_path: Path | None, periodic: bool) -> Rig:
    """Engine with one :class:`FeedPort` per planned port, the patch, and an event log.

    ``periodic`` makes ports and scripted squelches repeat the (base) scenario forever.
    """
    cfg = plan.engine
    rate = cfg.rate_hz
    eng = Engine(cfg)
    log = EventLog(events_path, rate)
    eng.events.subscribe(log)
    segs = port_segments(plan, rate)
    period = int(round(plan.scenario.total_duration_s * rate))
    sinks: dict[str, TxSink] = {}
    squelches: dict[str, ScriptedSquelch] = {}
    for pp in plan.ports:
        sink = TxSink(rate, pp.device_rate_hz, consumers.get(pp.name, ()))
        sinks[pp.name] = sink
        port = FeedPort(pp.name, segs[pp.name], sink, period if periodic else None)
        sq = None
        if pp.scripted:
            sq = ScriptedSquelch(cor_schedule(plan, pp.name, rate),
                                 period if periodic else None)
            squelches[pp.name] = sq
        eng.add_port(port, pp.settings, sq, NoPtt())
    if len(plan.patch_members) >= 2:
        eng.create_patch(plan.patch_name, plan.patch_members, mode=plan.mode,
                         priorities=dict(plan.priorities))
    return Rig(eng, sinks, log, squelches, period)


def replay_offline(plan: ReplayPlan, out: Path, *, quality: bool = True,
                   progress: bool = True) -> dict[str, Any]:
    """Replay ``plan`` on the virtual clock; write ``out``/tx, events.jsonl, metrics.json.

    Returns the metrics dict (also written to ``metrics.json``); the report is written by
    :func:`brug.bench.report.write_report`.
    """
    out.mkdir(parents=True, exist_ok=True)
    sc = plan.scenario
    writers = {pp.name: WavWriter(out / "tx" / f"{pp.name}.wav", pp.device_rate_hz)
               for pp in plan.ports}
    rig = build_offline(plan, {k: [w] for k, w in writers.items()}, out / "events.jsonl",
                        periodic=False)
    eng = rig.engine
    rate, block = eng.rate, eng.block
    total_s = sc.total_duration_s
    ticks = int(math.ceil(total_s * rate / block))
    res = ResourceSampler(every_s=0.5)
    prog = Progress(total_s, "replay", progress)
    chunk = max(1, int(rate / block))          # one simulated second per chunk
    t0 = time.perf_counter()
    engine_s = 0.0
    done = 0
    eng.start()
    while done < ticks:
        n = min(chunk, ticks - done)
        a = time.perf_counter()
        eng.run_offline(n)
        engine_s += time.perf_counter() - a
        done += n
        sim = done * block / rate
        res.maybe(sim)
        rig.log.pending.clear()           # events are on disk; metrics read them back
        prog.update(sim, f"rss {res.samples[-1][2]:.0f} MB" if res.samples else "")
    port_stats = {n: eng.port_object(n).stats.as_dict() for n in eng.port_names}
    eng.stop()
    res.maybe(ticks * block / rate, force=True)
    for s in rig.sinks.values():
        s.close()
    for w in writers.values():
        w.close()
    rig.log.close()
    run_wall = time.perf_counter() - t0
    prog.update(total_s, "measuring", force=True)
    prog.done()
    m0 = time.perf_counter()
    outputs = read_outputs(out, plan)
    events = read_events(out / "events.jsonl")
    records = measure(plan, sc.transmissions, outputs, events, quality=quality,
                      run_end_s=total_s)
    run = run_figures(plan, events, total_s, outputs, port_stats)
    run["resources"] = res.figures()
    run["late_ticks"] = eng.late_ticks
    metrics = {
        "schema": "brug-bench-metrics/1", "mode": "offline", "scenario": scenario_info(sc),
        "engine": dataclasses.asdict(plan.engine), "site": plan.site, "ports": plan.describe(),
        "patch": {"name": plan.patch_name, "members": list(plan.patch_members),
                  "mode": plan.mode, "priorities": dict(plan.priorities)},
        "timing": {"sim_s": round(total_s, 3), "wall_s": round(run_wall, 3),
                   "engine_s": round(engine_s, 3),
                   "speed_x": round(total_s / max(run_wall, 1e-9), 1),
                   "engine_speed_x": round(total_s / max(engine_s, 1e-9), 1),
                   "us_per_tick": round(engine_s / max(ticks, 1) * 1e6, 1),
                   "measure_s": round(time.perf_counter() - m0, 3)},
        "summary": summarize(records), "run": run, "transmissions": records,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def read_outputs(out: Path, plan: ReplayPlan) -> dict[str, tuple[Array, int]]:
    """``tx/<port>.wav`` of every planned port as ``(float32 samples, rate_hz)``."""
    res = {}
    for pp in plan.ports:
        p = out / "tx" / f"{pp.name}.wav"
        if p.exists():
            x, fs = sf.read(str(p), dtype="float32", always_2d=True)
            res[pp.name] = (np.ascontiguousarray(x[:, 0]), int(fs))
    return res


def read_events(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
