"""A simulated TETRA terminal: PEI (ETSI EN 300 392-5 AT commands) on a pseudo-terminal.

Drills, the demo and the tests need a TETRA terminal where none can exist. :class:`SimTerminal`
opens a pty (``os.openpty``), answers on the master side, and exposes the slave path
(:attr:`SimTerminal.path`) for the gateway's PEI driver, exactly as a USB-serial PEI cable
would appear. Its audio side uses the virtual sound card ``brug_NAME`` of ``brug soundcards``:
it plays what "other units" say into ``brug_NAME_air_rx`` and can record what the gateway
transmits from ``brug_NAME_air_tx``.

What it implements (the group-call subset a gateway uses; syntax as in the standard):

==========================  ======================================================
``AT``, ``ATE0``/``ATE1``   OK; echo off/on (a power-cycled terminal echoes again)
``AT+CMEE=<n>``             error reports: 0 ``ERROR``, 2 verbose ``+CME ERROR: <text>``
``AT+CTOM=<mode>``/``?``    operating mode (0 TMO)
``AT+CTSP=<p>,<l1>,<l2>``   service profile; call control must be routed to the PEI
                            (layer 1 = 1) before calls can be made
``AT+CTSDC=...``            circuit-mode service definition for ATD (accepted)
``AT+CTGS=1,<gssi>``/``?``  select / query the talkgroup; unknown groups are refused
``ATD<gssi>``               set up a group call: ``OK``, ``+CTOCP: <cc>,0,0``, then after
                            ``setup_ms`` ``+CTCC: <cc>,1,1,0,0,1,1`` and ``+CTXG: <cc>,0,0,0``
``AT+CTXD=<cc>,<prio>``     transmit demand on a call that is up: ``+CTXG: <cc>,0,...``
                            after ``grant_ms``, or ``+CTXG: <cc>,2,...`` (queued) while
                            another unit talks and the grant when it stops
``AT+CUTXC=<cc>``           transmission ceased; the call is released (``+CTCR: <cc>,0``)
                            after ``call_hang_ms`` without traffic
==========================  ======================================================

Other units talking (:meth:`start_incoming` / :meth:`stop_incoming`): ``+CTICN: <cc>,0,0,5,
<TSI>,1,1,0,1,1,5,<GTSI>,0`` for a new call, ``+CTXG: <cc>,3,0,0,5,<TSI>`` (granted to another
user) on a call that is up, ``+CDTXC: <cc>,0`` when they stop, ``+CTCR: <cc>,0`` at release.
Faults for drills and tests: :meth:`go_silent`, :meth:`power_cycle`, :meth:`send_raw`.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


class SimTerminal:
    """One simulated TETRA mobile terminal with a PEI on a pty.

    Parameters
    ----------
    name:
        Port name (also the virtual sound card name ``brug_NAME``).
    setup_ms:
        Group-call set-up time: ``ATD`` to ``+CTXG`` (ms, default 300).
    grant_ms:
        ``AT+CTXD`` to ``+CTXG`` on a call that is already up (ms, default 60).
    call_hang_ms:
        Time without traffic after which the call is released (ms, default 2000).
    groups:
        GSSIs the terminal may select (None: any).
    issi, mcc, mnc:
        The terminal's own identity (used in TSIs).
    """

    def __init__(self, name: str, setup_ms: float = 300.0, grant_ms: float = 60.0,
                 call_hang_ms: float = 2000.0, groups: list[int] | None = None,
                 issi: int = 1001, mcc: int = 206, mnc: int = 1) -> None:
        self.name = name
        self.setup_ms = setup_ms
        self.grant_ms = grant_ms
        self.call_hang_ms = call_hang_ms
        self.groups = set(groups) if groups is not None else None
        self.issi, self.mcc, self.mnc = issi, mcc, mnc
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        self.path = os.ttyname(self._slave)
        #: Every command line received (without CR), for tests and the drill log.
        self.log: list[str] = []
        self._lock = threading.RLock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cc = itertools.count(1)
        self._buf = b""
        self._stop = threading.Event()
        self._silent_until = 0.0
        self._reset_state()
        self._thread = threading.Thread(target=self._run, name=f"sim-terminal {name}",
                                        daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- state
    def _reset_state(self) -> None:
        self.echo = True
        self.cmee = 0
        self.mode = 0
        self.cc_routed = False
        self.gssi: int | None = None
        self.call: int | None = None          # CC instance of the group call that is up
        self.transmitting = False             # the gateway (this terminal) has the grant
        self.tx_pending = False               # demand queued or set-up running
        self.other_talking: int | None = None  # ISSI of another unit talking
        self._release_at: float | None = None

    @property
    def silent(self) -> bool:
        return time.monotonic() < self._silent_until

    def close(self) -> None:
        """Stop the terminal and close the pty."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> SimTerminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- helpers
    def _tsi(self, ssi: int) -> str:
        return f"{self.mcc:04d}{self.mnc:05d}{ssi:08d}"

    def _send(self, line: str) -> None:
        if self.silent:
            return
        try:
            os.write(self._master, f"\r\n{line}\r\n".encode("ascii"))
        except OSError:
            pass

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes to the PEI (a garbled line, line noise)."""
        os.write(self._master, data)

    def _after(self, ms: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + ms / 1000.0, next(self._seq), fn))

    def _error(self, text: str) -> None:
        self._send(f"+CME ERROR: {text}" if self.cmee == 2 else "ERROR")

    # ---------------------------------------------------------------- faults
    def go_silent(self, seconds: float) -> None:
        """Stop answering (and drop whatever arrives) for ``seconds``."""
        self._silent_until = time.monotonic() + seconds

    def power_cycle(self, off_s: float = 0.5) -> None:
        """Switch off for ``off_s`` and back on with factory state (echo on, no group)."""
        with self._lock:
            self._timers.clear()
            self._reset_state()
        self.go_silent(off_s)

    # ---------------------------------------------------------------- other units
    def start_incoming(self, issi: int = 2001) -> bool:
        """Another unit keys up on the selected group. False if the floor is taken."""
        with self._lock:
            if self.gssi is None or self.transmitting or self.other_talking is not None:
                return False
            self.other_talking = issi
            self._release_at = None
            if self.call is None:
                self.call = next(self._cc)
                self._send(f"+CTICN: {self.call},0,0,5,{self._tsi(issi)},1,1,0,1,1,5,"
                           f"{self._tsi(self.gssi)},0")
            self._send(f"+CTXG: {self.call},3,0,0,5,{self._tsi(issi)}")
            return True

    def stop_incoming(self) -> None:
        """The other unit releases its PTT; a queued demand of ours is granted."""
        with self._lock:
            if self.other_talking is None or self.call is None:
                return
            self.other_talking = None
            self._send(f"+CDTXC: {self.call},0")
            if self.tx_pending:
                self._grant(self.grant_ms)
            else:
                self._arm_release()

    def talk(self, wav: str | Path, issi: int = 2001) -> threading.Thread:
        """Another unit says ``wav``: incoming call, the audio into ``brug_NAME_air_rx``,
        release. Runs on a thread; returns it."""
        def run() -> None:
            if self.start_incoming(issi):
                try:
                    self.play(wav)
                finally:
                    self.stop_incoming()
        th = threading.Thread(target=run, name=f"sim-talk {self.name}", daemon=True)
        th.start()
        return th

    # ---------------------------------------------------------------- audio side
    def _card(self, which: str) -> str:
        try:
            from brug.gateway.soundcards import CardNames

            return str(getattr(CardNames(self.name), which))
        except ImportError:
            return f"brug_{self.name}_{which}"

    def play(self, wav: str | Path) -> None:
        """Play ``wav`` into ``brug_NAME_air_rx`` (blocking until it has been played).

        Uses its own PortAudio stream (not ``sd.play``, whose one global stream would stop
        any other playback or recording in the process).
        """
        import sounddevice as sd
        import soundfile as sf

        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        with sd.OutputStream(samplerate=rate, channels=1, dtype="float32",
                             device=self._card("air_rx"), latency="low") as out:
            out.write(np.ascontiguousarray(data[:, :1]))
            out.write(np.zeros((int(0.05 * rate), 1), np.float32))   # flush the tail

    def record(self, seconds: float, rate_hz: int = 48000) -> npt.NDArray[np.float32]:
        """Record ``seconds`` of what the gateway transmits (``brug_NAME_air_tx``), mono."""
        import sounddevice as sd

        with sd.InputStream(samplerate=rate_hz, channels=1, dtype="float32",
                            device=self._card("air_tx")) as inp:
            data, _ = inp.read(int(seconds * rate_hz))
        return np.asarray(data[:, 0], dtype=np.float32)

    # ---------------------------------------------------------------- call control
    def _arm_release(self) -> None:
        cc = self.call
        self._release_at = time.monotonic() + self.call_hang_ms / 1000.0

        def release() -> None:
            with self._lock:
                if (self.call == cc and self._release_at is not None
                        and time.monotonic() >= self._release_at - 1e-3
                        and not self.transmitting and self.other_talking is None
                        and not self.tx_pending):
                    self._send(f"+CTCR: {cc},0")
                    self.call = None
                    self._release_at = None
        self._after(self.call_hang_ms, release)

    def _grant(self, delay_ms: float) -> None:
        cc = self.call

        def grant() -> None:
            with self._lock:
                if self.call == cc and self.tx_pending and self.other_talking is None:
                    self.tx_pending = False
                    self.transmitting = True
                    self._release_at = None
                    self._send(f"+CTXG: {cc},0,0,0")
        self._after(delay_ms, grant)

    def _command(self, line: str) -> None:
        self.log.append(line)
        if self.echo:
            self._send_echo(line)
        cmd = line.strip()
        up = cmd.upper()
        if up == "AT":
            return self._send("OK")
        if up in ("ATE0", "ATE1"):
            self.echo = up == "ATE1"
            return self._send("OK")
        if up.startswith("AT+CMEE="):
            self.cmee = _int(up[8:], 0)
            return self._send("OK")
        if up == "AT+CTOM?":
            self._send(f"+CTOM: {self.mode}")
            return self._send("OK")
        if up.startswith("AT+CTOM="):
            mode = _int(up[8:], -1)
            if mode not in (0, 1, 5, 6):
                return self._error("operating mode not supported")
            self.mode = mode
            return self._send("OK")
        if up.startswith("AT+CTSP="):
            args = [_int(a, -1) for a in up[8:].split(",")]
            if len(args) < 2 or args[0] not in (0, 1, 2):
                return self._error("invalid service profile")
            if args[1] == 1:
                self.cc_routed = args[0] in (1, 2)
            return self._send("OK")
        if up.startswith("AT+CTSDC="):
            return self._send("OK")
        if up == "AT+CTGS?":
            if self.gssi is None:
                self._send("+CTGS: 0")
            else:
                self._send(f"+CTGS: 1,{self.gssi}")
            return self._send("OK")
        if up.startswith("AT+CTGS="):
            fields = up[8:].split(",")
            gssi = _int(fields[1], -1) if len(fields) == 2 else -1
            if fields[0] != "1" or gssi <= 0 or (self.groups is not None
                                                and gssi not in self.groups):
                return self._error("group not available")
            with self._lock:
                if self.gssi != gssi:
                    self.call = None
                    self.transmitting = self.tx_pending = False
                    self.other_talking = None
                self.gssi = gssi
            return self._send("OK")
        if up.startswith("ATD"):
            return self._dial(up[3:])
        if up.startswith("AT+CTXD="):
            args = [_int(a, -1) for a in up[8:].split(",")]
            with self._lock:
                if not self.cc_routed or self.call is None or args[0] != self.call:
                    return self._error("no such call")
                self._send("OK")
                if self.transmitting:
                    return None
                self.tx_pending = True
                if self.other_talking is not None:
                    self._send(f"+CTXG: {self.call},2,0,0")
                else:
                    self._grant(self.grant_ms)
            return None
        if up.startswith("AT+CUTXC="):
            cc = _int(up[9:], -1)
            with self._lock:
                if self.call is None or cc != self.call:
                    return self._error("no such call")
                self._send("OK")
                self.transmitting = False
                self.tx_pending = False
                if self.other_talking is None:
                    self._arm_release()
            return None
        return self._error("operation not supported") if self.cmee == 2 else self._send(
            "ERROR")

    def _dial(self, number: str) -> None:
        gssi = _int(number.strip().rstrip(";"), -1)
        with self._lock:
            if not self.cc_routed:
                return self._error("call control not routed to PEI (AT+CTSP)")
            if self.gssi is None or gssi != self.gssi:
                return self._error("group not selected")
            if self.call is not None:
                # the group call is already up: a demand on it
                self._send("OK")
                if not self.transmitting:
                    self.tx_pending = True
                    if self.other_talking is not None:
                        self._send(f"+CTXG: {self.call},2,0,0")
                    else:
                        self._grant(self.grant_ms)
                return None
            cc = self.call = next(self._cc)
            self.tx_pending = True
            self._send("OK")
            self._send(f"+CTOCP: {cc},0,0")

            def connect() -> None:
                with self._lock:
                    if self.call == cc:
                        self._send(f"+CTCC: {cc},1,1,0,0,1,1")
            self._after(max(0.0, self.setup_ms - 1.0), connect)
            self._grant(self.setup_ms)
        return None

    def _send_echo(self, line: str) -> None:
        if not self.silent:
            try:
                os.write(self._master, (line + "\r").encode("ascii", "replace"))
            except OSError:
                pass

    # ---------------------------------------------------------------- thread
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                due = []
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[2])
                wait = (self._timers[0][0] - now) if self._timers else 0.05
            for fn in due:
                if not self.silent:
                    fn()
            try:
                r, _, _ = select.select([self._master], [], [], max(0.0, min(wait, 0.05)))
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            if self.silent:
                self._buf = b""
                continue
            self._buf += data
            while True:
                i = self._buf.find(b"\r")
                if i < 0:
                    break
                raw, self._buf = self._buf[:i], self._buf[i + 1:]
                line = raw.decode("ascii", "replace").strip("\n ")
                if line:
                    self._command(line)


def _int(s: str, default: int) -> int:
    try:
        return int(s.strip())
    except ValueError:
        return default


# -------------------------------------------------------------------- CLI

def _terminal(args: argparse.Namespace) -> int:
    groups = [int(g) for g in args.groups.split(",")] if args.groups else None
    term = SimTerminal(args.name, setup_ms=args.setup_ms, call_hang_ms=args.call_hang_ms,
                       groups=groups, issi=args.issi)
    print(term.path, flush=True)
    print(f"# simulated TETRA terminal {args.name!r}: PEI on {term.path}, set-up "
          f"{args.setup_ms:g} ms. Commands on stdin: rx ISSI | rx off | talk WAV | "
          "silent SECONDS | power | quit", file=sys.stderr, flush=True)
    try:
        for raw in sys.stdin:
            words = raw.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            if words[0] == "rx" and len(words) > 1 and words[1] == "off":
                term.stop_incoming()
            elif words[0] == "rx":
                ok = term.start_incoming(int(words[1]) if len(words) > 1 else 2001)
                print("# incoming call" if ok else "# floor busy or no group selected",
                      file=sys.stderr, flush=True)
            elif words[0] == "talk" and len(words) > 1:
                term.talk(words[1])
            elif words[0] == "silent" and len(words) > 1:
                term.go_silent(float(words[1]))
            elif words[0] == "power":
                term.power_cycle()
            else:
                print(f"# unknown command {raw.strip()!r}", file=sys.stderr, flush=True)
        else:
            # stdin closed (run in the background): keep serving until interrupted
            while True:
                time.sleep(3600)
    finally:
        term.close()
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("sim", help="simulated equipment for demos, drills, tests")
    sub = parser.add_subparsers(dest="sim_command", metavar="WHAT", required=True)
    t = sub.add_parser("terminal", help="run a simulated TETRA terminal, print its PEI path")
    t.add_argument("name", help="port name (virtual sound card brug_NAME)")
    t.add_argument("--setup-ms", type=float, default=300.0,
                   help="group-call set-up time before +CTXG (ms, default 300)")
    t.add_argument("--call-hang-ms", type=float, default=2000.0,
                   help="call release after this long without traffic (ms, default 2000)")
    t.add_argument("--groups", default="", help="comma-separated GSSIs it may select")
    t.add_argument("--issi", type=int, default=1001, help="the terminal's own ISSI")
    t.set_defaults(func=_terminal)
