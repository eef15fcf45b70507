"""Benchmark: CPU per RTP stream (PCMA, 20 ms) and how many fit in real time on one core.

One stream's work per 20 ms: four engine blocks of 5 ms through ``write`` (resample, encode,
send) and ``read`` (jitter buffer, decode, resample), plus one received packet through the
receive path (parse, decode, buffer). Runs as a quick test with benchmarks disabled.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from brug.gateway.rtp.packet import RtpPacket
from brug.gateway.rtp.payload import make_codec
from brug.gateway.rtp.port import RtpPort

FS = 16000
BLOCK = 80


def _stream_20ms(port: RtpPort, state: dict[str, Any]) -> None:
    blk = (0.2 * np.sin(np.arange(BLOCK) * 0.3)).astype(np.float32)
    out = np.zeros(BLOCK, np.float32)
    seq = state["seq"]
    pkt = RtpPacket(port.pt, seq & 0xFFFF, seq * port.ts_step, 1234, state["payload"])
    port._on_rtp(RtpPacket.parse(bytes(pkt)), state["t0"] + seq * 0.02)
    state["seq"] = seq + 1
    for _ in range(4):
        port.write(blk)
        port.read(out)


@pytest.mark.parametrize("payload", ["pcma", "opus"])
def test_rtp_stream_cpu(benchmark: Any, payload: str) -> None:
    sink = RtpPort("sink", ("127.0.0.1", 0), None, payload=payload)
    sink.start(FS, BLOCK)
    port = RtpPort("ops1", ("127.0.0.1", 0), ("127.0.0.1", sink.local_addr[1]), payload=payload)
    port.start(FS, BLOCK)
    port.set_tx(True)
    speechlike = (0.2 * np.sin(np.arange(port.frame) * 0.05)).astype(np.float32)
    enc = make_codec(payload, port.frame)
    state: dict[str, Any] = {"seq": 0, "t0": 0, "payload": enc.encode(speechlike)}
    try:
        for _ in range(10):
            _stream_20ms(port, state)
        benchmark(_stream_20ms, port, state)
        t = time.perf_counter()
        n = 200
        for _ in range(n):
            _stream_20ms(port, state)
        per = (time.perf_counter() - t) / n
        print(f"\nRTP {payload} stream: {per * 1e6:.0f} us CPU per 20 ms -> "
              f"{0.02 / per:.0f} streams in real time on one core")
        assert port.packets_sent > 0 and port.jb.stats.played > 0
    finally:
        port.stop()
        sink.stop()
