"""The engine on its virtual clock with memory ports: routing, radio timing, floor, TOT."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from brug.gateway.engine import (
    Engine,
    EngineConfig,
    EngineError,
    PortSettings,
    PttSettings,
    SquelchSettings,
)
from brug.gateway.events import Event
from brug.gateway.ports.base import MemoryPort
from brug.gateway.signalling import NoPtt, ScheduledSquelch

from helpers import noise

FS = 16000
DATA = Path(__file__).parent / "data"


def speech(name: str = "engine_allison_callsign.wav") -> np.ndarray:
    x, fs = sf.read(DATA / name, dtype="float32")
    return soxr.resample(x, fs, FS).astype(np.float32)


def onset(x: np.ndarray, thr_db: float = -40.0) -> int:
    """First sample of the first 1 ms frame above ``thr_db`` dBFS RMS."""
    f = FS // 1000
    frames = x[: len(x) // f * f].reshape(-1, f)
    lv = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    return int(np.flatnonzero(lv > thr_db)[0]) * f


def vox_onset(x: np.ndarray) -> int:
    """Sample at which the engine's default VOX opens on ``x``."""
    from brug.gateway.vox import VoxBank

    v = VoxBank(FS, 1)
    v.configure(0, open_dbfs=-40, close_dbfs=-46, attack_ms=10, hang_ms=300)
    return next(e.t for e in v.process(0, x[None, :]) if e.open)


def find(seg: np.ndarray, y: np.ndarray) -> tuple[int, float]:
    """Where ``seg`` occurs in ``y`` and its normalised correlation there (-1..1)."""
    c = np.correlate(y, seg, mode="valid")
    energy = np.convolve(y.astype(np.float64) ** 2, np.ones(len(seg)), mode="valid")
    norm = c / (np.linalg.norm(seg) * np.sqrt(energy) + 1e-9)
    k = int(np.argmax(norm))
    return k, float(norm[k])


class Rig:
    def __init__(self, n: int = 3, lead_ms: float = 0.0, **eng: float) -> None:
        self.events: list[Event] = []
        self.engine = Engine(EngineConfig(**eng))  # type: ignore[arg-type]
        self.engine.events.subscribe(self.events.extend)
        self.ports: dict[str, MemoryPort] = {}
        self.ptts: dict[str, NoPtt] = {}
        for name in "abcd"[:n]:
            self.add(name, lead_ms=lead_ms)

    def add(self, name: str, lead_ms: float = 0.0, squelch: ScheduledSquelch | None = None,
            tot_s: float = 120.0, mask: bool = True,
            filters: dict[str, object] | None = None) -> None:
        port = MemoryPort(name)
        ptt = NoPtt()
        self.ports[name], self.ptts[name] = port, ptt
        sq = SquelchSettings(type="schedule", attack_ms=0, hang_ms=0, mask_while_tx=mask) \
            if squelch else SquelchSettings(type="vox")
        self.engine.add_port(port, PortSettings(name, squelch=sq, ptt=PttSettings(
            lead_ms=lead_ms, hang_ms=200, tot_s=tot_s), filters=filters or {}),
            squelch=squelch, ptt=ptt)

    def play(self, name: str, x: np.ndarray, at_s: float) -> None:
        self.ports[name].feed(np.concatenate([np.zeros(int(at_s * FS), np.float32), x]))

    def run(self, seconds: float) -> None:
        self.engine.run_offline(int(seconds * FS) // self.engine.block)

    def topics(self, suffix: str) -> list[Event]:
        return [e for e in self.events if e.topic.endswith(suffix)]


def test_speech_reaches_every_other_member_and_nobody_else() -> None:
    rig = Rig(4)
    rig.engine.create_patch("P", ["a", "b", "c"])
    x = speech()
    rig.play("a", x, 0.5)
    rig.run(len(x) / FS + 1.5)
    for dst in "bc":
        y = rig.ports[dst].tx
        o = onset(x)
        k, corr = find(x[o:o + 8000], y)
        assert corr > 0.99, dst
        # nothing lost: all the talker's energy arrives (only silent blocks are skipped)
        assert np.sum(y**2) == pytest.approx(np.sum(x**2), rel=0.01)
    assert np.max(np.abs(rig.ports["a"].tx)) == 0.0      # the talker is not keyed
    assert np.max(np.abs(rig.ports["d"].tx)) == 0.0      # not patched: never forwarded
    assert not rig.ptts["d"].keyed
    ptt = [(e.topic, e.data["on"]) for e in rig.topics(".ptt")]
    assert ("port.b.ptt", True) in ptt and ("port.b.ptt", False) in ptt
    assert not any(t.startswith("port.d") for t, _ in ptt)


def test_vox_loses_no_first_syllable() -> None:
    rig = Rig(2)
    rig.engine.create_patch("P", ["a", "b"])
    x = speech()
    rig.play("a", x, 0.5)
    rig.run(len(x) / FS + 1.0)
    y = rig.ports["b"].tx
    o = onset(x, -50)
    k, corr = find(x[o:o + 50 * 16], y)      # the first 50 ms of speech, from the very onset
    assert corr > 0.99
    assert np.max(np.abs(y[:k])) < 0.01           # before it only quiet pre-roll (< -40 dBFS)


def test_cor_line_opening_50ms_late_loses_nothing() -> None:
    x = speech()
    at = int(0.5 * FS)
    o = at + onset(x, -50)
    sq = ScheduledSquelch([(o + 50 * 16, at + len(x))])
    rig = Rig(0)
    rig.add("a", squelch=sq)
    rig.add("b")
    rig.engine.create_patch("P", ["a", "b"])
    rig.play("a", x, 0.5)
    rig.run(len(x) / FS + 1.0)
    y = rig.ports["b"].tx
    seg = x[o - at:o - at + 50 * 16]
    k, corr = find(seg, y)
    assert corr > 0.99


def test_ptt_lead_holds_audio_back_without_clipping_or_cutting() -> None:
    rig = Rig(2, lead_ms=300)
    rig.engine.create_patch("P", ["a", "b"])
    x = speech()
    rig.play("a", x, 0.5)
    rig.run(len(x) / FS + 2.0)
    y = rig.ports["b"].tx
    key = next(e.t for e in rig.topics("b.ptt") if e.data["on"])
    live = next(e for e in rig.topics("b.live"))
    assert live.t - key == pytest.approx(300 * 16, abs=rig.engine.block)
    assert np.max(np.abs(y[:live.t])) == 0.0      # nothing sent before the terminal transmits
    o = onset(x, -50)
    _, head = find(x[o:o + 50 * 16], y)
    assert head > 0.99                            # first 50 ms of speech are there
    end = len(x) - onset(x[::-1], -50)
    _, tail = find(x[end - 50 * 16:end], y)
    assert tail > 0.99                            # and the over is not cut at its end
    unkey = next(e.t for e in rig.topics("b.ptt") if not e.data["on"])
    assert unkey > live.t + (end - o)


def test_the_over_catches_up_its_ptt_lead_on_a_path_with_background_noise() -> None:
    """A talker's terminal with background noise at -45 dBFS (a car's cabin), the VOX set
    above it: the 300 ms PTT lead and the pre-roll are caught up in the pauses between the
    words, as on a clean path, so the end of the over is heard without them; nothing of the
    words is left out. With a fixed -50 dBFS pause level the noise was never a pause and the
    whole over kept the 450 ms."""
    rig = Rig(0)
    sq = SquelchSettings(type="vox", open_dbfs=-35, close_dbfs=-40, attack_ms=10, hang_ms=300)
    for name, lead in (("a", 0.0), ("b", 300.0)):
        rig.ports[name] = port = MemoryPort(name)
        rig.engine.add_port(port, PortSettings(name, squelch=sq, ptt=PttSettings(
            lead_ms=lead, hang_ms=200, tot_s=120)), ptt=NoPtt())
    rig.engine.create_patch("P", ["a", "b"])
    x = speech()
    at = 3 * FS
    noisy = noise(FS, (at + len(x) + 2 * FS) / FS, -45.0, seed=1)
    noisy[at:at + len(x)] += x
    rig.ports["a"].feed(noisy)
    rig.run(len(noisy) / FS + 1.0)
    y = rig.ports["b"].tx
    piece = 50 * 16
    delays = []
    for s in (onset(x, -30), len(x) - onset(x[::-1], -30) - piece):   # first and last word
        k, corr = find(noisy[at + s:at + s + piece], y)
        assert corr > 0.99, "a word did not come through whole"
        delays.append((k - at - s) / 16)
    print(f"\ndelay at the first / last word: {delays} ms")
    assert delays[0] > 250, "the first word should wait for the terminal's PTT lead"
    assert delays[1] < 50, f"the over kept {delays[1]} ms of lead and pre-roll to its end"


def test_floor_first_keyup_wins_second_is_blocked_and_not_forwarded() -> None:
    rig = Rig(3, lead_ms=300)
    rig.engine.create_patch("P", ["a", "b", "c"])
    xa, xb = speech(), speech("engine_ps_goforward_48k.wav")
    oa = onset(xa, -50)
    rig.play("a", xa, 1.0 - vox_onset(xa) / FS)
    rig.play("b", xb, 1.02 - vox_onset(xb) / FS)   # its VOX opens 20 ms after a's
    rig.run(max(len(xa), len(xb)) / FS + 2)
    floor = [e.data["holder"] for e in rig.topics("P.floor")]
    assert floor[0] == "a"
    blocked = rig.topics("P.blocked")
    assert blocked and blocked[0].data == {"port": "b", "holder": "a"}
    y = rig.ports["c"].tx
    assert find(xa[oa:oa + 4000], y)[1] > 0.99
    assert not rig.ptts["b"].keyed
    assert np.max(np.abs(rig.ports["b"].tx[: int(0.5 * FS) + len(xa)])) == 0.0


def test_higher_priority_preempts_before_its_terminal_is_keyed() -> None:
    rig = Rig(3, lead_ms=300)
    rig.engine.create_patch("P", ["a", "b", "c"], priorities={"b": 5})
    xa = (0.05 * np.random.default_rng(3).standard_normal(3 * FS)).astype(np.float32)
    xb = speech()
    rig.play("a", xa, 0.5)
    rig.play("b", xb, 0.6 - vox_onset(xb) / FS)   # within b's PTT lead: b is still receiving
    rig.run(3.0)
    pre = rig.topics("P.preempt")
    assert [e.data for e in pre] == [{"port": "b", "prev": "a"}]
    assert find(xb[onset(xb):onset(xb) + 4000], rig.ports["c"].tx)[1] > 0.99


def test_network_preemption_seen_on_call_control_cor() -> None:
    """A PEI-style COR is not masked while we transmit: a priority unit takes the floor."""
    sq = ScheduledSquelch([(int(0.8 * FS), int(1.5 * FS))], info="+CTICN")
    rig = Rig(0)
    rig.add("a")
    rig.add("b", squelch=sq, mask=False)
    rig.add("c")
    rig.engine.create_patch("P", ["a", "b", "c"], priorities={"b": 5})
    xa = (0.05 * np.random.default_rng(3).standard_normal(3 * FS)).astype(np.float32)
    rig.play("a", xa, 0.2)
    rig.play("b", np.full(FS, 0.05, np.float32), 0.8)
    rig.run(2.0)
    assert [e.data for e in rig.topics("P.preempt")] == [{"port": "b", "prev": "a"}]
    b_ptt = [(e.t, e.data["on"]) for e in rig.topics("b.ptt")]
    assert b_ptt[0][1] and not b_ptt[1][1]
    assert b_ptt[1][0] / FS == pytest.approx(0.8, abs=0.01)   # our transmission stops at once


def test_tot_releases_a_stuck_over_and_reports_it() -> None:
    rig = Rig(0)
    rig.add("a", tot_s=2.0)
    rig.add("b")
    rig.engine.create_patch("P", ["a", "b"])
    stuck = (0.1 * np.random.default_rng(1).standard_normal(6 * FS)).astype(np.float32)
    rig.play("a", stuck, 0.1)
    rig.run(7.0)
    tot = rig.topics("P.tot")
    assert len(tot) == 1 and tot[0].data == {"port": "a"}
    assert tot[0].t / FS == pytest.approx(2.1, abs=0.05)
    unkey = [e.t for e in rig.topics("b.ptt") if not e.data["on"]]
    assert unkey and unkey[0] / FS < 2.6
    y = rig.ports["b"].tx
    assert np.max(np.abs(y[int(2.7 * FS):int(6 * FS)])) == 0.0   # locked out while stuck


def test_stop_releases_ptt_everywhere() -> None:
    rig = Rig(3)
    rig.engine.create_patch("P", ["a", "b", "c"])
    rig.play("a", speech(), 0.1)
    rig.run(0.6)
    assert rig.ptts["b"].keyed and rig.ptts["c"].keyed
    rig.engine.stop()
    assert not rig.ptts["b"].keyed and not rig.ptts["c"].keyed


def test_commands_from_another_thread_apply_between_ticks() -> None:
    rig = Rig(3)
    stop = threading.Event()
    th = threading.Thread(target=rig.engine.run_realtime, args=(stop,))
    th.start()
    try:
        rig.engine.submit(lambda e: e.create_patch("P", ["a", "b"])).result(timeout=2)
        with pytest.raises(EngineError) as err:
            rig.engine.submit(lambda e: e.create_patch("Q", ["b", "c"])).result(timeout=2)
        assert err.value.code == "conflict"
        with pytest.raises(EngineError) as err:
            rig.engine.submit(lambda e: e.set_gain("zz", rx_db=0)).result(timeout=2)
        assert err.value.code == "unknown_port"
        snap = rig.engine.submit(lambda e: e.snapshot()).result(timeout=2)
        assert snap["patches"]["P"]["members"] == ["a", "b"]
    finally:
        stop.set()
        th.join()


def test_manual_key_needs_a_limit_and_ends_by_itself() -> None:
    rig = Rig(2)
    with pytest.raises(EngineError):
        rig.engine.manual_key("a", 0)
    with pytest.raises(EngineError):
        rig.engine.manual_key("a", 31)
    rig.engine.manual_key("a", 0.5, tone_hz=1000)
    rig.run(1.0)
    y = rig.ports["a"].tx
    ptt = [(e.t, e.data["on"]) for e in rig.topics("a.ptt")]
    assert ptt[0][1] is True and ptt[1][1] is False
    assert (ptt[1][0] - ptt[0][0]) / FS == pytest.approx(0.5, abs=0.01)
    assert 20 * np.log10(np.sqrt(np.mean(y[1000:7000] ** 2))) == pytest.approx(-23, abs=1)


@pytest.mark.parametrize("n_ports", [4, 16, 64])
def test_bench_engine_tick(benchmark: pytest.FixtureRequest, n_ports: int) -> None:
    """One tick with every port in one patch and one talker (63 destinations at 64 ports)."""
    eng = Engine(EngineConfig())
    talk = (0.1 * np.random.default_rng(0).standard_normal(FS * 60)).astype(np.float32)
    names = [f"p{i}" for i in range(n_ports)]
    for name in names:
        eng.add_port(MemoryPort(name, talk if name == "p0" else None), PortSettings(name))
    eng.create_patch("ALL", names)
    eng.run_offline(40)
    # a fixed number of rounds (20 s of engine time): left to itself the benchmark runs a
    # fast engine past the end of the talker's 60 s and times an idle patch
    benchmark.pedantic(eng.tick, rounds=4000, iterations=1)
    assert eng.snapshot()["patches"]["ALL"]["holder"] == "p0"


def test_line_cor_is_debounced_by_attack_and_hang() -> None:
    # a 3 ms glitch never opens; a real key-up opens after 20 ms and closes 100 ms after release
    sq = ScheduledSquelch([(1600, 1648), (8000, 24000)])
    eng = Engine(EngineConfig())
    events: list[Event] = []
    eng.events.subscribe(events.extend)
    eng.add_port(MemoryPort("a"), PortSettings("a", squelch=SquelchSettings(
        type="schedule", attack_ms=20, hang_ms=100)), squelch=sq)
    eng.run_offline(int(2 * FS) // eng.block)
    cor = [(e.t, e.data["open"]) for e in events if e.topic == "port.a.cor"]
    assert cor == [(8000 + 320, True), (24000 + 1600, False)]


def test_adding_a_port_or_changing_a_gain_cuts_nothing_from_other_ports() -> None:
    rig = Rig(2)
    rig.engine.create_patch("P", ["a", "b"])
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * FS) / FS)).astype(np.float32)
    rig.play("a", x, 0.1)
    rig.run(0.6)
    rig.engine.set_gain("a", tx_db=-3)
    rig.add("c")
    rig.run(0.3)
    rig.engine.remove_port("c")
    rig.run(1.6)
    y = rig.ports["b"].tx
    k, corr = find(x[8000:24000], y)
    assert corr > 0.9999     # one continuous copy: no samples dropped or repeated


def _band_db(y: np.ndarray, f0: float) -> float:
    """Level of the ``f0`` component of ``y`` (dB re full scale, Hann-windowed FFT)."""
    w = np.hanning(len(y))
    spec = np.abs(np.fft.rfft(y * w)) / (np.sum(w) / 2)
    k = int(round(f0 * len(y) / FS))
    return float(20 * np.log10(np.max(spec[k - 2:k + 3]) + 1e-12))


def test_hum_notch_keeps_mains_hum_from_keying_the_patch() -> None:
    """-20 dBFS of 50 Hz hum (a ground loop) opens a plain VOX port; with the profile's notch
    it does not."""
    t = np.arange(3 * FS) / FS
    hum = (0.14 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)     # -20 dBFS RMS
    for filters, keyed in (({}, True), ({"hum_notch": 50}, False)):
        rig = Rig(0)
        rig.add("a", filters=filters)
        rig.add("b")
        rig.engine.create_patch("P", ["a", "b"])
        rig.play("a", hum, 0.0)
        rig.run(3.0)
        assert bool(rig.topics("port.b.ptt")) is keyed, filters


def test_receive_filters_clean_what_the_patch_hears() -> None:
    """A DC offset and hum on a port's line are gone at the other member; speech is not."""
    x = speech()
    n = len(x) + FS
    t = np.arange(n) / FS
    dirt = (0.2 + 0.05 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    line = dirt.copy()
    line[FS // 2:FS // 2 + len(x)] += x
    rig = Rig(0)
    rig.add("a", squelch=ScheduledSquelch([(FS // 2, FS // 2 + len(x))]),
            filters={"dc_block": True, "hum_notch": 50, "highpass_hz": 0, "lowpass_hz": 8000})
    rig.add("b")
    rig.engine.create_patch("P", ["a", "b"])
    rig.ports["a"].feed(line)
    rig.run(n / FS + 0.5)
    y = rig.ports["b"].tx
    k, corr = find(x[onset(x):onset(x) + 8000], y)
    assert corr > 0.97                          # the speech itself passes
    heard = y[k - 2000:k + 24000]
    assert abs(float(np.mean(heard))) < 2e-3    # the 0.2 DC offset is gone
    assert _band_db(heard, 50) < _band_db(dirt, 50) - 30


def test_squelch_tail_is_not_forwarded() -> None:
    """An analog receiver's noise burst between carrier drop and squelch close (150 ms) is cut
    from the end of the over; the speech before it arrives whole."""
    x = speech()
    at, tail = FS // 2, int(0.15 * FS)
    rng = np.random.default_rng(7)
    burst = (0.3 * rng.standard_normal(tail)).astype(np.float32)
    for tail_ms in (0, 150):
        rig = Rig(0)
        rig.add("a", squelch=ScheduledSquelch([(at, at + len(x) + tail)]),
                filters={"squelch_tail_ms": tail_ms, "highpass_hz": 0, "lowpass_hz": 8000})
        rig.add("b")
        rig.engine.create_patch("P", ["a", "b"])
        rig.ports["a"].feed(np.concatenate([np.zeros(at, np.float32), x, burst]))
        rig.run((at + len(x) + tail) / FS + 1.0)
        y = rig.ports["b"].tx
        _, corr_burst = find(burst[:800], y)    # the first 50 ms of the noise burst
        _, corr_end = find(x[-4000:], y)       # the last 250 ms of speech
        assert corr_end > 0.99, tail_ms
        if tail_ms:
            assert corr_burst < 0.3, "the squelch tail was forwarded"
        else:
            assert corr_burst > 0.99


def test_pre_emphasis_on_a_transmit_port() -> None:
    """A port with ``preemphasis`` transmits 3 kHz about 18 dB hotter than 300 Hz (750 us)."""
    t = np.arange(FS) / FS
    two = (0.05 * (np.sin(2 * np.pi * 300 * t) + np.sin(2 * np.pi * 3000 * t))).astype(
        np.float32)
    rig = Rig(0)
    rig.add("a", squelch=ScheduledSquelch([(FS // 2, FS // 2 + len(two))]))
    rig.add("b", filters={"preemphasis": True, "highpass_hz": 0, "lowpass_hz": 8000})
    rig.engine.create_patch("P", ["a", "b"])
    rig.ports["a"].feed(np.concatenate([np.zeros(FS // 2, np.float32), two]))
    rig.run(2.5)
    y = rig.ports["b"].tx
    k, _ = find(two[:4000], y)
    seg = y[k + 2000:k + 2000 + FS // 2]
    assert _band_db(seg, 3000) - _band_db(seg, 300) == pytest.approx(18.3, abs=0.7)


def test_bad_filters_are_refused_with_the_key() -> None:
    rig = Rig(0)
    with pytest.raises(EngineError, match="port 'a': filters: unknown filter key 'hum'"):
        rig.add("a", filters={"hum": 50})


def test_agc_brings_a_quiet_talker_to_the_reference_level() -> None:
    """A talker 22 dB below nominal (-40 dBFS) reaches the other member near -18 dBFS with the
    port's AGC on, and stays at -40 dBFS without it; VOX opens either way."""
    from brug.codecs.levels import active_speech_level

    x = speech()
    x = x * np.float32(10 ** ((-40.0 - active_speech_level(x, FS)[0]) / 20))
    x4 = np.concatenate([x, x, x, x])                 # 4 overs' worth in one long over
    levels = {}
    for agc in (None, {}):
        rig = Rig(0)
        port = MemoryPort("a")
        rig.ports["a"] = port
        rig.engine.add_port(port, PortSettings("a", squelch=SquelchSettings(
            type="schedule", attack_ms=0, hang_ms=0), agc=agc),
            squelch=ScheduledSquelch([(FS // 2, FS // 2 + len(x4))]), ptt=NoPtt())
        rig.add("b")
        rig.engine.create_patch("P", ["a", "b"])
        rig.play("a", x4, 0.5)
        rig.run(len(x4) / FS + 1.0)
        y = rig.ports["b"].tx
        k = find(x[:8000], y)[0] % len(x)             # (any repetition: all are alike)
        last = y[k + 3 * len(x):k + 4 * len(x)]       # the last repetition: AGC settled
        levels[agc is not None] = active_speech_level(last, FS)[0]
    assert levels[False] == pytest.approx(-40.0, abs=1.0)
    assert levels[True] == pytest.approx(-18.0, abs=2.0)
