"""Realtime replay: the scenario through virtual sound cards and real PortAudio streams.

For every port the bench creates one virtual card (``brug soundcards``), named after the port
with dots turned into dashes (``be_astrid-BE-TAC3``). The gateway's engine runs on its real-time
clock with a :class:`~brug.gateway.ports.soundcard.SoundCardPort` on the card's gateway side;
the bench plays the terminal side in a process of its own (as real terminals are outside the
gateway, and so that its ten streams and WAV writers do not compete with the gateway for one
interpreter lock): per card one PortAudio stream plays what the terminal receives over the air
into ``air_rx`` and one records what the gateway makes it transmit from ``air_tx``.

All terminal streams share one time base: scenario second 0 is a monotonic instant ``T0``
(``CLOCK_MONOTONIC`` is the same in both processes) a moment after the streams run, and each
stream places its samples by PortAudio's DAC/ADC timestamps, so a transmission played on one
card and recorded on another is compared on the same clock. A stream that loses time (an
underrun on the terminal's own side) is put back on the clock when its timestamps disagree with
its sample count by more than :data:`SLIP_S`; ``terminal_slips`` counts that. The latency
measured is therefore end to end: PulseAudio in, gateway, PulseAudio out.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from brug.bench.metrics import measure, run_figures, scenario_info, summarize
from brug.bench.plan import ReplayPlan
from brug.bench.replay import (
    EventLog,
    Progress,
    ResourceSampler,
    cor_schedule,
    port_segments,
    read_events,
    write_json,
)
from brug.bench.soak import SoakLimits
from brug.bench.squelch import ScriptedSquelch
from brug.gateway.engine import Engine
from brug.gateway.signalling import NoPtt

Array = npt.NDArray[np.float32]
CARD_RATE_HZ = 48000
START_DELAY_S = 0.8
TAIL_S = 2.0
#: A terminal stream whose PortAudio timestamp and sample count disagree by more than this is
#: put back on the scenario clock (it lost or gained time on the terminal side), s.
SLIP_S = 0.01
#: Every this many callbacks a terminal stream notes its sample count and timestamp.
STAMP_EVERY = 5
#: The terminal process must be ready (imports, audio prepared, devices found) within this, s.
TERMINAL_START_S = 60.0


def card_name(port: str) -> str:
    """Virtual card name of a port (``be_astrid.BE-TAC3`` -> ``be_astrid-BE-TAC3``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", port)[:32]


class Terminal:
    """The terminal side of one card: plays scripted receive audio, records the transmit side.

    The PortAudio callback only copies: segments into ``outdata`` and ``indata`` into a queue
    that a writer thread drains into a WAV file.
    """

    def __init__(self, name: str, air_rx: str | None, air_tx: str,
                 segments: list[tuple[int, Array]],
                 rate_hz: int, wav: Path, slip_s: float = SLIP_S) -> None:
        self.name = name
        #: timestamps and sample count may disagree this much before the stream is put back
        #: on the clock, s (``inf``: never; the sample count alone places the audio)
        self.slip_s = slip_s
        self.air_rx, self.air_tx = air_rx, air_tx
        self.rate = rate_hz
        self._off = [s[0] for s in segments]
        self._end = [s[0] + len(s[1]) for s in segments]
        self._x = [s[1] for s in segments]
        self.t0 = 0.0                      # monotonic time of scenario second 0
        self.dac0: float | None = None     # time of the first output sample (monotonic)
        self._pos = 0                      # output samples written so far
        self._q: queue.SimpleQueue[Array | None] = queue.SimpleQueue()
        self.wav = wav
        self.flags = 0
        self._streams: tuple[Any, ...] = ()
        self._writer: threading.Thread | None = None
        self.recorded = 0                  # input samples queued so far (capture thread)
        #: ``(recorded_samples, monotonic_adc_time)``: where the recording was put back on the
        #: scenario clock (the first entry is its start)
        self.anchors: list[tuple[int, float]] = []
        self.slips = 0
        #: every ``STAMP_EVERY``-th callback's ``(samples so far, monotonic time)`` of the
        #: capture and the playback stream: the two streams' clocks, fitted by :func:`clock_fit`
        self.stamps_in: list[tuple[int, float]] = []
        self.stamps_out: list[tuple[int, float]] = []
        self._calls_in = self._calls_out = 0

    @staticmethod
    def _mono_time(time_info: Any, attr: str) -> float:
        """A PortAudio buffer time (``attr``) mapped onto ``time.monotonic()``."""
        now = time.monotonic()
        t = getattr(time_info, attr, 0.0)
        cur = getattr(time_info, "currentTime", 0.0)
        return now + (t - cur if t and cur else 0.0)

    def _in_callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.flags |= int(status._flags)
        adc = self._mono_time(time_info, "inputBufferAdcTime")
        if not self.anchors:
            self.anchors.append((0, adc))
        else:
            n0, a0 = self.anchors[-1]
            if abs(a0 + (self.recorded - n0) / self.rate - adc) > self.slip_s:
                self.anchors.append((self.recorded, adc))
                self.slips += 1
        if self._calls_in % STAMP_EVERY == 0:
            self.stamps_in.append((self.recorded, adc))
        self._calls_in += 1
        self.recorded += frames
        self._q.put(indata[:, 0].copy())

    def _out_callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.flags |= int(status._flags)
        dac = self._mono_time(time_info, "outputBufferDacTime")
        if self.dac0 is None:
            self.dac0 = dac
        elif abs(self.dac0 + self._pos / self.rate - dac) > self.slip_s:
            self.dac0 = dac - self._pos / self.rate      # lost time: back on the clock
            self.slips += 1
        if self._calls_out % STAMP_EVERY == 0:
            self.stamps_out.append((self._pos, dac))
        self._calls_out += 1
        out = outdata[:, 0]
        out.fill(0.0)
        # scenario sample index of this buffer's first output sample
        pos = int(round((self.dac0 - self.t0) * self.rate)) + self._pos
        self._pos += frames
        end = pos + frames
        for j in range(len(self._off)):
            a, b = max(pos, self._off[j]), min(end, self._end[j])
            if b > a:
                out[a - pos:b - pos] += self._x[j][a - self._off[j]:b - self._off[j]]

    def _write(self) -> None:
        with sf.SoundFile(str(self.wav), "w", samplerate=self.rate, channels=1,
                          subtype="FLOAT") as f:
            while True:
                x = self._q.get()
                if x is None:
                    break
                f.write(x)

    def start(self, t0: float) -> None:
        import sounddevice as sd

        from brug.gateway.devices import find_device

        self.t0 = t0
        self.wav.parent.mkdir(parents=True, exist_ok=True)
        self._writer = threading.Thread(target=self._write, name=f"rec-{self.name}",
                                        daemon=True)
        self._writer.start()
        # two streams, not one duplex stream: PortAudio's ALSA duplex path stops the stream
        # when the PulseAudio plugin reports an error on either direction
        common: dict[str, Any] = dict(samplerate=self.rate, channels=1, dtype="float32",
                                      blocksize=int(self.rate * 0.02), latency=0.06)
        self._streams = (
            sd.InputStream(device=find_device(self.air_tx, "input"),
                           callback=self._in_callback, **common),)
        if self.air_rx is not None:    # (None: a recorder only)
            self._streams += (sd.OutputStream(device=find_device(self.air_rx, "output"),
                                              callback=self._out_callback, **common),)
        for st in self._streams:
            st.start()

    def stop(self) -> None:
        for st in self._streams:
            st.stop()
            st.close()
        self._streams = ()
        self._q.put(None)
        if self._writer is not None:
            self._writer.join(timeout=10)

    def result(self) -> dict[str, Any]:
        """What the parent needs to place the recording: its file, anchors, slips, status
        flags."""
        return {"wav": self.wav, "anchors": self.anchors, "slips": self.slips,
                "flags": self.flags, "stamps_in": self.stamps_in,
                "stamps_out": self.stamps_out}


def clock_fit(stamps: list[tuple[int, float]]) -> tuple[float, float]:
    """``(t0, seconds per sample)`` of a stream from its ``(samples, monotonic time)`` stamps,
    by least squares: each stamp jitters by a few ms (PulseAudio delivers in bursts), the fit
    over minutes does not, and its slope is the card's real rate (virtual cards differ by tens
    of ppm). Sample ``n`` was played or captured at ``t0 + n * slope``."""
    n = np.asarray([s[0] for s in stamps], np.float64)
    t = np.asarray([s[1] for s in stamps], np.float64)
    if len(n) < 2 or np.ptp(n) == 0:
        return (float(t[0]) if len(t) else 0.0), 1.0 / CARD_RATE_HZ
    slope, icpt = np.polyfit(n - n[0], t - t[0], 1)
    return float(t[0] + icpt - slope * n[0]), float(slope)


def aligned(wav: Path, anchors: list[tuple[int, float]], t0: float, rate: int,
            length: int) -> Array:
    """A terminal's recording placed on the scenario clock (sample 0 = scenario second 0):
    each stretch from one anchor ``(recorded_samples, adc_time)`` to the next goes where its
    ADC time says."""
    x, _ = sf.read(str(wav), dtype="float32")
    out = np.zeros(length, np.float32)
    if not anchors:
        return out
    ends = [n for n, _ in anchors[1:]] + [len(x)]
    for (n0, adc), n1 in zip(anchors, ends):
        dst = int(round((adc - t0) * rate))
        a, b = max(n0, n0 - dst), min(n1, len(x), n0 + length - dst)
        if b > a:
            out[a + dst - n0:b + dst - n0] = x[a:b]
    return out


Segments = dict[str, list[tuple[int, Array]]]


def _terminal_main(conn: Any, source: ReplayPlan | Segments,
                   cards: dict[str, tuple[str | None, str]],
                   raw: Path, slip_s: float = SLIP_S) -> None:
    """The terminal process: prepare every card's receive audio (a plan's, or ``source``'s
    segments per card at the card rate), then obey ``conn``: ``("start", t0)``, ``("stop",)``.
    Replies ``"ready"``, ``"started"`` and the terminals' :meth:`Terminal.result`;
    ``("error", text)`` if anything fails."""
    terms: list[Terminal] = []
    try:
        segs = port_segments(source, CARD_RATE_HZ) if isinstance(source, ReplayPlan) else source
        terms = [Terminal(name, air_rx, air_tx, segs.get(name, []), CARD_RATE_HZ,
                          raw / f"{name}.wav", slip_s)
                 for name, (air_rx, air_tx) in cards.items()]
        conn.send("ready")
        cmd = conn.recv()
        if cmd[0] == "start":
            for term in terms:
                term.start(cmd[1])
            conn.send("started")
            cmd = conn.recv()
        for term in terms:
            term.stop()
        conn.send({t.name: t.result() for t in terms})
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        for term in terms:
            try:
                term.stop()
            except Exception:  # noqa: BLE001
                pass
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class TerminalSide:
    """Every card's terminal side in a child process (spawned: it inherits the environment
    that reaches the virtual cards, not the parent's threads). ``cards``: name -> (device to
    play into or ``None`` for a recorder only, device to record); ``source``: a plan (each
    port plays its transmissions) or the segments ``(start sample, audio)`` each name plays;
    ``slip_s`` as for :class:`Terminal`."""

    def __init__(self, source: ReplayPlan | Segments,
                 cards: dict[str, tuple[str | None, str]],
                 raw: Path, slip_s: float = SLIP_S) -> None:
        raw.mkdir(parents=True, exist_ok=True)
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_terminal_main, args=(child, source, cards, raw, slip_s),
                                 name="brug-bench-terminals", daemon=True)
        self._proc.start()
        child.close()
        self._expect("ready", TERMINAL_START_S)

    def _reply(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            self.kill()
            raise RuntimeError(f"the bench's terminal process did not answer within "
                               f"{timeout:.0f} s")
        try:
            msg = self._conn.recv()
        except EOFError:
            raise RuntimeError("the bench's terminal process died") from None
        if isinstance(msg, tuple) and msg and msg[0] == "error":
            raise RuntimeError(f"the bench's terminal process failed: {msg[1]}")
        return msg

    def _expect(self, what: str, timeout: float) -> None:
        msg = self._reply(timeout)
        if msg != what:
            raise RuntimeError(f"the bench's terminal process said {msg!r}, not {what!r}")

    def start(self, t0: float) -> None:
        """Start every terminal's streams; ``t0`` is scenario second 0 (monotonic s)."""
        self._conn.send(("start", t0))
        self._expect("started", 30.0)

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stop the streams; per port :meth:`Terminal.result`."""
        self._conn.send(("stop",))
        res: dict[str, dict[str, Any]] = self._reply(30.0)
        self._proc.join(timeout=10)
        return res

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(timeout=5)


def open_cards(names: list[str], cards: Any = None) -> tuple[dict[str, Any], Any]:
    """The virtual cards ``names`` (name -> :class:`~brug.gateway.soundcards.CardNames`) on
    ``cards`` (the test fixture's handle with ``up``), else on the ``brug soundcards`` server,
    started if need be. Also returns the server the caller must stop at its end: one this call
    started (it stops by itself too if the caller is killed), else ``None``."""
    if cards is not None:
        return cards.up(*names), None
    from brug.gateway.soundcards import SoundCards, refresh_portaudio

    sc = SoundCards()
    own = None
    if not sc.running():
        sc.start()
        sc.stop_with_this_process()
        own = sc
    sc.apply_env()
    made = sc.up(names)
    refresh_portaudio()
    return dict(made), own


def replay_realtime(plan: ReplayPlan, out: Path, *, quality: bool = True,
                    progress: bool = True, cards: Any = None) -> dict[str, Any]:
    """Replay ``plan`` in real time through virtual sound cards; write the replay output.

    ``cards`` is a :class:`~brug.gateway.soundcards.SoundCards` (or the test fixture's
    handle with ``up``); by default the cards of ``brug soundcards``. A server this run had
    to start is stopped at its end (also if the run is killed); one that was already up stays.
    """
    from brug.gateway.ports.soundcard import SoundCardPort

    names, own_server = open_cards([card_name(p.name) for p in plan.ports], cards)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tx").mkdir(exist_ok=True)
    sc = plan.scenario
    cfg = plan.engine
    rate = cfg.rate_hz
    eng = Engine(cfg)
    log = EventLog(out / "events.jsonl", rate)
    eng.events.subscribe(log)
    squelches: dict[str, ScriptedSquelch] = {}
    for pp in plan.ports:
        cn = names[card_name(pp.name)]
        port = SoundCardPort(pp.name, cn.input, cn.output, rate_hz=CARD_RATE_HZ)
        sq = None
        if pp.scripted:
            sq = ScriptedSquelch(cor_schedule(plan, pp.name, rate), t0=1 << 62)
            squelches[pp.name] = sq
        eng.add_port(port, dataclasses.replace(pp.settings, kind="soundcard"), sq, NoPtt())
    if len(plan.patch_members) >= 2:
        eng.create_patch(plan.patch_name, plan.patch_members, mode=plan.mode,
                         priorities=dict(plan.priorities))
    tmp = out / "tx" / ".raw"
    terms = TerminalSide(plan, {pp.name: (names[card_name(pp.name)].air_rx,
                                          names[card_name(pp.name)].air_tx)
                                for pp in plan.ports}, tmp)
    stop = threading.Event()
    started = threading.Event()
    e0: list[float] = []

    def engine_thread() -> None:
        eng.start()
        e0.append(time.monotonic())
        started.set()
        eng.run_realtime(stop)

    th = threading.Thread(target=engine_thread, name="engine", daemon=True)
    res = ResourceSampler(every_s=1.0)
    total_s = sc.total_duration_s
    prog = Progress(total_s + TAIL_S, "realtime", progress)
    th.start()
    if not started.wait(15):
        terms.kill()
        raise RuntimeError("engine did not start within 15 s")
    t0 = time.monotonic() + START_DELAY_S
    # engine time of scenario second 0 (the engine ticks from e0 on its monotonic clock)
    t0_engine = int(round((t0 - e0[0]) * rate))
    for sq in squelches.values():
        sq.t0 = t0_engine
    results: dict[str, dict[str, Any]] = {}
    try:
        terms.start(t0)
        end = t0 + total_s + TAIL_S
        while time.monotonic() < end and th.is_alive():
            time.sleep(0.2)
            sim = max(0.0, time.monotonic() - t0)
            res.maybe(sim)
            prog.update(sim, f"late ticks {eng.late_ticks}")
        results = terms.stop()
    finally:
        terms.kill()
        stop.set()
        th.join(timeout=10)
        eng.stop()
        log.close()
        if own_server is not None:
            own_server.down()
    prog.done()
    res.maybe(total_s, force=True)
    port_stats = {n: eng.port_object(n).stats.as_dict() for n in eng.port_names}
    length = int(math.ceil((total_s + TAIL_S) * CARD_RATE_HZ))
    outputs = {}
    for name, r in results.items():
        y = aligned(r["wav"], r["anchors"], t0, CARD_RATE_HZ, length)
        sf.write(str(out / "tx" / f"{name}.wav"), y, CARD_RATE_HZ, subtype="PCM_16")
        r["wav"].unlink(missing_ok=True)
        outputs[name] = (y, CARD_RATE_HZ)
    try:
        tmp.rmdir()
    except OSError:
        pass
    # engine events on the scenario clock: t counted from scenario second 0
    events = []
    for ev in read_events(out / "events.jsonl"):
        ev = dict(ev)
        ev["t"] = ev["t"] - t0_engine
        ev["t_s"] = round(ev["t"] / rate, 6)
        events.append(ev)
    with open(out / "events.jsonl", "w", encoding="utf-8") as f:
        import json

        for ev in events:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    rplan = dataclasses.replace(plan, ports=tuple(dataclasses.replace(
        p, device_rate_hz=CARD_RATE_HZ) for p in plan.ports))
    records = measure(rplan, sc.transmissions, outputs, events, quality=quality,
                      run_end_s=total_s)
    run = run_figures(rplan, events, total_s, outputs, port_stats)
    run["resources"] = res.figures()
    run["late_ticks"] = eng.late_ticks
    run["clock"] = {"port": eng.clock_name, "misses": eng.clock_misses}
    run["terminal_status_flags"] = {n: r["flags"] for n, r in results.items()}
    run["terminal_slips"] = {n: r["slips"] for n, r in results.items()}
    for name, st in port_stats.items():
        run["xruns"]["underruns"] += int(st.get("device_underruns", 0) or 0)
        run["xruns"]["overruns"] += int(st.get("device_overruns", 0) or 0)
    metrics = {
        "schema": "brug-bench-metrics/1", "mode": "realtime", "scenario": scenario_info(sc),
        "engine": dataclasses.asdict(cfg), "site": plan.site, "ports": rplan.describe(),
        "patch": {"name": plan.patch_name, "members": list(plan.patch_members),
                  "mode": plan.mode, "priorities": dict(plan.priorities)},
        "timing": {"sim_s": round(total_s, 3), "wall_s": round(total_s + TAIL_S, 3),
                   "speed_x": 1.0},
        "port_stats": port_stats,
        "summary": summarize(records), "run": run, "transmissions": records,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def soak_realtime(plan: ReplayPlan, out: Path, hours: float, *,
                  limits: SoakLimits | None = None, progress: bool = True,
                  quality: bool = True) -> dict[str, Any]:
    """Loop the scenario on the wall clock for ``hours`` through virtual sound cards.

    Same failure rules as the offline soak, judged over the whole run: xruns, missed or
    leaked transmissions, latency drift between the first and the last loop. Memory is
    sampled over the run; the tx recordings stream to disk.
    """
    limits = limits or SoakLimits()
    from brug.bench.replay import quantize_period

    sc = quantize_period(plan.scenario)
    n = max(1, int(math.ceil(hours * 3600.0 / sc.total_duration_s)))
    looped = dataclasses.replace(plan, scenario=sc.looped(n))
    m = replay_realtime(looped, out, quality=quality, progress=progress)
    failures = []
    s = m["summary"]
    x = m["run"]["xruns"]
    if x["underruns"] or x["overruns"] or m["run"]["late_ticks"]:
        failures.append(f"ring buffers: {x['underruns']} underruns, {x['overruns']} overruns, "
                        f"{m['run']['late_ticks']} late ticks")
    if s["missed"]:
        failures.append(f"{s['missed']} transmission(s) not heard that had to be")
    growth = m["run"]["resources"].get("rss_growth_after_warmup_mb", 0.0)
    if growth > limits.max_rss_growth_mb:
        failures.append(f"memory: resident set grew {growth:.2f} MB after warm-up")
    by_loop: dict[int, list[float]] = {}
    for r in m["transmissions"]:
        for d in r["deliveries"]:
            if d["forwarded"] and d["latency_end_ms"] is not None:
                by_loop.setdefault(r["loop"], []).append(d["latency_end_ms"])
    if len(by_loop) >= 2:
        first, last = min(by_loop), max(by_loop)
        drift = float(np.median(by_loop[last]) - np.median(by_loop[first]))
        if abs(drift) > limits.max_drift_ms:
            failures.append(f"latency drift {drift:+.1f} ms between loop {first} and {last}")
    m["mode"] = "soak-realtime"
    m["hours"] = hours
    m["verdict"] = {"status": "FAIL" if failures else "PASS", "failures": failures}
    write_json(out / "metrics.json", m)
    return m
