"""``brug bench latency``: the delay the gateway adds through real sound cards, over minutes.

Two virtual cards (``brug soundcards``): the terminal of ``lat-talk`` keys up every
``every_s`` seconds with a short phrase, a 200 ms pause and a sentence (one over each); the
gateway (VOX, half duplex, no PTT lead) patches it to ``lat-hear``. A terminal process (the
realtime bench's, :class:`~brug.bench.realtime.TerminalSide`) plays the overs into
``lat-talk``'s ``air_rx`` and records two devices on one clock: ``lat-hear``'s ``air_tx`` (what
the gateway sent) and ``lat-talk``'s gateway input ``brug_lat-talk_in`` (what reached the
gateway, the rig's own path). Each stream's clock is fitted to all its timestamps over the
run (:func:`~brug.bench.realtime.clock_fit`): PulseAudio's timestamps jitter by about 10 ms,
so re-anchoring on single ones (as the realtime replay does, to follow a terminal that loses
time) moved the rig's own path in 10 ms steps, and the virtual cards' clocks differ by tens of
ppm, so counting samples from one timestamp made the delay seem to grow by 1.6 ms a minute.
The delay of each over is found by cross-correlation on the second half of its sentence (by
then the engine has absorbed its pre-roll in the pauses), and the gateway's share is the
first minus the second.

Per over: added delay (ms), the rig's path, and how well the speech came through (the
correlation of each 250 ms window, each voiced stretch of it aligned within 10 ms: a delay
that changes in a pause is no glitch). A window below 0.9 counts as a glitch. The run's
verdict: the median added delay against ``target_ms``, its drift from the first to the last
minute, glitches, the ports' xruns and reopens.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from brug.bench.metrics import Search
from brug.bench.realtime import CARD_RATE_HZ, TerminalSide, clock_fit, open_cards
from brug.bench.replay import Progress, write_json
from brug.gateway.ports.soundcard import DEFAULT_LATENCY_S, DEFAULT_RX_MS, DEFAULT_TX_MS

Array = npt.NDArray[np.float32]
TALK, HEAR = "lat-talk", "lat-hear"
#: The recorders of the way back (``LatencySetup.both_ways``): ``lat-hear``'s gateway input and
#: what the gateway made ``lat-talk``'s terminal transmit.
HEAR_IN, TALK_OUT = "lat-hear-in", "lat-talk-out"
#: The phrase (bench/traffic, origin and licence in its README): the first 0.5 s of one clip,
#: a pause shorter than the VOX hang, then a 4 s sentence measured on its second half.
HEAD_FILE, BODY_FILE = "alsa_front-left.wav", "arctic_a0007.wav"
HEAD_S, GAP_S = 0.5, 0.2
#: Scenario second of the first over (the streams and the gateway settle before it), s.
FIRST_S = 2.0
#: Where the delay is searched for, s: the rig's path, and the whole path through the gateway.
DIRECT_RANGE_S = (-0.05, 0.2)
PATH_RANGE_S = (0.0, 0.6)
WINDOW_S, WINDOW_SLACK_S, GLITCH_CORR = 0.25, 0.01, 0.9
#: A window is split at the pauses in it (at least PAUSE_MS of 5 ms frames below PAUSE_DBFS in
#: the reference) and each voiced stretch is aligned on its own: the port moves its rings in
#: such pauses (zeros added, silence left out), and a delay that changes in a pause is not a
#: glitch a listener hears; a gap inside a stretch still costs that stretch's correlation. The
#: port's own pause is three 5 ms blocks below -50 dBFS, so this one is at least as wide.
PAUSE_DBFS, PAUSE_MS, FRAME_MS = -45.0, 15.0, 5.0
#: A stretch of at least TRACK_MIN_MS is searched within STEP_MAX_MS (the largest cushion,
#: :data:`~brug.gateway.ports.soundcard.CUSHION_MAX_MS`) of where the one before it was found,
#: and moves that position for the rest of the over; a shorter one within WINDOW_SLACK_S.
TRACK_MIN_MS, STEP_MAX_MS = 40.0, 30.0
#: An over whose sentence correlates less than this at its best lag, and whose windows (each
#: voiced stretch aligned on its own) do not reach it in the median either, was not heard (a
#: glitch costs a window, not the over: 100 ms lost of the 2 s still correlate well above it).
#: The windows count because one lag for the whole sentence does not fit an over whose delay
#: stepped: a 2.3 ms gap inside a word and a 1.4 ms step in a pause after it leave the
#: sentence at 0.36 at its best lag, with every window but one at 0.95 or more.
HEARD_CORR = 0.5
#: Below this correlation at its best lag nothing of the over was found to align windows on.
FOUND_CORR = 0.2
TAIL_S = 2.0
#: The port figures sampled every 0.5 s (the plot shows the fills): ring fills (device samples), the
#: drift loops' corrections (ppm), the xrun and trim counters, the cushions (device samples:
#: they grow when a ring runs short and give back in calm spells).
RING_KEYS = ("rx_fill", "tx_fill", "rx_ppm", "tx_ppm", "underruns",
             "device_underruns", "rx_trimmed", "tx_trimmed", "rx_cushion", "tx_cushion")


@dataclass(frozen=True)
class LatencySetup:
    """What is measured: the engine's clock and each card's buffering (None: the defaults).

    ``clock`` is ``"talk"`` (the engine ticks on the talker's card), ``"hear"``, ``"floor"``
    (on the card of whoever took the floor last) or ``"none"`` (the monotonic clock, the
    site file's default). ``both_ways``: every second over goes the other way, from
    ``lat-hear`` to ``lat-talk`` (a conversation; the card that clocks the engine is then the
    talker's in only half the overs unless the clock follows the floor). Buffers in ms. ``wire``
    measures a bare sounddevice wire (:class:`Wire`) in the gateway's place, the floor any
    gateway on this path stands on. ``noise_dbfs``: white noise at this level under the
    talker's audio for the whole run (its pauses are then not digital silence, as on a
    radio path with background noise).
    """

    minutes: float = 10.0
    every_s: float = 7.0
    clock: str = "none"
    latency_ms: float | None = None
    rx_ms: float | None = None
    tx_ms: float | None = None
    target_ms: float = 35.0
    max_drift_ms: float = 2.0
    wire: bool = False
    noise_dbfs: float | None = None
    both_ways: bool = False

    @property
    def card_latency_s(self) -> float:
        """The suggested PortAudio latency the cards (or the wire) open with, s."""
        return DEFAULT_LATENCY_S if self.latency_ms is None else self.latency_ms / 1000.0

    def describe(self) -> str:
        """What ran, in one line (the plot's title and the report's first row)."""
        lat = f"latency {1000 * self.card_latency_s:g} ms"
        noise = "" if self.noise_dbfs is None else f", noise {self.noise_dbfs:g} dBFS"
        noise += ", both ways" if self.both_ways else ""
        if self.wire:
            return f"bare sounddevice wire, {lat}{noise}"
        rx = DEFAULT_RX_MS if self.rx_ms is None else self.rx_ms
        tx = DEFAULT_TX_MS if self.tx_ms is None else self.tx_ms
        return (f"engine clock `{self.clock}`, {lat}, cushions rx {rx:g} ms / tx {tx:g} ms"
                f"{noise}")

    def site_text(self) -> str:
        buf = {k: v for k, v in (("latency_ms", self.latency_ms), ("rx_ms", self.rx_ms),
                                 ("tx_ms", self.tx_ms)) if v is not None}
        extra = f", buffers: {json.dumps(buf)}" if buf else ""
        clock = self.clock if self.clock in ("talk", "hear", "floor") else "none"
        return (f"engine: {{rate_hz: 16000, block_ms: 5, clock: {clock}}}\n"
                "ports:\n"
                f"  talk: {{device: brug_{TALK}, network: a, talkgroup: A, "
                f"ptt: {{type: none, lead_ms: 0}}{extra}}}\n"
                f"  hear: {{device: brug_{HEAR}, network: b, talkgroup: B, "
                f"ptt: {{type: none, lead_ms: 0}}{extra}}}\n"
                "patches:\n  LAT: {members: [talk, hear], mode: half_duplex}\n")


class Wire:
    """A bare sounddevice wire: one duplex stream from ``brug_lat-talk_in`` to
    ``brug_lat-hear_out`` whose callback copies its input to its output, at the PortAudio
    latency the gateway's cards get (``latency_s``) and the gateway's 160-frame blocks.

    Stands in for the gateway (same ``start``/``stop``) to measure what this sound-card path
    costs before any gateway buffering. Real-time: the callback copies, nothing else.
    """

    def __init__(self, input_device: str, output_device: str, latency_s: float,
                 rate: int = CARD_RATE_HZ) -> None:
        self.input_device, self.output_device = input_device, output_device
        self.latency_s, self.rate = latency_s, rate
        self.callbacks = self.flagged = 0
        self._stream: Any = None

    def _callback(self, indata: Any, outdata: Any, frames: int, time_info: Any,
                  status: Any) -> None:
        self.callbacks += 1
        if status:
            self.flagged += 1
        outdata[:] = indata

    def start(self) -> None:
        import sounddevice as sd

        from brug.gateway.devices import find_device

        self._stream = sd.Stream(
            device=(find_device(self.input_device, "input"),
                    find_device(self.output_device, "output")),
            samplerate=self.rate, blocksize=self.rate // 300, channels=1, dtype="float32",
            latency=self.latency_s, callback=self._callback)
        self._stream.start()

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.abort()
            self._stream.close()
            self._stream = None

    def stats(self) -> dict[str, Any]:
        """Callbacks made and callbacks that came with a status flag (an xrun)."""
        return {"callbacks": self.callbacks, "flagged_callbacks": self.flagged}


def phrase(rate: int = CARD_RATE_HZ) -> tuple[Array, slice]:
    """The over's audio at ``rate`` and the part measured (the sentence's second half)."""
    from brug.bench.scenario import BUNDLED_SCENARIO

    clean = Path(BUNDLED_SCENARIO).parent / "clean" / "48k"
    head, fs = sf.read(str(clean / HEAD_FILE), dtype="float32")
    body, fs2 = sf.read(str(clean / BODY_FILE), dtype="float32")
    if fs != rate or fs2 != rate:
        raise ValueError(f"the phrase files are not at {rate} Hz")
    gap = np.zeros(int(GAP_S * rate), np.float32)
    x = np.concatenate([head[:int(HEAD_S * rate)], gap, body])
    start = len(x) - len(body)
    return x, slice(start + len(body) // 2, len(x))


def best_lag(ref: Array, rec: Array, pos: int, lo: int, hi: int) -> tuple[int, float]:
    """Lag ``lo <= k <= hi`` (samples) at which ``ref`` fits ``rec[pos + k:]`` best, and the
    normalised correlation there (0 where ``rec`` is silent): the replay bench's search
    (:class:`brug.bench.metrics.Search`) on the stretch of ``rec`` those lags span."""
    a, b = max(0, pos + lo), min(len(rec), pos + hi + len(ref))
    if b - a < len(ref):
        return 0, 0.0
    k, r = Search(rec[a:b], len(ref)).best(ref, 0, b - a - len(ref))
    return (a + k - pos, r) if r > 0.0 else (0, 0.0)


def voiced_stretches(part: Array, rate: int) -> list[slice]:
    """The stretches of ``part`` between its pauses (:data:`PAUSE_MS` of frames below
    :data:`PAUSE_DBFS`), each at least two frames long; the whole of ``part`` if it has none."""
    f = int(FRAME_MS * rate / 1000)
    n = len(part) // f
    if n == 0:
        return [slice(0, len(part))]
    ms = np.mean(part[:n * f].reshape(n, f).astype(np.float64) ** 2, axis=1)
    quiet = ms < 10.0 ** (PAUSE_DBFS / 10.0)
    need = max(1, int(round(PAUSE_MS / FRAME_MS)))
    cut = np.zeros(n, bool)           # frames inside a pause of at least ``need`` frames
    run = 0
    for k in range(n + 1):
        if k < n and quiet[k]:
            run += 1
            continue
        if run >= need:
            cut[k - run:k] = True
        run = 0
    out, start = [], None
    for k in range(n + 1):
        if k < n and not cut[k]:
            start = k if start is None else start
            continue
        if start is not None and k - start >= 2:
            out.append(slice(start * f, len(part) if k == n else k * f))
        start = None
    return out or [slice(0, len(part))]


def windows(ref: Array, rec: Array, pos: int, rate: int) -> list[float]:
    """Correlation of each ``WINDOW_S`` window of ``ref`` with ``rec`` placed at ``pos``: each
    voiced stretch of the window (:func:`voiced_stretches`) aligned on its own near where the
    stretch before it was found (:data:`STEP_MAX_MS`: a step in the delay moves the rest of
    the over, and costs no window when it falls in a pause), their correlations weighted by
    their energy."""
    w, slack = int(WINDOW_S * rate), int(WINDOW_SLACK_S * rate)
    out = []
    off = 0          # where the last stretch was found against ``pos``, samples
    for i in range(0, len(ref) - w + 1, w):
        part = ref[i:i + w]
        if float(np.dot(part, part)) < 1e-6 * w:     # a pause inside the sentence
            continue
        total = corr = 0.0
        for sl in voiced_stretches(part, rate):
            piece = part[sl]
            e = float(np.dot(piece, piece))
            # a stretch long enough to be found unambiguously is searched as far as a ring
            # move can step the delay, and the rest of the over follows where it was found
            long = len(piece) >= int(TRACK_MIN_MS * rate / 1000)
            reach = max(slack, int(STEP_MAX_MS * rate / 1000)) if long else slack
            k, r = best_lag(piece, rec, pos + i + sl.start + off, -reach, reach)
            if long and r >= HEARD_CORR:
                off += k
            corr += e * r
            total += e
        out.append(corr / total if total > 0.0 else 0.0)
    return out


def analyse(talk_in: Array, hear_out: Array, starts: list[int], rate: int,
            at_talk: list[int] | None = None, at_hear: list[int] | None = None
            ) -> list[dict[str, Any]]:
    """One record per over: its time, the rig's and the whole path's delay, the gateway's
    share, the windows' correlations and glitches.

    ``starts``: where each over began, in samples of the run; ``at_talk``/``at_hear``: the
    sample of each recording captured at that moment (default: the same numbers, recordings
    on the run's clock)."""
    x, seg = phrase(rate)
    ref = x[seg]
    rows = []
    at_talk = starts if at_talk is None else at_talk
    at_hear = starts if at_hear is None else at_hear
    for k, s in enumerate(starts):
        pt, ph = at_talk[k] + seg.start, at_hear[k] + seg.start
        d_lag, d_corr = best_lag(ref, talk_in, pt, int(DIRECT_RANGE_S[0] * rate),
                                 int(DIRECT_RANGE_S[1] * rate))
        h_lag, h_corr = best_lag(ref, hear_out, ph, int(PATH_RANGE_S[0] * rate),
                                 int(PATH_RANGE_S[1] * rate))
        win = windows(ref, hear_out, ph + h_lag, rate) if h_corr > FOUND_CORR else []
        heard = bool(win) and (h_corr > HEARD_CORR or float(np.median(win)) >= HEARD_CORR)
        if not heard:
            win = []
        rows.append({
            "over": k + 1, "t_s": round(s / rate, 3),
            "direct_ms": round(1000.0 * d_lag / rate, 2), "direct_corr": round(d_corr, 4),
            "path_ms": round(1000.0 * h_lag / rate, 2) if heard else None,
            "added_ms": round(1000.0 * (h_lag - d_lag) / rate, 2) if heard else None,
            "corr": round(h_corr, 4),
            "window_corr_min": round(min(win), 4) if win else None,
            "glitches": sum(c < GLITCH_CORR for c in win) if heard else None,
        })
    return rows


def summarize(rows: list[dict[str, Any]], setup: LatencySetup) -> dict[str, Any]:
    """The run's figures and verdict."""
    added = [r["added_ms"] for r in rows if r["added_ms"] is not None]
    missed = sum(r["added_ms"] is None for r in rows)
    glitches = sum(r["glitches"] or 0 for r in rows)
    out: dict[str, Any] = {"overs": len(rows), "heard": len(added), "missed": missed,
                           "glitches": glitches}
    if added:
        a = np.asarray(added)
        t = np.asarray([r["t_s"] for r in rows if r["added_ms"] is not None])
        first, last = a[t <= t[0] + 60.0], a[t >= t[-1] - 60.0]
        out.update(added_ms={"median": round(float(np.median(a)), 2),
                             "p95": round(float(np.percentile(a, 95)), 2),
                             "min": round(float(a.min()), 2), "max": round(float(a.max()), 2)},
                   drift_ms=round(float(np.median(last) - np.median(first)), 2),
                   direct_ms_median=round(float(np.median(
                       [r["direct_ms"] for r in rows])), 2))
    if setup.both_ways:
        # each way on its own: the engine's clock card is the talker's in one of them only,
        # unless the clock follows the floor
        out["by_way"] = {}
        for who in ("talk", "hear"):
            mine = [r for r in rows if r.get("from", "talk") == who]
            a_w = [r["added_ms"] for r in mine if r["added_ms"] is not None]
            out["by_way"][who] = {
                "overs": len(mine), "heard": len(a_w),
                "glitches": sum(r["glitches"] or 0 for r in mine),
                "median_ms": round(float(np.median(a_w)), 2) if a_w else None,
                "p95_ms": round(float(np.percentile(a_w, 95)), 2) if a_w else None}
    fails = []
    if missed:
        fails.append(f"{missed} over(s) not heard")
    if glitches:
        fails.append(f"{glitches} glitch window(s) (correlation < {GLITCH_CORR})")
    if added and out["added_ms"]["median"] >= setup.target_ms:
        fails.append(f"median added delay {out['added_ms']['median']:.1f} ms, target "
                     f"< {setup.target_ms:g} ms")
    if added and abs(out["drift_ms"]) > setup.max_drift_ms:
        fails.append(f"delay drifted {out['drift_ms']:+.1f} ms from the first to the last "
                     f"minute (limit {setup.max_drift_ms:g})")
    out["verdict"] = {"status": "FAIL" if fails else "PASS", "failures": fails}
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str,
         rings: list[list[float]] | None = None) -> None:
    """Added delay and the worst window's correlation per over, against time; below, the
    ports' ring fills (ms) over the run, where the delay goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60.0 for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1.2, 2]})
    whos = sorted({r.get("from", "talk") for r in rows}, reverse=True)
    for who in whos:
        mine = [r for r in rows if r.get("from", "talk") == who]
        label = "added by the gateway" if len(whos) == 1 else \
            f"added, {who} -> {'hear' if who == 'talk' else 'talk'}"
        ax1.plot([r["t_s"] / 60.0 for r in mine],
                 [r["added_ms"] if r["added_ms"] is not None else np.nan for r in mine],
                 ".-", label=label)
    ax1.plot(t, [r["direct_ms"] for r in rows], ".", color="grey",
             label="rig alone (air_rx -> gateway input)")
    for r in rows:
        if r["added_ms"] is None or r["glitches"]:
            ax1.axvline(r["t_s"] / 60.0, color="red", alpha=0.3)
    ax1.set_ylabel("delay (ms)")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.grid(alpha=0.3)
    ax1.set_title(title, fontsize=9)
    ax2.plot(t, [r["window_corr_min"] if r["window_corr_min"] is not None else np.nan
                 for r in rows], ".", color="tab:green")
    ax2.axhline(GLITCH_CORR, color="red", lw=0.8)
    ax2.set_ylabel("worst window corr")
    ax2.grid(alpha=0.3)
    if rings:
        fills = np.asarray(rings, dtype=np.float64)
        tm = fills[:, 0] / 60.0
        ms = 1000.0 / CARD_RATE_HZ
        k = len(RING_KEYS)
        for j, n in enumerate(("talk", "hear")):
            ax3.plot(tm, fills[:, 1 + j * k] * ms, lw=0.8, label=f"{n} rx ring")
            ax3.plot(tm, fills[:, 2 + j * k] * ms, lw=0.8, label=f"{n} tx ring")
            cushion = 1 + j * k + RING_KEYS.index("rx_cushion")
            ax3.plot(tm, fills[:, cushion] * ms, "--", lw=0.8, label=f"{n} rx cushion")
        ax3.legend(loc="upper left", fontsize=7, ncol=4)
    ax3.set_ylabel("ring fill (ms)")
    ax3.set_xlabel("minutes")
    ax3.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_latency(setup: LatencySetup, out: Path, *, progress: bool = True,
                cards: Any = None) -> dict[str, Any]:
    """Run the gateway for ``setup.minutes`` and measure every over; write ``latency.json``,
    ``latency.png`` and ``report.md`` into ``out``. ``cards``: as for the realtime replay (the
    test fixture's handle, else the ``brug soundcards`` server, stopped at the end if this run
    started it)."""
    from brug.gateway.service import Gateway
    from brug.gateway.site import parse_site_text

    names, own = open_cards([TALK, HEAR], cards)
    out.mkdir(parents=True, exist_ok=True)
    rate = CARD_RATE_HZ
    x, _ = phrase(rate)
    total_s = setup.minutes * 60.0
    starts = [int(round((FIRST_S + k * setup.every_s) * rate))
              for k in range(max(1, int((total_s - FIRST_S - len(x) / rate) // setup.every_s)
                                 + 1))]
    site = parse_site_text(setup.site_text(), "latency-site.yaml")
    raw = out / ".raw"
    # who talks in each over: (player, its gateway input's recorder, the listener's recorder)
    ways = [(TALK, TALK, HEAR), (HEAR, HEAR_IN, TALK_OUT)]
    way = [ways[k % 2 if setup.both_ways else 0] for k in range(len(starts))]
    plays: dict[str, list[tuple[int, Array]]] = {TALK: [], HEAR: []}
    for s_, w in zip(starts, way):
        plays[w[0]].append((s_, x))
    if setup.noise_dbfs is not None:
        # one 10 s stretch of noise, back to back for the whole run (pickled once), under
        # every talker
        chunk = (np.random.default_rng(11).standard_normal(10 * rate)
                 * 10 ** (setup.noise_dbfs / 20)).astype(np.float32)
        for name in (TALK, HEAR) if setup.both_ways else (TALK,):
            plays[name] += [(k * len(chunk), chunk)
                            for k in range(int((total_s + TAIL_S) * rate) // len(chunk) + 1)]
    devices: dict[str, tuple[str | None, str]] = {
        TALK: (names[TALK].air_rx, names[TALK].input),
        HEAR: (names[HEAR].air_rx, names[HEAR].air_tx)}
    if setup.both_ways:
        devices.update({HEAR_IN: (None, names[HEAR].input),
                        TALK_OUT: (None, names[TALK].air_tx)})
    terms = TerminalSide({n: v for n, v in plays.items() if v}, devices, raw, slip_s=math.inf)
    faults: list[str] = []
    gw: Any
    if setup.wire:
        gw = Wire(names[TALK].input, names[HEAR].output, setup.card_latency_s)
    else:
        gw = Gateway(site)
        gw.engine.events.subscribe(lambda evs: faults.extend(
            f"{e.topic} {e.info}" for e in evs if e.topic.startswith("fault")))
    prog = Progress(total_s + TAIL_S, "latency", progress)
    results: dict[str, dict[str, Any]] = {}
    snap: dict[str, Any] = {}
    rings: list[list[float]] = []      # [t_s, then RING_KEYS of talk, then of hear]
    ticks: list[list[float]] = []      # [t_s, engine samples, clock misses]
    try:
        gw.start()
        t0 = time.monotonic() + 0.8
        terms.start(t0)
        end = t0 + total_s + TAIL_S
        while time.monotonic() < end:
            time.sleep(0.5)
            el = max(0.0, time.monotonic() - t0)
            if setup.wire:
                prog.update(el, f"flagged callbacks {gw.flagged}")
                continue
            st = gw.engine.submit(lambda e: e.snapshot()).result(timeout=5)
            rings.append([round(el, 2)] + [
                st["ports"][n]["stats"].get(k, 0) for n in ("talk", "hear")
                for k in RING_KEYS])
            ticks.append([round(el, 3), st["t"], st["clock"]["misses"]])
            x_runs = sum(int(p["stats"].get("underruns", 0))
                         + int(p["stats"].get("device_underruns", 0))
                         for p in st["ports"].values())
            prog.update(el, f"faults {len(faults)} underruns {x_runs}")
        snap = {"ports": {"wire": {"stats": gw.stats()}}} if setup.wire else \
            gw.engine.submit(lambda e: e.snapshot()).result(timeout=5)
        results = terms.stop()
    finally:
        terms.kill()
        gw.stop()
        if own is not None:
            own.down()
    prog.done()
    # each stream's clock from its timestamps over the whole run: when over k left its
    # player, and which sample of each recording was captured then
    clocks: dict[str, float] = {}
    rec: dict[str, Array] = {}
    fits: dict[str, tuple[float, float]] = {}     # each recorder's (t0, seconds per sample)
    for name in devices:
        fits[name] = clock_fit(results[name]["stamps_in"])
        clocks[f"{name}_recorder_ppm"] = round((fits[name][1] * rate - 1.0) * 1e6, 1)
        rec[name], _ = sf.read(str(results[name]["wav"]), dtype="float32")
    rows: list[dict[str, Any]] = []
    for player, direct, heard_by in ways[:2 if setup.both_ways else 1]:
        ks = [k for k, w in enumerate(way) if w[0] == player]
        p0, p_slope = clock_fit(results[player]["stamps_out"])
        clocks[f"{player}_player_ppm"] = round((p_slope * rate - 1.0) * 1e6, 1)
        # the player's sample count starts at its first buffer, scenario sample `first`
        first = int(round((results[player]["stamps_out"][0][1] - t0) * rate))
        played = [p0 + (starts[k] - first) * p_slope for k in ks]
        at = {name: [int(round((tp - fits[name][0]) / fits[name][1])) for tp in played]
              for name in (direct, heard_by)}
        part = analyse(rec[direct], rec[heard_by], [starts[k] for k in ks], rate, at[direct],
                       at[heard_by])
        # where each over starts in what its listener recorded (hear.wav, talk.wav)
        listener = "hear" if heard_by == HEAR else "talk"
        for row, k, a in zip(part, ks, at[heard_by]):
            row.update({"over": k + 1, "from": "talk" if player == TALK else "hear",
                        f"{listener}_wav_sample": a})
        rows += part
    rows.sort(key=lambda r: r["over"])
    for r in results.values():
        Path(r["wav"]).unlink(missing_ok=True)
    try:
        raw.rmdir()
    except OSError:
        pass
    # what the listening terminals recorded, as recorded
    sf.write(str(out / "hear.wav"), rec[HEAR], rate, subtype="PCM_16")
    if setup.both_ways:
        sf.write(str(out / "talk.wav"), rec[TALK_OUT], rate, subtype="PCM_16")
    summary = summarize(rows, setup)
    m = {"schema": "brug-bench-latency/1", "setup": setup.__dict__,
         "site": None if setup.wire else setup.site_text(),
         "summary": summary, "overs": rows, "faults": faults,
         "port_stats": {n: p["stats"] for n, p in snap.get("ports", {}).items()},
         "engine_clock": snap.get("clock"), "engine_t": snap.get("t"),
         "rings": {"columns": ["t_s"] + [f"{n}.{k}" for n in ("talk", "hear")
                                         for k in RING_KEYS], "rows": rings},
         "engine_time": {"columns": ["t_s", "engine_samples", "clock_misses"], "rows": ticks},
         "terminal_clocks_ppm": clocks}
    write_json(out / "latency.json", m)
    title = (f"{setup.describe()}: median {summary.get('added_ms', {}).get('median')} ms, "
             f"drift {summary.get('drift_ms')} ms, glitches {summary['glitches']}")
    plot(rows, out / "latency.png", title, rings)
    write_report(m, out / "report.md")
    return m


def write_report(m: dict[str, Any], path: Path) -> None:
    """report.md: verdict, figures, the plot, the ports' counters."""
    s, st = m["summary"], m["setup"]
    a = s.get("added_ms", {})
    lines = [f"# brug bench latency: {s['verdict']['status']}", ""]
    lines += [f"- FAIL: {f}" for f in s["verdict"]["failures"]]
    lines += ["", "| figure | value |", "|---|---|",
              f"| run | {st['minutes']:g} min, an over every {st['every_s']:g} s |",
              f"| measured | {LatencySetup(**st).describe()} |",
              f"| overs heard | {s['heard']}/{s['overs']} |",
              f"| added delay, median (p95, min..max) | {a.get('median')} ms ({a.get('p95')}, "
              f"{a.get('min')}..{a.get('max')}) |",
              f"| drift, first -> last minute | {s.get('drift_ms')} ms |",
              f"| glitch windows | {s['glitches']} |",
              f"| rig alone, median | {s.get('direct_ms_median')} ms |",
              *[f"| {w} -> {'hear' if w == 'talk' else 'talk'}: heard, median (p95), glitch "
                f"windows | {b['heard']}/{b['overs']}, {b['median_ms']} ms ({b['p95_ms']}), "
                f"{b['glitches']} |" for w, b in s.get("by_way", {}).items()],
              f"| engine clock: card at the end, misses, moves | "
              f"{(m.get('engine_clock') or {}).get('port')}, "
              f"{(m.get('engine_clock') or {}).get('misses')}, "
              f"{(m.get('engine_clock') or {}).get('moves')} |",
              f"| faults | {len(m['faults'])} |", "", "![latency](latency.png)", "",
              "| port | underruns | overruns | device underruns | device overruns | reopens |",
              "|---|---|---|---|---|---|"]
    for n, p in m["port_stats"].items():
        lines.append(f"| {n} | {p.get('underruns', 0)} | {p.get('overruns', 0)} | "
                     f"{p.get('device_underruns', 0)} | {p.get('device_overruns', 0)} | "
                     f"{p.get('reopens', 0)} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
