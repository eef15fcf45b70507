"""VOX squelch for all ports at once.

The detector works on fixed 1 ms frames, carried across blocks, so its decisions (and the
sample-exact times of its edges) do not depend on the engine block size. Per port it has an
open threshold and a lower close threshold (hysteresis), an attack (the level must stay above
the open threshold this long before COR opens) and a hang (the level must stay below the close
threshold this long before COR closes).

Thresholds are compared in the linear domain: each dBFS threshold is turned once (in
:meth:`VoxBank.configure`) into the smallest sum of squares per frame whose level reaches it, so
no logarithm is taken per frame; levels in dBFS are computed only for the edges and the meter.

Only one run per port decides anything: a closed port waits for a run of loud frames, an open
one for a run of quiet frames (the frame that opens a port is loud, so its quiet run starts at
0 then, and the other way round), so only that run is counted.

Real-time limits: :meth:`VoxBank.process` runs on the engine thread once per tick, a handful
of vectorised numpy operations on the whole block whatever the number of ports. A block with
no frame that continues any port's run (no loud frame on a closed port, no quiet frame on an
open one: most blocks, in speech and in silence) takes 5 operations; one that continues a
run but cannot complete it about 10. A block in which an edge may fall is decided frame by
frame (a few numpy operations per 1 ms frame). docs/engine.md has the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_EPS = 1e-12
#: A run limit no run reaches: used for the runs that cannot change a port's state
_NEVER = np.iinfo(np.int64).max // 2


def frame_level_db(sums: npt.NDArray[np.float64], frame: int) -> npt.NDArray[np.float64]:
    """Level in dBFS RMS of frames whose sums of squares are ``sums`` (``frame`` samples each;
    silence reads -120 dBFS)."""
    out: npt.NDArray[np.float64] = 10.0 * np.log10(sums / frame + _EPS)
    return out


def _sum_threshold(db: float, frame: int) -> float:
    """The smallest sum of squares of a ``frame``-sample frame whose level (as
    :func:`frame_level_db` computes it, rounding included) is at least ``db`` dBFS.

    The level is non-decreasing in the sum, so ``level >= db`` is exactly ``sum >= this``
    (and ``level < db`` exactly ``sum < this``), bit for bit: the analytic estimate is moved
    by single floating-point steps onto the boundary.
    """
    def reaches(s: float) -> bool:
        return bool(frame_level_db(np.array([s]), frame)[0] >= db)

    s = max(0.0, frame * (10.0 ** (db / 10.0) - _EPS))
    if reaches(s):
        while s > 0.0 and reaches(float(np.nextafter(s, -np.inf))):
            s = float(np.nextafter(s, -np.inf))
        return s
    while not reaches(s):
        s = float(np.nextafter(s, np.inf))
    return s


@dataclass(frozen=True, slots=True)
class VoxEdge:
    """COR edge of one port: ``t`` in engine samples (end of the deciding frame)."""

    port: int
    t: int
    open: bool
    level_dbfs: float


class VoxBank:
    """VOX detectors for ``n`` ports (rows of the engine's 2-D blocks).

    Parameters
    ----------
    rate_hz:
        Engine sample rate.
    n:
        Number of ports.
    frame_ms:
        Decision frame, ms (default 1).

    Per port, one run is counted in frames: on a closed port the run of loud frames (level at
    or above the open threshold), on an open one the run of quiet frames (below the close
    threshold). A closed port with VOX enabled opens when its loud run reaches the attack, an
    open port closes when its quiet run reaches the hang (or at once when its VOX was
    disabled). Ports without VOX are not followed; a port's attack counts from when its VOX
    is enabled.
    """

    def __init__(self, rate_hz: int, n: int, frame_ms: float = 1.0) -> None:
        self.rate_hz = rate_hz
        self.frame = max(1, int(round(rate_hz * frame_ms / 1000.0)))
        self.frame_ms = self.frame * 1000.0 / rate_hz
        self.open_db = np.full(n, -40.0)
        self.close_db = np.full(n, -46.0)
        self.attack_frames = np.full(n, 10, np.int64)
        self.hang_frames = np.full(n, 300, np.int64)
        self.enabled = np.zeros(n, bool)
        # the thresholds as sums of squares of one frame (see _sum_threshold)
        self._default_sums = (_sum_threshold(-40.0, self.frame),
                              _sum_threshold(-46.0, self.frame))
        self._open_sum = np.full(n, self._default_sums[0])
        self._close_sum = np.full(n, self._default_sums[1])
        self.reset()

    @property
    def n(self) -> int:
        return len(self.open_db)

    @property
    def level_db(self) -> npt.NDArray[np.float64]:
        """Level meter: dBFS RMS of each port's last complete frame (-120 before the first)."""
        return frame_level_db(self._last_sum, self.frame)

    def configure(self, i: int, *, open_dbfs: float, close_dbfs: float, attack_ms: float,
                  hang_ms: float, enabled: bool = True) -> None:
        """Set port ``i``'s thresholds (dBFS RMS per frame) and times (ms)."""
        if close_dbfs > open_dbfs:
            raise ValueError(f"vox close threshold {close_dbfs} dBFS is above the open "
                             f"threshold {open_dbfs} dBFS")
        self.open_db[i] = open_dbfs
        self.close_db[i] = close_dbfs
        self._open_sum[i] = _sum_threshold(open_dbfs, self.frame)
        self._close_sum[i] = _sum_threshold(close_dbfs, self.frame)
        self.attack_frames[i] = max(1, int(round(attack_ms / self.frame_ms)))
        self.hang_frames[i] = max(1, int(round(hang_ms / self.frame_ms)))
        if enabled and not self.enabled[i]:
            self._run[i] = 0             # its run was not followed while VOX was off
        self.enabled[i] = enabled
        self._update_limits()

    def reset(self) -> None:
        """Clear state (all closed, partial frame dropped); keep parameters."""
        n = self.n
        self.is_open = np.zeros(n, bool)
        self._run = np.zeros(n, np.int64)   # closed: loud run, open: quiet run (frames)
        self._acc = np.zeros(n)
        self._acc_n = 0
        self._last_sum = np.zeros(n)
        self._update_limits()

    def resize(self, n: int) -> None:
        """Grow or shrink to ``n`` ports keeping existing rows (ports added or removed)."""
        def fit(a: npt.NDArray[Any], fill: object) -> npt.NDArray[Any]:
            out = np.full(a.shape[:-1] + (n,), fill, dtype=a.dtype)
            k = min(n, a.shape[-1])
            out[..., :k] = a[..., :k]
            return out

        self.open_db = fit(self.open_db, -40.0)
        self.close_db = fit(self.close_db, -46.0)
        self._open_sum = fit(self._open_sum, self._default_sums[0])
        self._close_sum = fit(self._close_sum, self._default_sums[1])
        self.attack_frames = fit(self.attack_frames, 10)
        self.hang_frames = fit(self.hang_frames, 300)
        self.enabled = fit(self.enabled, False)
        self.is_open = fit(self.is_open, False)
        self._run = fit(self._run, 0)
        self._acc = fit(self._acc, 0.0)
        self._last_sum = fit(self._last_sum, 0.0)
        self._update_limits()

    def delete(self, i: int) -> None:
        """Remove port row ``i``."""
        for name in ("open_db", "close_db", "_open_sum", "_close_sum", "attack_frames",
                     "hang_frames", "enabled", "is_open", "_acc", "_last_sum"):
            setattr(self, name, np.delete(getattr(self, name), i))
        self._run = np.delete(self._run, i)
        self._update_limits()

    def _update_limits(self) -> None:
        """Re-derive, after a change of state or settings, what each port's run counts and
        the run length at which the port changes state.

        A frame continues the run when ``sum * sign >= threshold``: on a closed port with
        VOX ``sum >= open``; on an open one ``-sum >= -close`` moved up one floating-point
        step, which is exactly ``sum < close``; on a closed port without VOX never. The limit
        is the attack (closed, VOX), the hang (open, VOX), 0 (open with VOX disabled: it
        closes at the next frame) or :data:`_NEVER`.
        """
        is_open, enabled = self.is_open, self.enabled
        self._lim = np.where(is_open, np.where(enabled, self.hang_frames, 0),
                             np.where(enabled, self.attack_frames, _NEVER))
        self._sign = np.where(is_open, -1.0, 1.0)[:, None]
        self._thr = np.where(is_open, np.nextafter(-self._close_sum, np.inf),
                             np.where(enabled, self._open_sum, np.inf))[:, None]
        self._active = bool((enabled | is_open).any())
        self._due = bool((self._lim <= 0).any())    # a port that changes whatever it hears

    def process(self, t0: int, x: npt.NDArray[np.float32]) -> list[VoxEdge]:
        """Feed one block ``x`` (ports x samples) starting at engine sample ``t0``.

        Returns the COR edges decided inside this block, in time order.
        """
        edges: list[VoxEdge] = []
        rows, n = x.shape
        f = self.frame
        sq = np.square(x, dtype=np.float64)
        if self._acc_n == 0 and n and n % f == 0:
            # the usual case: the block is whole frames and nothing is carried over
            return self._frames(t0, f, np.add.reduce(sq.reshape(rows, n // f, f), axis=2),
                                edges)
        # complete the frame carried over from the last block, then all whole frames at once
        head = min(f - self._acc_n, n)
        self._acc += sq[:, :head].sum(axis=1)
        self._acc_n += head
        if self._acc_n < f:
            return edges
        n_whole = (n - head) // f
        sums = np.empty((self.n, 1 + n_whole))
        sums[:, 0] = self._acc
        if n_whole:
            sums[:, 1:] = sq[:, head:head + n_whole * f].reshape(self.n, n_whole, f).sum(axis=2)
        tail = head + n_whole * f
        self._acc = sq[:, tail:].sum(axis=1)
        self._acc_n = n - tail
        return self._frames(t0, head, sums, edges)

    def _frames(self, t0: int, head: int, sums: npt.NDArray[np.float64],
                edges: list[VoxEdge]) -> list[VoxEdge]:
        """Decide on whole frames (``sums`` of squares, ports x frames); the first ends at
        ``t0 + head``."""
        self._last_sum = sums[:, -1]
        if not self._active:
            return edges                 # no port on VOX: nothing to decide
        frames = sums.shape[1]
        hits = np.multiply(sums, self._sign) >= self._thr     # frames that continue a run
        if not self._due and not hits.any():
            self._run.fill(0)            # every run broken, none can have completed
            return edges
        # can any port change state in this block? Its run would have to reach the limit
        # inside it, and no run inside it is longer than the run before it plus the block's
        # hits. Usually none can: then only the runs move on.
        count = np.add.reduce(hits, axis=-1, dtype=np.int64)
        if not self._due and not (self._run + count >= self._lim).any():
            self._run = _runs(hits, count, self._run)
            return edges
        f = self.frame
        levels = frame_level_db(sums, f)
        run = self._run
        for k in range(frames):
            run = np.where(hits[:, k], run + 1, 0)
            change = run >= self._lim
            if change.any():
                t = t0 + head + k * f
                level = levels[:, k]
                for i in np.flatnonzero(change & ~self.is_open):
                    edges.append(VoxEdge(int(i), t, True, float(level[i])))
                for i in np.flatnonzero(change & self.is_open):
                    edges.append(VoxEdge(int(i), t, False, float(level[i])))
                self.is_open = self.is_open ^ change
                run = np.where(change, 0, run)   # a changed port starts its other run
                self._update_limits()
                hits = np.multiply(sums, self._sign) >= self._thr
        self._run = run
        return edges


def _runs(hits: npt.NDArray[np.bool_], count: npt.NDArray[np.int64],
          before: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Length of the run of True at the end of each row of ``hits`` (frames on the last
    axis; ``count`` Trues per row), continuing the run ``before`` the block when the whole row
    is True."""
    k = hits.shape[-1]
    trailing = np.argmin(hits[..., ::-1], axis=-1)     # Trues after the last False
    return np.where(count == k, before + k, trailing)
