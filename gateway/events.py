"""Events: every change (COR, PTT, floor, fault, config) becomes one, with a reason.

An event is stamped with the engine's sample clock (``t``, engine-rate samples since the engine
started), never with the wall clock, so offline replays are exact and repeatable. Consumers
(recorder, control-plane publisher, bench) subscribe to an :class:`EventBus`; the engine emits
events on its own thread after each tick, so a subscriber must return quickly (put on a queue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One state change.

    Parameters
    ----------
    t:
        Engine sample index (engine-rate samples since start) at which the change happened.
    topic:
        Dotted topic, e.g. ``port.be1.cor``, ``port.be1.ptt``, ``patch.OP-TEST.floor``,
        ``fault.port.be1``, ``config.patch``.
    data:
        JSON-serialisable payload (``{"open": True}``, ``{"holder": "be1"}``, ...).
    info:
        Human-readable reason (``"vox -31 dBFS"``, ``"tot 60 s"``, ``"floor held by be1"``).
    """

    t: int
    topic: str
    data: dict[str, Any] = field(default_factory=dict)
    info: str = ""

    def to_json(self, rate_hz: int) -> dict[str, Any]:
        """Return a JSON-ready dict with the time in samples and in seconds."""
        return {"t": self.t, "t_s": round(self.t / rate_hz, 6), "topic": self.topic,
                "data": self.data, "info": self.info}


Subscriber = Callable[[list[Event]], None]


class EventBus:
    """Fan-out of event batches to subscribers.

    ``publish`` is called by the engine thread once per tick with that tick's events. Each
    subscriber gets the same list and must not block (real-time path); an exception in a
    subscriber is counted in ``errors`` and never stops the engine.
    """

    def __init__(self) -> None:
        self._subs: list[Subscriber] = []
        self.errors = 0

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Add ``fn``; return a function that removes it again."""
        self._subs.append(fn)

        def _unsubscribe() -> None:
            if fn in self._subs:
                self._subs.remove(fn)

        return _unsubscribe

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        for fn in list(self._subs):
            try:
                fn(events)
            except Exception:  # noqa: BLE001 - a subscriber must never stop the audio path
                self.errors += 1
