"""Codec chains and ``brug transcode``: same length and rate as the input, time-aligned to a
sample, block-size invariant, tails flushed; user mistakes are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from brug.codecs import CodecUnavailableError, UnknownCodecError
from brug.codecs.transcode import Transcoder, parse_via, transcode
from brug.gateway.cli import main

from helpers import DATA, load_wav, tone, xcorr_peak

Audio = np.ndarray[Any, np.dtype[np.float32]]


def _lag(ref: Audio, sig: Audio, max_lag: int = 200) -> int:
    """Lag of ``sig`` against ``ref`` in samples (either sign), by cross-correlation."""
    c = signal.correlate(np.asarray(sig, np.float64), np.asarray(ref, np.float64),
                         mode="full", method="fft")
    lags = signal.correlation_lags(len(sig), len(ref), mode="full")
    keep = np.abs(lags) <= max_lag
    return int(lags[keep][np.argmax(c[keep])])


def _speech(rate: int) -> Audio:
    x, _ = load_wav("quality_arctic_a0007_48k.wav", fs=rate)
    return x


def _run_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["transcode", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------- the library

@pytest.mark.parametrize("rate, via, band_limit, tol", [
    (8000, "pcma", None, 1),
    (48000, "pcma", None, 1),
    (48000, "l16-16k,pcma", None, 1),
    (48000, "g722,pcma", None, 1),
    (16000, "opus-16k", None, 1),
    (8000, "pcma,opus-16k", None, 1),
    (48000, "opus-24k", 8000, 1),
    (48000, "opus-16k", None, 1),
    # Opus's SILK path is not linear-phase: on speech its waveform lands 0.4-0.7 of a 16 kHz
    # sample before the whole-sample look-ahead libopus reports, which is 1-2 samples at 48 kHz
    (48000, "pcma,opus-16k", None, 3),
])
def test_output_is_as_long_as_the_input_and_aligned_to_a_sample(rate: int, via: str,
                                                               band_limit: int | None,
                                                               tol: int) -> None:
    x = _speech(rate)
    y = transcode(x, rate, via, band_limit=band_limit)
    assert y.dtype == np.float32 and len(y) == len(x)
    assert abs(_lag(x, y)) <= tol
    assert xcorr_peak(x, y, 0) > 0.8


def test_reported_delay_adds_up_the_stages() -> None:
    t = Transcoder(48000, ["pcma", "opus-16k"])
    assert [str(leg) for leg in t.legs] == ["pcma (8000 Hz)", "opus-16k (16000 Hz)"]
    assert [leg.delay_samples for leg in t.legs] == [0.0, 104.0]
    # unaligned output: the delay is there before removing it
    x = _speech(48000)
    raw = np.concatenate([t.process(x), t.flush()])
    assert len(raw) >= len(x) + t.delay_samples
    d = _lag(x, raw, max_lag=6000)
    assert abs(d - t.delay_samples) <= 2
    assert t.delay_ms == pytest.approx(1000 * t.delay_samples / 48000)
    assert Transcoder(8000, "pcma").delay_samples == 0.0
    b = Transcoder(48000, "opus-16k", band_limit=8000)
    assert [str(leg) for leg in b.legs] == ["band limit 8000 Hz", "opus-16k (16000 Hz)"]


@pytest.mark.parametrize("block", [1, 7, 80, 160, 480, 4096])
def test_output_does_not_depend_on_block_size(block: int) -> None:
    x = _speech(16000)[:4800]
    whole = transcode(x, 16000, "opus-16k,pcma")
    chunked = transcode(x, 16000, "opus-16k,pcma", block=block)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


@pytest.mark.parametrize("via", ["pcma", "opus-16k", "g722", "codec2-1300", "codec2-700C"])
def test_flush_brings_out_the_end_of_the_recording(via: str) -> None:
    # a voiced signal right up to the last sample: its last 40 ms must come out, not the
    # silence an unflushed encoder, resampler or codec look-ahead would leave there
    fs = 16000
    v = signal.sawtooth(2 * np.pi * 120.0 * np.arange(fs) / fs)
    b, a = signal.butter(2, [200, 3000], btype="bandpass", fs=fs)
    x = (0.2 * signal.lfilter(b, a, v)).astype(np.float32)
    y = transcode(x, fs, via)

    def rel(w: slice) -> float:
        return float(np.sqrt(np.mean(y[w] ** 2)) / np.sqrt(np.mean(x[w] ** 2)))

    tail, middle = rel(slice(fs - 640, fs)), rel(slice(fs // 2, fs // 2 + 640))
    # Codec 2's analysis window reaches 20 ms past a frame, so its very end comes out softer
    assert 0.4 * middle < tail < 2.0 * middle, (tail, middle)


def test_bad_chains() -> None:
    assert parse_via(" pcma , opus-16k") == ["pcma", "opus-16k"]
    with pytest.raises(ValueError, match="a codec chain needs one or more comma-separated "
                                         "codec names, got 'pcma,,opus'"):
        parse_via("pcma,,opus")
    with pytest.raises(UnknownCodecError, match="^unknown codec 'gsm'; known codecs: pcma"):
        Transcoder(8000, "pcma,gsm")
    with pytest.raises(ValueError, match="^rate must be a positive number of Hz, got 0$"):
        Transcoder(0, "pcma")
    with pytest.raises(ValueError, match="^transcode takes a mono 1-D signal"):
        transcode(np.zeros((10, 2), np.float32), 8000, "pcma")
    assert len(transcode(np.zeros(0, np.float32), 8000, "opus-16k")) == 0


# ---------------------------------------------------------------------- the command line

def _write(path: Path, x: Audio, rate: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), x, rate, subtype=subtype)
    return path


@pytest.mark.parametrize("rate, via, extra", [
    (48000, "pcma,g722", []),
    (16000, "opus-16k,pcma", []),
    (8000, "pcma", []),
    (48000, "g722", ["--rate", "8000"]),
])
def test_cli_writes_the_input_rate_and_length_time_aligned(tmp_path: Path, rate: int, via: str,
                                                           extra: list[str],
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    x = _speech(rate)
    src = _write(tmp_path / "in.wav", x, rate)
    dst = tmp_path / "out.wav"
    rc, out, err = _run_cli(str(src), str(dst), "--via", via, *extra, capsys=capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("transcode: ")
    assert f"({rate} Hz, 4.00 s)" in lines[0] and "compensated" in lines[0]
    assert "PESQ-NB" in lines[0]
    assert ("PESQ-WB" in lines[0]) == (rate >= 16000)
    info = sf.info(str(dst))
    assert (info.samplerate, info.frames, info.channels) == (rate, len(x), 1)
    assert info.subtype == "PCM_16"
    y, _ = sf.read(str(dst), dtype="float32")
    assert abs(_lag(sf.read(str(src), dtype="float32")[0], y)) <= 1


def test_cli_summary_names_the_legs_and_the_delay(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(tmp_path / "in.wav", _speech(48000), 48000)
    rc, out, _ = _run_cli(str(src), str(tmp_path / "o.wav"), "--via", "pcma,opus-16k",
                          "--rate", "8000", "--no-score", capsys=capsys)
    assert rc == 0
    assert ("-> band limit 8000 Hz -> pcma (8000 Hz) -> opus-16k (16000 Hz) -> " in out)
    delay = Transcoder(48000, "pcma,opus-16k", band_limit=8000).delay_ms
    assert f"delay {delay:.2f} ms" in out
    assert "PESQ" not in out


def test_cli_takes_the_first_channel_of_a_stereo_file_and_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    speech = _speech(16000)
    other = tone(1000.0, 16000, len(speech) / 16000, dbfs=-12.0)
    src = _write(tmp_path / "st.wav", np.stack([speech, other], axis=1), 16000)
    for channel, expect in ((None, speech), ("2", other)):
        dst = tmp_path / f"out{channel}.wav"
        argv = [str(src), str(dst), "--via", "pcma", "--no-score"]
        if channel:
            argv += ["--channel", channel]
        rc, out, _ = _run_cli(*argv, capsys=capsys)
        assert rc == 0
        assert f"channel {channel or 1} of 2" in out
        y, _ = sf.read(str(dst), dtype="float32")
        assert y.ndim == 1 and xcorr_peak(expect, y, 0) > 0.9


def test_cli_keeps_a_float_subtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _write(tmp_path / "f.wav", _speech(8000), 8000, subtype="FLOAT")
    rc, _, _ = _run_cli(str(src), str(tmp_path / "o.wav"), "--via", "opus-16k", "--no-score",
                        capsys=capsys)
    assert rc == 0 and sf.info(str(tmp_path / "o.wav")).subtype == "FLOAT"


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    good = _write(tmp / "good.wav", _speech(8000), 8000)
    stereo = _write(tmp / "st.wav", np.zeros((800, 2), np.float32), 8000)
    junk = tmp / "junk.wav"
    junk.write_bytes(b"this is not a RIFF file at all")
    out = str(tmp / "o.wav")
    return [
        ([str(tmp / "missing.wav"), out, "--via", "pcma"],
         f"brug: error: {tmp / 'missing.wav'}: no such file"),
        ([str(tmp), out, "--via", "pcma"], f"brug: error: {tmp}: is not a file"),
        ([str(junk), out, "--via", "pcma"],
         f"brug: error: {junk}: not a readable sound file ("),
        ([str(good), out, "--via", "pcma,gsm"], "brug: error: unknown codec 'gsm'; known codecs: "
                                                "pcma, pcmu, l16"),
        ([str(good), out, "--via", "opus-64k"],
         "brug: error: opus: bitrate must be 8000..32000 bit/s, got 64000"),
        ([str(good), out, "--via", "codec2-999"],
         "brug: error: codec2: mode must be one of 3200, 2400, 1600, 1400, 1300, 1200, 700C, "
         "got '999'"),
        ([str(good), out, "--via", "pcma,,opus"], "brug: error: a codec chain needs one or more "
                                                  "comma-separated codec names, got 'pcma,,opus'"),
        ([str(good), out, "--via", "pcma", "--rate", "0"],
         "brug: error: --rate must be a positive number of Hz, got 0"),
        ([str(stereo), out, "--via", "pcma", "--channel", "3"],
         f"brug: error: {stereo}: --channel 3 is out of range, the file has 2 channels"),
        ([str(good), str(tmp / "no" / "dir.wav"), "--via", "pcma"],
         f"brug: error: {tmp / 'no' / 'dir.wav'}: no such directory"),
        ([str(good), str(tmp / "o.xyz"), "--via", "pcma"],
         f"brug: error: {tmp / 'o.xyz'}: unknown sound file type '.xyz' (use .wav)"),
    ]


def test_cli_user_mistakes_are_one_line_and_exit_2(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for argv, start in _bad_inputs(tmp_path):
        rc, out, err = _run_cli(*argv, capsys=capsys)
        assert rc == 2, argv
        assert out == ""
        assert len(err.splitlines()) == 1, err
        assert err.startswith(start), (err, start)


def test_cli_unavailable_codec_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import brug.codecs.transcode as tc

    def unavailable(name: str, **params: Any) -> Any:
        raise CodecUnavailableError(f"codec {name!r} cannot load here (test); it needs X")

    monkeypatch.setattr(tc, "get_encoder", unavailable)
    src = _write(tmp_path / "in.wav", _speech(8000), 8000)
    rc, _, err = _run_cli(str(src), str(tmp_path / "o.wav"), "--via", "codec2-3200",
                          capsys=capsys)
    assert rc == 2
    assert err == "brug: error: codec 'codec2-3200' cannot load here (test); it needs X\n"


def test_cli_in_a_subprocess(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.wav", _speech(16000), 16000)
    cmd = [sys.executable, "-m", "brug.gateway.cli", "transcode", str(src)]
    ok = subprocess.run(cmd + [str(tmp_path / "o.wav"), "--via", "opus-16k"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("transcode: ") and len(ok.stdout.splitlines()) == 1
    bad = subprocess.run(cmd + [str(tmp_path / "o.wav"), "--via", "amr"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("brug: error: unknown codec 'amr'; known codecs: ")
    assert len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr


def test_help_documents_rate_and_channel(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["transcode", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "band-limit leg" in out and "always at the input's rate" in out
    assert "counted from 1" in out and "codec2-700C" in out


def test_data_files_are_documented() -> None:
    origin = (DATA / "ORIGIN-codecs-quality.md").read_text()
    for f in sorted(DATA.glob("quality_*.wav")):
        assert f"`{f.name}`" in origin
    assert sum(f.stat().st_size for f in DATA.glob("quality_*.wav")) < 2_000_000


# ---------------------------------------------------------------------- benchmarks

def _ten_seconds() -> Audio:
    x = _speech(48000)
    return np.tile(x, 3)[:480000]


@pytest.mark.benchmark(group="transcode-10s")
def test_bench_transcode_10s_48k_via_pcma(benchmark: Any) -> None:
    x = _ten_seconds()
    y = benchmark(transcode, x, 48000, "pcma")
    assert len(y) == len(x)


@pytest.mark.benchmark(group="transcode-10s")
def test_bench_transcode_10s_48k_via_opus_16k(benchmark: Any) -> None:
    x = _ten_seconds()
    y = benchmark(transcode, x, 48000, "opus-16k")
    assert len(y) == len(x)


@pytest.mark.benchmark(group="transcode-10s")
def test_bench_transcode_10s_8k_via_pcma_opus_16k(benchmark: Any) -> None:
    x, _ = load_wav("quality_arctic_a0007_8k.wav")
    x = np.tile(x, 3)[:80000]
    y = benchmark(transcode, x, 8000, "pcma,opus-16k")
    assert len(y) == len(x)
