"""ED-137-style RTP header extension: PTT and squelch signalling inside the voice stream.

EUROCAE ED-137B (radio part) carries the radio signalling of a voice-over-IP radio link in an
RFC 3550 profile-specific header extension (the X bit), so PTT and squelch travel with the audio
they belong to. The extension is identified by the 16-bit "defined by profile" value ``0x0167``
and its first 32-bit word holds, most significant bit first:

====== ===== ===============================================================
bits   field meaning
====== ===== ===============================================================
31-29  PTT   PTT type: 0 off, 1 normal, 2 coupling, 3 priority, 4 emergency
28     SQU   squelch open at the radio (receiver hears a carrier)
27-22  PTTID identity of the PTT source, 1..63 (0 = none)
21     PM    PTT mute
20     PTTS  PTT summation
19     SCT   simultaneous call transmission
18-17  -     reserved (zero)
16     X     further extension features follow
15-0   ...   start of the first feature (type 4 bits, length 4 bits, value)
====== ===== ===============================================================

Features are type/length/value items (length in bytes, 0..15) packed after the fixed 16 bits and
zero-padded to a multiple of 32 bits. brug puts one vendor feature, :data:`FEATURE_FLOOR_CLAIM`,
on site links: the key-up claim used for floor arbitration between sites (see
:mod:`brug.gateway.rtp.link`). Peers that do not know it skip it by its length.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Self

ED137_PROFILE = 0x0167

#: brug vendor feature: floor claim (claim time ms u32, priority u8, site id u32).
FEATURE_FLOOR_CLAIM = 0xF


class PttType(IntEnum):
    OFF = 0
    NORMAL = 1
    COUPLING = 2
    PRIORITY = 3
    EMERGENCY = 4
    TEST = 5


@dataclass
class Ed137Header:
    """The ED-137 extension word plus its features (``(type, value)`` pairs)."""

    ptt_type: int = PttType.OFF
    squ: bool = False
    ptt_id: int = 0
    pm: bool = False
    ptts: bool = False
    sct: bool = False
    features: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def ptt(self) -> bool:
        return self.ptt_type != PttType.OFF

    @classmethod
    def parse(cls, ext: bytes) -> Self:
        """Parse the extension body (the bytes after profile id and length)."""
        if len(ext) < 4:
            raise ValueError("ED-137 extension length is less than 4 bytes")
        (word,) = struct.unpack_from("!H", ext, 0)
        ptt_type = word >> 13
        squ = bool(word & 0x1000)
        ptt_id = (word >> 6) & 0x3F
        pm = bool(word & 0x20)
        ptts = bool(word & 0x10)
        sct = bool(word & 0x08)
        more = bool(word & 0x01)
        features: list[tuple[int, bytes]] = []
        pos = 2
        while more and pos < len(ext):
            b = ext[pos]
            if b == 0:            # padding
                break
            ftype, flen = b >> 4, b & 0x0F
            if pos + 1 + flen > len(ext):
                raise ValueError("ED-137 extension feature is truncated")
            features.append((ftype, bytes(ext[pos + 1:pos + 1 + flen])))
            pos += 1 + flen
        return cls(ptt_type, squ, ptt_id, pm, ptts, sct, features)

    def __bytes__(self) -> bytes:
        if not 0 <= self.ptt_type <= 7:
            raise ValueError(f"ED-137 PTT type {self.ptt_type} is out of range 0..7")
        if not 0 <= self.ptt_id <= 63:
            raise ValueError(f"ED-137 PTT id {self.ptt_id} is out of range 0..63")
        word = ((self.ptt_type << 13) | (0x1000 if self.squ else 0) | (self.ptt_id << 6)
                | (0x20 if self.pm else 0) | (0x10 if self.ptts else 0)
                | (0x08 if self.sct else 0) | (0x01 if self.features else 0))
        out = struct.pack("!H", word)
        for ftype, value in self.features:
            if len(value) > 15 or not 1 <= ftype <= 15:
                raise ValueError("ED-137 feature type must be 1..15 and length 0..15 bytes")
            out += bytes([(ftype << 4) | len(value)]) + value
        return out + b"\x00" * (-len(out) % 4)

    def feature(self, ftype: int) -> bytes | None:
        for t, v in self.features:
            if t == ftype:
                return v
        return None


def site_id(name: str) -> int:
    """A stable 32-bit id for a site name (CRC-32), the last tie-breaker of floor claims."""
    return zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF


@dataclass(frozen=True)
class FloorClaim:
    """A site's claim of the floor over a link, sent with every packet of its over.

    Ordering is the arbitration rule: the *smaller* ``rank`` wins, i.e. higher priority first,
    then the earlier claim time, then the smaller site id. Both sides compare the same two
    claims, so they reach the same decision whatever the link delay or clock offset.
    """

    priority: int
    claim_ms: int
    site: int

    @property
    def rank(self) -> tuple[int, int, int]:
        return (-self.priority, self.claim_ms, self.site)

    def beats(self, other: FloorClaim) -> bool:
        if self.rank == other.rank:
            return False
        # claim times are 32-bit wall-clock ms that may wrap: compare by signed distance
        if self.priority != other.priority:
            return self.priority > other.priority
        d = (self.claim_ms - other.claim_ms) & 0xFFFFFFFF
        if d != 0:
            return d >= 0x80000000       # self is earlier
        return self.site < other.site

    def to_feature(self) -> tuple[int, bytes]:
        return FEATURE_FLOOR_CLAIM, struct.pack("!IBI", self.claim_ms & 0xFFFFFFFF,
                                                self.priority & 0xFF, self.site)

    @classmethod
    def from_feature(cls, value: bytes) -> Self:
        if len(value) < 9:
            raise ValueError("floor claim feature is truncated")
        ms, prio, site = struct.unpack_from("!IBI", value, 0)
        return cls(prio, ms, site)
