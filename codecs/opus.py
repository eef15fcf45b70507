"""Opus (RFC 6716) for IP links, on libopus through ``opuslib``.

Mono, 8-32 kbit/s, at one of libopus's rates (default 16000 Hz: wideband speech) with 10, 20,
40 or 60 ms frames. The encoder frames blocks of any length (``[]`` while it buffers a partial
frame); the decoder turns one packet back into samples, conceals a lost packet with Opus PLC
(:meth:`OpusDecoder.conceal`) and, when the encoder runs with in-band FEC, rebuilds a lost
packet from the coarse copy the next packet carries (:meth:`OpusDecoder.decode_lost`).

The look-ahead libopus adds (``OPUS_GET_LOOKAHEAD``: 2.5 ms plus 4 ms of delay compensation in
the VoIP and audio applications, 2.5 ms in restricted low-delay) is reported as
:attr:`OpusEncoder.delay_samples`; the tests check it against the delay measured by
cross-correlation.

RTP (RFC 7587) always counts Opus timestamps at 48 kHz whatever rate the codec runs at; that
is the RTP layer's business (``brug.gateway.rtp.payload``), not this module's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .base import Decoder, FrameBuffer, LookaheadEncoder

try:
    import opuslib
    import opuslib.api.ctl as _ctl
    import opuslib.api.decoder as _api_dec
    import opuslib.api.encoder as _api_enc
except ImportError:
    raise
except Exception as exc:  # noqa: BLE001 - opuslib raises a bare Exception without libopus
    raise ImportError(f"opuslib cannot load libopus: {exc}") from exc

SAMPLE_RATE = 16000
FRAME_MS = 20
SAMPLES_PER_FRAME = SAMPLE_RATE * FRAME_MS // 1000

#: Rates libopus encodes and decodes at, in Hz.
RATES: tuple[int, ...] = (8000, 12000, 16000, 24000, 48000)
#: Frame durations offered, in ms (libopus also has 2.5, 5, 80, 100 and 120 ms).
FRAME_MS_CHOICES: tuple[int, ...] = (10, 20, 40, 60)
#: Bit-rate range for radio links, in bit/s.
BITRATE_MIN = 8000
BITRATE_MAX = 32000
DEFAULT_BITRATE = 16000
#: ``application`` names -> libopus constants.
APPLICATIONS: dict[str, int] = {
    "voip": opuslib.APPLICATION_VOIP,
    "audio": opuslib.APPLICATION_AUDIO,
    "lowdelay": opuslib.APPLICATION_RESTRICTED_LOWDELAY,
}
_MAX_PACKET_MS = 120


def _check(bitrate: int, rate: int, frame_ms: int, complexity: int | None,
           loss_percent: int | None, application: str) -> None:
    if isinstance(bitrate, bool) or not isinstance(bitrate, int) or \
            not BITRATE_MIN <= bitrate <= BITRATE_MAX:
        raise ValueError(f"opus: bitrate must be {BITRATE_MIN}..{BITRATE_MAX} bit/s, "
                         f"got {bitrate!r}")
    if rate not in RATES:
        raise ValueError(f"opus: rate must be one of {', '.join(map(str, RATES))} Hz, "
                         f"got {rate!r}")
    if frame_ms not in FRAME_MS_CHOICES:
        raise ValueError(f"opus: frame_ms must be one of "
                         f"{', '.join(map(str, FRAME_MS_CHOICES))}, got {frame_ms!r}")
    if complexity is not None and (not isinstance(complexity, int) or
                                   not 0 <= complexity <= 10):
        raise ValueError(f"opus: complexity must be 0..10, got {complexity!r}")
    if loss_percent is not None and (not isinstance(loss_percent, int) or
                                     not 0 <= loss_percent <= 100):
        raise ValueError(f"opus: loss_percent must be 0..100, got {loss_percent!r}")
    if application not in APPLICATIONS:
        raise ValueError(f"opus: application must be one of {', '.join(APPLICATIONS)}, "
                         f"got {application!r}")


class OpusEncoder(LookaheadEncoder):
    """Opus encoder, mono.

    Parameters
    ----------
    bitrate : int
        Target bit rate in bit/s, 8000..32000 (default 16000).
    rate : int
        Sample rate of the input in Hz, one of :data:`RATES` (default 16000, wideband).
    frame_ms : int
        Frame duration in ms, one of :data:`FRAME_MS_CHOICES` (default 20).
    fec : bool
        In-band forward error correction: each packet carries a coarse copy of the previous
        frame, so the decoder can rebuild one lost packet from the next (default off).
        libopus 1.3 codes that copy only where the bit rate leaves room for it: at 24 kbit/s
        from 5 % expected loss on, at 16 kbit/s only from about 30 %; otherwise the packets
        carry none and :meth:`OpusDecoder.decode_lost` falls back to concealment.
    loss_percent : int, optional
        Expected packet loss in percent (0..100), which tells libopus how much FEC to spend;
        default 10 with ``fec`` and 0 without.
    complexity : int, optional
        Encoder complexity 0..10 (default: libopus's own default).
    application : str
        ``"voip"`` (default), ``"audio"`` or ``"lowdelay"`` (CELT only, 2.5 ms look-ahead).

    Notes
    -----
    Encoding and decoding one 20 ms frame at 16 kHz costs about 0.25 ms together at the
    default complexity (``test_bench_opus_encode_decode_20ms_frame``); ``encode`` allocates
    its output, which is fine on the engine thread but not in an audio callback.
    """

    name: ClassVar[str] = "opus"

    def __init__(self, bitrate: int = DEFAULT_BITRATE, rate: int = SAMPLE_RATE,
                 frame_ms: int = FRAME_MS, fec: bool = False, loss_percent: int | None = None,
                 complexity: int | None = None, application: str = "voip") -> None:
        _check(bitrate, rate, frame_ms, complexity, loss_percent, application)
        self.bitrate = int(bitrate)
        self.sample_rate = int(rate)
        self.frame_samples = self.sample_rate * int(frame_ms) // 1000
        self.fec = bool(fec)
        self.loss_percent = int(loss_percent if loss_percent is not None
                                else (10 if fec else 0))
        self.application = application
        self._enc = opuslib.Encoder(self.sample_rate, 1, APPLICATIONS[application])
        self._complexity = complexity
        self._configure()
        self._frames = FrameBuffer(self.frame_samples)
        self._fed = False               # samples encoded since the last flush/reset

    def _set(self, request: Any, value: int) -> None:
        _api_enc.encoder_ctl(self._enc.encoder_state, request, value)

    def _get(self, request: Any) -> int:
        return int(_api_enc.encoder_ctl(self._enc.encoder_state, request))

    def _configure(self) -> None:
        self._set(_ctl.set_bitrate, self.bitrate)
        self._set(_ctl.set_inband_fec, 1 if self.fec else 0)
        self._set(_ctl.set_packet_loss_perc, self.loss_percent)
        if self._complexity is not None:
            self._set(_ctl.set_complexity, int(self._complexity))

    @property
    def complexity(self) -> int:
        """Encoder complexity in force (0..10)."""
        return self._get(_ctl.get_complexity)

    @property
    def delay_samples(self) -> int:
        """libopus's look-ahead (``OPUS_GET_LOOKAHEAD``) at ``sample_rate``, in samples.

        An event at input sample ``n`` comes out of :class:`OpusDecoder` (at the same rate) at
        sample ``n + delay_samples``: 6.5 ms (104 samples at 16 kHz) for ``voip``/``audio``,
        2.5 ms for ``lowdelay``. Exact to the sample at 8, 12 and 16 kHz; decoded at 24 or
        48 kHz the SILK path comes out up to 4 samples (0.08 ms) earlier.
        """
        return self._get(_ctl.get_lookahead)

    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        pcm = np.ascontiguousarray(frame, dtype=np.float32).tobytes()
        return bytes(self._enc.encode_float(pcm, self.frame_samples))

    def reset(self) -> None:
        """Clear state (frame buffer, libopus state); keep parameters."""
        self._frames.reset()
        self._fed = False
        _api_enc.encoder_ctl(self._enc.encoder_state, _ctl.reset_state)
        self._configure()


class OpusDecoder(Decoder):
    """Opus decoder, mono.

    Takes the same parameters as :class:`OpusEncoder` (the registry passes one set to both);
    only ``rate`` and ``frame_ms`` matter here: ``rate`` is the output rate (any of
    :data:`RATES`, independent of the encoder's), ``frame_ms`` the length of a concealed frame.
    """

    name: ClassVar[str] = "opus"

    def __init__(self, bitrate: int = DEFAULT_BITRATE, rate: int = SAMPLE_RATE,
                 frame_ms: int = FRAME_MS, fec: bool = False, loss_percent: int | None = None,
                 complexity: int | None = None, application: str = "voip") -> None:
        _check(bitrate, rate, frame_ms, complexity, loss_percent, application)
        self.sample_rate = int(rate)
        self.frame_samples = self.sample_rate * int(frame_ms) // 1000
        self._max_samples = self.sample_rate * _MAX_PACKET_MS // 1000
        self._dec = opuslib.Decoder(self.sample_rate, 1)
        self._last = self.frame_samples

    def decode(self, payload: bytes) -> NDArray[np.float32]:
        """Decode one packet to float32 samples (as many as the packet holds)."""
        if not payload:
            raise ValueError("opus: empty payload (use conceal() for a lost packet)")
        out = self._dec.decode_float(bytes(payload), self._max_samples)
        y = np.frombuffer(out, np.float32).copy()
        self._last = len(y) or self._last
        return y

    def conceal(self, samples: int | None = None) -> NDArray[np.float32]:
        """One frame for a lost packet, by Opus packet-loss concealment.

        ``samples`` defaults to the last decoded packet's length (a multiple of 2.5 ms).
        """
        n = int(samples or self._last)
        out = _api_dec.decode_float(self._dec.decoder_state, None, 0, n, 0, 1)
        return np.frombuffer(out, np.float32).copy()

    def decode_lost(self, next_payload: bytes | None = None,
                    samples: int | None = None) -> NDArray[np.float32]:
        """Rebuild a lost packet from the in-band FEC of ``next_payload``, else by PLC.

        Call it with the packet that *follows* the lost one, then ``decode(next_payload)`` as
        usual. Without FEC data in ``next_payload`` libopus falls back to concealment.
        ``samples`` defaults to the last decoded packet's length.
        """
        n = int(samples or self._last)
        if not next_payload:
            return self.conceal(n)
        out = self._dec.decode_float(bytes(next_payload), n, decode_fec=True)
        return np.frombuffer(out, np.float32).copy()

    def reset(self) -> None:
        """Clear state (libopus decoder state); keep parameters."""
        self._dec.reset_state()
        self._last = self.frame_samples


__all__ = ["APPLICATIONS", "BITRATE_MAX", "BITRATE_MIN", "DEFAULT_BITRATE", "FRAME_MS",
           "FRAME_MS_CHOICES", "OpusDecoder", "OpusEncoder", "RATES", "SAMPLES_PER_FRAME",
           "SAMPLE_RATE"]
