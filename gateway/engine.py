"""The engine: a block clock that moves audio between all ports at once.

One tick moves one block (default 5 ms at 16 kHz, 80 samples) for every port, as 2-D arrays
(ports x samples): pull, detect, floor, route, push, taps. Time is :attr:`Engine.t`, engine
samples since start; the engine never reads the wall clock, so the same code runs on a virtual
clock (:meth:`Engine.run_offline`, as fast as the CPU allows) and on a real-time clock
(:meth:`Engine.run_realtime`, sound cards).

Routing keeps a history ring of every port's receive audio. Each keyed destination plays its
source(s) through its own read pointer, which starts ``preroll_ms`` before the COR decision (so
audio that arrived before VOX or the COR line opened is forwarded: no lost first syllable),
stands still while the destination's terminal sets up its call (PTT lead, or until the PTT
driver reports the grant), and then catches up by skipping silent blocks later in the over.
At the end of an over the destination drains what it still owes, holds PTT for its hang time,
and unkeys.

Threading: only the thread that runs the engine calls its methods; every other thread goes
through :meth:`Engine.submit`, whose commands are applied between ticks, so a patch change
never tears a block and the audio path needs no locks.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from brug.codecs.filters import Chain, build_chain
from brug.codecs.levels import Agc
from brug.codecs.limiter import Limiter
from brug.gateway.events import Event, EventBus
from brug.gateway.pauses import FLOOR_WINDOW_S, PauseLevels
from brug.gateway.ports.base import Port
from brug.gateway.signalling import LineSquelch, NoPtt, Ptt
from brug.gateway.vox import VoxBank
from brug.talkgroups.floor import Floor, FloorChange, FloorError, Mode

T = TypeVar("T")
Array = npt.NDArray[np.float32]
Tap = Callable[[int, Array, Array], None]


class EngineError(Exception):
    """A command the engine refuses; ``code`` is stable for scripts and the control plane."""

    user_error = True

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class EngineConfig:
    """Engine settings.

    Parameters
    ----------
    rate_hz:
        Engine sample rate, Hz.
    block_ms:
        Tick length, ms (block = rate_hz * block_ms / 1000 samples).
    preroll_ms:
        Receive audio kept before a COR decision and forwarded with the over, ms.
    history_s:
        Length of the receive history ring, s (bounds pre-roll + PTT lead + backlog).
    catchup_dbfs:
        A block whose RMS is below this level, or near its source's own noise floor
        (:mod:`brug.gateway.pauses`), may be skipped to absorb the start-of-over delay
        (pre-roll and PTT lead), dBFS.
    catchup_max_blocks:
        At most this many silent blocks are skipped per tick.
    manual_key_limit_s:
        Longest manual test transmission, s.
    clock:
        Port whose capture paces the real-time engine (a sound card), ``"first"`` the first
        sound card, ``"floor"`` the card of whoever took the floor last (the first card until
        someone does), ``"none"`` (default) the monotonic clock (see
        :meth:`Engine.run_realtime`).
    """

    rate_hz: int = 16000
    block_ms: float = 5.0
    preroll_ms: float = 150.0
    history_s: float = 4.0
    catchup_dbfs: float = -50.0
    catchup_max_blocks: int = 4
    manual_key_limit_s: float = 30.0
    clock: str = "none"

    @property
    def block(self) -> int:
        return int(round(self.rate_hz * self.block_ms / 1000.0))

    def ms(self, ms: float) -> int:
        """Milliseconds to engine samples."""
        return int(round(ms * self.rate_hz / 1000.0))


@dataclass(frozen=True)
class SquelchSettings:
    """How a port decides it is receiving. ``type`` ``vox`` runs in the engine; others name a
    :class:`~brug.gateway.signalling.LineSquelch` driver. Levels in dBFS, times in ms."""

    type: str = "vox"
    open_dbfs: float = -40.0
    close_dbfs: float = -46.0
    attack_ms: float = 10.0
    hang_ms: float = 300.0
    #: Ignore COR while the gateway transmits on the port (and for ``ptt.guard_ms`` after),
    #: so a half-duplex radio never loops our own audio back. Off for drivers whose COR is
    #: call-control information (TETRA PEI): a network pre-emption must be seen.
    mask_while_tx: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PttSettings:
    """How and when a port is keyed. Times in ms (``tot_s`` in s; 0 disables the TOT).

    ``lead_ms`` is the time between keying and the terminal really transmitting (group call
    set-up); audio is held back, not lost, meanwhile. Drivers that report the grant
    (TETRA PEI ``+CTXG``) release audio at the grant instead, waiting at most
    ``grant_timeout_ms``. ``hang_ms`` keeps PTT after the last audio; ``guard_ms`` keeps
    ignoring the port's COR after unkeying (no loops through half-duplex radios).
    """

    type: str = "none"
    lead_ms: float = 0.0
    hang_ms: float = 200.0
    tot_s: float = 120.0
    guard_ms: float = 200.0
    grant_timeout_ms: float = 3000.0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PortSettings:
    """Everything the engine needs to know about a port (profiles and the site file fill it)."""

    name: str
    network: str = ""
    talkgroup: str = ""
    squelch: SquelchSettings = field(default_factory=SquelchSettings)
    ptt: PttSettings = field(default_factory=PttSettings)
    rx_gain_db: float = 0.0
    tx_gain_db: float = 0.0
    profile: str | None = None
    kind: str = "soundcard"
    #: Voice filters (a profile's ``filters`` section, keys of
    #: :func:`brug.codecs.filters.build_chain`): everything but pre-emphasis filters the
    #: receive audio before VOX; ``preemphasis``/``pre_emphasis_us`` filter what the port
    #: transmits (before the limiter); ``squelch_tail_ms`` is removed from the end of each over.
    filters: Mapping[str, Any] = field(default_factory=dict)
    #: Automatic gain control of what the port receives (after VOX and the rx gain): ``None``
    #: off, else keyword arguments of :class:`brug.codecs.levels.Agc` (``{}`` its defaults:
    #: target -18 dBFS, +24/-12 dB, gain held in pauses).
    agc: Mapping[str, Any] | None = None


#: Filter keys that act on what a port transmits; the rest act on what it receives.
TX_FILTER_KEYS = ("preemphasis", "pre_emphasis_us")
#: VOX hears silence from a port for this long after its receive filters were built, ms: a
#: filter meeting a line that already carries hum or an offset rings while it settles (a hum
#: notch takes about 0.3 s to reach 40 dB), and that must not key up the patch.
RX_SETTLE_MS = 400.0
#: The card that clocks the engine may deliver this late (after one block period) before the
#: engine ticks on the monotonic clock instead, s. PulseAudio delivers capture in bursts of
#: up to about 20 ms, so the grace is longer than that.
CLOCK_GRACE_S = 0.03


def build_filters(filters: Mapping[str, Any], rate_hz: int) -> tuple[Chain | None, Chain | None,
                                                                      int]:
    """Receive chain, transmit chain (``None`` when empty) and squelch tail (engine samples)
    for a port's ``filters`` mapping. Raises ``ValueError`` naming a bad key or value."""
    tail_ms = float(filters.get("squelch_tail_ms", 0.0) or 0.0)
    if tail_ms < 0:
        raise ValueError(f"squelch_tail_ms must be >= 0, got {tail_ms:g}")
    rx = build_chain({k: v for k, v in filters.items()
                      if k not in TX_FILTER_KEYS and k != "squelch_tail_ms"}, rate_hz)
    tx = build_chain({k: v for k, v in filters.items() if k in TX_FILTER_KEYS}, rate_hz)
    return (rx if len(rx) else None, tx if len(tx) else None,
            int(round(tail_ms * rate_hz / 1000.0)))


@dataclass
class _Port:
    settings: PortSettings
    port: Port
    squelch: LineSquelch | None
    ptt: Ptt
    # receive side
    cor: bool = False
    cor_since: int = 0
    cor_closed: int = 0
    cor_info: str = ""
    line_raw: bool = False
    line_raw_t: int = 0
    line_info: str = ""
    # transmit side
    keyed: bool = False
    key_t: int = 0
    live: bool = False
    srcs: tuple[str, ...] = ()
    r: int = 0
    end_t: int | None = None
    hang_until: int | None = None
    unkey_t: int = -(10**12)
    manual_until: int | None = None
    manual_tone: float | None = None
    patch: str | None = None
    rx_gain: float = 1.0
    tx_gain: float = 1.0
    rx_mute: bool = False
    tx_mute: bool = False
    tx_level_db: float = -120.0
    rx_chain: Chain | None = None
    tx_chain: Chain | None = None
    tail: int = 0              # squelch tail removed from the end of this port's overs
    settle_until: int = 0      # VOX ignores this port's audio until then (filters settling)
    agc: Agc | None = None
    overs: int = 0
    skipped: int = 0
    dropped: int = 0

    @property
    def name(self) -> str:
        return self.settings.name


def _db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


class _CorSince(Mapping[str, int]):
    """Port name -> engine sample at which its COR last opened: a live read-only view of the
    engine's ports, handed to :meth:`Floor.update` every tick without building a dict."""

    def __init__(self, ports: dict[str, _Port]) -> None:
        self._ports = ports

    def __getitem__(self, name: str) -> int:
        return self._ports[name].cor_since

    def __iter__(self) -> Iterator[str]:
        return iter(self._ports)

    def __len__(self) -> int:
        return len(self._ports)


class Engine:
    """The block engine. See the module docstring and docs/engine.md."""

    def __init__(self, config: EngineConfig | None = None, events: EventBus | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        if cfg.block <= 0:
            raise EngineError("bad_request", f"block of {cfg.block_ms} ms is empty")
        self.rate = cfg.rate_hz
        self.block = cfg.block
        self.events = events or EventBus()
        self.t = 0
        self.ticks = 0
        self.running = False
        self._started = False
        self._ports: dict[str, _Port] = {}
        self._order: list[str] = []
        self._patches: dict[str, Floor] = {}
        self._taps: list[Tap] = []
        self._row: dict[str, int] = {}
        self._play_cache: dict[tuple[tuple[str, ...], int, int],
                               tuple[int, int, int, Array]] = {}
        self._hold_cache: dict[tuple[str, ...], int] = {}   # see _hold
        self._pending: list[Event] = []
        self._commands: queue.SimpleQueue[tuple[Callable[[Engine], Any], Future[Any]]] = (
            queue.SimpleQueue())
        hist = max(1, int(math.ceil(cfg.history_s * cfg.rate_hz)))
        self._L = 1 << (hist - 1).bit_length()
        self._vox = VoxBank(cfg.rate_hz, 0)
        self._preroll = cfg.ms(cfg.preroll_ms)
        # a block near its source's noise floor (or below catchup_dbfs) may be skipped
        self._pauses = PauseLevels(cfg.catchup_dbfs, int(FLOOR_WINDOW_S * cfg.rate_hz)
                                   // max(1, cfg.block))
        self._pause_keys: list[tuple[str, float]] = []
        self._tone_phase = 0.0
        self._alloc(0)
        self._limiter_cls = Limiter
        self._limiter: Limiter | None = None
        self._limiter_rows: list[str] = []
        self._rx_chains: list[tuple[int, Chain]] = []
        self._tx_chains: list[tuple[int, Chain]] = []
        self._settling = False
        self._agcs: list[tuple[int, Agc]] = []
        self._rows: list[_Port] = []            # ports in row order (the tick's list)
        self._line_ports: list[_Port] = []      # ports whose COR comes from a line driver
        self._rx_unity = True                   # every receive gain 1.0 (no mute)
        self._cor_since = _CorSince(self._ports)
        self.late_ticks = 0
        self.clock_misses = 0
        self._clock: Any = None        # the port whose capture paces run_realtime
        self._clock_next: Any = None   # clock "floor": the card to move to before the next tick
        self.clock_moves = 0           # ... and how often it moved
        #: run_realtime ticks on the monotonic clock (no clock card, or the card is late)
        self.on_wall_clock = True
        self._wake = threading.Event()  # set by the clock port's capture callback

    # ------------------------------------------------------------------ arrays
    def _alloc(self, n: int) -> None:
        old_h = getattr(self, "_H", None)
        self._X: Array = np.zeros((n, self.block), np.float32)
        self._Y: Array = np.zeros((n, self.block), np.float32)
        self._X_rows: list[Array] = list(self._X)     # row views, made once
        self._Y_rows: list[Array] = list(self._Y)
        H = np.zeros((n, 2 * self._L), np.float32)
        if old_h is not None:
            k = min(n, old_h.shape[0])
            H[:k] = old_h[:k]
        self._H: Array = H
        self._H2: Array = H.reshape(n, 2, self._L)    # the two halves of the ring, a view
        self._rx_gain = np.ones((n, 1), np.float32)

    def _rebuild(self) -> None:
        """Re-derive per-row arrays after ports were added or removed."""
        self._row = {name: i for i, name in enumerate(self._order)}
        self._hold_cache.clear()
        n = len(self._order)
        # keep the limiter's look-ahead of every port that stays: rebuilding it on a gain
        # change, a profile switch or another port's arrival would cut samples from their audio
        old = self._limiter_rows
        if not n:
            self._limiter = None
        elif self._limiter is None:
            self._limiter = self._limiter_cls(self.rate, n)
        elif old != self._order:
            rows = [old.index(name) if name in old else None for name in self._order]
            self._limiter = self._limiter.remap(rows)
        self._limiter_rows = list(self._order)
        for i, name in enumerate(self._order):
            p = self._ports[name]
            self._rx_gain[i, 0] = 0.0 if p.rx_mute else p.rx_gain
        # each port keeps its noise floor unless its receive gain changed (its floor moved)
        keys = [(name, float(self._rx_gain[i, 0])) for i, name in enumerate(self._order)]
        if keys != self._pause_keys:
            self._pauses.remap([self._pause_keys.index(k) if k in self._pause_keys else None
                                for k in keys])
            self._pause_keys = keys
        ports = [self._ports[n] for n in self._order]
        self._rows = ports
        self._line_ports = [p for p in ports
                            if p.squelch is not None and p.settings.squelch.type != "vox"]
        self._rx_unity = bool((self._rx_gain == 1.0).all())
        self._rx_chains = [(i, p.rx_chain) for i, p in enumerate(ports) if p.rx_chain]
        self._tx_chains = [(i, p.tx_chain) for i, p in enumerate(ports) if p.tx_chain]
        self._agcs = [(i, p.agc) for i, p in enumerate(ports) if p.agc is not None]

    @property
    def port_names(self) -> list[str]:
        """Port names in row order of the 2-D arrays taps receive."""
        return list(self._order)

    # ------------------------------------------------------------------ commands
    def submit(self, fn: Callable[[Engine], T]) -> Future[T]:
        """Run ``fn(engine)`` between ticks; thread-safe. Returns a future with its result.

        When the engine is not ticking (not started, or driven offline by the caller between
        calls) the command waits for the next tick; use :meth:`apply_commands` to run pending
        commands without ticking.
        """
        fut: Future[T] = Future()
        self._commands.put((fn, fut))
        return fut

    def apply_commands(self) -> None:
        """Apply commands queued by :meth:`submit` (called at the start of every tick)."""
        # this thread is the only consumer: a queue that is not empty stays so until read
        while not self._commands.empty():
            fn, fut = self._commands.get_nowait()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _emit(self, topic: str, data: dict[str, Any] | None = None, info: str = "",
              t: int | None = None) -> None:
        self._pending.append(Event(self.t if t is None else t, topic, data or {}, info))

    def _get(self, name: str) -> _Port:
        try:
            return self._ports[name]
        except KeyError:
            raise EngineError("unknown_port", f"no port named {name!r}; ports: "
                              f"{', '.join(self._order) or '(none)'}") from None

    def _get_patch(self, name: str) -> Floor:
        try:
            return self._patches[name]
        except KeyError:
            raise EngineError("unknown_patch", f"no patch named {name!r}; patches: "
                              f"{', '.join(self._patches) or '(none)'}") from None

    def add_port(self, port: Port, settings: PortSettings, squelch: LineSquelch | None = None,
                 ptt: Ptt | None = None) -> None:
        """Add a port. If the engine has started, the port (and its drivers) start now."""
        if settings.name in self._ports:
            raise EngineError("conflict", f"port {settings.name!r} exists already")
        if port.name != settings.name:
            raise EngineError("bad_request", f"port object is named {port.name!r}, settings "
                              f"name it {settings.name!r}")
        p = _Port(settings, port, squelch, ptt or NoPtt())
        self._apply_settings(p)
        self._ports[settings.name] = p
        self._order.append(settings.name)
        self._vox.resize(len(self._order))
        self._configure_vox(len(self._order) - 1, settings)
        self._alloc(len(self._order))
        self._rebuild()
        if self._started:
            if self._clock is None:
                self._select_clock()     # the first sound card of an engine that had none
            self._start_port(p)
        self._emit(f"config.port.{settings.name}", {"action": "add"}, "port added")

    def _apply_settings(self, p: _Port) -> None:
        p.rx_gain = _db_to_gain(p.settings.rx_gain_db)
        p.tx_gain = _db_to_gain(p.settings.tx_gain_db)
        try:
            p.rx_chain, p.tx_chain, p.tail = build_filters(p.settings.filters, self.rate)
        except ValueError as exc:
            raise EngineError("bad_request", f"port {p.name!r}: filters: {exc}") from None
        self._hold_cache.clear()
        p.settle_until = self.t + self.config.ms(RX_SETTLE_MS) if p.rx_chain else 0
        self._settling = self._settling or p.rx_chain is not None
        try:
            p.agc = None if p.settings.agc is None else Agc(self.rate, **p.settings.agc)
        except (TypeError, ValueError) as exc:
            raise EngineError("bad_request", f"port {p.name!r}: agc: {exc}") from None

    def _configure_vox(self, i: int, s: PortSettings) -> None:
        sq = s.squelch
        self._vox.configure(i, open_dbfs=sq.open_dbfs, close_dbfs=sq.close_dbfs,
                            attack_ms=sq.attack_ms, hang_ms=sq.hang_ms,
                            enabled=sq.type == "vox")

    def _start_port(self, p: _Port) -> None:
        p.port.start(self.rate, self.block)
        p.ptt.open()
        if p.squelch is not None:
            p.squelch.open()

    def replace_port(self, name: str, port: Port, settings: PortSettings,
                     squelch: LineSquelch | None = None, ptt: Ptt | None = None,
                     start: bool = True) -> Port:
        """Swap the device and settings of port ``name``; patches and other ports are untouched.

        Start the new ``port`` before submitting (``start=False``) so the engine thread does
        not wait for a device to open. Returns the old port object; the caller stops it.
        """
        old = self._get(name)
        if settings.name != name or port.name != name:
            raise EngineError("bad_request", "replacement must keep the port name")
        p = _Port(settings, port, squelch, ptt or NoPtt(), patch=old.patch,
                  rx_mute=old.rx_mute, tx_mute=old.tx_mute, overs=old.overs)
        self._apply_settings(p)          # refuses bad settings before the old port is touched
        if old.keyed:
            old.ptt.set_tx(False)
            self._emit(f"port.{name}.ptt", {"on": False}, "port replaced")
        old.ptt.close()
        if old.squelch is not None:
            old.squelch.close()
        self._ports[name] = p
        i = self._order.index(name)
        self._configure_vox(i, settings)
        if self._started:
            if start:
                port.start(self.rate, self.block)
            p.ptt.open()
            if p.squelch is not None:
                p.squelch.open()
        self._rebuild()
        if self._started and old.port is self._clock:
            self._clock = None
            self._select_clock()
        self._emit(f"config.port.{name}", {"action": "replace", "profile": settings.profile},
                   "port replaced")
        return old.port

    def remove_port(self, name: str) -> Port:
        """Remove a port (from its patch too); returns the port object, stopped."""
        p = self._get(name)
        if p.patch:
            self.remove_member(p.patch, name, _force=True)
        if p.keyed:
            p.ptt.set_tx(False)
        p.ptt.close()
        if p.squelch is not None:
            p.squelch.close()
        i = self._order.index(name)
        self._order.pop(i)
        del self._ports[name]
        self._vox.delete(i)
        H = np.delete(self._H, i, axis=0)
        self._H = None  # type: ignore[assignment]
        self._alloc(len(self._order))
        self._H[:] = H
        self._rebuild()
        if p.port is self._clock:
            self._clock = None
            if self._started:
                self._select_clock()
        p.port.stop()
        self._emit(f"config.port.{name}", {"action": "remove"}, "port removed")
        return p.port

    def create_patch(self, name: str, members: Iterable[str], mode: str = "half_duplex",
                     priorities: Mapping[str, int] | None = None) -> None:
        """Join ``members`` (2..N port names, each in at most one patch) into patch ``name``."""
        members = list(members)
        if name in self._patches:
            raise EngineError("conflict", f"patch {name!r} exists already")
        try:
            m = Mode(mode)
        except ValueError:
            raise EngineError("bad_request", f"mode={mode!r} is not one of: "
                              f"{', '.join(x.value for x in Mode)}") from None
        for port in members:
            p = self._get(port)
            if p.patch is not None:
                raise EngineError("conflict", f"port {port!r} is already in patch {p.patch!r}")
        prio = dict(priorities or {})
        for port in prio:
            if port not in members:
                raise EngineError("bad_request", f"priority for {port!r}, not a member")
        try:
            floor = Floor(name, members, m, prio, self._tot_map(members))
        except FloorError as exc:
            raise EngineError("bad_request", str(exc)) from None
        self._patches[name] = floor
        for port in members:
            self._ports[port].patch = name
        self._emit(f"config.patch.{name}", {"action": "create", "members": members,
                                            "mode": m.value, "priorities": prio},
                   "patch created")

    def _tot_map(self, members: Iterable[str]) -> dict[str, int]:
        return {p: int(round(self._ports[p].settings.ptt.tot_s * self.rate)) for p in members}

    def delete_patch(self, name: str) -> None:
        """Delete a patch; its keyed members drain and unkey as at the end of an over."""
        floor = self._get_patch(name)
        for port in floor.members:
            self._ports[port].patch = None
        del self._patches[name]
        self._emit(f"config.patch.{name}", {"action": "delete"}, "patch deleted")

    def add_member(self, patch: str, port: str, priority: int | None = None) -> None:
        floor = self._get_patch(patch)
        p = self._get(port)
        if p.patch is not None:
            raise EngineError("conflict", f"port {port!r} is already in patch {p.patch!r}")
        floor.members.append(port)
        floor.tot_samples.update(self._tot_map([port]))
        if priority is not None:
            floor.priorities[port] = priority
        p.patch = patch
        self._emit(f"config.patch.{patch}", {"action": "add_member", "port": port},
                   "member added")

    def remove_member(self, patch: str, port: str, _force: bool = False) -> None:
        floor = self._get_patch(patch)
        if port not in floor.members:
            raise EngineError("bad_request", f"{port!r} is not a member of {patch!r}")
        if len(floor.members) <= 2 and not _force:
            raise EngineError("conflict", f"patch {patch!r} would have fewer than 2 members; "
                              "delete the patch instead")
        for ch in floor.remove_member(port):
            self._emit_floor(floor, ch)
        floor.priorities.pop(port, None)
        self._ports[port].patch = None
        if len(floor.members) < 2:
            self.delete_patch(patch)
        self._emit(f"config.patch.{patch}", {"action": "remove_member", "port": port},
                   "member removed")

    def set_patch_mode(self, patch: str, mode: str) -> None:
        floor = self._get_patch(patch)
        try:
            floor.mode = Mode(mode)
        except ValueError:
            raise EngineError("bad_request", f"mode={mode!r} is not one of: "
                              f"{', '.join(x.value for x in Mode)}") from None
        self._emit(f"config.patch.{patch}", {"action": "mode", "mode": floor.mode.value})

    def set_priority(self, patch: str, port: str, priority: int) -> None:
        floor = self._get_patch(patch)
        if port not in floor.members:
            raise EngineError("bad_request", f"{port!r} is not a member of {patch!r}")
        floor.priorities[port] = int(priority)
        self._emit(f"config.patch.{patch}", {"action": "priority", "port": port,
                                             "priority": int(priority)})

    def set_gain(self, port: str, rx_db: float | None = None, tx_db: float | None = None) -> None:
        """Set receive and/or transmit gain of ``port`` in dB (-60..+30)."""
        p = self._get(port)
        for v in (rx_db, tx_db):
            if v is not None and not -60.0 <= v <= 30.0:
                raise EngineError("bad_request", f"gain {v} dB outside -60..+30 dB")
        if rx_db is not None:
            p.rx_gain = _db_to_gain(rx_db)
        if tx_db is not None:
            p.tx_gain = _db_to_gain(tx_db)
        self._rebuild()
        self._emit(f"config.port.{port}", {"action": "gain", "rx_db": rx_db, "tx_db": tx_db})

    def set_mute(self, port: str, rx: bool | None = None, tx: bool | None = None) -> None:
        """Mute what ``port`` receives (not forwarded, COR still seen) and/or transmits."""
        p = self._get(port)
        if rx is not None:
            p.rx_mute = bool(rx)
        if tx is not None:
            p.tx_mute = bool(tx)
        self._rebuild()
        self._emit(f"config.port.{port}", {"action": "mute", "rx": p.rx_mute, "tx": p.tx_mute})

    def manual_key(self, port: str, seconds: float, tone_hz: float | None = None) -> None:
        """Key ``port`` for a test transmission of ``seconds`` (mandatory, at most
        ``manual_key_limit_s``), sending silence or a -20 dBFS tone of ``tone_hz``."""
        p = self._get(port)
        limit = self.config.manual_key_limit_s
        if not 0 < seconds <= limit:
            raise EngineError("bad_request", f"manual key needs 0 < seconds <= {limit:g}")
        if p.keyed and p.manual_until is None:
            raise EngineError("conflict", f"port {port!r} is carrying an over")
        p.manual_until = self.t + int(seconds * self.rate)
        p.manual_tone = tone_hz
        self._emit(f"port.{port}.manual", {"seconds": seconds, "tone_hz": tone_hz},
                   "manual key")

    def add_tap(self, fn: Tap) -> Callable[[], None]:
        """Call ``fn(t, rx, tx)`` after every tick (engine thread; copy what you keep)."""
        self._taps.append(fn)

        def _remove() -> None:
            if fn in self._taps:
                self._taps.remove(fn)

        return _remove

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start every port and driver. Idempotent."""
        if self._started:
            return
        self._select_clock()        # before the ports start: it sets the card's rx set point
        for name in self._order:
            self._start_port(self._ports[name])
        self._started = True

    def stop(self) -> None:
        """Unkey every port and stop everything. Idempotent; safe after a fault."""
        for p in self._ports.values():
            try:
                if p.keyed:
                    p.ptt.set_tx(False)
                    p.keyed = False
                    self._emit(f"port.{p.name}.ptt", {"on": False}, "engine stopped")
                p.ptt.close()
                if p.squelch is not None:
                    p.squelch.close()
            finally:
                p.port.stop()
        self.events.publish(self._take_events())
        self._started = False

    def run_offline(self, ticks: int) -> None:
        """Run ``ticks`` ticks on the virtual clock, as fast as the CPU allows."""
        self.start()
        for _ in range(ticks):
            self.tick()

    def run_realtime(self, stop: threading.Event) -> None:
        """Tick in real time until ``stop`` is set.

        When a port can clock the engine (a sound card, :attr:`EngineConfig.clock`), it ticks
        as soon as that card's capture holds a block, so its audio waits in no ring; the other
        ports follow through their drift-corrected rings. When the clock card is late by more
        than :data:`CLOCK_GRACE_S` (lost, reopening, stalled) the engine ticks on the
        monotonic clock until the card delivers again (``clock_misses`` counts the changes),
        so the other ports carry on. Without a clock card it ticks on the monotonic clock.

        The clock only paces the ticks; all timing inside stays in samples. If the thread falls
        more than 200 ms behind (machine suspended, debugger) it resynchronises and counts
        ``late_ticks`` instead of racing to catch up.
        """
        self.start()
        self.running = True
        period = self.block / self.rate
        deadline = time.monotonic()
        last = deadline
        wake = self._wake
        self.on_wall_clock = True     # until the clock card delivers its first block
        was_on_wall_clock = True
        try:
            while not stop.is_set():
                if self._clock_next is not None:    # a new talker's card (clock: floor)
                    self._move_clock(self._clock_next)
                    self._clock_next = None
                clock = self._clock       # commands between ticks may replace the card
                if clock is None:
                    self.on_wall_clock = True
                else:
                    if not self.on_wall_clock:
                        if not self._wait_clock(clock, wake, last + period + CLOCK_GRACE_S,
                                                stop):
                            self.on_wall_clock, deadline = True, time.monotonic()
                            self.clock_misses += 1
                    elif clock.ready():
                        self.on_wall_clock = False
                if self.on_wall_clock:
                    now = time.monotonic()
                    delay = deadline - now
                    if delay > 0:
                        if clock is not None and self._wait_clock(clock, wake, deadline, stop):
                            self.on_wall_clock = False
                        elif clock is None:
                            stop.wait(delay)
                    elif delay < -0.2:
                        self.late_ticks += 1
                        deadline = now
                    deadline += period
                if stop.is_set():
                    break
                if self.on_wall_clock != was_on_wall_clock:
                    was_on_wall_clock = self.on_wall_clock
                    for p in self._rows:
                        p.port.retime()
                self.tick()
                last = time.monotonic()
        finally:
            self.running = False

    @property
    def clock_name(self) -> str | None:
        """Name of the port whose capture clocks the real-time engine, or ``None``."""
        return None if self._clock is None else str(self._clock.name)

    def _select_clock(self) -> None:
        """Pick the port that clocks the engine: the one named by ``EngineConfig.clock``
        (``"first"``: the first port that can, ``"floor"``: the same until someone takes the
        floor, ``"none"``: none). A port can when it has
        ``attach_clock`` and ``ready`` (a sound card). Called on start and when ports come
        and go."""
        want = self.config.clock
        chosen: Any = None
        if want != "none":
            for name in self._order:
                port = self._ports[name].port
                if want in ("first", "floor", name) and self._can_clock(port):
                    chosen = port
                    break
        if chosen is not self._clock:
            self._clock = chosen
            if chosen is not None:
                chosen.attach_clock(self._wake)
                self._emit("engine.clock", {"port": chosen.name},
                           f"the engine ticks on {chosen.name}'s capture")

    @staticmethod
    def _can_clock(port: Any) -> bool:
        """Can ``port`` clock the engine (a sound card: ``attach_clock`` and ``ready``)?"""
        return hasattr(port, "attach_clock") and hasattr(port, "ready")

    def _follow_floor(self, taken: list[str]) -> None:
        """``engine.clock: floor``, after a floor changed hands: ``taken`` are the ports that
        took a floor this tick. Unless the card that clocks the engine belongs to someone who
        still talks (in any patch: a talker keeps the clock to the end of the over), the clock
        is to move to the last of them that is a sound card, else (the clock's talker let go
        while someone in another patch talks on) to one who still talks, before the next tick
        (:meth:`_move_clock`). Engine thread; after floor changes only."""
        cur = self._clock
        talking: set[str] = set()
        for floor in self._patches.values():
            if floor.holder is not None:
                talking.add(floor.holder)
            talking.update(floor.talkers)
        if cur is not None and cur.name in talking:
            return
        for name in [*reversed(taken), *sorted(talking)]:
            port = self._ports[name].port
            if name in talking and port is not cur and self._can_clock(port):
                self._clock_next = port
                return

    def _move_clock(self, new: Any) -> None:
        """Move the clock to the card ``new`` while the engine runs (``engine.clock: floor``).
        Its receive ring keeps what it holds (the new talker's speech, read out in the next
        ticks); the old card takes a receive cushion again; every port levels its rings for
        the new pattern of ticks, and its drift loops shift by the new card's offset against
        the old (which its receive loop has learned) instead of learning it again. Engine
        thread, between ticks."""
        old = self._clock
        shift = None if old is None or self.on_wall_clock else float(new.capture_offset_ppm)
        if old is not None and hasattr(old, "detach_clock"):
            old.detach_clock()
        new.attach_clock(self._wake, keep_ring=True)
        self._clock = new
        self.clock_moves += 1
        for p in self._rows:
            p.port.retime(shift)
        self._emit("engine.clock", {"port": new.name, "prev": None if old is None else old.name},
                   f"the engine ticks on {new.name}'s capture: it has the floor")

    @staticmethod
    def _wait_clock(clock: Any, wake: threading.Event, until: float,
                    stop: threading.Event) -> bool:
        """Wait until ``clock`` can deliver a block (True) or the monotonic time ``until``
        passes (False)."""
        while not clock.ready():
            wake.clear()
            if clock.ready():           # a callback came between the check and the clear
                return True
            remaining = until - time.monotonic()
            if remaining <= 0 or stop.is_set():
                return False
            wake.wait(remaining)
        return True

    # ------------------------------------------------------------------ the tick
    def tick(self) -> None:
        """Process one block for every port. Real-time limits: engine thread only."""
        self.apply_commands()
        t, B, L = self.t, self.block, self._L
        X, Y = self._X, self._Y
        ports = self._rows
        # 1 pull
        for p, x in zip(ports, self._X_rows):
            p.port.read(x)
        for i, chain in self._rx_chains:
            X[i] = chain.process(X[i])
        if ports:
            # 2 detect (VOX on the filtered audio, before gain and mute)
            vox_edges = self._vox.process(t, self._vox_input(t, X, ports))
            if not self._rx_unity:       # a gain of exactly 1.0 leaves every sample as it is
                X *= self._rx_gain
            for i, agc in self._agcs:
                X[i] = agc.process(X[i])
            self._pauses.observe(X)
            # into both halves of the history ring at once (a (ports, 2, L) view of it)
            j = t % L
            first = min(B, L - j)
            H2 = self._H2
            H2[:, :, j:j + first] = X[:, None, :first]
            if first < B:
                H2[:, :, :B - first] = X[:, None, first:]
            for e in vox_edges:
                self._cor_edge(ports[e.port], e.open, e.t, f"vox {e.level_dbfs:.0f} dBFS")
            for p in self._line_ports:
                self._line_cor(p, t)
            if self.ticks % 10 == 0:
                self._poll_drivers(ports)
        # 3 floor
        routes: dict[str, tuple[str, ...]] = {}
        blocked: set[str] = set()
        taken: list[str] = []
        changed = False
        for floor in self._patches.values():
            cor = {m: self._effective_cor(self._ports[m], t) for m in floor.members}
            for ch in floor.update(t, cor, self._cor_since):
                self._emit_floor(floor, ch)
                if ch.kind == "floor" and ch.port is not None:
                    taken.append(ch.port)
                elif ch.kind == "talkers":
                    taken.extend(ch.talkers)
                changed = changed or ch.kind in ("floor", "talkers")
            routes.update(floor.routes())
            blocked |= floor.blocked
        if changed and self.running and self.config.clock == "floor":
            self._follow_floor(taken)
        # 4 route
        Y[:] = 0.0
        self._play_cache.clear()
        for i, p in enumerate(ports):
            want = routes.get(p.name, ())
            if p.keyed and p.manual_until is None and (
                    p.name in blocked or self._effective_cor(p, t)):
                self._key(p, False, t, "terminal is receiving")
            if p.keyed or want or p.manual_until is not None:
                self._route(i, p, want, t)
        # 5 push
        for i, chain in self._tx_chains:
            Y[i] = chain.process(Y[i])
        if ports and self._limiter is not None:
            self._limiter.process_inplace(Y)
            for p, y in zip(ports, self._Y_rows):
                p.port.write(y)
        # 6 taps and events
        for tap in self._taps:
            tap(t, X, Y)
        self.t = t + B
        self.ticks += 1
        if self._pending:
            self.events.publish(self._take_events())

    def _vox_input(self, t: int, X: Array, ports: list[_Port]) -> Array:
        """``X``, with silence for ports whose receive filters are still settling."""
        if not self._settling:
            return X
        rows = [i for i, p in enumerate(ports) if t < p.settle_until]
        if not rows:
            self._settling = False
            return X
        Xv = X.copy()
        Xv[rows] = 0.0
        return Xv

    def _take_events(self) -> list[Event]:
        ev, self._pending = self._pending, []
        return ev

    def _effective_cor(self, p: _Port, t: int) -> bool:
        """COR as the floor sees it: ignored while we transmit on the port and for the guard."""
        if not p.cor:
            return False
        floor = self._patches.get(p.patch) if p.patch else None
        if floor is not None and floor.mode is Mode.FULL_DUPLEX:
            return True      # duplex ports hear and talk at once: nothing to mask
        if not p.settings.squelch.mask_while_tx:
            return True
        if p.live and p.ptt.granted(t) is False:
            return True      # the network took our transmission away: what it reports is real
        if p.live or (p.keyed and p.settings.ptt.lead_ms <= 0):
            return False
        return t >= p.unkey_t + self.config.ms(p.settings.ptt.guard_ms)

    def _cor_edge(self, p: _Port, is_open: bool, t: int, info: str) -> None:
        p.cor = is_open
        if is_open:
            p.cor_since = t
        else:
            p.cor_closed = t
        masked = not self._effective_cor(p, self.t) if is_open else False
        self._emit(f"port.{p.name}.cor", {"open": is_open, "masked": masked}, info, t=t)

    def _line_cor(self, p: _Port, t: int) -> None:
        """Debounce a line/driver COR: open after ``attack_ms``, close after ``hang_ms``."""
        assert p.squelch is not None
        is_open, info = p.squelch.state(t)
        if is_open != p.line_raw:
            p.line_raw, p.line_raw_t, p.line_info = is_open, t, info
        if p.line_raw != p.cor:
            sq = p.settings.squelch
            wait = self.config.ms(sq.attack_ms if p.line_raw else sq.hang_ms)
            if t - p.line_raw_t >= wait:
                self._cor_edge(p, p.line_raw, p.line_raw_t + wait, p.line_info)

    def _poll_drivers(self, ports: list[_Port]) -> None:
        for p in ports:
            for kind, info in p.port.poll_faults():
                self._emit(f"fault.port.{p.name}", {"kind": kind}, info)
            for ev in p.ptt.poll_events():
                self._pending.append(Event(self.t, ev.topic, ev.data, ev.info))
            if p.squelch is not None:
                for ev in p.squelch.poll_events():
                    self._pending.append(Event(self.t, ev.topic, ev.data, ev.info))

    def _emit_floor(self, floor: Floor, ch: FloorChange) -> None:
        topic = f"patch.{floor.name}"
        if ch.kind == "floor":
            self._emit(f"{topic}.floor", {"holder": ch.port, "prev": ch.holder}, ch.info)
        elif ch.kind == "talkers":
            self._emit(f"{topic}.floor", {"talkers": list(ch.talkers)}, ch.info)
        elif ch.kind == "blocked":
            self._emit(f"{topic}.blocked", {"port": ch.port, "holder": ch.holder}, ch.info)
        elif ch.kind == "preempt":
            self._emit(f"{topic}.preempt", {"port": ch.port, "prev": ch.holder}, ch.info)
        elif ch.kind == "tot":
            self._emit(f"{topic}.tot", {"port": ch.port}, ch.info)

    def _key(self, p: _Port, on: bool, t: int, info: str) -> None:
        p.keyed = on
        p.ptt.set_tx(on)
        if on:
            p.key_t = t
            p.live = False
            p.overs += 1
        else:
            if p.live:             # the guard is for our own transmission looping back
                p.unkey_t = t
            p.live = False
            p.srcs = ()
            p.end_t = None
            p.hang_until = None
            p.manual_until = None
        self._emit(f"port.{p.name}.ptt", {"on": on}, info, t=t)

    def _route(self, i: int, p: _Port, want: tuple[str, ...], t: int) -> None:
        B, L = self.block, self._L
        ptt = p.settings.ptt
        if p.tx_mute:
            want = ()
        # manual test transmission (only while the port carries no over)
        if p.manual_until is not None and not want and not p.srcs:
            if not p.keyed:
                self._key(p, True, t, "manual key")
            if t >= p.manual_until:
                self._key(p, False, t, "manual key ended")
                return
            if self._live_check(p, t):
                tone = p.manual_tone
                if tone:
                    n = np.arange(B)
                    ph = self._tone_phase + 2 * np.pi * tone * n / self.rate
                    self._Y[i] = 0.1 * np.sin(ph)
                    self._tone_phase = float(ph[-1] + 2 * np.pi * tone / self.rate)
            return
        if want:
            p.manual_until = None
            if not p.keyed:
                self._key(p, True, t, f"patch {p.patch}: {', '.join(want)} talking")
                p.srcs = want
                p.r = self._start_point(want, t)
                p.end_t = p.hang_until = None
            elif want != p.srcs and set(want) != set(p.srcs):
                new = set(want) - set(p.srcs)
                if new and len(want) == 1:
                    p.r = self._start_point(want, t)
                p.srcs = want
                p.end_t = p.hang_until = None
            elif p.end_t is not None:
                p.end_t = p.hang_until = None      # the talker came back during drain/hang
        elif p.keyed and p.end_t is None and p.srcs:
            srcs = [self._ports[s] for s in p.srcs if s in self._ports]
            if any(s.cor for s in srcs):      # cut (TOT, pre-emption elsewhere, patch change)
                p.end_t = t
            else:                              # the talker let go: forward up to its last sample
                # (less the squelch tail: the noise burst before an analog squelch closes)
                p.end_t = min(max((s.cor_closed - s.tail for s in srcs), default=t), t + B)
            p.end_t = max(p.end_t, p.r)
        if not p.keyed:
            return
        if not self._live_check(p, t):
            if not p.live and t - p.key_t > self.config.ms(ptt.grant_timeout_ms) and \
                    p.ptt.granted(t) is not None:
                self._emit(f"fault.port.{p.name}", {"kind": "no_grant"},
                           f"no transmit grant within {ptt.grant_timeout_ms:g} ms")
                self._key(p, False, t, "no grant")
            return
        if p.srcs and (p.end_t is None or p.r < p.end_t):
            self._play(i, p, t)
        if p.end_t is not None and p.r >= p.end_t or (not p.srcs and p.end_t is None):
            if p.hang_until is None:
                p.hang_until = t + B + self.config.ms(ptt.hang_ms)
            if t >= p.hang_until:
                self._key(p, False, t, "over ended")
        elif p.r < t - L + 2 * B:
            p.dropped += t - L + 2 * B - p.r
            p.r = t - L + 2 * B

    def _live_check(self, p: _Port, t: int) -> bool:
        if p.live:
            return True
        g = p.ptt.granted(t)
        if g is None:
            g = t >= p.key_t + self.config.ms(p.settings.ptt.lead_ms)
        if g:
            p.live = True
            self._emit(f"port.{p.name}.live", {"on": True,
                                               "lead_ms": (t - p.key_t) * 1000.0 / self.rate},
                       "transmitting", t=t)
        return p.live

    def _start_point(self, srcs: tuple[str, ...], t: int) -> int:
        """Where a newly keyed destination starts reading: ``preroll_ms`` before the talker's
        COR opened, or the live edge when it joins an over already under way (a terminal that
        was busy receiving when the over started)."""
        since = min(self._ports[s].cor_since for s in srcs if s in self._ports)
        hold = self._hold(srcs)
        if t - since > self._preroll:
            return t - hold
        return max(since - self._preroll, t - self._L + 2 * self.block, 0)

    def _hold(self, srcs: tuple[str, ...]) -> int:
        """Samples a destination stays behind the live edge of ``srcs``: their squelch tail,
        so the tail is still in the history (not yet played) when their COR closes.

        Kept per ``srcs`` until a port's filters change or ports come or go."""
        hold = self._hold_cache.get(srcs)
        if hold is None:
            hold = self._hold_cache[srcs] = max(
                (self._ports[s].tail for s in srcs if s in self._ports), default=0)
        return hold

    def _play(self, i: int, p: _Port, t: int) -> None:
        """Write destination ``i``'s next block from its source(s) at its read pointer.

        Destinations that read the same sources at the same position (every member of a
        half-duplex patch keyed in the same tick with the same lead) share one computation.
        """
        live = t + self.block - self._hold(p.srcs)
        end = live if p.end_t is None else min(p.end_t, live)
        key = (p.srcs, p.r, end)
        hit = self._play_cache.get(key)
        if hit is None:
            hit = self._play_compute(p.srcs, p.r, end, live - self.block)
            self._play_cache[key] = hit
        r, skipped, n, block = hit
        p.skipped += skipped
        p.r = r
        if n:
            self._Y[i, :n] = block[:n]
            if p.tx_gain != 1.0:
                self._Y[i, :n] *= p.tx_gain

    def _play_compute(self, srcs: tuple[str, ...], r: int, end: int,
                      t: int) -> tuple[int, int, int, Array]:
        """Catch up and read one block at ``r`` (never past ``end``); ``t`` is the live edge
        the destination may catch up to (the tick time less the sources' squelch tail)."""
        B, L = self.block, self._L
        rows = [self._row[s] for s in srcs if s in self._row and not self._ports[s].rx_mute]
        H = self._H
        # catch up: skip silent blocks while we are behind the live edge; a block is only
        # skipped when the block after it is silent too, so a soft onset is never cut
        skipped = skips = 0
        thr = self._pauses.threshold_ms2        # the sources' pause level, mean square
        quiet_ms2 = float(thr[rows[0]] if len(rows) == 1 else thr[rows].sum()) if rows else 0.0
        while skips < self.config.catchup_max_blocks and r < t:
            step = min(B, t - r, end - r)
            if step <= 0 or not rows:
                break
            j = r % L
            n_look = min(step + B, t + B - r)
            seg = H[rows[0], j:j + n_look] if len(rows) == 1 else \
                H[rows, j:j + n_look].sum(axis=0)
            if float(np.dot(seg, seg)) >= quiet_ms2 * n_look:
                break
            r += step
            skipped += step
            skips += 1
        n = max(0, min(B, end - r))
        j = r % L
        if not rows or not n:
            block = np.zeros(B, np.float32)
        elif len(rows) == 1:
            block = H[rows[0], j:j + B]
        else:
            block = H[rows, j:j + B].sum(axis=0)
        return r + n, skipped, n, block

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state: time, ports (COR, PTT, levels, patch) and patches (floor)."""
        ports = {}
        levels = self._vox.level_db
        for i, name in enumerate(self._order):
            p = self._ports[name]
            ports[name] = {
                "network": p.settings.network, "talkgroup": p.settings.talkgroup,
                "profile": p.settings.profile, "kind": p.settings.kind,
                "patch": p.patch, "cor": p.cor, "ptt": p.keyed, "live": p.live,
                "sources": list(p.srcs),
                "delay_ms": round(max(0, self.t - p.r) * 1000.0 / self.rate, 1)
                if p.live and p.srcs else 0.0,
                "rx_level_dbfs": round(float(levels[i]), 1),
                "rx_gain_db": round(20 * math.log10(max(p.rx_gain, 1e-9)), 2),
                "tx_gain_db": round(20 * math.log10(max(p.tx_gain, 1e-9)), 2),
                "rx_mute": p.rx_mute, "tx_mute": p.tx_mute, "overs": p.overs,
                "stats": p.port.stats.as_dict(),
            }
        patches = {}
        for name, f in self._patches.items():
            patches[name] = {"members": list(f.members), "mode": f.mode.value,
                             "priorities": dict(f.priorities), "holder": f.holder,
                             "talkers": list(f.talkers), "blocked": sorted(f.blocked)}
        return {"t": self.t, "t_s": round(self.t / self.rate, 3), "rate_hz": self.rate,
                "block": self.block, "ticks": self.ticks,
                "clock": {"port": self.clock_name, "on_wall_clock": self.on_wall_clock,
                          "misses": self.clock_misses, "moves": self.clock_moves},
                "ports": ports, "patches": patches}

    def port_settings(self, name: str) -> PortSettings:
        return self._get(name).settings

    def port_object(self, name: str) -> Port:
        return self._get(name).port

    def ptt_driver(self, name: str) -> Ptt:
        return self._get(name).ptt

    def patch_names(self) -> list[str]:
        return list(self._patches)
