"""SoundCardPort on real PortAudio streams over the private PulseAudio server.

Figures (latency, dropouts) are printed with ``-s``; run this file alone to see them.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import sounddevice as sd

from brug.gateway.ports.soundcard import SoundCardPort

import helpers
from conftest import VirtualCards
from helpers import dropouts, isolated, load_wav, windowed_corr, xcorr_delay, xcorr_peak

FS = 48000
ENGINE = 16000
BLOCK = 80  # 5 ms at the engine rate


class Wire:
    """Drive ports like the engine does: read then write each 5 ms on a wall-clock loop."""

    def __init__(self, *ports: SoundCardPort) -> None:
        self.ports = ports
        self.stop = threading.Event()
        self.faults: list[tuple[str, str]] = []
        self.stall = threading.Event()
        self.stall_s = 0.0
        self.rush = threading.Event()
        self.rush_blocks = 0
        #: (monotonic s, rx fill, tx fill) of the first port after each tick, device samples
        self.fills: list[tuple[float, int, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        buf = np.zeros(BLOCK, np.float32)
        nxt = time.monotonic()
        while not self.stop.is_set():
            if self.stall.is_set():               # the engine thread stops for a while
                self.stall.clear()
                time.sleep(self.stall_s)
            if self.rush.is_set():     # capture came late: reads find the rings short
                self.rush.clear()
                for _ in range(self.rush_blocks):
                    for p in self.ports:
                        p.read(buf)
            for p in self.ports:
                p.read(buf)
                p.write(buf)
                self.faults += p.poll_faults()
            p0 = self.ports[0]
            self.fills.append((time.monotonic(), p0.rx.fill, p0.tx.fill))
            nxt += BLOCK / ENGINE
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:
                nxt = time.monotonic()

    def __enter__(self) -> Wire:
        for p in self.ports:
            p.start(ENGINE, BLOCK)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for p in self.ports:
            p.stop()


def playrec(play: str, rec: str, x: np.ndarray, tail_s: float = 0.5) -> np.ndarray:
    """Play ``x`` on ``play`` and record ``rec``, aligned (sample ``i`` <-> ``x[i]``)."""
    return helpers.playrec(play, rec, x, FS, tail_s=tail_s, lead_s=0.0)


def platform_xruns(port: SoundCardPort, harness_at: int) -> int:
    """PortAudio-flagged callbacks: the port's own, and the harness's since it counted
    ``harness_at`` (:data:`helpers.HARNESS_XRUNS`)."""
    return port.in_xruns + port.out_xruns + helpers.HARNESS_XRUNS[0] - harness_at


def _speech(seconds: float) -> np.ndarray:
    s, _ = load_wav("engine_ps_goforward_48k.wav", FS)
    reps = int(np.ceil(seconds * FS / len(s)))
    x = np.tile(s, reps)[:int(seconds * FS)]
    return np.concatenate([np.zeros(FS // 5, np.float32), x])


def _tracked_windows(ref: np.ndarray, got: np.ndarray, lag: int) -> tuple[list[float], int]:
    """Correlation of each 250 ms window of ``ref`` with ``got`` and the dropouts in them, each
    window aligned on the one before (:func:`helpers.aligned_windows` with ``track``)."""
    peaks, drops = [], 0
    for part, win, d, voiced in helpers.aligned_windows(ref, got, lag, FS, track=True):
        if voiced:
            peaks.append(xcorr_peak(part, win, d))
        drops += dropouts(win, FS, part, d)
    return peaks, drops


def test_port_wire_passes_speech_with_low_latency(soundcards: VirtualCards) -> None:
    """20 s of speech through the port, driven like the engine on the monotonic clock.

    What the port does is asserted on a run the platform did not disturb: a run in which a
    PortAudio stream (the port's own, or the harness's) reported an xrun is repeated, up to
    three runs; if none was clean, the last is held to what a port must still do through
    the platform's glitches (speech through, delay bounded)."""
    c = soundcards.up("pw")["pw"]
    x = _speech(3.0)
    # harness legs only: play into the terminal side, record the gateway's own capture
    # the harness alone (about 0 ms: its own alignment error, which may be negative)
    lead = FS // 50
    direct = xcorr_delay(x, helpers.playrec(c.air_rx, c.input, x, FS, lead_s=lead / FS), FS,
                         max_delay_s=0.5) - lead
    # a bare sounddevice wire (device callback copies input to output)

    def bare_cb(i: np.ndarray, o: np.ndarray, f: int, t: object, s: object) -> None:
        o[:] = i

    with sd.Stream(device=(c.input, c.output), samplerate=FS, blocksize=240, channels=1,
                   dtype="float32", latency=0.02, callback=bare_cb):
        time.sleep(0.3)
        y = playrec(c.air_rx, c.air_tx, x)
    bare = xcorr_delay(x, y, FS, max_delay_s=0.5)
    bare_ms, direct_ms = (1000 * v / FS for v in (bare, direct))
    print(f"\nloop air_rx->air_tx: harness legs {direct_ms:.1f} ms, bare wire {bare_ms:.1f} ms"
          f" (adds {bare_ms - direct_ms:.1f})")
    # speech passes band-limited to the 16 kHz engine rate (8 kHz audio bandwidth)
    from scipy.signal import butter, sosfiltfilt

    lp = butter(8, 7000, fs=FS, output="sos")
    x_long = _speech(20.0)
    ref = sosfiltfilt(lp, x_long).astype(np.float32)
    for attempt in range(1, 4):
        # the port through engine-rate (16 kHz) resampling, driven like the engine
        port = SoundCardPort("pw", c.input, c.output, rate_hz=FS)
        harness = helpers.HARNESS_XRUNS[0]
        with Wire(port):
            time.sleep(0.5)
            y = playrec(c.air_rx, c.air_tx, x_long)
        xruns = platform_xruns(port, harness)
        lag = xcorr_delay(x_long, y, FS, max_delay_s=0.5)
        port_ms = 1000 * lag / FS
        peaks, drops = _tracked_windows(ref, sosfiltfilt(lp, y).astype(np.float32), lag)
        q10 = float(np.percentile(peaks, 10))
        print(f"run {attempt}: port wire {port_ms:.1f} ms (adds {port_ms - direct_ms:.1f}); "
              f"platform xruns {xruns}; 250 ms windows: correlation min {min(peaks):.3f}, "
              f"10th percentile {q10:.3f}, median {np.median(peaks):.3f}; dropouts {drops}; "
              f"stats {port.stats.as_dict()}")
        if not xruns:
            break
    assert port_ms - direct_ms < 60.0
    assert np.median(peaks) > 0.98
    if xruns:
        return      # three disturbed runs: speech came through, at a bounded delay
    assert q10 > 0.95
    assert drops == 0
    # a late engine tick on a loaded machine may starve one callback now and then (counted)
    assert port.stats.underruns == 0 and port.tx.underruns <= 10


def test_an_engine_stall_leaves_no_latency_behind(soundcards: VirtualCards) -> None:
    """The engine thread stops for 150 ms (a busy machine): the rings absorb it, and once the
    talker pauses the port is back at its normal delay instead of 150 ms late for ever."""
    c = soundcards.up("st")["st"]
    burst = load_wav("engine_ps_goforward_48k.wav", FS)[0][:FS // 2]
    gap = np.zeros(FS, np.float32)
    x = np.concatenate([gap, burst, gap, gap, burst, gap, burst, gap])
    port = SoundCardPort("st", c.input, c.output, rate_hz=FS)
    with Wire(port) as w:
        time.sleep(0.5)
        threading.Timer(1.8, lambda: (setattr(w, "stall_s", 0.15), w.stall.set())).start()
        y = playrec(c.air_rx, c.air_tx, x)
    starts = [FS, 3 * FS + len(burst), 4 * FS + 2 * len(burst)]
    delays = []
    for s0 in starts:
        seg = x[s0 - FS // 10:s0 + len(burst)]
        d = xcorr_delay(seg, y[s0 - FS // 10:s0 + len(burst) + FS // 2], FS, max_delay_s=0.45)
        delays.append(1000.0 * d / FS)
    print(f"\nburst delays before / after the stall: {[round(d, 1) for d in delays]} ms; "
          f"stats {port.stats.as_dict()}")
    assert delays[2] - delays[0] < 25.0, "the stall left latency behind"


def test_a_cushion_grown_by_a_hiccup_is_given_back_in_the_pauses(
        soundcards: VirtualCards) -> None:
    """Capture comes 30 ms late once: the receive ring runs short and its cushion grows
    (the delay with it). After ``shrink_after_s`` without running short again the cushion
    comes back one block at a time, in the pauses between bursts of speech: the ring holds no
    more than its configured cushion again (its lowest fill around the last two bursts less
    than an engine block, 5 ms, above it; the step given back out of the ring), the delay end
    to end is back within the path's own noise (10 ms of the first two bursts'), and the speech
    after it is intact (their 250 ms windows' correlation above 0.95).

    The platform moves the path's delay by a few ms either way, and by tens of ms when it
    flags xruns or makes the transmit ring run short too: such a take is taken again (up to
    three), and the delay mark holds on an undisturbed one."""
    c = soundcards.up("gb")["gb"]
    burst = load_wav("engine_ps_goforward_48k.wav", FS)[0][:FS // 2]
    gap = np.zeros(FS, np.float32)
    x = np.concatenate([gap] + [burst, gap] * 8)
    starts = [FS + i * (len(burst) + FS) for i in range(8)]
    for take in range(1, 4):
        port = SoundCardPort("gb", c.input, c.output, rate_hz=FS, shrink_after_s=0.5)
        base = port.rx_setpoint
        harness = helpers.HARNESS_XRUNS[0]
        with Wire(port) as w:
            # both rings levelled and their drift loops settled: the first two bursts are
            # the port's own delay (at 2 s, the first burst's delay still ranged 53-76 ms;
            # at 4 s a single burst was still up to 5 ms off the later ones, so two are
            # averaged)
            time.sleep(4.0)
            w.rush_blocks = 6
            held: list[int] = []    # the receive cushion just before the rush

            def rush(port: SoundCardPort = port, w: Wire = w, held: list[int] = held) -> None:
                held.append(port.rx_setpoint)
                w.rush.set()

            threading.Timer(3.8, rush).start()     # in the pause after the second burst
            t0 = time.monotonic()
            y = playrec(c.air_rx, c.air_tx, x)
        fills = np.array(w.fills)
        delays, peaks, ring_ms = [], [], []     # ring_ms: mean rx / tx ring fill, ms
        floors: list[float] = []    # lowest rx fill over each burst and the pause before, ms
        at = fills[:, 0] - t0           # s into the played signal
        for s0 in starts:
            before_end = at < (s0 + len(burst)) / FS
            t = (at >= s0 / FS) & before_end
            ring_ms.append(tuple(round(1000 * float(fills[t, k].mean()) / FS, 1) if t.any()
                                 else None for k in (1, 2)))
            t = (at >= (s0 - FS // 2) / FS) & before_end
            floors.append(round(1000 * float(fills[t, 1].min()) / FS, 1) if t.any() else 1e9)
            seg = x[s0 - FS // 10:s0 + len(burst)]
            got = y[s0 - FS // 10:s0 + len(burst) + FS // 2]
            d = xcorr_delay(seg, got, FS, max_delay_s=0.45)
            delays.append(1000.0 * d / FS)
            peaks.append(xcorr_peak(seg, got, d))
        kinds = [k for k, _ in w.faults]
        xruns = platform_xruns(port, harness)
        tx_short = any(k == "cushion_raised" and ": tx " in m for k, m in w.faults)
        print(f"\ntake {take}: burst delays {[round(d, 1) for d in delays]} ms; correlation "
              f"{[round(p, 3) for p in peaks]}; rings rx/tx {ring_ms} ms; rx floors {floors} "
              f"(cushion {1000 * base / FS:g} ms); platform xruns "
              f"{xruns} (harness {helpers.HARNESS_XRUNS[0] - harness}); faults {w.faults}; "
              f"stats {port.stats.as_dict()}")
        assert "cushion_raised" in kinds, "the rush did not make the ring run short"
        assert "cushion_lowered" in kinds
        if not xruns and not tx_short:
            break
    else:       # three disturbed takes (the path may have run short again): speech came through
        assert min(peaks[-3:]) > 0.8, "speech was cut while the cushion was given back"
        return
    assert port.rx_setpoint == base, f"the grown cushion was not given back ({held})"
    assert port._rx_level.shed == 0, "the step given back is still in the ring"
    assert min(peaks[-3:]) > 0.95, "speech was cut while the cushion was given back"
    # no latency left behind in the port: around the last two bursts the receive ring's lowest
    # fill is back within one engine block of the configured cushion (the fills come in 160-frame
    # callbacks, 3.3 ms: in CI a given-back ring sat one callback up, 13.3 ms). A cushion left
    # grown, or a ring levelled high, holds its floor a block (5 ms) or more above it (16.7 ms).
    assert max(floors[-2:]) < 1000 * base / FS + 5.0, "the hiccup left latency behind"
    # end to end, the path's own burst sizes move the delay by 5-10 ms between takes (a first
    # two bursts' ring running 5-8 ms below its cushion, docs/soundcards.md): a coarse bound
    before, after = np.mean(delays[:2]), np.mean(delays[-2:])
    assert after < before + 10.0, "the hiccup left latency behind"


@isolated
def test_lost_device_is_reopened_while_other_port_flows(soundcards: VirtualCards) -> None:
    import os
    import tempfile
    from pathlib import Path

    from brug.gateway.soundcards import SoundCards, refresh_portaudio

    b = soundcards.up("lb")["lb"]
    # port A's card lives on a second private server that the test stops and restarts,
    # as a USB card is unplugged and plugged back; port B stays on the session server
    other = SoundCards(Path(tempfile.mkdtemp(prefix="brug-pa2-")))
    saved = os.environ["ALSA_CONFIG_PATH"]
    try:
        a = other.up(["la"])["la"]
        os.environ["ALSA_CONFIG_PATH"] = f"{saved}:{other.asound_path}"
        refresh_portaudio()
        pa = SoundCardPort("la", a.input, a.output, rate_hz=FS)
        pb = SoundCardPort("lb", b.input, b.output, rate_hz=FS)
        with Wire(pa, pb) as wire:
            time.sleep(0.5)
            other.down()                 # port A's device vanishes
            x = _speech(1.5)
            y = playrec(b.air_rx, b.air_tx, x)   # B keeps passing audio meanwhile
            calls_b = pb.callbacks
            other.up(["la"])             # the card comes back
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and pa.stats.reopens == 0:
                time.sleep(0.1)
            calls_a = pa.callbacks
            time.sleep(0.5)
            kinds_a = [k for k, _ in wire.faults if _.startswith("la:")]
            faults_b = [f for f in wire.faults if f[1].startswith("lb:")]
            assert pa.callbacks > calls_a + 50, "port A does not run after the reopen"
            assert pb.callbacks > calls_b
        print(f"\nfaults: {wire.faults}; B stats {pb.stats.as_dict()}")
        assert kinds_a[:1] == ["device_lost"] and "reopened" in kinds_a
        assert pa.stats.reopens >= 1
        assert faults_b == []
        lag = xcorr_delay(x, y, FS, max_delay_s=0.5)
        assert windowed_corr(x, y, lag, FS) > 0.95
    finally:
        other.down()
        os.environ["ALSA_CONFIG_PATH"] = saved


@isolated
def test_the_engine_follows_its_clock_card_and_carries_on_without_it(
        soundcards: VirtualCards) -> None:
    """The engine ticks on the first card's capture. When that card vanishes (its server
    stops, as a USB card is unplugged) the engine goes on ticking on the monotonic clock, so
    the patch between the other two cards passes speech whole; when the card comes back the
    engine takes its clock again."""
    import os
    import tempfile
    from pathlib import Path

    from brug.gateway.engine import Engine, EngineConfig, PortSettings, SquelchSettings
    from brug.gateway.soundcards import SoundCards, refresh_portaudio

    cards = soundcards.up("kb", "kc")
    other = SoundCards(Path(tempfile.mkdtemp(prefix="brug-pa3-")))
    saved = os.environ["ALSA_CONFIG_PATH"]
    stop = threading.Event()
    eng = Engine(EngineConfig(clock="first"))
    try:
        a = other.up(["ka"])["ka"]
        os.environ["ALSA_CONFIG_PATH"] = f"{saved}:{other.asound_path}"
        refresh_portaudio()
        vox = SquelchSettings(type="vox", hang_ms=300)
        for name, c in (("ka", a), ("kb", cards["kb"]), ("kc", cards["kc"])):
            eng.add_port(SoundCardPort(name, c.input, c.output, rate_hz=FS),
                         PortSettings(name, squelch=vox))
        eng.create_patch("P", ["kb", "kc"])
        th = threading.Thread(target=eng.run_realtime, args=(stop,), daemon=True)
        th.start()
        time.sleep(0.5)
        assert eng.clock_name == "ka" and not eng.on_wall_clock
        other.down()                                # the clock card vanishes
        x = _speech(4.0)
        y = playrec(cards["kb"].air_rx, cards["kc"].air_tx, x)
        misses, walled = eng.clock_misses, eng.on_wall_clock
        other.up(["ka"])                            # ... and comes back
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and eng.on_wall_clock:
            time.sleep(0.1)
        back = not eng.on_wall_clock
    finally:
        stop.set()
        eng.stop()
        other.down()
        os.environ["ALSA_CONFIG_PATH"] = saved
    # each half second of speech on its own: the VOX ends the over in the speech's longer
    # pauses, and every new over starts with its pre-roll, so the delay moves between overs
    corrs, lags = [], []
    for i in range(0, len(x) - FS // 2, FS // 2):
        part = x[i:i + FS // 2]
        if np.sqrt(np.mean(part ** 2)) < 1e-3:
            continue
        lag = xcorr_delay(part, y[i:i + FS], FS, max_delay_s=0.4)
        corrs.append(xcorr_peak(part, y[i:i + FS], lag))
        lags.append(round(1000 * lag / FS))
    print(f"\nclock misses {misses}; kb->kc delays {lags} ms, correlations "
          f"{[round(c, 3) for c in corrs]}; stats {eng.port_object('kc').stats.as_dict()}, "
          f"talker {eng.port_object('kb').stats.as_dict()}")
    assert misses >= 1 and walled, "the engine did not notice its clock card was gone"
    assert np.median(corrs) > 0.95, "the patch stopped with the clock card"
    assert back, "the engine did not take the card's clock again when it came back"
