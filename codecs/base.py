"""Codec base classes: encoders and decoders of one IP/link codec each.

An :class:`Encoder` takes mono float32 samples (full scale 1.0) at its ``sample_rate`` in blocks
of any length and returns the complete frames it could make (``[]`` while it is still buffering a
partial frame, never ``None``). A :class:`Decoder` turns one payload back into float32 samples.
Resampling to and from the engine rate is the caller's job (``brug.codecs.resample``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray


def float_to_pcm16(x: NDArray[np.floating[Any]]) -> NDArray[np.int16]:
    """Float samples (full scale 1.0) to int16: rounded to nearest, saturated (never wrapped),
    C-contiguous. Allocates; fine on the engine thread."""
    scaled: Any = np.rint(np.asarray(x, np.float64) * 32768.0)
    return np.ascontiguousarray(np.clip(scaled, -32768, 32767).astype(np.int16))


def pcm16_to_float(pcm: NDArray[np.signedinteger[Any]]) -> NDArray[np.float32]:
    """int16 samples (any byte order) to float32, full scale 1.0 (exact: a power-of-two
    scale)."""
    return np.asarray(pcm).astype(np.float32) / np.float32(32768.0)


class CodecUnavailableError(RuntimeError):
    """A codec is known but its library cannot be loaded on this machine."""

    user_error = True


class UnknownCodecError(ValueError):
    """A codec name is not in the registry (the message lists the known names)."""

    user_error = True


class FrameBuffer:
    """Collects samples of any block length into frames of ``frame_samples``.

    Parameters
    ----------
    frame_samples : int
        Frame length in samples.
    """

    def __init__(self, frame_samples: int) -> None:
        if frame_samples < 1:
            raise ValueError(f"frame_samples must be >= 1, got {frame_samples}")
        self.frame_samples = int(frame_samples)
        self._buf = np.zeros(0, dtype=np.float32)

    @property
    def buffered(self) -> int:
        """Samples waiting for a complete frame."""
        return len(self._buf)

    def push(self, x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """Append ``x`` (1-D) and return the complete frames (copies)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"codecs take mono 1-D blocks, got shape {x.shape}")
        buf = np.concatenate([self._buf, x]) if len(self._buf) else x
        n = len(buf) // self.frame_samples
        frames = [buf[i * self.frame_samples:(i + 1) * self.frame_samples].copy()
                  for i in range(n)]
        self._buf = buf[n * self.frame_samples:].copy()
        return frames

    def flush(self) -> list[NDArray[np.float32]]:
        """Return the partial frame padded with zeros (or nothing if empty) and clear."""
        if not len(self._buf):
            return []
        frame = np.zeros(self.frame_samples, dtype=np.float32)
        frame[:len(self._buf)] = self._buf
        self._buf = np.zeros(0, dtype=np.float32)
        return [frame]

    def reset(self) -> None:
        """Drop buffered samples; keep the frame length."""
        self._buf = np.zeros(0, dtype=np.float32)


class Encoder(ABC):
    """Encoder of one codec.

    Attributes
    ----------
    name : str
        Registry name.
    sample_rate : int
        Rate of the samples ``encode`` takes, in Hz.
    frame_samples : int
        Samples per encoded frame.
    """

    name: ClassVar[str] = ""
    sample_rate: int = 8000
    frame_samples: int = 160

    @property
    def frame_ms(self) -> float:
        """Frame duration in milliseconds."""
        return 1000.0 * self.frame_samples / self.sample_rate

    @property
    def delay_samples(self) -> int:
        """Algorithmic delay (look-ahead) of encoder + decoder at ``sample_rate``, in samples.

        Framing delay is not included: ``encode`` returns a frame as soon as it is complete.
        """
        return 0

    @abstractmethod
    def encode(self, pcm: NDArray[np.float32]) -> list[bytes]:
        """Return zero or more complete frames; ``[]`` while buffering a partial frame."""

    @abstractmethod
    def flush(self) -> list[bytes]:
        """Encode the buffered partial frame padded with silence (end of transmission)."""

    @abstractmethod
    def reset(self) -> None:
        """Clear state (buffers, codec state); keep parameters."""


class Decoder(ABC):
    """Decoder of one codec: one payload in, float32 samples at ``sample_rate`` out."""

    name: ClassVar[str] = ""
    sample_rate: int = 8000
    frame_samples: int = 160

    @abstractmethod
    def decode(self, payload: bytes) -> NDArray[np.float32]:
        """Decode one payload (frame) to mono float32 samples."""

    def conceal(self) -> NDArray[np.float32]:
        """Return one frame for a lost packet (silence unless the codec has concealment)."""
        return np.zeros(self.frame_samples, dtype=np.float32)

    def reset(self) -> None:  # noqa: B027 - stateless decoders need nothing
        """Clear state; keep parameters."""


class LookaheadEncoder(Encoder):
    """Encoder of a codec with a look-ahead: subclasses set ``_frames`` (a
    :class:`FrameBuffer`) and implement ``_encode_frame``.

    ``flush`` pads with silence until the decoder has returned every sample given, look-ahead
    included: after it the decoded stream holds at least ``samples_in + delay_samples``
    samples. Without samples since the last ``flush``/``reset`` it returns ``[]``.
    """

    _frames: FrameBuffer
    _fed: bool = False              # samples encoded since the last flush/reset

    @abstractmethod
    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        """Encode exactly ``frame_samples`` samples."""

    def encode(self, pcm: NDArray[np.float32]) -> list[bytes]:
        """Encode a block of any length; return the packets of the frames it completed."""
        self._fed = self._fed or np.size(pcm) > 0
        return [self._encode_frame(f) for f in self._frames.push(pcm)]

    def flush(self) -> list[bytes]:
        if not self._fed:
            return []
        need = self._frames.buffered + self.delay_samples
        n_frames = -(-need // self.frame_samples)
        pad = n_frames * self.frame_samples - self._frames.buffered
        packets = self.encode(np.zeros(pad, dtype=np.float32))
        self._fed = False
        return packets


class PcmEncoder(Encoder):
    """Sample-by-sample codec with fixed framing: subclasses implement ``_encode_frame``."""

    def __init__(self) -> None:
        self._frames = FrameBuffer(self.frame_samples)

    @abstractmethod
    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        """Encode exactly ``frame_samples`` samples."""

    def encode(self, pcm: NDArray[np.float32]) -> list[bytes]:
        return [self._encode_frame(f) for f in self._frames.push(pcm)]

    def flush(self) -> list[bytes]:
        return [self._encode_frame(f) for f in self._frames.flush()]

    def reset(self) -> None:
        self._frames.reset()


class PcmDecoder(Decoder):
    """Decoder of a sample-by-sample codec (stateless)."""
