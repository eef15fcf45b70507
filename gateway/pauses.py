"""Where the pauses are: a block is a pause when it is near the path's own noise floor.

The gateway hides its housekeeping in the pauses between words: a sound-card ring that must
move (levelling, a refill, a cushion given back, the excess a stall left) drops or adds
samples only in a pause, and the engine skips pauses to catch up the delay an over's start
built up (pre-roll, PTT lead). A fixed level (-50 dBFS) finds no pause at all on a path with
background noise above it: a police car's cabin, a terminal with its noise suppression off,
a hissing analogue line. There every ring move waited for its time limit (made inside a word
then), a stall's excess stayed for good and the catch-up never caught up, so a 300 ms PTT
lead stayed in the delay for the whole over.

So the level of a pause follows the path: the noise floor is the lowest block power seen in
the last :data:`FLOOR_WINDOW_S` to twice that (minimum statistics: speech has gaps between
words where the floor shows, and a floor tracked that way does not rise while someone talks
for a few seconds), and a block is a pause when its power is within :data:`MARGIN_DB` of
that floor. Never below the fixed level (a clean path behaves as before) and never above
:data:`MAX_DBFS`, so speech-level audio, a steady tone included, is never taken for a pause.
Exact digital silence counts: it takes the floor down, to the fixed level.
"""

from __future__ import annotations

import math

import numpy as np

from brug.gateway.ports.base import Block

#: The noise floor is the lowest block power over the current and the previous window of
#: this length, s.
FLOOR_WINDOW_S = 2.0
#: A block within this much of the noise floor is a pause, dB.
MARGIN_DB = 6.0
#: A block louder than this is never a pause, dBFS.
MAX_DBFS = -30.0


def _ms2(dbfs: float) -> float:
    return float(10.0 ** (dbfs / 10.0))


class PauseLevel:
    """The pause level of one path (a sound-card ring's audio).

    Parameters
    ----------
    min_dbfs:
        The fixed level: a block below it is always a pause, dBFS.
    window_blocks:
        Blocks per floor window (:data:`FLOOR_WINDOW_S` at the caller's block rate).

    :meth:`observe` takes each block of the path once, in order; :meth:`quiet` asks about
    audio without learning from it. Both are for the engine thread: a dot product and a
    few float operations, no allocation.
    """

    def __init__(self, min_dbfs: float, window_blocks: int) -> None:
        self.min_ms2 = _ms2(min_dbfs)
        self.max_ms2 = _ms2(MAX_DBFS)
        self.margin = _ms2(MARGIN_DB)
        self.window = max(1, int(window_blocks))
        self.reset()

    def reset(self) -> None:
        """Forget the floor: the fixed level holds until a window has been seen."""
        self._cur = math.inf
        self._prev = 0.0
        self._n = 0
        self.threshold_ms2 = self.min_ms2

    @property
    def floor_dbfs(self) -> float:
        """The noise floor now, dBFS (``-inf`` for digital silence)."""
        f = min(self._cur, self._prev)
        return 10.0 * math.log10(f) if f > 0 else -math.inf

    def observe(self, x: Block) -> bool:
        """Learn from block ``x`` (the next block of the path); is it a pause?"""
        ms2 = float(np.dot(x, x)) / len(x) if len(x) else 0.0
        if ms2 < self._cur:
            self._cur = ms2
        self._n += 1
        if self._n >= self.window:
            self._prev, self._cur, self._n = self._cur, math.inf, 0
        floor = min(self._cur, self._prev)
        self.threshold_ms2 = min(self.max_ms2, max(self.min_ms2, floor * self.margin))
        return ms2 < self.threshold_ms2

    def quiet(self, x: Block) -> bool:
        """Is ``x`` (any length) below the pause level? Learns nothing."""
        return bool(len(x)) and float(np.dot(x, x)) < self.threshold_ms2 * len(x)


class PauseLevels:
    """The pause levels of the engine's ports, one row each, kept for all rows at once.

    :meth:`observe` takes one tick's ``(ports, block)`` receive audio; :attr:`threshold_ms2`
    is each row's pause level as a mean square. Engine thread: a handful of whole-array
    operations per tick, in place (no allocation).
    """

    def __init__(self, min_dbfs: float, window_blocks: int, rows: int = 0) -> None:
        self.min_ms2 = _ms2(min_dbfs)
        self.max_ms2 = _ms2(MAX_DBFS)
        self.margin = _ms2(MARGIN_DB)
        self.window = max(1, int(window_blocks))
        self.resize(rows)

    def resize(self, rows: int) -> None:
        """Start over for ``rows`` ports: the fixed level holds until a window has been
        seen."""
        self._cur = np.full(rows, np.inf)
        self._prev = np.zeros(rows)
        self._ms2 = np.zeros(rows)       # scratch: this tick's block powers
        self._n = 0
        self.threshold_ms2 = np.full(rows, self.min_ms2)

    def remap(self, rows: list[int | None]) -> None:
        """New rows, each the old row of that index (its floor kept) or ``None`` (a new port,
        or one whose receive gain changed: it starts over at the fixed level)."""
        cur, prev, thr = self._cur, self._prev, self.threshold_ms2
        self.resize(len(rows))
        for i, k in enumerate(rows):
            if k is not None:
                self._cur[i], self._prev[i] = cur[k], prev[k]
                self.threshold_ms2[i] = thr[k]

    def observe(self, X: np.ndarray) -> None:
        """Learn from one tick's receive blocks ``X`` (ports x samples)."""
        if X.shape[0] != len(self._ms2):
            return
        ms2 = self._ms2
        np.einsum("ij,ij->i", X, X, out=ms2, dtype=np.float64)
        ms2 /= X.shape[1]
        np.minimum(self._cur, ms2, out=self._cur)
        self._n += 1
        if self._n >= self.window:
            self._prev, self._cur, self._n = self._cur, self._prev, 0
            self._cur.fill(np.inf)
        thr = self.threshold_ms2                 # min(cur, prev) * margin, clipped, in place
        np.minimum(self._cur, self._prev, out=thr)
        thr *= self.margin
        np.clip(thr, self.min_ms2, self.max_ms2, out=thr)
