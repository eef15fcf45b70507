"""report.md with PNG plots, from a replay's or a soak's ``metrics.json``.

Plots (matplotlib, Agg backend, no display needed):

* ``latency.png`` - latency at the onset and at the end of every over, per destination, and the
  speech lost at the start (first-syllable clipping) per transmission;
* ``timeline.png`` - who held the floor, which ports the gateway keyed (PTT) and whose COR was
  open, over the run (the first 10 minutes of a soak);
* ``resources.png`` - resident memory and CPU over the run (simulated time);
* ``soak.png`` (soak only) - per-loop latency, clipping and forwarding over the soak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _port_colors(ports: Sequence[str]) -> dict[str, str]:
    return {p: _COLORS[i % len(_COLORS)] for i, p in enumerate(ports)}


def _fmt(v: Any, unit: str = "", nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}{unit}"
    return f"{v}{unit}"


def plot_latency(m: Mapping[str, Any], path: Path) -> None:
    recs = m["transmissions"]
    ports = [p["port"] for p in m["ports"]]
    col = _port_colors(ports)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(13, 7), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    labels = [r["id"] for r in recs]
    xs = range(len(recs))
    offs = {p: (i - (len(ports) - 1) / 2) * 0.12 for i, p in enumerate(ports)}
    seen: set[str] = set()
    for x, r in zip(xs, recs, strict=True):
        for d in r["deliveries"]:
            if not d["forwarded"] or d["latency_onset_ms"] is None:
                continue
            xo = x + offs[d["dest"]]
            lab = d["dest"] if d["dest"] not in seen else None
            seen.add(d["dest"])
            ax1.plot([xo, xo], [d["latency_end_ms"], d["latency_onset_ms"]], color=col[d["dest"]],
                     lw=1.2, alpha=0.7)
            ax1.plot(xo, d["latency_onset_ms"], "o", color=col[d["dest"]], ms=5, label=lab)
            ax1.plot(xo, d["latency_end_ms"], "_", color=col[d["dest"]], ms=8, mew=2)
        if any(not d["ok"] for d in r["deliveries"]):
            ax1.axvspan(x - 0.45, x + 0.45, color="#ffcccc", zorder=0)
    ax1.set_ylabel("latency (ms)\n● at onset, — at end")
    ax1.set_title("Latency per transmission and destination (red band: a wrong routing "
                  "decision)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="upper right", title="destination", title_fontsize=8)
    clip = []
    lost = []
    for r in recs:
        c = [d["clipped_start_ms"] for d in r["deliveries"]
             if d["forwarded"] and d["clipped_start_ms"] is not None]
        e = [d["lost_end_ms"] for d in r["deliveries"]
             if d["forwarded"] and d["lost_end_ms"] is not None]
        clip.append(max(c) if c else 0.0)
        lost.append(max(e) if e else 0.0)
    ax2.bar([x - 0.2 for x in xs], clip, width=0.4, color="#d62728", label="lost at start (max)")
    ax2.bar([x + 0.2 for x in xs], lost, width=0.4, color="#7f7f7f", label="lost at end (max)")
    ax2.set_ylabel("speech lost (ms)")
    ax2.grid(alpha=0.3, axis="y")
    ax2.legend(fontsize=8, loc="upper right")
    step = max(1, len(recs) // 40)
    ax2.set_xticks(list(xs)[::step])
    ax2.set_xticklabels(labels[::step], rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_timeline(m: Mapping[str, Any], path: Path, max_s: float = 600.0) -> None:
    tl = m["run"]["timeline"]
    ports = [p["port"] for p in m["ports"]]
    col = _port_colors(ports)
    end = min(m["timing"]["sim_s"], max_s)
    fig, ax = plt.subplots(figsize=(13, 1.2 + 0.75 * len(ports)))
    for i, p in enumerate(ports):
        y = len(ports) - 1 - i
        for a, b, h in tl["floor"]:
            if h == p and a < end:
                ax.broken_barh([(a, min(b, end) - a)], (y - 0.45, 0.9), color=col[p], alpha=0.15)
        for a, b in tl["cor"].get(p, []):
            if a < end:
                ax.broken_barh([(a, min(b, end) - a)], (y + 0.05, 0.3), color=col[p])
        for a, b in tl["ptt"].get(p, []):
            if a < end:
                ax.broken_barh([(a, min(b, end) - a)], (y - 0.35, 0.3), color="#444444")
    ax.set_yticks(range(len(ports)))
    ax.set_yticklabels(list(reversed(ports)), fontsize=8)
    ax.set_xlim(0, end)
    ax.set_xlabel("scenario time (s)")
    ax.set_title("Who talked where: COR open (upper bar, port colour), gateway PTT keyed "
                 "(lower bar, grey), floor held (shaded row)")
    ax.legend(handles=[Patch(color="#888888", alpha=0.3, label="floor holder"),
                       Patch(color="#1f77b4", label="COR open (receiving)"),
                       Patch(color="#444444", label="PTT keyed by the gateway")],
              fontsize=8, loc="upper right", ncol=3)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_resources(m: Mapping[str, Any], path: Path) -> None:
    s = m["run"]["resources"].get("samples", [])
    if not s:
        return
    sim_h = [v[1] / 3600.0 for v in s]
    use_h = sim_h[-1] >= 0.5
    xs = sim_h if use_h else [v[1] for v in s]
    fig, ax1 = plt.subplots(figsize=(11, 3.8))
    ax1.plot(xs, [v[2] for v in s], color="#1f77b4", label="resident memory (MB)")
    ax1.set_ylabel("RSS (MB)", color="#1f77b4")
    ax1.set_xlabel("simulated time (h)" if use_h else "simulated time (s)")
    ax2 = ax1.twinx()
    ax2.plot(xs[1:], [v[3] for v in s[1:]], color="#ff7f0e", alpha=0.6, lw=0.8,
             label="CPU (% of one core)")
    ax2.set_ylabel("CPU (%)", color="#ff7f0e")
    r = m["run"]["resources"]
    ax1.set_title(f"Memory and CPU: RSS {r.get('rss_start_mb')} -> {r.get('rss_end_mb')} MB, "
                  f"growth after warm-up {r.get('rss_growth_after_warmup_mb')} MB, "
                  f"CPU mean {r.get('cpu_mean_pct')} %")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_soak(m: Mapping[str, Any], path: Path) -> None:
    loops = m.get("loops", [])
    if not loops:
        return
    xs = [lp["end_sim_s"] / 3600.0 for lp in loops]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    for key, lab, c in (("latency_onset_ms", "onset latency median", "#1f77b4"),
                        ("latency_end_ms", "end latency median", "#2ca02c")):
        a1.plot(xs, [(lp["summary"].get(key) or {}).get("median") for lp in loops], ".-",
                color=c, label=lab)
    a1.plot(xs, [(lp["summary"].get("clipped_start_ms") or {}).get("max") for lp in loops],
            ".-", color="#d62728", label="clipped start, max")
    a1.set_ylabel("ms")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a1.set_title("Per loop of the scenario over the soak")
    a2.plot(xs, [lp["summary"]["forwarded"] for lp in loops], ".-", label="forwarded")
    a2.plot(xs, [lp["summary"]["wrong"] for lp in loops], ".-", color="#d62728",
            label="wrong decisions")
    a2.set_ylabel("deliveries per loop")
    a2.set_xlabel("simulated time (h)")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(m: Mapping[str, Any], out: Path) -> Path:
    """Write ``report.md`` and its PNGs into ``out``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = []
    if m.get("transmissions"):
        plot_latency(m, out / "latency.png")
        pngs.append(("Latency and lost speech per transmission", "latency.png"))
    if m["run"].get("timeline"):
        plot_timeline(m, out / "timeline.png")
        pngs.append(("Floor, PTT and COR timeline", "timeline.png"))
    if m.get("loops"):
        plot_soak(m, out / "soak.png")
        pngs.append(("Over the soak", "soak.png"))
    if m["run"].get("resources", {}).get("samples"):
        plot_resources(m, out / "resources.png")
        pngs.append(("CPU and memory", "resources.png"))
    s = m["summary"]
    sc = m["scenario"]
    t = m["timing"]
    lines = [f"# Bench {m['mode']}: {sc['title']}", ""]
    verdict = m.get("verdict")
    if verdict:
        lines += [f"**{verdict['status']}**" + (": " + "; ".join(verdict["failures"])
                                                 if verdict["failures"] else ""), ""]
    lines += [
        f"Scenario `{sc['file']}` ({sc['transmissions']} transmissions, "
        f"{sc['duration_s']:.0f} s{', ' + str(sc['loops']) + ' loops' if sc['loops'] > 1 else ''}"
        f"{', gaps x' + str(sc['stretch']) if sc['stretch'] != 1 else ''}); patch "
        f"`{m['patch']['name']}` ({m['patch']['mode']}): {', '.join(m['patch']['members'])}.",
        f"Run: {t['sim_s']:.0f} s simulated in {t['wall_s']:.1f} s wall "
        f"(**{t['speed_x']}x real time**; engine alone {t.get('engine_speed_x', '-')}x, "
        f"{t.get('us_per_tick', '-')} µs per tick).", "",
        "## Summary", "",
        "| figure | value |", "|---|---|",
        f"| deliveries that had to be heard / were heard | {s['expected_forwards']} / "
        f"{s['forwarded']} |",
        f"| missed (should have been heard) | {s['missed']} |",
        f"| heard late, after the destination's own over (either is right) | "
        f"{s.get('forwarded_late_to_busy', 0)} |",
        f"| leaked or forwarded against the floor | {s['leaked']} |",
        f"| lost because the source port was still being keyed (half duplex) | "
        f"{s['lost_busy']} |",
    ]
    for key, lab, unit in (("latency_onset_ms", "latency at the onset", " ms"),
                           ("latency_end_ms", "latency at the end of the over", " ms"),
                           ("clipped_start_ms", "speech lost at the start", " ms"),
                           ("lost_end_ms", "speech lost at the end", " ms"),
                           ("level_error_db", "level error", " dB"),
                           ("pesq_nb", "PESQ-NB (MOS-LQO)", ""), ("pesq_wb", "PESQ-WB", ""),
                           ("stoi", "STOI", "")):
        v = s.get(key)
        if v:
            lines.append(f"| {lab} (median / p95 / max) | {v['median']}{unit} / "
                         f"{v['p95']}{unit} / {v['max']}{unit} |")
    run = m["run"]
    lines += [
        f"| dropouts inside overs | {s['gaps']} ({s['gap_ms']} ms) |",
        f"| floor conflicts | {len(run['floor_conflicts'])} |",
        f"| PTT key-ups | {sum(run['ptt_keyups'].values())} "
        f"({', '.join(f'{k} {v}' for k, v in run['ptt_keyups'].items())}) |",
        f"| TOT releases | {len(run['tot_releases'])} |",
        f"| xruns (under/over) | {run['xruns']['underruns']} / {run['xruns']['overruns']} |",
        f"| faults | {len(run['faults'])} |",
    ]
    r = run.get("resources", {})
    if r.get("samples"):
        lines.append(f"| resident memory start / end / growth after warm-up | "
                     f"{r['rss_start_mb']} / {r['rss_end_mb']} / "
                     f"{r['rss_growth_after_warmup_mb']} MB |")
        lines.append(f"| CPU mean / max | {r['cpu_mean_pct']} / {r['cpu_max_pct']} % |")
    for name, v in run.get("ports_outside_patch", {}).items():
        lines.append(f"| port outside the patch `{name}` | keyed {v['keyed_s']} s, peak "
                     f"{_fmt(v['peak_dbfs'], ' dBFS', 1)} ({'silent' if v['ok'] else 'NOT SILENT'})"
                     " |")
    lines.append("")
    for title, png in pngs:
        lines += [f"## {title}", "", f"![{title}]({png})", ""]
    bad = [(rec, d) for rec in m.get("transmissions", []) for d in rec["deliveries"]
           if not d["ok"]]
    if bad:
        lines += ["## Wrong routing decisions", "", "| tx | from | to | verdict | heard | "
                  "latency onset | lost at start |", "|---|---|---|---|---:|---:|---:|"]
        for rec, d in bad:
            lines.append(f"| {rec['id']} | {rec['port']} | {d['dest']} | {d['verdict']} | "
                         f"{d['fraction'] * 100:.0f} % | {_fmt(d['latency_onset_ms'], ' ms')} | "
                         f"{_fmt(d['clipped_start_ms'], ' ms')} |")
        lines.append("")
    if run["floor_conflicts"]:
        lines += ["## Floor conflicts", "", "| t (s) | port | holder | resolution |",
                  "|---:|---|---|---|"]
        for c in run["floor_conflicts"][:50]:
            lines.append(f"| {c['t_s']:.2f} | {c['port']} | {c.get('holder') or c.get('prev')} "
                         f"| {c['resolution']} |")
        lines.append("")
    if m.get("transmissions") and len(m["transmissions"]) <= 200:
        lines += ["## Transmissions", "",
                  "| tx | t (s) | from | unit | decision | heard by | latency onset/end ms | "
                  "lost start/end ms | PESQ-NB | STOI |",
                  "|---|---:|---|---|---|---|---|---|---:|---:|"]
        for rec in m["transmissions"]:
            fw = [d for d in rec["deliveries"] if d["forwarded"]]
            heard = ", ".join(d["dest"].split(".")[0] for d in fw) or "nobody"

            def rng(key: str, ds: list[dict[str, Any]] = fw) -> str:
                v = [d[key] for d in ds if d[key] is not None]
                if not v:
                    return "-"
                return f"{min(v):.0f}" if min(v) == max(v) else f"{min(v):.0f}-{max(v):.0f}"

            dec = rec["reason"] + (f" ({rec['holder']})" if rec["holder"] else "")
            if rec["cut_reason"]:
                dec += f", cut: {rec['cut_reason']}"
            lines.append(
                f"| {rec['id']} | {rec['start_s']:.1f} | {rec['port']} | {rec['unit']} | {dec} "
                f"| {heard} | {rng('latency_onset_ms')}/{rng('latency_end_ms')} | "
                f"{rng('clipped_start_ms')}/{rng('lost_end_ms')} | {rng('pesq_nb')} | "
                f"{rng('stoi')} |")
        lines.append("")
    lines += ["## Ports", "", "| port | pair | kind | COR | lead ms | hang ms | TOT s | "
              "guard ms | rate Hz |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for p in m["ports"]:
        cor = p["squelch"] + (f" +{p['cor_delay_ms']:.0f} ms" if p["squelch"] != "vox" else "")
        lines.append(f"| {p['port']} | {p['pair']} | {p['kind']} | {cor} | {p['lead_ms']:.0f} | "
                     f"{p['hang_ms']:.0f} | {p['tot_s']:.0f} | {p['guard_ms']:.0f} | "
                     f"{p['device_rate_hz']} |")
    lines += ["", "How the figures are measured: see docs/bench.md (latency per talkspurt by "
              "cross-correlation, clipping from the active-speech onset after alignment).", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
