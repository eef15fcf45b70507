"""PTT and COR on the modem-control lines of a serial port (pyserial).

PTT drives RTS or DTR; COR reads CTS, DSR or DCD, each with a polarity (``active_high``:
line asserted = keyed / receiving). A PTT and a COR on the same port share one open port and
one I/O thread (:class:`SerialLinePort`), so ``serial_rts`` + ``serial_cts`` on
``/dev/ttyUSB0`` is one device, as on the usual interface cables.

The engine thread only reads cached state (:meth:`SerialLineSquelch.state`) and sets a
wanted PTT state (:meth:`SerialLinePtt.set_tx`); the port thread applies it within one poll
period (``poll_ms``, default 10 ms) and samples the input lines every ``poll_ms``.
A device that cannot be opened, or that has no modem lines (a pty, some USB adapters), gives
a ``fault.port.<name>`` event and is retried with back-off (0.5 s doubling to 8 s).

pyserial's ``loop://`` URL wires RTS to CTS and DTR to DSR (and reads DCD as asserted), which
the tests use as a loop-back cable.
"""

from __future__ import annotations

import threading
from typing import Any

import serial

from brug.gateway.events import Event
from brug.gateway.signalling import (
    LineSquelch,
    Ptt,
    SignallingConfigError,
    register_ptt,
    register_squelch,
)

POLARITIES = ("active_high", "active_low")
OUT_LINES = ("rts", "dtr")
IN_LINES = {"cts": "cts", "dsr": "dsr", "dcd": "cd"}

_ports: dict[str, SerialLinePort] = {}
_ports_lock = threading.Lock()


class SerialLinePort:
    """One open serial port shared by the PTT and COR drivers on it, with its I/O thread.

    Use :meth:`acquire` / :meth:`release` (reference counted per port name).
    """

    def __init__(self, port: str, poll_ms: float = 10.0) -> None:
        self.port = port
        self.poll_s = max(0.001, poll_ms / 1000.0)
        self.names: set[str] = set()
        self._ser: Any = None
        self._want: dict[str, bool] = {}          # output line -> wanted level
        self._applied: dict[str, bool] = {}
        self.inputs: dict[str, bool] = {}          # input line -> last level read
        self.up = False
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._refs = 0
        self._thread: threading.Thread | None = None
        self._backoff = 0.5
        self._fault_reported = False
        self._needed_inputs: set[str] = set()

    # ---------------------------------------------------------------- registry
    @classmethod
    def acquire(cls, port: str, poll_ms: float = 10.0, name: str = "",
                out: tuple[str, bool] | None = None, inp: str | None = None
                ) -> SerialLinePort:
        """Get the shared port, registering the caller's output line (with its unkeyed
        level) or input line before the I/O thread can open the device."""
        with _ports_lock:
            sp = _ports.get(port)
            if sp is None:
                sp = _ports[port] = cls(port, poll_ms)
            sp.poll_s = min(sp.poll_s, max(0.001, poll_ms / 1000.0))
            sp._refs += 1
            if name:
                sp.names.add(name)
            if out is not None:
                sp.want(*out)
            if inp is not None:
                sp.need_input(inp)
            if sp._thread is None:
                sp._thread = threading.Thread(target=sp._run, name=f"serial-lines {port}",
                                              daemon=True)
                sp._thread.start()
            return sp

    def release(self) -> None:
        with _ports_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            _ports.pop(self.port, None)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._ser is not None:
            try:
                self._cycle()        # last wanted levels (PTT released) before closing
            except (OSError, serial.SerialException):
                pass
        self._close()

    # ---------------------------------------------------------------- engine side
    def want(self, line: str, level: bool) -> None:
        with self._lock:
            self._want[line] = level
        self._wake.set()

    def take_events(self) -> list[Event]:
        with self._lock:
            ev, self._events = self._events, []
        return ev

    def _emit(self, topic_name: str, fault: bool, data: dict[str, Any], info: str) -> None:
        with self._lock:
            for name in sorted(self.names) or [self.port]:
                topic = f"fault.port.{name}" if fault else f"port.{name}.{topic_name}"
                self._events.append(Event(0, topic, dict(data), info))

    # ---------------------------------------------------------------- I/O thread
    def _open(self) -> None:
        ser = serial.serial_for_url(self.port, do_not_open=True, timeout=0)
        with self._lock:
            want = dict(self._want)
        # set the PTT line to its wanted (unkeyed) level before the port opens: pyserial
        # asserts RTS and DTR on open by default, which would key the transmitter
        if "rts" in want:
            ser.rts = want["rts"]
        if "dtr" in want:
            ser.dtr = want["dtr"]
        ser.open()
        self._ser = ser
        self._applied = {}

    def _close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (OSError, serial.SerialException):
                pass

    def _cycle(self) -> None:
        with self._lock:
            want = dict(self._want)
            needed = {line for line in self.inputs} | set(self._needed_inputs)
        for line, level in want.items():
            if self._applied.get(line) != level:
                setattr(self._ser, line, level)
                self._applied[line] = level
        levels = {line: bool(getattr(self._ser, IN_LINES[line])) for line in needed}
        with self._lock:
            self.inputs.update(levels)

    def need_input(self, line: str) -> None:
        with self._lock:
            self._needed_inputs = {*self._needed_inputs, line}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._ser is None:
                    self._open()
                self._cycle()
                if not self.up:
                    self.up = True
                    if self._fault_reported:
                        self._emit("line", False, {"state": "up", "device": self.port},
                                   f"serial port {self.port} back")
                    self._fault_reported = False
                    self._backoff = 0.5
            except (OSError, serial.SerialException, ValueError) as exc:
                self.up = False
                self._close()
                if not self._fault_reported:
                    why = getattr(exc, "strerror", None) or str(exc)
                    self._emit("line", True, {"fault": "serial_port", "device": self.port},
                               f"serial port {self.port}: {why}; retrying")
                    self._fault_reported = True
                self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, 8.0)
                continue
            self._wake.wait(self.poll_s)
            self._wake.clear()


def _check_polarity(polarity: str) -> bool:
    if polarity not in POLARITIES:
        raise SignallingConfigError(
            f"polarity={polarity!r} is not one of: {', '.join(POLARITIES)}")
    return polarity == "active_high"


class SerialLinePtt(Ptt):
    """Keys on RTS or DTR.

    Parameters
    ----------
    port:
        Device or pyserial URL (``/dev/ttyUSB0``, ``loop://``).
    line:
        ``"rts"`` or ``"dtr"``.
    polarity:
        ``active_high``: line asserted while keyed; ``active_low``: line dropped while keyed.
    name:
        Gateway port name, for event topics.
    """

    def __init__(self, port: str, line: str = "rts", polarity: str = "active_high",
                 name: str = "", poll_ms: float = 10.0, **_: Any) -> None:
        if line not in OUT_LINES:
            raise SignallingConfigError(f"line={line!r} is not one of: {', '.join(OUT_LINES)}")
        self.port_path = port
        self.line = line
        self.active = _check_polarity(polarity)
        self.name = name or port
        self.poll_ms = poll_ms
        self.keyed = False
        self._sp: SerialLinePort | None = None

    def open(self) -> None:
        if self._sp is None:
            self._sp = SerialLinePort.acquire(self.port_path, self.poll_ms, self.name,
                                              out=(self.line, not self.active))

    def set_tx(self, on: bool) -> None:
        """Key/unkey; returns at once, the port thread sets the line within ``poll_ms``."""
        self.keyed = on
        if self._sp is None:
            self.open()
        assert self._sp is not None
        self._sp.want(self.line, self.active if on else not self.active)

    def close(self) -> None:
        sp, self._sp = self._sp, None
        if sp is not None:
            sp.want(self.line, not self.active)
            sp.release()

    def poll_events(self) -> list[Event]:
        return self._sp.take_events() if self._sp else []


class SerialLineSquelch(LineSquelch):
    """COR from CTS, DSR or DCD, sampled every ``poll_ms`` on the port thread.

    ``attack_ms`` / ``hang_ms`` from the profile are applied by the engine, as for every
    squelch type; this driver reports the raw line.
    """

    def __init__(self, port: str, line: str = "cts", polarity: str = "active_high",
                 name: str = "", poll_ms: float = 10.0, **_: Any) -> None:
        if line not in IN_LINES:
            raise SignallingConfigError(
                f"line={line!r} is not one of: {', '.join(IN_LINES)}")
        self.port_path = port
        self.line = line
        self.active = _check_polarity(polarity)
        self.name = name or port
        self.poll_ms = poll_ms
        self._sp: SerialLinePort | None = None

    def open(self) -> None:
        if self._sp is None:
            self._sp = SerialLinePort.acquire(self.port_path, self.poll_ms, self.name,
                                              inp=self.line)

    def state(self, t: int) -> tuple[bool, str]:
        """``(cor_open, info)`` from the last sample; closed while the port is down."""
        sp = self._sp
        if sp is None or not sp.up or self.line not in sp.inputs:
            return False, f"serial {self.line.upper()} unavailable"
        level = sp.inputs[self.line]
        cor = level == self.active
        return cor, f"serial {self.line.upper()} {'high' if level else 'low'}"

    def close(self) -> None:
        sp, self._sp = self._sp, None
        if sp is not None:
            sp.release()

    def poll_events(self) -> list[Event]:
        return self._sp.take_events() if self._sp else []


@register_ptt("serial_rts")
def _rts(**kw: Any) -> Ptt:
    return SerialLinePtt(line="rts", **kw)


@register_ptt("serial_dtr")
def _dtr(**kw: Any) -> Ptt:
    return SerialLinePtt(line="dtr", **kw)


@register_squelch("serial_cts")
def _cts(**kw: Any) -> LineSquelch:
    return SerialLineSquelch(line="cts", **kw)


@register_squelch("serial_dsr")
def _dsr(**kw: Any) -> LineSquelch:
    return SerialLineSquelch(line="dsr", **kw)


@register_squelch("serial_dcd")
def _dcd(**kw: Any) -> LineSquelch:
    return SerialLineSquelch(line="dcd", **kw)
