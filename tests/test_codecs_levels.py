"""Levels: line calibration arithmetic, P.56 active level, and the AGC (levelling, no pumping,
block-size invariance, zero latency)."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest

import brug.codecs.filters
import brug.codecs.levels
from brug.codecs.levels import (
    DBU_VOLTS,
    REFERENCE_DBFS,
    SINE_FS_DBFS,
    Agc,
    LineCalibration,
    active_speech_level,
    db_to_gain,
    dbu_to_volts,
    gain_to_db,
    rx_gain,
    tx_gain,
    volts_to_dbu,
)

from helpers import load_wav, noise, rms_dbfs, tone, xcorr_delay

BLOCKS = (1, 7, 80, 160, 480, 4096)
RECORDINGS = [("engine_ps_goforward_48k.wav", 16000), ("engine_allison_callsign.wav", 8000)]


def _talker(name: str, fs: int, level_dbfs: float) -> np.ndarray[Any, Any]:
    """A recording scaled to a P.56 active level of ``level_dbfs``."""
    x, _ = load_wav(name, fs)
    lvl, _ = active_speech_level(x, fs)
    return (x * 10 ** ((level_dbfs - lvl) / 20)).astype(np.float32)


def _gain_trace(agc: Agc, x: np.ndarray[Any, Any], block: int) -> np.ndarray[Any, Any]:
    g = []
    for i in range(0, len(x), block):
        agc.process(x[i:i + block])
        g.append(float(agc.gain_db[0]))
    return np.array(g)


def _onset(x: np.ndarray[Any, Any], fs: int, dbfs: float) -> float:
    """Time in s of the first 10 ms frame whose RMS reaches ``dbfs``."""
    w = fs // 100
    n = len(x) // w
    lv = 10 * np.log10(np.mean(x[:n * w].reshape(n, w).astype(np.float64) ** 2, axis=1) + 1e-20)
    return float(np.argmax(lv >= dbfs)) * w / fs


# ------------------------------------------------------------------------ calibration
def test_units() -> None:
    assert dbu_to_volts(0.0) == pytest.approx(0.7746, abs=1e-4)
    assert volts_to_dbu(0.775) == pytest.approx(0.0, abs=0.01)
    assert dbu_to_volts(4.0) == pytest.approx(1.228, abs=1e-3)
    assert DBU_VOLTS ** 2 / 600 == pytest.approx(1e-3)          # 1 mW into 600 ohm
    assert SINE_FS_DBFS == pytest.approx(rms_dbfs(tone(1000, 48000, 1.0, dbfs=0.0)), abs=1e-3)
    assert db_to_gain(6.0206) == pytest.approx(2.0, rel=1e-4)
    assert gain_to_db(0.5) == pytest.approx(-6.0206, abs=1e-4)
    with pytest.raises(ValueError, match="gain must be positive, got 0"):
        gain_to_db(0)
    with pytest.raises(ValueError, match="voltage must be positive, got -1"):
        volts_to_dbu(-1)


def test_full_scale_calibration_reads_a_real_tone_right() -> None:
    # A card whose full scale is a +4 dBu (1.228 V RMS) sine.
    cal = LineCalibration.from_full_scale(volts_rms=1.228)
    assert cal == LineCalibration.from_full_scale(dbu=volts_to_dbu(1.228))
    # a -16 dBu tone at the connector is 20 dB below full scale: a sine of peak 0.1
    x = tone(1000, 48000, 1.0, dbfs=-20.0)
    assert cal.dbu_to_dbfs(-16.0) == pytest.approx(rms_dbfs(x), abs=0.01)
    assert cal.dbfs_to_dbu(rms_dbfs(x)) == pytest.approx(-16.0, abs=0.01)
    # nominal 0 dBu line: gain to the -18 dBFS reference
    g = cal.rx_gain(0.0, "dBu")
    assert g.db == pytest.approx(REFERENCE_DBFS - (SINE_FS_DBFS - volts_to_dbu(1.228)),
                                 abs=1e-9)
    assert g.db == pytest.approx(-10.99, abs=0.01)
    assert g.linear == pytest.approx(10 ** (g.db / 20))


def test_profile_pair_and_dbm0() -> None:
    # analog-cm108 profile: line_out_dbu -8 reads as rx_level_dbfs -20
    cal = LineCalibration.from_pair(-8.0, -20.0, zero_dbm0_dbu=-8.0)
    assert cal.dbu_to_dbfs(-8.0) == -20.0
    assert cal.nominal_dbfs == -20.0
    assert cal.rx_gain().db == pytest.approx(2.0)             # -20 -> -18 dBFS
    assert cal.rx_gain().linear == pytest.approx(1.2589, abs=1e-4)
    assert cal.to_dbfs(-10.0, "dBm0") == -30.0
    assert cal.dbfs_to_dbm0(-30.0) == -10.0
    assert cal.dbm0_to_dbu(3.0) == -5.0 and cal.dbu_to_dbm0(-5.0) == 3.0
    # the same calibration given in dBm0
    assert LineCalibration.from_pair(0.0, -20.0, unit="dBm0", zero_dbm0_dbu=-8.0) == cal
    # every conversion inverts the other way
    for v in (-40.0, -18.0, 0.0, 6.5):
        assert cal.dbu_to_dbfs(cal.dbfs_to_dbu(v)) == pytest.approx(v)
        assert cal.dbm0_to_dbfs(cal.dbfs_to_dbm0(v)) == pytest.approx(v)


def test_transmit_gain_puts_the_reference_at_the_terminal_nominal_input() -> None:
    # output card: full scale is a 2.0 V RMS sine; terminal's microphone input nominal -20 dBu
    cal = LineCalibration.from_full_scale(volts_rms=2.0, zero_dbm0_dbu=-20.0)
    g = cal.tx_gain()
    # a reference-level tone in the engine, times the gain, comes out at -20 dBu on the line
    x = tone(1000, 8000, 1.0, dbfs=REFERENCE_DBFS - SINE_FS_DBFS)   # RMS -18 dBFS
    assert rms_dbfs(x) == pytest.approx(REFERENCE_DBFS, abs=0.01)
    line_dbu = cal.dbfs_to_dbu(rms_dbfs(x * g.linear))
    assert line_dbu == pytest.approx(-20.0, abs=0.01)
    assert rx_gain(-24.0).db == 6.0 and tx_gain(-24.0).db == -6.0


def test_reference_is_the_one_the_site_file_uses() -> None:
    from brug.gateway.site import REFERENCE_DBFS as SITE_REFERENCE

    assert SITE_REFERENCE == REFERENCE_DBFS == -18.0


def test_calibration_errors() -> None:
    with pytest.raises(ValueError, match="give exactly one of volts_rms or dbu"):
        LineCalibration.from_full_scale()
    with pytest.raises(ValueError, match="give exactly one of volts_rms or dbu"):
        LineCalibration.from_full_scale(volts_rms=1.0, dbu=0.0)
    with pytest.raises(ValueError, match="unit must be one of: dBu, dBm0; got 'dBV'"):
        LineCalibration.from_pair(0.0, -18.0, unit="dBV")      # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unit must be one of: dBu, dBm0; got 'dbu'"):
        LineCalibration(-10.0).to_dbfs(0.0, "dbu")             # type: ignore[arg-type]


@pytest.mark.parametrize("module", [brug.codecs.levels, brug.codecs.filters])
def test_docstring_examples_hold(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------ P.56 active level
def test_active_level_ignores_pauses_and_scales_in_db() -> None:
    fs = 8000
    t = tone(1000, fs, 2.0, dbfs=-10.0)                    # RMS -13.01 dBFS
    lvl, act = active_speech_level(t, fs)
    assert lvl == pytest.approx(-13.01, abs=0.1) and act > 0.95
    gap = np.concatenate([t, np.zeros(2 * fs, np.float32)])
    lvl2, act2 = active_speech_level(gap, fs)
    assert rms_dbfs(gap) == pytest.approx(-16.0, abs=0.1)  # plain RMS counts the pause
    # P.56 counts 200 ms of hangover (and the envelope's decay) after the tone as active
    assert lvl2 == pytest.approx(-13.01 - 10 * np.log10(2.3 / 2.0), abs=0.2)
    assert 0.5 < act2 < 0.6 and lvl2 - rms_dbfs(gap) > 2.4
    x, _ = load_wav("engine_allison_callsign.wav")
    base, act3 = active_speech_level(x, fs)
    assert base == pytest.approx(-19.2, abs=0.1) and 0.7 < act3 < 0.95
    quieter, _ = active_speech_level(x * 10 ** (-20 / 20), fs)
    assert quieter == pytest.approx(base - 20.0, abs=0.05)
    assert active_speech_level(np.zeros(100), fs) == (-120.0, 0.0)


# ------------------------------------------------------------------------ AGC
@pytest.mark.parametrize("name,fs", RECORDINGS)
def test_agc_brings_a_quiet_talker_to_the_target(name: str, fs: int) -> None:
    """-40 dBFS talker in -65 dBFS noise: settled output at -18 dBFS, reached in stated time."""
    s = _talker(name, fs, -40.0)
    x = np.concatenate([s, s, s])
    x = (x + noise(fs, len(x) / fs, -65.0)[:len(x)]).astype(np.float32)
    y = Agc(fs).process(x)
    n = len(s)
    for k in (1, 2):                                        # second and third time through
        out, _ = active_speech_level(y[k * n:(k + 1) * n], fs)
        assert out == pytest.approx(-18.0, abs=1.0)
    trace = _gain_trace(Agc(fs), x, fs // 200)             # gain every 5 ms
    settled = float(np.median(trace[len(trace) // 2:]))
    t_in = int(np.argmax(np.abs(trace - settled) < 1.0)) * 0.005
    start = _onset(s, fs, -50.0)                            # speech starts here
    assert t_in - start <= 1.6, f"within 1 dB only {t_in - start:.2f} s after speech started"
    assert t_in - start >= 0.8                              # and not faster than the release


def test_agc_holds_its_gain_in_a_pause_of_noise() -> None:
    fs = 16000
    s = _talker("engine_ps_goforward_48k.wav", fs, -40.0)
    agc = Agc(fs, max_gain_db=40.0)                        # so no gain limit can hide a climb
    agc.process(np.concatenate([s, s]))
    before = float(agc.gain_db[0])
    assert 15.0 < before < 39.0                             # it did raise the talker
    pause = noise(fs, 5.0, -60.0, seed=4)
    trace = _gain_trace(agc, pause, 80)
    assert float(np.max(np.abs(trace - before))) < 1e-9
    # the noise comes out at exactly the held gain, not pumped up
    out = agc.process(noise(fs, 1.0, -60.0, seed=5))
    assert rms_dbfs(out) == pytest.approx(-60.0 + before, abs=0.1)


@pytest.mark.parametrize("case", ["noise -60", "noise -40", "hum -35", "zeros then noise -40"])
def test_agc_does_not_raise_background_from_reset(case: str) -> None:
    fs = 16000
    if case == "noise -60":
        x = noise(fs, 5.0, -60.0)
    elif case == "noise -40":
        x = noise(fs, 5.0, -40.0)                           # loud but steady: background
    elif case == "hum -35":
        t = np.arange(5 * fs) / fs
        x = (0.025 * np.sin(2 * np.pi * 50 * t) + noise(fs, 5.0, -55.0)).astype(np.float32)
    else:
        x = np.concatenate([np.zeros(fs, np.float32), noise(fs, 4.0, -40.0)])
    trace = _gain_trace(Agc(fs), x, 80)
    assert float(np.max(np.abs(trace))) < 1e-9
    # the same check fails for an AGC without any gate: the test can tell
    ungated = _gain_trace(Agc(fs, gate_dbfs=-90.0, gate_above_noise_db=None), x, 80)
    assert float(np.max(ungated)) > 10.0


def test_absolute_gate_alone_levels_keyed_tones() -> None:
    fs = 8000
    burst = np.concatenate([tone(1000, fs, 0.2, dbfs=-37.0), np.zeros(800, np.float32)])
    x = np.tile(burst, 20)                                  # -40 dBFS RMS while keyed
    assert float(_gain_trace(Agc(fs), x, 40)[-1]) == 0.0    # flat: taken for noise (documented)
    y = Agc(fs, gate_above_noise_db=None).process(x)
    # levelled to the target as P.56 reads it (gaps under 200 ms count as active)
    out, _ = active_speech_level(y[len(y) // 2:], fs)
    assert out == pytest.approx(-18.0, abs=0.5)


def test_agc_follows_a_louder_then_a_quieter_talker() -> None:
    fs = 16000
    quiet = _talker("engine_ps_goforward_48k.wav", fs, -40.0)
    loud = _talker("engine_ps_goforward_48k.wav", fs, -20.0)
    agc = Agc(fs)
    agc.process(np.concatenate([quiet, quiet]))
    high = float(agc.gain_db[0])
    ref = Agc(fs)
    ref.process(np.concatenate([loud, loud, loud]))
    low = float(ref.gain_db[0])
    assert high - low == pytest.approx(20.0, abs=1.5)
    trace = _gain_trace(agc, loud, 80)
    start = _onset(loud, fs, -30.0)
    t3 = int(np.argmax(trace < low + 3.0)) * 0.005
    assert t3 - start < 0.2                                  # down within 0.2 s of the onset
    y = Agc(fs).process(np.concatenate([loud, quiet, quiet, quiet]))
    n = len(loud)
    out, _ = active_speech_level(y[3 * n:], fs)
    assert out == pytest.approx(-18.0, abs=1.0)             # and back up for the quiet one


def test_agc_gain_limits_and_slew() -> None:
    fs = 8000
    s = _talker("engine_allison_callsign.wav", fs, -40.0)
    agc = Agc(fs, max_gain_db=10.0)
    agc.process(np.concatenate([s, s]))
    assert float(agc.gain_db[0]) == 10.0
    hot = _talker("engine_allison_callsign.wav", fs, -3.0)
    agc = Agc(fs, min_gain_db=-6.0)
    trace = _gain_trace(agc, np.concatenate([hot, hot]), 40)
    assert float(trace.min()) == -6.0
    # attack: at most 20 dB per attack_ms (100 ms) downwards, per 5 ms block
    assert float(np.min(np.diff(trace))) >= -1.0 - 1e-9
    rise = _gain_trace(Agc(fs), np.concatenate([s, s]), 40)
    assert float(np.max(np.diff(rise))) <= 20.0 * 5 / 800 + 1e-9   # release 20 dB per 800 ms


@pytest.mark.parametrize("bs", BLOCKS)
def test_agc_is_block_size_invariant(bs: int) -> None:
    fs = 16000
    s = _talker("engine_ps_goforward_48k.wav", fs, -35.0)
    x = np.concatenate([s, noise(fs, 0.7, -60.0), _talker("engine_allison_callsign.wav", fs,
                                                         -25.0)])
    whole = Agc(fs).process(x)
    agc = Agc(fs)
    chunked = np.concatenate([agc.process(x[i:i + bs]) for i in range(0, len(x), bs)])
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-7)
    assert float(np.max(np.abs(whole - x))) > 1e-3


def test_agc_channels_match_mono_and_reset() -> None:
    fs = 8000
    a = _talker("engine_allison_callsign.wav", fs, -40.0)
    b = _talker("engine_allison_callsign.wav", fs, -10.0)
    multi = Agc(fs, channels=2)
    ys = np.concatenate([multi.process(np.stack([a, b])[:, i:i + 160])
                         for i in range(0, len(a), 160)], axis=1)
    np.testing.assert_allclose(ys[0], Agc(fs).process(a), rtol=0, atol=1e-7)
    np.testing.assert_allclose(ys[1], Agc(fs).process(b), rtol=0, atol=1e-7)
    assert multi.gain_db.shape == (2,) and multi.gain_db[0] > multi.gain_db[1]
    multi.reset()
    assert list(multi.gain_db) == [0.0, 0.0]
    np.testing.assert_array_equal(multi.process(np.stack([a, b])), ys)


def test_agc_adds_no_delay_and_no_zipper() -> None:
    fs = 16000
    x = _talker("engine_ps_goforward_48k.wav", fs, -40.0)
    agc = Agc(fs)
    y = agc.process(x)
    assert agc.latency_samples == 0
    assert xcorr_delay(x, y, fs, max_delay_s=0.05) == 0
    # the gain changes smoothly inside frames: per-sample steps are 1/frame of a frame's step
    loud = np.abs(x) > 1e-3
    g = 20 * np.log10(np.abs(y[loud] / x[loud]))
    idx = np.flatnonzero(loud)
    steps = np.abs(np.diff(g))[np.diff(idx) == 1]
    per_frame = 20.0 * agc.frame_ms / agc.attack_ms
    # (a linear ramp of the linear gain: its dB steps vary by a few per cent along the ramp)
    assert float(steps.max()) <= per_frame / agc.frame * 1.05


def test_agc_empty_blocks_and_errors() -> None:
    agc = Agc(8000)
    assert agc.process(np.zeros(0, np.float32)).shape == (0,)
    assert Agc(8000, channels=3).process(np.zeros((3, 0), np.float32)).shape == (3, 0)
    with pytest.raises(ValueError, match="Agc takes float samples"):
        agc.process(np.zeros(8, np.int16))
    with pytest.raises(ValueError, match=r"Agc has 2 channels; pass \(channels, samples\)"):
        Agc(8000, channels=2).process(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r"expected shape \(2, samples\), got \(3, 8\)"):
        Agc(8000, channels=2).process(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="target_dbfs must be <= 0 dBFS, got 3"):
        Agc(8000, target_dbfs=3)
    with pytest.raises(ValueError, match="min_gain_db must not be above max_gain_db"):
        Agc(8000, min_gain_db=10, max_gain_db=5)
    with pytest.raises(ValueError, match=r"initial_gain_db must be within -12.0..24.0 dB"):
        Agc(8000, initial_gain_db=30)
    with pytest.raises(ValueError, match="frame_ms must give at least one sample"):
        Agc(8000, frame_ms=0.01)


@pytest.mark.benchmark(group="filters-5ms")
def test_bench_agc_5ms_16k(benchmark: Any) -> None:
    agc = Agc(16000)
    x = _talker("engine_ps_goforward_48k.wav", 16000, -40.0)[8000:8080]
    y = benchmark(agc.process, x)
    assert y.shape == (80,)


@pytest.mark.benchmark(group="filters-5ms")
def test_bench_agc_5ms_16k_8_ports(benchmark: Any) -> None:
    agc = Agc(16000, channels=8)
    x = np.tile(_talker("engine_ps_goforward_48k.wav", 16000, -40.0)[8000:8080], (8, 1))
    y = benchmark(agc.process, x)
    assert y.shape == (8, 80)
