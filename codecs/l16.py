"""L16: linear 16-bit big-endian PCM (RFC 3551), 20 ms frames at any rate."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import FrameBuffer, PcmDecoder, PcmEncoder, float_to_pcm16, pcm16_to_float

SAMPLE_RATE = 8000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000


class L16Encoder(PcmEncoder):
    """L16 encoder; ``rate`` in Hz (default 8000), ``frame_ms`` per frame (default 20)."""

    name: ClassVar[str] = "l16"

    def __init__(self, rate: int = SAMPLE_RATE, frame_ms: int = FRAME_MS) -> None:
        if rate <= 0 or frame_ms <= 0:
            raise ValueError(f"l16: rate and frame_ms must be positive, got {rate}, {frame_ms}")
        self.sample_rate = int(rate)
        self.frame_samples = int(rate) * int(frame_ms) // 1000
        self._frames = FrameBuffer(self.frame_samples)

    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        return float_to_pcm16(frame).astype(">i2").tobytes()


class L16Decoder(PcmDecoder):
    """L16 decoder: big-endian int16 bytes -> float32."""

    name: ClassVar[str] = "l16"

    def __init__(self, rate: int = SAMPLE_RATE, frame_ms: int = FRAME_MS) -> None:
        self.sample_rate = int(rate)
        self.frame_samples = int(rate) * int(frame_ms) // 1000

    def decode(self, payload: bytes) -> NDArray[np.float32]:
        if len(payload) % 2:
            raise ValueError(f"l16 payload must have an even length, got {len(payload)} bytes")
        pcm = np.frombuffer(payload, dtype=">i2")
        return pcm16_to_float(pcm)
