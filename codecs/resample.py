"""Streaming resampling with drift correction.

:class:`StreamResampler` wraps libsamplerate (the ``samplerate`` package): its sinc converters keep
their filter state and fractional read position across calls, so the output does not depend on
how the input is cut into blocks, and the ratio given to each call is ramped linearly from the
previous one over that call's output (no phase step when the drift correction changes).

:class:`DriftController` is the control loop that keeps a ring buffer near its set point, as
JACK's ``alsa_in`` and ``zita-ajbridge`` do: a PI loop on the (low-passed) fill level whose output
is a ratio correction in ppm, fed to :meth:`StreamResampler.set_correction_ppm`.

Sign convention: a *positive* correction makes the resampler produce *more* output per input
sample. The controller returns a *negative* correction when the ring is fuller than its set point,
which is right both when the resampler writes into the ring (produce less) and when it reads from
it (consume more input per output sample).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import samplerate
from numpy.typing import NDArray

#: libsamplerate converter names accepted as ``quality``.
QUALITIES: tuple[str, ...] = ("sinc_best", "sinc_medium", "sinc_fastest", "linear",
                              "zero_order_hold")
#: Rates the gateway meets on sound cards and IP links, in Hz (any positive rate works).
COMMON_RATES: tuple[int, ...] = (8000, 16000, 22050, 32000, 44100, 48000)

_PROBE_SAMPLES = 16384


@lru_cache(maxsize=64)
def _holdback_input_samples(ratio: float, quality: str) -> int:
    """Input samples libsamplerate holds back as look-ahead for ``ratio``/``quality``.

    Measured once by feeding zeros: the converter emits ``(n - hold) * ratio`` outputs for ``n``
    inputs.
    """
    probe = samplerate.Resampler(quality, channels=1)
    out = probe.process(np.zeros(_PROBE_SAMPLES, dtype=np.float32), ratio)
    hold = _PROBE_SAMPLES - len(out) / ratio
    return max(0, int(math.ceil(hold - 1e-9)))


class StreamResampler:
    """Streaming resampler with state across blocks.

    Uses libsamplerate via the ``samplerate`` package; its ratio can change smoothly between
    calls, which drift correction needs.

    The converter is primed with ``P`` zeros (its look-ahead), so from the first call it returns
    about ``len(x) * out_rate / in_rate`` samples per call, and an event at input sample ``n``
    appears at output sample ``n * ratio + delay_samples``.

    Parameters
    ----------
    in_rate, out_rate : int
        Sample rates in Hz.
    channels : int
        Number of channels. ``process`` takes 1-D arrays when ``channels == 1`` and 2-D arrays
        shaped (frames, channels) otherwise (libsamplerate's interleaved layout).
    quality : str
        One of :data:`QUALITIES`. ``sinc_fastest`` (SNR about 97 dB, 80 % bandwidth) is the engine
        default; ``sinc_best`` costs roughly 10x more.

    Notes
    -----
    Real-time: ``process`` is called from the engine thread; it allocates its output array and
    costs about 16 microseconds per 5 ms block of one channel (48 -> 16 kHz, sinc_fastest) and
    174 for 64 channels at once (docs/codecs.md).
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int = 1,
                 quality: str = "sinc_fastest") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got in_rate={in_rate}, "
                             f"out_rate={out_rate}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if quality not in QUALITIES:
            raise ValueError(f"unknown resampler quality {quality!r}; known: "
                             f"{', '.join(QUALITIES)}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.channels = int(channels)
        self.quality = quality
        self._nominal = self.out_rate / self.in_rate
        self._ppm = 0.0
        self._prime = _holdback_input_samples(self._nominal, quality)
        self._src = samplerate.Resampler(quality, channels=self.channels)
        self._pending: NDArray[np.float32] = self._empty()
        self.reset()

    # ------------------------------------------------------------------ helpers
    def _empty(self) -> NDArray[np.float32]:
        if self.channels == 1:
            return np.zeros(0, dtype=np.float32)
        return np.zeros((0, self.channels), dtype=np.float32)

    @property
    def ratio(self) -> float:
        """Current conversion ratio out/in including the drift correction."""
        return self._nominal * (1.0 + self._ppm * 1e-6)

    @property
    def correction_ppm(self) -> float:
        """The drift correction last set, in ppm."""
        return self._ppm

    @property
    def delay_samples(self) -> float:
        """Group delay in output samples (at the nominal ratio).

        An impulse at input sample ``n`` comes out centred on output sample
        ``n * out_rate / in_rate + delay_samples``; tests measure this with band-limited pulses.
        """
        return self._prime * self._nominal

    @property
    def delay_ms(self) -> float:
        """Group delay in milliseconds."""
        return 1000.0 * self.delay_samples / self.out_rate

    # ------------------------------------------------------------------ API
    def set_correction_ppm(self, ppm: float) -> None:
        """Set the drift correction: ratio = out/in * (1 + ppm * 1e-6).

        The new ratio is reached by a linear ramp over the output of the next ``process`` call
        (libsamplerate's behaviour), so there is no phase step. ``|ppm|`` is limited to 10 %.
        """
        if not math.isfinite(ppm):
            raise ValueError(f"correction must be finite, got {ppm}")
        self._ppm = float(min(max(ppm, -1e5), 1e5))

    def process(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Resample one block and return the output that is available.

        Parameters
        ----------
        x : ndarray of float32
            1-D (mono) or 2-D (frames, channels); any length including 0.

        Returns
        -------
        ndarray of float32
            Same dimensionality as the input; about ``len(x) * ratio`` frames.
        """
        x = np.asarray(x, dtype=np.float32)
        if self.channels == 1 and x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
            squeeze_back = True
        else:
            squeeze_back = False
        if self.channels == 1 and x.ndim != 1:
            raise ValueError(f"mono resampler expects a 1-D array, got shape {x.shape}")
        if self.channels > 1 and (x.ndim != 2 or x.shape[1] != self.channels):
            raise ValueError(f"expected shape (frames, {self.channels}), got {x.shape}")
        if len(x) == 0:
            y = self._pending
            self._pending = self._empty()
        else:
            y = self._src.process(np.ascontiguousarray(x), self.ratio).astype(np.float32,
                                                                             copy=False)
            if len(self._pending):
                y = np.concatenate([self._pending, y])
                self._pending = self._empty()
        if squeeze_back:
            return y[:, None]
        return y

    def flush(self) -> NDArray[np.float32]:
        """Push zeros through the look-ahead and return the tail (end of a transmission).

        Afterwards the resampler is reset, ready for a new stream.
        """
        zeros = np.zeros((self._prime + 8,) + (() if self.channels == 1 else (self.channels,)),
                         dtype=np.float32)
        tail = self.process(zeros)
        self.reset()
        return tail

    def reset(self) -> None:
        """Clear state (filter history, fractional position, pending output); keep parameters."""
        self._src.reset()
        self._pending = self._empty()
        if self._prime:
            shape = (self._prime,) if self.channels == 1 else (self._prime, self.channels)
            # The first call fixes libsamplerate's ratio without a ramp.
            self._pending = self._src.process(np.zeros(shape, dtype=np.float32),
                                              self.ratio).astype(np.float32, copy=False)


class DriftController:
    """PI loop on a ring's fill level (as alsa_in / zita-ajbridge): returns the ppm correction.

    The fill is first smoothed by a one-pole low-pass (so the block-sized saw-tooth of a ring
    that is written and read in blocks does not reach the ratio), then a critically damped PI
    loop drives it to ``setpoint``.

    Parameters
    ----------
    setpoint : int
        Target fill in samples.
    rate_hz : int
        Sample rate of the ring in Hz (converts ppm to samples per second).
    max_ppm : float
        Output limit in ppm (anti-windup clamps the integrator there too).
    period_samples : int, optional
        Samples between two ``update`` calls (the block size); default 5 ms.
    time_constant_s : float
        Loop time constant in seconds (natural period / 2 pi). Slower means smoother ratio
        changes but larger fill excursions; 10 s keeps a 200 ppm offset within about 0.4 x
        rate x 200e-6 x 10 samples.
    smoothing_s : float, optional
        Time constant of the fill low-pass; default ``time_constant_s / 8``.
    acquire_s : float
        For this long after a start or :meth:`reset` (seconds of updates) the loop runs with
        the time constant ``acquire_time_constant_s`` instead, then shifts to
        ``time_constant_s`` keeping its output (the integrator is rescaled), as a PLL
        acquires fast and tracks slowly. A slow loop meeting a clock that is off by ``v``
        ppm lets the fill stray by about ``v * rate * time_constant_s / e`` samples before
        it has caught up (3 ms for 280 ppm and 30 s), more than a ring held a few ms above
        empty can spare. Default 0: no acquisition phase.
    acquire_time_constant_s : float, optional
        Time constant while acquiring; default ``time_constant_s / 6``.

    Notes
    -----
    Real-time: ``update`` is pure arithmetic on Python floats (about 1 microsecond).
    """

    _fill: float
    _fill_init: bool
    _integ: float
    _out: float

    def __init__(self, setpoint: int, rate_hz: int, max_ppm: float = 1000.0, *,
                 period_samples: int | None = None, time_constant_s: float = 10.0,
                 smoothing_s: float | None = None, acquire_s: float = 0.0,
                 acquire_time_constant_s: float | None = None) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        if max_ppm <= 0:
            raise ValueError(f"max_ppm must be positive, got {max_ppm}")
        if time_constant_s <= 0:
            raise ValueError(f"time_constant_s must be positive, got {time_constant_s}")
        self.setpoint = int(setpoint)
        self.rate_hz = int(rate_hz)
        self.max_ppm = float(max_ppm)
        self.period_samples = int(period_samples or max(1, rate_hz // 200))
        self.time_constant_s = float(time_constant_s)
        self.smoothing_s = float(smoothing_s if smoothing_s is not None else time_constant_s / 8)
        self._dt = self.period_samples / self.rate_hz
        self._acquire_updates = int(round(max(0.0, acquire_s) / self._dt))
        self.acquire_time_constant_s = float(acquire_time_constant_s or time_constant_s / 6.0)
        if self.acquire_time_constant_s <= 0:
            raise ValueError("acquire_time_constant_s must be positive, got "
                             f"{acquire_time_constant_s}")
        self._track = self._gains(self.time_constant_s, self.smoothing_s)
        self._acquire = self._gains(self.acquire_time_constant_s,
                                    self.acquire_time_constant_s * self.smoothing_s
                                    / self.time_constant_s)
        self._kp, self._ki, self._alpha = self._track
        self.reset()

    def _gains(self, time_constant_s: float, smoothing_s: float) -> tuple[float, float, float]:
        """(kp, ki, alpha) of a critically damped loop with this time constant."""
        gain = self.rate_hz * 1e-6          # samples/s of fill change per ppm
        wn = 1.0 / time_constant_s
        alpha = 1.0 - math.exp(-self._dt / smoothing_s) if smoothing_s > 0 else 1.0
        # kp: ppm per sample of error; ki: ppm per sample-second of error
        return 2.0 * wn / gain, wn * wn / gain, alpha

    def _shift(self, gains: tuple[float, float, float]) -> None:
        """Use ``gains`` from now on, keeping the integral term's output."""
        ki_old = self._ki
        self._kp, self._ki, self._alpha = gains
        self._integ *= ki_old / self._ki

    @property
    def acquiring(self) -> bool:
        """Still in the fast acquisition phase after a start or reset?"""
        return self._updates < self._acquire_updates

    @property
    def filtered_fill(self) -> float:
        """The low-passed fill level in samples."""
        return self._fill

    @property
    def ppm(self) -> float:
        """The last correction returned, in ppm."""
        return self._out

    @property
    def rate_ppm(self) -> float:
        """The clock offset the loop has learned (its integral term's output), ppm: the
        correction it would hold with the ring at its set point."""
        return -self._ki * self._integ

    def shift_rate(self, ppm: float) -> None:
        """Add ``ppm`` to the learned clock offset (and to the output), as when the clock on
        the far side of the ring changes to one whose offset is known: the loop goes on from
        there instead of learning the new offset again (which lets the fill stray by about
        ``v * rate * time_constant_s / e`` samples, :class:`DriftController`). Clamped to
        ``max_ppm``."""
        rate = max(-self.max_ppm, min(self.max_ppm, self.rate_ppm + float(ppm)))
        self._out += rate - self.rate_ppm
        self._integ = -rate / self._ki

    def update(self, fill: int) -> float:
        """Feed the ring fill (samples) once per block; return the correction in ppm."""
        self._updates += 1
        if self._updates == self._acquire_updates:
            self._shift(self._track)
        if self._fill_init:
            self._fill += self._alpha * (fill - self._fill)
        else:
            self._fill = float(fill)
            self._fill_init = True
        err = self._fill - self.setpoint
        integ = self._integ + err * self._dt
        out = -(self._kp * err + self._ki * integ)
        if out > self.max_ppm or out < -self.max_ppm:
            out = max(-self.max_ppm, min(self.max_ppm, out))
            # anti-windup: keep the integrator where it produces the clamped output
            integ = -(out + self._kp * err) / self._ki
        self._integ = integ
        self._out = out
        return out

    def reset(self, settled: bool = False, keep_rate: bool = False) -> None:
        """Clear state (integrator, filtered fill); keep parameters.

        ``settled``: the ring is known to sit at its set point on average (it was just
        levelled), so the fill filter starts there; otherwise it starts from the first fill
        fed, which on a ring written in bursts may be a burst away from the average.
        ``keep_rate``: keep the integral term, the clock offset the loop has learned (the
        ring was moved, the two clocks were not); the proportional term starts from zero.
        Forgetting it on every levelling let each one drift the fill by the whole offset
        again (a 240 ppm card took 130 samples of a 240-sample cushion each time)."""
        self._fill = float(self.setpoint)
        self._fill_init = settled
        if keep_rate:
            self._out = -self._ki * self._integ
        else:
            self._integ = 0.0
            self._out = 0.0
        self._updates = 0
        self._shift(self._acquire if self._acquire_updates else self._track)
