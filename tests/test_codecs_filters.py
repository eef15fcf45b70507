"""Voice filters: block-size invariance, reset, measured responses, latency, delay line, Chain."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import signal

from brug.codecs.filters import (
    CHAIN_KEYS,
    Block,
    Chain,
    DcBlock,
    DeEmphasis,
    DelayLine,
    HumNotch,
    PreEmphasis,
    SosFilter,
    VoiceBand,
    build_chain,
    emphasis_coefficients,
)

from helpers import load_wav, noise, rms_dbfs, tone

BLOCKS = (1, 7, 80, 160, 480, 4096)

Factory = Callable[[int, int], Any]       # (rate_hz, channels) -> block

FACTORIES: dict[str, Factory] = {
    "dc_block": lambda fs, ch: DcBlock(fs, channels=ch),
    "voice_band": lambda fs, ch: VoiceBand(fs, channels=ch),
    "hum_notch": lambda fs, ch: HumNotch(fs, channels=ch),
    "pre_emphasis": lambda fs, ch: PreEmphasis(fs, channels=ch),
    "de_emphasis": lambda fs, ch: DeEmphasis(fs, channels=ch),
    "delay": lambda fs, ch: DelayLine(333, channels=ch, fade_samples=16),
    "chain": lambda fs, ch: build_chain({"dc_block": True, "hum_notch": 50, "deemphasis": True,
                                         "voice_band": True, "squelch_tail_ms": 20}, fs, ch),
}


def _speech(fs: int = 16000) -> np.ndarray[Any, Any]:
    """Real speech plus a DC offset and 50 Hz hum, so every filter has something to do."""
    x, _ = load_wav("engine_ps_goforward_48k.wav", fs)
    x = x[: 2 * fs]
    t = np.arange(len(x)) / fs
    return (x + 0.05 + 0.02 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)


def _run(block: Any, x: np.ndarray[Any, Any], bs: int) -> np.ndarray[Any, Any]:
    return np.concatenate([block.process(x[..., i:i + bs])
                           for i in range(0, x.shape[-1], bs)], axis=-1)


def _gain_db(block: Any, freq: float, fs: int, seconds: float = 3.0,
             settle: float = 2.0) -> float:
    """Measured steady-state gain at ``freq``: RMS out / RMS in after ``settle`` seconds."""
    x = tone(freq, fs, seconds, dbfs=-10.0)
    y = block.process(x)
    k = int(settle * fs)
    return rms_dbfs(y[k:]) - rms_dbfs(x[k:])


# --------------------------------------------------------------------- streaming invariants
@pytest.mark.parametrize("bs", BLOCKS)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_output_does_not_depend_on_block_size(name: str, bs: int) -> None:
    x = _speech()
    whole = FACTORIES[name](16000, 1).process(x)
    chunked = _run(FACTORIES[name](16000, 1), x, bs)
    assert chunked.dtype == np.float32 and chunked.shape == x.shape
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-7)
    assert float(np.max(np.abs(whole - x))) > 1e-3        # the block did change the signal


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_channels_are_independent_and_match_mono(name: str) -> None:
    x = _speech()
    ports = np.stack([x, -0.5 * x, noise(16000, len(x) / 16000, -30)[:len(x)]])
    multi = _run(FACTORIES[name](16000, 3), ports, 160)
    assert multi.shape == ports.shape
    for c in range(3):
        np.testing.assert_allclose(multi[c], FACTORIES[name](16000, 1).process(ports[c]),
                                   rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_reset_clears_state_and_keeps_parameters(name: str) -> None:
    x = _speech()[:8000]
    blk = FACTORIES[name](16000, 1)
    first = blk.process(x)
    second = blk.process(x)                   # state carried over: not the same
    assert float(np.max(np.abs(first - second))) > 1e-4
    blk.reset()
    np.testing.assert_array_equal(blk.process(x), first)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_empty_and_tiny_blocks(name: str) -> None:
    blk = FACTORIES[name](8000, 1)
    y0 = blk.process(np.zeros(0, np.float32))
    assert y0.shape == (0,) and y0.dtype == np.float32
    blk2 = FACTORIES[name](8000, 2)
    assert blk2.process(np.zeros((2, 0), np.float32)).shape == (2, 0)
    assert blk.process(np.ones(1, np.float32)).shape == (1,)
    assert isinstance(blk, Block)


# --------------------------------------------------------------------- responses
@pytest.mark.parametrize("fs", [8000, 16000])
def test_voice_band_passes_speech_and_stops_the_rest(fs: int) -> None:
    assert abs(_gain_db(VoiceBand(fs), 1000.0, fs)) <= 0.5
    assert _gain_db(VoiceBand(fs), 100.0, fs) <= -20.0
    for edge in (300.0, 3400.0):                          # Butterworth: -3 dB at the edges
        assert _gain_db(VoiceBand(fs), edge, fs) == pytest.approx(-3.01, abs=0.2)
    if fs >= 16000:
        assert _gain_db(VoiceBand(fs), 6000.0, fs) <= -20.0
    else:
        assert _gain_db(VoiceBand(fs), 3900.0, fs) <= -20.0    # near Nyquist at 8 kHz


@pytest.mark.parametrize("fs", [8000, 16000, 22050, 32000, 44100, 48000])
def test_voice_band_measured_equals_design_at_every_rate(fs: int) -> None:
    vb = VoiceBand(fs)
    for f in (150.0, 1000.0, 3000.0):
        assert _gain_db(VoiceBand(fs), f, fs) == pytest.approx(float(vb.response_db(f)[0]),
                                                               abs=0.05)


def test_voice_band_low_and_high_pass_variants() -> None:
    lp = VoiceBand(16000, lo_hz=0.0, hi_hz=3000.0)
    assert abs(_gain_db(lp, 100.0, 16000)) < 0.01 and _gain_db(lp, 6000.0, 16000) < -20
    hp = VoiceBand(16000, lo_hz=300.0, hi_hz=None)
    assert abs(_gain_db(hp, 6000.0, 16000)) < 0.01 and _gain_db(hp, 100.0, 16000) < -20
    steep = VoiceBand(16000, order=8)
    assert _gain_db(steep, 200.0, 16000) < _gain_db(VoiceBand(16000), 200.0, 16000) - 10


@pytest.mark.parametrize("mains", [50.0, 60.0])
@pytest.mark.parametrize("fs", [8000, 48000])
def test_hum_notch_removes_mains_and_harmonics_keeps_speech(mains: float, fs: int) -> None:
    for k in (1, 2, 3):
        assert _gain_db(HumNotch(fs, mains), mains * k, fs) <= -30.0
    assert abs(_gain_db(HumNotch(fs, mains), 1000.0, fs)) <= 0.5
    assert abs(_gain_db(HumNotch(fs, mains), 300.0, fs)) <= 0.5
    # a 4th harmonic is not notched with the default 2 harmonics, but is with 3
    assert _gain_db(HumNotch(fs, mains), 4 * mains, fs) > -1.0
    assert _gain_db(HumNotch(fs, mains, harmonics=3), 4 * mains, fs) <= -30.0


def test_hum_notch_copes_with_a_grid_slightly_off_nominal() -> None:
    # 0.2 Hz off: still more than 20 dB down with q=10 (the design says 22 dB)
    assert _gain_db(HumNotch(8000), 50.2, 8000, seconds=6.0, settle=4.0) <= -20.0
    assert HumNotch(8000).notches_hz == [50.0, 100.0, 150.0]


def test_hum_notch_on_speech_with_hum() -> None:
    x, fs = load_wav("engine_allison_callsign.wav")
    t = np.arange(len(x)) / fs
    hum = (0.05 * np.sin(2 * np.pi * 50 * t) + 0.02 * np.sin(2 * np.pi * 150 * t + 1))
    y = HumNotch(fs).process((x + hum).astype(np.float32))
    ref = HumNotch(fs).process(x)
    k = fs                                      # after a second the hum is gone
    residual = rms_dbfs(y[k:] - ref[k:]) - rms_dbfs(hum[k:])
    assert residual < -30.0


def test_dc_block_removes_an_offset() -> None:
    fs = 8000
    x, _ = load_wav("engine_allison_callsign.wav")
    y = DcBlock(fs).process((x + 0.25).astype(np.float32))
    tail = y[fs // 2:]                           # 0.5 s = 60 time constants at 20 Hz
    assert abs(float(np.mean(tail)) - float(np.mean(x[fs // 2:]))) < 1e-3
    assert abs(float(np.mean(DcBlock(fs).process(np.full(fs, 0.5, np.float32))[-100:]))) < 1e-6
    assert _gain_db(DcBlock(fs), 20.0, fs) == pytest.approx(-3.01, abs=0.05)
    assert abs(_gain_db(DcBlock(fs), 1000.0, fs)) < 0.01
    assert _gain_db(DcBlock(fs, corner_hz=100.0), 100.0, fs) == pytest.approx(-3.01, abs=0.05)


def _analog_pre_db(f: float, tau_us: float) -> float:
    return 10.0 * math.log10(1.0 + (2 * math.pi * f * tau_us * 1e-6) ** 2)


@pytest.mark.parametrize("fs", [8000, 16000, 48000])
@pytest.mark.parametrize("tau", [750.0, 75.0, 50.0])
def test_pre_emphasis_follows_the_analog_curve(fs: int, tau: float) -> None:
    pre = PreEmphasis(fs, tau)
    g300, g1k, g3k = (_gain_db(PreEmphasis(fs, tau), f, fs, 1.0, 0.5)
                      for f in (300.0, 1000.0, 3000.0))
    assert abs(g1k) < 0.01                               # unity at 1 kHz (the line-up tone)
    want = _analog_pre_db(3000.0, tau) - _analog_pre_db(300.0, tau)
    assert g3k - g300 == pytest.approx(want, abs=0.3)
    if tau == 750.0:
        assert g3k - g300 == pytest.approx(18.26, abs=0.3)   # ~6 dB/octave, 3.3 octaves
    for f in (200.0, 500.0, 2000.0, 2500.0):
        analog = _analog_pre_db(f, tau) - _analog_pre_db(1000.0, tau)
        assert float(pre.response_db(f)[0]) == pytest.approx(analog, abs=0.25)
    de = DeEmphasis(fs, tau)
    assert float(de.response_db(3000.0)[0]) == pytest.approx(-float(pre.response_db(3000.0)[0]),
                                                             abs=1e-9)


@pytest.mark.parametrize("fs", [8000, 16000, 48000])
@pytest.mark.parametrize("tau", [750.0, 75.0, 50.0])
def test_pre_then_de_emphasis_restores_the_signal(fs: int, tau: float) -> None:
    x, _ = load_wav("engine_ps_goforward_48k.wav", fs)
    x = x[: 2 * fs]
    pre, de = PreEmphasis(fs, tau), DeEmphasis(fs, tau)
    y = np.concatenate([de.process(pre.process(x[i:i + 80])) for i in range(0, len(x), 80)])
    np.testing.assert_allclose(y, x, rtol=0, atol=2e-6)
    assert float(np.max(np.abs(pre.process(x) - x))) > 0.01    # but pre alone changes it


def test_emphasis_design_rejects_silly_time_constants() -> None:
    with pytest.raises(ValueError, match="emphasis time constant must be 1..5000 us, got 0.5"):
        emphasis_coefficients(8000, 0.5)
    g, b, a = emphasis_coefficients(8000, 750.0)
    assert 0 < b < 1 and abs(a) < 1 and g > 0


# --------------------------------------------------------------------- latency
def _burst(freq: float, fs: int, t0: float, sigma: float, n: int) -> np.ndarray[Any, Any]:
    t = np.arange(n) / fs
    return (0.3 * np.exp(-0.5 * ((t - t0) / sigma) ** 2) * np.sin(2 * np.pi * freq * t)) \
        .astype(np.float32)


def _centre(x: np.ndarray[Any, Any]) -> float:
    e = np.abs(signal.hilbert(x.astype(np.float64))) ** 2
    return float(np.sum(np.arange(len(e)) * e) / np.sum(e))


@pytest.mark.parametrize("fs", [8000, 16000, 48000])
@pytest.mark.parametrize("freq", [1000.0, 400.0])
def test_voice_band_reported_group_delay_equals_measured(fs: int, freq: float) -> None:
    vb = VoiceBand(fs)
    x = _burst(freq, fs, 0.5, 0.03, fs)          # 30 ms Gaussian envelope: 5 Hz wide
    measured = _centre(vb.process(x)) - _centre(x)
    assert measured == pytest.approx(vb.group_delay_samples(freq), abs=0.05)
    assert vb.latency_samples == 0
    if freq == 400.0:                             # near the edge the delay is larger
        assert vb.group_delay_samples(400.0) > 2 * vb.group_delay_samples(1000.0)


def test_delay_line_latency_is_exact() -> None:
    for d in (0, 1, 80, 333):
        line = DelayLine(d)
        imp = np.zeros(1000, np.float32)
        imp[17] = 1.0
        out = _run(line, imp, 7)
        assert int(np.argmax(out)) == 17 + d == 17 + line.latency_samples
        assert float(out.sum()) == 1.0
    assert DelayLine.from_ms(150.0, 8000).latency_samples == 1200


def test_chain_latency_and_group_delay_add_up_and_are_measured() -> None:
    fs = 16000
    chain = Chain([VoiceBand(fs), DelayLine(160), DcBlock(fs), DelayLine(40)])
    assert chain.latency_samples == 200
    x = _burst(1000.0, fs, 0.5, 0.03, fs)
    measured = _centre(_run(chain, x, 80)) - _centre(x)
    assert measured == pytest.approx(chain.group_delay_samples(1000.0), abs=0.05)
    assert chain.group_delay_samples(1000.0) > 200.0


# --------------------------------------------------------------------- delay line
def test_clear_drops_the_squelch_tail() -> None:
    """Speech, then the noise burst of a closing squelch; COR closes at the end of the burst."""
    fs = 8000
    speech, _ = load_wav("engine_allison_callsign.wav")
    speech = speech[:fs]
    tail = noise(fs, 0.12, dbfs=-6.0, seed=9)            # 120 ms of squelch noise
    rx = np.concatenate([speech, tail])
    line = DelayLine.from_ms(150.0, fs, fade_ms=0.0)      # a bit longer than the tail
    heard = _run(line, rx, 40)
    line.clear()                                         # COR closes here
    heard = np.concatenate([heard, line.process(np.zeros(2000, np.float32))])
    d = line.latency_samples
    # everything up to the last 150 ms before the close came out, delayed
    np.testing.assert_array_equal(heard[d:len(rx)], rx[:len(rx) - d])
    # none of the noise burst did
    assert float(np.max(np.abs(heard[len(rx):]))) == 0.0
    assert rms_dbfs(heard) < rms_dbfs(rx)


def test_partial_clear_fades_and_keeps_older_audio() -> None:
    line = DelayLine(100, fade_samples=10)
    x = np.ones(100, np.float32)
    line.process(x)
    line.clear(30)                                      # drop the newest 30 samples
    held = line.flush()
    np.testing.assert_array_equal(held[:70], 1.0)
    fade = held[70:80]
    assert np.all(np.diff(fade) < 0) and 0 < fade[-1] < fade[0] < 1
    np.testing.assert_array_equal(held[80:], 0.0)
    line.clear(0)
    with pytest.raises(ValueError, match="can clear 0..100 samples, got 101"):
        line.clear(101)


def test_flush_returns_what_is_held_and_empties_the_line() -> None:
    line = DelayLine(5)
    out = line.process(np.arange(1, 8, dtype=np.float32))
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 0, 1, 2])
    np.testing.assert_array_equal(line.flush(), [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(line.process(np.ones(5, np.float32)), 0.0)
    st = DelayLine(2, channels=2)
    st.process(np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    np.testing.assert_array_equal(st.flush(), [[2, 3], [5, 6]])


# --------------------------------------------------------------------- chain
def test_chain_is_a_list_of_blocks() -> None:
    fs = 8000
    dc, vb, dl = DcBlock(fs), VoiceBand(fs), DelayLine(8)
    chain = Chain([dc, vb])
    assert len(chain) == 2 and list(chain) == [dc, vb] and chain[1] is vb
    chain.append(dl)
    assert chain[-1] is dl and chain.latency_samples == 8
    chain.remove(vb)
    assert list(chain) == [dc, dl]
    chain.insert(1, vb)
    assert chain.index(vb) == 1 and vb in chain
    assert isinstance(chain[0:2], Chain) and list(chain[0:2]) == [dc, vb]
    chain[0] = DcBlock(fs, 50.0)
    assert isinstance(chain[0], DcBlock) and chain[0] is not dc
    del chain[0]
    assert len(chain) == 2
    assert chain.pop() is dl and chain.latency_samples == 0
    with pytest.raises(TypeError, match="a chain holds blocks with process"):
        chain.append("voice_band")                      # type: ignore[arg-type]


def test_chain_runs_blocks_in_order_and_resets_all() -> None:
    fs = 16000
    x = _speech(fs)
    chain = Chain([DcBlock(fs), VoiceBand(fs), DelayLine(50)])
    manual = DelayLine(50).process(VoiceBand(fs).process(DcBlock(fs).process(x)))
    np.testing.assert_array_equal(chain.process(x), manual)
    chain.reset()
    np.testing.assert_array_equal(_run(chain, x, 7), manual)
    empty = Chain()
    y = empty.process(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x and empty.latency_samples == 0


def test_build_chain_from_a_profile_mapping() -> None:
    chain = build_chain({"dc_block": True, "voice_band": [300, 3400], "hum_notch": 50,
                         "de_emphasis_us": 750}, 8000)
    assert [type(b) for b in chain] == [DcBlock, HumNotch, DeEmphasis, VoiceBand]
    vb = chain[3]
    assert isinstance(vb, VoiceBand) and (vb.lo_hz, vb.hi_hz) == (300.0, 3400.0)
    # the profile schema's own keys (hw_profiles FiltersSpec)
    prof = build_chain({"highpass_hz": 300, "lowpass_hz": 3000, "deemphasis": True,
                        "preemphasis": False, "squelch_tail_ms": 150}, 48000)
    assert [type(b) for b in prof] == [DeEmphasis, VoiceBand, DelayLine]
    assert prof.latency_samples == 7200
    # lowpass at Nyquist or above means no low-pass
    wide = build_chain({"highpass_hz": 100, "lowpass_hz": 24000}, 48000)
    only = wide[0]
    assert isinstance(only, VoiceBand) and only.hi_hz is None
    assert len(build_chain({"highpass_hz": 0, "deemphasis": False}, 8000)) == 0
    tx = build_chain({"voice_band": True, "pre_emphasis_us": 750, "dc_block": 10.0}, 16000)
    assert [type(b) for b in tx] == [DcBlock, VoiceBand, PreEmphasis]


def test_build_chain_errors_name_the_key_and_list_the_valid_ones() -> None:
    valid = ", ".join(sorted(CHAIN_KEYS))
    with pytest.raises(ValueError) as err:
        build_chain({"dc_block": True, "hum_notch_hz": 50}, 8000)
    assert str(err.value) == f"unknown filter key 'hum_notch_hz'; valid keys: {valid}"
    with pytest.raises(ValueError, match="must be the mains frequency"):
        build_chain({"hum_notch": True}, 8000)
    with pytest.raises(ValueError, match="give either 'voice_band' or 'highpass_hz'"):
        build_chain({"voice_band": True, "highpass_hz": 300}, 8000)
    with pytest.raises(ValueError, match="filter key 'voice_band' must be true or"):
        build_chain({"voice_band": [300]}, 8000)
    with pytest.raises(ValueError, match="filter key 'deemphasis' must be true or false"):
        build_chain({"deemphasis": "yes"}, 8000)
    with pytest.raises(ValueError, match=r"voice_band hi_hz 3400.0 Hz must be below half the "
                                         r"sample rate \(3000.0 Hz\)"):
        build_chain({"voice_band": True}, 6000)


def test_parameter_and_input_errors() -> None:
    with pytest.raises(ValueError, match=r"voice_band hi_hz 6000 Hz must be below half the "
                                         r"sample rate \(4000.0 Hz\)"):
        VoiceBand(8000, 300, 6000)
    with pytest.raises(ValueError, match="voice_band lo_hz must be below hi_hz"):
        VoiceBand(8000, 3400, 300)
    with pytest.raises(ValueError, match="voice_band needs lo_hz > 0 or hi_hz"):
        VoiceBand(8000, 0.0, None)
    with pytest.raises(ValueError, match=r"hum_notch: the highest notch \(4200.0 Hz\) must be "
                                         r"below half the sample rate \(4000.0 Hz\)"):
        HumNotch(8000, 60.0, harmonics=69)
    with pytest.raises(ValueError, match="dc_block corner_hz must be between 0 and 4000.0 Hz"):
        DcBlock(8000, 0.0)
    with pytest.raises(ValueError, match="delay_samples must be >= 0, got -1"):
        DelayLine(-1)
    with pytest.raises(ValueError, match="VoiceBand takes float samples .* got int16"):
        VoiceBand(8000).process(np.zeros(10, np.int16))
    with pytest.raises(ValueError, match=r"DcBlock has 2 channels; pass \(channels, samples\)"):
        DcBlock(8000, channels=2).process(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match=r"expected shape \(2, samples\), got \(3, 10\)"):
        DelayLine(4, channels=2).process(np.zeros((3, 10), np.float32))
    with pytest.raises(ValueError, match=r"sos must have shape \(sections, 6\)"):
        SosFilter(np.zeros((2, 5)), 8000)


# --------------------------------------------------------------------- benchmarks
BENCH: dict[str, Callable[[], Any]] = {
    "dc_block": lambda: DcBlock(16000),
    "voice_band": lambda: VoiceBand(16000),
    "hum_notch": lambda: HumNotch(16000),
    "pre_emphasis": lambda: PreEmphasis(16000),
    "de_emphasis": lambda: DeEmphasis(16000),
    "delay_150ms": lambda: DelayLine.from_ms(150.0, 16000),
    "chain_analog_rx": lambda: build_chain({"dc_block": True, "hum_notch": 50,
                                            "deemphasis": True, "voice_band": True,
                                            "squelch_tail_ms": 150}, 16000),
}


@pytest.mark.benchmark(group="filters-5ms")
@pytest.mark.parametrize("name", sorted(BENCH))
def test_bench_filter_5ms_16k(benchmark: Any, name: str) -> None:
    blk = BENCH[name]()
    x = noise(16000, 0.005, -20.0)                      # 80 samples
    y = benchmark(blk.process, x)
    assert y.shape == (80,)


@pytest.mark.benchmark(group="filters-5ms")
def test_bench_voice_band_5ms_16k_8_ports(benchmark: Any) -> None:
    vb = VoiceBand(16000, channels=8)
    x = np.tile(noise(16000, 0.005, -20.0), (8, 1))
    y = benchmark(vb.process, x)
    assert y.shape == (8, 80)
