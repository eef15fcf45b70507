"""Sample formats: exact scaling, channel selection, saturation counted, no allocation with out=."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from brug.codecs.formats import FromMono, ToMono, from_mono, to_mono

from helpers import DATA


def _stereo(n: int = 480) -> np.ndarray[Any, Any]:
    """Left: a ramp over the whole int16 range; right: its negative (distinct per channel)."""
    left = np.linspace(-32768, 32767, n).astype(np.int16)
    right = (-left.astype(np.int32)).clip(-32768, 32767).astype(np.int16)
    return np.stack([left, right], axis=1)


def test_int16_scaling_is_exact_and_round_trips_every_code() -> None:
    codes = np.arange(-32768, 32768, dtype=np.int16)
    x = to_mono(codes)
    assert x.dtype == np.float32
    assert x[0] == -1.0 and x[32768] == 0.0 and x[-1] == np.float32(32767 / 32768)
    back, clipped = from_mono(x, "int16")
    np.testing.assert_array_equal(back, codes)
    assert clipped == 0


def test_int32_and_float32_inputs() -> None:
    a = np.array([-2**31, -2**30, 0, 2**30, 2**31 - 1], dtype=np.int32)
    np.testing.assert_allclose(to_mono(a), [-1.0, -0.5, 0.0, 0.5, 1.0], atol=1e-9)
    f = np.array([0.25, -1.5, 1.5], dtype=np.float32)      # float passes unchanged, even > 1
    np.testing.assert_array_equal(to_mono(f), f)
    # int32 through float32 keeps 24 bits: the round trip is within 2**7 codes
    rng = np.random.default_rng(3)
    r = rng.integers(-2**31, 2**31 - 1, 10000, dtype=np.int64).astype(np.int32)
    back, clipped = from_mono(to_mono(r), "int32")
    assert int(np.max(np.abs(back.astype(np.int64) - r))) <= 128
    assert clipped <= 1                         # values within 128 of +full scale may saturate


def test_channel_selection_and_downmix() -> None:
    st = _stereo()
    np.testing.assert_array_equal(to_mono(st, channel=0), st[:, 0] / np.float32(32768))
    np.testing.assert_array_equal(to_mono(st, channel=1), st[:, 1] / np.float32(32768))
    mix = to_mono(st, channel="mix")
    np.testing.assert_allclose(mix, (st[:, 0].astype(np.float64) + st[:, 1]) / 2 / 32768,
                               atol=1e-7)
    # a signal on both channels keeps its level in the mix
    both = np.stack([st[:, 0], st[:, 0]], axis=1)
    np.testing.assert_allclose(to_mono(both, channel="mix"), to_mono(st[:, 0]), atol=1e-7)
    # four-channel card, terminal on channel 2
    quad = np.zeros((100, 4), np.int16)
    quad[:, 2] = 1000
    assert np.all(ToMono("int16", 4, 2).convert(quad) == np.float32(1000 / 32768))
    assert np.all(ToMono("int16", 4, 1).convert(quad) == 0.0)


def test_bytes_in_any_byte_order_equal_the_array_path() -> None:
    st = _stereo(96)
    for dt in ("<i2", ">i2"):
        raw = st.astype(dt).tobytes()
        for ch in (0, 1, "mix"):
            np.testing.assert_array_equal(
                to_mono(raw, dtype=dt, channels=2, channel=ch), to_mono(st, channel=ch))
    f32 = np.array([0.5, -0.25, 0.125], dtype="<f4").tobytes()
    np.testing.assert_array_equal(to_mono(f32, dtype="float32"), [0.5, -0.25, 0.125])
    assert to_mono(memoryview(bytearray(st.tobytes())), dtype="int16", channels=2,
                   channel=1).shape == (96,)


def test_matches_libsndfile_on_real_speech() -> None:
    pcm, rate = sf.read(str(DATA / "engine_allison_callsign.wav"), dtype="int16")
    ref, _ = sf.read(str(DATA / "engine_allison_callsign.wav"), dtype="float32")
    np.testing.assert_array_equal(to_mono(pcm), ref)
    back, clipped = from_mono(to_mono(pcm), "int16")
    np.testing.assert_array_equal(back, pcm)
    assert clipped == 0 and rate == 8000


def test_saturation_never_wraps_and_is_counted() -> None:
    x = np.array([0.0, 0.999, 1.0, 1.5, 1e9, np.inf, -1.0, -1.0001, -np.inf, np.nan],
                 dtype=np.float32)
    conv = FromMono("int16")
    y = conv.convert(x)
    np.testing.assert_array_equal(
        y, [0, 32735, 32767, 32767, 32767, 32767, -32768, -32768, -32768, 0])
    # 1.0 itself does not fit (+32768): saturated; -1.0 fits exactly
    assert conv.last_clipped == 7 and conv.clipped == 7
    conv.convert(np.array([0.5, 2.0], np.float32))
    assert conv.last_clipped == 1 and conv.clipped == 8 and conv.samples == 12
    conv.reset()
    assert (conv.clipped, conv.last_clipped, conv.samples) == (0, 0, 0)
    y32, n32 = from_mono(np.array([1.0, -1.0, 0.5, 3.0], np.float32), "int32")
    np.testing.assert_array_equal(y32, [2**31 - 1, -2**31, 2**30, 2**31 - 1])
    assert n32 == 2
    yf, nf = from_mono(np.array([1.0, -1.2, 0.3, np.nan], np.float32), "float32")
    np.testing.assert_array_equal(yf, np.array([1.0, -1.0, 0.3, 0.0], np.float32))
    assert nf == 2


def test_rounds_to_nearest_code() -> None:
    lsb = 1.0 / 32768
    x = np.array([0.4 * lsb, 0.6 * lsb, -0.6 * lsb, 100.49 * lsb, 100.51 * lsb], np.float64)
    y, _ = from_mono(x, "int16")
    np.testing.assert_array_equal(y, [0, 1, -1, 100, 101])


def test_one_channel_of_an_interleaved_buffer() -> None:
    x = np.array([0.5, -0.5, 0.25], np.float32)
    fresh, _ = from_mono(x, "int16", channels=2, channel=1)
    np.testing.assert_array_equal(fresh, [[0, 16384], [0, -16384], [0, 8192]])
    buf = np.full((3, 2), 7, np.int16)              # the other port's samples stay
    y, _ = from_mono(x, "int16", channels=2, channel=0, out=buf)
    np.testing.assert_array_equal(buf, [[16384, 7], [-16384, 7], [8192, 7]])
    assert np.shares_memory(y, buf)
    conv = FromMono("int16", 2, "all")
    both = conv.convert(np.array([2.0, 0.5], np.float32))
    np.testing.assert_array_equal(both, [[32767, 32767], [16384, 16384]])
    assert conv.last_clipped == 1                   # counted once per sample, not per channel


def test_out_buffers_larger_than_the_block_and_empty_blocks() -> None:
    big = np.full(1000, -9.0, np.float32)
    st = _stereo(240)
    y = ToMono("int16", 2, 0).convert(st, out=big)
    assert y.shape == (240,) and np.shares_memory(y, big)
    assert big[240] == -9.0
    assert ToMono("int16", 2, 0).convert(np.zeros((0, 2), np.int16)).shape == (0,)
    assert ToMono("int16").convert(b"").shape == (0,)
    outbuf = np.zeros((500, 2), np.int16)
    conv = FromMono("int16", 2, 1)
    assert conv.convert(np.zeros(0, np.float32), out=outbuf).shape == (0, 2)
    assert conv.convert(np.full(10, 0.5, np.float32), out=outbuf).shape == (10, 2)
    assert outbuf[9, 1] == 16384 and outbuf[10, 1] == 0
    # mono given as (frames, 1) both ways
    col = np.arange(5, dtype=np.int16)[:, None]
    np.testing.assert_array_equal(ToMono("int16").convert(col), col[:, 0] / np.float32(32768))
    o1 = np.zeros((5, 1), np.int16)
    FromMono("int16").convert(np.full(5, 0.5, np.float32), out=o1)
    assert np.all(o1 == 16384)


@pytest.mark.parametrize("conv,dtype", [("to", "int16"), ("to", "int32"), ("mix", "int16"),
                                        ("from", "int16"), ("from", "int32"),
                                        ("from", "float32")])
def test_no_allocation_with_out(conv: str, dtype: str) -> None:
    n = 4800                                        # 100 ms stereo at 48 kHz: 19 kB of data
    st = _stereo(n).astype(dtype)
    mono = (_stereo(n)[:, 0] / 40000).astype(np.float32)
    out_f = np.empty(n, np.float32)
    out_i = np.empty((n, 2), dtype)
    to = ToMono(dtype, 2, "mix" if conv == "mix" else 1)
    fr = FromMono(dtype, 2, 0)

    def call() -> None:
        if conv == "from":
            fr.convert(mono, out=out_i)
        else:
            to.convert(st, out=out_f)

    call()                                          # warm-up: FromMono grows its scratch once
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            call()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 2000, f"{peak} bytes allocated per block"


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unsupported sample type 'int8'; known: int16, int32, "
                                         "float32"):
        ToMono("int8")
    with pytest.raises(ValueError, match="unsupported sample type 'float64'"):
        FromMono("float64")
    with pytest.raises(ValueError, match=r"channel 2 out of range for 2 channel\(s\) \(0..1\)"):
        ToMono("int16", 2, 2)
    with pytest.raises(ValueError, match=r"channel must be an index 0..1 or 'all', got 'mix'"):
        FromMono("int16", 2, "mix")
    with pytest.raises(ValueError, match="channels must be an integer >= 1, got 0"):
        ToMono("int16", 0)
    with pytest.raises(ValueError, match="expected int16 samples, got float32"):
        ToMono("int16").convert(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"expected interleaved shape \(frames, 2\), got "
                                         r"\(10, 3\)"):
        ToMono("int16", 2).convert(np.zeros((10, 3), np.int16))
    with pytest.raises(ValueError, match=r"expected shape \(frames,\) or \(frames, 1\) for mono "
                                         r"input, got \(10, 2\)"):
        ToMono("int16").convert(np.zeros((10, 2), np.int16))
    with pytest.raises(ValueError, match="7 bytes is not a whole number of frames of 2 x int16 "
                                         r"\(4 bytes per frame\)"):
        ToMono("int16", 2).convert(b"\x00" * 7)
    with pytest.raises(ValueError, match="raw bytes need a dtype"):
        to_mono(b"\x00\x00")
    with pytest.raises(ValueError, match=r"expected 1-D mono samples, got shape \(2, 3\)"):
        FromMono().convert(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="expected float samples"):
        FromMono().convert(np.zeros(3, np.int16))
    with pytest.raises(ValueError, match="out holds 2 frames, the block has 3 samples"):
        FromMono().convert(np.zeros(3, np.float32), out=np.zeros(2, np.int16))
    with pytest.raises(ValueError, match="out must be a int16 array"):
        FromMono().convert(np.zeros(3, np.float32), out=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="out must be a 1-D float32 array"):
        ToMono().convert(np.zeros(3, np.int16), out=np.zeros(3, np.float64))


@pytest.mark.benchmark(group="formats-5ms")
def test_bench_to_mono_48k_stereo_int16_5ms(benchmark: Any) -> None:
    conv = ToMono("int16", 2, 1)
    block = _stereo(240)
    out = np.empty(240, np.float32)
    y = benchmark(conv.convert, block, out)
    assert y.shape == (240,)


@pytest.mark.benchmark(group="formats-5ms")
def test_bench_from_mono_48k_stereo_int16_5ms(benchmark: Any) -> None:
    conv = FromMono("int16", 2, 0)
    x = np.linspace(-0.9, 0.9, 240).astype(np.float32)
    out = np.zeros((240, 2), np.int16)
    y = benchmark(conv.convert, x, out)
    assert y.shape == (240, 2) and conv.clipped == 0


@pytest.mark.benchmark(group="formats-5ms")
def test_bench_to_mono_48k_stereo_int16_bytes_5ms(benchmark: Any) -> None:
    conv = ToMono("int16", 2, 0)
    raw = _stereo(240).tobytes()
    out = np.empty(240, np.float32)
    y = benchmark(conv.convert, raw, out)
    assert y.shape == (240,)
