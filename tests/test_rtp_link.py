"""Site links on loopback: a simultaneous key-up on both sides is resolved the same way."""

from __future__ import annotations

import socket
import time

import numpy as np

from brug.gateway.rtp.ed137 import site_id
from brug.gateway.rtp.link import LinkPort


def _free_pair() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no free UDP port pair")


def _pump(ports: list[LinkPort], seconds: float) -> None:
    blk = np.full(80, 0.1, np.float32)
    buf = np.zeros(80, np.float32)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in ports:
            p.read(buf)
            p.write(blk)
        time.sleep(0.005)


def test_simultaneous_key_up_one_winner_same_on_both_sides() -> None:
    pa, pb = _free_pair(), _free_pair()
    a = LinkPort.from_config("to_nl", {"type": "link", "listen": f"127.0.0.1:{pa}",
                                       "send": f"127.0.0.1:{pb}", "site": "be-site"})
    b = LinkPort.from_config("to_be", {"type": "link", "listen": f"127.0.0.1:{pb}",
                                       "send": f"127.0.0.1:{pa}", "site": "nl-site"})
    for p in (a, b):
        p.start(16000, 80)
    try:
        a.set_tx(True)
        b.set_tx(True)          # both key up within microseconds, before any packet crossed
        _pump([a, b], 0.5)
        assert a.winner is not None and a.winner == b.winner
        winner, loser = (a, b) if a.winner == site_id("be-site") else (b, a)
        assert not winner.yielded and loser.yielded
        assert winner.tx_granted() is True and loser.tx_granted() is False
        topics = {e.topic for e in loser.poll_events()}
        assert f"port.{loser.name}.blocked" in topics
        # the loser's COR follows the winner's over; the winner never hears the loser
        assert loser.rx_ed137 is not None and loser.rx_ed137.ptt
        assert winner.rx_ed137 is None or not winner.rx_ed137.ptt
    finally:
        for p in (a, b):
            p.stop()
