"""Measurements: what a radio engineer asks about each transmission and each run.

Per transmission and destination (:class:`Delivery`): was it forwarded, and was that right
(patched, floor, priority, not patched, time-out, busy); latency; speech lost at the start
(first-syllable clipping) and at the end; dropouts inside; PESQ-NB/WB and STOI against the
source; level error. Per run (:func:`run_figures`): floor conflicts and how they were resolved,
PTT key-ups, TOT releases, faults and xruns; CPU and memory come from the replay's sampler.

How the audio is compared
-------------------------
The engine forwards an over with a *variable* delay: it starts ``preroll + PTT lead`` behind
the talker and catches up by skipping silent blocks later in the over. One cross-correlation
over a whole over would therefore smear. Instead the source's active speech (5 ms frames, see
:func:`active_frames`) is cut into talkspurts, long ones into pieces of at most 300 ms, and
each piece is located in the destination's output by normalised cross-correlation (search
-20 ms .. +4.2 s around the key-up, narrowed around the previous piece's lag once one is
found; a piece that does not match is split in halves down to 100 ms, since the engine may
have skipped a silent block inside it). A piece whose correlation peak reaches 0.8 is
*delivered* at that lag; inside it a frame counts as present when its energy in the
destination is within 12 dB of the source frame's (after the over's overall gain).
From that:

* latency at the onset = lag of the first delivered piece; at the end = lag of the last one;
* clipped start = first present frame - first active frame (ms, source time);
* lost end = last active frame - last present frame (ms);
* gaps = runs of missing active frames of 20 ms or more between the first and last present;
* PESQ/STOI compare the source with the destination re-aligned piece by piece.

Comparisons run at ``min(source rate, destination rate, engine rate)``: the gateway cannot
carry more bandwidth than its engine rate, and an 8 kHz network never had more. PESQ-WB is
only computed when that rate is 16 kHz (both ends wideband).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
from scipy import fft as sp_fft

from brug.bench.plan import PortPlan, ReplayPlan
from brug.bench.scenario import Scenario, Transmission
from brug.gateway.engine import build_filters

Array = npt.NDArray[np.float32]

FRAME_MS = 5.0
ACTIVE_FLOOR_DBFS = -55.0
ACTIVE_ABOVE_FLOOR_DB = 12.0
MERGE_GAP_MS = 100.0
PIECE_MAX_MS = 300.0
LAG_MIN_MS = -20.0
LAG_MAX_MS = 4200.0
PIECE_CORR = 0.8
HALF_CORR = 0.9
SPLIT_MIN_FRAMES = 20
#: Narrowed searches done together (see Search.best_many).
NARROW_BATCH = 12
PRESENT_DB = -12.0
GAP_MIN_MS = 20.0
#: Mean square treated as silence in the destination (-70 dBFS).
SILENCE_MS = 1e-7
#: Window after end_s in which the forwarded copy may still be playing out (s).
TAIL_S = LAG_MAX_MS / 1000.0 + 0.5


def _resample(x: Array, fs_in: int, fs_out: int) -> Array:
    if fs_in == fs_out:
        return np.asarray(x, np.float32)
    return np.asarray(soxr.resample(x, fs_in, fs_out, quality="HQ"), np.float32)


def path_filters(src: PortPlan, dst: PortPlan, x: Array, fs: int) -> Array:
    """``x`` (at ``fs``) through the voice filters the gateway applies on the way from ``src``
    to ``dst`` (the source's receive chain, the destination's transmit chain), so a delivery
    is judged against what the gateway is configured to deliver. The squelch tail is not
    removed here (the over's end is judged as it is)."""
    out = x
    if src.settings.filters:
        rx = build_filters(src.settings.filters, fs)[0]
        if rx is not None:
            out = rx.process(out)
    if dst.settings.filters:
        tx = build_filters(dst.settings.filters, fs)[1]
        if tx is not None:
            out = tx.process(out)
    return np.asarray(out, np.float32)


def frame_energy(x: Array, n: int) -> npt.NDArray[np.float64]:
    """Mean square per frame of ``n`` samples (a partial last frame is dropped)."""
    k = len(x) // n
    if k == 0:
        return np.zeros(0)
    v = x[:k * n].astype(np.float64).reshape(k, n)
    return np.einsum("ij,ij->i", v, v) / n


def active_frames(e: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Frames holding speech: 12 dB above the recording's noise floor (10th percentile of the
    frame levels) or within 15 dB of its loudest frame, whichever is lower; never more than
    35 dB below the loudest frame nor below -55 dBFS. Background noise before the first word
    is not speech."""
    if len(e) == 0:
        return np.zeros(0, bool)
    db = 10 * np.log10(e + 1e-20)
    floor = float(np.percentile(db, 10))
    peak = float(db.max())
    thr = max(ACTIVE_FLOOR_DBFS, min(floor + ACTIVE_ABOVE_FLOOR_DB, peak - 15.0), peak - 35.0)
    return np.asarray(db >= thr)


def runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``[start, end)`` index pairs of the True runs of ``mask``."""
    if len(mask) == 0:
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def pieces(active: npt.NDArray[np.bool_], merge: int, max_len: int) -> list[tuple[int, int]]:
    """Talkspurts (active runs merged across gaps up to ``merge`` frames), split to ``max_len``."""
    spurts: list[list[int]] = []
    for a, b in runs(active):
        if spurts and a - spurts[-1][1] <= merge:
            spurts[-1][1] = b
        else:
            spurts.append([a, b])
    out: list[tuple[int, int]] = []
    for a, b in spurts:
        n = max(1, math.ceil((b - a) / max_len))
        edges = np.linspace(a, b, n + 1).round().astype(int)
        out.extend((int(edges[i]), int(edges[i + 1])) for i in range(n))
    return out


class Scratch:
    """Work arrays reused from one search to the next (and one loop of a soak to the next).

    A fresh array of half a megabyte costs more in page faults than the transform that fills
    it (0.8 ms against 0.2 for four 16384-point inverse transforms on the 2-core bench
    machine), and the searches below need several per piece. Only one :class:`Search` may
    use a scratch at a time.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, npt.NDArray[Any]] = {}

    def get(self, name: str, n: int, dtype: Any = np.float64) -> npt.NDArray[Any]:
        """A work array of ``n`` elements (contents undefined)."""
        b = self._bufs.get(name)
        if b is None or len(b) < n or b.dtype != dtype:
            size = n if b is None else max(n, len(b) + len(b) // 4)
            b = self._bufs[name] = np.empty(size, dtype)
        return b[:n]


class Search:
    """Normalised cross-correlation searches for pieces of a source in one destination window.

    :meth:`best` finds where a piece fits best among a range of start positions. A short range
    (the search narrowed around the previous piece's lag) is one circular correlation the size
    of its window. The wide search (-20 ms .. +4.2 s) is done by overlap-save: the destination
    is transformed once, lazily, in blocks of ``size`` samples overlapping by the longest piece
    (``n_max``), and each piece then costs one transform of its own and one inverse per block
    its lags span (about 3 for a 300 ms piece at 8 kHz), instead of three transforms the size
    of the 4.2 s window. The destination's energy is one running sum for the whole window.
    All in float64: closer to exact than scipy's float32 transforms used before, and the same
    figures on the bundled scenario (see docs/bench.md).
    """

    def __init__(self, dst: Array, n_max: int, scratch: Scratch | None = None) -> None:
        self.dst = dst
        self.size = 1 << max(12, math.ceil(math.log2(6 * max(n_max, 1))))
        self.n_max = n_max
        self.hop = self.size - n_max + 1
        self.scratch = scratch if scratch is not None else Scratch()
        self._blocks: npt.NDArray[np.complex128] | None = None
        self._have: set[int] = set()
        self._silent: set[int] = set()          # blocks of exact zeros (not transformed)
        self._kept: dict[tuple[int, int], npt.NDArray[np.float64]] = {}   # (p0, n) -> corr
        self._slot_key: dict[str, tuple[int, int]] = {}
        self._slot = 0
        self._cs: npt.NDArray[np.float64] | None = None

    def _ensure_blocks(self, j0: int, j1: int) -> npt.NDArray[np.complex128]:
        sc, size, hop = self.scratch, self.size, self.hop
        if self._blocks is None:
            nb = (len(self.dst) + hop - 1) // hop
            self._blocks = sc.get("blocks", nb * (size // 2 + 1), np.complex128).reshape(nb, -1)
        for j in range(j0, j1 + 1):
            if j not in self._have:
                part = self.dst[j * hop: j * hop + size]
                if part.any():
                    seg = sc.get("seg", size)
                    seg[:len(part)] = part
                    seg[len(part):] = 0.0
                    np.fft.rfft(seg, out=self._blocks[j])
                else:
                    self._silent.add(j)
                self._have.add(j)
        return self._blocks

    def _energy(self) -> npt.NDArray[np.float64]:
        """Running sum of the destination's squares, from 0 (``cs[i]`` = sum of ``dst[:i]**2``)."""
        if self._cs is None:
            cs = self.scratch.get("cs", len(self.dst) + 1)
            cs[0] = 0.0
            np.square(self.dst, out=cs[1:], dtype=np.float64)
            np.cumsum(cs, out=cs)
            self._cs = cs
        return self._cs

    def best(self, s: Array, p0: int, p1: int, keep: bool = False) -> tuple[int, float]:
        """Start position ``p0 + k`` (``p0 <= p0 + k <= p1``) in the destination where ``s``
        fits best, as ``(k, normalised correlation there)``; (0, 0.0) if nothing fits.
        ``keep``: remember the correlation for :meth:`best_second_half`."""
        n = len(s)
        p1 = min(p1, len(self.dst) - n)
        if n == 0 or p1 < p0:
            return 0, 0.0
        end = p1 + n
        if not self.dst[p0:end].any():
            # a silent destination: the correlation is 0 at every lag
            return 0, 0.0
        span = p1 - p0 + 1
        sc = self.scratch
        if n > self.n_max or end - p0 <= self.size:
            m = end - p0
            nfft = sp_fft.next_fast_len(m, True)
            w = sc.get("w", nfft)
            w[:m] = self.dst[p0:end]
            w[m:] = 0.0
            spec = np.fft.rfft(w, out=sc.get("W", nfft // 2 + 1, np.complex128))
            v = sc.get("v", nfft)
            v[:n] = s
            v[n:] = 0.0
            sv = np.fft.rfft(v, out=sc.get("V", nfft // 2 + 1, np.complex128))
            np.conj(sv, out=sv)
            spec *= sv
            c = np.fft.irfft(spec, nfft, out=sc.get("c", nfft))[:span]
        else:
            h, size = self.hop, self.size
            j0, j1 = p0 // h, p1 // h
            nb = j1 - j0 + 1
            blocks = self._ensure_blocks(j0, j1)
            v = sc.get("v", size)
            v[:n] = s
            v[n:] = 0.0
            sv = np.fft.rfft(v, out=sc.get("V", size // 2 + 1, np.complex128))
            np.conj(sv, out=sv)
            live = [j for j in range(j0, j1 + 1) if j not in self._silent]
            nl = len(live)
            cf = sc.get("c", nb * h)
            rows = cf.reshape(nb, h)
            if nl:
                ys = np.multiply(blocks[j0:j1 + 1] if nl == nb else blocks[live], sv,
                                 out=sc.get("ys", nl * (size // 2 + 1),
                                            np.complex128).reshape(nl, -1))
                cb = np.fft.irfft(ys, size, axis=-1,
                                  out=sc.get("cb", nl * size).reshape(nl, size))
            if nl == nb:
                rows[...] = cb[:, :h]
            else:
                # a block of silence correlates to exactly 0 (as its transform would give)
                rows[...] = 0.0
                if nl:
                    rows[[j - j0 for j in live]] = cb[:, :h]
            c = cf[p0 - j0 * h:][:span]
        if keep:
            self._keep(p0, n, c)
        return self._finish(s, c, p0, p1)

    def _keep(self, p0: int, n: int, c: npt.NDArray[np.float64]) -> None:
        name = f"kept{self._slot % 4}"
        self._slot += 1
        old = self._slot_key.pop(name, None)
        if old is not None:
            self._kept.pop(old, None)
        buf = self.scratch.get(name, len(c))
        buf[:] = c
        self._kept[(p0, n)] = buf
        self._slot_key[name] = (p0, n)

    def best_second_half(self, s: Array, p0: int, p1: int, n1: int) -> tuple[int, float] | None:
        """:meth:`best` for the second half of a piece whose correlation over the same lags
        was kept, as was its first half's (``n1`` samples): by linearity this half's is the
        difference, so no transform. None if either was not kept."""
        n = len(s)
        p1 = min(p1, len(self.dst) - n)
        whole = self._kept.get((p0 - n1, n + n1))
        first = self._kept.get((p0 - n1, n1))
        span = p1 - p0 + 1
        if n == 0 or span <= 0 or whole is None or first is None or min(
                len(whole), len(first)) < span:
            return None
        if not self.dst[p0:p1 + n].any():
            return 0, 0.0
        c = np.subtract(whole[:span], first[:span], out=self.scratch.get("c2", span))
        return self._finish(s, c, p0, p1)

    def _finish(self, s: Array, c: npt.NDArray[Any], p0: int, p1: int) -> tuple[int, float]:
        """The best of ``c`` (correlation of ``s`` at start positions ``p0 .. p1``) once
        normalised by the energies of ``s`` and of the destination under it."""
        n, span, end = len(s), p1 - p0 + 1, p1 + len(s)
        sc = self.scratch
        cs = self._energy()
        es = float(np.dot(s, s))
        # a floor of -70 dBFS on the destination: silence never "matches" a quiet source
        r = np.subtract(cs[p0 + n:end + 1], cs[p0:p1 + 1], out=sc.get("r", span))
        np.maximum(r, 0.0, out=r)
        r += n * SILENCE_MS
        r *= es
        np.sqrt(r, out=r)
        r += 1e-12
        np.divide(c, r, out=r)
        k = int(np.argmax(r))
        return k, float(r[k])

    def best_many(self, items: Sequence[tuple[Array, int, int]]) -> list[tuple[int, float]]:
        """:meth:`best` for each ``(s, p0, p1)`` of a batch of short ranges (the narrowed
        searches of consecutive pieces), in one transform of each kind for the whole batch:
        the transforms are small (about 3000 points) and their cost is mostly the call."""
        out: list[tuple[int, float]] = [(0, 0.0)] * len(items)
        rows = []
        for i, (s, p0, p1) in enumerate(items):
            n = len(s)
            p1 = min(p1, len(self.dst) - n)
            if n and p1 >= p0 and self.dst[p0:p1 + n].any():
                rows.append((i, s, p0, p1))
        if not rows:
            return out
        sc = self.scratch
        nr = len(rows)
        ns = np.array([len(s) for _, s, _, _ in rows])
        p0s = np.array([p0 for _, _, p0, _ in rows])
        p1s = np.array([p1 for _, _, _, p1 in rows])
        spans = p1s - p0s + 1
        ms = spans + ns - 1
        nfft = sp_fft.next_fast_len(int(ms.max()), True)
        nf = nfft // 2 + 1
        w = sc.get("bw", nr * nfft).reshape(nr, nfft)
        v = sc.get("bv", nr * nfft).reshape(nr, nfft)
        for j, (_, s, p0, _) in enumerate(rows):
            m, n = int(ms[j]), len(s)
            w[j, :m] = self.dst[p0:p0 + m]
            w[j, m:] = 0.0
            v[j, :n] = s
            v[j, n:] = 0.0
        spec = np.fft.rfft(w, axis=-1, out=sc.get("bW", nr * nf, np.complex128).reshape(nr, nf))
        sv = np.fft.rfft(v, axis=-1, out=sc.get("bV", nr * nf, np.complex128).reshape(nr, nf))
        np.conj(sv, out=sv)
        spec *= sv
        c = np.fft.irfft(spec, nfft, axis=-1, out=sc.get("bc", nr * nfft).reshape(nr, nfft))
        width = int(spans.max())
        cols = np.arange(width)
        idx = np.minimum(p0s[:, None] + cols, p1s[:, None])
        cs = self._energy()
        es = np.array([float(np.dot(s, s)) for _, s, _, _ in rows])
        norm = np.sqrt((np.maximum(cs[idx + ns[:, None]] - cs[idx], 0.0)
                        + ns[:, None] * SILENCE_MS) * es[:, None]) + 1e-12
        r = c[:, :width] / norm
        r[cols >= spans[:, None]] = -np.inf
        ks = r.argmax(axis=1)
        for j, (i, _, _, _) in enumerate(rows):
            k = int(ks[j])
            out[i] = (k, float(r[j, k]))
        return out

@dataclass
class AudioMatch:
    """Result of locating a source in a destination's output (all times in ms)."""

    rate_hz: int
    forwarded: bool
    fraction: float
    latency_onset_ms: float | None = None
    latency_end_ms: float | None = None
    latency_min_ms: float | None = None
    latency_max_ms: float | None = None
    clipped_start_ms: float | None = None
    lost_end_ms: float | None = None
    gaps: int = 0
    gap_ms: float = 0.0
    gap_max_ms: float = 0.0
    level_error_db: float | None = None
    corr: float = 0.0
    pesq_nb: float | None = None
    pesq_wb: float | None = None
    stoi: float | None = None
    lags_ms: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class SourceFrames:
    """What :func:`match` derives from a source alone (its frames, speech and pieces)."""

    fl: int                              # samples per frame
    es: npt.NDArray[np.float64]          # mean square per frame
    act: npt.NDArray[np.bool_]           # frames holding speech
    nact: int
    pcs: list[tuple[int, int]]           # pieces [a, b) in frames

    @classmethod
    def of(cls, src: Array, fs: int) -> SourceFrames:
        fl = int(round(fs * FRAME_MS / 1000.0))
        es = frame_energy(src, fl)
        act = active_frames(es)
        nact = int(act.sum())
        pcs = pieces(act, int(MERGE_GAP_MS / FRAME_MS), int(PIECE_MAX_MS / FRAME_MS)) \
            if nact else []
        return cls(fl, es, act, nact, pcs)


def match(src: Array, dst: Array, fs: int, pre: int, *, quality: bool = False,
          split: bool = True, frames: SourceFrames | None = None,
          scratch: Scratch | None = None) -> AudioMatch:
    """Locate ``src`` in ``dst`` (both at ``fs``; ``dst[pre]`` is the source's first sample time).

    Parameters
    ----------
    src:
        The transmitted audio (what the talker's terminal received), from key-up on.
    dst:
        The destination's output, starting ``pre`` samples before the key-up and running at
        least ``len(src) + LAG_MAX_MS`` past it.
    quality:
        Also compute PESQ-NB (PESQ-WB at 16 kHz) and STOI.
    split:
        Retry a piece that does not match as two halves (down to 100 ms).
    frames:
        ``SourceFrames.of(src, fs)``, if already known (a soak measures the same sources
        every loop).
    scratch:
        Work arrays to reuse (see :class:`Scratch`).
    """
    if frames is None:
        frames = SourceFrames.of(src, fs)
    fl, es, act, nact, pcs = frames.fl, frames.es, frames.act, frames.nact, frames.pcs
    if nact == 0:
        return AudioMatch(fs, False, 0.0)
    lag_lo = max(-pre, int(LAG_MIN_MS * fs / 1000))
    lag_hi = int(LAG_MAX_MS * fs / 1000)
    good: list[tuple[int, int, int, float]] = []      # (frame a, frame b, lag samples, corr)
    best_corr = 0.0
    prev: tuple[int, int] | None = None               # (lag, end sample) of last good piece
    todo = list(reversed(pcs))
    halves: set[tuple[int, int]] = set()
    second_of: dict[tuple[int, int], int] = {}         # second half -> its piece's start
    search = Search(dst, max(b - a for a, b in pcs) * fl, scratch)
    ahead: dict[tuple[int, int, int, int], tuple[int, float]] = {}   # batched searches
    while todo:
        a, b = todo.pop()
        s = src[a * fl:b * fl]
        if float(np.dot(s, s)) <= 0.0:
            continue
        found = None
        if prev is not None:
            since = a * fl - prev[1]
            lo = max(lag_lo, prev[0] - 4 * since - int(0.05 * fs))
            hi = min(lag_hi, prev[0] + int(0.02 * fs))
            if hi > lo:
                got = ahead.pop((a, b, lo, hi), None)
                if got is None:
                    # search this piece and, assuming each matches at the same lag (a lag
                    # changes at about one piece in twenty), the next ones in one batch
                    batch = [(a, b, lo, hi)]
                    end = b * fl
                    for a2, b2 in reversed(todo[len(todo) - NARROW_BATCH + 1:]):
                        since = a2 * fl - end
                        lo2 = max(lag_lo, prev[0] - 4 * since - int(0.05 * fs))
                        hi2 = min(lag_hi, prev[0] + int(0.02 * fs))
                        if hi2 > lo2:
                            batch.append((a2, b2, lo2, hi2))
                        end = b2 * fl
                    hits = search.best_many([(src[a2 * fl:b2 * fl], pre + a2 * fl + lo2,
                                             pre + a2 * fl + hi2)
                                            for a2, b2, lo2, hi2 in batch])
                    ahead = dict(zip(batch, hits, strict=True))
                    got = ahead.pop((a, b, lo, hi))
                k, r = got
                if r >= max(PIECE_CORR, 16.0 / math.sqrt(len(s))):
                    found = (lo + k, r)
        if found is None:
            p0, p1 = pre + a * fl + lag_lo, pre + a * fl + lag_hi
            got = None
            if (a, b) in second_of:
                got = search.best_second_half(s, p0, p1, (a - second_of[(a, b)]) * fl)
            if got is None:
                # a piece that may be split, and a first half, keep their correlation
                keep = split and (b - a >= 2 * SPLIT_MIN_FRAMES
                                  or ((a, b) in halves and (a, b) not in second_of))
                got = search.best(s, p0, p1, keep=keep)
            k, r = got
            found = (lag_lo + k, r)
        best_corr = max(best_corr, found[1])
        # a short piece correlates with noise by chance: demand more of it (and of halves)
        need = max(PIECE_CORR, 16.0 / math.sqrt(len(s)))
        if (a, b) in halves:
            need = max(need, HALF_CORR)
        if found[1] >= need:
            good.append((a, b, found[0], found[1]))
            prev = (found[0], b * fl)
        elif split and b - a >= 2 * SPLIT_MIN_FRAMES:
            # the engine may have skipped a silent block inside this piece: try the halves
            mid = (a + b) // 2
            todo += [(mid, b), (a, mid)]
            halves.update(((a, mid), (mid, b)))
            second_of[(mid, b)] = a
    if not good:
        return AudioMatch(fs, False, 0.0, corr=best_corr)
    # The onset before the first matched piece: the delay only shrinks during an over (silent
    # blocks are skipped), so audio played before it sits at the same or a longer lag.
    good.sort()
    a0, lag0 = good[0][0], good[0][2]
    act_before = np.flatnonzero(act[:a0])
    if split and len(act_before) and a0 - int(act_before[0]) >= 8:
        a = int(act_before[0])
        s = src[a * fl:a0 * fl]
        hi = min(lag_hi, lag0 + int(0.6 * fs))
        k, r = search.best(s, pre + a * fl + lag0, pre + a * fl + hi)
        if r >= max(PIECE_CORR, 16.0 / math.sqrt(len(s))):
            good.insert(0, (a, a0, lag0 + k, r))
    # overall gain of the path, from the delivered pieces
    gains = []
    for a, b, lag, _ in good:
        s = src[a * fl:b * fl]
        d = dst[pre + a * fl + lag: pre + b * fl + lag]
        gains.append(math.sqrt(float(np.dot(d, d)) / max(float(np.dot(s, s)), 1e-20)))
    g2 = float(np.median(gains)) ** 2
    present = np.zeros(len(act), bool)
    lag_of = np.full(len(act), -1, np.int64)
    eds = []
    for a, b, lag, _ in good:
        d = dst[pre + a * fl + lag: pre + b * fl + lag]
        ed = frame_energy(d, fl)
        eds.append(ed)
        k = min(len(ed), b - a)
        ok = ed[:k] >= np.maximum(g2 * es[a:a + k] * 10 ** (PRESENT_DB / 10), SILENCE_MS)
        present[a:a + k] = ok & act[a:a + k]
        lag_of[a:b] = lag
    pres_idx = np.flatnonzero(present)
    act_idx = np.flatnonzero(act)
    if len(pres_idx) == 0:
        return AudioMatch(fs, False, 0.0, corr=best_corr)
    ms = FRAME_MS
    first_p, last_p = int(pres_idx[0]), int(pres_idx[-1])
    # the onset is the first talkspurt of 30 ms or more (a lone click is not a syllable)
    onset = next((a for a, b in runs(act) if b - a >= 6), int(act_idx[0]))
    inner = act.copy()
    inner[:first_p] = False
    inner[last_p + 1:] = False
    gap_runs = [(a, b) for a, b in runs(inner & ~present) if (b - a) * ms >= GAP_MIN_MS]
    lags = [(a * ms, lag * 1000.0 / fs) for a, _, lag, _ in good]
    e_src = float(es[present].sum())
    e_dst = 0.0
    for (a, b, _, _), ed in zip(good, eds, strict=True):
        k = min(len(ed), b - a)
        e_dst += float(ed[:k][present[a:a + k]].sum())
    res = AudioMatch(
        rate_hz=fs, forwarded=True, fraction=round(len(pres_idx) / nact, 4),
        latency_onset_ms=round(lags[0][1], 2), latency_end_ms=round(lags[-1][1], 2),
        latency_min_ms=round(min(v for _, v in lags), 2),
        latency_max_ms=round(max(v for _, v in lags), 2),
        clipped_start_ms=round(max(0.0, (first_p - onset) * ms), 1),
        lost_end_ms=round(max(0.0, (int(act_idx[-1]) - last_p) * ms), 1),
        gaps=len(gap_runs), gap_ms=round(sum((b - a) * ms for a, b in gap_runs), 1),
        gap_max_ms=round(max(((b - a) * ms for a, b in gap_runs), default=0.0), 1),
        level_error_db=round(10 * math.log10(max(e_dst, 1e-20) / max(e_src, 1e-20)), 2),
        corr=round(best_corr, 3), lags_ms=[(round(a, 1), round(v, 2)) for a, v in lags])
    if quality:
        # re-align the destination piece by piece (frames between pieces follow the last lag)
        filled = lag_of.copy()
        last = good[0][2]
        for i in range(len(filled)):
            if filled[i] < 0:
                filled[i] = last
            else:
                last = int(filled[i])
        idx = np.arange(len(act) * fl) + pre + np.repeat(filled, fl)
        aligned = dst[np.clip(idx, 0, len(dst) - 1)]
        ref = src[:len(aligned)]
        res.pesq_nb, res.pesq_wb, res.stoi = speech_quality(ref, aligned, fs)
    return res


def speech_quality(ref: Array, deg: Array, fs: int) -> tuple[float | None, float | None,
                                                              float | None]:
    """PESQ-NB (P.862.1 MOS-LQO at 8 kHz), PESQ-WB (only at 16 kHz) and STOI; None if n/a."""
    from pesq import PesqError, pesq
    from pystoi import stoi

    nb = wb = st = None
    if len(ref) < int(0.5 * fs):
        return None, None, None
    try:
        r8, d8 = (ref, deg) if fs == 8000 else (_resample(ref, fs, 8000), _resample(deg, fs, 8000))
        nb = round(float(pesq(8000, r8, d8, "nb")), 3)
        if fs == 16000:
            wb = round(float(pesq(16000, ref, deg, "wb")), 3)
    except PesqError:
        pass
    try:
        st = round(float(stoi(ref, deg, fs, extended=False)), 3)
    except Exception:  # noqa: BLE001 - pystoi raises bare errors on degenerate input
        st = None
    return nb, wb, st


# --------------------------------------------------------------------------- expectations


@dataclass
class Expectation:
    """What the bench's reference model says about one transmission (times in s)."""

    tx: str
    cor_open_s: float
    cor_close_s: float
    reason: str                 # patched | floor | priority | not_patched | no_cor
    holder: str | None = None   # the transmission holding the floor when this one was blocked
    forward_until_s: float | None = None   # TOT or pre-emption cut (scenario time)
    cut_reason: str | None = None          # tot | preempted


def cor_interval(plan: ReplayPlan, tx: Transmission) -> tuple[float, float]:
    """When the gateway's COR for ``tx`` should open and close (scenario seconds).

    Scripted ports: key-up + network delay .. release. VOX ports: the first 1 ms frame above
    ``open_dbfs`` + attack .. the last frame above ``close_dbfs`` + hang.
    """
    pp = plan.port_of_pair(tx.pair)
    sq = pp.settings.squelch
    if pp.scripted:
        return tx.start_s + (pp.cor_delay_ms + sq.attack_ms) / 1000.0, tx.end_s
    x, fs = plan.scenario.audio(tx)
    n = max(1, fs // 1000)
    e = frame_energy(x, n)
    db = 10 * np.log10(e + 1e-20)
    above = np.flatnonzero(db >= sq.open_dbfs)
    if len(above) == 0:
        return tx.end_s, tx.end_s
    keep = np.flatnonzero(db >= sq.close_dbfs)
    o = tx.start_s + (above[0] + 1) / 1000.0 + sq.attack_ms / 1000.0
    c = min(tx.end_s + sq.hang_ms / 1000.0,
            tx.start_s + (keep[-1] + 1) / 1000.0 + sq.hang_ms / 1000.0)
    return o, max(o, c)


def expectations(plan: ReplayPlan, txs: Sequence[Transmission]) -> dict[str, Expectation]:
    """The reference floor model: half duplex, first COR wins, higher priority pre-empts,
    the time-out timer ends an over. Independent of the engine's code."""
    out: dict[str, Expectation] = {}
    members = set(plan.patch_members)
    ordered = []
    for tx in txs:
        o, c = cor_interval(plan, tx)
        pp = plan.port_of_pair(tx.pair)
        if pp.name not in members:
            out[tx.id] = Expectation(tx.id, o, c, "not_patched")
        elif o >= c:
            out[tx.id] = Expectation(tx.id, o, c, "no_cor")
        else:
            ordered.append((o, -plan.priorities.get(pp.name, 0), tx.start_s, tx, c))
    ordered.sort(key=lambda v: (v[0], v[1], v[2]))
    holder: tuple[Transmission, float, int] | None = None      # (tx, hold end, priority)
    full = plan.mode == "full_duplex"
    for o, negprio, _, tx, c in ordered:
        prio = -negprio
        pp = plan.port_of_pair(tx.pair)
        tot = pp.settings.ptt.tot_s
        ex = Expectation(tx.id, o, c, "patched")
        if holder is not None and holder[1] <= o:
            holder = None
        if holder is not None and not full:
            h_tx, h_end, h_prio = holder
            if prio <= h_prio:
                ex.reason, ex.holder = "floor", h_tx.id
                out[tx.id] = ex
                continue
            hx = out[h_tx.id]
            hx.forward_until_s, hx.cut_reason = o, "preempted"
            ex.reason, ex.holder = "priority", h_tx.id
        end = c
        if tot and o + tot < c:
            end = o + tot
            ex.forward_until_s, ex.cut_reason = end, "tot"
        out[tx.id] = ex
        if not full:
            holder = (tx, end, prio)
    return out


# --------------------------------------------------------------------------- events


@dataclass
class EventIndex:
    """Per-port PTT and COR intervals and patch events, from engine events (seconds)."""

    ptt: dict[str, list[tuple[float, float]]]
    cor: dict[str, list[tuple[float, float]]]
    floor: list[tuple[float, float, str | None]]       # (from, to, holder)
    blocked: list[dict[str, Any]]
    preempts: list[dict[str, Any]]
    tots: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    keyups: dict[str, int]


def index_events(events: Iterable[Mapping[str, Any]], rate_hz: int, end_s: float) -> EventIndex:
    """Fold engine events (``Event.to_json`` dicts) into intervals; open ones end at ``end_s``."""
    ptt: dict[str, list[tuple[float, float]]] = {}
    cor: dict[str, list[tuple[float, float]]] = {}
    open_ptt: dict[str, float] = {}
    open_cor: dict[str, float] = {}
    floor: list[tuple[float, float, str | None]] = []
    cur: tuple[float, str | None] | None = None
    blocked, preempts, tots, faults = [], [], [], []
    keyups: dict[str, int] = {}
    for ev in events:
        t = ev["t"] / rate_hz
        topic: str = ev["topic"]
        data = ev.get("data", {})
        parts = topic.split(".")
        if parts[0] == "port" and len(parts) >= 3:
            name, what = topic[5:].rsplit(".", 1)     # port names may contain dots
            if what == "ptt":
                if data.get("on"):
                    open_ptt.setdefault(name, t)
                    keyups[name] = keyups.get(name, 0) + 1
                elif name in open_ptt:
                    ptt.setdefault(name, []).append((open_ptt.pop(name), t))
            elif what == "cor":
                if data.get("open"):
                    open_cor.setdefault(name, t)
                elif name in open_cor:
                    cor.setdefault(name, []).append((open_cor.pop(name), t))
        elif parts[0] == "patch" and len(parts) >= 3:
            what = parts[-1]
            rec = {"t_s": round(t, 4), **data, "info": ev.get("info", "")}
            if what == "floor" and "holder" in data:
                if cur is not None:
                    floor.append((cur[0], t, cur[1]))
                cur = (t, data["holder"])
            elif what == "blocked":
                blocked.append(rec)
            elif what == "preempt":
                preempts.append(rec)
            elif what == "tot":
                tots.append(rec)
        elif parts[0] == "fault":
            faults.append({"t_s": round(t, 4), "topic": topic, **data,
                           "info": ev.get("info", "")})
    for name, t0 in open_ptt.items():
        ptt.setdefault(name, []).append((t0, end_s))
    for name, t0 in open_cor.items():
        cor.setdefault(name, []).append((t0, end_s))
    if cur is not None:
        floor.append((cur[0], end_s, cur[1]))
    floor = [f for f in floor if f[2] is not None]
    return EventIndex(ptt, cor, floor, blocked, preempts, tots, faults, keyups)


def _busy_at(ev: EventIndex, port: str, t: float, guard_s: float) -> float | None:
    """If the gateway keyed ``port`` at ``t`` (or within the guard after), when the mask ends."""
    for a, b in ev.ptt.get(port, []):
        if a <= t < b + guard_s:
            return b + guard_s
    return None


# --------------------------------------------------------------------------- deliveries


@dataclass
class Delivery:
    """One transmission at one destination port."""

    tx: str
    dest: str
    expected: bool | None
    reason: str
    forwarded: bool
    ok: bool
    verdict: str
    fraction: float = 0.0
    latency_onset_ms: float | None = None
    latency_end_ms: float | None = None
    latency_max_ms: float | None = None
    clipped_start_ms: float | None = None
    lost_end_ms: float | None = None
    gaps: int = 0
    gap_ms: float = 0.0
    gap_max_ms: float = 0.0
    level_error_db: float | None = None
    pesq_nb: float | None = None
    pesq_wb: float | None = None
    stoi: float | None = None
    corr: float = 0.0
    rate_hz: int = 0


def _judge(expect: bool | None, fwd: bool, reason: str, busy_lost: bool) -> tuple[bool, str]:
    """``expect`` None: either outcome is right (a destination that was busy part of the time)."""
    if expect is None:
        return True, f"forwarded late ({reason})" if fwd else f"silent ({reason})"
    if expect and fwd:
        return True, "forwarded"
    if not expect and not fwd:
        return True, f"silent ({reason})"
    if expect and not fwd:
        if busy_lost:
            return True, "lost: busy (gateway still transmitting on the source port)"
        return False, "MISSED"
    return False, "LEAKED" if reason == "not_patched" else f"WRONG: forwarded despite {reason}"


def _dest_busy(cors: Mapping[str, list[tuple[float, float, str]]], dest: PortPlan,
               t_open: float, t_close: float, own: str) -> tuple[str, float] | None:
    """If ``dest``'s terminal was receiving another unit when the over reached it (before its
    PTT lead ran out), return that transmission's id and when its COR closed."""
    lead = dest.settings.ptt.lead_ms / 1000.0
    for o, c, tid in cors.get(dest.name, []):
        if tid != own and o <= t_open + lead and c > t_open:
            return tid, c
    return None


class MeasureCache:
    """What :func:`measure` keeps from one call to the next: the source side (each
    transmission's audio at the comparison rate through the path's filters, and its
    :class:`SourceFrames`) and the search's work arrays. A soak keeps one for the whole run,
    since every loop measures the same clips over the same paths. Sources are keyed by the
    clip and its length, the rates and the two ports' filters, so a different source is never
    mistaken for one seen before; bounded by the scenario (one entry per clip, path and rate)."""

    def __init__(self) -> None:
        self._src: dict[tuple[Any, ...], Array] = {}
        self._frames: dict[tuple[Any, ...], SourceFrames] = {}
        self.scratch = Scratch()

    def source(self, x: Array, fs_src: int, key: tuple[Any, ...], src_port: PortPlan,
               dst_port: PortPlan, fa: int) -> tuple[Array, tuple[Any, ...]]:
        k = (*key, fs_src, fa, repr(src_port.settings.filters), repr(dst_port.settings.filters))
        y = self._src.get(k)
        if y is None:
            y = self._src[k] = path_filters(src_port, dst_port, _resample(x, fs_src, fa), fa)
        return y, k

    def frames(self, src: Array, fs: int, key: tuple[Any, ...]) -> SourceFrames:
        f = self._frames.get(key)
        if f is None:
            f = self._frames[key] = SourceFrames.of(src, fs)
        return f


def measure(plan: ReplayPlan, txs: Sequence[Transmission], outputs: Mapping[str, tuple[Array, int]],
            events: Sequence[Mapping[str, Any]], *, offset_s: float = 0.0,
            quality: bool = True, run_end_s: float | None = None,
            cache: MeasureCache | None = None) -> list[dict[str, Any]]:
    """Measure every transmission at every other port.

    Parameters
    ----------
    txs:
        The transmissions to measure (scenario seconds).
    outputs:
        Port name -> ``(samples, rate_hz)``: what the gateway sent to each port; sample 0 is
        scenario second ``offset_s``.
    events:
        Engine events (``Event.to_json`` dicts) with ``t`` on the engine clock, whose 0 is
        scenario second 0.
    quality:
        Compute PESQ and STOI (about 20 ms per second of speech per destination).
    cache:
        Source-side results to reuse (a soak passes the same one every loop).

    Returns
    -------
    list of dict
        One record per transmission, with its expectation and a ``deliveries`` list. A
        delivery's ``expected`` is True (must be heard), False (must not) or None (either is
        right: the destination's terminal was receiving another unit for part of the over).
    """
    sc = plan.scenario
    rate = plan.engine.rate_hz
    cache = cache if cache is not None else MeasureCache()
    end_s = run_end_s if run_end_s is not None else offset_s + max(
        (len(x) / fs for x, fs in outputs.values()), default=0.0)
    ev = index_events(events, rate, end_s)
    exp = expectations(plan, txs)
    cors: dict[str, list[tuple[float, float, str]]] = {}
    for tx in txs:
        e = exp[tx.id]
        cors.setdefault(plan.port_of_pair(tx.pair).name, []).append(
            (e.cor_open_s, e.cor_close_s, tx.id))
    records = []
    for tx in txs:
        src_port = plan.port_of_pair(tx.pair)
        e = exp[tx.id]
        x, fs_src = sc.audio(tx)
        deliveries = []
        for pp in plan.ports:
            if pp.name == src_port.name or pp.name not in outputs:
                continue
            y, fs_dst = outputs[pp.name]
            patched = e.reason != "not_patched" and pp.name in plan.patch_members
            expect: bool | None = patched and e.reason in ("patched", "priority")
            reason = e.reason if patched else "not_patched"
            fa = min(fs_src, fs_dst, rate)
            src, skey = cache.source(x, fs_src, (str(tx.file), len(x)), src_port, pp, fa)
            src_cmp = src
            if expect and e.forward_until_s is not None:
                keep = max(0, int((e.forward_until_s - tx.start_s) * fa))
                if keep < int(0.05 * fa):
                    expect, reason = False, e.cut_reason or reason
                else:
                    src_cmp = src[:keep]
            if expect is False and reason == "floor":
                # the gateway was transmitting on the source port when this over began, so it
                # could not hear the start (a half-duplex terminal is deaf while it transmits);
                # once it unkeys, the rest of the over is a new reception: either is right
                mask_end = _busy_at(ev, src_port.name, e.cor_open_s,
                                    src_port.settings.ptt.guard_ms / 1000.0)
                if mask_end is not None and mask_end < e.cor_close_s - 0.2:
                    expect, reason = None, "src_masked: gateway was transmitting on the source"
            if expect:
                busy = _dest_busy(cors, pp, e.cor_open_s, e.cor_close_s, tx.id)
                if busy is not None:
                    reason = f"dest_busy: receiving {busy[0]}"
                    # the rest of the over may reach it once its own over has ended
                    expect = None if busy[1] < e.cor_close_s - 0.2 else False
            pre_s = 0.05
            a = int(round((tx.start_s - offset_s - pre_s) * fs_dst))
            b = int(round((tx.start_s - offset_s + len(src) / fa + TAIL_S) * fs_dst))
            win = y[max(0, a):max(0, b)]
            if a < 0:
                win = np.concatenate([np.zeros(-a, np.float32), win])
            dst = _resample(win, fs_dst, fa)
            need = int(round(pre_s * fa)) + len(src) + int(TAIL_S * fa)
            if len(dst) < need:
                dst = np.concatenate([dst, np.zeros(need - len(dst), np.float32)])
            # a transmission cut short (TOT, pre-emption) is framed afresh: its speech
            # threshold depends on its length
            frames = cache.frames(src, fa, skey) if src_cmp is src else None
            m = match(src_cmp, dst, fa, int(round(pre_s * fa)),
                      quality=quality and bool(expect), split=expect is not False,
                      frames=frames, scratch=cache.scratch)
            if not expect and m.forwarded and m.fraction < 0.05:
                m.forwarded = False          # a stray 5 ms of correlation is not a leak
            busy_lost = False
            if expect and not m.forwarded:
                mask_end = _busy_at(ev, src_port.name, e.cor_open_s,
                                    src_port.settings.ptt.guard_ms / 1000.0)
                busy_lost = mask_end is not None and mask_end >= e.cor_close_s - 0.02
            ok, verdict = _judge(expect, m.forwarded, reason, busy_lost)
            if expect and m.forwarded and e.cut_reason:
                verdict = f"forwarded until {e.cut_reason}"
            deliveries.append(asdict(Delivery(
                tx=tx.id, dest=pp.name, expected=expect, reason=reason, forwarded=m.forwarded,
                ok=ok, verdict=verdict, fraction=m.fraction,
                latency_onset_ms=m.latency_onset_ms, latency_end_ms=m.latency_end_ms,
                latency_max_ms=m.latency_max_ms, clipped_start_ms=m.clipped_start_ms,
                lost_end_ms=m.lost_end_ms, gaps=m.gaps, gap_ms=m.gap_ms,
                gap_max_ms=m.gap_max_ms, level_error_db=m.level_error_db, pesq_nb=m.pesq_nb,
                pesq_wb=m.pesq_wb, stoi=m.stoi, corr=m.corr, rate_hz=fa)))
        records.append({
            "id": tx.id, "source_id": tx.source_id or tx.id, "loop": tx.loop,
            "start_s": round(tx.start_s, 4), "end_s": round(tx.end_s, 4), "pair": tx.pair,
            "port": src_port.name, "unit": tx.unit, "tags": list(tx.tags),
            "file": tx.file.name, "cor_open_s": round(e.cor_open_s, 4),
            "cor_close_s": round(e.cor_close_s, 4), "reason": e.reason, "holder": e.holder,
            "forward_until_s": None if e.forward_until_s is None else round(e.forward_until_s, 4),
            "cut_reason": e.cut_reason, "deliveries": deliveries})
    return records


# --------------------------------------------------------------------------- run figures


def run_figures(plan: ReplayPlan, events: Sequence[Mapping[str, Any]], end_s: float,
                outputs: Mapping[str, tuple[Array, int]] | None = None,
                port_stats: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Per-run figures: floor conflicts and resolutions, key-ups, TOT, faults, xruns, silence of
    ports outside the patch, and the floor timeline."""
    ev = index_events(events, plan.engine.rate_hz, end_s)
    conflicts = ([{**b, "resolution": "blocked"} for b in ev.blocked]
                 + [{**p, "resolution": "preempted"} for p in ev.preempts])
    conflicts.sort(key=lambda r: r["t_s"])
    xruns = {"underruns": 0, "overruns": 0, "status_flags": 0, "reopens": 0}
    for st in (port_stats or {}).values():
        for k in xruns:
            xruns[k] += int(st.get(k, 0) or 0)
    silent: dict[str, Any] = {}
    for pp in plan.ports:
        if pp.in_patch:
            continue
        keyed = sum(b - a for a, b in ev.ptt.get(pp.name, []))
        peak = None
        if outputs and pp.name in outputs:
            y = outputs[pp.name][0]
            peak = round(20 * math.log10(float(np.max(np.abs(y))) + 1e-10), 1) if len(y) else None
        silent[pp.name] = {"keyed_s": round(keyed, 3), "peak_dbfs": peak,
                           "ok": keyed == 0 and (peak is None or peak < -80)}
    return {
        "floor_conflicts": conflicts,
        "ptt_keyups": dict(sorted(ev.keyups.items())),
        "tot_releases": ev.tots,
        "faults": ev.faults,
        "xruns": xruns,
        "ports_outside_patch": silent,
        "timeline": {
            "floor": [(round(a, 3), round(b, 3), h) for a, b, h in ev.floor],
            "ptt": {k: [(round(a, 3), round(b, 3)) for a, b in v] for k, v in ev.ptt.items()},
            "cor": {k: [(round(a, 3), round(b, 3)) for a, b in v] for k, v in ev.cor.items()},
        },
    }


def _stats(vals: Sequence[float]) -> dict[str, float] | None:
    v = [x for x in vals if x is not None]
    if not v:
        return None
    a = np.asarray(v, float)
    return {"n": len(v), "median": round(float(np.median(a)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "max": round(float(a.max()), 2),
            "min": round(float(a.min()), 2), "mean": round(float(a.mean()), 2)}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run summary over all deliveries of ``records`` (see :func:`measure`)."""
    ds = [d for r in records for d in r["deliveries"]]
    # figures over the deliveries that had to be heard (late ones to a busy terminal apart)
    fwd = [d for d in ds if d["expected"] and d["forwarded"]]
    return {
        "transmissions": len(records),
        "deliveries": len(ds),
        "expected_forwards": sum(1 for d in ds if d["expected"]),
        "forwarded": len(fwd),
        "forwarded_late_to_busy": sum(1 for d in ds if d["expected"] is None
                                      and d["forwarded"]),
        "missed": sum(1 for d in ds if d["verdict"] == "MISSED"),
        "lost_busy": sum(1 for d in ds if d["verdict"].startswith("lost: busy")),
        "leaked": sum(1 for d in ds if d["expected"] is False and d["forwarded"]),
        "wrong": sum(1 for d in ds if not d["ok"]),
        "latency_onset_ms": _stats([d["latency_onset_ms"] for d in fwd]),
        "latency_end_ms": _stats([d["latency_end_ms"] for d in fwd]),
        "clipped_start_ms": _stats([d["clipped_start_ms"] for d in fwd]),
        "lost_end_ms": _stats([d["lost_end_ms"] for d in fwd]),
        "gaps": sum(d["gaps"] for d in fwd),
        "gap_ms": round(sum(d["gap_ms"] for d in fwd), 1),
        "level_error_db": _stats([d["level_error_db"] for d in fwd]),
        "pesq_nb": _stats([d["pesq_nb"] for d in fwd]),
        "pesq_wb": _stats([d["pesq_wb"] for d in fwd]),
        "stoi": _stats([d["stoi"] for d in fwd]),
    }


def scenario_info(sc: Scenario) -> dict[str, Any]:
    return {"id": sc.id, "title": sc.title, "file": sc.path.name, "loops": sc.loops,
            "stretch": sc.stretch, "duration_s": round(sc.total_duration_s, 3),
            "transmissions": len(sc.transmissions), "patch": sc.patch_id,
            "members": list(sc.patch_members)}


