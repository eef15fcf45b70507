"""``brug bench soak``: loop a scenario for hours and fail loudly when the gateway degrades.

Offline the engine runs on its virtual clock as fast as the CPU allows. Audio is never kept
for the whole run: each port's output goes into one preallocated loop-long buffer at the device
rate, every loop is measured as soon as it ends (forwarding, latency, clipping, gaps, level;
PESQ/STOI on the first and the last loop) and the buffer is reused. Memory therefore stays flat
however long the soak runs, and the soak checks exactly that.

The soak fails (exit status 1, one line per reason) on:

* any ring-buffer underrun or overrun (port stats) or late engine tick;
* a leak trend: resident memory growing more than ``--max-rss-growth-mb`` (2 MB) after the
  warm-up (the first two loops, at least 20 % of the run);
* a lost transmission: a delivery that had to be heard and was not, one heard in the first loop
  but not in a later one, or anything reaching a port outside the patch;
* latency drift: the median onset or end latency of a loop more than ``--max-drift-ms`` (5 ms)
  away from the first loop's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from brug.bench.metrics import MeasureCache, measure, run_figures, scenario_info, summarize
from brug.bench.plan import ReplayPlan
from brug.bench.replay import (
    Progress,
    ResourceSampler,
    build_offline,
    quantize_period,
    write_json,
)
from brug.bench.scenario import Transmission

Array = npt.NDArray[np.float32]


class LoopBuffer:
    """One loop of a port's output at the device rate, preallocated and reused.

    Samples are placed by their absolute index; samples of a loop already measured (the
    resampler's last few) are dropped.
    """

    def __init__(self, length: int) -> None:
        self.buf = np.zeros(length, np.float32)
        self.length = length
        self.loop = 0
        self._n = 0               # absolute device samples received

    def __call__(self, y: Array) -> None:
        start = self._n - self.loop * self.length
        self._n += len(y)
        a = max(0, start)
        b = min(self.length, start + len(y))
        if b > a:
            self.buf[a:b] = y[a - start:b - start]

    def advance(self) -> None:
        """The current loop was measured: start the next one."""
        self.loop += 1
        self.buf[:] = 0.0
        # samples of the next loop that arrived early (none in practice) are lost


@dataclass
class SoakLimits:
    max_rss_growth_mb: float = 2.0
    max_drift_ms: float = 5.0


def _loop_txs(base: Sequence[Transmission], k: int, period_s: float) -> list[Transmission]:
    return [dataclasses.replace(t, id=f"{t.source_id or t.id}@{k}",
                                start_s=t.start_s + k * period_s,
                                end_s=t.end_s + k * period_s, loop=k) for t in base]


def soak_offline(plan: ReplayPlan, out: Path, hours: float, *, limits: SoakLimits | None = None,
                 progress: bool = True, quality: bool = True) -> dict[str, Any]:
    """Loop ``plan``'s scenario for ``hours`` of simulated time; write metrics.json.

    Returns the metrics dict with ``verdict`` ``{"status": "PASS"|"FAIL", "failures": [...]}``.
    """
    limits = limits or SoakLimits()
    out.mkdir(parents=True, exist_ok=True)
    sc = quantize_period(plan.scenario)
    plan = dataclasses.replace(plan, scenario=sc)
    period_s = sc.total_duration_s
    n_loops = max(1, int(math.ceil(hours * 3600.0 / period_s)))
    bufs = {pp.name: LoopBuffer(int(round(period_s * pp.device_rate_hz))) for pp in plan.ports}
    rig = build_offline(plan, {k: [b] for k, b in bufs.items()}, out / "events.jsonl",
                        periodic=True)
    eng = rig.engine
    rate, block = eng.rate, eng.block
    if rig.period % block:
        raise ValueError(f"loop of {period_s} s is not a whole number of {block}-sample blocks")
    ticks_loop = rig.period // block
    chunk = max(1, int(rate / block) * 10)            # 10 simulated seconds
    total_s = n_loops * period_s
    res = ResourceSampler(every_s=1.0)
    prog = Progress(total_s, "soak", progress)
    loops: list[dict[str, Any]] = []
    first_records: list[dict[str, Any]] = []
    last_records: list[dict[str, Any]] = []
    first_events: list[dict[str, Any]] = []
    heard0: set[tuple[str, str]] = set()
    failures: list[str] = []
    t0 = time.perf_counter()
    engine_s = measure_s = 0.0
    # the sources, their frames and the search's work arrays, the same every loop
    mcache = MeasureCache()
    eng.start()
    for k in range(n_loops):
        done = 0
        while done < ticks_loop:
            n = min(chunk, ticks_loop - done)
            a = time.perf_counter()
            eng.run_offline(n)
            engine_s += time.perf_counter() - a
            done += n
            sim = (k * ticks_loop + done) * block / rate
            res.maybe(sim)
            lp = loops[-1]["summary"] if loops else None
            extra = (f"loop {k + 1}/{n_loops} rss {res.samples[-1][2]:.1f} MB"
                     + (f" heard {lp['forwarded']}/{lp['expected_forwards']}"
                        f" onset {(lp['latency_onset_ms'] or {}).get('median')} ms"
                        f" wrong {lp['wrong']}" if lp else ""))
            prog.update(sim, extra)
        a = time.perf_counter()
        events = rig.log.take()
        txs = _loop_txs(sc.transmissions, k, period_s)
        outputs = {name: (b.buf, plan.port(name).device_rate_hz) for name, b in bufs.items()}
        q = quality and (k == 0 or k == n_loops - 1)
        recs = measure(plan, txs, outputs, events, offset_s=k * period_s, quality=q,
                       run_end_s=(k + 1) * period_s, cache=mcache)
        summ = summarize(recs)
        heard = {(d["tx"].split("@")[0], d["dest"]) for r in recs for d in r["deliveries"]
                 if d["forwarded"]}
        if k == 0:
            heard0 = heard
            first_records, first_events = recs, events
        lost = sorted(heard0 - heard)
        loop_rec = {"loop": k, "end_sim_s": round((k + 1) * period_s, 3),
                    "summary": {key: summ[key] for key in (
                        "expected_forwards", "forwarded", "missed", "leaked", "wrong",
                        "latency_onset_ms", "latency_end_ms", "clipped_start_ms", "gaps")},
                    "lost_vs_first_loop": [f"{t}->{d}" for t, d in lost]}
        loops.append(loop_rec)
        if summ["missed"]:
            failures.append(f"loop {k}: {summ['missed']} transmission(s) not heard that had to be")
        leaks = [d for r in recs for d in r["deliveries"]
                 if d["reason"] == "not_patched" and d["forwarded"]]
        if leaks:
            failures.append(f"loop {k}: {len(leaks)} leak(s) out of or into a non-patched port")
        if lost:
            failures.append(f"loop {k}: lost transmission(s) heard in loop 0: "
                            f"{', '.join(f'{t}->{d}' for t, d in lost[:5])}")
        for key in ("latency_onset_ms", "latency_end_ms"):
            v0 = (loops[0]["summary"][key] or {}).get("median")
            v = (summ[key] or {}).get("median")
            if v0 is not None and v is not None and abs(v - v0) > limits.max_drift_ms:
                failures.append(f"loop {k}: {key[:-3].replace('_', ' ')} median drifted "
                                f"{v - v0:+.1f} ms from loop 0 ({v0} -> {v} ms)")
        if k == n_loops - 1:
            last_records = recs
        for b in bufs.values():
            b.advance()
        measure_s += time.perf_counter() - a
    port_stats = {n: eng.port_object(n).stats.as_dict() for n in eng.port_names}
    eng.stop()
    res.maybe(total_s, force=True)
    rig.log.close()
    prog.update(total_s, "done", force=True)
    prog.done()
    wall = time.perf_counter() - t0
    # the timeline and key-up counts of the first loop; xruns over the whole soak
    run = run_figures(plan, first_events, period_s, None, port_stats)
    # warm-up: the first two loops and their measurement (imports, caches, allocator pools)
    run["resources"] = res.figures(warmup_sim_s=min(2, n_loops - 1) * period_s)
    run["late_ticks"] = eng.late_ticks
    x = run["xruns"]
    if x["underruns"] or x["overruns"] or eng.late_ticks:
        failures.append(f"ring buffers: {x['underruns']} underruns, {x['overruns']} overruns, "
                        f"{eng.late_ticks} late ticks")
    growth = run["resources"].get("rss_growth_after_warmup_mb", 0.0)
    if growth > limits.max_rss_growth_mb:
        failures.append(f"memory: resident set grew {growth:.2f} MB after warm-up "
                        f"(limit {limits.max_rss_growth_mb} MB, trend "
                        f"{run['resources'].get('rss_trend_mb_per_h')} MB/h)")
    # fold duplicates of the per-loop messages into one line each
    uniq: list[str] = []
    for f in failures:
        if f not in uniq:
            uniq.append(f)
    if len(uniq) > 12:
        uniq = uniq[:12] + [f"... and {len(uniq) - 12} more"]
    info = scenario_info(sc)
    info["loops"] = n_loops
    metrics: dict[str, Any] = {
        "schema": "brug-bench-metrics/1", "mode": "soak-offline", "scenario": info,
        "hours": hours, "engine": dataclasses.asdict(plan.engine), "site": plan.site,
        "ports": plan.describe(),
        "patch": {"name": plan.patch_name, "members": list(plan.patch_members),
                  "mode": plan.mode, "priorities": dict(plan.priorities)},
        "timing": {"sim_s": round(total_s, 3), "wall_s": round(wall, 3),
                   "engine_s": round(engine_s, 3), "measure_s": round(measure_s, 3),
                   "speed_x": round(total_s / max(wall, 1e-9), 1),
                   "engine_speed_x": round(total_s / max(engine_s, 1e-9), 1),
                   "us_per_tick": round(engine_s / max(n_loops * ticks_loop, 1) * 1e6, 1)},
        "verdict": {"status": "FAIL" if uniq else "PASS", "failures": uniq},
        "summary": summarize(last_records), "first_loop_summary": summarize(first_records),
        "run": run, "loops": loops, "transmissions": last_records,
    }
    write_json(out / "metrics.json", metrics)
    return metrics
