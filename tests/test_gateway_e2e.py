"""The whole gateway through real PortAudio streams on a private PulseAudio server.

Speech played into port A's terminal (``brug_be1_air_rx``) must come out of the terminals of
B and C (``brug_*_air_tx``). Latency is measured by cross-correlation; the test plays and
records with two streams aligned by PortAudio's clock (``helpers.playrec``), for three paths:

* ``direct``: the test plays into ``air_rx`` and records the gateway's input device ``be1_in``:
  the test rig alone (about 0 ms, within the few ms of the alignment), subtracted from the
  others;
* ``wire``: a bare sounddevice duplex wire ``be1_in -> nl1_out`` (5 ms blocks, 20 ms suggested
  latency), recorded at ``nl1_air_tx``: the baseline DESIGN.md quotes (~33 ms);
* ``brug``: the gateway (VOX, half duplex, 16 kHz engine, 48 kHz cards, ticking on the
  talker's card: ``engine.clock``), three overs in one recording, so their latencies compare
  exactly.

The test signal is a short phrase, a 200 ms pause, then speech, in one over: the pause lets
the engine absorb its start-of-over pre-roll (it skips silent blocks), so the later speech
shows the steady latency.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sounddevice as sd

from brug.bench.latency import best_lag
from brug.gateway.service import Gateway
from brug.gateway.site import parse_site_text

import helpers
from helpers import load_wav, playrec, windowed_corr, xcorr_delay

FS = 48000
DATA = Path(__file__).parent / "data"

SITE = """
engine: {rate_hz: 16000, block_ms: 5, clock: be1}
ports:
  be1: {device: brug_be1, network: be_astrid, talkgroup: BE-TAC3, ptt: {type: none, lead_ms: 0}}
  nl1: {device: brug_nl1, network: nl_c2000, talkgroup: NL-OPS2, ptt: {type: none, lead_ms: 0}}
  lu1: {device: brug_lu1, network: lu_renita, talkgroup: LU-INT1, ptt: {type: none, lead_ms: 300}}
  dk1: {device: brug_dk1, network: other, talkgroup: X}
patches:
  OP-TEST: {members: [be1, nl1, lu1], mode: half_duplex}
"""


def make_signal() -> tuple[np.ndarray, slice]:
    x, _ = load_wav(DATA / "engine_ps_goforward_48k.wav", FS)
    head, _ = load_wav(DATA / "engine_allison_callsign.wav", FS)
    gap = FS // 5       # shorter than the VOX hang: one over, with a pause to catch up in
    sig = np.concatenate([np.zeros(FS // 4, np.float32), head[: FS // 2],
                          np.zeros(gap, np.float32), x, np.zeros(FS // 2, np.float32)])
    start = FS // 4 + FS // 2 + gap
    # measure on the second half of the speech: by then the engine has absorbed its pre-roll
    # in the pauses (the recording's background noise is above the skip level at first)
    return sig, slice(start + len(x) // 2, start + len(x))


LEAD = FS // 50      # playrec's recording starts 20 ms before the signal


def lag_of(sig: np.ndarray, seg: slice, rec: np.ndarray) -> tuple[float, float]:
    """Delay (ms) of the speech segment in ``rec`` (a ``playrec`` of ``sig``) and how well it
    came through: the median correlation of its 250 ms windows, each aligned within 10 ms of
    that delay (the engine may still skip a silent 5 ms block inside the segment while it
    absorbs its pre-roll, which shifts what follows but loses no speech)."""
    ref = sig[seg]
    lag = xcorr_delay(ref, rec[seg.start:], FS, max_delay_s=0.6)
    return (lag - LEAD) * 1000.0 / FS, windowed_corr(ref, rec, seg.start + lag)


@contextmanager
def running_gateway(site: str, name: str) -> Iterator[tuple[Gateway, list[Any]]]:
    """The gateway of the site text ``site`` (``name`` for its errors) running, with every
    event it publishes collected, half a second after its start; stopped at the end."""
    gw = Gateway(parse_site_text(site, name))
    events: list[Any] = []
    gw.engine.events.subscribe(events.extend)
    gw.start()
    try:
        time.sleep(0.5)
        yield gw, events
    finally:
        gw.stop()


class Wire:
    """A bare sounddevice wire: a duplex stream that copies input to output."""

    def __init__(self, inp: str, out: str) -> None:
        def cb(indata: Any, outdata: Any, frames: int, t: Any, status: Any) -> None:
            outdata[:] = indata

        self.stream = sd.Stream(device=(inp, out), samplerate=FS, channels=1, dtype="float32",
                                blocksize=FS // 200, latency=0.02, callback=cb)

    def __enter__(self) -> Wire:
        self.stream.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.stop()
        self.stream.close()


@pytest.mark.slow
def test_speech_crosses_the_gateway_through_real_sound_cards(soundcards: Any) -> None:
    cards = soundcards.up("be1", "nl1", "lu1", "dk1")
    sig, seg = make_signal()
    figures: dict[str, Any] = {}
    time.sleep(0.3)
    # the rig's own path first (no gateway): while the platform has a bad spell it does not
    # carry the speech either, and nothing can be said of the gateway; wait it out (30 s)
    for _ in range(7):
        direct = playrec(cards["be1"].air_rx, cards["be1"].input, sig, FS)
        figures["direct_ms"], c = lag_of(sig, seg, direct)
        if c > 0.95:
            break
        time.sleep(5.0)
    assert c > 0.95, f"the rig alone (no gateway) did not carry the speech: corr {c:.2f}"
    with Wire(cards["be1"].input, cards["nl1"].output):
        time.sleep(0.3)
        wire = playrec(cards["be1"].air_rx, cards["nl1"].air_tx, sig, FS)
    wire_ms, c = lag_of(sig, seg, wire)
    # the bare wire is a reference figure only (its duplex stream is PortAudio's fragile path)
    figures["wire_ms"] = wire_ms if c > 0.95 else None

    with running_gateway(SITE, "e2e-site.yaml") as (gw, events):
        pause = np.zeros(FS, np.float32)           # longer than the VOX hang: three overs
        # three overs, repeated (up to three times) while the platform disturbed them: a
        # PortAudio stream of the gateway's or the harness's reported an xrun, which is a
        # glitch no gateway can hide; the strict checks hold on an undisturbed take
        for take in range(1, 4):
            before = platform_xruns(gw)
            other = soundcards_recorder(cards["lu1"].air_tx, cards["dk1"].air_tx)
            rec = playrec(cards["be1"].air_rx, cards["nl1"].air_tx,
                          np.concatenate([sig, pause, sig, pause, sig]), FS)
            lu1, dk1 = other.stop()
            xruns = platform_xruns(gw) - before
            overs = [lag_of(sig, seg, rec[k * (len(sig) + len(pause)):]) for k in range(3)]
            if not xruns:
                break
        snap = gw.engine.submit(lambda e: e.snapshot()).result(timeout=2)
        # speech through a disturbed take still comes out, most windows of it intact
        heard = 0.95 if not xruns else 0.8
        for k, (_, corr) in enumerate(overs):
            if corr < heard:
                faults = [f"{e.topic} {e.info}" for e in events if e.topic.startswith("fault")]
                pytest.fail(f"speech did not come out of nl1 in over {k + 1} (corr {corr:.2f},"
                            f" take {take}, platform xruns {xruns}); faults: {faults}; stats: "
                            f"{[p['stats'] for p in snap['ports'].values()]}")
        lags = [lag for lag, _ in overs]
    ref = sig[seg]
    lu_lag = xcorr_delay(ref, lu1, FS)
    assert windowed_corr(ref, lu1, lu_lag) > heard, "speech did not come out of lu1"
    assert np.max(np.abs(dk1)) < 1e-4, "a port outside the patch heard the patch"
    figures["brug_ms"] = lags
    figures["brug_added_ms"] = [round(x - figures["direct_ms"], 1) for x in lags]
    figures["wire_added_ms"] = None if figures["wire_ms"] is None else round(
        figures["wire_ms"] - figures["direct_ms"], 1)
    figures["port_stats"] = {n: p["stats"] for n, p in snap["ports"].items()}
    print("\nE2E latency:", json.dumps(figures))
    out = os.environ.get("BRUG_FIGURES")
    if out:
        Path(out).write_text(json.dumps(figures, indent=1))
    # stable: the three overs see the same latency (no growth) within 10 ms; the figures
    # themselves (brug vs bare wire) are reported, not asserted: they move with machine load
    figures["take"], figures["platform_xruns"] = take, xruns
    if not xruns:
        assert max(lags) - min(lags) < 10.0
    # a gross bound a technician would notice (SvxLink adds 91 ms at 48 kHz)
    assert max(figures["brug_added_ms"]) < 100.0


def platform_xruns(gw: Gateway) -> int:
    """PortAudio-flagged callbacks so far: the gateway's sound-card ports' and the test
    harness's own streams (``helpers.HARNESS_XRUNS``)."""
    snap = gw.engine.submit(lambda e: e.snapshot()).result(timeout=2)
    ports = sum(int(p["stats"].get("in_xruns", 0)) + int(p["stats"].get("out_xruns", 0))
                for p in snap["ports"].values())
    return ports + helpers.HARNESS_XRUNS[0]


class soundcards_recorder:  # noqa: N801 - reads like a function at the call site
    """Record several devices in the background until ``stop()``."""

    def __init__(self, *devices: str) -> None:
        from helpers import Recorder

        self.recs = [Recorder(d, FS).start() for d in devices]

    def stop(self) -> list[np.ndarray]:
        return [r.stop() for r in self.recs]


FLOOR_SITE = """
engine: {rate_hz: 16000, block_ms: 5, clock: floor}
ports:
  be1: {device: brug_be1, network: be_astrid, talkgroup: BE-TAC3, ptt: {type: none, lead_ms: 0}}
  nl1: {device: brug_nl1, network: nl_c2000, talkgroup: NL-OPS2, ptt: {type: none, lead_ms: 0}}
patches:
  OP-TEST: {members: [be1, nl1], mode: half_duplex}
"""


@pytest.mark.slow
def test_the_engine_clock_follows_the_talker(soundcards: Any) -> None:
    """``engine.clock: floor``: a conversation, be1 -> nl1, then nl1 -> be1, then be1 again.
    The engine moves its clock to each new talker's card as the talker takes the floor, so
    the talker's capture waits in no ring whichever way the over goes: the reply through
    nl1 is as quick as the call through be1 (on a clock that stays on be1 it comes a
    receive cushion and a capture burst later, 15-20 ms on this path). Nothing of the
    over is lost when the clock moves under it: its opening phrase comes through whole."""
    cards = soundcards.up("be1", "nl1")
    sig, seg = make_signal()
    head = slice(FS // 4, FS // 4 + FS // 2)          # the opening phrase
    with running_gateway(FLOOR_SITE, "floor-site.yaml") as (gw, events):
        ways = [("be1", "nl1"), ("nl1", "be1"), ("be1", "nl1")]
        for take in range(1, 4):
            before = platform_xruns(gw)
            moves0 = gw.engine.clock_moves
            overs = []
            for talker, hearer in ways:
                rec = playrec(cards[talker].air_rx, cards[hearer].air_tx, sig, FS, tail_s=1.2)
                lag, corr = lag_of(sig, seg, rec)
                h_lag = xcorr_delay(sig[head], rec[head.start:], FS, max_delay_s=0.6)
                overs.append((lag, corr, windowed_corr(sig[head], rec, head.start + h_lag),
                              gw.engine.clock_name))
            xruns = platform_xruns(gw) - before
            if not xruns:
                break
        snap = gw.engine.submit(lambda e: e.snapshot()).result(timeout=2)
    report = (f"take {take}, platform xruns {xruns}, overs (lag ms, corr, head corr, clock): "
              f"{[(round(a, 1), round(b, 3), round(c, 3), d) for a, b, c, d in overs]}; "
              f"stats {[p['stats'] for p in snap['ports'].values()]}")
    print("\nfloor clock:", report)
    # the clock was on each over's talker while it talked, and moved twice in the take
    assert [clock for *_, clock in overs] == ["be1", "nl1", "be1"], report
    assert gw.engine.clock_moves - moves0 == 2, report
    assert [e.data["port"] for e in events if e.topic == "engine.clock"][-2:] == \
        ["nl1", "be1"], report
    heard = 0.95 if not xruns else 0.8
    for _, corr, head_corr, _ in overs:
        assert corr > heard, report
        assert head_corr > heard, report          # nothing lost as the clock moved
    if not xruns:
        # the reply is as quick as the call (both ways on the talker's own card)
        calls = (overs[0][0] + overs[2][0]) / 2
        assert abs(overs[1][0] - calls) < 12.0, report


TWO_PATCH_SITE = """
engine: {rate_hz: 16000, block_ms: 5, clock: floor}
ports:
  be1: {device: brug_be1, network: be_astrid, talkgroup: BE-TAC3, ptt: {type: none, lead_ms: 0}}
  nl1: {device: brug_nl1, network: nl_c2000, talkgroup: NL-OPS2, ptt: {type: none, lead_ms: 0}}
  lu1: {device: brug_lu1, network: lu_renita, talkgroup: LU-INT1, ptt: {type: none, lead_ms: 0}}
  dk1: {device: brug_dk1, network: other, talkgroup: X, ptt: {type: none, lead_ms: 0}}
patches:
  P1: {members: [be1, nl1], mode: half_duplex}
  P2: {members: [lu1, dk1], mode: half_duplex}
"""


@pytest.mark.slow
def test_a_talker_keeps_the_clock_to_the_end_of_the_over(soundcards: Any) -> None:
    """``engine.clock: floor`` with two patches: nl1 talks (the clock moves to nl1), then be1
    (it moves to be1); 2 s into be1's over lu1 starts talking in the other patch. The clock
    stays on be1 to the end of be1's over (its audio is not moved under it), then moves to
    lu1, who still talks. Both overs come through whole, lu1's across the move."""
    cards = soundcards.up("be1", "nl1", "lu1", "dk1")
    sig, seg = make_signal()
    body = slice(seg.start - (seg.stop - seg.start), seg.stop)   # the speech after the pause
    with running_gateway(TWO_PATCH_SITE, "two-patch-site.yaml") as (gw, events):
        for take in range(1, 4):
            before, seen = platform_xruns(gw), len(events)
            playrec(cards["nl1"].air_rx, cards["be1"].air_tx, sig, FS)
            dk1 = helpers.Recorder(cards["dk1"].air_tx, FS).start()
            lu1 = helpers.Player(cards["lu1"].air_rx, FS,
                                 np.concatenate([np.zeros(2 * FS, np.float32), sig])).start()
            be1 = playrec(cards["be1"].air_rx, cards["nl1"].air_tx, sig, FS)
            lu1.wait(10.0)
            time.sleep(1.0)
            lu1.stop()
            heard_lu1 = dk1.stop()
            xruns = platform_xruns(gw) - before
            if not xruns:
                break
    mine = events[seen:]
    moves = [(e.data["port"], e.data.get("prev")) for e in mine if e.topic == "engine.clock"]
    order = [e.topic if e.topic == "engine.clock" else f"{e.topic} {e.data.get('holder')}"
             for e in mine if e.topic in ("engine.clock", "patch.P1.floor", "patch.P2.floor")]
    report = f"take {take}, platform xruns {xruns}, moves {moves}, order {order}"
    assert [port for port, _ in moves] == ["nl1", "be1", "lu1"], report
    # lu1 took P2's floor while be1 talked; the clock stayed on be1 and moved to lu1 as be1
    # let go of P1's floor (be1's over may let go in its inner pause and take it again)
    lu1_floor = order.index("patch.P2.floor lu1")
    to_lu1 = len(order) - 1 - order[::-1].index("engine.clock")
    assert lu1_floor < to_lu1 and "engine.clock" not in order[lu1_floor:to_lu1], report
    assert order[to_lu1 - 1] == "patch.P1.floor None", report
    heard = 0.95 if not xruns else 0.8
    _, corr = lag_of(sig, seg, be1)
    assert corr > heard, report
    # lu1's speech after its opening phrase: each 250 ms window found on its own within
    # 100 ms (the engine catches up its pre-roll in pauses, which steps the delay by tens of
    # ms; a window across a step correlates less), most of them whole
    ref = sig[body]
    at = xcorr_delay(ref, heard_lu1, FS)
    w = FS // 4
    corrs = [best_lag(ref[i:i + w], heard_lu1, at + i, -FS // 10, FS // 10)[1]
             for i in range(0, len(ref) - w, w) if np.sqrt(np.mean(ref[i:i + w] ** 2)) > 1e-3]
    assert np.median(corrs) > heard, f"lu1 windows {np.round(corrs, 2)}; {report}"
