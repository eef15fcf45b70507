"""Adaptive jitter buffer for one RTP source.

A fixed ring of power-of-two capacity indexed by ``seq & mask`` holds decoded frames (one packet
each, codec rate). The receive thread calls :meth:`JitterBuffer.put`; the engine thread calls
:meth:`JitterBuffer.get` once per frame it plays out. A lock guards both but is held only for a
few dict-free operations (no allocation of audio, no I/O), so the engine thread never waits long.

Playout delay (``target`` frames) follows the RFC 3550 A.8 interarrival jitter estimate: it grows
at once when jitter rises or a frame arrives too late to play, and shrinks by one frame per
silence gap (between overs) when the estimate allows, so an over is never shortened mid-stream.
A missing frame between received ones is concealed by pitch-period repetition with a fade
(and a cross-fade back into real audio); when the buffer runs dry, silence and a re-buffer.
Frames that arrive after their slot was played are counted as late.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from brug.gateway.rtp.packet import seq16_add, seq16_diff, ts32_diff

Frame = npt.NDArray[np.float32]


@dataclass
class JitterStats:
    """Counters, all in packets except the delays (ms)."""

    received: int = 0
    played: int = 0
    late: int = 0            # arrived after their playout slot
    lost: int = 0            # never arrived (gaps in the sequence at playout)
    concealed: int = 0       # losses repaired by concealment (pitch repetition or codec PLC)
    recovered: int = 0       # losses rebuilt from the next packet's in-band FEC (Opus)
    duplicates: int = 0
    rebuffers: int = 0       # buffer ran dry mid-stream
    delay_sum_ms: float = 0.0
    delay_n: int = 0

    @property
    def mean_delay_ms(self) -> float:
        return self.delay_sum_ms / self.delay_n if self.delay_n else 0.0


class JitterBuffer:
    """Reorders and times frames of one stream.

    Parameters
    ----------
    ptime_ms:
        Packet duration (ms); every frame holds ``ptime_ms`` of audio.
    clock_rate:
        RTP timestamp clock (Hz), for the jitter estimate.
    capacity:
        Ring size in packets, a power of two (default 64: 1.28 s at 20 ms).
    decode, decode_lost:
        For stateful codecs (Opus): frames are put as payload ``bytes`` and decoded in sequence
        order at playout; ``decode_lost(next_payload_or_None, samples)`` rebuilds a lost frame
        from the next packet's in-band FEC, or runs the codec's own concealment on ``None``.
    min_delay_ms, max_delay_ms:
        Bounds of the adaptive playout delay.
    """

    def __init__(self, ptime_ms: int = 20, clock_rate: int = 8000, capacity: int = 64,
                 min_delay_ms: int = 40, max_delay_ms: int = 400,
                 decode: Callable[[bytes], Frame] | None = None,
                 decode_lost: Callable[[bytes | None, int], Frame] | None = None) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"jitter buffer capacity {capacity} is not a power of two")
        self.ptime_ms = ptime_ms
        self.clock_rate = clock_rate
        self.capacity = capacity
        self._mask = capacity - 1
        self._seq = [-1] * capacity
        self._frames: list[Frame | bytes | None] = [None] * capacity
        self._tags: list[object] = [None] * capacity
        self.min_frames = max(1, math.ceil(min_delay_ms / ptime_ms))
        self.max_frames = min(capacity // 2, max(self.min_frames, max_delay_ms // ptime_ms))
        self.target = self.min_frames
        self.stats = JitterStats()
        self._decode = decode
        self._decode_lost = decode_lost
        self._lock = threading.Lock()
        self._playing = False
        self._next = 0
        self._buffered = 0
        self._last: Frame | None = None
        self._last_tag: object = None
        self._hist = np.zeros(0, np.float32)
        self._fade: Frame | None = None
        self._lost_run = 0
        self._dry_grow: int | None = None
        self._jitter = 0.0          # A.8 estimate, timestamp units
        self._transit: float | None = None

    # ------------------------------------------------------------------ receive thread
    def put(self, seq: int, ts: int, frame: Frame | bytes, arrival: float,
            tag: object = None) -> None:
        """Insert a decoded frame. ``arrival`` in seconds (monotonic clock); ``tag`` travels
        with the frame (the port stores the ED-137 header there)."""
        with self._lock:
            self.stats.received += 1
            transit = arrival * self.clock_rate - ts
            if self._transit is not None:
                # ts may wrap: compare transit differences modulo 2**32
                d = abs(ts32_diff(int(transit) & 0xFFFFFFFF, int(self._transit) & 0xFFFFFFFF))
                self._jitter += (d - self._jitter) / 16.0
            self._transit = transit
            self._dry_grow = None
            if self._playing:
                ahead = seq16_diff(seq, self._next)
                if ahead < 0:
                    self.stats.late += 1
                    self._grow(1)
                    return
                if ahead >= self.capacity:
                    self._reset_locked()
            i = seq & self._mask
            if self._seq[i] == seq:
                self.stats.duplicates += 1
                return
            if not self._playing and self._buffered == 0:
                self._next = seq
            elif not self._playing and seq16_diff(seq, self._next) < 0:
                if seq16_diff(self._next, seq) < self.capacity // 2:
                    self._next = seq
            if self._seq[i] < 0:
                self._buffered += 1
            self._seq[i] = seq
            self._frames[i] = frame
            self._tags[i] = tag
            self._adapt()
            if not self._playing and self._buffered >= self.target:
                self._playing = True

    # ------------------------------------------------------------------ engine thread
    def get(self) -> tuple[Frame | None, object]:
        """Return the next frame to play and its tag, or ``(None, None)`` for silence.

        Real-time: called on the engine thread; O(1), holds the lock for microseconds.
        """
        with self._lock:
            if not self._playing:
                return None, None
            i = self._next & self._mask
            if self._seq[i] == self._next:
                item, tag = self._frames[i], self._tags[i]
                self._take(i)
                if isinstance(item, bytes):
                    assert self._decode is not None
                    item = self._decode(item)
                frame = self._after_real(item) if item is not None else None
                self._record_delay()
                self._last, self._last_tag = frame, tag
                self.stats.played += 1
                return frame, tag
            # the expected frame is missing
            self.stats.lost += 1
            nxt = seq16_add(self._next, 1)
            if self._buffered and self._last is not None:
                self._next = nxt
                self.stats.concealed += 1
                if self._decode_lost is not None:
                    ni = nxt & self._mask
                    nxt_item = self._frames[ni] if self._seq[ni] == nxt else None
                    fec = nxt_item if isinstance(nxt_item, bytes) else None
                    out = self._decode_lost(fec, len(self._last)).astype(np.float32)
                    if fec is not None:
                        self.stats.recovered += 1
                        self.stats.concealed -= 1
                else:
                    out = self._conceal(len(self._last))
                self._last = out
                return out, self._last_tag
            self.stats.lost -= 1          # not a loss: the stream stopped or ran dry
            self._playing = False
            if self._last is not None:      # ran dry: re-buffer deeper (undone at stream end)
                self.stats.rebuffers += 1
                self._dry_grow = min(2, self.max_frames - self.target)
                self._grow(2)
            self._last = None
            return None, None

    def end_of_stream(self) -> None:
        """Note a silence gap (the talker stopped): shrink the delay by one frame if the
        jitter estimate allows. Called by the port when the stream has been idle."""
        with self._lock:
            if self._buffered:          # re-buffering mid-over, not a silence gap
                return
            if self._dry_grow is not None:  # the last "dry" buffer was the end of the over
                self.stats.rebuffers -= 1
                self.target -= self._dry_grow
                self._dry_grow = None
            want = self._wanted()
            if self.target > want:
                self.target -= 1
            self._reset_locked()

    def reset(self) -> None:
        """Drop buffered frames and stop playout (a new source); keeps the delay estimate."""
        with self._lock:
            self._reset_locked()
            self._transit = None

    def _reset_locked(self) -> None:
        for k in range(self.capacity):
            self._seq[k] = -1
            self._frames[k] = None
            self._tags[k] = None
        self._buffered = 0
        self._playing = False
        self._last = None

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def depth(self) -> int:
        """Frames buffered now."""
        return self._buffered

    @property
    def jitter_ms(self) -> float:
        return 1000.0 * self._jitter / self.clock_rate

    @property
    def delay_ms(self) -> float:
        """Current playout delay target (ms)."""
        return float(self.target * self.ptime_ms)

    # ------------------------------------------------------------------ concealment
    def _after_real(self, frame: Frame) -> Frame:
        """Cross-fade out of a concealment into ``frame``; keep the pitch history."""
        if self._fade is not None:
            m = min(len(self._fade), len(frame))
            ramp = np.linspace(0.0, 1.0, m, dtype=np.float32)
            frame = frame.copy()
            frame[:m] = frame[:m] * ramp + self._fade[:m] * (1.0 - ramp)
            self._fade = None
        self._lost_run = 0
        self._hist = np.concatenate([self._hist, frame])[-3 * len(frame):]
        return frame

    def _conceal(self, n: int) -> Frame:
        """Pitch-period repetition (after ITU-T G.711 Appendix I, simplified): repeat the
        last pitch period of the history, fading out over consecutive losses."""
        h = self._hist
        rate = n * 1000 // self.ptime_ms
        lo, hi = max(1, rate // 400), max(2, rate * 15 // 1000)       # 2.5 .. 15 ms
        if len(h) < 2 * hi:
            return np.zeros(n, np.float32)
        ref = h[-hi:]
        best, lag = -1.0, lo
        for k in range(lo, hi):
            c = h[-hi - k:-k]
            den = float(np.dot(c, c)) * float(np.dot(ref, ref)) + 1e-12
            v = float(np.dot(ref, c)) / den ** 0.5
            if v > best:
                best, lag = v, k
        period = h[-lag:]
        reps = np.resize(period, n + rate // 400)
        gain0 = 0.9 ** self._lost_run
        self._lost_run += 1
        g = np.linspace(gain0, gain0 * 0.6, n, dtype=np.float32)
        out = (reps[:n] * g).astype(np.float32)
        self._fade = (reps[n:] * g[-1]).astype(np.float32)
        self._hist = np.concatenate([h, out])[-3 * n:]
        return out

    # ------------------------------------------------------------------ helpers
    def _take(self, i: int) -> None:
        self._seq[i] = -1
        self._frames[i] = None
        self._tags[i] = None
        self._buffered -= 1
        self._next = seq16_add(self._next, 1)

    def _record_delay(self) -> None:
        self.stats.delay_sum_ms += (self._buffered + 1) * self.ptime_ms
        self.stats.delay_n += 1

    def _wanted(self) -> int:
        jit_ms = 1000.0 * self._jitter / self.clock_rate
        return min(self.max_frames,
                   max(self.min_frames, math.ceil((3.0 * jit_ms) / self.ptime_ms) + 1))

    def _adapt(self) -> None:
        want = self._wanted()
        if want > self.target:
            self.target = want

    def _grow(self, n: int) -> None:
        self.target = min(self.max_frames, self.target + n)
