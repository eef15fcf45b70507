"""A gateway port on a sound card through PortAudio (python-sounddevice).

Threads and data path::

    PortAudio callback (real-time)        engine thread (read/write once per tick)
    indata  --copy--> rx Ring  --------->  StreamResampler dev->engine (drift-corrected)
                                            -> output FIFO -> exactly len(out) samples
    outdata <--copy-- tx Ring  <---------  StreamResampler engine->dev (drift-corrected)
    supervisor thread: watches the stream, reopens a lost device with back-off

PulseAudio moves audio in bursts of several callbacks, so a ring's fill saw-tooths by a burst.
Each ring keeps a small *cushion* at its lowest point with the bursts on top: after a start it
is levelled (:class:`Leveller`: its floor moved to the cushion, then its average fill measured)
and a :class:`~brug.codecs.resample.DriftController` holds that average, so the two crystals
(card and engine clock) may differ by up to ``max_ppm`` without a ring ever running dry or
full. A fixed average set point, as before, has the lowest point half a burst below it: small
set points ran dry on every burst, safe ones added latency the bursts did not need.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from brug.codecs.resample import DriftController, StreamResampler
from brug.gateway.pauses import FLOOR_WINDOW_S, PauseLevel
from brug.gateway.ports.base import Block, Port
from brug.gateway.ring import Ring

#: Default suggested PortAudio latency, s, and ring cushions, ms (site file ``buffers``).
DEFAULT_LATENCY_S = 0.015
DEFAULT_RX_MS = 10.0
DEFAULT_TX_MS = 5.0
#: Seconds between reopen attempts after a device is lost (the last value repeats).
BACKOFF_S: tuple[float, ...] = (0.05, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
#: A running stream whose callback has not run for this long counts as lost, s.
STALL_S = 1.0
#: A stream whose callbacks deliver less than this share of real time over two consecutive
#: windows of SLOW_WINDOW_S seconds counts as lost too (seen when the machine is starved of
#: CPU: the ALSA/PulseAudio stream recovers from underruns but keeps running slow).
SLOW_PACE = 0.85
SLOW_WINDOW_S = 2.0
#: A block whose RMS is below this level is silence the port may drop to bring a ring that a
#: stall left above its set point back down, dBFS (inaudible, unlike the hard trim). On a path
#: with background noise above it, a block near the noise floor is too
#: (:class:`~brug.gateway.pauses.PauseLevel`).
TRIM_SILENCE_DBFS = -50.0
#: Silent blocks dropped per engine tick at most (catch up at up to 3x real time).
TRIM_MAX_BLOCKS = 2
#: Silence is dropped while a ring's floor (:data:`FLOOR_WINDOW_MS`) stays more than
#: TRIM_MARGIN_MS above its cushion.
TRIM_MARGIN_MS = 5.0
#: Only a block that follows this many silent blocks is dropped (a pause, not a quiet
#: syllable).
TRIM_AFTER_SILENT = 2
#: A ring's floor is its lowest fill over the current and the previous window of this length,
#: ms, which the silence trim compares with the cushion. Long enough to hold PulseAudio's
#: occasional larger bursts (a 250 ms window let the trim leave too little for them: the
#: engine found the receive ring short).
FLOOR_WINDOW_MS = 2000.0
#: Drift loop time constant, s, with no acquisition phase (DriftController's ``acquire_s``).
#: A loop acquiring on 5-15 s swung by hundreds of ppm on the rings' burst noise, which
#: smears a 250 ms window of speech enough to drop its correlation below 0.9; the 30 s loop
#: lets a 250-300 ppm crystal offset take up to 3 ms of the cushion before it has caught up.
DRIFT_TIME_CONSTANT_S = 30.0
#: A ring is primed this many device callbacks above its cushion (its first burst may come
#: late), then levelled (:class:`Leveller`): LEVEL_SKIP_MS after priming (a capture stream
#: delivers irregularly while it starts: its first burst runs ahead and the fill sinks for
#: about 100 ms) its floor is watched for LEVEL_MEASURE_MS and the ring moved to its cushion
#: at once (audio dropped, or zeros added); its average fill over the next LEVEL_AVERAGE_MS is
#: what the drift loop then holds. Measured (docs/soundcards.md): a loop fed the floor itself
#: swung to its 1000 ppm limit when one capture burst came late, and a loop left to take
#: the priming allowance off by itself overshot into the cushion for tens of seconds.
PRIME_BURST_CALLBACKS = 4
LEVEL_SKIP_MS = 250.0
LEVEL_MEASURE_MS = 500.0
LEVEL_AVERAGE_MS = 1000.0
#: A ring that runs short once it is levelled grows its cushion by what it lacked (at least
#: one engine block on receive, one device callback on transmit) and levels again, up to this
#: many ms: the path's bursts were larger than the cushion allowed for, and would be again
#: (an adaptive jitter buffer: grows at once, gives back slowly).
CUSHION_MAX_MS = 30.0
#: A grown cushion that has not run short for a while gives back one step (an engine block
#: on receive, a device callback on transmit), down to the configured cushion. The samples
#: come out of the ring in pauses (silent blocks, as the stall trim drops them), so one
#: platform hiccup costs latency for seconds or minutes, not for the rest of the run. The wait
#: is SHRINK_FIRST_S after a ring's first growth (most often the start-up: at 60 s the first
#: over's growth cost the first minute of a 10-minute bench run) and doubles with each
#: further growth, up to SHRINK_AFTER_S: a path that keeps running short keeps its cushion
#: longer, so a premature give-back does not cost a glitch every few seconds.
SHRINK_FIRST_S = 10.0
SHRINK_AFTER_S = 60.0
#: Receive set point of the card that clocks the engine, ms: the engine ticks as soon as
#: this card's capture holds a block, so nothing needs to wait in its ring (see
#: :meth:`SoundCardPort.attach_clock`).
CLOCK_RX_SETPOINT_MS = 0.0
#: A ring move (levelling: audio left out, or zeros added; the refill of a transmit ring that
#: ran dry) waits for a pause: the third silent block in a row (:data:`TRIM_AFTER_SILENT`),
#: as the silence trim does, so it takes no speech and puts no gap into it. Made at once, the
#: moves were the longest gaps of the 10-minute bench runs (12-20 ms of zeros inside words,
#: docs/soundcards.md). A move that finds no pause within MOVE_WAIT_MS is made anyway: 1 s
#: was too short, the bench's sentence runs 1.45 s without one and the move, made in it, cost
#: that over (a 15 ms step in its measured half). Waiting costs nothing while the ring does
#: not run short, and a levelling up is made at once when it does.
MOVE_WAIT_MS = 3000.0
#: Writes this many engine block periods apart mean the engine stalled: zeros the device
#: played meanwhile are the stall's, which the engine's catch-up refills (the silence trim
#: then takes the excess out), not a burst the transmit cushion must grow for.
STALL_BLOCKS = 3.0
#: A transmit ring that ran dry and is still below half its set point this many engine block
#: periods later is refilled to its set point. An engine that stalled catches up in
#: back-to-back ticks (well under a period); an engine that did not stall comes back a
#: period later and finds the ring still low.
REPRIME_AFTER_BLOCKS = 0.5


class FloorTracker:
    """Lowest value seen over the current and the previous window of ``window`` updates.

    Real-time: two comparisons per update; no allocation.
    """

    def __init__(self, window: int) -> None:
        self.window = max(1, int(window))
        self.reset()

    def reset(self) -> None:
        """Forget what was seen."""
        self._cur = self._prev = 1 << 62
        self._n = 0

    def shift(self, delta: int) -> None:
        """Move what was seen by ``delta`` (the ring was levelled by that much)."""
        if self._cur != 1 << 62:
            self._cur += delta
        if self._prev != 1 << 62:
            self._prev += delta

    @property
    def floor(self) -> int:
        """The floor now (0 before the first update)."""
        low = min(self._cur, self._prev)
        return 0 if low == 1 << 62 else low

    def update(self, value: int) -> int:
        """Feed one value; return the floor (min over this window and the one before)."""
        if value < self._cur:
            self._cur = value
        self._n += 1
        floor = min(self._cur, self._prev)
        if self._n >= self.window:
            self._prev, self._cur, self._n = self._cur, 1 << 62, 0
        return floor


class Leveller:
    """Brings one ring to its cushion after a (re)start and finds the average fill to hold.

    Fed one fill per engine tick (:meth:`update`) until :attr:`done`: ``skip`` ticks are
    ignored, the lowest fill over the next ``measure`` ticks is the floor, and at that tick
    :meth:`update` returns how far to move the ring (samples; positive: drop that much,
    negative: add that much) so the floor lands on ``cushion``; the fills of the ``average``
    ticks after that give :attr:`setpoint`, the average fill of a ring whose floor is at its
    cushion (the cushion plus what PulseAudio's bursts add on this path). A drift loop holds
    that average: smooth, and one late burst does not move it. An average more than
    ``spread`` above the cushion was measured through a disturbance (the engine lost its
    clock card, a stream stalled): the floor and the average are measured again.

    Real-time: integer arithmetic, no allocation.
    """

    def __init__(self, cushion: int, skip: int, measure: int, average: int,
                 spread: int) -> None:
        self.cushion = int(cushion)
        self.spread = int(spread)
        self.skip = max(0, int(skip))
        self.level_at = self.skip + max(1, int(measure))
        self.done_at = self.level_at + max(1, int(average))
        self.levellings = 0
        #: times the cushion grew (the owner counts them: the give-back waits longer each time)
        self.growths = 0
        self.restart()

    def restart(self, skip: bool = True) -> None:
        """Level again (``skip=False``: the stream is running, watch the floor at once).
        The ring is placed on the cushion anew: nothing is left to :attr:`shed`, and a move
        not made yet is forgotten."""
        #: device samples of a given-back cushion still to take out of the ring in pauses
        self.shed = 0
        #: the move :meth:`update` asked for that the owner has not made yet (samples; positive:
        #: drop, negative: add): it waits for a pause, and the leveller is not fed meanwhile
        self.pending = 0
        #: ticks the pending move has waited
        self.waited = 0
        self.ticks = 0 if skip else self.skip
        self.low = 1 << 62
        self.total = 0
        self.setpoint = self.cushion

    @property
    def done(self) -> bool:
        """Levelled, and :attr:`setpoint` holds the average fill to keep."""
        return self.ticks >= self.done_at

    def update(self, fill: int) -> int:
        """Feed the fill (samples) once per tick; return the move to make now (see above)."""
        self.ticks += 1
        t = self.ticks
        if t <= self.skip:
            return 0
        if t <= self.level_at:
            if fill < self.low:
                self.low = fill
            if t < self.level_at:
                return 0
            self.levellings += 1
            return self.low - self.cushion
        self.total += fill
        if t == self.done_at:
            self.setpoint = int(round(self.total / (self.done_at - self.level_at)))
            if self.setpoint > self.cushion + self.spread:
                self.restart(skip=False)
        return 0


class SoundCardPort(Port):
    """A port on one capture and one playback device (a duplex PortAudio stream).

    Parameters
    ----------
    name:
        Port name (for events and faults).
    input_device, output_device:
        PortAudio device names (exact, else a unique substring) or indices.
    rate_hz:
        Device sample rate, Hz.
    channels:
        Channels opened on each device; ``channel`` (0-based) carries the port's mono audio
        (the others are ignored on capture and zero on playback).
    blocksize:
        Device frames per callback; default 3.33 ms (160 at 48 kHz).
    latency:
        Suggested PortAudio latency in seconds (or "low"/"high"); default 0.015 s. Measured on
        the PulseAudio path (docs/soundcards.md): 0.01 s takes about 10 ms off the path but,
        with a 12 ms transmit set point, dropped out in the 20 s wire test on a loaded
        machine; 0.005 s makes the plugin underrun.
    rx_setpoint_ms, tx_setpoint_ms:
        Cushion of the receive/transmit rings in ms: the fill each ring keeps at its lowest
        point; the bursts PulseAudio moves audio in come on top (:class:`Leveller`). The card
        that clocks the engine needs no receive cushion (:meth:`attach_clock`).
    max_ppm:
        Largest drift correction, ppm.
    shrink_after_s, shrink_first_s:
        A cushion grown after running short gives back one step after ``shrink_first_s``
        without running short again, s, doubled with each further growth up to
        ``shrink_after_s`` (:data:`SHRINK_FIRST_S`, :data:`SHRINK_AFTER_S`).
    quality:
        libsamplerate converter (see :data:`brug.codecs.resample.QUALITIES`).

    Notes
    -----
    Latency after a stall: when the floor of a ring's fill (its lowest value over
    :data:`FLOOR_WINDOW_MS`) stays above its cushion (the engine or the server stalled, or a
    device ran slow for a while), the port drops *silent* blocks (pauses: below
    :data:`TRIM_SILENCE_DBFS` or near the path's own noise floor, :mod:`brug.gateway.pauses`)
    until the fill is back, counted in ``stats.extra["rx_trimmed"]`` / ``["tx_trimmed"]``
    (samples). Only a ring more than 60 ms above its set point is trimmed whatever it holds
    (``overruns``). A stream that stops, stalls or runs slow is reopened, the first time after
    50 ms.
    """

    def __init__(self, name: str, input_device: str | int, output_device: str | int,
                 rate_hz: int = 48000, channels: int = 1, channel: int = 0,
                 blocksize: int | None = None, latency: float | str = DEFAULT_LATENCY_S,
                 rx_setpoint_ms: float = DEFAULT_RX_MS, tx_setpoint_ms: float = DEFAULT_TX_MS,
                 max_ppm: float = 1000.0, quality: str = "sinc_fastest",
                 shrink_after_s: float = SHRINK_AFTER_S,
                 shrink_first_s: float = SHRINK_FIRST_S) -> None:
        super().__init__(name)
        if not 0 <= channel < channels:
            raise ValueError(f"port {name}: channel {channel} outside 0..{channels - 1}")
        self.input_device = input_device
        self.output_device = output_device
        self.rate_hz = int(rate_hz)
        self.channels = int(channels)
        self.channel = int(channel)
        self.blocksize = int(blocksize or round(self.rate_hz / 300))
        self.latency = latency
        #: Fill above the set point (device samples, 60 ms) beyond which a ring is trimmed.
        self._max_excess = int(0.06 * self.rate_hz)
        self.rx_setpoint = max(1, int(round(rx_setpoint_ms * self.rate_hz / 1000)))
        self.tx_setpoint = max(1, int(round(tx_setpoint_ms * self.rate_hz / 1000)))
        # the configured cushions: a grown cushion gives back down to these (a clock card
        # holds none on receive: it never grows one, so it has nothing to give back)
        self._rx_base, self._tx_base = self.rx_setpoint, self.tx_setpoint
        self.shrink_after_s = float(shrink_after_s)
        self.shrink_first_s = min(float(shrink_first_s), self.shrink_after_s)
        self.max_ppm = max_ppm
        self.quality = quality
        cap = 1 << 15  # 0.68 s at 48 kHz: far above the set points, bounded memory
        while cap < 16 * self.blocksize:
            cap <<= 1
        self.rx = Ring(cap)
        self.tx = Ring(cap)
        self._streams: tuple[Any, ...] = ()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._faults: deque[tuple[str, str]] = deque(maxlen=256)
        self._lock = threading.Lock()  # guards stream open/close (supervisor vs stop)
        # callback counters (each written by its callback thread only)
        self.callbacks = 0
        self.out_callbacks = 0
        self.callback_failures = 0
        self.cb_flags = 0
        # callbacks that came with a PortAudio status flag: the platform's own xruns
        self.in_xruns = 0
        self.out_xruns = 0
        self._primed = False
        self._tx_primed = False
        self._rx_reset = False
        self._wake: threading.Event | None = None
        self._tx_dry_at: float | None = None   # when the tx ring ran dry (monotonic s)
        self.engine_rate = 0
        self.block = 0

    def attach_clock(self, wake: threading.Event, *, keep_ring: bool = False) -> None:
        """Let this card clock the engine: every capture callback sets ``wake`` and the
        engine ticks whenever :meth:`ready` says a block can be read.

        The receive ring's set point drops to :data:`CLOCK_RX_SETPOINT_MS` and its drift loop
        is off (the engine follows this card's crystal exactly); the transmit ring keeps its
        set point, for the playback stream's own bursts. On a running port the receive side
        primes again at the new set point (dropping what the ring held beyond it), unless
        ``keep_ring``: the clock moves here while audio flows (``engine.clock: floor``, the
        card of a talker who just took the floor), so what the ring holds is that talker's
        speech. It stays, and the engine reads it out in back-to-back ticks: the delay it
        held moves, unchanged, into the listeners' transmit rings, which level it out in
        their next pause (:meth:`retime`).
        """
        self._wake = wake
        self.rx_setpoint = max(0, int(round(CLOCK_RX_SETPOINT_MS * self.rate_hz / 1000)))
        if self.engine_rate:
            self._set_latency()
            if keep_ring:
                self._rs_in.set_correction_ppm(0.0)   # the engine runs on this crystal now
                self._rx_level.cushion = self.rx_setpoint
                self._rx_hold = 0
            else:
                self._rx_reset = True

    def detach_clock(self) -> None:
        """The engine no longer ticks on this card (its clock moved to another card): the
        receive ring takes its configured cushion again. It holds next to nothing now, so it
        primes again as at a start, keeping what it holds: the engine reads zeros from it
        until it has gained its cushion and a burst allowance (10-20 ms), then it levels.
        The engine moves its clock away only from a card whose user is not talking, so that
        hold is silence; levelling up in a pause instead left the ring short for the second
        or so the leveller measures: 5 receive underruns a move in a 10-minute bench run.
        :meth:`retime`, which the engine calls next, gives the drift loop its offset against
        the new clock. Engine thread, between ticks."""
        self._wake = None
        self.rx_setpoint = self._rx_base
        if self.engine_rate:
            self._rx_level.cushion = self.rx_setpoint
            self._dc_in.reset()     # no offset against itself: retime shifts it from zero
            self._primed = False
            self._rx_hold = 0
            self._set_latency()

    @property
    def capture_offset_ppm(self) -> float:
        """How much faster this card's capture runs than the engine's clock, ppm, as its
        receive drift loop has learned it (0 on the card that clocks the engine)."""
        if self._wake is not None or not self.engine_rate:
            return 0.0
        # the loop's correction makes the resampler produce less from a fast card
        return -self._dc_in.rate_ppm

    def _set_latency(self) -> None:
        """Receive-side delay (resampler plus the receive ring's average fill: its held set
        point once levelled; nothing on a clock card), engine samples."""
        ring = self.rx_setpoint if self._wake is not None else self._dc_in.setpoint
        self.latency_samples = int(round(
            self._rs_in.delay_samples + ring * self.engine_rate / self.rate_hz))

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, engine_rate: int, block: int) -> None:
        """Open the devices and start the supervisor. Raises ``sd.PortAudioError`` when the
        devices cannot be opened at all (later losses are handled by the supervisor)."""
        self.engine_rate = int(engine_rate)
        self.block = int(block)
        self._rs_in = StreamResampler(self.rate_hz, self.engine_rate, 1, quality=self.quality)
        self._rs_out = StreamResampler(self.engine_rate, self.rate_hz, 1, quality=self.quality)
        period_dev = max(1, int(round(block * self.rate_hz / engine_rate)))
        # the set points are the levelled rings' averages (Leveller), set when measured
        self._dc_in, self._dc_out = (
            DriftController(setpoint, self.rate_hz, self.max_ppm, period_samples=period_dev,
                            time_constant_s=DRIFT_TIME_CONSTANT_S)
            for setpoint in (self.rx_setpoint, self.tx_setpoint))
        self._burst = PRIME_BURST_CALLBACKS * self.blocksize
        # device samples pulled from the rx ring per resampler call (one engine block's worth)
        self._pull = int(math.ceil(block * self.rate_hz / engine_rate))
        self._pull_buf = np.zeros(self._pull, np.float32)
        self._reprime_after_s = REPRIME_AFTER_BLOCKS * block / engine_rate
        self._stalled_after_s = STALL_BLOCKS * block / engine_rate
        self._tx_written_at = 0.0    # monotonic s of the last write
        self._fifo = Ring(max(1024, 8 * block))   # engine-rate output FIFO (engine thread only)
        self._set_latency()
        # trimming compares the floor of a ring's fill (PulseAudio's bursts only lift the
        # fill above it) with the set point plus this margin, device samples
        self._trim_margin = int(round(TRIM_MARGIN_MS * self.rate_hz / 1000))
        ticks = max(1, int(round(FLOOR_WINDOW_MS * engine_rate / 1000 / block)))
        self._rx_floor = FloorTracker(ticks)
        self._tx_floor = FloorTracker(ticks)
        self._rx_quiet = self._tx_quiet = 0      # consecutive silent blocks
        def ticks_in(ms: float) -> int:
            return max(1, int(round(ms * engine_rate / 1000 / block)))

        phases = (ticks_in(LEVEL_SKIP_MS), ticks_in(LEVEL_MEASURE_MS), ticks_in(LEVEL_AVERAGE_MS))
        # a level ring averages its cushion plus about half a burst and half an engine block;
        # twice the priming allowance and a block is beyond anything measured undisturbed
        spread = 2 * self._burst + 2 * period_dev
        self._rx_level = Leveller(self.rx_setpoint, *phases, spread=spread)
        self._tx_level = Leveller(self.tx_setpoint, *phases, spread=spread)
        self._trim_dev = period_dev   # device samples one trimmed engine block takes off
        self._move_wait = ticks_in(MOVE_WAIT_MS)   # engine ticks a ring move waits for a pause
        self._cushion_max = int(CUSHION_MAX_MS * self.rate_hz / 1000)   # device samples
        self._tx_topup = False        # a dry transmit ring's refill is waiting for a pause
        self._rx_hold = 0                        # device samples to let the rx ring gain
        # cushion give-back: engine ticks since each ring last ran short (what is left to
        # shed is the leveller's)
        self._shrink_ticks = max(1, int(round(self.shrink_after_s * engine_rate / block)))
        self._shrink_first = max(1, int(round(self.shrink_first_s * engine_rate / block)))
        self._rx_calm = self._tx_calm = 0
        # what is a pause on each path: near its own noise floor, never below the fixed
        # level (brug.gateway.pauses)
        self._rx_pause = PauseLevel(TRIM_SILENCE_DBFS, ticks_in(1000 * FLOOR_WINDOW_S))
        self._tx_pause = PauseLevel(TRIM_SILENCE_DBFS, ticks_in(1000 * FLOOR_WINDOW_S))
        self.stats.extra.setdefault("rx_trimmed", 0)
        self.stats.extra.setdefault("tx_trimmed", 0)
        self.stats.extra.setdefault("tx_stepped", 0)
        self._tx_lacked = 0     # the tx ring's underrun samples already accounted for
        self._primed = False
        self._tx_primed = False
        self._rx_reset = False
        self._stopping.clear()
        self._open()
        self._supervisor = threading.Thread(target=self._supervise, name=f"port-{self.name}",
                                            daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        """Stop the supervisor and close the stream. Idempotent."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None
        self._close()

    # -- real-time callbacks --------------------------------------------------------------
    def _in_callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio capture thread: copy the device into the rx ring only; no allocation,
        logging or raising."""
        try:
            self.callbacks += 1
            if status:
                self.cb_flags |= status._flags
                self.in_xruns += 1
            self.rx.write(indata[:, self.channel])
            if self._wake is not None:
                self._wake.set()
        except Exception:  # noqa: BLE001 - a raise would silently stop the stream
            self.callback_failures += 1

    def _out_callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio playback thread: fill the device from the tx ring (zeros on underrun)."""
        try:
            self.out_callbacks += 1
            if status:
                self.cb_flags |= status._flags
                self.out_xruns += 1
            if self.channels > 1:
                outdata.fill(0)
            self.tx.read_into(outdata[:, self.channel])
        except Exception:  # noqa: BLE001 - a raise would silently stop the stream
            self.callback_failures += 1
            try:
                outdata.fill(0)
            except Exception:  # noqa: BLE001
                pass

    # -- engine side ----------------------------------------------------------------------
    def ready(self) -> bool:
        """Can :meth:`read` deliver a whole block from the device now (engine thread)?

        Before the port is primed (after a start or a reopen) that needs the level the ring
        starts from (:meth:`_rx_prime_level`); afterwards one resampler call's worth of
        capture, or a full FIFO.
        """
        if self._rx_reset or not self._primed:
            return not self._rx_reset and self.rx.fill >= self._rx_prime_level()
        return self._fifo.fill >= self.block or self.rx.fill >= self._pull

    def _rx_prime_level(self) -> int:
        """Fill the receive ring starts from, device samples: one resampler call above the
        cushion, plus a burst allowance unless this card clocks the engine (the engine then
        reads as soon as a block has arrived)."""
        return self.rx_setpoint + self._pull + (0 if self._wake is not None else self._burst)

    def read(self, out: Block) -> None:
        """Fill ``out`` with engine-rate audio (zeros and an underrun count when the device
        has not delivered). Engine thread; never blocks."""
        n = len(out)
        if self._rx_reset:
            self._rx_reset = False
            self._primed = False
            self.rx.clear()
            self._fifo.clear()
            self._dc_in.reset()
            self._rx_floor.reset()
        if not self._primed:
            prime = self._rx_prime_level()
            if self.rx.fill < prime:
                out[:] = 0.0
                return
            self._primed = True
            self.rx.discard(self.rx.fill - prime)
            self._rx_level.cushion = self.rx_setpoint   # (a clock card holds none)
            self._rx_level.restart()
            self._rx_hold = 0
            self._rx_calm = 0
        if self._rx_hold > 0:     # levelling up: leave the capture in the ring for a tick
            self._rx_hold -= self._pull
            out[:] = 0.0
            self._sync_stats()
            return
        excess = self.rx.fill - self.rx_setpoint - self._max_excess
        if excess > 0:  # the engine fell behind (a stall): drop stale audio, keep latency
            self.rx.discard(excess + self._max_excess // 2)
            self.stats.overruns += 1
        clock = self._wake is not None   # the card that clocks the engine holds no cushion
        self._fill_fifo(n)
        short = self._fifo.fill < n
        if short:
            self.stats.underruns += 1
            self._rx_calm = 0
            if not clock and self._rx_level.done:    # the bursts outgrew the cushion
                lack = (n - self._fifo.fill) * self.rate_hz // self.engine_rate
                self.rx_setpoint = self._grow("rx", self._rx_level, max(lack, self._pull))
        self._fifo.read_into(out)
        floor = self._rx_floor.update(self.rx.fill)
        if not clock and not self._rx_level.done:
            self._rx_quiet = self._rx_quiet + 1 if self._rx_pause.observe(out) else 0
            level = self._rx_level
            if not level.pending:
                level.pending = self._level(level, self._dc_in, self.rx.fill)
                level.waited = 0
            if level.pending:
                self._rx_move(level, short)
            if level.done:
                self._set_latency()
            self._sync_stats()
            return
        for _ in range(TRIM_MAX_BLOCKS):
            # behind after a stall: drop silence (inaudible) until the ring is back
            self._rx_quiet = self._rx_quiet + 1 if self._rx_pause.observe(out) else 0
            if not self._rx_quiet or floor <= self.rx_setpoint + self._trim_margin or \
                    self._rx_quiet <= TRIM_AFTER_SILENT:
                break
            self._fill_fifo(n)
            if self._fifo.fill < n:
                break
            self._fifo.read_into(out)
            self.stats.extra["rx_trimmed"] += n
            # (the trim sheds as well)
            self._rx_level.shed = max(0, self._rx_level.shed - self._trim_dev)
            # the ring sits lower for good now: the loop must not pull it back up
            self._dc_in.setpoint = max(self.rx_setpoint, self._dc_in.setpoint - self._trim_dev)
            floor = self._rx_floor.update(self.rx.fill)
        self._rx_calm += 1
        if self._rx_calm >= self._calm_needed(self._rx_level):
            self._rx_calm = 0
            self.rx_setpoint = self._give_back("rx", self._rx_level, self._rx_base, self._pull)
        shed = self._rx_level.shed
        if shed and self._rx_quiet > TRIM_AFTER_SILENT:
            # a cushion given back leaves the ring in a pause (silence dropped, inaudible),
            # the whole step, as levelling on the lower cushion would have moved it
            k = min(shed, self._pull, self.rx.fill - self.rx_setpoint)
            if k > 0 and self._rx_drop_silent(k):
                self._dc_in.setpoint -= k
                self._rx_level.shed -= k
                self._set_latency()
        if not clock:
            self._rs_in.set_correction_ppm(self._dc_in.update(self.rx.fill))
        self._sync_stats()

    def _rx_move(self, level: Leveller, short: bool) -> None:
        """Make the receive ring's pending levelling move in a pause (:data:`MOVE_WAIT_MS`):
        a drop takes up to one pull of silent capture off the ring's head per tick (capture
        that is not silent goes on, in order); an addition holds the ring back while it gains
        (zeros out, after the pause's silent blocks), at once if the ring ran ``short`` this
        tick (the gaps are there already). A move that waited its limit is made at once.
        Engine thread; no allocation."""
        level.waited += 1
        due = level.waited >= self._move_wait
        pause = self._rx_quiet > TRIM_AFTER_SILENT
        if level.pending < 0:
            if pause or due or short:
                self._rx_hold = -level.pending
                self._rx_floor.shift(-level.pending)
                level.pending = 0
            return
        if due:
            k = min(level.pending, self.rx.fill)
            self.rx.discard(k)
            self._rx_floor.shift(-k)
            level.pending = 0
        elif pause:
            k = min(level.pending, self._pull, self.rx.fill)
            if k > 0 and self._rx_drop_silent(k):
                level.pending -= k

    def _rx_drop_silent(self, k: int) -> bool:
        """Take ``k`` (at most one pull) device samples off the receive ring's head: dropped
        if they are silent (the pause goes on; the floor tracker follows), else resampled on,
        in order (speech starts there). Returns whether they were dropped. Engine thread; no
        allocation."""
        part = self._pull_buf[:k]
        self.rx.read_into(part)
        if self._rx_pause.quiet(part):
            self._rx_floor.shift(-k)
            return True
        self._to_fifo(part)
        return False

    def _grow(self, ring: str, level: Leveller, by: int) -> int:
        """A ring ran short by ``by`` device samples: its leveller's cushion grows by that
        much, up to :data:`CUSHION_MAX_MS`, and it levels again at once; returns the new
        cushion. A change is reported as a fault (engine thread, rare: allocates one
        message)."""
        cushion = level.cushion
        level.cushion = min(cushion + by, self._cushion_max)
        if level.cushion > cushion:
            level.growths += 1
            self._faults.append(("cushion_raised", f"{self.name}: {ring} cushion "
                                 f"{1000 * level.cushion / self.rate_hz:.1f} ms after "
                                 "running short"))
        level.restart(skip=False)
        return level.cushion

    def _calm_needed(self, level: Leveller) -> int:
        """Engine ticks a ring must run without running short before a grown cushion gives
        back a step: :attr:`shrink_first_s` after its first growth, doubled with each further
        one, up to :attr:`shrink_after_s`. Engine thread; integer arithmetic."""
        doublings = min(max(0, level.growths - 1), 16)
        return min(self._shrink_ticks, self._shrink_first << doublings)

    def _give_back(self, ring: str, level: Leveller, base: int, step: int) -> int:
        """A ring ran calm for :meth:`_calm_needed` ticks: a cushion grown above ``base`` is
        lowered by ``step`` device samples (not below ``base``), which the leveller is to
        :attr:`~Leveller.shed` from the ring in pauses; returns the cushion. A change is
        reported as the fault ``cushion_lowered`` (engine thread, rare: allocates one
        message)."""
        by = min(step, level.cushion - base)
        if by > 0:
            level.cushion -= by
            level.shed += by
            calm_s = self._calm_needed(level) * self.block / self.engine_rate
            self._faults.append(("cushion_lowered", f"{self.name}: {ring} cushion "
                                 f"{1000 * level.cushion / self.rate_hz:.1f} ms after "
                                 f"{calm_s:g} s without running short"))
        return level.cushion

    @staticmethod
    def _level(level: Leveller, loop: DriftController, fill: int) -> int:
        """Feed one fill to a ring's leveller; return the move the caller is to make on the
        ring (samples: positive drop, negative add; the floor tracker follows as the move is
        made). Once levelled, the drift loop takes the measured average as its set point."""
        step = level.update(fill)
        if level.done:
            loop.setpoint = level.setpoint
            loop.reset(settled=True, keep_rate=True)
        return step

    def retime(self, shift_ppm: float | None = None) -> None:
        """Level both rings again: the engine's ticks now come in another pattern (on the
        monotonic clock, or in the bursts of a clock card's capture). The rings' clock
        offsets are now against another clock: with ``shift_ppm`` (the new clock runs that
        much faster than the old) the drift loops go on from their offsets, the receive
        loop's correction up by that shift and the transmit loop's down; without it they
        learn them again (which lets a ring stray by a few ms, :class:`DriftController`).
        Engine thread."""
        self._rx_level.restart()
        self._tx_level.restart()
        self._tx_topup = False
        if shift_ppm is None:
            self._dc_in.reset()
            self._dc_out.reset()
        else:
            # a faster engine clock: this card's capture is slower against it (the receive
            # resampler must produce more), its playback is slower too (produce less)
            self._dc_in.shift_rate(shift_ppm)
            self._dc_out.shift_rate(-shift_ppm)

    def _fill_fifo(self, n: int) -> None:
        while self._fifo.fill < n and self.rx.fill >= self._pull:
            self.rx.read_into(self._pull_buf)
            self._to_fifo(self._pull_buf)

    def _to_fifo(self, x: Block) -> None:
        """Resample device samples ``x`` (read from the rx ring) into the output FIFO."""
        y = self._rs_in.process(x)
        if self._fifo.write(y) < len(y):
            self.stats.overruns += 1

    def write(self, block: Block) -> None:
        """Resample one engine block to the device rate and queue it for playback."""
        y = self._rs_out.process(block)
        if not self._tx_primed:  # start at the set point; zeros played before do not count
            self._tx_primed = True
            self._tx_dry_at = None
            self.tx.write_zeros(self.tx_setpoint + self._burst - self.tx.fill)
            self.tx.reset_counters()  # (a counter race with the callback only loses a count)
            self._tx_lacked = 0
            self._tx_level.restart()
            self._tx_topup = False
            self._tx_floor.reset()
            self._tx_calm = 0
        elif self.tx.fill == 0 and self._tx_dry_at is None:
            # ran dry: the device has been playing zeros. If the engine stalled it catches up
            # at once, and what it writes then refills the ring; refilling now too would add
            # the catch-up on top of the cushion (latency for the rest of the over). If it did
            # not (the playback stream took a burst larger than the cushion, or the engine gave
            # up its backlog) the cushion is restored at the next write that is not part of a
            # catch-up, rather than glitch on every burst until the drift loop catches up.
            self._tx_dry_at = time.monotonic()
            self.stats.extra["tx_dry"] = self.stats.extra.get("tx_dry", 0) + 1
        elif self._tx_dry_at is not None and \
                time.monotonic() - self._tx_dry_at >= self._reprime_after_s:
            self._tx_dry_at = None
            if self.tx.fill < self.tx_setpoint // 2 and not self._tx_topup:
                # the bursts outgrew the cushion: grow it, refill the ring in the next pause
                # (zeros now would be a gap in the speech; until then a burst the ring cannot
                # cover plays what it lacks as zeros, which is the delay step the refill makes)
                # and level again after that
                self.stats.extra["tx_reprimes"] = self.stats.extra.get("tx_reprimes", 0) + 1
                self.tx_setpoint = self._grow("tx", self._tx_level, self.blocksize)
                self._tx_topup = True
                self._tx_calm = 0
        fill = self.tx.fill                  # before this write: the ring at its lowest
        floor = self._tx_floor.update(fill)
        lacked = self.tx.underrun_samples - self._tx_lacked
        self._tx_lacked += lacked
        now = time.monotonic()
        stalled = now - self._tx_written_at > self._stalled_after_s
        self._tx_written_at = now
        if lacked > 0 and self._tx_level.done and not self._tx_topup and not stalled:
            # the device played zeros for what the ring lacked: the stream is that much later
            # from here on, and the ring's fill that much higher. Keep that step: a drift loop
            # that pulled the fill back to its old average would run the ring dry again at the
            # next burst of that size. The step is cushion now, given back like a grown one
            # (a callback at a time after a calm spell, in pauses)
            level = self._tx_level
            step = max(0, min(lacked, self._cushion_max - level.cushion))
            level.cushion += step
            self.tx_setpoint = level.cushion
            self._dc_out.setpoint += step
            self._tx_calm = 0
            self.stats.extra["tx_stepped"] += step
        quiet = self._tx_pause.observe(y)
        # a move waits for a pause. A levelling up is made at once when the ring has run dry
        # again (it fills a gap that is there already); the refill after running dry is not:
        # while the stream keeps taking more than it is given, zeros written now are taken at
        # once as well, and the device's own zeros already add the delay the ring lacked
        pause = quiet and self._tx_quiet >= TRIM_AFTER_SILENT
        dry = fill == 0
        level = self._tx_level
        if not level.done:
            self._tx_quiet = self._tx_quiet + 1 if quiet else 0
            if self._tx_topup:
                level.waited += 1
                if pause or level.waited >= self._move_wait:
                    self.tx.write_zeros(self.tx_setpoint + self._burst - fill)
                    self._tx_topup = False
                    self._tx_floor.reset()
                    level.waited = 0
                self.tx.write(y)
                return
            if not level.pending:
                level.pending = self._level(level, self._dc_out, fill)
                level.waited = 0
            if level.pending:
                level.waited += 1
                if pause or (dry and level.pending < 0) or level.waited >= self._move_wait:
                    if level.pending < 0:   # levelling up: zeros before a silent block
                        self.tx.write_zeros(-level.pending)
                        self._tx_floor.shift(-level.pending)
                        level.pending = 0
                    else:                   # levelling down: leave silence out
                        k = min(level.pending, len(y))
                        level.pending -= k
                        self._tx_floor.shift(-k)
                        y = y[k:]
            self.tx.write(y)
            return
        self._tx_calm += 1
        if self._tx_calm >= self._calm_needed(self._tx_level):
            self._tx_calm = 0
            self.tx_setpoint = self._give_back("tx", self._tx_level, self._tx_base,
                                               self.blocksize)
        if self.tx.fill > self.tx_setpoint + self._max_excess:
            # the device fell behind (server starved): drop this block rather than let the
            # playback latency grow; counted as an overrun
            self.stats.overruns += 1
        elif quiet and self._tx_quiet >= TRIM_AFTER_SILENT and \
                floor > self.tx_setpoint + self._trim_margin:
            self.stats.extra["tx_trimmed"] += len(y)   # latency left by a stall: drop silence
            self._tx_level.shed = max(0, self._tx_level.shed - len(y))
            self._dc_out.setpoint = max(self.tx_setpoint, self._dc_out.setpoint - len(y))
            # the ring now holds a block less than it would have: count that at once, so the
            # floor does not trim past the set point before the next update sees it
            self._tx_floor.update(self.tx.fill - len(y))
        elif quiet and self._tx_quiet >= TRIM_AFTER_SILENT and self._tx_level.shed:
            # a cushion given back: leave part of a silent block out (inaudible)
            k = max(0, min(self._tx_level.shed, len(y), fill - self.tx_setpoint))
            self._tx_level.shed -= k
            self._dc_out.setpoint -= k
            self._tx_floor.shift(-k)
            self.tx.write(y[k:])
        else:
            self.tx.write(y)
        self._tx_quiet = self._tx_quiet + 1 if quiet else 0
        self._rs_out.set_correction_ppm(self._dc_out.update(fill))

    def _sync_stats(self) -> None:
        s = self.stats
        s.status_flags = self.cb_flags
        s.extra.update(device_overruns=self.rx.overruns, device_underruns=self.tx.underruns,
                       callback_failures=self.callback_failures, in_xruns=self.in_xruns,
                       out_xruns=self.out_xruns, rx_fill=self.rx.fill,
                       tx_fill=self.tx.fill, rx_floor=self._rx_floor.floor,
                       tx_floor=self._tx_floor.floor, rx_hold=self._dc_in.setpoint,
                       tx_hold=self._dc_out.setpoint, rx_levelled=self._rx_level.levellings,
                       tx_levelled=self._tx_level.levellings, rx_cushion=self.rx_setpoint,
                       tx_cushion=self.tx_setpoint, rx_ppm=round(self._dc_in.ppm, 1),
                       tx_ppm=round(self._dc_out.ppm, 1),
                       rx_pause_dbfs=round(10 * math.log10(self._rx_pause.threshold_ms2), 1),
                       tx_pause_dbfs=round(10 * math.log10(self._tx_pause.threshold_ms2), 1))

    def poll_faults(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while self._faults:
            out.append(self._faults.popleft())
        return out

    # -- device handling ------------------------------------------------------------------
    def _resolve(self, dev: str | int, kind: str) -> int:
        if isinstance(dev, int):
            return dev
        from brug.gateway.devices import find_device

        return find_device(dev, kind)

    def _open(self) -> None:
        # Capture and playback are two streams, not one duplex stream: PortAudio's ALSA duplex
        # path polls both devices together and gives up on the stream (it stops) when the
        # PulseAudio plugin reports an error on one of them; apart, an xrun only costs a block.
        import sounddevice as sd

        with self._lock:
            inp = self._resolve(self.input_device, "input")
            outp = self._resolve(self.output_device, "output")
            common = dict(samplerate=self.rate_hz, blocksize=self.blocksize,
                          channels=self.channels, dtype="float32", latency=self.latency)
            opened: list[Any] = []
            try:
                opened.append(sd.InputStream(device=inp, callback=self._in_callback, **common))
                opened.append(sd.OutputStream(device=outp, callback=self._out_callback,
                                              **common))
                for st in opened:
                    st.start()
            except Exception:
                for st in opened:         # never leave a half-opened stream behind
                    try:
                        st.close()
                    except Exception:  # noqa: BLE001
                        pass
                raise
            self._streams = tuple(opened)

    def _close(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, ()
        for stream in streams:
            try:
                stream.abort()
            except Exception:  # noqa: BLE001 - the device may already be gone
                pass
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass

    def _progress(self) -> tuple[int, int]:
        return self.callbacks, self.out_callbacks

    def _healthy(self, last_change: tuple[float, float], failures: int) -> str | None:
        """Why the streams are unhealthy, or ``None``; ``last_change`` holds when each stream's
        callback last made progress (monotonic s)."""
        streams = self._streams
        if not streams:
            return "no stream"
        for name, stream in zip(("capture", "playback"), streams):
            try:
                active = stream.active
            except Exception as exc:  # noqa: BLE001
                return f"{name} stream error: {exc}"
            if not active:
                return f"{name} stream stopped"
        if self.callback_failures != failures:
            return f"callback failed {self.callback_failures - failures} times"
        now = time.monotonic()
        for name, changed in zip(("capture", "playback"), last_change):
            if now - changed > STALL_S:
                return f"no {name} callback for {STALL_S:.1f} s"
        return None

    def _supervise(self) -> None:
        last_calls = self._progress()
        now = time.monotonic()
        last_change = (now, now)
        failures = self.callback_failures
        win_t, win_calls, slow = now, last_calls, 0
        while not self._stopping.wait(0.1):
            now = time.monotonic()
            calls = self._progress()
            last_change = (now if calls[0] != last_calls[0] else last_change[0],
                           now if calls[1] != last_calls[1] else last_change[1])
            last_calls = calls
            problem = self._healthy(last_change, failures)
            failures = self.callback_failures
            if problem is None and now - win_t >= SLOW_WINDOW_S:
                # a stream that runs but slower than real time (seen after xruns under heavy
                # load) starves the engine and fills the tx ring: reopen it too
                pace = min(c - w for c, w in zip(calls, win_calls)) * self.blocksize / (
                    self.rate_hz * (now - win_t))
                slow = slow + 1 if pace < SLOW_PACE else 0
                if slow >= 2:
                    problem = f"running at {100 * pace:.0f} % of real time"
                win_t, win_calls = now, calls
            if problem is None:
                continue
            slow = 0
            self._faults.append(("device_lost", f"{self.name}: {problem}"))
            self._close()
            attempt = 0
            while not self._stopping.is_set():
                delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                if self._stopping.wait(delay):
                    return
                attempt += 1
                # the callback (tx consumer) is gone: drop stale playback and re-prime; the
                # engine drops stale capture on its next read (it is the rx consumer)
                self.tx.clear()
                self._tx_primed = False
                self._rx_reset = True
                try:
                    self._open()
                except Exception as exc:  # noqa: BLE001 - keep trying with back-off
                    self.stats.extra["last_open_error"] = str(exc)
                    continue
                self.stats.reopens += 1
                self._faults.append(("reopened", f"{self.name}: after {attempt} attempt(s)"))
                last_calls = self._progress()
                now = time.monotonic()
                last_change = (now, now)
                win_t, win_calls = now, last_calls
                failures = self.callback_failures
                break
