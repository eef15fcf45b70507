"""Control-plane benchmarks while 16 ports stream through 8 patches (real engine, real
sockets on loopback). Run with ``--benchmark-enable`` for figures; with benchmarks disabled
each function still runs once as a quick test.

Reported: request round trip (median, p99) for ``status`` (answered on the control thread)
and ``state.snapshot`` (applied between two engine ticks, so it waits for the next tick:
half a 5 ms block on average), and events per second on the PUB socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from brug.gateway.control.client import GatewayClient
from brug.gateway.control.local import LocalGateway, memory_gateway
from brug.gateway.control.server import ControlServer, ControlSettings

N_PORTS = 16
RATE = 16000


def talk_pattern(seconds: float, seed: int) -> np.ndarray:
    """Bursts of 0.25..0.8 s of -12 dBFS tone with pauses, so COR/PTT/floor events flow."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE), np.float32)
    t = int(rng.uniform(0, 0.3) * RATE)
    while t < len(out):
        n = int(rng.uniform(0.25, 0.8) * RATE)
        f = rng.uniform(300, 2500)
        seg = 0.25 * np.sin(2 * np.pi * f * np.arange(n) / RATE)
        out[t:t + n] = seg[: len(out) - t]
        t += n + int(rng.uniform(0.3, 0.7) * RATE)
    return out


class Stream:
    def __init__(self) -> None:
        names = [f"p{i:02d}" for i in range(N_PORTS)]
        self.gw: LocalGateway = memory_gateway(names)
        for i in range(0, N_PORTS, 2):
            self.gw.engine.create_patch(f"P{i // 2}", [names[i], names[i + 1]])
        for i, n in enumerate(names):
            if i % 2 == 0:
                self.gw.engine.port_object(n).feed(talk_pattern(60.0, i))
        self.gw.run()
        self.srv = ControlServer(self.gw, ControlSettings(
            rep="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*", rate_per_s=1e6, burst=1e6))
        self.srv.start()
        self.client = GatewayClient(self.srv.endpoint, self.srv.pub_endpoint)

    def close(self) -> None:
        self.client.close()
        self.srv.stop()
        self.gw.shutdown()


@pytest.fixture(scope="module")
def stream() -> Iterator[Stream]:
    s = Stream()
    yield s
    s.close()


def percentiles(fn: Any, n: int) -> tuple[float, float]:
    t = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        t[i] = time.perf_counter() - t0
    return float(np.median(t) * 1e3), float(np.percentile(t, 99) * 1e3)


@pytest.mark.benchmark(group="control-rtt")
def test_bench_status_round_trip(benchmark: Any, stream: Stream) -> None:
    st = benchmark(stream.client.status)
    assert st["running"] and st["ticks"] > 0
    med, p99 = percentiles(stream.client.status, 200)
    print(f"\nstatus round trip, 16 ports streaming: median {med:.3f} ms, p99 {p99:.3f} ms")


@pytest.mark.benchmark(group="control-rtt")
def test_bench_snapshot_round_trip(benchmark: Any, stream: Stream) -> None:
    snap = benchmark(stream.client.snapshot)
    assert len(snap["ports"]) == N_PORTS
    med, p99 = percentiles(stream.client.snapshot, 100)
    print(f"\nstate.snapshot round trip (waits for a tick): median {med:.3f} ms, "
          f"p99 {p99:.3f} ms")


def test_events_per_second_while_16_ports_stream(stream: Stream) -> None:
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(b"")
    sub.connect(stream.srv.pub_endpoint)
    time.sleep(0.3)
    n, topics, t0 = 0, set(), time.monotonic()
    while time.monotonic() - t0 < 2.0:
        if sub.poll(100):
            topic, _ = sub.recv_multipart()
            n += 1
            topics.add(topic.split(b".")[-1])
    sub.close(0)
    rate = n / (time.monotonic() - t0)
    print(f"\nevents on PUB while 16 ports stream: {rate:.0f} events/s "
          f"({sorted(t.decode() for t in topics)})")
    assert {b"level", b"cor", b"ptt"} <= topics
    assert rate >= N_PORTS * 4        # at least the 5 Hz meters of every port


def test_publisher_capacity_events_per_second(stream: Stream) -> None:
    """Burst 20,000 events through the engine's bus and time their arrival at a subscriber
    (the ceiling of the PUB path, on top of the live traffic)."""
    from brug.gateway.events import Event

    n_ev = 20000
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.subscribe(b"bench.")
    sub.connect(stream.srv.pub_endpoint)
    time.sleep(0.3)
    batch = [Event(0, f"bench.e{i % 7}", {"i": i}) for i in range(n_ev)]
    t0 = time.perf_counter()
    stream.gw.engine.submit(lambda e: e.events.publish(batch)).result(2.0)
    got = 0
    while got < n_ev and sub.poll(1000):
        sub.recv_multipart()
        got += 1
    dt = time.perf_counter() - t0
    sub.close(0)
    print(f"\npublisher capacity: {got / dt:.0f} events/s ({got} of {n_ev} in {dt:.2f} s)")
    assert got == n_ev
