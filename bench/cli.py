"""``brug bench replay|soak|compare``: the soak-test bench on the command line.

Examples::

    brug bench replay --out runs/a --offline              # the bundled OP HARBOUR scenario
    brug bench replay my.yaml --out runs/b --realtime --seconds 30
    brug bench soak --hours 24 --out runs/soak            # 24 h simulated, offline
    brug bench compare runs/a runs/b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from brug.bench.scenario import BUNDLED_SCENARIO, Scenario, ScenarioError, load_scenario


def _scenario(args: argparse.Namespace) -> Scenario:
    sc = load_scenario(args.scenario or BUNDLED_SCENARIO)
    if getattr(args, "seconds", None):
        sc = sc.truncated(args.seconds)
    if args.stretch != 1.0:
        sc = sc.stretched(args.stretch)
    return sc


def _plan(args: argparse.Namespace, sc: Scenario) -> Any:
    import dataclasses

    from brug.bench.plan import default_plan, site_plan
    from brug.bench.replay import quantize_period

    sc = quantize_period(sc)
    plan = site_plan(sc, args.site) if args.site else default_plan(sc)
    if args.block_ms:
        plan = dataclasses.replace(plan, engine=dataclasses.replace(plan.engine,
                                                                    block_ms=args.block_ms))
    if args.clock:
        names = {p.name for p in plan.ports}
        if args.clock not in ("first", "floor", "none") and args.clock not in names:
            raise ScenarioError("--clock", 0, "", f"{args.clock!r} is no port of this run "
                                f"(ports: {', '.join(sorted(names))}; or first, floor, none)")
        plan = dataclasses.replace(plan, engine=dataclasses.replace(plan.engine,
                                                                    clock=args.clock))
    return plan


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", type=Path, default=None,
                   help="traffic script (radio-traffic-script/1); default: the bundled "
                        "OP HARBOUR scenario")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--offline", dest="mode", action="store_const", const="offline",
                      help="virtual clock, file ports, as fast as the CPU allows (default)")
    mode.add_argument("--realtime", dest="mode", action="store_const", const="realtime",
                      help="virtual sound cards and real PortAudio streams, wall clock")
    p.set_defaults(mode="offline")
    p.add_argument("--site", type=Path, help="site file mapping network/talkgroup pairs to "
                                             "ports and profiles (default: one port per pair)")
    p.add_argument("--stretch", type=float, default=1.0,
                   help="scale the idle gaps between overs by this factor")
    p.add_argument("--block-ms", type=float, default=None, help="engine block (ms)")
    p.add_argument("--clock", default=None, metavar="PORT|first|floor|none",
                   help="realtime: the sound card whose capture clocks the engine "
                        "(default: the site file's engine.clock)")
    p.add_argument("--no-quality", action="store_true", help="skip PESQ and STOI")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _replay(args: argparse.Namespace) -> int:
    from brug.bench.report import write_report

    sc = _scenario(args)
    if args.loops > 1:
        from brug.bench.replay import quantize_period

        sc = quantize_period(sc).looped(args.loops)
    plan = _plan(args, sc)
    if args.mode == "realtime":
        from brug.bench.realtime import replay_realtime

        m = replay_realtime(plan, args.out, quality=not args.no_quality,
                            progress=not args.quiet)
    else:
        from brug.bench.replay import replay_offline

        m = replay_offline(plan, args.out, quality=not args.no_quality, progress=not args.quiet)
    rep = write_report(m, args.out)
    s = m["summary"]
    print(f"{m['mode']} replay of {m['scenario']['id']}: {s['forwarded']}/"
          f"{s['expected_forwards']} heard, {s['missed']} missed, {s['leaked']} leaked or "
          f"against the floor; onset latency median "
          f"{(s['latency_onset_ms'] or {}).get('median')} ms; {m['timing']['speed_x']}x real "
          f"time; report {rep}")
    return 1 if s["missed"] or s["leaked"] else 0


def _soak(args: argparse.Namespace) -> int:
    from brug.bench.report import write_report
    from brug.bench.soak import SoakLimits, soak_offline

    if args.hours <= 0:
        raise ScenarioError("--hours", 0, "", f"--hours must be > 0, got {args.hours}")
    sc = _scenario(args)
    plan = _plan(args, sc)
    limits = SoakLimits(args.max_rss_growth_mb, args.max_drift_ms)
    if args.mode == "realtime":
        from brug.bench.realtime import soak_realtime

        m = soak_realtime(plan, args.out, args.hours, limits=limits, progress=not args.quiet,
                          quality=not args.no_quality)
    else:
        m = soak_offline(plan, args.out, args.hours, limits=limits, progress=not args.quiet,
                         quality=not args.no_quality)
    rep = write_report(m, args.out)
    v = m["verdict"]
    r = m["run"]["resources"]
    print(f"soak {v['status']}: {m['timing']['sim_s'] / 3600:.2f} h simulated in "
          f"{m['timing']['wall_s']:.0f} s ({m['timing']['speed_x']}x real time), RSS "
          f"{r.get('rss_start_mb')} -> {r.get('rss_end_mb')} MB (growth after warm-up "
          f"{r.get('rss_growth_after_warmup_mb')} MB); report {rep}")
    for f in v["failures"]:
        print(f"brug bench soak: FAIL: {f}", file=sys.stderr)
    return 1 if v["failures"] else 0


def _compare(args: argparse.Namespace) -> int:
    from brug.bench.compare import compare, format_compare, load_metrics

    res = compare(load_metrics(args.a), load_metrics(args.b))
    print(format_compare(res, str(args.a), str(args.b)))
    return 0


def _latency(args: argparse.Namespace) -> int:
    from brug.bench.latency import LatencySetup, run_latency

    for name in ("minutes", "every_s"):
        if getattr(args, name) <= 0:
            raise ScenarioError(f"--{name.replace('_', '-')}", 0, "",
                                f"must be > 0, got {getattr(args, name)}")
    setup = LatencySetup(minutes=args.minutes, every_s=args.every_s, clock=args.clock,
                         latency_ms=args.latency_ms, rx_ms=args.rx_ms, tx_ms=args.tx_ms,
                         target_ms=args.target_ms, max_drift_ms=args.max_drift_ms,
                         wire=args.wire, noise_dbfs=args.noise_dbfs,
                         both_ways=args.both_ways)
    if args.both_ways and args.wire:
        raise ScenarioError("--both-ways", 0, "", "the bare wire goes one way only; drop "
                            "--wire or --both-ways")
    if args.noise_dbfs is not None and not -90.0 <= args.noise_dbfs <= -20.0:
        raise ScenarioError("--noise-dbfs", 0, "", f"must be -90..-20 dBFS, got "
                            f"{args.noise_dbfs}")
    m = run_latency(setup, args.out, progress=not args.quiet)
    s = m["summary"]
    a = s.get("added_ms", {})
    print(f"latency {s['verdict']['status']}: {s['heard']}/{s['overs']} overs heard, added "
          f"delay median {a.get('median')} ms (p95 {a.get('p95')}, {a.get('min')}.."
          f"{a.get('max')}), drift {s.get('drift_ms')} ms, {s['glitches']} glitch windows; "
          f"report {args.out / 'report.md'}")
    for w, b in s.get("by_way", {}).items():
        print(f"  {w} -> {'hear' if w == 'talk' else 'talk'}: {b['heard']}/{b['overs']} heard, "
              f"median {b['median_ms']} ms (p95 {b['p95_ms']}), {b['glitches']} glitch windows")
    for f in s["verdict"]["failures"]:
        print(f"brug bench latency: FAIL: {f}", file=sys.stderr)
    return 1 if s["verdict"]["failures"] else 0


def register(subparsers: Any) -> None:
    """Add ``brug bench replay|soak|latency|compare``."""
    p = subparsers.add_parser("bench", help="soak-test bench: replay recorded traffic, measure, "
                                            "report")
    sub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    r = sub.add_parser("replay", help="replay a traffic scenario through the engine")
    _common(r)
    r.add_argument("--loops", type=int, default=1, help="play the scenario N times")
    r.add_argument("--seconds", type=float, default=None,
                   help="only the first S seconds of the scenario")
    r.set_defaults(func=_replay)
    s = sub.add_parser("soak", help="loop a scenario for hours; fail on xruns, leaks, lost "
                                    "transmissions or latency drift")
    _common(s)
    s.add_argument("--hours", type=float, required=True, help="simulated (offline) or wall "
                                                              "(realtime) hours")
    s.add_argument("--seconds", type=float, default=None,
                   help="loop only the first S seconds of the scenario")
    s.add_argument("--max-rss-growth-mb", type=float, default=2.0,
                   help="fail when resident memory grows more than this after warm-up")
    s.add_argument("--max-drift-ms", type=float, default=5.0,
                   help="fail when a loop's median latency moves more than this")
    s.set_defaults(func=_soak)
    lt = sub.add_parser("latency", help="the delay the gateway adds through virtual sound "
                                        "cards, over minutes (docs/soundcards.md)")
    lt.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    lt.add_argument("--every-s", type=float, default=7.0, help="one over every S seconds")
    lt.add_argument("--clock", choices=("none", "talk", "hear", "floor"), default="none",
                    help="the engine ticks on the monotonic clock (default), a card, or the "
                         "card of whoever took the floor last")
    lt.add_argument("--both-ways", action="store_true",
                    help="every second over goes the other way (hear -> talk)")
    lt.add_argument("--latency-ms", type=float, default=None,
                    help="PortAudio latency asked for on both cards (site key buffers)")
    lt.add_argument("--rx-ms", type=float, default=None, help="receive ring set point, ms")
    lt.add_argument("--tx-ms", type=float, default=None, help="transmit ring set point, ms")
    lt.add_argument("--target-ms", type=float, default=35.0,
                    help="fail when the median added delay is not below this")
    lt.add_argument("--max-drift-ms", type=float, default=2.0,
                    help="fail when the delay moves more than this from the first minute")
    lt.add_argument("--noise-dbfs", type=float, default=None,
                    help="background noise under the talker's speech, for the whole run, dBFS "
                         "(a path whose pauses are not digital silence)")
    lt.add_argument("--wire", action="store_true",
                    help="measure a bare sounddevice wire in the gateway's place (the path's "
                         "own floor)")
    lt.add_argument("--out", type=Path, default=Path("runs/latency"), help="output directory")
    lt.add_argument("--quiet", action="store_true", help="no progress line")
    lt.set_defaults(func=_latency)
    c = sub.add_parser("compare", help="what got better or worse between two runs")
    c.add_argument("a", type=Path, help="run directory (or metrics.json) A")
    c.add_argument("b", type=Path, help="run directory (or metrics.json) B")
    c.set_defaults(func=_compare)
