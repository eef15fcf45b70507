"""RTP and RTCP wire formats (RFC 3550) as dataclasses with ``parse()`` and ``__bytes__``.

Sequence numbers are 16-bit and timestamps 32-bit counters that wrap; the ``seq16_*`` and
``ts32_*`` helpers compare and step them correctly across the wrap (RFC 1982 serial arithmetic).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

RTP_VERSION = 2
RTP_HEADER_SIZE = 12

# RTCP packet types (RFC 3550 section 12.1)
RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203


def seq16_add(a: int, n: int) -> int:
    """Return ``a + n`` modulo 2**16."""
    return (a + n) & 0xFFFF


def seq16_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` of two 16-bit sequence numbers, in -32768..32767."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def seq16_gt(a: int, b: int) -> bool:
    """True if ``a`` comes after ``b`` (modulo 2**16)."""
    return seq16_diff(a, b) > 0


def ts32_add(a: int, n: int) -> int:
    """Return ``a + n`` modulo 2**32."""
    return (a + n) & 0xFFFFFFFF


def ts32_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` of two 32-bit RTP timestamps."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


@dataclass
class RtpPacket:
    """One RTP packet.

    ``extension_profile`` and ``extension`` hold the RFC 3550 section 5.3.1 header extension
    (16-bit profile-defined id and its body, a multiple of 4 bytes); ``extension`` is ``None``
    when the X bit is clear.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int = 0
    extension: bytes | None = None

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a datagram; raise ``ValueError`` on a malformed one."""
        if len(data) < RTP_HEADER_SIZE:
            raise ValueError("RTP packet length is less than 12 bytes")
        b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data, 0)
        if b0 >> 6 != RTP_VERSION:
            raise ValueError(f"RTP packet has invalid version {b0 >> 6}")
        padding = bool(b0 & 0x20)
        has_ext = bool(b0 & 0x10)
        cc = b0 & 0x0F
        pos = RTP_HEADER_SIZE
        if len(data) < pos + 4 * cc:
            raise ValueError("RTP packet has truncated CSRC")
        csrc = list(struct.unpack_from(f"!{cc}I", data, pos))
        pos += 4 * cc
        ext_profile = 0
        ext: bytes | None = None
        if has_ext:
            if len(data) < pos + 4:
                raise ValueError("RTP packet has truncated extension profile / length")
            ext_profile, ext_len = struct.unpack_from("!HH", data, pos)
            pos += 4
            if len(data) < pos + 4 * ext_len:
                raise ValueError("RTP packet has truncated extension value")
            ext = bytes(data[pos:pos + 4 * ext_len])
            pos += 4 * ext_len
        end = len(data)
        if padding:
            pad = data[-1]
            if pad == 0 or end - pad < pos:
                raise ValueError("RTP packet padding length is invalid")
            end -= pad
        return cls(payload_type=b1 & 0x7F, sequence_number=seq, timestamp=ts, ssrc=ssrc,
                   payload=bytes(data[pos:end]), marker=bool(b1 & 0x80), csrc=csrc,
                   extension_profile=ext_profile, extension=ext)

    def __bytes__(self) -> bytes:
        has_ext = self.extension is not None
        b0 = (RTP_VERSION << 6) | (0x10 if has_ext else 0) | len(self.csrc)
        b1 = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        out = struct.pack("!BBHII", b0, b1, self.sequence_number & 0xFFFF,
                          self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF)
        if self.csrc:
            out += struct.pack(f"!{len(self.csrc)}I", *self.csrc)
        if self.extension is not None:
            if len(self.extension) % 4:
                raise ValueError("RTP extension length must be a multiple of 4 bytes")
            out += struct.pack("!HH", self.extension_profile, len(self.extension) // 4)
            out += self.extension
        return out + self.payload


@dataclass
class ReportBlock:
    """One reception report block (RFC 3550 section 6.4.1)."""

    ssrc: int
    fraction_lost: int = 0     # lost fraction since last report, fixed point /256
    packets_lost: int = 0      # cumulative, signed 24 bit
    highest_sequence: int = 0  # extended highest sequence number received
    jitter: int = 0            # interarrival jitter, timestamp units
    lsr: int = 0               # middle 32 bits of the last SR's NTP time
    dlsr: int = 0              # delay since last SR, 1/65536 s

    SIZE = 24

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if len(data) < cls.SIZE:
            raise ValueError("RTCP report block length is less than 24 bytes")
        ssrc, lost_word, hs, jit, lsr, dlsr = struct.unpack_from("!IIIIII", data, 0)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, hs, jit, lsr, dlsr)

    def __bytes__(self) -> bytes:
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost)) & 0xFFFFFF
        return struct.pack("!IIIIII", self.ssrc, ((self.fraction_lost & 0xFF) << 24) | lost,
                           self.highest_sequence & 0xFFFFFFFF, self.jitter & 0xFFFFFFFF,
                           self.lsr, self.dlsr)


def _rtcp_header(pt: int, count: int, body_len: int) -> bytes:
    return struct.pack("!BBH", (RTP_VERSION << 6) | count, pt, (4 + body_len) // 4 - 1)


@dataclass
class RtcpSenderReport:
    """RTCP SR (PT 200): sender info plus reception reports."""

    ssrc: int
    ntp_timestamp: int = 0     # 64-bit NTP time
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count = data[0] & 0x1F
        if len(data) < 28 + 24 * count:
            raise ValueError("RTCP sender report length is truncated")
        ssrc, ntp, rtp_ts, pc, oc = struct.unpack_from("!IQIII", data, 4)
        reports = [ReportBlock.parse(data[28 + 24 * i:]) for i in range(count)]
        return cls(ssrc, ntp, rtp_ts, pc, oc, reports)

    def __bytes__(self) -> bytes:
        body = struct.pack("!IQIII", self.ssrc, self.ntp_timestamp, self.rtp_timestamp,
                           self.packet_count, self.octet_count)
        body += b"".join(bytes(r) for r in self.reports)
        return _rtcp_header(RTCP_SR, len(self.reports), len(body)) + body


@dataclass
class RtcpReceiverReport:
    """RTCP RR (PT 201)."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count = data[0] & 0x1F
        if len(data) < 8 + 24 * count:
            raise ValueError("RTCP receiver report length is truncated")
        (ssrc,) = struct.unpack_from("!I", data, 4)
        return cls(ssrc, [ReportBlock.parse(data[8 + 24 * i:]) for i in range(count)])

    def __bytes__(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(bytes(r) for r in self.reports)
        return _rtcp_header(RTCP_RR, len(self.reports), len(body)) + body


@dataclass
class RtcpSdes:
    """RTCP SDES (PT 202) with one chunk carrying a CNAME."""

    ssrc: int
    cname: str = ""

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if len(data) < 8:
            raise ValueError("RTCP SDES length is truncated")
        (ssrc,) = struct.unpack_from("!I", data, 4)
        cname = ""
        pos = 8
        while pos + 2 <= len(data) and data[pos] != 0:
            typ, ln = data[pos], data[pos + 1]
            if typ == 1:
                cname = data[pos + 2:pos + 2 + ln].decode("utf-8", "replace")
            pos += 2 + ln
        return cls(ssrc, cname)

    def __bytes__(self) -> bytes:
        name = self.cname.encode()[:255]
        item = struct.pack("!IBB", self.ssrc, 1, len(name)) + name + b"\x00"
        item += b"\x00" * (-len(item) % 4)
        return _rtcp_header(RTCP_SDES, 1, len(item)) + item


@dataclass
class RtcpBye:
    """RTCP BYE (PT 203)."""

    sources: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count = data[0] & 0x1F
        if len(data) < 4 + 4 * count:
            raise ValueError("RTCP bye length is truncated")
        return cls(list(struct.unpack_from(f"!{count}I", data, 4)))

    def __bytes__(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.sources)
        return _rtcp_header(RTCP_BYE, len(self.sources), len(body)) + body


RtcpPacket = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP datagram; unknown packet types are skipped."""
    out: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise ValueError("RTCP packet length is less than 4 bytes")
        if data[pos] >> 6 != RTP_VERSION:
            raise ValueError(f"RTCP packet has invalid version {data[pos] >> 6}")
        pt = data[pos + 1]
        length = (struct.unpack_from("!H", data, pos + 2)[0] + 1) * 4
        chunk = data[pos:pos + length]
        if len(chunk) < length:
            raise ValueError("RTCP packet is truncated")
        if pt == RTCP_SR:
            out.append(RtcpSenderReport.parse(chunk))
        elif pt == RTCP_RR:
            out.append(RtcpReceiverReport.parse(chunk))
        elif pt == RTCP_SDES:
            out.append(RtcpSdes.parse(chunk))
        elif pt == RTCP_BYE:
            out.append(RtcpBye.parse(chunk))
        pos += length
    return out


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192..223 in the second byte."""
    return len(data) >= 2 and 192 <= data[1] <= 223


class ReceptionStats:
    """Receiver statistics of one source (RFC 3550 appendix A.1, A.3 and A.8).

    ``update(seq, ts, arrival)`` per packet, ``arrival`` in timestamp units of the payload
    clock. ``jitter`` is the A.8 interarrival jitter estimate in timestamp units.
    """

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.base_seq = -1
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.jitter_f = 0.0
        self._transit: int | None = None
        self._expected_prior = 0
        self._received_prior = 0

    def update(self, seq: int, ts: int, arrival: int) -> None:
        if self.base_seq < 0:
            self.base_seq = seq
            self.max_seq = seq
        else:
            d = seq16_diff(seq, self.max_seq)
            if d > 0:
                if seq < self.max_seq:
                    self.cycles += 1 << 16
                self.max_seq = seq
        self.received += 1
        transit = ts32_diff(arrival & 0xFFFFFFFF, ts)
        if self._transit is not None:
            d = abs(transit - self._transit)
            self.jitter_f += (d - self.jitter_f) / 16.0
        self._transit = transit

    @property
    def jitter(self) -> int:
        return int(self.jitter_f)

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return 0 if self.base_seq < 0 else self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def report_block(self) -> ReportBlock:
        """Build a report block and start a new reporting interval."""
        expected = self.expected
        exp_int = expected - self._expected_prior
        rec_int = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else (lost_int << 8) // exp_int
        return ReportBlock(self.ssrc, min(fraction, 255), self.lost, self.extended_max,
                           self.jitter)
