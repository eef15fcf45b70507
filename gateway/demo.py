"""``brug demo``: the embedded default, end to end on this machine.

Three simulated TETRA terminals (ASTRID, C2000, RENITA) on virtual sound cards of a private
PulseAudio server, patched half duplex through the real engine and real PortAudio streams.
Recorded speech from the bundled traffic is played into one terminal after the other, as if
a unit on that network keyed up; the live view shows who talks (COR), who is keyed (PTT) and
whether the terminal transmits yet (LIVE: after its group-call set-up). What each terminal
was made to transmit is recorded to ``--out`` so it can be listened to afterwards.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from brug.gateway.events import Event

NETWORKS = (("be1", "be_astrid", "BE-TAC3"), ("nl1", "nl_c2000", "NL-OPS2"),
            ("lu1", "lu_renita", "LU-INT1"))
CLIPS = ("clean/8k/allison_callsign-bravo-one-two.wav", "clean/8k/ps_goforward.wav",
         "clean/8k/allison_callsign-delta-four-niner.wav", "clean/8k/c2_hts1a.wav",
         "clean/8k/ps_cards-003.wav", "clean/8k/allison_one-moment-please.wav")


def traffic_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "bench" / "traffic"


def demo_site(sims: dict[str, Any] | None) -> str:
    """The demo's site file: PEI-controlled simulated terminals, or VOX ports without them."""
    lines = ["engine: {rate_hz: 16000, block_ms: 5}", "ports:"]
    for name, net, tg in NETWORKS:
        if sims is not None:
            lines.append(f"  {name}: {{profile: sim-tetra, device: brug_{name}, network: {net}, "
                         f"talkgroup: {tg}, pei: {{port: '{sims[name].path}'}}}}")
        else:
            lines.append(f"  {name}: {{device: brug_{name}, network: {net}, talkgroup: {tg}, "
                         "squelch: {type: vox}, ptt: {type: none, lead_ms: 300}}")
    members = ", ".join(n for n, _, _ in NETWORKS)
    lines += ["patches:", f"  OP-DEMO: {{members: [{members}], mode: half_duplex}}"]
    return "\n".join(lines) + "\n"


class LiveView:
    """Draws the state of every port a few times a second (or prints events without a TTY)."""

    def __init__(self, engine: Any, tty: bool) -> None:
        self.engine = engine
        self.tty = tty
        self.recent: deque[str] = deque(maxlen=8)
        self.rate = engine.rate
        self.counts: dict[str, int] = {}

    def on_events(self, events: list[Event]) -> None:
        from brug.gateway.run import format_event

        for e in events:
            if e.topic.startswith("config."):
                continue
            line = format_event(e, self.rate)
            self.recent.append(line)
            if e.topic.endswith(".live"):
                port = e.topic.split(".")[1]
                self.counts[port] = self.counts.get(port, 0) + 1
            if not self.tty:
                print(line, flush=True)

    def draw(self, playing: str) -> None:
        if not self.tty:
            return
        snap = self.engine.submit(lambda e: e.snapshot()).result(timeout=2)
        out = ["\x1b[H\x1b[2J",
               f"brug demo: patch OP-DEMO, half duplex    t = {snap['t_s']:7.1f} s",
               f"playing: {playing}", "",
               f"{'PORT':<5} {'NETWORK/TALKGROUP':<20} {'COR':<5} {'PTT':<4} {'LIVE':<5} "
               f"{'DELAY':>7}  LEVEL"]
        for name, p in snap["ports"].items():
            lvl = p["rx_level_dbfs"]
            bar = "#" * max(0, int((lvl + 60) / 3))
            out.append(f"{name:<5} {p['network'] + '/' + p['talkgroup']:<20} "
                       f"{'RX' if p['cor'] else '.':<5} {'TX' if p['ptt'] else '.':<4} "
                       f"{'ON' if p['live'] else ('wait' if p['ptt'] else '.'):<5} "
                       f"{p['delay_ms']:>5.0f}ms  {lvl:6.1f} dBFS {bar}")
        patch = snap["patches"].get("OP-DEMO", {})
        out += ["", f"floor: {patch.get('holder') or '-'}   blocked: "
                    f"{', '.join(patch.get('blocked', [])) or '-'}", "", "recent events:"]
        out += [f"  {line}" for line in self.recent]
        sys.stdout.write("\n".join(out) + "\n")
        sys.stdout.flush()


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from brug.gateway.service import Gateway
    from brug.gateway.signalling import ptt_types
    from brug.gateway.site import parse_site_text
    from brug.gateway.soundcards import SoundCards, refresh_portaudio

    cards = SoundCards(args.runtime_dir) if args.runtime_dir else SoundCards()
    print(f"brug demo: virtual sound cards on a private PulseAudio server "
          f"({cards.runtime_dir})", flush=True)
    cards.up([n for n, _, _ in NETWORKS])
    cards.apply_env()
    refresh_portaudio()
    sims: dict[str, Any] | None = None
    if "pei" in ptt_types() and not args.vox:
        from brug.gateway.sim import SimTerminal

        sims = {n: SimTerminal(n, setup_ms=300) for n, _, _ in NETWORKS}
        print("brug demo: three simulated TETRA terminals, PEI on "
              + ", ".join(f"{n}={s.path}" for n, s in sims.items()), flush=True)
    site = parse_site_text(demo_site(sims), "demo-site.yaml")
    gw = Gateway(site)
    view = LiveView(gw.engine, sys.stdout.isatty() and not args.plain)
    gw.engine.events.subscribe(view.on_events)
    out = Path(args.out)
    (out / "tx").mkdir(parents=True, exist_ok=True)
    recorders: list[threading.Thread] = []
    recordings: dict[str, Any] = {}
    stop = threading.Event()
    playing = ["-"]

    def record(name: str) -> None:
        import sounddevice as sd

        chunks: list[Any] = []
        with sd.InputStream(device=f"brug_{name}_air_tx", samplerate=16000, channels=1,
                            dtype="float32", blocksize=800) as s:
            while not stop.is_set():
                data, _ = s.read(800)
                chunks.append(data[:, 0].copy())
        recordings[name] = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def talk() -> None:
        import sounddevice as sd

        t_end = time.monotonic() + args.seconds
        i = 0
        time.sleep(1.0)
        while not stop.is_set() and time.monotonic() < t_end:
            name, net, tg = NETWORKS[i % len(NETWORKS)]
            clip = CLIPS[i % len(CLIPS)]
            playing[0] = f"{clip.split('/')[-1]} into {name} ({net}/{tg})"
            if sims is not None:
                sims[name].talk(traffic_dir() / clip).join()
            else:
                data, rate = sf.read(traffic_dir() / clip, dtype="float32")
                sd.play(data, rate, device=f"brug_{name}_air_rx", blocking=True)
            playing[0] = "-"
            i += 1
            stop.wait(2.0)
        stop.set()

    gw.start()
    try:
        for name, _, _ in NETWORKS:
            th = threading.Thread(target=record, args=(name,), daemon=True)
            th.start()
            recorders.append(th)
        talker = threading.Thread(target=talk, daemon=True)
        talker.start()
        while not stop.is_set():
            view.draw(playing[0])
            stop.wait(0.25)
    except KeyboardInterrupt:
        stop.set()
    finally:
        stop.set()
        for th in recorders:
            th.join(timeout=3)
        gw.stop()
        for s in (sims or {}).values():
            s.close()
    for name, x in recordings.items():
        sf.write(out / "tx" / f"{name}.wav", x, 16000)
    print("\nbrug demo: done; PTT released on every port.")
    for name, net, tg in NETWORKS:
        print(f"  {name} ({net}/{tg}): transmitted {view.counts.get(name, 0)} overs; "
              f"recording in {out / 'tx' / (name + '.wav')}")
    print("brug demo: the virtual sound cards stay up; `brug soundcards down` removes them.")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the embedded default: three simulated terminals, "
                       "virtual sound cards, one patch, recorded traffic, a live view")
    p.add_argument("--seconds", type=float, default=40.0,
                   help="how long to play traffic (default 40)")
    p.add_argument("--out", default="out/demo", help="where to write what each terminal "
                   "transmitted (default out/demo)")
    p.add_argument("--plain", action="store_true", help="print events instead of a live view")
    p.add_argument("--vox", action="store_true",
                   help="VOX ports instead of PEI-controlled simulated terminals")
    p.add_argument("--runtime-dir", help="PulseAudio runtime dir (default: brug soundcards')")
    p.set_defaults(func=cmd_demo)
