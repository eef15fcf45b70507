"""The real-time engine on a clock card that keeps bad time.

A sound card's crystal is off by up to about 100 ppm, and a starved PulseAudio stream can run
10-20 % slow for seconds. The engine follows a card within :data:`CLOCK_MAX_PPM` of the
monotonic clock and no further, so the other ports (and anything on the wall clock, such as a
real COR line) are never dragged along. The clock card here is a port whose capture arrives
at a chosen pace on a thread of its own, as a PortAudio callback would.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from brug.gateway.engine import CLOCK_MAX_PPM, Engine, EngineConfig, PortSettings
from brug.gateway.ports.base import Block, MemoryPort


class PacedCard(MemoryPort):
    """A capture that delivers one engine block every ``period / pace`` seconds, in bursts of
    ``burst`` blocks (PulseAudio delivers a few callbacks at once), and can clock the engine."""

    def __init__(self, name: str, pace: float, burst: int = 1) -> None:
        super().__init__(name)
        self.pace, self.burst = pace, burst
        self.delivered = 0
        self.consumed = 0
        self._wake: threading.Event | None = None
        self._stop = threading.Event()
        self._th: threading.Thread | None = None

    def attach_clock(self, wake: threading.Event) -> None:
        self._wake = wake

    def ready(self) -> bool:
        return self.delivered > self.consumed

    def start(self, engine_rate: int, block: int) -> None:
        period = block / engine_rate * self.burst / self.pace

        def run() -> None:
            t = time.monotonic()
            while not self._stop.is_set():
                t += period
                self._stop.wait(max(0.0, t - time.monotonic()))
                self.delivered += self.burst
                if self._wake is not None:
                    self._wake.set()

        self._th = threading.Thread(target=run, daemon=True)
        self._th.start()

    def read(self, out: Block) -> None:
        out[:] = 0.0
        if self.ready():
            self.consumed += 1

    def stop(self) -> None:
        self._stop.set()
        if self._th is not None:
            self._th.join(timeout=2)


def _run(card: PacedCard, seconds: float) -> tuple[Engine, float, float]:
    """Run an engine clocked by ``card`` plus a second port; return the engine, the engine
    time it reached and the wall time that took (both s)."""
    eng = Engine(EngineConfig(clock="first"))
    eng.add_port(card, PortSettings(card.name))
    eng.add_port(MemoryPort("other"), PortSettings("other"))
    stop = threading.Event()
    th = threading.Thread(target=eng.run_realtime, args=(stop,), daemon=True)
    t0 = time.monotonic()
    th.start()
    time.sleep(seconds)
    stop.set()
    th.join(timeout=5)
    wall = time.monotonic() - t0
    eng.stop()
    return eng, eng.t / eng.rate, wall


def test_a_slow_clock_card_cannot_drag_the_engine_away_from_real_time() -> None:
    card = PacedCard("slow", pace=0.8, burst=4)      # a starved stream: 80 % of real time
    eng, engine_s, wall_s = _run(card, 4.0)
    # engine time kept to the reference: within the rate bound plus start-up and the grace
    assert engine_s > wall_s * (1 - CLOCK_MAX_PPM * 1e-6) - 0.1, (engine_s, wall_s)
    assert engine_s < wall_s + 0.05
    assert eng.clock_ppm >= CLOCK_MAX_PPM * 0.99    # it tried to follow, within the bound
    # the card's blocks were all used as they came: it paced most ticks, none was waited for
    assert card.consumed >= card.delivered - 2 * card.burst
    assert card.consumed / (engine_s * eng.rate / eng.block) > 0.7


def test_an_ordinary_clock_card_paces_the_engine_and_is_followed() -> None:
    card = PacedCard("good", pace=1.0 + 200e-6, burst=4)   # 200 ppm fast, in 20 ms bursts
    eng, engine_s, wall_s = _run(card, 4.0)
    assert eng.clock_misses == 0 and not eng.on_wall_clock
    # every tick but the first few ran on one of the card's blocks
    ticks = engine_s * eng.rate / eng.block
    assert card.consumed >= ticks - 8
    assert abs(engine_s - wall_s) < 0.05
    # the phase loop pulls the bursts' arrivals to the reference: within a burst of it
    assert abs(eng.clock_phase_s) < 0.02
    assert np.isfinite(eng.clock_ppm)
