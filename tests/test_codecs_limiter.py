"""Limiter: never above the ceiling, transparent below it, block-size invariant."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from brug.codecs.limiter import Limiter

BLOCKS = (1, 7, 80, 160, 480, 4096)


def _hot(n: int = 24000, ch: int = 3) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((ch, n)) * 0.6).astype(np.float32)
    x[0, 5000] = 8.0                     # a single huge spike
    x[1] *= 0.05                         # a quiet port, must pass untouched
    return x


def test_never_above_ceiling() -> None:
    for ceiling in (-1.0, -6.0, -0.1):
        lim = Limiter(48000, 3, ceiling_dbfs=ceiling)
        y = lim.process(_hot() * 3)
        assert float(np.abs(y).max()) <= 10 ** (ceiling / 20) * (1 + 1e-7)


@pytest.mark.parametrize("bs", BLOCKS)
def test_block_size_invariance(bs: int) -> None:
    x = _hot()
    ref = Limiter(48000, 3).process(x)
    lim = Limiter(48000, 3)
    y = np.concatenate([lim.process(x[:, i:i + bs]) for i in range(0, x.shape[1], bs)], axis=1)
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_latency_is_reported_and_quiet_signal_passes_unchanged() -> None:
    lim = Limiter(48000, 3)
    x = _hot()
    y = lim.process(x)
    d = lim.latency_samples
    assert d == 72                                   # 1.5 ms at 48 kHz
    np.testing.assert_array_equal(y[1, d:], x[1, :-d])
    # a clean impulse comes out exactly latency_samples later
    lim1 = Limiter(8000, 1, lookahead_ms=2.0)
    imp = np.zeros(100, np.float32)
    imp[10] = 0.5
    out = lim1.process(imp)
    assert int(np.argmax(out)) == 10 + lim1.latency_samples
    assert out.ndim == 1


def test_gain_recovers_at_release_rate() -> None:
    rate = 8000
    lim = Limiter(rate, 1, ceiling_dbfs=-6.0, release_ms=100.0, lookahead_ms=1.0)
    x = np.full(rate, 0.25, np.float32)
    x[1000] = 1.0                                  # 6 dB over the ceiling
    y = lim.process(x)
    d = lim.latency_samples
    gain = y[d:] / x[:-d]
    assert float(gain[1000]) == pytest.approx(10 ** (-6 / 20), rel=1e-5)
    # release: 20 dB per 100 ms, so 6 dB back after 30 ms; fully recovered after 40 ms
    assert float(gain[1000 + int(0.015 * rate)]) < 0.99
    assert float(gain[1000 + int(0.04 * rate)]) == pytest.approx(1.0, abs=1e-6)
    # the gain ramps down smoothly before the peak (no jump bigger than 1/(L+1) of 6 dB)
    g_db = 20 * np.log10(gain[900:1001])
    assert float(np.max(np.abs(np.diff(g_db)))) < 6.0 / (lim.latency_samples + 1) + 1e-6


def test_reset_clears_state_and_shape_errors() -> None:
    lim = Limiter(48000, 2)
    x = (np.ones((2, 480)) * 2).astype(np.float32)
    a = lim.process(x)
    lim.reset()
    np.testing.assert_array_equal(lim.process(x), a)
    with pytest.raises(ValueError, match=r"\(2, samples\)"):
        lim.process(np.zeros((3, 10), np.float32))
    assert lim.process(np.zeros((2, 0), np.float32)).shape == (2, 0)


@pytest.mark.benchmark(group="filters-5ms")
@pytest.mark.parametrize("channels", [1, 8])
def test_bench_limiter_5ms(benchmark: Any, channels: int) -> None:
    lim = Limiter(48000, channels)
    x = np.full((channels, 240), 0.5, np.float32)
    y = benchmark(lim.process, x)
    assert y.shape == x.shape


def test_each_channel_is_limited_as_if_it_were_alone() -> None:
    """Quiet channels take a shortcut; a port's output must not depend on its neighbours."""
    x = _hot(16000, 3)
    x[2, 9000:9100] = 1.5                 # a late overload on another channel
    together = Limiter(48000, 3)
    alone = [Limiter(48000, 1) for _ in range(3)]
    y = np.concatenate([together.process(x[:, i:i + 240]) for i in range(0, 16000, 240)], axis=1)
    for c in range(3):
        yc = np.concatenate([alone[c].process(x[c, i:i + 240]) for i in range(0, 16000, 240)])
        np.testing.assert_array_equal(y[c], yc)
    assert float(np.abs(y[2, 9000:9200]).max()) <= 10 ** (-1 / 20) * (1 + 1e-7)


def test_idle_shortcut_is_bit_identical_to_the_full_path() -> None:
    """While nothing is pending a quiet block only goes through the delay line; that must be
    exactly what the full computation gives, including around overloads and the recovery."""
    x = _hot(16000, 3) * 0.02
    x[:, 4000:4400] *= 100.0              # an overload in the middle, then the release
    x[2, 12000] = 0.95                    # a lone peak just over the ceiling
    shortcut, full = Limiter(16000, 3), Limiter(16000, 3)
    idle_blocks = 0
    for i in range(0, x.shape[1], 80):
        idle_blocks += shortcut._idle
        full._idle = False                # never allowed to take the shortcut
        np.testing.assert_array_equal(shortcut.process(x[:, i:i + 80]),
                                      full.process(x[:, i:i + 80]))
    assert 0 < idle_blocks < x.shape[1] // 80


@pytest.mark.parametrize("bs", [80, 7, 1])
def test_in_place_is_bit_identical_to_process(bs: int) -> None:
    """The engine limits its transmit rows in place; block by block that must give exactly
    what :meth:`Limiter.process` returns, through quiet stretches, overloads and blocks
    shorter than the look-ahead."""
    x = _hot(16000, 3) * 0.02
    x[:, 4000:4400] *= 100.0
    x[1, 9000] = 0.97
    inplace, ref = Limiter(16000, 3), Limiter(16000, 3)
    quiet = 0
    for i in range(0, x.shape[1], bs):
        block = np.ascontiguousarray(x[:, i:i + bs])
        want = ref.process(block)
        quiet += inplace._idle
        inplace.process_inplace(block)
        np.testing.assert_array_equal(block, want)
    assert quiet > 0
