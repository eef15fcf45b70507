"""Signalling driver interfaces: squelch/COR (is the terminal receiving?) and PTT (key it).

Two small contracts, as SvxLink's ``Squelch`` and ``Ptt``:

* :class:`LineSquelch` reports the COR state of a line or terminal (serial CTS/DSR/DCD, CM108
  GPIO, TETRA PEI call state, a scripted schedule). VOX is not a driver: it runs inside the
  engine on the audio of all ports at once.
* :class:`Ptt` keys the transmitter with ``set_tx(on)``. Drivers that can tell when the
  terminal really transmits (TETRA PEI ``+CTXG``) report it through :meth:`Ptt.granted`;
  the engine then starts playing out at the grant instead of after a fixed lead time.

Both are polled by the engine thread once per tick with the engine time ``t`` (engine samples)
and must answer from cached state without blocking; I/O happens on the driver's own thread.
Drivers are chosen by the ``type`` key of the profile or site file through a registry; an
unknown type raises :class:`SignallingConfigError` listing the valid ones.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from brug.gateway.events import Event


class SignallingConfigError(ValueError):
    """A driver type or parameter that cannot work (a user mistake, not a bug)."""

    user_error = True


class LineSquelch(ABC):
    """COR from outside the audio: a line, a terminal's call state, a schedule."""

    def open(self) -> None:
        """Start the driver (open serial port, start polling thread). Idempotent."""

    @abstractmethod
    def state(self, t: int) -> tuple[bool, str]:
        """Return ``(cor_open, info)`` at engine time ``t`` (samples). Non-blocking."""

    def close(self) -> None:
        """Release the device. Idempotent."""

    def poll_events(self) -> list[Event]:
        """Return and clear driver events (faults, reconnects) since the last call."""
        return []


class Ptt(ABC):
    """Keys a transmitter."""

    def open(self) -> None:
        """Start the driver. Idempotent."""

    @abstractmethod
    def set_tx(self, on: bool) -> None:
        """Key (``True``) or unkey (``False``). Must return at once; I/O on the driver thread."""

    def granted(self, t: int) -> bool | None:
        """Whether the terminal is transmitting now (``+CTXG`` seen) at engine time ``t``.

        ``None`` (the default) means the driver cannot tell; the engine then waits the
        configured PTT lead time after keying before audio flows.
        """
        return None

    def close(self) -> None:
        """Unkey and release the device. Idempotent."""

    def poll_events(self) -> list[Event]:
        """Return and clear driver events (faults, grants, reconnects) since the last call."""
        return []


class NoPtt(Ptt):
    """For terminals keyed by VOX or by nothing: remembers the state, keys nothing."""

    def __init__(self, **_: Any) -> None:
        self.keyed = False

    def set_tx(self, on: bool) -> None:
        self.keyed = on


class NeverSquelch(LineSquelch):
    """A port that never receives (transmit-only)."""

    def __init__(self, **_: Any) -> None:
        pass

    def state(self, t: int) -> tuple[bool, str]:
        return False, "none"


class OpenSquelch(LineSquelch):
    """Always open: a console or IP port that is always heard (full-duplex patches)."""

    def __init__(self, **_: Any) -> None:
        pass

    def state(self, t: int) -> tuple[bool, str]:
        return True, "open"


PttFactory = Callable[..., Ptt]
SquelchFactory = Callable[..., LineSquelch]

PTT_TYPES: dict[str, PttFactory] = {"none": NoPtt}
#: ``vox`` is handled by the engine itself and has no factory here.
SQUELCH_TYPES: dict[str, SquelchFactory] = {"none": NeverSquelch, "open": OpenSquelch}
ENGINE_SQUELCH_TYPES = ("vox",)

#: Modules that register further drivers when imported (serial lines, CM108, TETRA PEI, ...).
DRIVER_MODULES: list[str] = [
    "brug.gateway.drivers.serial_lines",
    "brug.gateway.drivers.cm108",
    "brug.gateway.drivers.pei",
    "brug.gateway.rtp.squelch",
]
_loaded = False


def _load_drivers() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in DRIVER_MODULES:
        importlib.import_module(mod)


def register_ptt(name: str) -> Callable[[PttFactory], PttFactory]:
    def deco(factory: PttFactory) -> PttFactory:
        PTT_TYPES[name] = factory
        return factory
    return deco


def register_squelch(name: str) -> Callable[[SquelchFactory], SquelchFactory]:
    def deco(factory: SquelchFactory) -> SquelchFactory:
        SQUELCH_TYPES[name] = factory
        return factory
    return deco


def ptt_types() -> list[str]:
    _load_drivers()
    return sorted(PTT_TYPES)


def squelch_types() -> list[str]:
    _load_drivers()
    return sorted({*SQUELCH_TYPES, *ENGINE_SQUELCH_TYPES})


def make_ptt(type_: str, **params: Any) -> Ptt:
    """Build the PTT driver named ``type_``; unknown names list the valid ones."""
    _load_drivers()
    try:
        factory = PTT_TYPES[type_]
    except KeyError:
        raise SignallingConfigError(
            f"ptt.type={type_!r} is not one of: {', '.join(ptt_types())}") from None
    return factory(**params)


def make_squelch(type_: str, **params: Any) -> LineSquelch:
    """Build the line squelch driver named ``type_`` (not ``vox``, which the engine runs)."""
    _load_drivers()
    try:
        factory = SQUELCH_TYPES[type_]
    except KeyError:
        raise SignallingConfigError(
            f"squelch.type={type_!r} is not one of: {', '.join(squelch_types())}") from None
    return factory(**params)


class ScheduledSquelch(LineSquelch):
    """COR from a schedule of ``(open_t, close_t)`` intervals in engine samples.

    Used by drills and the bench to stand in for a terminal whose COR line (or call-state
    report) follows known key-ups, and by tests that need a COR line opening at an exact time.
    """

    def __init__(self, intervals: list[tuple[int, int]] | None = None, info: str = "line",
                 **_: Any) -> None:
        self.intervals = sorted(intervals or [])
        self.info = info
        self._i = 0

    def state(self, t: int) -> tuple[bool, str]:
        iv = self.intervals
        while self._i < len(iv) and iv[self._i][1] <= t:
            self._i += 1
        is_open = self._i < len(iv) and iv[self._i][0] <= t < iv[self._i][1]
        return is_open, self.info


SQUELCH_TYPES["schedule"] = ScheduledSquelch
