"""RtpPort on loopback: payloads x ptimes, RTP header fields across wrap-around, talkspurts,
RTCP loss/jitter reports, multicast, squelch drivers and site-file errors."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import numpy as np
import pytest

from brug.gateway.rtp.packet import RtpPacket, seq16_diff, ts32_diff
from brug.gateway.rtp.port import RtpConfigError, RtpPort
from brug.gateway.signalling import SignallingConfigError, make_ptt, make_squelch

FS = 16000
BLOCK = 80


def tone(freq: float, n: int, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / FS)).astype(np.float32)


def pair(**kw: Any) -> tuple[RtpPort, RtpPort]:
    rx = RtpPort("rx", ("127.0.0.1", 0), None, **kw)
    rx.start(FS, BLOCK)
    tx = RtpPort("tx", ("127.0.0.1", 0), ("127.0.0.1", rx.local_addr[1]),
                 **kw)
    tx.start(FS, BLOCK)
    return tx, rx


def send(tx: RtpPort, x: np.ndarray, paced: bool = False) -> None:
    for i in range(0, len(x) - BLOCK + 1, BLOCK):
        tx.write(x[i:i + BLOCK])
        if paced:
            time.sleep(BLOCK / FS)


def receive(rx: RtpPort, seconds: float) -> np.ndarray:
    out = np.zeros(BLOCK, np.float32)
    got = []
    for _ in range(int(seconds * FS / BLOCK)):
        rx.read(out)
        got.append(out.copy())
    return np.concatenate(got)


def duplex(tx: RtpPort, rx: RtpPort, x: np.ndarray) -> np.ndarray:
    """Like the engine: per 5 ms tick, write one block to ``tx`` and read one from ``rx``."""
    out = np.zeros(BLOCK, np.float32)
    got = []
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(x) - BLOCK + 1, BLOCK)):
        tx.write(x[i:i + BLOCK])
        rx.read(out)
        got.append(out.copy())
        time.sleep(max(0.0, t0 + (k + 1) * BLOCK / FS - time.monotonic()))
    return np.concatenate(got)


@pytest.mark.parametrize("payload,ptime", [("pcma", 10), ("pcma", 20), ("pcma", 40),
                                           ("pcmu", 30), ("l16", 20), ("opus", 20)])
def test_tone_through_two_ports(payload: str, ptime: int) -> None:
    tx, rx = pair(payload=payload, ptime_ms=ptime)
    try:
        x = tone(1000.0, FS)                       # 1 s of 1 kHz
        tx.set_tx(True)
        y = duplex(tx, rx, np.concatenate([x, np.zeros(FS // 2, np.float32)]))
        assert rx.jb.stats.received == tx.packets_sent > 0
        assert tx.packets_sent == pytest.approx(1500 / ptime, abs=2)   # keyed for 1.5 s
        spec = np.abs(np.fft.rfft(y))
        peak_hz = np.argmax(spec) * FS / len(y)
        assert abs(peak_hz - 1000.0) < 5.0
        win = np.sqrt(np.mean(y[: len(y) // 320 * 320].reshape(-1, 320) ** 2, axis=1))
        active = win[win > 0.1]                   # 20 ms windows carrying the tone
        assert len(active) >= 48                  # the whole second arrived (50 windows)
        assert float(np.median(active)) == pytest.approx(0.3 / np.sqrt(2), rel=0.1)
    finally:
        tx.stop()
        rx.stop()


def _capture(sock: socket.socket) -> list[RtpPacket]:
    pkts = []
    sock.settimeout(0.2)
    while True:
        try:
            pkts.append(RtpPacket.parse(sock.recv(2048)))
        except (TimeoutError, socket.timeout):
            return pkts


def test_header_fields_across_wrap_and_talkspurts() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    tx = RtpPort("tx", ("127.0.0.1", 0), sink.getsockname(), payload="pcma", ptime_ms=20)
    tx.start(FS, BLOCK)
    tx._seq = 65530                                  # force both counters to wrap
    tx._ts0 = 0xFFFFFFFF - 500
    try:
        tx.set_tx(True)
        send(tx, tone(500, FS // 5))                 # 200 ms: 10 packets
        tx.set_tx(False)
        send(tx, np.zeros(FS // 2, np.float32))      # 500 ms of silence: no packets
        tx.set_tx(True)
        send(tx, tone(500, FS // 5))
        pkts = _capture(sink)
    finally:
        tx.stop()
        sink.close()
    assert len(pkts) == 20
    assert len({p.ssrc for p in pkts}) == 1 and all(p.payload_type == 8 for p in pkts)
    assert [p.marker for p in pkts] == [True] + [False] * 9 + [True] + [False] * 9
    for p, q in zip(pkts, pkts[1:]):
        assert seq16_diff(q.sequence_number, p.sequence_number) == 1
    assert pkts[0].sequence_number == 65530 and pkts[10].sequence_number == 4
    steps = [ts32_diff(q.timestamp, p.timestamp) for p, q in zip(pkts, pkts[1:])]
    assert steps[:9] == [160] * 9 and steps[10:] == [160] * 9
    # the silence shows in the timestamp: the second talkspurt starts 200 ms + 500 ms after
    # the first one, i.e. 5600 - 9 * 160 after the last packet of the first
    assert steps[9] == pytest.approx(5600 - 9 * 160, abs=160)
    assert any(q.timestamp < p.timestamp for p, q in zip(pkts, pkts[1:]))   # wrapped


def test_rtcp_reports_loss_and_jitter_both_ways() -> None:
    tx, rx = pair(payload="pcma", rtcp_interval_s=0.2)
    rx.send_addr = ("127.0.0.1", tx.local_addr[1])   # receiver reports back to the sender
    try:
        tx.set_tx(True)
        x = tone(700, BLOCK * 4)
        for k in range(50):
            if k % 10 == 5:
                tx._seq = (tx._seq + 1) & 0xFFFF     # one packet in ten never sent: 10 % loss
            send(tx, x, paced=True)
        time.sleep(0.5)
    finally:
        tx.stop()
        rx.stop()
    assert rx.rx_stats is not None and rx.rx_stats.lost == 5
    assert tx.remote_reports, "no RTCP receiver report reached the sender"
    r = tx.remote_reports[0]
    assert r.packets_lost >= 4 and r.highest_sequence > 0
    assert tx.stats.extra["remote_jitter_ms"] >= 0.0


def test_multicast_group() -> None:
    group = "239.255.77.%d" % (np.random.default_rng().integers(1, 250))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1] & ~1
    try:
        rx = RtpPort("rx", (group, port), None, payload="pcmu", interface="127.0.0.1")
        rx.start(FS, BLOCK)
    except OSError as exc:
        pytest.skip(f"no multicast here: {exc}")
    tx = RtpPort("tx", ("127.0.0.1", 0), (group, port), payload="pcmu", ttl=0,
                 interface="127.0.0.1")
    tx.start(FS, BLOCK)
    try:
        tx.set_tx(True)
        send(tx, tone(1000, FS // 2))
        time.sleep(0.3)
        if rx.jb.stats.received == 0:
            pytest.skip("multicast loopback is not routed on this host")
        assert rx.jb.stats.received == tx.packets_sent
    finally:
        tx.stop()
        rx.stop()


def test_stream_squelch_follows_packets_with_hang_and_reports_jitter() -> None:
    tx, rx = pair(payload="pcma")
    sq = make_squelch("stream", port=rx, hang_ms=300)
    ptt = make_ptt("rtp", port=tx)
    try:
        assert sq.state(0) == (False, "rtp stream stopped")
        ptt.set_tx(True)
        send(tx, tone(800, FS), paced=True)
        ptt.set_tx(False)
        out = np.zeros(BLOCK, np.float32)
        states = []
        for _ in range(int(2.0 * FS / BLOCK)):
            rx.read(out)
            states.append(sq.state(rx.samples_read)[0])
    finally:
        tx.stop()
        rx.stop()
    opened = states.index(True)
    closed = len(states) - states[::-1].index(True)
    held_ms = (closed - opened) * BLOCK * 1000 / FS
    assert 1000 + 300 - 60 <= held_ms <= 1000 + 300 + 60      # the over plus the hang
    assert any(e.topic == "port.rx.jitter" for e in sq.poll_events())


def test_site_file_errors_name_the_field() -> None:
    with pytest.raises(RtpConfigError, match=r"ptime_ms=25 is not one of: 10, 20, 30, 40"):
        RtpPort.from_config("ops1", {"listen": "127.0.0.1:4000", "ptime_ms": 25})
    with pytest.raises(RtpConfigError, match=r"ports.ops1.listen='4000' is not HOST:PORT"):
        RtpPort.from_config("ops1", {"listen": "4000"})
    with pytest.raises(RtpConfigError, match=r"ports.ops1.payload: unknown key|payload='g729'"):
        RtpPort.from_config("ops1", {"listen": "127.0.0.1:4000", "payload": "g729"})
    with pytest.raises(RtpConfigError, match=r"ports.ops1.bogus: unknown key"):
        RtpPort.from_config("ops1", {"listen": "127.0.0.1:4000", "bogus": 1})
    with pytest.raises(SignallingConfigError, match="only on a port of type rtp or link"):
        make_squelch("stream", port=object(), hang_ms=300)
    assert make_squelch("stream", hang_ms=300).state(0) == (
        False, "not bound to a port of type rtp or link")
    assert RtpConfigError.user_error


def test_ssrc_differs_between_ports() -> None:
    a = RtpPort("a", ("127.0.0.1", 0), None)
    b = RtpPort("b", ("127.0.0.1", 0), None)
    assert a.ssrc != b.ssrc
    assert struct.calcsize("!I") == 4


def test_site_file_rtp_ports_through_the_gateway() -> None:
    """A site file with two RTP ports (PCMA console in, PCMU console out) patched together:
    the lead's loader builds them with from_config and bind_drivers; audio crosses."""
    from brug.gateway.service import Gateway
    from brug.gateway.site import parse_site_text

    def free() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    p_ops1, p_ops2 = free(), free()
    src = RtpPort("console-a", ("127.0.0.1", 0), ("127.0.0.1", p_ops1), payload="pcma")
    dst = RtpPort("console-b", ("127.0.0.1", 0), None, payload="pcmu")
    src.start(FS, BLOCK)
    dst.start(FS, BLOCK)
    site = parse_site_text(f"""
engine: {{rate_hz: 16000, block_ms: 5}}
ports:
  ops1: {{type: rtp, listen: "127.0.0.1:{p_ops1}", send: "127.0.0.1:{src.local_addr[1]}",
         payload: pcma, ptime_ms: 20, squelch: {{type: stream, hang_ms: 300}}, ptt: {{type: rtp}},
         network: console, talkgroup: DISP}}
  ops2: {{type: rtp, listen: "127.0.0.1:{p_ops2}", send: "127.0.0.1:{dst.local_addr[1]}",
         payload: pcmu, squelch: {{type: stream, hang_ms: 300}}, network: console2,
         talkgroup: DISP2}}
patches:
  P: {{members: [ops1, ops2]}}
""")
    gw = Gateway(site)
    gw.start()
    try:
        time.sleep(0.2)
        src.set_tx(True)
        y = duplex(src, dst, np.concatenate([tone(600.0, FS), np.zeros(FS, np.float32)]))
    finally:
        gw.stop()
        src.stop()
        dst.stop()
    win = np.sqrt(np.mean(y[: len(y) // 320 * 320].reshape(-1, 320) ** 2, axis=1))
    assert int(np.sum(win > 0.05)) >= 45          # about 1 s of the tone came out of ops2
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * FS / len(y) - 600.0) < 5.0


def test_garbage_and_corrupt_payloads_do_not_stop_reception() -> None:
    tx, rx = pair(payload="opus")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            dst = ("127.0.0.1", rx.local_addr[1])
            s.sendto(b"\x80", dst)                                   # truncated
            s.sendto(b"\x00" * 40, dst)                              # wrong version
            for k in range(5):                                       # not Opus at all
                s.sendto(bytes(RtpPacket(96, k, k * 960, 99, b"\xff" * 7)), dst)
        time.sleep(0.2)
        rx.read(np.zeros(BLOCK, np.float32))
        tx.set_tx(True)
        y = duplex(tx, rx, np.concatenate([tone(440.0, FS // 2), np.zeros(FS // 2, np.float32)]))
    finally:
        tx.stop()
        rx.stop()
    assert rx.stats.extra.get("malformed", 0) >= 2
    assert float(np.max(np.abs(y))) > 0.2          # the real stream after the garbage plays
