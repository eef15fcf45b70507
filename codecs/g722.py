"""ITU-T G.722 (wideband ADPCM, 64 kbit/s at 16000 Hz), through the ``G722`` package.

``G722`` (PyPI ``g722``) is Sippy Software's libg722: Steve Underwood's bit-exact G.722 coder
(public domain, after CMU's and Bellcore's code), which passes the ITU test vectors; BSD-2
packaging. Frames are 20 ms by default: 320 samples -> 160 bytes. Only the 64 kbit/s mode is
offered: at 56 and 48 kbit/s libg722 still emits one byte per sample pair (it only drops the
low bits), so those modes save nothing on the wire.

The QMF analysis and synthesis filters delay the signal by 22 samples at 16000 Hz (1.375 ms),
reported as :attr:`G722Encoder.delay_samples` and checked by the tests.

RTP note (RFC 3551): G.722's RTP clock is 8000 Hz although it samples at 16000 Hz; that is the
RTP layer's concern, not this module's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import G722 as _g722
import numpy as np
from numpy.typing import NDArray

from .base import Decoder, FrameBuffer, LookaheadEncoder, float_to_pcm16, pcm16_to_float

SAMPLE_RATE = 16000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000
BITRATE = 64000
#: QMF filter-bank delay (encoder + decoder) in samples at 16000 Hz.
DELAY_SAMPLES = 22


def _frame_samples(frame_ms: Any) -> int:
    if isinstance(frame_ms, bool) or not isinstance(frame_ms, int) or not 1 <= frame_ms <= 120:
        raise ValueError(f"g722: frame_ms must be an integer 1..120, got {frame_ms!r}")
    return SAMPLE_RATE * frame_ms // 1000


def _check_bitrate(bitrate: Any) -> None:
    if bitrate != BITRATE:
        raise ValueError(f"g722: only {BITRATE} bit/s is offered, got {bitrate!r}")


class G722Encoder(LookaheadEncoder):
    """G.722 encoder at 64 kbit/s; ``frame_ms`` per packet (default 20)."""

    name: ClassVar[str] = "g722"
    sample_rate = SAMPLE_RATE

    def __init__(self, frame_ms: int = FRAME_MS, bitrate: int = BITRATE) -> None:
        self.frame_samples = _frame_samples(frame_ms)
        _check_bitrate(bitrate)
        self._codec = _g722.G722(SAMPLE_RATE, BITRATE)
        self._frames = FrameBuffer(self.frame_samples)
        self._fed = False               # samples encoded since the last flush/reset

    @property
    def delay_samples(self) -> int:
        """QMF delay of encoder + decoder: 22 samples at 16000 Hz."""
        return DELAY_SAMPLES

    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        return bytes(self._codec.encode(float_to_pcm16(frame)))

    def reset(self) -> None:
        """Clear state (frame buffer, ADPCM state); keep parameters."""
        self._frames.reset()
        self._fed = False
        self._codec = _g722.G722(SAMPLE_RATE, BITRATE)


class G722Decoder(Decoder):
    """G.722 decoder: any number of bytes -> two float32 samples per byte at 16000 Hz.

    No packet-loss concealment (G.722 Appendix IV is not implemented): :meth:`conceal` gives
    silence.
    """

    name: ClassVar[str] = "g722"
    sample_rate = SAMPLE_RATE

    def __init__(self, frame_ms: int = FRAME_MS, bitrate: int = BITRATE) -> None:
        self.frame_samples = _frame_samples(frame_ms)
        _check_bitrate(bitrate)
        self._codec = _g722.G722(SAMPLE_RATE, BITRATE)

    def decode(self, payload: bytes) -> NDArray[np.float32]:
        pcm = np.frombuffer(self._codec.decode(bytes(payload)), dtype=np.int16)
        return pcm16_to_float(pcm)

    def reset(self) -> None:
        """Clear state (ADPCM state); keep parameters."""
        self._codec = _g722.G722(SAMPLE_RATE, BITRATE)


__all__ = ["BITRATE", "DELAY_SAMPLES", "FRAME_MS", "G722Decoder", "G722Encoder",
           "SAMPLES_PER_FRAME", "SAMPLE_RATE"]
