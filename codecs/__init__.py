"""brug.codecs: the transcoding core.

Sample formats, G.711, streaming resampling with drift correction, voice filters, levels,
limiter/AGC and the IP link codecs, with no knowledge of ports, patches, sound cards or the
engine. Reference, measured figures and known limits: docs/codecs.md.

Modules
-------
============== ================================================================================
module         what
============== ================================================================================
``base``       :class:`Encoder` / :class:`Decoder` base classes, ``FrameBuffer``, the errors
``g711``       G.711 A-law / u-law by lookup tables (bit-exact with ``audioop``), ``pcma``/``pcmu``
``l16``        linear 16-bit big-endian PCM (RFC 3551) at any rate
``opus``       Opus on libopus (``opuslib``): 8-32 kbit/s, 8-48 kHz, in-band FEC and PLC
``codec2``     Codec 2, seven modes from 3200 bit/s down to 700C (``pycodec2``)
``g722``       G.722 at 64 kbit/s (``g722``, Sippy Software's libg722)
``formats``    card and file samples (int16/int32/float32, interleaved, bytes) to mono float32
               and back: ``ToMono``, ``FromMono`` (saturation counted, never wrapped)
``resample``   ``StreamResampler`` (libsamplerate, state across blocks, ratio ramped) and
               ``DriftController`` (PI loop on a ring's fill, output in ppm)
``filters``    DC block, voice band, hum notch, FM pre-/de-emphasis, squelch-tail delay line,
               ``Chain`` and ``build_chain`` (a profile's ``filters`` keys)
``levels``     dBu / dBm0 / dBFS calibration to the -18 dBFS engine reference, P.56 active
               speech level, ``Agc``
``limiter``    look-ahead peak limiter for all ports at once
``transcode``  a chain of link codecs with its delay removed (``brug transcode``)
============== ================================================================================

Mono blocks are 1-D float32 at full scale 1.0. Several channels are (channels, samples) for
the filters, the AGC and the limiter (the engine's ports x samples), but (frames, channels),
interleaved as on a card, for ``formats`` and ``resample``.

Codec registry
--------------
``get_encoder(name, **params)`` / ``get_decoder(name, **params)`` build a codec by name:

=============== ========================================================== =========
name            what                                                       rate (Hz)
=============== ========================================================== =========
``pcma``        G.711 A-law, 20 ms frames                                  8000
``pcmu``        G.711 u-law, 20 ms frames                                  8000
``l16``         linear 16-bit big-endian; ``rate=`` (default 8000),        any
                ``frame_ms=`` (default 20); ``l16-16k``, ``l16-48k``
``g722``        G.722 64 kbit/s; ``frame_ms=`` 1-120 (default 20)          16000
``opus``        Opus; ``bitrate=`` 8000-32000 (default 16000),             16000
                ``rate=``, ``frame_ms=``, ``fec=``, ``loss_percent=``,
                ``complexity=``, ``application=``; the suffix of
                ``opus-8k`` .. ``opus-32k`` is the *bit rate*
``codec2-NNNN`` Codec 2 at NNNN bit/s (3200, 2400, 1600, 1400, 1300,       8000
                1200, 700C), or ``mode=``; ``codec2`` = 3200
=============== ========================================================== =========

Parameters are checked where the codec is built: a value out of range raises ``ValueError``
with the codec, the parameter and the allowed values (``opus: bitrate must be 8000..32000
bit/s, got 64000``). Each encoder reports its codec delay (``delay_samples``) so a chain can be
time-aligned (:mod:`brug.codecs.transcode`).

A name the registry does not know raises :class:`UnknownCodecError` listing the known names
(:func:`known_codecs`); a known codec whose library cannot load raises
:class:`CodecUnavailableError` saying what to install, and every other codec still works
(:func:`available_codecs`, :func:`unavailable_codecs`). That is why ``opus``, ``codec2`` and
``g722`` are imported only by the registry (or explicitly), and why ``__all__`` names, besides
the registry API, only the modules that need no codec library (numpy, scipy and samplerate
suffice): ``from brug.codecs import *`` works where a codec library is missing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import CodecUnavailableError, Decoder, Encoder, UnknownCodecError


@dataclass(frozen=True)
class _Family:
    module: str
    encoder: str
    decoder: str
    parse: Callable[[str], dict[str, Any]]
    names: tuple[str, ...]          # names shown in listings
    needs: str                      # what to install when it cannot load


def _no_suffix(suffix: str) -> dict[str, Any]:
    if suffix:
        raise ValueError("takes no suffix")
    return {}


def _k_suffix(key: str) -> Callable[[str], dict[str, Any]]:
    def parse(suffix: str) -> dict[str, Any]:
        if not suffix:
            return {}
        m = re.fullmatch(r"(\d+(?:\.\d+)?)k", suffix)
        if not m:
            raise ValueError(f"suffix must look like '16k', got {suffix!r}")
        return {key: int(float(m.group(1)) * 1000)}
    return parse


def _codec2_suffix(suffix: str) -> dict[str, Any]:
    if not suffix:
        return {}
    return {"mode": suffix.upper()}


_FAMILIES: dict[str, _Family] = {
    "pcma": _Family("brug.codecs.g711", "PcmaEncoder", "PcmaDecoder", _no_suffix, ("pcma",),
                    "nothing (built in)"),
    "pcmu": _Family("brug.codecs.g711", "PcmuEncoder", "PcmuDecoder", _no_suffix, ("pcmu",),
                    "nothing (built in)"),
    "l16": _Family("brug.codecs.l16", "L16Encoder", "L16Decoder", _k_suffix("rate"),
                   ("l16", "l16-16k", "l16-48k"), "nothing (built in)"),
    "g722": _Family("brug.codecs.g722", "G722Encoder", "G722Decoder", _no_suffix, ("g722",),
                    "the Python package 'g722' (pip install g722)"),
    "opus": _Family("brug.codecs.opus", "OpusEncoder", "OpusDecoder", _k_suffix("bitrate"),
                    ("opus", "opus-8k", "opus-12k", "opus-16k", "opus-24k", "opus-32k"),
                    "the Python package 'opuslib' and the Debian package 'libopus0'"),
    "codec2": _Family("brug.codecs.codec2", "Codec2Encoder", "Codec2Decoder", _codec2_suffix,
                      ("codec2-3200", "codec2-2400", "codec2-1600", "codec2-1400",
                       "codec2-1300", "codec2-1200", "codec2-700C"),
                      "the Python package 'pycodec2' (pip install pycodec2; building it from "
                      "source needs Debian's libcodec2-dev)"),
}


def known_codecs() -> list[str]:
    """Every codec name the registry knows, loadable here or not."""
    return [n for fam in _FAMILIES.values() for n in fam.names]


def _split(name: str) -> tuple[_Family, dict[str, Any]]:
    base, _, suffix = name.strip().lower().partition("-")
    fam = _FAMILIES.get(base)
    if fam is None:
        raise UnknownCodecError(f"unknown codec {name!r}; known codecs: "
                                f"{', '.join(known_codecs())}")
    try:
        params = fam.parse(suffix)
    except ValueError as exc:
        raise UnknownCodecError(f"codec {name!r}: {exc}; known codecs: "
                                f"{', '.join(known_codecs())}") from None
    return fam, params


def _load(fam: _Family, name: str) -> Any:
    try:
        return importlib.import_module(fam.module)
    except (ImportError, OSError) as exc:
        raise CodecUnavailableError(f"codec {name!r} cannot load here ({exc}); it needs "
                                    f"{fam.needs}") from exc


def get_encoder(name: str, **params: Any) -> Encoder:
    """Build an encoder by registry name (``pcma``, ``opus-16k`` ...); ``params`` override."""
    fam, parsed = _split(name)
    mod = _load(fam, name)
    enc: Encoder = getattr(mod, fam.encoder)(**{**parsed, **params})
    return enc


def get_decoder(name: str, **params: Any) -> Decoder:
    """Build a decoder by registry name; ``params`` as for :func:`get_encoder`."""
    fam, parsed = _split(name)
    mod = _load(fam, name)
    dec: Decoder = getattr(mod, fam.decoder)(**{**parsed, **params})
    return dec


def available_codecs() -> list[str]:
    """Codec names whose library loads on this machine."""
    out: list[str] = []
    for fam in _FAMILIES.values():
        try:
            _load(fam, fam.names[0])
        except CodecUnavailableError:
            continue
        out.extend(fam.names)
    return out


def unavailable_codecs() -> dict[str, str]:
    """Codec family -> reason, for families whose library does not load here."""
    out: dict[str, str] = {}
    for base, fam in _FAMILIES.items():
        try:
            _load(fam, base)
        except CodecUnavailableError as exc:
            out[base] = str(exc)
    return out


__all__ = ["CodecUnavailableError", "Decoder", "Encoder", "UnknownCodecError",
           "available_codecs", "get_decoder", "get_encoder", "known_codecs",
           "unavailable_codecs",
           "base", "filters", "formats", "g711", "l16", "levels", "limiter", "resample",
           "transcode"]
