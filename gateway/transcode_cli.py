"""``brug transcode IN.wav OUT.wav --via pcma[,opus-16k,...] [--rate HZ]``.

Runs a recording through a chain of link codecs (:mod:`brug.codecs.transcode`) and writes what
comes out at the input's rate, as long as the input and time-aligned with it (the chain's
reported delay is removed), so a technician can listen to what a link does to speech and the
bench can score it against the input sample by sample.

Prints one summary line: the legs, the delay that was compensated, the duration and, where the
``pesq`` package imports, PESQ-NB (and PESQ-WB for inputs of 16 kHz and more) of the output
against the input. A user mistake (missing or unreadable file, unknown codec, bad codec
parameter, channel out of range) is one ``brug: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from brug.codecs import known_codecs
from brug.codecs.resample import QUALITIES
from brug.codecs.transcode import DEFAULT_QUALITY, Transcoder, run


class TranscodeError(Exception):
    """A user mistake on the ``brug transcode`` command line (one line, exit 2)."""

    user_error = True


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def read_mono(path: Path, channel: int) -> tuple[NDArray[np.float32], int, int, str]:
    """Read ``path`` as float32; return (samples of ``channel`` (1-based), rate, channels,
    subtype)."""
    import soundfile as sf

    if not path.exists():
        raise TranscodeError(f"{path}: no such file")
    if not path.is_file():
        raise TranscodeError(f"{path}: is not a file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        subtype = sf.info(str(path)).subtype
    except (RuntimeError, sf.SoundFileError, OSError) as exc:
        raise TranscodeError(f"{path}: not a readable sound file ({_one_line(exc)})") from None
    channels = int(data.shape[1])
    if not 1 <= channel <= channels:
        raise TranscodeError(f"{path}: --channel {channel} is out of range, the file has "
                             f"{channels} channel{'s' if channels != 1 else ''}")
    return np.ascontiguousarray(data[:, channel - 1]), int(rate), channels, str(subtype)


def write(path: Path, y: NDArray[np.float32], rate: int, subtype: str) -> None:
    """Write ``y`` to ``path`` (format from the extension), with ``subtype`` where it fits."""
    import soundfile as sf

    if not path.parent.is_dir():
        raise TranscodeError(f"{path}: no such directory {str(path.parent)!r}")
    try:
        major = path.suffix.lstrip(".").upper() or "WAV"
        if major not in sf.available_formats():
            raise TranscodeError(f"{path}: unknown sound file type {path.suffix!r} (use .wav)")
        st = subtype if sf.check_format(major, subtype) else None
        if st not in ("FLOAT", "DOUBLE"):           # integer PCM: saturate, never wrap
            y = np.clip(y, -1.0, 32767.0 / 32768.0).astype(np.float32)
        sf.write(str(path), y, rate, subtype=st, format=major)
    except TranscodeError:
        raise
    except (RuntimeError, sf.SoundFileError, OSError, ValueError) as exc:
        raise TranscodeError(f"{path}: cannot write ({_one_line(exc)})") from None


def score(x: NDArray[np.float32], y: NDArray[np.float32], rate: int) -> str:
    """``"PESQ-NB 4.21, PESQ-WB 3.90"`` of ``y`` against ``x`` (ITU-T P.862), or ``""``.

    Scored at 16 kHz (NB and WB) when ``rate >= 16000``, at 8 kHz (NB) from 8 kHz on; empty
    when ``pesq`` does not import, the rate is below 8 kHz or the clip is shorter than 0.25 s.
    """
    try:
        from pesq import pesq
    except ImportError:
        return ""
    if rate < 8000 or len(x) < rate // 4:
        return ""
    import soxr

    fs = 16000 if rate >= 16000 else 8000
    ref = soxr.resample(x, rate, fs, quality="VHQ") if rate != fs else x
    deg = soxr.resample(y, rate, fs, quality="VHQ") if rate != fs else y
    try:
        nb = pesq(fs, ref, deg, "nb")
        if fs == 16000:
            return f"PESQ-NB {nb:.2f}, PESQ-WB {pesq(fs, ref, deg, 'wb'):.2f}"
        return f"PESQ-NB {nb:.2f}"
    except Exception as exc:  # noqa: BLE001 - a score is a bonus; say why there is none
        return f"PESQ n/a ({type(exc).__name__})"


def _run(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    if args.rate is not None and args.rate <= 0:
        raise TranscodeError(f"--rate must be a positive number of Hz, got {args.rate}")
    x, rate, channels, subtype = read_mono(src, args.channel)
    try:
        chain = Transcoder(rate, args.via, band_limit=args.rate, quality=args.quality)
    except ValueError as exc:         # includes UnknownCodecError; bad codec parameters
        raise TranscodeError(_one_line(exc)) from None
    y = run(chain, x)
    write(dst, y, rate, subtype)
    ch = f", channel {args.channel} of {channels}" if channels > 1 else ""
    legs = " -> ".join(str(leg) for leg in chain.legs)
    parts = [f"{src} ({rate} Hz, {len(x) / rate:.2f} s{ch}) -> {legs} -> {dst}",
             f"delay {chain.delay_ms:.2f} ms ({chain.delay_samples:.1f} samples) compensated"]
    if not args.no_score:
        s = score(x, y, rate)
        if s:
            parts.append(s)
    print("transcode: " + "; ".join(parts))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "transcode", help="run a recording through a chain of link codecs",
        description="Run a recording through a chain of link codecs and write what comes out "
                    "at the input's rate, as long as the input and time-aligned with it (the "
                    "chain's reported delay is removed), to listen to or score what a link "
                    "does to speech. Prints one summary line (legs, delay, duration, PESQ "
                    "against the input where the pesq package is installed).")
    p.add_argument("input", metavar="IN.wav", help="recording to run through the chain")
    p.add_argument("output", metavar="OUT.wav", help="where to write the result")
    p.add_argument("--via", required=True, metavar="CODEC[,CODEC...]",
                   help="codec chain, in order; the signal is resampled from one codec's rate "
                        "to the next. Known: " + ", ".join(known_codecs()))
    p.add_argument("--rate", type=int, metavar="HZ",
                   help="band-limit leg: take the signal through HZ before the first codec "
                        "(e.g. 8000 for the narrowband radio side of a link); the output is "
                        "always at the input's rate")
    p.add_argument("--channel", type=int, default=1, metavar="N",
                   help="channel of a multichannel input to use, counted from 1 (default: "
                        "the first; the summary says which one was used)")
    p.add_argument("--quality", choices=QUALITIES, default=DEFAULT_QUALITY,
                   help=f"resampler quality (default {DEFAULT_QUALITY})")
    p.add_argument("--no-score", action="store_true", help="do not compute PESQ")
    p.set_defaults(func=_run)
