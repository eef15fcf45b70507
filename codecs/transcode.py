"""Run speech through a chain of link codecs and get it back time-aligned with the input.

A chain is a list of registry names (``["pcma", "opus-16k"]``). The signal, mono float32 at
rate ``R``, is resampled from one codec's rate to the next (:class:`StreamResampler`; no trip
back to ``R`` between two legs, as a gateway converts between two links), encoded and decoded by
each codec in turn, and resampled back to ``R`` at the end. An optional band-limit leg
(``band_limit=8000``) first takes the signal through that rate without a codec, like the
narrowband radio side of a link.

Every stage reports its delay (resampler look-ahead, codec look-ahead); the sum, converted to
``R``, is :attr:`Transcoder.delay_samples`. :func:`transcode` removes it, so its output has
the input's length and is aligned with it to within half a sample (the total delay is
fractional at ``R``: a resampler's delay is a fraction of an input sample at the other rate).

Example: ``transcode(x, 48000, ["l16-16k", "pcma"])`` is the 48 kHz -> 16 kHz -> 8 kHz ->
48 kHz path of a wideband IP link feeding a narrowband radio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import get_decoder, get_encoder
from .base import Decoder, Encoder
from .resample import StreamResampler

#: Resampler quality of a chain: offline scoring, so libsamplerate's best converter by default.
DEFAULT_QUALITY = "sinc_best"

Pcm = NDArray[np.float32]


def parse_via(via: str | Sequence[str]) -> list[str]:
    """Split ``"pcma, opus-16k"`` (or take a list) into codec names; empty names are refused."""
    names = via.split(",") if isinstance(via, str) else list(via)
    out = [n.strip() for n in names]
    if not out or any(not n for n in out):
        raise ValueError(f"a codec chain needs one or more comma-separated codec names, "
                         f"got {via!r}")
    return out


@dataclass(frozen=True)
class Leg:
    """One leg of a chain: a codec (registry ``name``) or a band limit (``name`` None)."""

    name: str | None
    rate: int                       # Hz the leg runs at
    delay_samples: float            # codec delay at ``rate`` (0 for a band limit)

    def __str__(self) -> str:
        if self.name is None:
            return f"band limit {self.rate} Hz"
        return f"{self.name} ({self.rate} Hz)"


class _Resample:
    def __init__(self, a: int, b: int, quality: str) -> None:
        self.r = StreamResampler(a, b, quality=quality)

    def process(self, x: Pcm) -> Pcm:
        return self.r.process(x)

    def flush(self) -> Pcm:
        return self.r.flush()


class _Codec:
    def __init__(self, enc: Encoder, dec: Decoder) -> None:
        self.enc = enc
        self.dec = dec

    def _decode(self, packets: list[bytes]) -> Pcm:
        if not packets:
            return np.zeros(0, np.float32)
        return np.concatenate([self.dec.decode(p) for p in packets]).astype(np.float32,
                                                                            copy=False)

    def process(self, x: Pcm) -> Pcm:
        return self._decode(self.enc.encode(x))

    def flush(self) -> Pcm:
        return self._decode(self.enc.flush())


class Transcoder:
    """A codec chain at rate ``rate``: streaming ``process``/``flush``, total ``delay_samples``.

    Parameters
    ----------
    rate : int
        Rate of the signal in and out, in Hz.
    via : str or sequence of str
        Codec names from the :mod:`brug.codecs` registry, in order (``"pcma,opus-16k"``).
    band_limit : int, optional
        Take the signal through this rate (Hz) before the first codec, without a codec.
    quality : str
        Resampler quality (:data:`brug.codecs.resample.QUALITIES`).

    Raises
    ------
    UnknownCodecError, CodecUnavailableError
        From the registry, for a name it does not know or a codec that cannot load here.
    ValueError
        For an empty chain, a bad rate or bad codec parameters.

    Notes
    -----
    ``process`` returns what the chain has produced so far, delayed by ``delay_samples``
    (fractional, at ``rate``); ``flush`` pushes the tails of every encoder and resampler out.
    Block-size invariant like its parts, but it allocates: not for the audio thread.
    """

    def __init__(self, rate: int, via: str | Sequence[str], *, band_limit: int | None = None,
                 quality: str = DEFAULT_QUALITY) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"rate must be a positive number of Hz, got {rate!r}")
        if band_limit is not None and (isinstance(band_limit, bool) or
                                       not isinstance(band_limit, int) or band_limit <= 0):
            raise ValueError(f"band limit rate must be a positive number of Hz, "
                             f"got {band_limit!r}")
        self.rate = rate
        self.quality = quality
        self.legs: list[Leg] = []
        self._stages: list[_Resample | _Codec] = []
        delay = 0.0                      # in samples at the current rate
        cur = rate
        if band_limit is not None:
            delay = self._resample(cur, band_limit, delay)
            cur = band_limit
            self.legs.append(Leg(None, band_limit, 0.0))
        for name in parse_via(via):
            enc = get_encoder(name)
            dec = get_decoder(name)
            delay = self._resample(cur, enc.sample_rate, delay)
            cur = enc.sample_rate
            if dec.sample_rate != cur:
                raise ValueError(f"{name}: decoder rate {dec.sample_rate} Hz differs from the "
                                 f"encoder's {cur} Hz")
            self._stages.append(_Codec(enc, dec))
            delay += enc.delay_samples
            self.legs.append(Leg(name, cur, float(enc.delay_samples)))
        delay = self._resample(cur, rate, delay)
        self._delay = delay

    def _resample(self, a: int, b: int, delay: float) -> float:
        if a == b:
            return delay
        st = _Resample(a, b, self.quality)
        self._stages.append(st)
        return delay * b / a + st.r.delay_samples

    @property
    def delay_samples(self) -> float:
        """Total delay of the chain at ``rate``, in samples (resamplers + codecs)."""
        return self._delay

    @property
    def delay_ms(self) -> float:
        """Total delay in milliseconds."""
        return 1000.0 * self._delay / self.rate

    def process(self, x: Pcm) -> Pcm:
        """Run one block (any length) through the chain; return what comes out."""
        y = np.asarray(x, dtype=np.float32)
        for st in self._stages:
            y = st.process(y)
        return y

    def flush(self) -> Pcm:
        """End of the recording: push every stage's tail through the stages after it."""
        out: list[Pcm] = []
        for i, st in enumerate(self._stages):
            y = st.flush()
            for later in self._stages[i + 1:]:
                y = later.process(y)
            out.append(y)
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def transcode(x: Pcm, rate: int, via: str | Sequence[str], *, band_limit: int | None = None,
              quality: str = DEFAULT_QUALITY, block: int | None = None) -> Pcm:
    """Run ``x`` (mono float32 at ``rate`` Hz) through codec chain ``via``; return it aligned.

    The output has ``len(x)`` samples at ``rate``; sample ``n`` of the output is what became of
    input sample ``n`` (the chain's reported delay, rounded to a whole sample, is removed).
    ``block`` feeds the chain in blocks of that many samples (default: all at once; the result
    is the same either way).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros(8000, np.float32)
    >>> transcode(x, 8000, "pcma").shape
    (8000,)
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"transcode takes a mono 1-D signal, got shape {x.shape}")
    chain = Transcoder(rate, via, band_limit=band_limit, quality=quality)
    return run(chain, x, block=block)


def run(chain: Transcoder, x: Pcm, *, block: int | None = None) -> Pcm:
    """Feed ``x`` through ``chain``, flush it, and cut the output to ``x``'s length, aligned."""
    step = len(x) if not block else int(block)
    parts = [chain.process(x[i:i + step]) for i in range(0, len(x), max(step, 1))]
    parts.append(chain.flush())
    y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    d = int(round(chain.delay_samples))
    out = np.zeros(len(x), dtype=np.float32)
    got = y[d:d + len(x)]
    out[:len(got)] = got
    return out


__all__ = ["DEFAULT_QUALITY", "Leg", "Transcoder", "parse_via", "run", "transcode"]
