"""VOX squelch for all ports at once.

The detector works on fixed 1 ms frames, carried across blocks, so its decisions (and the
sample-exact times of its edges) do not depend on the engine block size. Per port it has an
open threshold and a lower close threshold (hysteresis), an attack (the level must stay above
the open threshold this long before COR opens) and a hang (the level must stay below the close
threshold this long before COR closes).

Real-time limits: :meth:`VoxBank.process` runs on the engine thread once per tick; its cost is
a few vectorised numpy operations per 1 ms frame, independent of the number of ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

_EPS = 1e-12


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
        self.reset()

    @property
    def n(self) -> int:
        return len(self.open_db)

    def configure(self, i: int, *, open_dbfs: float, close_dbfs: float, attack_ms: float,
                  hang_ms: float, enabled: bool = True) -> None:
        """Set port ``i``'s thresholds (dBFS RMS per frame) and times (ms)."""
        if close_dbfs > open_dbfs:
            raise ValueError(f"vox close threshold {close_dbfs} dBFS is above the open "
                             f"threshold {open_dbfs} dBFS")
        self.open_db[i] = open_dbfs
        self.close_db[i] = close_dbfs
        self.attack_frames[i] = max(1, int(round(attack_ms / self.frame_ms)))
        self.hang_frames[i] = max(1, int(round(hang_ms / self.frame_ms)))
        self.enabled[i] = enabled

    def reset(self) -> None:
        """Clear state (all closed, partial frame dropped); keep parameters."""
        n = self.n
        self.is_open = np.zeros(n, bool)
        self._above = np.zeros(n, np.int64)
        self._below = np.zeros(n, np.int64)
        self._acc = np.zeros(n)
        self._acc_n = 0
        self.level_db = np.full(n, -120.0)

    def resize(self, n: int) -> None:
        """Grow or shrink to ``n`` ports keeping existing rows (ports added or removed)."""
        def fit(a: npt.NDArray[Any], fill: object) -> npt.NDArray[Any]:
            out = np.full(n, fill, dtype=a.dtype)
            k = min(n, len(a))
            out[:k] = a[:k]
            return out

        self.open_db = fit(self.open_db, -40.0)
        self.close_db = fit(self.close_db, -46.0)
        self.attack_frames = fit(self.attack_frames, 10)
        self.hang_frames = fit(self.hang_frames, 300)
        self.enabled = fit(self.enabled, False)
        self.is_open = fit(self.is_open, False)
        self._above = fit(self._above, 0)
        self._below = fit(self._below, 0)
        self._acc = fit(self._acc, 0.0)
        self.level_db = fit(self.level_db, -120.0)

    def delete(self, i: int) -> None:
        """Remove port row ``i``."""
        for name in ("open_db", "close_db", "attack_frames", "hang_frames", "enabled",
                     "is_open", "_above", "_below", "_acc", "level_db"):
            setattr(self, name, np.delete(getattr(self, name), i))

    def process(self, t0: int, x: npt.NDArray[np.float32]) -> list[VoxEdge]:
        """Feed one block ``x`` (ports x samples) starting at engine sample ``t0``.

        Returns the COR edges decided inside this block, in time order.
        """
        edges: list[VoxEdge] = []
        n = x.shape[1]
        f = self.frame
        sq = np.square(x, dtype=np.float64)
        if self._acc_n == 0 and n and n % f == 0:
            # the usual case: the block is whole frames and nothing is carried over
            return self._frames(t0, f, sq.reshape(self.n, n // f, f).sum(axis=2), edges)
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
        f = self.frame
        levels = 10.0 * np.log10(sums / f + _EPS)
        above_all = levels >= self.open_db[:, None]
        below_all = levels < self.close_db[:, None]
        frames = levels.shape[1]
        # can any port change state in this block? Its run of loud (quiet) frames would have
        # to reach the attack (hang) inside it. Usually not: then only the runs move on.
        may_open = ~self.is_open & self.enabled & above_all.any(axis=1) & \
            (self._above + frames >= self.attack_frames)
        may_close = self.is_open & (~self.enabled | (below_all.any(axis=1) &
                                                     (self._below + frames >= self.hang_frames)))
        if not (may_open | may_close).any():
            runs = _runs(np.concatenate([above_all, below_all]),
                         np.concatenate([self._above, self._below]))
            self._above, self._below = runs[:self.n], runs[self.n:]
            self.level_db = levels[:, -1]
            return edges
        for k in range(frames):
            above, below = above_all[:, k], below_all[:, k]
            self._above = np.where(above, self._above + 1, 0)
            self._below = np.where(below, self._below + 1, 0)
            opening = ~self.is_open & (self._above >= self.attack_frames) & self.enabled
            closing = self.is_open & ((self._below >= self.hang_frames) | ~self.enabled)
            if opening.any() or closing.any():
                t = t0 + head + k * f
                level = levels[:, k]
                for i in np.flatnonzero(opening):
                    edges.append(VoxEdge(int(i), t, True, float(level[i])))
                for i in np.flatnonzero(closing):
                    edges.append(VoxEdge(int(i), t, False, float(level[i])))
                self.is_open = (self.is_open | opening) & ~closing
        self.level_db = levels[:, -1]
        return edges


def _runs(hits: npt.NDArray[np.bool_], before: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Length of the run of True at the end of each row of ``hits`` (frames), continuing the
    run ``before`` the block when the whole row is True."""
    k = hits.shape[1]
    miss = ~hits
    trailing = np.argmax(miss[:, ::-1], axis=1)        # Trues after the last False
    return np.where(miss.any(axis=1), trailing, before + k)
