"""StreamResampler and DriftController: block-size invariance, delay, drift over a day."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import signal

from brug.codecs.resample import DriftController, StreamResampler

BLOCKS = (1, 7, 80, 160, 480, 4096)
PAIRS = [(48000, 16000), (16000, 8000), (8000, 48000), (44100, 48000), (22050, 8000),
         (32000, 44100), (48000, 48000)]


def _run(r: StreamResampler, x: np.ndarray[Any, Any], bs: int) -> np.ndarray[Any, Any]:
    return np.concatenate([r.process(x[i:i + bs]) for i in range(0, len(x), bs)])


def _pulse(rate_in: int, rate_out: int, n: int, t0: int) -> np.ndarray[Any, Any]:
    # Gaussian pulse, well inside both pass bands (sigma = 3 samples at the lower rate)
    sig = 3.0 / min(rate_in, rate_out) * rate_in
    t = np.arange(n)
    return np.exp(-0.5 * ((t - t0) / sig) ** 2).astype(np.float32)


@pytest.mark.parametrize("bs", BLOCKS)
def test_output_does_not_depend_on_block_size(bs: int) -> None:
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal(9000)).astype(np.float32)
    ref = StreamResampler(48000, 16000).process(x)
    y = _run(StreamResampler(48000, 16000), x, bs)
    m = min(len(ref), len(y))
    assert abs(len(ref) - len(y)) <= 1
    np.testing.assert_allclose(y[:m], ref[:m], atol=1e-6)


@pytest.mark.parametrize("rates", PAIRS)
@pytest.mark.parametrize("quality", ["sinc_fastest", "sinc_best"])
def test_reported_delay_equals_measured(rates: tuple[int, int], quality: str) -> None:
    a, b = rates
    t0 = a // 3
    x = _pulse(a, b, a, t0)
    r = StreamResampler(a, b, quality=quality)
    y = _run(r, x, 160)
    centre = float(np.sum(np.arange(len(y)) * y) / np.sum(y))
    measured = centre - t0 * b / a
    assert measured == pytest.approx(r.delay_samples, abs=0.01)


def test_every_call_returns_about_ratio_times_input() -> None:
    r = StreamResampler(48000, 8000)
    sizes = [len(r.process(np.zeros(240, np.float32))) for _ in range(50)]
    assert all(39 <= s <= 41 for s in sizes)          # no start-up shortfall
    assert sum(sizes) == pytest.approx(50 * 40, abs=1)


def test_multichannel_frames_by_channels_and_empty_input() -> None:
    rng = np.random.default_rng(2)
    x = (0.3 * rng.standard_normal((4800, 3))).astype(np.float32)
    r = StreamResampler(48000, 16000, channels=3)
    assert r.process(np.zeros((0, 3), np.float32)).shape[1] == 3
    y = _run(r, x, 480)
    assert y.ndim == 2 and y.shape[1] == 3
    mono = StreamResampler(48000, 16000).process(x[:, 1])
    m = min(len(mono), len(y))
    np.testing.assert_allclose(y[:m, 1], mono[:m], atol=1e-6)
    with pytest.raises(ValueError, match="frames, 3"):
        r.process(np.zeros((10, 2), np.float32))


def test_flush_returns_the_tail_and_reset_restarts() -> None:
    a, b = 16000, 8000
    x = _pulse(a, b, 1600, 1500)                       # pulse near the end of the stream
    r = StreamResampler(a, b)
    y = np.concatenate([r.process(x), r.flush()])
    assert len(y) >= int(1600 * b / a + r.delay_samples)
    assert float(np.sum(y)) == pytest.approx(float(np.sum(x)) * b / a, rel=1e-3)
    # after flush (which resets) the same input gives the same output
    y2 = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(y, y2)


def test_bad_parameters_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="known: sinc_best"):
        StreamResampler(48000, 8000, quality="best")
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0, 8000)


def test_correction_changes_output_rate_by_that_many_ppm() -> None:
    r = StreamResampler(8000, 8000)
    r.set_correction_ppm(1000.0)
    n = sum(len(r.process(np.zeros(800, np.float32))) for _ in range(100))
    # the primed look-ahead cancels the held-back input, so output = input x ratio
    assert n == pytest.approx(80000 * 1.001, abs=3)


def _residual_dbc(y: np.ndarray[Any, Any], rate: int, f0: float) -> float:
    """Worst 5 ms window of what is left after notching out the tone, in dB re the tone."""
    sos = signal.butter(8, (f0 * 0.8, f0 * 1.25), btype="bandstop", fs=rate, output="sos")
    res = signal.sosfiltfilt(sos, y)
    tone_rms = float(np.sqrt(np.mean(y ** 2)))
    w = rate // 200
    edge = rate // 10                              # skip the filter's start/end transients
    frames = res[edge:len(res) - edge]
    frames = frames[:len(frames) // w * w].reshape(-1, w)
    worst = float(np.sqrt(np.mean(frames ** 2, axis=1)).max())
    return 20 * np.log10(worst / tone_rms)


def test_ratio_changes_are_smooth_for_a_1khz_tone() -> None:
    """A ratio correction jumping by 500 ppm every 100 ms leaves no step above -60 dBc."""
    rate = 16000
    t = np.arange(rate * 3) / rate
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    r = StreamResampler(rate, rate)
    out = []
    for k, i in enumerate(range(0, len(x), 80)):
        if k % 20 == 0:
            r.set_correction_ppm(500.0 if (k // 20) % 2 else -500.0)
        out.append(r.process(x[i:i + 80]))
    y = np.concatenate(out).astype(np.float64)
    assert _residual_dbc(y, rate, 1000.0) < -60.0
    # the same check catches a real step: a 1-sample slip is far above -60 dBc
    slipped = np.concatenate([y[:len(y) // 2], y[len(y) // 2 + 1:]])
    assert _residual_dbc(slipped, rate, 1000.0) > -40.0


class _Clock:
    """A sound card crystal: delivers rate*(1+ppm) samples per second of true time."""

    def __init__(self, rate: int, ppm: float) -> None:
        self.rate = rate * (1 + ppm * 1e-6)
        self._acc = 0.0

    def samples(self, seconds: float) -> int:
        self._acc += self.rate * seconds
        n = int(self._acc)
        self._acc -= n
        return n


def test_drift_one_hour_with_the_real_resampler_in_the_loop() -> None:
    """Capture card +100 ppm, engine clock -100 ppm (200 ppm apart), one simulated hour.

    Simulated: the two crystals (sample counts per 100 ms tick of true time). Real: the
    StreamResampler converting every sample from 8 kHz to 16 kHz, the ring fill (a counter of
    samples written minus read) and the DriftController. The engine reads 1600 samples per tick
    from the ring and the controller sees the fill once per tick; a 1 kHz tone runs through it.
    """
    tick = 0.1
    card, engine = _Clock(8000, +100.0), _Clock(16000, -100.0)
    r = StreamResampler(8000, 16000)
    setpoint = 3200
    ctl = DriftController(setpoint=setpoint, rate_hz=16000, max_ppm=1000.0,
                          period_samples=1600, time_constant_s=10.0)
    fill = setpoint
    phase = 0.0
    fills = []
    tail: list[np.ndarray[Any, Any]] = []
    seconds = 3600
    ticks = int(seconds / tick)
    for k in range(ticks):
        n_in = card.samples(tick)
        # the card's tone: phase-continuous 1 kHz at the card's true rate
        ph = phase + 2 * np.pi * 1000.0 / card.rate * np.arange(n_in)
        phase = float(ph[-1] + 2 * np.pi * 1000.0 / card.rate) % (2 * np.pi)
        y = r.process((0.5 * np.sin(ph)).astype(np.float32))
        fill += len(y)
        fill -= engine.samples(tick)
        assert 0 < fill < 2 * setpoint, f"ring ran {'dry' if fill <= 0 else 'over'} at {k}"
        fills.append(fill)
        r.set_correction_ppm(ctl.update(fill))
        if k >= ticks - 50:
            tail.append(y)
    settled = np.array(fills[int(120 / tick):])           # after two minutes
    assert np.all(np.abs(settled - setpoint) < 0.5 * 16000 * 5e-3 + 1600), "left its band"
    # the loop found the 200 ppm offset
    assert ctl.ppm == pytest.approx(-200.0, abs=20.0)
    assert _residual_dbc(np.concatenate(tail).astype(np.float64), 16000, 1000.0) < -60.0


def test_drift_24_hours_fill_model() -> None:
    """24 simulated hours, 200 ppm apart, analytic fill model with the real DriftController.

    Simulated: the ring fill as (card samples x ratio) - engine samples per 100 ms tick, i.e.
    what the resampler produces on average, and the two crystals (which also wander +-20 ppm
    with temperature over the day). Real: the DriftController.
    """
    rate, tick = 48000, 0.1
    setpoint, band = 2400, 1200
    ctl = DriftController(setpoint=setpoint, rate_hz=rate, period_samples=int(rate * tick))
    card_acc = eng_acc = 0.0
    fill = float(setpoint)
    ppm = 0.0
    worst = 0.0
    ticks = int(24 * 3600 / tick)
    wander = 20.0 * np.sin(2 * np.pi * np.arange(ticks) / ticks)
    for k in range(ticks):
        card_acc += rate * (1 + (100.0 + wander[k]) * 1e-6) * tick * (1 + ppm * 1e-6)
        eng_acc += rate * (1 - 100.0 * 1e-6) * tick
        n_out, n_eng = int(card_acc), int(eng_acc)
        card_acc -= n_out
        eng_acc -= n_eng
        fill += n_out - n_eng
        assert 0 < fill < 2 * setpoint
        ppm = ctl.update(int(fill))
        if k > 1200:
            worst = max(worst, abs(fill - setpoint))
    assert worst < band


def test_controller_limits_and_reset() -> None:
    ctl = DriftController(setpoint=1000, rate_hz=8000, max_ppm=300.0)
    for _ in range(10000):
        out = ctl.update(5000)
    assert out == -300.0
    ctl.reset()
    assert ctl.ppm == 0.0
    assert ctl.update(1000) == 0.0
    # recovers quickly after saturation (anti-windup): no long overshoot
    for _ in range(100):
        ctl.update(500)
    assert ctl.ppm > 0


@pytest.mark.benchmark(group="resample-5ms")
@pytest.mark.parametrize("channels", [1, 64])
def test_bench_resampler_5ms_block(benchmark: Any, channels: int) -> None:
    r = StreamResampler(48000, 16000, channels=channels)
    shape = (240,) if channels == 1 else (240, channels)
    x = np.zeros(shape, np.float32)
    y = benchmark(r.process, x)
    assert len(y) in (79, 80, 81)


def _worst_excursion(ctl: DriftController, offset_ppm: float, seconds: float) -> float:
    """Fill model (as above) with a card ``offset_ppm`` fast: the largest distance of the fill
    from the set point, samples."""
    rate, tick = 48000, 0.005
    acc, fill, ppm, worst = 0.0, float(ctl.setpoint), ctl.ppm, 0.0
    for _ in range(int(seconds / tick)):
        acc += rate * tick * (1 + offset_ppm * 1e-6) * (1 + ppm * 1e-6) - rate * tick
        step = int(acc)
        acc -= step
        fill += step
        worst = max(worst, abs(fill - ctl.setpoint))
        ppm = ctl.update(int(fill))
    return worst


def test_a_levelled_ring_keeps_the_clock_offset_learned() -> None:
    """A ring levelled again (moved to its set point: the port's Leveller) with the loop told
    to keep its rate does not drift off by the card's whole offset a second time; a reset
    that forgets it (the engine changed clock) does."""
    ctl = DriftController(144, 48000, period_samples=240, time_constant_s=30.0)
    assert _worst_excursion(ctl, 280.0, 180.0) > 48 * 2.5     # learning the offset costs 3 ms
    ctl.reset(settled=True, keep_rate=True)
    assert ctl.ppm == pytest.approx(-280.0, abs=15.0)
    assert _worst_excursion(ctl, 280.0, 60.0) < 48 * 0.5
    ctl.reset(settled=True)
    assert ctl.ppm == 0.0
    assert _worst_excursion(ctl, 280.0, 60.0) > 48 * 2.5


def test_a_clock_change_of_known_offset_is_shifted_in_not_learned_again() -> None:
    """The engine's clock moves to another card whose offset is known (80 ppm here): the
    card's ring then runs 280 - 80 = 200 ppm off. Shifting the learned rate by the 80 ppm
    keeps the fill within half a millisecond; learning the new offset from scratch strays by
    more than 2 ms."""
    ctl = DriftController(144, 48000, period_samples=240, time_constant_s=30.0)
    _worst_excursion(ctl, 280.0, 180.0)
    assert ctl.rate_ppm == pytest.approx(-280.0, abs=15.0)
    ctl.shift_rate(80.0)
    assert ctl.rate_ppm == pytest.approx(-200.0, abs=15.0)
    assert _worst_excursion(ctl, 200.0, 60.0) < 48 * 0.5
    ctl.reset(settled=True)
    assert _worst_excursion(ctl, 200.0, 60.0) > 48 * 2.0
    ctl.shift_rate(-5000.0)                       # never beyond the loop's limit
    assert ctl.rate_ppm == -ctl.max_ppm


def test_acquisition_phase_keeps_a_thin_cushion() -> None:
    """A card 280 ppm fast (what the virtual cards run off the monotonic clock): the 30 s loop
    lets the fill stray by about 3 ms before it has caught up, more than a 3 ms cushion; 30 s
    of acquisition at 5 s keeps it within 1 ms, and the shift to tracking keeps the ratio."""
    slow = DriftController(144, 48000, period_samples=240, time_constant_s=30.0)
    fast = DriftController(144, 48000, period_samples=240, time_constant_s=30.0,
                           acquire_s=30.0, acquire_time_constant_s=5.0)
    assert fast.acquiring
    w_slow = _worst_excursion(slow, 280.0, 180.0)
    w_fast = _worst_excursion(fast, 280.0, 180.0)
    assert w_slow > 48 * 2.5
    assert w_fast < 48 * 1.0
    assert not fast.acquiring
    assert fast.ppm == pytest.approx(-280.0, abs=15.0)
    fast.reset()
    assert fast.acquiring and fast.ppm == 0.0
