"""G.711 A-law / u-law: bit-exact tables, codec framing, throughput against audioop."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from brug.codecs import g711, get_decoder, get_encoder

DATA = Path(__file__).parent / "data"

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop as _audioop
        audioop: ModuleType | None = _audioop
    except ImportError:  # Python >= 3.13
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop removed from this Python")

ALL16 = np.arange(-32768, 32768, dtype=np.int16)
ALL8 = bytes(range(256))


@needs_audioop
def test_encode_every_16bit_value_matches_audioop() -> None:
    assert audioop is not None
    raw = ALL16.astype("=i2").tobytes()
    assert g711.lin2alaw(ALL16).tobytes() == audioop.lin2alaw(raw, 2)
    assert g711.lin2ulaw(ALL16).tobytes() == audioop.lin2ulaw(raw, 2)


@needs_audioop
def test_decode_every_8bit_value_matches_audioop() -> None:
    assert audioop is not None
    assert g711.alaw2lin(ALL8).astype("=i2").tobytes() == audioop.alaw2lin(ALL8, 2)
    assert g711.ulaw2lin(ALL8).astype("=i2").tobytes() == audioop.ulaw2lin(ALL8, 2)


@pytest.mark.parametrize("law", ["alaw", "ulaw"])
def test_matches_golden_vectors(law: str) -> None:
    enc = (DATA / f"g711_{law}_encode.bin").read_bytes()
    dec = np.frombuffer((DATA / f"g711_{law}_decode.bin").read_bytes(), "<i2")
    ours_enc = g711.lin2alaw(ALL16) if law == "alaw" else g711.lin2ulaw(ALL16)
    ours_dec = g711.alaw2lin(ALL8) if law == "alaw" else g711.ulaw2lin(ALL8)
    assert ours_enc.tobytes() == enc
    np.testing.assert_array_equal(ours_dec, dec)


def test_known_g711_points() -> None:
    # Silence codes and full-scale codes from ITU-T G.711 tables 1a/2a.
    assert g711.lin2alaw(np.array([0], np.int16))[0] == 0xD5
    assert g711.lin2ulaw(np.array([0], np.int16))[0] == 0xFF
    assert g711.lin2alaw(np.array([32767], np.int16))[0] == 0xAA
    assert g711.lin2ulaw(np.array([-32768], np.int16))[0] == 0x00
    assert g711.alaw2lin(bytes([0xAA]))[0] == 32256
    assert g711.ulaw2lin(bytes([0x80]))[0] == 32124


def test_round_trip_error_is_within_segment_step() -> None:
    for enc, dec in ((g711.lin2alaw, g711.alaw2lin), (g711.lin2ulaw, g711.ulaw2lin)):
        y = dec(enc(ALL16)).astype(np.int32)
        err = np.abs(y - ALL16.astype(np.int32))
        # relative error of a log-PCM law stays below ~1/32 of the magnitude (+ small floor)
        assert np.all(err <= np.abs(ALL16.astype(np.int32)) / 30 + 16)
    # re-encoding a decoded A-law value is lossless for all 256 codes
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(g711.lin2alaw(g711.alaw2lin(codes)), codes)
    # u-law has two codes for zero (0x7F and 0xFF); all others are fixed points
    same = g711.lin2ulaw(g711.ulaw2lin(codes)) == codes
    assert int(np.count_nonzero(~same)) == 1


def test_float_api_saturates_instead_of_wrapping() -> None:
    x = np.array([1.5, -1.5, 0.999, -1.0], dtype=np.float32)
    y = g711.alaw2float(g711.lin2alaw(x))
    assert y[0] > 0.98 and y[1] < -0.98
    assert np.all(np.abs(y) <= 1.0)


@pytest.mark.parametrize("name", ["pcma", "pcmu"])
def test_encoder_frames_any_block_size(name: str) -> None:
    rng = np.random.default_rng(3)
    x = (0.3 * rng.standard_normal(8000)).astype(np.float32)
    whole = b"".join(get_encoder(name).encode(x))
    for bs in (1, 7, 80, 160, 480, 4096):
        enc = get_encoder(name)
        frames: list[bytes] = []
        for i in range(0, len(x), bs):
            out = enc.encode(x[i:i + bs])
            assert isinstance(out, list)
            frames += out
        assert all(len(f) == 160 for f in frames)
        assert b"".join(frames) == whole
    enc = get_encoder(name)
    assert enc.encode(x[:100]) == []                     # buffering a partial frame
    tail = enc.flush()
    assert len(tail) == 1 and len(tail[0]) == 160        # padded with silence
    dec = get_decoder(name)
    y = np.concatenate([dec.decode(f) for f in tail])
    assert y.dtype == np.float32 and len(y) == 160
    np.testing.assert_allclose(y[:100], x[:100], atol=0.02)


def _ten_seconds() -> np.ndarray[Any, np.dtype[np.int16]]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(80000) * 4000).clip(-32768, 32767).astype(np.int16)


@pytest.mark.benchmark(group="g711-10s")
def test_bench_g711_numpy_encode_decode_10s(benchmark: Any) -> None:
    x = _ten_seconds()

    def run() -> Any:
        return g711.alaw2lin(g711.lin2alaw(x))

    y = benchmark(run)
    assert len(y) == len(x)


@needs_audioop
@pytest.mark.benchmark(group="g711-10s")
def test_bench_g711_audioop_encode_decode_10s(benchmark: Any) -> None:
    assert audioop is not None
    raw = _ten_seconds().tobytes()
    mod = audioop

    def run() -> bytes:
        return bytes(mod.alaw2lin(mod.lin2alaw(raw, 2), 2))

    y = benchmark(run)
    assert len(y) == len(raw)
