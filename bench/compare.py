"""``brug bench compare A B``: what got better or worse between two runs.

Compares the summaries of two ``metrics.json`` files (replay or soak output directories, or the
files themselves) figure by figure, and the routing verdict of every transmission present in
both. Lower is better for latency, lost speech, gaps, errors and resources; higher for PESQ,
STOI, speed and deliveries heard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brug.bench.scenario import ScenarioError

#: (label, path into metrics.json, higher is better, unit, threshold for "changed")
FIGURES: list[tuple[str, tuple[str, ...], bool, str, float]] = [
    ("deliveries heard", ("summary", "forwarded"), True, "", 0.5),
    ("missed", ("summary", "missed"), False, "", 0.5),
    ("leaked / against the floor", ("summary", "leaked"), False, "", 0.5),
    ("wrong decisions", ("summary", "wrong"), False, "", 0.5),
    ("latency at onset, median", ("summary", "latency_onset_ms", "median"), False, " ms", 2.0),
    ("latency at onset, p95", ("summary", "latency_onset_ms", "p95"), False, " ms", 2.0),
    ("latency at end, median", ("summary", "latency_end_ms", "median"), False, " ms", 2.0),
    ("lost at start, p95", ("summary", "clipped_start_ms", "p95"), False, " ms", 5.0),
    ("lost at start, max", ("summary", "clipped_start_ms", "max"), False, " ms", 5.0),
    ("lost at end, p95", ("summary", "lost_end_ms", "p95"), False, " ms", 5.0),
    ("dropouts", ("summary", "gaps"), False, "", 0.5),
    ("dropout time", ("summary", "gap_ms"), False, " ms", 5.0),
    ("level error, max", ("summary", "level_error_db", "max"), False, " dB", 0.2),
    ("PESQ-NB median", ("summary", "pesq_nb", "median"), True, "", 0.05),
    ("PESQ-WB median", ("summary", "pesq_wb", "median"), True, "", 0.05),
    ("STOI median", ("summary", "stoi", "median"), True, "", 0.005),
    ("speed (x real time)", ("timing", "speed_x"), True, "x", 1.0),
    ("µs per tick", ("timing", "us_per_tick"), False, " µs", 5.0),
    ("RSS growth after warm-up", ("run", "resources", "rss_growth_after_warmup_mb"), False,
     " MB", 0.5),
    ("CPU mean", ("run", "resources", "cpu_mean_pct"), False, " %", 5.0),
]


class CompareError(ScenarioError):
    """A run directory without a readable metrics.json."""


def load_metrics(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    try:
        data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CompareError(p, 0, "", f"cannot read run metrics: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CompareError(p, exc.lineno, "", f"not valid JSON: {exc.msg}") from None
    if "summary" not in data:
        raise CompareError(p, 0, "summary", "not a bench metrics.json (no summary)")
    return data


def _get(d: Any, path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return None
        d = d[k]
    return float(d) if isinstance(d, (int, float)) else None


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"figures": [...], "transmissions": [...], "better": n, "worse": n}``."""
    rows = []
    better = worse = 0
    for label, path, higher, unit, thr in FIGURES:
        va, vb = _get(a, path), _get(b, path)
        if va is None and vb is None:
            continue
        change = "n/a"
        if va is not None and vb is not None:
            delta = vb - va
            if abs(delta) < thr:
                change = "same"
            elif (delta > 0) == higher:
                change = "better"
                better += 1
            else:
                change = "worse"
                worse += 1
        rows.append({"figure": label, "a": va, "b": vb, "unit": unit, "change": change})
    txs = []
    da = {(r["id"], d["dest"]): d for r in a.get("transmissions", []) for d in r["deliveries"]}
    db = {(r["id"], d["dest"]): d for r in b.get("transmissions", []) for d in r["deliveries"]}
    for key in sorted(set(da) & set(db)):
        x, y = da[key], db[key]
        if x["ok"] != y["ok"] or x["forwarded"] != y["forwarded"]:
            txs.append({"tx": key[0], "dest": key[1], "a": x["verdict"], "b": y["verdict"],
                        "change": "better" if y["ok"] and not x["ok"] else
                        "worse" if x["ok"] and not y["ok"] else "changed"})
    return {"figures": rows, "transmissions": txs, "better": better, "worse": worse}


def format_compare(res: dict[str, Any], name_a: str, name_b: str) -> str:
    def f(v: float | None, unit: str) -> str:
        if v is None:
            return "-"
        return f"{v:.3g}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}"

    mark = {"better": "+ better", "worse": "- WORSE", "same": "  same", "n/a": "  n/a"}
    w = max(len(r["figure"]) for r in res["figures"]) if res["figures"] else 10
    lines = [f"{'figure':<{w}}  {'A':>12}  {'B':>12}  change", "-" * (w + 38)]
    for r in res["figures"]:
        lines.append(f"{r['figure']:<{w}}  {f(r['a'], r['unit']):>12}  "
                     f"{f(r['b'], r['unit']):>12}  {mark[r['change']]}")
    if res["transmissions"]:
        lines += ["", "routing decisions that changed:"]
        for t in res["transmissions"]:
            lines.append(f"  {t['tx']} -> {t['dest']}: {t['a']}  =>  {t['b']}  ({t['change']})")
    lines += ["", f"A = {name_a}", f"B = {name_b}",
              f"{res['better']} better, {res['worse']} worse"]
    return "\n".join(lines)
