"""The SPSC ring between PortAudio callbacks and the engine: order, wraparound, counts,
no allocation, and two real threads."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from brug.gateway.ring import Ring


def test_capacity_rounds_up_to_power_of_two() -> None:
    assert Ring(1000).capacity == 1024
    assert Ring(1024).capacity == 1024
    with pytest.raises(ValueError, match="capacity"):
        Ring(0)


@pytest.mark.parametrize("block", [1, 7, 160, 333])
def test_stream_survives_wraparound_in_order(block: int) -> None:
    r = Ring(512)
    x = np.arange(20000, dtype=np.float32)
    out = np.empty(block, np.float32)
    got = []
    for i in range(0, len(x), block):
        assert r.write(x[i:i + block]) == len(x[i:i + block])
        n = r.read_into(out[:len(x[i:i + block])])
        got.append(out[:n].copy())
    np.testing.assert_array_equal(np.concatenate(got), x)
    assert r.overruns == r.underruns == 0


def test_overrun_drops_newest_and_counts() -> None:
    r = Ring(8)
    assert r.write(np.arange(6, dtype=np.float32)) == 6
    assert r.write(np.arange(6, 11, dtype=np.float32)) == 2   # 3 samples do not fit
    assert (r.overruns, r.overrun_samples, r.fill, r.space) == (1, 3, 8, 0)
    out = np.empty(8, np.float32)
    r.read_into(out)
    assert out.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_underrun_zero_fills_and_counts() -> None:
    r = Ring(16)
    r.write(np.ones(3, np.float32))
    out = np.full(5, 9.0, np.float32)
    assert r.read_into(out) == 3
    assert out.tolist() == [1, 1, 1, 0, 0]
    assert (r.underruns, r.underrun_samples) == (1, 2)
    assert r.read_into(out) == 0 and not out.any() and r.underruns == 2


def test_strided_views_as_portaudio_gives_them() -> None:
    r = Ring(64)
    indata = np.arange(40, dtype=np.float32).reshape(20, 2)   # 2 channels, take channel 1
    r.write(indata[:, 1])
    outdata = np.zeros((20, 2), np.float32)
    r.read_into(outdata[:, 0])
    np.testing.assert_array_equal(outdata[:, 0], indata[:, 1])
    assert not outdata[:, 1].any()


def test_zeros_discard_and_clear() -> None:
    r = Ring(32)
    r.write(np.ones(4, np.float32))
    assert r.write_zeros(4) == 4 and r.fill == 8
    assert r.discard(2) == 2 and r.fill == 6
    r.clear()
    assert r.fill == 0 and r.space == 32


def test_hot_path_allocates_no_sample_buffers() -> None:
    r = Ring(4096)
    x = np.ones(480, np.float32)
    out = np.empty(480, np.float32)
    for _ in range(20):  # warm up
        r.write(x)
        r.read_into(out)
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    tracemalloc.reset_peak()
    for _ in range(2000):
        r.write(x)
        r.read_into(out)
    _, peak = tracemalloc.get_traced_memory()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    # one copy of a block would be 1920 bytes; view objects are a few hundred bytes at most
    assert peak < 1900 and grown < 1900


def test_two_threads_pass_every_sample_in_order() -> None:
    r = Ring(256)
    total = 50_000
    got = np.empty(total, np.float32)

    def producer() -> None:
        x = np.arange(total, dtype=np.float32)
        i = 0
        while i < total:
            i += r.write(x[i:i + min(97, r.space)])

    t = threading.Thread(target=producer)
    t.start()
    pos = 0
    buf = np.empty(61, np.float32)
    while pos < total:
        n = min(61, r.fill, total - pos)
        if n:
            r.read_into(buf[:n])
            got[pos:pos + n] = buf[:n]
            pos += n
    t.join()
    np.testing.assert_array_equal(got, np.arange(total, dtype=np.float32))
    assert r.overruns == 0 and r.underruns == 0


def test_bench_callback_copy(benchmark: object) -> None:
    """What one PortAudio callback costs the ring side: write 160 samples, read 160."""
    r = Ring(1 << 15)
    indata = np.ones((160, 1), np.float32)
    outdata = np.zeros((160, 1), np.float32)
    r.write_zeros(1000)

    def callback() -> None:
        r.write(indata[:, 0])
        r.read_into(outdata[:, 0])

    benchmark(callback)  # type: ignore[operator]
    assert r.fill == 1000 and r.overruns == r.underruns == 0
