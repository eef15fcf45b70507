"""ITU-T G.711 A-law and u-law, vectorised with lookup tables.

The tables are built once from the G.711 segment rules (as in the ITU-T reference code and
CPython's ``audioop``): encoding indexes a 65536-entry table with the 16-bit sample, decoding a
256-entry table with the code byte. Results are bit-exact with ``audioop.lin2alaw`` /
``alaw2lin`` / ``lin2ulaw`` / ``ulaw2lin`` on every 16-bit and 8-bit value (tests check both,
and against golden vectors in tests/data/ that do not need ``audioop``).

The float API scales by 32768 (full scale 1.0 = 0 dBFS), rounds to nearest and saturates.

Codec classes for the registry (:class:`PcmaEncoder` ...) frame 20 ms at 8000 Hz.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import FrameBuffer, PcmDecoder, PcmEncoder, float_to_pcm16

SAMPLE_RATE = 8000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000

_SEG_END_A = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_SEG_END_U = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_BIAS = 0x84
_CLIP = 8159


def _build_alaw_encode() -> NDArray[np.uint8]:
    pcm: Any = np.arange(-32768, 32768, dtype=np.int32) >> 3     # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55).astype(np.int32)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_END_A, mag, side="left")          # first seg_end >= mag
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F)
    code = np.where(seg >= 8, 0x7F ^ mask, aval ^ mask)
    table = np.empty(65536, dtype=np.uint8)
    table[(np.arange(-32768, 32768) & 0xFFFF)] = code.astype(np.uint8)
    return table


def _build_ulaw_encode() -> NDArray[np.uint8]:
    pcm: Any = np.arange(-32768, 32768, dtype=np.int32) >> 2     # 14-bit
    neg = pcm < 0
    mask = np.where(neg, 0x7F, 0xFF).astype(np.int32)
    mag = np.where(neg, -pcm, pcm)
    mag = np.minimum(mag, _CLIP) + (_BIAS >> 2)
    seg = np.searchsorted(_SEG_END_U, mag, side="left")
    uval = (np.minimum(seg, 7) << 4) | ((mag >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F ^ mask, uval ^ mask)
    table = np.empty(65536, dtype=np.uint8)
    table[(np.arange(-32768, 32768) & 0xFFFF)] = code.astype(np.uint8)
    return table


def _build_alaw_decode() -> NDArray[np.int16]:
    a: Any = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << (seg - 1)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _build_ulaw_decode() -> NDArray[np.int16]:
    u: Any = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _BIAS
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)


#: 65536-entry tables indexed by the int16 sample viewed as uint16.
ALAW_ENCODE: NDArray[np.uint8] = _build_alaw_encode()
ULAW_ENCODE: NDArray[np.uint8] = _build_ulaw_encode()
#: 256-entry tables indexed by the code byte.
ALAW_DECODE: NDArray[np.int16] = _build_alaw_decode()
ULAW_DECODE: NDArray[np.int16] = _build_ulaw_decode()
_ALAW_DECODE_F = (ALAW_DECODE.astype(np.float32) / np.float32(32768.0)).astype(np.float32)
_ULAW_DECODE_F = (ULAW_DECODE.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def _as_int16(pcm: NDArray[Any]) -> NDArray[np.int16]:
    pcm = np.asarray(pcm)
    if pcm.dtype == np.int16:
        return pcm.astype(np.int16, copy=False)
    if np.issubdtype(pcm.dtype, np.floating):
        return float_to_pcm16(pcm)
    raise TypeError(f"G.711 encodes int16 or float samples, got dtype {pcm.dtype}")


def lin2alaw(pcm: NDArray[Any]) -> NDArray[np.uint8]:
    """Encode int16 (or float, full scale 1.0) samples to A-law code bytes (any shape)."""
    return ALAW_ENCODE[_as_int16(pcm).view(np.uint16)]


def lin2ulaw(pcm: NDArray[Any]) -> NDArray[np.uint8]:
    """Encode int16 (or float, full scale 1.0) samples to u-law code bytes (any shape)."""
    return ULAW_ENCODE[_as_int16(pcm).view(np.uint16)]


def alaw2lin(code: NDArray[np.uint8] | bytes) -> NDArray[np.int16]:
    """Decode A-law code bytes to int16 samples."""
    return ALAW_DECODE[np.frombuffer(code, np.uint8) if isinstance(code, bytes) else code]


def ulaw2lin(code: NDArray[np.uint8] | bytes) -> NDArray[np.int16]:
    """Decode u-law code bytes to int16 samples."""
    return ULAW_DECODE[np.frombuffer(code, np.uint8) if isinstance(code, bytes) else code]


def alaw2float(code: NDArray[np.uint8] | bytes) -> NDArray[np.float32]:
    """Decode A-law code bytes to float32 samples (full scale 1.0)."""
    return _ALAW_DECODE_F[np.frombuffer(code, np.uint8) if isinstance(code, bytes) else code]


def ulaw2float(code: NDArray[np.uint8] | bytes) -> NDArray[np.float32]:
    """Decode u-law code bytes to float32 samples (full scale 1.0)."""
    return _ULAW_DECODE_F[np.frombuffer(code, np.uint8) if isinstance(code, bytes) else code]


class PcmaEncoder(PcmEncoder):
    """G.711 A-law (RTP payload type 8), 20 ms frames of 160 bytes at 8000 Hz."""

    name: ClassVar[str] = "pcma"
    sample_rate = SAMPLE_RATE
    frame_samples = SAMPLES_PER_FRAME

    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        return lin2alaw(frame).tobytes()


class PcmuEncoder(PcmEncoder):
    """G.711 u-law (RTP payload type 0), 20 ms frames of 160 bytes at 8000 Hz."""

    name: ClassVar[str] = "pcmu"
    sample_rate = SAMPLE_RATE
    frame_samples = SAMPLES_PER_FRAME

    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        return lin2ulaw(frame).tobytes()


class PcmaDecoder(PcmDecoder):
    """G.711 A-law decoder: any number of bytes -> float32 at 8000 Hz."""

    name: ClassVar[str] = "pcma"
    sample_rate = SAMPLE_RATE
    frame_samples = SAMPLES_PER_FRAME

    def decode(self, payload: bytes) -> NDArray[np.float32]:
        return alaw2float(payload).copy()


class PcmuDecoder(PcmDecoder):
    """G.711 u-law decoder: any number of bytes -> float32 at 8000 Hz."""

    name: ClassVar[str] = "pcmu"
    sample_rate = SAMPLE_RATE
    frame_samples = SAMPLES_PER_FRAME

    def decode(self, payload: bytes) -> NDArray[np.float32]:
        return ulaw2float(payload).copy()


__all__ = ["ALAW_DECODE", "ALAW_ENCODE", "FrameBuffer", "PcmaDecoder", "PcmaEncoder",
           "PcmuDecoder", "PcmuEncoder", "ULAW_DECODE", "ULAW_ENCODE", "alaw2float", "alaw2lin",
           "lin2alaw", "lin2ulaw", "ulaw2float", "ulaw2lin"]
