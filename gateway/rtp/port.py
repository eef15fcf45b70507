"""RTP port: audio to and from an IP peer (console, RoIP gateway, another brug site).

``RtpPort`` is a :class:`~brug.gateway.ports.base.Port`. A receive thread owns the UDP sockets
(RTP on the listen port, RTCP on listen+1), decodes packets into the adaptive jitter buffer and
sends RTCP reports; the engine thread only pulls frames from the buffer (``read``) and encodes and
sends packets while the gateway keys the port (``write``). Silence between overs is the absence of
packets, which is how stream-presence squelch peers see our PTT. With ``ed137: true`` every
packet carries the ED-137-style header extension (PTT, squelch bit, PTT id).
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time
from typing import Any

import numpy as np

from brug.codecs.resample import StreamResampler
from brug.gateway.events import Event
from brug.gateway.ports.base import Block, Port
from brug.gateway.rtp.ed137 import ED137_PROFILE, Ed137Header, FloorClaim, PttType
from brug.gateway.rtp.jitter import JitterBuffer
from brug.gateway.rtp.packet import (
    ReceptionStats,
    ReportBlock,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtpPacket,
    is_rtcp,
    parse_rtcp,
    seq16_add,
    ts32_add,
)
from brug.gateway.rtp.payload import FORMATS, make_codec
from brug.gateway.signalling import LineSquelch, NoPtt, Ptt

PTIMES_MS = (10, 20, 30, 40)
NTP_EPOCH_OFFSET = 2208988800


class RtpConfigError(ValueError):
    """A site-file mistake in an RTP port (names the field)."""

    user_error = True


def parse_addr(text: str, field: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; raises :class:`RtpConfigError` naming ``field``."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise RtpConfigError(f"{field}={text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _ntp_now() -> int:
    t = time.time() + NTP_EPOCH_OFFSET
    return (int(t) << 32) | int((t % 1.0) * (1 << 32))


class RtpPort(Port):
    """An RTP endpoint as a gateway port.

    Parameters
    ----------
    name:
        Port name.
    listen:
        ``(host, port)`` to receive RTP on (RTCP on ``port + 1``). A multicast host joins the
        group. Port 0 picks a free port (see :attr:`local_addr`).
    send:
        ``(host, port)`` of the peer, or ``None`` (receive only).
    payload:
        ``pcma``, ``pcmu``, ``l16`` or ``opus``.
    ptime_ms:
        Packet duration, 10/20/30/40 ms.
    pt:
        RTP payload type; defaults to the static one (PCMA 8, PCMU 0) or 96 for dynamic ones.
    ed137:
        Send and read the ED-137 header extension (PTT/squelch in band).
    ptt_id:
        ED-137 PTT id (1..63) sent while keyed.
    jitter_min_ms, jitter_max_ms:
        Bounds of the adaptive playout delay.
    rtcp_interval_s:
        Seconds between RTCP reports.
    ttl:
        Multicast TTL for sending.
    interface:
        Local IPv4 address of the interface for multicast (join and send); default any.
    """

    def __init__(self, name: str, listen: tuple[str, int], send: tuple[str, int] | None,
                 payload: str = "pcma", ptime_ms: int = 20, pt: int | None = None,
                 ed137: bool = False, ptt_id: int = 1, jitter_min_ms: int = 40,
                 jitter_max_ms: int = 400, rtcp_interval_s: float = 5.0, ttl: int = 8,
                 bitrate: int = 32000, interface: str = "0.0.0.0") -> None:
        super().__init__(name)
        if payload not in FORMATS:
            raise RtpConfigError(f"payload={payload!r} is not one of: {', '.join(FORMATS)}")
        if ptime_ms not in PTIMES_MS:
            raise RtpConfigError(f"ptime_ms={ptime_ms} is not one of: 10, 20, 30, 40")
        self.fmt = FORMATS[payload]
        self.listen = listen
        self.send_addr = send
        self.ptime_ms = ptime_ms
        self.pt = pt if pt is not None else (self.fmt.static_pt if self.fmt.static_pt is not None
                                             else 96)
        self.ed137 = ed137
        self.ptt_id = ptt_id
        self.frame = self.fmt.audio_rate * ptime_ms // 1000
        self.ts_step = self.fmt.clock_rate * ptime_ms // 1000
        self._codec_tx = make_codec(payload, self.frame, bitrate=bitrate)
        self._codec_rx = make_codec(payload, self.frame, bitrate=bitrate)
        # stateful codecs with loss recovery (Opus) decode in order at playout
        lost = getattr(self._codec_rx, "decode_lost", None)
        self._decode_at_playout = lost is not None
        self.jb = JitterBuffer(ptime_ms, self.fmt.clock_rate, 64, jitter_min_ms, jitter_max_ms,
                               decode=self._playout_decode if lost is not None else None,
                               decode_lost=self._playout_decode_lost if lost else None)
        self._decode_lost = lost
        self.rtcp_interval_s = rtcp_interval_s
        self.ttl = ttl
        self.interface = interface
        self.ssrc = struct.unpack("!I", os.urandom(4))[0]
        self._seq = struct.unpack("!H", os.urandom(2))[0]
        self._ts0 = struct.unpack("!I", os.urandom(4))[0]
        self._sock: socket.socket | None = None
        self._rtcp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.local_addr: tuple[str, int] = listen
        # transmit state (engine thread)
        self._tx_on = False
        self._tx_tail = 0           # ED-137: PTT-off packets still to send
        self._talkspurt_start = False
        self._ts_next = 0           # timestamp offset of the next packet (codec clock)
        self._tx_fifo = np.zeros(0, np.float32)
        self._codec_samples = 0.0   # codec-rate samples elapsed since start (timestamp clock)
        self.packets_sent = 0
        self.octets_sent = 0
        self._sent_since_report = False
        # receive state
        self._rx_fifo = np.zeros(0, np.float32)
        self.rx_stats: ReceptionStats | None = None
        self.remote_reports: list[ReportBlock] = []
        self.rx_active = False            # last played frame was real audio
        self.rx_ed137: Ed137Header | None = None   # header of the last played frame
        self.samples_read = 0             # engine samples read so far
        self.last_audio_sample = -(10**12)
        self._idle_frames = 0
        self._events: list[Event] = []
        self._last_jitter_report = 0
        self.local_claim: FloorClaim | None = None
        self._follow: NoPtt | None = None
        self.engine_rate = 16000
        self.block = 80

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any]) -> RtpPort:
        """Build from a site-file mapping (``type: rtp``); raises :class:`RtpConfigError`."""
        return cls(name, **cls._kwargs(name, cfg))

    @staticmethod
    def _kwargs(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
        known = {"type", "listen", "send", "payload", "ptime_ms", "pt", "ed137", "ptt_id",
                 "jitter", "squelch", "ptt", "network", "talkgroup", "rtcp_interval_s", "ttl",
                 "bitrate", "interface", "site", "priority", "arbitration_ms", "rx_gain_db",
                 "tx_gain_db"}
        for k in cfg:
            if k not in known:
                raise RtpConfigError(f"ports.{name}.{k}: unknown key (valid: "
                                     f"{', '.join(sorted(known))})")
        if "listen" not in cfg:
            raise RtpConfigError(f"ports.{name}.listen: missing (HOST:PORT)")
        kw: dict[str, Any] = {
            "listen": parse_addr(cfg["listen"], f"ports.{name}.listen"),
            "send": parse_addr(cfg["send"], f"ports.{name}.send") if cfg.get("send") else None,
            "payload": str(cfg.get("payload", "pcma")).lower(),
            "ptime_ms": int(cfg.get("ptime_ms", 20)),
        }
        if "interface" in cfg:
            kw["interface"] = str(cfg["interface"])
        for k in ("pt", "ptt_id", "ttl", "bitrate"):
            if k in cfg:
                kw[k] = int(cfg[k])
        if "ed137" in cfg:
            kw["ed137"] = bool(cfg["ed137"])
        if "rtcp_interval_s" in cfg:
            kw["rtcp_interval_s"] = float(cfg["rtcp_interval_s"])
        jit = cfg.get("jitter", {}) or {}
        if "min_ms" in jit:
            kw["jitter_min_ms"] = int(jit["min_ms"])
        if "max_ms" in jit:
            kw["jitter_max_ms"] = int(jit["max_ms"])
        return kw

    # ------------------------------------------------------------------ lifecycle
    def start(self, engine_rate: int, block: int) -> None:
        if self._thread is not None:
            return
        self.engine_rate = engine_rate
        self.block = block
        # primed streaming resamplers: about len(x) * ratio out per call, a few ms of delay,
        # so the end of an over is not held back inside the converter at PTT release
        self._rs_in = StreamResampler(self.fmt.audio_rate, engine_rate)
        self._rs_out = StreamResampler(engine_rate, self.fmt.audio_rate)
        host, port = self.listen
        multicast = ipaddress.ip_address(host if host else "0.0.0.0").is_multicast
        self._sock = self._open(host, port, multicast)
        real_port = self._sock.getsockname()[1]
        self._rtcp = self._open(host, real_port + 1, multicast)
        self.local_addr = (host, real_port)
        self._stop.clear()
        self._thread = threading.Thread(target=self._rx_loop, name=f"rtp-{self.name}",
                                        daemon=True)
        self._thread.start()
        # latency: playout delay + resampler delay
        self.latency_samples = int(self.jb.delay_ms * engine_rate / 1000)

    def _open(self, host: str, port: int, multicast: bool) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("" if multicast else host, port))
        if multicast:
            mreq = struct.pack("4s4s", socket.inet_aton(host), socket.inet_aton(self.interface))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        if self.send_addr and ipaddress.ip_address(self.send_addr[0]).is_multicast:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                         socket.inet_aton(self.interface))
        s.setblocking(False)
        return s

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for s in (self._sock, self._rtcp):
            if s is not None:
                s.close()
        self._sock = self._rtcp = None

    # ------------------------------------------------------------------ receive thread
    def _rx_loop(self) -> None:
        assert self._sock is not None and self._rtcp is not None
        socks = [self._sock, self._rtcp]
        next_report = time.monotonic() + self.rtcp_interval_s
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):
                return
            now = time.monotonic()
            for s in ready:
                try:
                    data = s.recv(2048)
                except OSError:
                    continue
                try:
                    if is_rtcp(data):
                        self._on_rtcp(data)
                    else:
                        self._on_rtp(RtpPacket.parse(data), now)
                except Exception:  # noqa: BLE001 - one bad datagram must not stop reception
                    self.stats.extra["malformed"] = self.stats.extra.get("malformed", 0) + 1
            if now >= next_report:
                next_report = now + self.rtcp_interval_s
                self._send_report()

    def _on_rtp(self, pkt: RtpPacket, now: float) -> None:
        if pkt.payload_type != self.pt:
            self.stats.extra["wrong_pt"] = self.stats.extra.get("wrong_pt", 0) + 1
            return
        hdr: Ed137Header | None = None
        if pkt.extension is not None and pkt.extension_profile == ED137_PROFILE:
            hdr = Ed137Header.parse(pkt.extension)
        if not self._accept(pkt, hdr, now):
            return
        st = self.rx_stats
        if st is None or st.ssrc != pkt.ssrc:      # a new source (peer restarted): start over
            if st is not None:
                self.jb.reset()
            st = self.rx_stats = ReceptionStats(pkt.ssrc)
        st.update(pkt.sequence_number, pkt.timestamp, int(now * self.fmt.clock_rate))
        pcm: Block | bytes
        if not pkt.payload:
            pcm = np.zeros(self.frame, np.float32)
        elif self._decode_at_playout:
            pcm = pkt.payload
        else:
            pcm = self._codec_rx.decode(pkt.payload)
        self.jb.put(pkt.sequence_number, pkt.timestamp, pcm, now, hdr)

    def _playout_decode(self, payload: bytes) -> Block:
        """Decode on the engine thread; a corrupt payload becomes silence and is counted."""
        try:
            return np.asarray(self._codec_rx.decode(payload), np.float32)
        except Exception:  # noqa: BLE001 - never let a bad packet reach the engine
            self.stats.extra["decode_errors"] = self.stats.extra.get("decode_errors", 0) + 1
            return np.zeros(self.frame, np.float32)

    def _playout_decode_lost(self, payload: bytes | None, samples: int) -> Block:
        assert self._decode_lost is not None
        try:
            return np.asarray(self._decode_lost(payload, samples), np.float32)
        except Exception:  # noqa: BLE001
            self.stats.extra["decode_errors"] = self.stats.extra.get("decode_errors", 0) + 1
            return np.zeros(samples, np.float32)

    def _accept(self, pkt: RtpPacket, hdr: Ed137Header | None, now: float) -> bool:
        """Hook for site links (floor arbitration). Runs on the receive thread."""
        return True

    def _on_rtcp(self, data: bytes) -> None:
        for p in parse_rtcp(data):
            if isinstance(p, (RtcpSenderReport, RtcpReceiverReport)):
                mine = [r for r in p.reports if r.ssrc == self.ssrc]
                if mine:
                    self.remote_reports = mine
                    r = mine[0]
                    self.stats.extra["remote_fraction_lost"] = r.fraction_lost / 256.0
                    self.stats.extra["remote_jitter_ms"] = \
                        1000.0 * r.jitter / self.fmt.clock_rate

    def _send_report(self) -> None:
        if self.send_addr is None or self._rtcp is None:
            return
        blocks = [self.rx_stats.report_block()] if self.rx_stats is not None else []
        pkt: RtcpSenderReport | RtcpReceiverReport
        if self._sent_since_report:
            self._sent_since_report = False
            ts = ts32_add(self._ts0, int(self._codec_samples * self.fmt.clock_rate
                                         / self.fmt.audio_rate))
            pkt = RtcpSenderReport(self.ssrc, _ntp_now(), ts, self.packets_sent,
                                   self.octets_sent, blocks)
        else:
            pkt = RtcpReceiverReport(self.ssrc, blocks)
        data = bytes(pkt) + bytes(RtcpSdes(self.ssrc, f"brug-{self.name}"))
        try:
            self._rtcp.sendto(data, (self.send_addr[0], self.send_addr[1] + 1))
        except OSError:
            pass

    # ------------------------------------------------------------------ engine thread
    def read(self, out: Block) -> None:
        """Fill ``out`` with played-out audio (engine rate). Real-time: no waiting; the jitter
        buffer is read under a lock held for microseconds; silence when nothing plays."""
        n = len(out)
        while len(self._rx_fifo) < n:
            frame, tag = self.jb.get()
            if frame is None:
                frame = np.zeros(self.frame, np.float32)
                self._idle_frames += 1
                if self._idle_frames == 10:            # 10 empty frames: the over ended
                    self.jb.end_of_stream()
                self.rx_active = False
            else:
                self._idle_frames = 0
                self.rx_active = True
                self.last_audio_sample = self.samples_read + len(self._rx_fifo)
                self.rx_ed137 = tag if isinstance(tag, Ed137Header) else None
            y = self._rs_in.process(frame.astype(np.float32, copy=False))
            self._rx_fifo = np.concatenate([self._rx_fifo, y])
        out[:] = self._rx_fifo[:n]
        self._rx_fifo = self._rx_fifo[n:]
        self.samples_read += n
        self._jitter_event()

    def _jitter_event(self) -> None:
        s = self.jb.stats
        if s.played and self.samples_read - self._last_jitter_report >= self.engine_rate:
            self._last_jitter_report = self.samples_read
            self._events.append(Event(0, f"port.{self.name}.jitter", {
                "delay_ms": self.jb.delay_ms, "mean_delay_ms": round(s.mean_delay_ms, 1),
                "jitter_ms": round(self.jb.jitter_ms, 2), "late": s.late, "lost": s.lost,
                "concealed": s.concealed, "rebuffers": s.rebuffers},
                f"playout {self.jb.delay_ms:.0f} ms"))
            self.latency_samples = int(self.jb.delay_ms * self.engine_rate / 1000)
            self.stats.extra.update(jitter_delay_ms=self.jb.delay_ms, late=s.late, lost=s.lost,
                                    concealed=s.concealed,
                                    jitter_mean_delay_ms=round(s.mean_delay_ms, 1))

    def poll_events(self) -> list[Event]:
        """Return and clear port events (``port.<name>.jitter``, link floor decisions)."""
        ev, self._events = self._events, []
        return ev

    def set_tx(self, on: bool) -> None:
        """Start or stop sending (the PTT of this port). Called from the engine thread."""
        if on and not self._tx_on:
            self._talkspurt_start = True
            self._tx_fifo = np.zeros(0, np.float32)
        elif not on and self._tx_on:
            self._tx_tail = 3 if self.ed137 else 0
        self._tx_on = on

    def bind_drivers(self, squelch: LineSquelch | None, ptt: Ptt) -> None:
        """Attach the drivers the site loader built for this port (before ``start``).

        ``stream``/``ed137`` squelch and ``rtp``/``ed137`` PTT drivers are bound to this port;
        a ``none`` PTT is followed (the port sends while the engine has it keyed).
        Raises :class:`RtpConfigError` for a PTT driver that cannot key an RTP stream.
        """
        from brug.gateway.rtp.squelch import RtpPtt, StreamSquelch

        if isinstance(squelch, StreamSquelch):
            squelch.port = self
        if isinstance(ptt, RtpPtt):
            ptt.port = self
        elif isinstance(ptt, NoPtt):
            self._follow = ptt
        else:
            raise RtpConfigError(f"ports.{self.name}.ptt.type: an RTP port is keyed by "
                                 f"ptt type rtp, ed137 or none, not {type(ptt).__name__}")

    def tx_granted(self) -> bool | None:
        """``None``: a plain RTP port transmits as soon as it is keyed (no grant to wait for)."""
        return None

    @property
    def transmitting(self) -> bool:
        return self._tx_on

    def write(self, block: Block) -> None:
        """Encode and send while keyed; otherwise only advance the timestamp clock."""
        if self._follow is not None and self._follow.keyed != self._tx_on:
            self.set_tx(self._follow.keyed)
        if self._tx_on and self._may_send():
            y = self._rs_out.process(block.astype(np.float32, copy=False))
            self._tx_fifo = np.concatenate([self._tx_fifo, y])
            while len(self._tx_fifo) >= self.frame:
                self._send_frame(self._tx_fifo[:self.frame], True)
                self._tx_fifo = self._tx_fifo[self.frame:]
        else:
            if len(self._tx_fifo):         # flush the partial last frame of the over
                pad = np.zeros(self.frame, np.float32)
                pad[:len(self._tx_fifo)] = self._tx_fifo
                self._send_frame(pad, True)
                self._tx_fifo = np.zeros(0, np.float32)
            while self._tx_tail > 0:
                self._tx_tail -= 1
                self._send_frame(np.zeros(self.frame, np.float32), False)
        self._codec_samples += len(block) * self.fmt.audio_rate / self.engine_rate

    def _may_send(self) -> bool:
        return True

    def _ed137_header(self, ptt: bool) -> Ed137Header:
        h = Ed137Header(ptt_type=PttType.NORMAL if ptt else PttType.OFF,
                        ptt_id=self.ptt_id if ptt else 0)
        if ptt and self.local_claim is not None:
            h.features.append(self.local_claim.to_feature())
        return h

    def _send_frame(self, pcm: Block, ptt: bool) -> None:
        if self.send_addr is None or self._sock is None:
            return
        ts_now = int(self._codec_samples * self.fmt.clock_rate / self.fmt.audio_rate)
        if self._talkspurt_start:
            self._ts_next = ts_now
        pkt = RtpPacket(self.pt, self._seq, ts32_add(self._ts0, self._ts_next), self.ssrc,
                        self._codec_tx.encode(pcm), marker=self._talkspurt_start)
        if self.ed137:
            pkt.extension_profile = ED137_PROFILE
            pkt.extension = bytes(self._ed137_header(ptt))
        self._talkspurt_start = False
        self._ts_next += self.ts_step
        self._seq = seq16_add(self._seq, 1)
        data = bytes(pkt)
        try:
            self._sock.sendto(data, self.send_addr)
        except OSError:
            self.stats.extra["send_errors"] = self.stats.extra.get("send_errors", 0) + 1
            return
        self.packets_sent += 1
        self.octets_sent += len(pkt.payload)
        self._sent_since_report = True
