"""TETRA PEI driver (ETSI EN 300 392-5 AT commands): PTT, transmit grant and COR over serial.

The PTT and the COR of one TETRA terminal share one :class:`PeiConnection` per serial port:
one reader/writer thread that owns the port, the terminal's call state and the reconnect
logic. The engine thread only reads cached state (:meth:`PeiPtt.granted`,
:meth:`PeiSquelch.state`) and posts the wanted PTT state (:meth:`PeiPtt.set_tx`).

Sequence (see docs/pei.md):

* initialise: ``AT`` (probe), the profile's ``pei.init`` commands (``ATE0``, ``AT+CTOM=0``,
  ``AT+CTSP=1,1,11``, ...), ``AT+CTSDC=0,0,0,1,1,0,1,1,0,0`` (group call, simplex, for
  ``ATD``), then ``AT+CTGS=1,<gssi>`` to select the talkgroup.
* key: ``ATD<gssi>`` when no call is up (group-call set-up), ``AT+CTXD=<cc>,1`` on a call
  that is up; ``+CTXG: <cc>,0,...`` (granted) is the moment audio may flow
  (:meth:`PeiPtt.granted` turns True). Unkey: ``AT+CUTXC=<cc>``.
* receive: ``+CTICN`` (new incoming call), ``+CTXG: <cc>,3,...`` (granted to another unit)
  and ``+CTCC`` (call connected while we are not keyed) open the COR with the talker's
  identity as info; ``+CDTXC`` (down transmission ceased) and ``+CTCR`` (call released) close
  it.
* robustness: unsolicited lines may arrive between a command and its reply; echo lines (a
  terminal with echo on) and garbled lines are skipped; ``ERROR`` / ``+CME ERROR`` replies
  become ``port.<name>.pei`` events; a command without reply is sent once more, then the
  terminal counts as silent: a ``fault.port.<name>`` event, the port is closed and reopened
  with back-off (0.25 s doubling to 2 s) until it answers, and it is initialised again. A
  keep-alive ``AT+CTGS?`` every ``keepalive_s`` notices a terminal that was power-cycled (it
  reports no or another group) and initialises it again, re-selecting the talkgroup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
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

#: Circuit-mode service for ATD: TETRA speech, group call, simplex, no E2EE (EN 300 392-5
#: +CTSDC: AI service 0, called party type 0, area 0, hook 1, simplex 1, e2ee 0, comms type
#: 1 (point-to-multipoint), slots/codec 1, RqTx 0, priority 0).
CTSDC_GROUP = "AT+CTSDC=0,0,0,1,1,0,1,1,0,0"

_conns: dict[str, PeiConnection] = {}
_conns_lock = threading.Lock()


class _Timeout(Exception):
    pass


class PeiConnection:
    """The one PEI link to a terminal, shared by its :class:`PeiPtt` and :class:`PeiSquelch`.

    Parameters
    ----------
    port:
        Serial device or pyserial URL (a :class:`~brug.gateway.sim.SimTerminal` path).
    baud:
        Line rate (the profile's ``pei.baud``).
    init:
        Commands sent after the probe, in order (the profile's ``pei.init``).
    timeout_ms:
        Reply time-out per command (ms). A command is sent twice before the terminal counts
        as silent.
    keepalive_s:
        Interval of the ``AT+CTGS?`` keep-alive (s).
    gssi:
        Talkgroup to select and to call (``AT+CTGS=1,<gssi>``, ``ATD<gssi>``).
    name:
        Gateway port name, for event topics.
    """

    def __init__(self, port: str, baud: int = 115200, init: Sequence[str] = (),
                 timeout_ms: float = 1000.0, keepalive_s: float = 1.0,
                 gssi: int | None = None, name: str = "", label: str = "") -> None:
        self.port = port
        self.label = f"{label} ({gssi})" if label and gssi is not None else str(gssi)
        self.baud = int(baud)
        self.init = tuple(init)
        self.timeout_s = timeout_ms / 1000.0
        self.keepalive_s = keepalive_s
        self.gssi = gssi
        self.name = name or port
        # state shared with the engine thread (plain attribute reads are atomic)
        self.up = False
        self.granted = False
        self.rx_open = False
        self.rx_info = "pei idle"
        self.call: int | None = None
        self.garbled = 0
        self.errors = 0
        self.reconnects = 0
        self._want_tx = False
        self._pending_gssi: tuple[int, str] | None = None   # talkgroup to select next
        self._tx = False                    # what the terminal was last told
        self._need_cutxc = False
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ser: Any = None
        self._buf = b""
        self._last_probe = 0.0
        self._refs = 0
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- registry
    @classmethod
    def acquire(cls, port: str, **params: Any) -> PeiConnection:
        """The connection for ``port`` (created and started on first use; ref-counted)."""
        with _conns_lock:
            c = _conns.get(port)
            if c is None:
                c = _conns[port] = cls(port, **params)
            c._refs += 1
            if c._thread is None:
                c._thread = threading.Thread(target=c._run, name=f"pei {port}", daemon=True)
                c._thread.start()
            return c

    def release(self) -> None:
        with _conns_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            _conns.pop(self.port, None)
        # leave the terminal unkeyed: let the thread send AT+CUTXC before it stops
        self.set_tx(False)
        end = time.monotonic() + 2 * self.timeout_s
        while self._tx and self.up and time.monotonic() < end:
            time.sleep(0.005)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=3.0)
        self._close()

    # ---------------------------------------------------------------- engine side
    def set_tx(self, on: bool) -> None:
        with self._lock:
            self._want_tx = on
            if not on:
                self.granted = False
        self._wake.set()

    @property
    def want_tx(self) -> bool:
        return self._want_tx

    def take_events(self) -> list[Event]:
        with self._lock:
            ev, self._events = self._events, []
        return ev

    def _emit(self, info: str, fault: bool = False, **data: Any) -> None:
        topic = f"fault.port.{self.name}" if fault else f"port.{self.name}.pei"
        with self._lock:
            self._events.append(Event(0, topic, data, info))

    # ---------------------------------------------------------------- serial I/O
    def _open(self) -> None:
        self._ser = serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.02,
                                          write_timeout=1.0)
        self._buf = b""

    def _close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (OSError, serial.SerialException):
                pass

    def _readline(self, deadline: float) -> str | None:
        """Next non-empty line (CR and/or LF terminated), or None at ``deadline``."""
        while True:
            ends = [i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0]
            if ends:
                i = min(ends)
                raw, self._buf = self._buf[:i], self._buf[i + 1:]
                line = raw.decode("ascii", "replace").strip()
                if line:
                    return line
                continue
            if time.monotonic() >= deadline:
                return None
            chunk = self._ser.read(max(1, self._ser.in_waiting))
            if chunk:
                self._buf += chunk

    def _write(self, text: str) -> None:
        self._ser.write(text.encode("ascii") + b"\r")

    def _cmd(self, text: str, expect: str | None = None) -> tuple[bool, list[str], str]:
        """Send ``text``; return ``(ok, info lines starting with expect, final line)``.

        Unsolicited result codes that arrive meanwhile are handled; echo and garbled lines
        are skipped. No reply within the time-out: sent once more, then :class:`_Timeout`.
        """
        for _attempt in range(2):
            self._write(text)
            deadline = time.monotonic() + self.timeout_s
            info: list[str] = []
            while True:
                line = self._readline(deadline)
                if line is None:
                    break
                if line == "OK":
                    return True, info, line
                if line == "ERROR" or line.startswith(("+CME ERROR", "+CMS ERROR")):
                    self.errors += 1
                    return False, info, line
                if expect and line.startswith(expect):
                    info.append(line)
                elif line.upper().startswith("AT"):
                    continue                    # echo of a command
                elif not self._unsolicited(line):
                    self._garbled(line)
        raise _Timeout(text)

    def _garbled(self, line: str) -> None:
        self.garbled += 1
        self._emit(f"PEI: ignored unexpected line {line[:40]!r}", line=line[:80])

    # ---------------------------------------------------------------- unsolicited
    def _unsolicited(self, line: str) -> bool:
        tag, sep, rest = line.partition(":")
        if not sep or not tag.startswith("+CT") and tag != "+CDTXC":
            return False
        args = [a.strip() for a in rest.split(",")]
        try:
            cc = int(args[0])
            if tag == "+CTXG":
                grant = int(args[1])
                self.call = cc
                if grant == 0:
                    if self._tx:
                        self.granted = True
                        self._emit(f"PEI transmit granted (call {cc})", grant=True, cc=cc)
                    else:
                        self._need_cutxc = True   # granted after we let go: cease at once
                elif grant == 3:
                    who = _ssi(args[5]) if len(args) > 5 else "another unit"
                    if self._tx and self.granted:
                        self.granted = False
                        self._emit(f"PEI transmission taken over by {who}", grant=False,
                                   cc=cc)
                    grp = f" on {self.gssi}" if self.gssi is not None else ""
                    self._rx(True, f"pei talker {who}{grp} (call {cc})")
                elif grant == 1:
                    self._emit(f"PEI transmit not granted (call {cc})", grant=False, cc=cc)
                elif grant == 2:
                    self._emit(f"PEI transmit request queued (call {cc})", queued=True, cc=cc)
                return True
            if tag == "+CTICN":
                self.call = cc
                who = _ssi(args[4]) if len(args) > 4 else "?"
                grp = _ssi(args[11]) if len(args) > 11 else str(self.gssi)
                self._rx(True, f"pei call from {who} on {grp} (call {cc})")
                return True
            if tag == "+CTCC":
                self.call = cc
                if not self._tx:
                    self._rx(True, f"pei call {cc} connected")
                return True
            if tag == "+CTOCP":
                self.call = cc
                return True
            if tag == "+CDTXC":
                if cc == self.call:
                    self._rx(False, f"pei transmission ceased (call {cc})")
                return True
            if tag == "+CTCR":
                cause = args[1] if len(args) > 1 else "?"
                if cc == self.call:
                    self.call = None
                    self._rx(False, f"pei call {cc} released (cause {cause})")
                    if self._tx:
                        self.granted = False
                        self._tx = False      # re-key with ATD on the next pass
                        self._emit(f"PEI call released while keyed (cause {cause})",
                                   grant=False)
                return True
            if tag == "+CTXI":
                if self.granted:
                    self.granted = False
                    self._emit(f"PEI transmission interrupted (call {cc})", grant=False)
                return True
            if tag == "+CTXW":
                self._emit(f"PEI transmission wait (call {cc})", wait=True)
                return True
            if tag in ("+CTGS", "+CTOM", "+CTSP", "+CTSDC"):
                return True
        except (ValueError, IndexError):
            return False
        return False

    def _rx(self, open_: bool, info: str) -> None:
        self.rx_info = info
        self.rx_open = open_

    # ---------------------------------------------------------------- behaviour
    def _initialise(self) -> None:
        self._ser.reset_input_buffer()
        self._buf = b""
        self._cmd("AT")
        for c in (*self.init, CTSDC_GROUP):
            ok, _, final = self._cmd(c)
            if not ok:
                self._emit(f"PEI init {c!r} refused: {final}", command=c, reply=final)
        self.call = None
        self._rx(False, "pei idle")
        self.granted = False
        self._tx = False
        if self.gssi is not None:
            ok, _, final = self._cmd(f"AT+CTGS=1,{self.gssi}")
            if not ok:
                self._emit(f"PEI talkgroup {self.gssi} refused: {final}", fault=True,
                           fault_kind="talkgroup", gssi=self.gssi, reply=final)
        self.up = True
        self._last_probe = time.monotonic()
        self._emit(f"PEI up on {self.port}" + (f", talkgroup {self.label} selected"
                                              if self.gssi is not None else ""),
                   state="up", gssi=self.gssi)

    def _apply_tx(self) -> None:
        want = self._want_tx
        if want == self._tx:
            if self._need_cutxc and not want and self.call is not None:
                self._need_cutxc = False
                self._cmd(f"AT+CUTXC={self.call}")
            return
        self._tx = want
        self._need_cutxc = False
        if want:
            self.granted = False
            if self.call is not None:
                ok, _, final = self._cmd(f"AT+CTXD={self.call},1")
            elif self.gssi is not None:
                ok, _, final = self._cmd(f"ATD{self.gssi}")
            else:
                ok, final = False, "no talkgroup (gssi) configured"
            if not ok:
                self._emit(f"PEI key-up refused: {final}", key="refused", reply=final)
        else:
            self.granted = False
            if self.call is not None:
                ok, _, final = self._cmd(f"AT+CUTXC={self.call}")
                if not ok:
                    self._emit(f"PEI unkey refused: {final}", key="unkey_refused",
                               reply=final)

    def select(self, gssi: int, label: str = "") -> None:
        """Ask the PEI thread to select talkgroup ``gssi`` (``AT+CTGS=1,<gssi>``); the
        outcome is an event (``port.<name>.pei``, or a fault when the terminal refuses)."""
        self._pending_gssi = (int(gssi), label)
        self._wake.set()

    def _apply_select(self) -> None:
        pending, self._pending_gssi = self._pending_gssi, None
        if pending is None:
            return
        gssi, label = pending
        ok, _, final = self._cmd(f"AT+CTGS=1,{gssi}")
        if not ok:
            self._emit(f"PEI talkgroup {gssi} refused: {final}", fault=True,
                       fault_kind="talkgroup", gssi=gssi, reply=final)
            return
        self.gssi = gssi
        self.label = f"{label} ({gssi})" if label else str(gssi)
        self._emit(f"PEI talkgroup {self.label} selected", state="talkgroup", gssi=gssi)

    def _keepalive(self) -> None:
        self._last_probe = time.monotonic()
        if self.gssi is None:
            self._cmd("AT")
            return
        ok, info, final = self._cmd("AT+CTGS?", expect="+CTGS")
        selected = None
        for line in info:
            parts = [p.strip() for p in line.partition(":")[2].split(",")]
            if len(parts) >= 2 and parts[0] == "1":
                selected = parts[1]
        if not ok or selected is None or int(selected or 0) != self.gssi:
            self._emit(f"PEI terminal lost talkgroup {self.gssi} (reports "
                       f"{info[0] if info else final}); re-initialising (power-cycled?)",
                       state="reinit")
            self._initialise()

    def _run(self) -> None:
        backoff = 0.25
        faulted = False
        while not self._stop.is_set():
            try:
                if self._ser is None:
                    self._open()
                if not self.up:
                    self._initialise()
                    if faulted:
                        self.reconnects += 1
                        self._emit(f"PEI terminal on {self.port} answers again",
                                   state="reconnected")
                    faulted = False
                    backoff = 0.25
                self._apply_tx()
                if self._pending_gssi is not None:
                    self._apply_select()
                line = self._readline(time.monotonic() + 0.02)
                if line is not None and not line.upper().startswith("AT") and line != "OK":
                    if not self._unsolicited(line):
                        self._garbled(line)
                if time.monotonic() - self._last_probe >= self.keepalive_s:
                    self._keepalive()
            except (_Timeout, OSError, serial.SerialException) as exc:
                was_up = self.up
                self.up = False
                self.granted = False
                self._tx = False
                self._rx(False, "pei down")
                self._close()
                if not faulted:
                    why = (f"no answer to {exc.args[0]!r} within "
                           f"{self.timeout_s * 1000:.0f} ms (sent twice)"
                           if isinstance(exc, _Timeout) else str(exc))
                    self._emit(f"PEI terminal on {self.port}: {why}; reconnecting",
                               fault=True, fault_kind="pei_timeout" if isinstance(
                                   exc, _Timeout) else "pei_port", was_up=was_up)
                    faulted = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)


def _ssi(tsi: str) -> str:
    """The SSI of a TSI (last 8 digits of MCC(4)+MNC(5)+SSI(8)), else the text as is."""
    t = tsi.strip()
    return str(int(t[-8:])) if len(t) == 17 and t.isdigit() else t


_CONN_KEYS = ("baud", "init", "timeout_ms", "keepalive_s")


def resolve_gssi(gssi: int | str | None = None, talkgroup: str | None = None,
                 network: str | None = None) -> int | None:
    """The GSSI to select: ``gssi`` if given, else the catalogue entry of ``talkgroup``
    (an alias such as ``BE-TAC3``, looked up in ``network`` or, without it, in every
    bundled catalogue where the alias must be unique), else a numeric ``talkgroup``.

    Raises
    ------
    SignallingConfigError
        When the talkgroup is unknown or ambiguous (the message lists the candidates).
    """
    if gssi is not None and gssi != "":
        return int(gssi)
    if talkgroup is None or str(talkgroup) == "":
        return None
    tg = str(talkgroup)
    if tg.isdigit():
        return int(tg)
    from brug.talkgroups.catalogue import CatalogueError, load_catalogue

    cat = load_catalogue()
    try:
        if network:
            found = cat.talkgroup(str(network), tg).gssi
        else:
            hits = [n.talkgroups[tg] for n in cat.networks.values() if tg in n.talkgroups]
            if len(hits) != 1:
                where = ", ".join(h.ref for h in hits) or "no catalogue"
                raise SignallingConfigError(f"talkgroup {tg!r} is in {where}; give network "
                                            "or gssi")
            found = hits[0].gssi
    except CatalogueError as exc:
        raise SignallingConfigError(exc.message) from None
    if found is None:
        raise SignallingConfigError(f"talkgroup {tg!r} has no GSSI in its catalogue")
    return found


def _conn_args(port: str | None, pei: dict[str, Any] | None, params: dict[str, Any]
               ) -> tuple[str, dict[str, Any]]:
    merged = {**(pei or {}), **{k: v for k, v in params.items() if k in _CONN_KEYS}}
    path = port or merged.pop("port", None)
    merged.pop("port", None)
    if not path:
        raise SignallingConfigError("pei.port is required (the terminal's PEI serial device)")
    return str(path), {k: v for k, v in merged.items() if k in _CONN_KEYS}


class PeiPtt(Ptt):
    """Keys a TETRA terminal over PEI; :meth:`granted` follows ``+CTXG``.

    Parameters are those of :class:`PeiConnection` (``port``, ``baud``, ``init``,
    ``timeout_ms``, ``keepalive_s``, ``gssi``, ``name``), given directly or as the profile's
    ``pei`` mapping (``pei={"port": ..., "baud": ...}``); instead of ``gssi`` a catalogue
    ``talkgroup`` alias (with ``network``) may be given (:func:`resolve_gssi`). ``setup_ms``
    and unknown keys (``lead_ms``, ``hang_ms``, ...) are accepted and ignored.
    """

    def __init__(self, port: str | None = None, gssi: int | str | None = None,
                 name: str = "", pei: dict[str, Any] | None = None,
                 talkgroup: str | None = None, network: str | None = None,
                 **params: Any) -> None:
        self.port, self.params = _conn_args(port, pei, params)
        self.gssi = resolve_gssi(gssi, talkgroup, network)
        self.network = network
        self.label = str(talkgroup) if talkgroup and not str(talkgroup).isdigit() else ""
        self.name = name or self.port
        self.conn: PeiConnection | None = None

    def select_talkgroup(self, talkgroup: str) -> None:
        """Select ``talkgroup`` (alias in this port's network, or a GSSI) on the terminal.

        Raises SignallingConfigError for an unknown talkgroup; the terminal's answer comes
        back as an event.
        """
        gssi = resolve_gssi(None, talkgroup, self.network)
        if gssi is None:
            raise SignallingConfigError(f"talkgroup {talkgroup!r} has no GSSI")
        self.gssi = gssi
        self.label = talkgroup if not talkgroup.isdigit() else ""
        if self.conn is None:
            self.open()
        assert self.conn is not None
        self.conn.select(gssi, self.label)

    def open(self) -> None:
        if self.conn is None:
            self.conn = PeiConnection.acquire(self.port, gssi=self.gssi, name=self.name,
                                              label=self.label, **self.params)

    def set_tx(self, on: bool) -> None:
        """Post the wanted state; the PEI thread sends ATD/AT+CTXD or AT+CUTXC."""
        if self.conn is None:
            self.open()
        assert self.conn is not None
        self.conn.set_tx(on)

    def granted(self, t: int) -> bool | None:
        """True once ``+CTXG: <cc>,0`` was seen for the current key-up; False while waiting
        (and while unkeyed). Non-blocking."""
        c = self.conn
        return bool(c is not None and c.want_tx and c.granted)

    def close(self) -> None:
        c, self.conn = self.conn, None
        if c is not None:
            c.set_tx(False)
            c.release()

    def poll_events(self) -> list[Event]:
        return self.conn.take_events() if self.conn else []


class PeiSquelch(LineSquelch):
    """COR from the terminal's call state over PEI (another unit talking on the group)."""

    def __init__(self, port: str | None = None, gssi: int | str | None = None,
                 name: str = "", pei: dict[str, Any] | None = None,
                 talkgroup: str | None = None, network: str | None = None,
                 **params: Any) -> None:
        self.port, self.params = _conn_args(port, pei, params)
        self.gssi = resolve_gssi(gssi, talkgroup, network)
        self.label = str(talkgroup) if talkgroup and not str(talkgroup).isdigit() else ""
        self.name = name or self.port
        self.conn: PeiConnection | None = None

    def open(self) -> None:
        if self.conn is None:
            self.conn = PeiConnection.acquire(self.port, gssi=self.gssi, name=self.name,
                                              label=self.label, **self.params)

    def state(self, t: int) -> tuple[bool, str]:
        """``(cor_open, info)``, e.g. ``(True, "pei call from 2001 on 1001 (call 1)")``."""
        c = self.conn
        if c is None or not c.up:
            return False, "pei down"
        return c.rx_open, c.rx_info

    def close(self) -> None:
        c, self.conn = self.conn, None
        if c is not None:
            c.release()

    def poll_events(self) -> list[Event]:
        return self.conn.take_events() if self.conn else []


register_ptt("pei")(PeiPtt)
register_squelch("pei")(PeiSquelch)
