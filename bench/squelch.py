"""A scripted COR line: the bench's stand-in for a terminal's call state.

A TETRA or MCPTT terminal tells the gateway that another unit talks (PEI ``+CTICN`` .. ``+CTCR``,
a floor-taken indication) a little after that unit keys up. The bench has the traffic script,
so it opens the squelch at ``start_s`` plus a small network delay and closes it at ``end_s``.
"""

from __future__ import annotations

from collections.abc import Sequence

from brug.gateway.signalling import LineSquelch


class ScriptedSquelch(LineSquelch):
    """COR open during scripted intervals of engine time.

    Parameters
    ----------
    intervals:
        ``(open_t, close_t, info)`` in engine samples, sorted by ``open_t``, relative to
        ``t0`` (the engine time of scenario second 0).
    period:
        When given (engine samples), the schedule repeats every ``period`` samples (a looped
        scenario without a list that grows with the loop count).
    t0:
        Engine time (samples) of the scenario's start; the realtime replay sets it once the
        sound cards run.

    Notes
    -----
    :meth:`state` is called once per tick on the engine thread: O(1) amortised for
    increasing ``t``, no allocation, never blocks.
    """

    def __init__(self, intervals: Sequence[tuple[int, int, str]], period: int | None = None,
                 t0: int = 0) -> None:
        self._iv = sorted(intervals)
        self.period = period
        self.t0 = t0
        self._i = 0
        self._last = -1

    def state(self, t: int) -> tuple[bool, str]:
        rel = t - self.t0
        if rel < 0:
            return False, "idle"
        if self.period:
            rel %= self.period
        if rel < self._last:
            self._i = 0            # wrapped (next loop) or time went back
        self._last = rel
        iv = self._iv
        i = self._i
        while i < len(iv) and iv[i][1] <= rel:
            i += 1
        self._i = i
        # overlapping intervals on one port are merged by looking a few ahead
        j = i
        while j < len(iv) and iv[j][0] <= rel:
            if rel < iv[j][1]:
                return True, iv[j][2]
            j += 1
        return False, "idle"
