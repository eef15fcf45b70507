"""RTP payload formats: name -> clock rate, static payload type, frame encoder/decoder.

Uses the codec registry of :mod:`brug.codecs` when its codec runs at the payload's rate and
frames the packet exactly; otherwise a small local adapter: G.711 through
:mod:`brug.codecs.g711`'s functions (any ptime) and Opus through ``opuslib`` (RFC 7587: 48 kHz
RTP clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from brug.codecs import g711
from brug.codecs.base import float_to_pcm16, pcm16_to_float

Pcm = npt.NDArray[np.float32]


class FrameCodec(Protocol):
    def encode(self, pcm: Pcm) -> bytes: ...
    def decode(self, data: bytes) -> Pcm: ...


@dataclass(frozen=True)
class PayloadFormat:
    name: str
    clock_rate: int        # RTP timestamp clock (Hz)
    audio_rate: int        # PCM rate of the codec (Hz)
    static_pt: int | None  # None: dynamic, the site file must agree with the peer (default 96)


FORMATS = {
    "pcma": PayloadFormat("pcma", 8000, 8000, 8),
    "pcmu": PayloadFormat("pcmu", 8000, 8000, 0),
    "l16": PayloadFormat("l16", 16000, 16000, None),
    # RFC 7587: the RTP clock is 48 kHz whatever the codec runs at; we encode/decode wideband
    "opus": PayloadFormat("opus", 48000, 16000, None),
}


# G.711 is brug.codecs.g711's (bit-exact with the ITU-T reference and audioop); these thin
# wrappers keep the bytes-in/bytes-out shape the RTP code uses.
def alaw_encode(x: Pcm) -> bytes:
    return g711.lin2alaw(x).tobytes()


def alaw_decode(b: bytes) -> Pcm:
    return g711.alaw2float(b).copy()


def ulaw_encode(x: Pcm) -> bytes:
    return g711.lin2ulaw(x).tobytes()


def ulaw_decode(b: bytes) -> Pcm:
    return g711.ulaw2float(b).copy()


class _G711:
    def __init__(self, law: str) -> None:
        self._enc = alaw_encode if law == "pcma" else ulaw_encode
        self._dec = alaw_decode if law == "pcma" else ulaw_decode

    def encode(self, pcm: Pcm) -> bytes:
        return self._enc(pcm)

    def decode(self, data: bytes) -> Pcm:
        return self._dec(data)


class _L16:
    def encode(self, pcm: Pcm) -> bytes:
        return float_to_pcm16(pcm).astype(">i2").tobytes()

    def decode(self, data: bytes) -> Pcm:
        return pcm16_to_float(np.frombuffer(data[:len(data) & ~1], ">i2"))


class _Opus:
    """Opus (wideband, 16 kHz PCM; RFC 7587 48 kHz RTP clock) with in-band FEC: each packet also
    carries a coarse copy of the previous frame, so a single lost packet is rebuilt from the
    next one."""

    def __init__(self, frame_samples: int, bitrate: int = 32000, fec: bool = True) -> None:
        import opuslib
        import opuslib.api.ctl as ctl
        import opuslib.api.decoder as opus_dec
        import opuslib.api.encoder as opus_enc

        self._frame = frame_samples
        self._enc = opuslib.Encoder(16000, 1, opuslib.APPLICATION_VOIP)
        opus_enc.encoder_ctl(self._enc.encoder_state, ctl.set_bitrate, int(bitrate))
        if fec:
            opus_enc.encoder_ctl(self._enc.encoder_state, ctl.set_inband_fec, 1)
            opus_enc.encoder_ctl(self._enc.encoder_state, ctl.set_packet_loss_perc, 10)
        self._dec = opuslib.Decoder(16000, 1)
        self._api_dec = opus_dec

    def encode(self, pcm: Pcm) -> bytes:
        return bytes(self._enc.encode_float(np.ascontiguousarray(pcm, np.float32).tobytes(),
                                            len(pcm)))

    def decode(self, data: bytes) -> Pcm:
        out = self._dec.decode_float(data, 1920)
        return np.frombuffer(out, np.float32).copy()

    def decode_lost(self, next_payload: bytes | None, samples: int) -> Pcm:
        """Rebuild a lost frame from ``next_payload``'s FEC, or Opus PLC when ``None``."""
        if next_payload is not None:
            out = self._dec.decode_float(next_payload, samples, decode_fec=True)
        else:
            out = self._api_dec.decode_float(self._dec.decoder_state, None, 0, samples, 0, 1)
        return np.frombuffer(out, np.float32).copy()


class _Registry:
    """A codec from the :mod:`brug.codecs` registry, fed whole packets (ptime)."""

    def __init__(self, enc: Any, dec: Any) -> None:
        self._enc = enc
        self._dec = dec

    def encode(self, pcm: Pcm) -> bytes:
        return b"".join(self._enc.encode(pcm))

    def decode(self, data: bytes) -> Pcm:
        return np.asarray(self._dec.decode(data), np.float32)


def _from_registry(name: str, frame_samples: int, params: dict[str, Any]) -> FrameCodec | None:
    fmt = FORMATS[name]
    try:
        from brug.codecs import get_decoder, get_encoder
        kw: dict[str, Any] = {}
        if name in ("l16", "opus"):
            kw["rate"] = fmt.audio_rate
            kw["frame_ms"] = 1000 * frame_samples // fmt.audio_rate
        if name == "opus" and "bitrate" in params:
            kw["bitrate"] = params["bitrate"]
        enc = get_encoder(name, **kw)
        dec = get_decoder(name, **kw)
    except (ImportError, ValueError, RuntimeError, TypeError):
        return None
    if getattr(enc, "sample_rate", None) != fmt.audio_rate or \
            frame_samples % int(getattr(enc, "frame_samples", 0) or frame_samples + 1):
        return None            # the registry codec cannot frame this ptime exactly
    return _Registry(enc, dec)


def make_codec(name: str, frame_samples: int, **params: Any) -> FrameCodec:
    """Frame codec for payload ``name``; ``frame_samples`` (one packet) at the codec's rate.

    The :mod:`brug.codecs` registry is used when its codec runs at the payload's rate and
    frames the packet exactly; otherwise the local adapter here.
    """
    if name not in FORMATS:
        raise ValueError(f"payload {name!r} is not one of: {', '.join(sorted(FORMATS))}")
    # Opus stays local: the link needs in-band FEC and decode-at-playout (``decode_lost``)
    reg = None if name == "opus" else _from_registry(name, frame_samples, params)
    if reg is not None:
        return reg
    if name in ("pcma", "pcmu"):
        return _G711(name)
    if name == "l16":
        return _L16()
    if name == "opus":
        br = params.get("bitrate", 32000)
        return _Opus(frame_samples, int(br) if isinstance(br, (int, float, str)) else 32000)
    raise ValueError(f"payload {name!r} is not one of: {', '.join(sorted(FORMATS))}")
