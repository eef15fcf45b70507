"""The pause level: near the path's own noise floor, never below the fixed level, never at
speech level."""

from __future__ import annotations

import numpy as np

from brug.gateway.pauses import MAX_DBFS, PauseLevel, PauseLevels

from helpers import load_wav, noise, rms_dbfs

FS = 16000
B = 80                      # 5 ms blocks
WINDOW = 400                # 2 s of blocks


def speech() -> np.ndarray:
    return load_wav("engine_allison_callsign.wav", FS)[0]


def blocks(x: np.ndarray) -> list[np.ndarray]:
    return [x[i:i + B] for i in range(0, len(x) // B * B, B)]


def test_on_a_clean_path_a_pause_is_below_the_fixed_level() -> None:
    p = PauseLevel(-50.0, WINDOW)
    x = np.concatenate([np.zeros(FS, np.float32), speech(), np.zeros(FS, np.float32)])
    for b in blocks(x):
        quiet = p.observe(b)
        assert quiet == (rms_dbfs(b) < -50.0)
    assert p.floor_dbfs == -np.inf


def test_background_noise_is_a_pause_and_speech_over_it_is_not() -> None:
    """Speech over -45 dBFS noise: once a window has shown the floor, most noise blocks are
    pauses (before, none was: they are above -50 dBFS) and no block at speech level is."""
    x = noise(FS, 10.0, -45.0, seed=3)
    s = speech()
    at = 4 * FS
    x[at:at + len(s)] += s
    p = PauseLevel(-50.0, WINDOW)
    verdicts = [(p.observe(b), rms_dbfs(b)) for b in blocks(x)]
    learnt = verdicts[2 * WINDOW:]
    noise_only = [q for i, (q, _) in enumerate(verdicts)
                  if 2 * WINDOW <= i and not at // B - 2 <= i <= (at + len(s)) // B + 2]
    assert sum(noise_only) > 0.8 * len(noise_only), "the noise was not found to be pauses"
    loud = [q for q, db in learnt if db > -35.0]
    assert loud and not any(loud), "a block well above the noise was taken for a pause"
    assert -50.0 < p.floor_dbfs < -45.0      # the quietest 5 ms blocks of the noise


def test_a_steady_tone_is_never_a_pause() -> None:
    t = np.arange(6 * FS) / FS
    x = (10 ** (-25 / 20) * np.sqrt(2) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    p = PauseLevel(-50.0, WINDOW)
    assert not any(p.observe(b) for b in blocks(x))
    assert 10 * np.log10(p.threshold_ms2) == MAX_DBFS


def test_digital_silence_brings_the_level_back_to_the_fixed_one() -> None:
    p = PauseLevel(-50.0, WINDOW)
    for b in blocks(noise(FS, 5.0, -40.0, seed=3)):
        p.observe(b)
    assert 10 * np.log10(p.threshold_ms2) > -40.0
    p.observe(np.zeros(B, np.float32))
    assert 10 * np.log10(p.threshold_ms2) == -50.0


def test_rows_keep_their_floor_through_a_remap_and_new_rows_start_over() -> None:
    bank = PauseLevels(-50.0, WINDOW, rows=2)
    x = np.stack([noise(FS, 5.0, -40.0, seed=1), noise(FS, 5.0, -60.0, seed=2)])
    for i in range(0, x.shape[1] // B * B, B):
        bank.observe(x[:, i:i + B])
    thr = 10 * np.log10(bank.threshold_ms2)
    assert thr[0] > -40.0 and thr[1] == -50.0
    bank.remap([None, 0])            # a new port first, the noisy one second
    thr = 10 * np.log10(bank.threshold_ms2)
    assert thr[0] == -50.0 and thr[1] > -40.0
