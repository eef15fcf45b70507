"""Codec 2 (David Rowe's low-rate speech codec, as used by FreeDV and M17), through ``pycodec2``.

8000 Hz mono; the frame length depends on the mode (20 ms for 3200 and 2400, 40 ms for the
others). Codec 2 is parametric (sinusoidal model: pitch, voicing, spectral envelope): it keeps
what speech sounds like, not the waveform, so a sample-by-sample comparison with the input is
meaningless. Its delay is reported from the analysis/synthesis windows of the codec (the model
of each 10 ms sub-frame is centred 20 ms behind the newest input sample; 700C interpolates its
parameters over one more sub-frame) and the tests check it against the delay of the speech
envelope.

Where the ``pycodec2`` binding cannot be imported, importing this module raises
``ImportError``, and the registry turns that into
:class:`~brug.codecs.base.CodecUnavailableError`; every other codec still works. ``pycodec2``
ships wheels with libcodec2 inside; building it from source needs Debian's ``libcodec2-dev``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pycodec2
from numpy.typing import NDArray

from .base import Decoder, FrameBuffer, LookaheadEncoder, float_to_pcm16, pcm16_to_float

SAMPLE_RATE = 8000
#: Mode name -> (pycodec2 mode, samples per frame at 8000 Hz, bits per frame).
MODES: dict[str, tuple[int, int, int]] = {
    "3200": (3200, 160, 64),
    "2400": (2400, 160, 48),
    "1600": (1600, 320, 64),
    "1400": (1400, 320, 56),
    "1300": (1300, 320, 52),
    "1200": (1200, 320, 48),
    "700C": (700, 320, 28),
}
DEFAULT_MODE = "3200"
FRAME_MS = 20
SAMPLES_PER_FRAME = 160
#: Codec delay per mode in samples at 8000 Hz (encoder + decoder, framing excluded).
DELAY_SAMPLES: dict[str, int] = {m: (240 if m == "700C" else 160) for m in MODES}


def mode_name(mode: Any) -> str:
    """Normalise a mode given as 3200, "3200", "700c", "700C" or 700 to a key of :data:`MODES`."""
    key = str(mode).strip().upper()
    if key == "700":
        key = "700C"
    if key not in MODES:
        raise ValueError(f"codec2: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return key


class _Codec2Base:
    mode: str

    def _setup(self, mode: Any) -> None:
        self.mode = mode_name(mode)
        c2_mode, self.frame_samples, self.bits_per_frame = MODES[self.mode]
        self.bytes_per_frame = (self.bits_per_frame + 7) // 8
        self.bitrate = self.bits_per_frame * SAMPLE_RATE // self.frame_samples
        self._c2 = pycodec2.Codec2(c2_mode)
        self._c2_mode = c2_mode


class Codec2Encoder(_Codec2Base, LookaheadEncoder):
    """Codec 2 encoder; ``mode`` one of :data:`MODES` (default ``"3200"``).

    Each frame becomes ``bytes_per_frame`` bytes (bits packed MSB first, as ``c2enc`` writes).
    """

    name: ClassVar[str] = "codec2"
    sample_rate = SAMPLE_RATE

    def __init__(self, mode: Any = DEFAULT_MODE) -> None:
        self._setup(mode)
        self._frames = FrameBuffer(self.frame_samples)
        self._fed = False               # samples encoded since the last flush/reset

    @property
    def delay_samples(self) -> int:
        """Codec delay at 8000 Hz: 160 samples (20 ms), 240 (30 ms) for 700C."""
        return DELAY_SAMPLES[self.mode]

    def _encode_frame(self, frame: NDArray[np.float32]) -> bytes:
        return bytes(self._c2.encode(float_to_pcm16(frame)))

    def reset(self) -> None:
        """Clear state (frame buffer, codec state); keep the mode."""
        self._frames.reset()
        self._fed = False
        self._c2 = pycodec2.Codec2(self._c2_mode)


class Codec2Decoder(_Codec2Base, Decoder):
    """Codec 2 decoder: a payload of one or more whole frames -> float32 at 8000 Hz.

    Codec 2 has no packet-loss concealment; :meth:`conceal` returns silence.
    """

    name: ClassVar[str] = "codec2"
    sample_rate = SAMPLE_RATE

    def __init__(self, mode: Any = DEFAULT_MODE) -> None:
        self._setup(mode)

    def decode(self, payload: bytes) -> NDArray[np.float32]:
        n = len(payload)
        if n == 0 or n % self.bytes_per_frame:
            raise ValueError(f"codec2 {self.mode}: payload must be a multiple of "
                             f"{self.bytes_per_frame} bytes, got {n}")
        out = [self._c2.decode(bytes(payload[i:i + self.bytes_per_frame]))
               for i in range(0, n, self.bytes_per_frame)]
        pcm = np.concatenate(out) if len(out) > 1 else out[0]
        return pcm16_to_float(pcm)

    def reset(self) -> None:
        """Clear state (codec state); keep the mode."""
        self._c2 = pycodec2.Codec2(self._c2_mode)


__all__ = ["Codec2Decoder", "Codec2Encoder", "DEFAULT_MODE", "DELAY_SAMPLES", "FRAME_MS",
           "MODES", "SAMPLES_PER_FRAME", "SAMPLE_RATE", "mode_name"]
