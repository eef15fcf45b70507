"""Ring levelling without audio: a receive ring fed in PulseAudio-sized capture bursts and read
once per engine tick, as SoundCardPort does, driven through :class:`Leveller` and
:class:`FloorTracker`."""

from __future__ import annotations

import numpy as np

from brug.gateway.ports.soundcard import FloorTracker, Leveller

RATE = 48000
TICK = 240            # device samples one 5 ms engine tick reads
BURST = 640           # 13.3 ms: four 160-frame callbacks, delivered together
BURST_EVERY = 640     # device samples of time between bursts
CUSHION = 240         # 5 ms


class BurstyRing:
    """Fill of a ring written in bursts and read a tick at a time (device samples)."""

    def __init__(self, fill: int, phase: int = 0) -> None:
        self.fill = fill
        self.t = 0
        self.next_burst = phase
        self.underruns = 0
        self.hold = 0

    def tick(self, stall: int = 0) -> int:
        """Advance one tick (plus ``stall`` samples of a late tick); return the fill after the
        read, as the port feeds its leveller."""
        self.t += TICK + stall
        while self.next_burst <= self.t:
            self.fill += BURST
            self.next_burst += BURST_EVERY
        if self.hold > 0:            # levelling up: the port skips a read
            self.hold -= TICK
        elif self.fill >= TICK:
            self.fill -= TICK
        else:
            self.underruns += 1
        return self.fill


def level(ring: BurstyRing, lev: Leveller, stall_at: int | None = None) -> int:
    """Run ticks until the leveller is done, applying its moves as the port does; return the
    number of ticks it took."""
    n = 0
    while not lev.done:
        n += 1
        fill = ring.tick(stall=30 * TICK if n == stall_at else 0)
        if ring.hold > 0:
            continue                  # the port does not feed the leveller while it holds
        step = lev.update(fill)
        if step > 0:
            ring.fill -= step
        elif step < 0:
            ring.hold = -step
        assert n < 10_000, "never levelled"
    return n


def test_a_ring_primed_high_is_levelled_to_its_cushion_and_its_average_is_held() -> None:
    ring = BurstyRing(fill=CUSHION + TICK + BURST + 700, phase=100)
    lev = Leveller(CUSHION, skip=50, measure=100, average=200, spread=2 * BURST + 2 * TICK)
    level(ring, lev)
    fills = [ring.tick() for _ in range(2000)]          # 10 s after levelling
    assert ring.underruns == 0
    # the lowest point sits on the cushion (within one read), not a burst above or below
    assert CUSHION - TICK < min(fills) <= CUSHION + TICK
    # and the set point the drift loop is given is the ring's real average
    assert abs(lev.setpoint - float(np.mean(fills))) < TICK / 4
    assert lev.levellings == 1


def test_a_ring_primed_low_is_raised_to_its_cushion() -> None:
    ring = BurstyRing(fill=TICK, phase=300)
    lev = Leveller(CUSHION, skip=50, measure=100, average=200, spread=2 * BURST + 2 * TICK)
    level(ring, lev)
    under = ring.underruns
    fills = [ring.tick() for _ in range(2000)]
    assert ring.underruns == under, "a levelled ring still ran short"
    assert CUSHION - TICK < min(fills) <= CUSHION + TICK


def test_an_average_measured_through_a_stall_is_measured_again() -> None:
    """A 150 ms late tick while the average is measured leaves the ring 150 ms fuller: that
    average is not what a level ring holds, so the leveller starts over instead of handing
    the drift loop a set point 150 ms too high."""
    ring = BurstyRing(fill=CUSHION + TICK + BURST, phase=0)
    lev = Leveller(CUSHION, skip=50, measure=100, average=200, spread=2 * BURST + 2 * TICK)
    ticks = level(ring, lev, stall_at=200)
    assert ticks > 350 + 100, "the disturbed average was accepted"
    assert lev.levellings == 2
    assert lev.setpoint < CUSHION + BURST + TICK


def test_floor_tracker_holds_the_lowest_value_over_one_to_two_windows() -> None:
    f = FloorTracker(4)
    seen = [f.update(v) for v in (9, 5, 7, 8, 9, 9, 9, 9, 9, 9, 9, 9)]
    # 5 is held while its window and the next one last, then forgotten
    assert seen[:8] == [9, 5, 5, 5, 5, 5, 5, 5]
    assert seen[-1] == 9
    f.shift(-3)
    assert f.floor == 6
