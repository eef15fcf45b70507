"""RTP/RTCP wire formats, wrap-around helpers, RFC 3550 statistics, ED-137 extension."""

from __future__ import annotations

import numpy as np
import pytest

from brug.gateway.rtp.ed137 import ED137_PROFILE, Ed137Header, FloorClaim, PttType, site_id
from brug.gateway.rtp.packet import (
    ReceptionStats,
    ReportBlock,
    RtcpBye,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtpPacket,
    is_rtcp,
    parse_rtcp,
    seq16_add,
    seq16_diff,
    seq16_gt,
    ts32_add,
    ts32_diff,
)
from brug.gateway.rtp.payload import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode


def test_rtp_round_trip_with_extension_and_csrc() -> None:
    p = RtpPacket(8, 65535, 0xFFFFFFF0, 0x12345678, b"\xd5" * 160, marker=True,
                  csrc=[1, 2], extension_profile=ED137_PROFILE, extension=b"\x20\x40\x00\x00")
    q = RtpPacket.parse(bytes(p))
    assert q == p
    assert bytes(p)[:2] == bytes([0x80 | 0x10 | 2, 0x80 | 8])


def test_rtp_parse_errors_are_exact() -> None:
    with pytest.raises(ValueError, match="less than 12 bytes"):
        RtpPacket.parse(b"\x80\x08\x00")
    with pytest.raises(ValueError, match="invalid version 1"):
        RtpPacket.parse(b"\x40" + b"\x00" * 11)
    with pytest.raises(ValueError, match="truncated extension value"):
        RtpPacket.parse(b"\x90\x08" + b"\x00" * 10 + b"\x01\x67\x00\x02" + b"\x00" * 4)


def test_rtp_padding_is_stripped() -> None:
    raw = bytearray(bytes(RtpPacket(0, 1, 2, 3, b"abc")))
    raw[0] |= 0x20
    raw += b"\x00\x00\x03"
    assert RtpPacket.parse(bytes(raw)).payload == b"abc"


@pytest.mark.parametrize("a,b,d", [(0, 65535, 1), (65535, 0, -1), (10, 5, 5), (32767, 0, 32767)])
def test_seq16_diff_across_wrap(a: int, b: int, d: int) -> None:
    assert seq16_diff(a, b) == d
    assert seq16_add(b, d) == a
    assert seq16_gt(a, b) == (d > 0)


def test_ts32_wrap() -> None:
    assert ts32_add(0xFFFFFF00, 0x200) == 0x100
    assert ts32_diff(0x100, 0xFFFFFF00) == 0x200


def test_rtcp_compound_round_trip() -> None:
    rb = ReportBlock(0xAABBCCDD, 25, -3, 70000, 123, 0x11112222, 65536)
    data = (bytes(RtcpSenderReport(1, 0x0102030405060708, 160, 10, 1600, [rb]))
            + bytes(RtcpReceiverReport(2, [rb])) + bytes(RtcpSdes(1, "brug-ops1"))
            + bytes(RtcpBye([1])))
    assert is_rtcp(data)
    sr, rr, sdes, bye = parse_rtcp(data)
    assert isinstance(sr, RtcpSenderReport) and sr.reports == [rb] and sr.octet_count == 1600
    assert isinstance(rr, RtcpReceiverReport) and rr.reports[0].packets_lost == -3
    assert isinstance(sdes, RtcpSdes) and sdes.cname == "brug-ops1"
    assert isinstance(bye, RtcpBye) and bye.sources == [1]


def test_reception_stats_loss_wrap_and_jitter() -> None:
    st = ReceptionStats(7)
    seqs = [(65530 + i) & 0xFFFF for i in range(20) if i not in (3, 11)]
    for k, s in enumerate(seqs):
        i = seq16_diff(s, 65530)
        st.update(s, i * 160, i * 160 + (40 if k % 2 else 0))   # alternating 40-unit jitter
    rb = st.report_block()
    assert st.cycles == 1 << 16 and rb.highest_sequence == (1 << 16) + 13
    assert rb.packets_lost == 2 and rb.fraction_lost == (2 << 8) // 20
    # A.8: |D| = 40 every packet; J converges towards 40 from below
    assert 25 < rb.jitter <= 40


def test_g711_round_trip_is_close() -> None:
    x = (0.5 * np.sin(np.arange(800) * 0.05)).astype(np.float32)
    for enc, dec in ((alaw_encode, alaw_decode), (ulaw_encode, ulaw_decode)):
        y = dec(enc(x))
        assert np.max(np.abs(y - x)) < 0.02


def test_ed137_header_round_trip_and_bits() -> None:
    claim = FloorClaim(3, 123456, site_id("be-site"))
    h = Ed137Header(ptt_type=PttType.NORMAL, squ=True, ptt_id=5, features=[claim.to_feature()])
    raw = bytes(h)
    assert len(raw) % 4 == 0
    assert raw[0] >> 5 == 1 and raw[0] & 0x10        # PTT type 1, SQU set
    assert ((raw[0] << 8 | raw[1]) >> 6) & 0x3F == 5
    back = Ed137Header.parse(raw)
    assert back.ptt and back.squ and back.ptt_id == 5
    fv = back.feature(15)
    assert fv is not None and FloorClaim.from_feature(fv) == claim
    with pytest.raises(ValueError, match="PTT id 64 is out of range"):
        bytes(Ed137Header(ptt_id=64))


def test_floor_claim_rule_is_antisymmetric() -> None:
    a, b = site_id("site-a"), site_id("site-b")
    cases = [(FloorClaim(1, 500, a), FloorClaim(0, 100, b)),       # priority first
             (FloorClaim(0, 100, a), FloorClaim(0, 130, b)),       # then earlier key-up
             (FloorClaim(0, 0xFFFFFFF0, a), FloorClaim(0, 5, b)),  # earlier across the wrap
             (FloorClaim(0, 100, min(a, b)), FloorClaim(0, 100, max(a, b)))]  # then site id
    for win, lose in cases:
        assert win.beats(lose) and not lose.beats(win)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_never_raises_anything_but_valueerror(data: bytes) -> None:
    """The receive thread survives any datagram: malformed input is a ValueError, counted."""
    for parse in (RtpPacket.parse, parse_rtcp, Ed137Header.parse):
        try:
            parse(data)
        except ValueError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=12, max_size=80))
def test_garbage_behind_a_valid_rtcp_header_never_crashes(tail: bytes) -> None:
    for pt in (200, 201, 202, 203):
        body = tail[1:] + b"\x00" * (-len(tail[1:]) % 4)      # a consistent length field
        data = bytes([0x80 | (tail[0] & 0x1F), pt]) + (len(body) // 4).to_bytes(2, "big") + body
        try:
            parse_rtcp(data)
        except ValueError:
            pass
