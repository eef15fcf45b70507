"""Adaptive jitter buffer: reordering, wrap-around, concealment, late packets, adaptation."""

from __future__ import annotations

import numpy as np
import pytest

from brug.gateway.rtp.jitter import JitterBuffer
from brug.gateway.rtp.packet import seq16_add


def frame(v: float) -> np.ndarray:
    return np.full(160, v, np.float32)


def test_capacity_must_be_power_of_two() -> None:
    with pytest.raises(ValueError, match="not a power of two"):
        JitterBuffer(capacity=48)


def test_reorders_across_sequence_wrap() -> None:
    jb = JitterBuffer(20, 8000, min_delay_ms=40)
    seqs = [65534, 0, 65535, 1, 2]            # out of order, across the wrap
    for k, s in enumerate(seqs):
        jb.put(s, k * 160, frame(float(seq16_add(s, 2))), k * 0.02)
    got = [jb.get()[0] for _ in range(5)]
    assert [float(f[0]) for f in got if f is not None] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_single_loss_is_concealed_and_late_packet_counted() -> None:
    jb = JitterBuffer(20, 8000, min_delay_ms=40)
    for s in (10, 11, 13, 14):
        jb.put(s, s * 160, frame(0.8), s * 0.02)
    out = [jb.get()[0] for _ in range(4)]
    assert all(f is not None for f in out)
    assert out[2] is not None and float(np.max(np.abs(out[2]))) > 0.3   # concealed, not silence
    assert jb.stats.concealed == 1 and jb.stats.lost == 1
    jb.put(12, 12 * 160, frame(0.8), 0.3)       # arrives after its slot was played
    assert jb.stats.late == 1


def silence_gap(jb: JitterBuffer) -> None:
    """The talker stopped: play out what is left, then the port reports the gap."""
    while jb.get()[0] is not None:
        pass
    jb.end_of_stream()


def test_delay_grows_with_jitter_and_shrinks_in_silence() -> None:
    rng = np.random.default_rng(1)
    jb = JitterBuffer(20, 8000, min_delay_ms=40, max_delay_ms=400)
    start = jb.delay_ms
    for s in range(200):
        jb.put(s, s * 160, frame(0.1), s * 0.02 + float(rng.uniform(0, 0.04)))
        jb.get()
    grown = jb.delay_ms
    assert grown > start
    for _ in range(20):
        silence_gap(jb)
    # the estimate stays high until a calm stream lowers it; then gaps shrink one frame each
    for s in range(200, 600):
        jb.put(s, s * 160, frame(0.1), s * 0.02)
        jb.get()
    for _ in range(20):
        silence_gap(jb)
    assert jb.delay_ms < grown


def test_stream_end_stops_playout_without_counting_loss() -> None:
    jb = JitterBuffer(20, 8000, min_delay_ms=20)
    for s in range(5):
        jb.put(s, s * 160, frame(0.2), s * 0.02)
    played = [jb.get()[0] for _ in range(8)]
    assert sum(f is not None for f in played) == 5
    assert jb.stats.lost == 0 and not jb.playing
