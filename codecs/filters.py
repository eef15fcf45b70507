"""Voice filters with state across blocks: DC block, voice band, hum notch, FM emphasis, delay.

Every block has the same contract (as SvxLink's audio parts and pedalboard's plugins):

- ``process(x)`` takes float samples, 1-D (mono) or (channels, samples) for a block built with
  ``channels > 1``, of any length including 0, and returns float32 of the same shape. State
  carries across calls, so the output does not depend on how the stream is cut into blocks.
- ``reset()`` clears state, keeps parameters. Nothing resets implicitly.
- ``latency_samples`` is the pure (frequency-independent) delay in samples; it is 0 for the
  IIR filters, which are minimum phase. ``group_delay_samples(freq_hz)`` gives the delay of the
  envelope of a narrow-band signal at ``freq_hz`` (the IIR filters' true delay, which depends
  on frequency; for the :class:`DelayLine` it equals ``latency_samples``).

The IIR blocks are cascades of second-order sections (:class:`SosFilter`), computed in float64
with the state (scipy's ``zi``) kept per channel. :class:`Chain` is a list-like container that
runs blocks in order; :func:`build_chain` builds one from a profile's ``filters`` mapping.

Real-time: every ``process`` runs on the engine thread and allocates its output (plus one
float64 work copy for the IIR blocks). The IIR blocks call scipy's compiled second-order-section
kernel directly when it is present and gives the same result as ``scipy.signal.sosfilt``
(checked once at import), because the public function spends about 30 microseconds per call on
argument checks; otherwise they fall back to the public function. Figures per 5 ms block are in
each class's Notes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal

Kernel = Callable[[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]], None]


def _load_kernel() -> Kernel | None:
    """scipy's in-place sosfilt kernel, if present and equal to the public function."""
    try:
        from scipy.signal._sosfilt import _sosfilt as kernel
    except ImportError:
        return None
    try:
        sos = signal.butter(2, (0.1, 0.4), btype="bandpass", output="sos")
        x = np.random.default_rng(0).standard_normal((2, 64))
        zi0 = np.random.default_rng(1).standard_normal((2, sos.shape[0], 2))
        ref, zf = signal.sosfilt(sos, x, axis=-1, zi=zi0.transpose(1, 0, 2))
        y = np.ascontiguousarray(x)
        zi = np.ascontiguousarray(zi0)
        kernel(np.ascontiguousarray(sos), y, zi)
        if np.allclose(y, ref, rtol=1e-12, atol=1e-12) and \
                np.allclose(zi, zf.transpose(1, 0, 2), rtol=1e-12, atol=1e-12):
            k: Kernel = kernel
            return k
    except Exception:  # noqa: BLE001 - any surprise means: use the public function
        return None
    return None


_KERNEL = _load_kernel()


def _sosfilt_inplace(sos: NDArray[np.float64], y: NDArray[np.float64],
                     zi: NDArray[np.float64]) -> None:
    """Filter ``y`` (channels, samples) in place; ``zi`` is (channels, sections, 2), updated."""
    if _KERNEL is not None:
        _KERNEL(sos, y, zi)
        return
    out, zf = signal.sosfilt(sos, y, axis=-1, zi=zi.transpose(1, 0, 2))
    y[...] = out
    zi[...] = zf.transpose(1, 0, 2)


@runtime_checkable
class Block(Protocol):
    """What :class:`Chain` holds: any object with ``process`` and ``reset``."""

    def process(self, x: NDArray[np.float32]) -> NDArray[np.float32]: ...

    def reset(self) -> None: ...


def _check_rate(rate_hz: int) -> int:
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    return int(rate_hz)


def _check_channels(channels: int) -> int:
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return int(channels)


def _as_2d(x: ArrayLike, channels: int, what: str) -> tuple[NDArray[np.floating[Any]], bool]:
    """View ``x`` as (channels, samples); say whether it came 1-D. Rejects integer samples."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise ValueError(f"{what} takes float samples (full scale 1.0), got {a.dtype.name}; "
                         f"convert with brug.codecs.formats first")
    if a.ndim == 1:
        if channels != 1:
            raise ValueError(f"{what} has {channels} channels; pass (channels, samples), got "
                             f"shape {a.shape}")
        return a[None, :], True
    if a.ndim != 2 or a.shape[0] != channels:
        raise ValueError(f"expected shape ({channels}, samples), got {a.shape}")
    return a, False


class SosFilter:
    """IIR filter from second-order sections, with its state per channel.

    Parameters
    ----------
    sos : array_like
        (sections, 6) second-order sections as ``scipy.signal`` makes them.
    rate_hz : int
        Sample rate in Hz (for :meth:`group_delay_samples` and :meth:`response_db`).
    channels : int
        Channels; ``process`` takes 1-D when 1, else (channels, samples).

    Notes
    -----
    Real-time: ``process`` is called from the engine thread; it allocates a float64 work copy
    and the float32 output. About 2.5 microseconds per 5 ms block (80 samples at 16 kHz) of
    one channel for any of the filters here, 6 microseconds for 8 channels at once; the
    public-scipy fallback costs about 30 microseconds per call.
    """

    name = "sos"

    def __init__(self, sos: ArrayLike, rate_hz: int, channels: int = 1) -> None:
        s = np.ascontiguousarray(np.asarray(sos, dtype=np.float64))
        if s.ndim != 2 or s.shape[1] != 6 or s.shape[0] < 1:
            raise ValueError(f"sos must have shape (sections, 6), got {s.shape}")
        self.sos = s
        self.rate_hz = _check_rate(rate_hz)
        self.channels = _check_channels(channels)
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Pure delay in samples: 0 (minimum-phase IIR; see :meth:`group_delay_samples`)."""
        return 0

    def reset(self) -> None:
        """Clear state (the sections' delay elements); keep parameters."""
        self._zi = np.zeros((self.channels, self.sos.shape[0], 2))

    def process(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Filter one block.

        Parameters
        ----------
        x : ndarray of float
            1-D when ``channels == 1``, else (channels, samples); any length including 0.

        Returns
        -------
        ndarray of float32
            Same shape as ``x``.
        """
        a, one_d = _as_2d(x, self.channels, type(self).__name__)
        y = np.array(a, dtype=np.float64, order="C")
        if y.shape[1]:
            _sosfilt_inplace(self.sos, y, self._zi)
        out = y.astype(np.float32)
        return out[0] if one_d else out

    def response_db(self, freq_hz: ArrayLike) -> NDArray[np.float64]:
        """Design magnitude response at ``freq_hz`` (Hz), in dB."""
        f = np.atleast_1d(np.asarray(freq_hz, dtype=np.float64))
        _, h = signal.sosfreqz(self.sos, worN=f, fs=self.rate_hz)
        with np.errstate(divide="ignore"):
            r: NDArray[np.float64] = 20.0 * np.log10(np.abs(h))
        return r

    def group_delay_samples(self, freq_hz: float) -> float:
        """Group delay at ``freq_hz`` (Hz) in samples: where the envelope of a narrow-band
        signal at that frequency comes out (sum of the sections' group delays)."""
        w = 2.0 * math.pi * float(freq_hz) / self.rate_hz
        total = 0.0
        for sec in self.sos:
            _, gd = signal.group_delay((sec[:3], sec[3:]), w=[w])
            total += float(gd[0])
        return total

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()})"

    def _params(self) -> str:
        return f"sections={self.sos.shape[0]}, rate_hz={self.rate_hz}"


class DcBlock(SosFilter):
    """One-pole DC-blocking high-pass.

    ``H(z) = (1 + R)/2 * (1 - z^-1) / (1 - R z^-1)`` with ``R = (1 - K)/(1 + K)``,
    ``K = tan(pi corner / rate)``: the bilinear transform of ``s / (s + wc)`` pre-warped so the
    response is exactly -3 dB at ``corner_hz``, 0 dB at Nyquist and has a zero at DC. A DC offset
    decays with the time constant ``1 / (2 pi corner_hz)`` (8 ms at 20 Hz).

    Parameters
    ----------
    rate_hz : int
        Sample rate in Hz.
    corner_hz : float
        -3 dB corner in Hz (default 20 Hz: -0.17 dB at 100 Hz, nothing in the voice band).
    channels : int
        Channels.

    Notes
    -----
    Real-time: engine thread, allocates its output; about 2.5 microseconds per 5 ms block
    (80 samples) of one channel.
    """

    name = "dc_block"

    def __init__(self, rate_hz: int, corner_hz: float = 20.0, channels: int = 1) -> None:
        rate = _check_rate(rate_hz)
        if not 0.0 < corner_hz < rate / 2.0:
            raise ValueError(f"dc_block corner_hz must be between 0 and {rate / 2.0} Hz, "
                             f"got {corner_hz}")
        self.corner_hz = float(corner_hz)
        k = math.tan(math.pi * self.corner_hz / rate)
        r = (1.0 - k) / (1.0 + k)
        g = (1.0 + r) / 2.0
        super().__init__([[g, -g, 0.0, 1.0, -r, 0.0]], rate, channels)

    def _params(self) -> str:
        return f"rate_hz={self.rate_hz}, corner_hz={self.corner_hz}"


class VoiceBand(SosFilter):
    """Butterworth voice-band filter (300-3400 Hz band-pass for narrowband networks).

    Parameters
    ----------
    rate_hz : int
        Sample rate in Hz (8000..48000 typical; ``hi_hz`` must be below half of it).
    lo_hz : float
        Lower -3 dB edge in Hz; 0 makes it a low-pass.
    hi_hz : float or None
        Upper -3 dB edge in Hz; ``None`` makes it a high-pass.
    order : int
        Butterworth order of each skirt (``order * 6`` dB per octave); default 4. A band-pass
        has ``order`` sections, a low- or high-pass ``ceil(order / 2)``.
    channels : int
        Channels.

    Notes
    -----
    Default response, measured: -3.0 dB at 300 and 3400 Hz, 0.0 dB at 1 kHz, -39 dB (8 kHz) /
    -41 dB (16 kHz) at 100 Hz, -41 dB at 6 kHz (16 kHz), -64 dB at 3.9 kHz (8 kHz). Group delay
    at 1 kHz 0.19 ms at 8 kHz, 0.25 ms at 16 kHz; at 400 Hz about 1.2 ms (see
    :meth:`group_delay_samples`).

    Real-time: engine thread, allocates its output; about 2.7 microseconds per 5 ms block
    (80 samples) of one channel.
    """

    name = "voice_band"

    def __init__(self, rate_hz: int, lo_hz: float = 300.0, hi_hz: float | None = 3400.0,
                 order: int = 4, channels: int = 1) -> None:
        rate = _check_rate(rate_hz)
        nyq = rate / 2.0
        if order < 1 or order > 12:
            raise ValueError(f"voice_band order must be 1..12, got {order}")
        if lo_hz < 0.0:
            raise ValueError(f"voice_band lo_hz must be >= 0 Hz, got {lo_hz}")
        if hi_hz is not None and not hi_hz < nyq:
            raise ValueError(f"voice_band hi_hz {hi_hz} Hz must be below half the sample rate "
                             f"({nyq} Hz)")
        if hi_hz is not None and not lo_hz < hi_hz:
            raise ValueError(f"voice_band lo_hz must be below hi_hz, got {lo_hz} and {hi_hz}")
        if lo_hz == 0.0 and hi_hz is None:
            raise ValueError("voice_band needs lo_hz > 0 or hi_hz (or both)")
        if not lo_hz < nyq:
            raise ValueError(f"voice_band lo_hz {lo_hz} Hz must be below half the sample rate "
                             f"({nyq} Hz)")
        self.lo_hz = float(lo_hz)
        self.hi_hz = None if hi_hz is None else float(hi_hz)
        self.order = int(order)
        if self.hi_hz is None:
            sos = signal.butter(self.order, self.lo_hz, btype="highpass", fs=rate, output="sos")
        elif self.lo_hz == 0.0:
            sos = signal.butter(self.order, self.hi_hz, btype="lowpass", fs=rate, output="sos")
        else:
            sos = signal.butter(self.order, (self.lo_hz, self.hi_hz), btype="bandpass", fs=rate,
                                output="sos")
        super().__init__(sos, rate, channels)

    def _params(self) -> str:
        return (f"rate_hz={self.rate_hz}, lo_hz={self.lo_hz}, hi_hz={self.hi_hz}, "
                f"order={self.order}")


class HumNotch(SosFilter):
    """Notches at the mains frequency and its harmonics (``scipy.signal.iirnotch``).

    Parameters
    ----------
    rate_hz : int
        Sample rate in Hz.
    mains_hz : float
        Mains frequency in Hz: 50 (Europe) or 60 (Americas).
    harmonics : int
        Harmonics notched besides the fundamental (default 2: 50, 100 and 150 Hz).
    q : float
        Quality factor of every notch (-3 dB width = frequency / q). The default 10 (5 Hz wide
        at 50 Hz) still takes 22 dB off a grid running 0.2 Hz off nominal, and keeps the same
        relative width at every harmonic, where the grid error is multiplied too.
    channels : int
        Channels.

    Notes
    -----
    The notch is infinitely deep at the exact frequency (measured: over 140 dB down once
    settled); a tone settles 30 dB down after about ``1.1 q / f`` seconds (0.23 s at 50 Hz,
    q 10). 300 Hz and 1 kHz pass within 0.01 dB.

    Real-time: engine thread, allocates its output; about 2.6 microseconds per 5 ms block
    (80 samples) of one channel.
    """

    name = "hum_notch"

    def __init__(self, rate_hz: int, mains_hz: float = 50.0, harmonics: int = 2,
                 q: float = 10.0, channels: int = 1) -> None:
        rate = _check_rate(rate_hz)
        if not mains_hz > 0.0:
            raise ValueError(f"hum_notch mains_hz must be positive (50 or 60), got {mains_hz}")
        if harmonics < 0:
            raise ValueError(f"hum_notch harmonics must be >= 0, got {harmonics}")
        if not q > 0.0:
            raise ValueError(f"hum_notch q must be positive, got {q}")
        top = mains_hz * (harmonics + 1)
        if not top < rate / 2.0:
            raise ValueError(f"hum_notch: the highest notch ({top} Hz) must be below half the "
                             f"sample rate ({rate / 2.0} Hz)")
        self.mains_hz = float(mains_hz)
        self.harmonics = int(harmonics)
        self.q = float(q)
        rows = []
        for k in range(1, self.harmonics + 2):
            b, a = signal.iirnotch(self.mains_hz * k, self.q, fs=rate)
            rows.append(np.concatenate([b, a]))
        super().__init__(np.array(rows), rate, channels)

    @property
    def notches_hz(self) -> list[float]:
        """Centre frequencies of the notches in Hz."""
        return [self.mains_hz * k for k in range(1, self.harmonics + 2)]

    def _params(self) -> str:
        return (f"rate_hz={self.rate_hz}, mains_hz={self.mains_hz}, "
                f"harmonics={self.harmonics}, q={self.q}")


#: Frequencies where the digital emphasis matches the analog curve (plus DC), Hz.
_EMPHASIS_MATCH_HZ = (1000.0, 3000.0)


def emphasis_coefficients(rate_hz: int, tau_us: float) -> tuple[float, float, float]:
    """First-order pre-emphasis ``g (1 - b z^-1) / (1 - a z^-1)`` for time constant ``tau_us``.

    The analog pre-emphasis is ``|H|^2 = 1 + (2 pi f tau)^2``. The bilinear transform would
    squeeze it badly near Nyquist at 8 kHz (3 kHz would get 6 dB too much), so instead the
    digital magnitude is matched to the analog one exactly at DC, 1 kHz and
    ``min(3 kHz, 0.375 rate)``: ``|H(e^jw)|^2`` is a ratio of two functions linear in
    ``cos w``, so the match is a 3 x 3 linear solve. Between and below those points the error
    is under 0.2 dB up to 3 kHz at 8 kHz (0.3 dB at 3.4 kHz) and about 0.01 dB at 16 kHz
    and above. Zero and pole are inside the unit circle, so the inverse (de-emphasis) is
    stable too.

    Returns
    -------
    (g, b, a) : tuple of float
        Gain (unity at DC), zero and pole.
    """
    rate = _check_rate(rate_hz)
    tau = float(tau_us) * 1e-6
    if not 1.0 <= tau_us <= 5000.0:
        raise ValueError(f"emphasis time constant must be 1..5000 us, got {tau_us}")
    pts = (0.0, _EMPHASIS_MATCH_HZ[0], min(_EMPHASIS_MATCH_HZ[1], 0.375 * rate))
    rows, rhs = [], []
    for f in pts:
        c = math.cos(2.0 * math.pi * f / rate)
        t = 1.0 + (2.0 * math.pi * f * tau) ** 2
        rows.append([1.0, -c, t * c])       # (alpha - beta c) = t (1 - gamma c)
        rhs.append(t)
    alpha, beta, gamma = (float(v) for v in np.linalg.solve(np.array(rows), np.array(rhs)))
    r = beta / alpha
    if not (abs(gamma) < 1.0 and abs(r) < 1.0):
        raise ValueError(f"emphasis of {tau_us} us cannot be matched at {rate} Hz")
    a = (1.0 - math.sqrt(1.0 - gamma * gamma)) / gamma if gamma else 0.0
    b = (1.0 - math.sqrt(1.0 - r * r)) / r if r else 0.0
    g = math.sqrt(alpha * (1.0 + a * a) / (1.0 + b * b))
    return g, b, a


class _Emphasis(SosFilter):
    _inverse = False

    def __init__(self, rate_hz: int, tau_us: float = 750.0, unity_hz: float = 1000.0,
                 channels: int = 1) -> None:
        rate = _check_rate(rate_hz)
        if not 0.0 <= unity_hz < rate / 2.0:
            raise ValueError(f"unity_hz must be 0..{rate / 2.0} Hz, got {unity_hz}")
        self.tau_us = float(tau_us)
        self.unity_hz = float(unity_hz)
        g, b, a = emphasis_coefficients(rate, self.tau_us)
        num, den = np.array([g, -g * b, 0.0]), np.array([1.0, -a, 0.0])
        if self._inverse:
            num, den = np.array([1.0, -a, 0.0]) / g, np.array([1.0, -b, 0.0])
        _, h = signal.freqz(num, den, worN=[self.unity_hz], fs=rate)
        num = num / abs(h[0])
        super().__init__([np.concatenate([num, den])], rate, channels)

    def _params(self) -> str:
        return f"rate_hz={self.rate_hz}, tau_us={self.tau_us}, unity_hz={self.unity_hz}"


class PreEmphasis(_Emphasis):
    """FM transmit pre-emphasis: +6 dB per octave above ``1 / (2 pi tau)``.

    Parameters
    ----------
    rate_hz : int
        Sample rate in Hz.
    tau_us : float
        Time constant in microseconds: 750 (land-mobile FM, TIA-603; corner 212 Hz), or 50 / 75
        (broadcast FM, Europe / Americas).
    unity_hz : float
        Frequency where the gain is 0 dB (default 1 kHz, the line-up tone, so level calibration
        holds through the block; 0 for unity at DC).
    channels : int
        Channels.

    Notes
    -----
    With 750 us, 3 kHz comes out 18.3 dB above 300 Hz (the analog curve; see
    :func:`emphasis_coefficients` for the design). Put the limiter after it: a 3 kHz tone
    gains 9.4 dB. ``DeEmphasis`` with the same parameters is its exact inverse.

    Real-time: engine thread, allocates its output; about 2.5 microseconds per 5 ms block
    (80 samples) of one channel.
    """

    name = "pre_emphasis"


class DeEmphasis(_Emphasis):
    """FM receive de-emphasis: -6 dB per octave above ``1 / (2 pi tau)``, the exact inverse of
    :class:`PreEmphasis` with the same parameters.

    Parameters
    ----------
    rate_hz : int
        Sample rate in Hz.
    tau_us : float
        Time constant in microseconds: 750 (land-mobile FM), 50 or 75 (broadcast FM).
    unity_hz : float
        Frequency where the gain is 0 dB (default 1 kHz; 0 for unity at DC). With 750 us and
        1 kHz, frequencies below 212 Hz gain up to 13.7 dB: follow it with the voice-band
        high-pass.
    channels : int
        Channels.

    Notes
    -----
    Real-time: engine thread, allocates its output; about 2.5 microseconds per 5 ms block
    (80 samples) of one channel.
    """

    name = "de_emphasis"
    _inverse = True


class DelayLine:
    """Fixed delay whose content can be dropped: the squelch-tail eliminator.

    An analog receiver's squelch closes some tens of ms after the carrier drops, so the end of
    every over carries a noise burst (the squelch tail). Delaying the audio by that much and
    calling :meth:`clear` when COR closes drops the burst before it is heard: the samples still
    in the line are exactly the last ``delay`` samples before the close.

    Parameters
    ----------
    delay_samples : int
        Delay in samples (0 passes the audio through).
    channels : int
        Channels; ``process`` takes 1-D when 1, else (channels, samples).
    fade_samples : int
        Length of the fade-out :meth:`clear` puts in front of the dropped audio, so the cut is
        not a click (default 0: a hard cut). It is taken from the dropped part.

    Notes
    -----
    Real-time: engine thread; ``process`` allocates its output only (the line is a fixed
    buffer); about 2.4 microseconds per 5 ms block of one channel. ``clear`` and ``flush`` are
    called between ticks, at a COR edge or the end of a transmission.
    """

    name = "delay"

    def __init__(self, delay_samples: int, channels: int = 1, fade_samples: int = 0) -> None:
        if delay_samples < 0:
            raise ValueError(f"delay_samples must be >= 0, got {delay_samples}")
        if not 0 <= fade_samples <= delay_samples:
            raise ValueError(f"fade_samples must be 0..delay_samples ({delay_samples}), got "
                             f"{fade_samples}")
        self.delay_samples = int(delay_samples)
        self.channels = _check_channels(channels)
        self.fade_samples = int(fade_samples)
        self._fade = (1.0 - np.arange(1, self.fade_samples + 1) / (self.fade_samples + 1)) \
            .astype(np.float32)
        self.reset()

    @classmethod
    def from_ms(cls, delay_ms: float, rate_hz: int, channels: int = 1,
                fade_ms: float = 1.0) -> DelayLine:
        """Build from times in ms (rounded to whole samples at ``rate_hz``)."""
        rate = _check_rate(rate_hz)
        if delay_ms < 0 or fade_ms < 0:
            raise ValueError(f"delay_ms and fade_ms must be >= 0, got {delay_ms}, {fade_ms}")
        n = int(round(delay_ms * rate / 1000.0))
        return cls(n, channels, min(n, int(round(fade_ms * rate / 1000.0))))

    @property
    def latency_samples(self) -> int:
        """Delay from input to output, in samples."""
        return self.delay_samples

    def group_delay_samples(self, freq_hz: float) -> float:
        """The delay at any frequency: ``latency_samples``."""
        return float(self.delay_samples)

    def reset(self) -> None:
        """Clear state (the line holds zeros); keep parameters."""
        self._line = np.zeros((self.channels, self.delay_samples), dtype=np.float32)

    def process(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Push one block in and return as many samples, ``delay_samples`` older.

        Parameters
        ----------
        x : ndarray of float
            1-D when ``channels == 1``, else (channels, samples); any length including 0.
        """
        a, one_d = _as_2d(x, self.channels, "DelayLine")
        m, d = a.shape[1], self.delay_samples
        out = np.empty((self.channels, m), dtype=np.float32)
        line = self._line
        if d == 0:
            out[...] = a
        elif m >= d:
            out[:, :d] = line
            out[:, d:] = a[:, :m - d]
            line[...] = a[:, m - d:]
        else:
            out[...] = line[:, :m]
            line[:, :d - m] = line[:, m:]
            line[:, d - m:] = a
        return out[0] if one_d else out

    def clear(self, samples: int | None = None) -> None:
        """Drop the newest ``samples`` held (default all of them): the squelch tail.

        They are replaced by zeros, except that the first ``fade_samples`` of them fade out
        (so the audio ends without a click); older samples still play. Call it when COR closes.
        """
        d = self.delay_samples
        k = d if samples is None else int(samples)
        if not 0 <= k <= d:
            raise ValueError(f"can clear 0..{d} samples, got {samples}")
        if k == 0:
            return
        start = d - k
        f = min(self.fade_samples, k)
        self._line[:, start:start + f] *= self._fade[:f]
        self._line[:, start + f:] = 0.0

    def flush(self) -> NDArray[np.float32]:
        """Return what the line holds (``delay_samples``, oldest first) and empty it.

        Use at the end of a transmission whose tail is wanted (no squelch tail to drop).
        """
        held = self._line.copy()
        self._line[...] = 0.0
        return held[0] if self.channels == 1 else held

    def __repr__(self) -> str:
        return (f"DelayLine(delay_samples={self.delay_samples}, channels={self.channels}, "
                f"fade_samples={self.fade_samples})")


class Chain(MutableSequence[Block]):
    """Blocks run in order, held like a list (``append``, ``remove``, ``insert``, ``len``,
    iteration, indexing); a patch can change it live between ticks.

    ``reset`` resets every block; ``latency_samples`` and ``group_delay_samples`` add up the
    blocks' (0 for a block without them).

    Notes
    -----
    Real-time: ``process`` costs the sum of its blocks plus about 0.3 microsecond per block:
    an analog receive chain (DC block, hum notch, de-emphasis, voice band, 150 ms squelch-tail
    delay) takes about 13 microseconds per 5 ms block of one channel at 16 kHz.
    """

    def __init__(self, blocks: Iterable[Block] = ()) -> None:
        self._blocks: list[Block] = []
        for b in blocks:
            self.append(b)

    @staticmethod
    def _check(block: object) -> Block:
        if not isinstance(block, Block):
            raise TypeError(f"a chain holds blocks with process() and reset(), got "
                            f"{type(block).__name__}")
        return block

    @overload
    def __getitem__(self, index: int) -> Block: ...

    @overload
    def __getitem__(self, index: slice) -> Chain: ...

    def __getitem__(self, index: int | slice) -> Block | Chain:
        if isinstance(index, slice):
            return Chain(self._blocks[index])
        return self._blocks[index]

    @overload
    def __setitem__(self, index: int, value: Block) -> None: ...

    @overload
    def __setitem__(self, index: slice, value: Iterable[Block]) -> None: ...

    def __setitem__(self, index: int | slice, value: Block | Iterable[Block]) -> None:
        if isinstance(index, slice):
            if not isinstance(value, Iterable):
                raise TypeError("can only assign an iterable of blocks to a slice")
            self._blocks[index] = [self._check(b) for b in value]
        else:
            self._blocks[index] = self._check(value)

    def __delitem__(self, index: int | slice) -> None:
        del self._blocks[index]

    def __len__(self) -> int:
        return len(self._blocks)

    def __iter__(self) -> Iterator[Block]:
        return iter(self._blocks)

    def insert(self, index: int, value: Block) -> None:
        """Insert ``value`` before ``index``."""
        self._blocks.insert(index, self._check(value))

    def process(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Run ``x`` through every block in order (a float32 copy when the chain is empty)."""
        if not self._blocks:
            return np.array(x, dtype=np.float32)
        y = x
        for b in self._blocks:
            y = b.process(y)
        return y

    def reset(self) -> None:
        """Reset every block: clears state, keeps parameters."""
        for b in self._blocks:
            b.reset()

    @property
    def latency_samples(self) -> int:
        """Sum of the blocks' pure delays, in samples."""
        return sum(int(getattr(b, "latency_samples", 0)) for b in self._blocks)

    def group_delay_samples(self, freq_hz: float) -> float:
        """Sum of the blocks' group delays at ``freq_hz``, in samples."""
        total = 0.0
        for b in self._blocks:
            gd = getattr(b, "group_delay_samples", None)
            total += float(gd(freq_hz)) if gd is not None else \
                float(getattr(b, "latency_samples", 0))
        return total

    def __repr__(self) -> str:
        return f"Chain([{', '.join(repr(b) for b in self._blocks)}])"


#: Keys :func:`build_chain` accepts, with what they do.
CHAIN_KEYS: dict[str, str] = {
    "dc_block": "true (20 Hz) or a corner in Hz",
    "hum_notch": "false, 50 or 60 (mains Hz)",
    "hum_harmonics": "harmonics notched besides the fundamental (default 2)",
    "hum_q": "notch quality factor (default 10)",
    "de_emphasis_us": "receive de-emphasis time constant in us (0: off)",
    "deemphasis": "true: de-emphasis of 750 us (profile key)",
    "voice_band": "true (300-3400 Hz) or [lo_hz, hi_hz]",
    "voice_band_order": "Butterworth order (default 4)",
    "highpass_hz": "voice-band lower edge in Hz, 0: none (profile key)",
    "lowpass_hz": "voice-band upper edge in Hz, at or above Nyquist: none (profile key)",
    "pre_emphasis_us": "transmit pre-emphasis time constant in us (0: off)",
    "preemphasis": "true: pre-emphasis of 750 us (profile key)",
    "squelch_tail_ms": "delay line of this many ms for squelch-tail removal (0: off)",
}
#: Order in which :func:`build_chain` places the blocks, whatever the mapping's order.
CHAIN_ORDER = ("dc_block", "hum_notch", "de_emphasis", "voice_band", "pre_emphasis", "delay")


def _num(key: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"filter key {key!r} must be a number, got {v!r}")
    return float(v)


def _flag(key: str, v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"filter key {key!r} must be true or false, got {v!r}")
    return v


def build_chain(spec: Mapping[str, Any], rate_hz: int, channels: int = 1) -> Chain:
    """Build a :class:`Chain` from a profile-like ``filters`` mapping.

    Keys are listed in :data:`CHAIN_KEYS`; both this module's keys (``dc_block``,
    ``voice_band``, ``hum_notch``, ``de_emphasis_us`` ...) and the profile schema's
    (``highpass_hz``, ``lowpass_hz``, ``deemphasis``, ``preemphasis``, ``squelch_tail_ms``) work.
    Blocks go in the order of :data:`CHAIN_ORDER`: DC block, hum notch, de-emphasis, voice
    band, pre-emphasis, squelch-tail delay line.

    Examples
    --------
    >>> build_chain({"dc_block": True, "voice_band": [300, 3400], "hum_notch": 50,
    ...              "de_emphasis_us": 750}, 8000)                        # doctest: +ELLIPSIS
    Chain([DcBlock(...), HumNotch(...), DeEmphasis(...), VoiceBand(...)])

    Raises
    ------
    ValueError
        For an unknown key (the message lists the valid ones) or a bad value.
    """
    unknown = sorted(k for k in spec if k not in CHAIN_KEYS)
    if unknown:
        raise ValueError(f"unknown filter key {unknown[0]!r}; valid keys: "
                         f"{', '.join(sorted(CHAIN_KEYS))}")
    rate = _check_rate(rate_hz)
    blocks: dict[str, Block] = {}

    dc = spec.get("dc_block", False)
    if dc is not False and dc is not None:
        blocks["dc_block"] = DcBlock(rate, 20.0 if dc is True else _num("dc_block", dc),
                                     channels=channels)

    hum = spec.get("hum_notch", False)
    if hum is not False and hum is not None:
        if hum is True:
            raise ValueError("filter key 'hum_notch' must be the mains frequency (50 or 60), "
                             "not true")
        blocks["hum_notch"] = HumNotch(rate, _num("hum_notch", hum),
                                       harmonics=int(_num("hum_harmonics",
                                                          spec.get("hum_harmonics", 2))),
                                       q=_num("hum_q", spec.get("hum_q", 10.0)),
                                       channels=channels)

    for kind, us_key, flag_key, cls in (("de_emphasis", "de_emphasis_us", "deemphasis",
                                         DeEmphasis),
                                        ("pre_emphasis", "pre_emphasis_us", "preemphasis",
                                         PreEmphasis)):
        tau = _num(us_key, spec.get(us_key, 0.0) or 0.0)
        if flag_key in spec and _flag(flag_key, spec[flag_key]) and not tau:
            tau = 750.0
        if tau:
            blocks[kind] = cls(rate, tau, channels=channels)

    vb = spec.get("voice_band", None)
    order = int(_num("voice_band_order", spec.get("voice_band_order", 4)))
    if vb is not None and vb is not False and ("highpass_hz" in spec or "lowpass_hz" in spec):
        raise ValueError("give either 'voice_band' or 'highpass_hz'/'lowpass_hz', not both")
    lo: float = 0.0
    hi: float | None = None
    if vb is True:
        lo, hi = 300.0, 3400.0
    elif vb is not None and vb is not False:
        if not isinstance(vb, (list, tuple)) or len(vb) != 2:
            raise ValueError(f"filter key 'voice_band' must be true or [lo_hz, hi_hz], "
                             f"got {vb!r}")
        lo, hi = _num("voice_band", vb[0]), _num("voice_band", vb[1])
    else:
        lo = _num("highpass_hz", spec.get("highpass_hz", 0.0) or 0.0)
        lp = spec.get("lowpass_hz", None)
        hi = None if lp is None else _num("lowpass_hz", lp)
        if hi is not None and hi >= rate / 2.0:
            hi = None                           # at or above Nyquist: nothing to cut
    if lo > 0.0 or hi is not None:
        blocks["voice_band"] = VoiceBand(rate, lo, hi, order=order, channels=channels)

    tail = _num("squelch_tail_ms", spec.get("squelch_tail_ms", 0.0) or 0.0)
    if tail < 0:
        raise ValueError(f"filter key 'squelch_tail_ms' must be >= 0, got {tail}")
    if tail:
        blocks["delay"] = DelayLine.from_ms(tail, rate, channels=channels)

    return Chain(blocks[k] for k in CHAIN_ORDER if k in blocks)


__all__ = ["CHAIN_KEYS", "CHAIN_ORDER", "Block", "Chain", "DcBlock", "DeEmphasis", "DelayLine",
           "HumNotch", "PreEmphasis", "SosFilter", "VoiceBand", "build_chain",
           "emphasis_coefficients"]
