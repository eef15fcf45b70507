"""``brug run SITE.yaml``: run the gateway until SIGINT/SIGTERM, then unkey and close cleanly."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from brug.gateway.events import Event


def format_event(e: Event, rate_hz: int) -> str:
    """One human-readable log line: engine time, topic, state, reason."""
    d = e.data
    if "open" in d:
        state = "OPEN " if d["open"] else "close"
    elif "on" in d:
        state = "ON   " if d["on"] else "off  "
    elif "holder" in d:
        state = f"holder={d['holder'] or '-'}"
    elif "talkers" in d:
        state = f"talkers={','.join(d['talkers']) or '-'}"
    elif "port" in d:
        state = f"port={d['port']}"
    else:
        state = " ".join(f"{k}={v}" for k, v in d.items() if v is not None)
    info = f"  ({e.info})" if e.info else ""
    return f"{e.t / rate_hz:10.3f}s  {e.topic:<28} {state}{info}"


def event_printer(rate_hz: int, out: TextIO = sys.stdout,
                  skip: tuple[str, ...] = (".level",)) -> Callable[[list[Event]], None]:
    """A subscriber that prints events as log lines (from its own thread, never blocking
    the engine: lines are queued and flushed by a daemon thread)."""
    import queue

    q: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def pump() -> None:
        while True:
            e = q.get()
            print(format_event(e, rate_hz), file=out, flush=True)

    threading.Thread(target=pump, name="brug-log", daemon=True).start()

    def sub(events: list[Event]) -> None:
        for e in events:
            if not e.topic.endswith(skip):
                q.put(e)

    return sub


def start_control(gateway: Any) -> Any | None:
    """Start the control plane for ``gateway`` when the site file has a ``control:`` section
    (or by default on loopback); returns the server or None."""
    try:
        from brug.gateway.control.server import serve_gateway
    except ImportError:
        return None
    return serve_gateway(gateway)


def cmd_run(args: argparse.Namespace) -> int:
    from brug.gateway.service import Gateway
    from brug.gateway.site import load_site

    site = load_site(args.site)
    gw = Gateway(site)
    if not args.quiet:
        gw.engine.events.subscribe(event_printer(site.engine.rate_hz))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # restore saved patches and profiles, and open the control plane, before the first tick
    control = start_control(gw) if not args.no_control else None
    gw.start()
    try:
        ports = ", ".join(f"{n} ({s.settings.network}/{s.settings.talkgroup})"
                          for n, s in site.ports.items())
        print(f"brug: running {site.path}: {len(site.ports)} ports: {ports}", flush=True)
        for p in site.patches.values():
            print(f"brug: patch {p.name}: {' + '.join(p.members)} ({p.mode})", flush=True)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.2)
    finally:
        if control is not None:
            control.close()
        gw.stop()
        print("brug: stopped; PTT released on every port", flush=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the gateway for a site file",
                       description="Run the gateway until SIGINT/SIGTERM; then every port "
                                   "is unkeyed and closed.")
    p.add_argument("site", help="site file (YAML)")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="stop after this many seconds (default: run until stopped)")
    p.add_argument("--quiet", action="store_true", help="do not print events")
    p.add_argument("--no-control", action="store_true", help="do not start the control plane")
    p.set_defaults(func=cmd_run)
