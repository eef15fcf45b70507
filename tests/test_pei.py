"""TETRA PEI driver against the simulated terminal through a real pty."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator

import pytest

from brug.gateway.drivers.pei import PeiPtt, PeiSquelch
from brug.gateway.events import Event
from brug.gateway.signalling import make_ptt, make_squelch
from brug.gateway.sim import SimTerminal

INIT = ["ATE0", "AT+CMEE=2", "AT+CTOM=0", "AT+CTSP=1,1,11"]


def wait_for(cond: Callable[[], object], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


class Pair:
    """A PEI PTT + COR on one terminal, collecting their events."""

    def __init__(self, term: SimTerminal, gssi: int = 1001, **kw: object) -> None:
        params = dict(port=term.path, gssi=gssi, name="be1", init=INIT, timeout_ms=300,
                      keepalive_s=0.5, **kw)
        self.ptt = make_ptt("pei", **params)
        self.cor = make_squelch("pei", **params)
        assert isinstance(self.ptt, PeiPtt) and isinstance(self.cor, PeiSquelch)
        self.ptt.open()
        self.cor.open()
        self.events: list[Event] = []

    def poll(self) -> list[Event]:
        self.events += self.ptt.poll_events() + self.cor.poll_events()
        return self.events

    def saw(self, text: str) -> bool:
        return any(text in e.info for e in self.poll())

    def close(self) -> None:
        self.ptt.close()
        self.cor.close()


@pytest.fixture
def term() -> Iterator[SimTerminal]:
    t = SimTerminal("be1", setup_ms=300, grant_ms=50, call_hang_ms=800, groups=[1001, 1002])
    yield t
    t.close()


@pytest.fixture
def pair(term: SimTerminal) -> Iterator[Pair]:
    p = Pair(term)
    assert wait_for(lambda: p.saw("talkgroup 1001 selected"))
    yield p
    p.close()


def test_ptt_and_cor_share_one_connection(pair: Pair) -> None:
    assert pair.ptt.conn is pair.cor.conn


def test_initialises_and_selects_the_talkgroup(term: SimTerminal, pair: Pair) -> None:
    assert term.path.startswith("/dev/pts/") and os.path.exists(term.path)
    assert term.log[:7] == ["AT", *INIT, "AT+CTSDC=0,0,0,1,1,0,1,1,0,0", "AT+CTGS=1,1001"]
    assert term.gssi == 1001 and term.cc_routed and not term.echo
    assert pair.cor.state(0) == (False, "pei idle")


def test_key_waits_for_grant_then_unkeys(term: SimTerminal, pair: Pair) -> None:
    t0 = time.monotonic()
    pair.ptt.set_tx(True)
    assert pair.ptt.granted(0) is False              # set-up running: audio must wait
    assert wait_for(lambda: pair.ptt.granted(0))
    waited = time.monotonic() - t0
    assert 0.28 <= waited < 1.0, waited              # the 300 ms group-call set-up
    assert "ATD1001" in term.log and term.transmitting
    assert not pair.cor.state(0)[0]                  # our own call does not open the COR
    pair.ptt.set_tx(False)
    assert pair.ptt.granted(0) is False
    assert wait_for(lambda: "AT+CUTXC=1" in term.log)
    assert wait_for(lambda: not term.transmitting)
    # a new over while the call is still up (call hang): transmit demand, fast grant
    pair.ptt.set_tx(True)
    assert wait_for(lambda: pair.ptt.granted(0), 1.0)
    assert "AT+CTXD=1,1" in term.log
    pair.ptt.set_tx(False)


def test_other_unit_opens_and_closes_the_cor(term: SimTerminal, pair: Pair) -> None:
    assert term.start_incoming(issi=2042)
    assert wait_for(lambda: pair.cor.state(0)[0])
    is_open, info = pair.cor.state(0)
    assert "2042" in info and "1001" in info         # talker and group in the info string
    term.stop_incoming()
    assert wait_for(lambda: not pair.cor.state(0)[0])
    assert "ceased" in pair.cor.state(0)[1]
    assert wait_for(lambda: "released" in pair.cor.state(0)[1], 2.0)   # +CTCR


def test_keying_while_another_unit_talks_is_queued_then_granted(
        term: SimTerminal, pair: Pair) -> None:
    term.start_incoming(issi=2042)
    assert wait_for(lambda: pair.cor.state(0)[0])
    pair.ptt.set_tx(True)
    assert wait_for(lambda: pair.saw("queued"))
    assert pair.ptt.granted(0) is False
    term.stop_incoming()
    assert wait_for(lambda: pair.ptt.granted(0))
    pair.ptt.set_tx(False)


def test_garbled_line_is_skipped(term: SimTerminal, pair: Pair) -> None:
    term.send_raw(b"\r\n+CT\xff\xfeXG#!%\r\n")
    assert wait_for(lambda: pair.saw("ignored unexpected line"))
    term.send_raw(b"\r\n+CTXG: zz,??\r\n")            # a known tag with broken fields
    assert wait_for(lambda: pair.ptt.conn is not None and pair.ptt.conn.garbled >= 2)
    pair.ptt.set_tx(True)                             # and the link still works
    assert wait_for(lambda: pair.ptt.granted(0))
    pair.ptt.set_tx(False)
    assert not any(e.topic.startswith("fault.") for e in pair.poll())


def test_error_replies_become_events(term: SimTerminal) -> None:
    p = Pair(term, gssi=4242)                         # not a group this terminal may use
    try:
        assert wait_for(lambda: p.saw("talkgroup 4242 refused: +CME ERROR: group not "
                                      "available"))
        assert any(e.topic == "fault.port.be1" for e in p.events)
        p.ptt.set_tx(True)
        assert wait_for(lambda: p.saw("key-up refused: +CME ERROR: group not selected"))
        assert p.ptt.granted(0) is False
        p.ptt.set_tx(False)
    finally:
        p.close()


def test_terminal_silent_for_5_s_then_back(term: SimTerminal, pair: Pair) -> None:
    term.go_silent(5.0)
    t0 = time.monotonic()
    assert wait_for(lambda: any(e.topic == "fault.port.be1" for e in pair.poll()), 3.0)
    detected = time.monotonic() - t0
    assert detected < 2.0, detected                  # keep-alive 0.5 s + 2 x 300 ms
    assert pair.cor.state(0) == (False, "pei down")
    pair.ptt.set_tx(True)                            # keyed while the terminal is away
    assert pair.ptt.granted(0) is False
    assert wait_for(lambda: pair.saw("answers again"), 8.0)
    back = time.monotonic() - t0
    assert 5.0 <= back < 8.0, back
    assert term.gssi == 1001                          # re-selected
    assert wait_for(lambda: pair.ptt.granted(0))      # the pending key-up goes through
    pair.ptt.set_tx(False)


def test_power_cycled_terminal_is_reinitialised(term: SimTerminal, pair: Pair) -> None:
    term.power_cycle(off_s=0.1)                       # back before the driver times out
    assert term.gssi is None and term.echo
    assert wait_for(lambda: term.gssi == 1001, 3.0)   # keep-alive saw no group: init again
    assert not term.echo and term.cc_routed
    assert pair.saw("re-initialising") or pair.saw("answers again")
    pair.ptt.set_tx(True)
    assert wait_for(lambda: pair.ptt.granted(0))
    pair.ptt.set_tx(False)


def test_unsolicited_lines_between_command_and_reply() -> None:
    """A scripted terminal that answers ATD with call notifications before its OK."""
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    path = os.ttyname(slave)
    buf = b""

    def serve(reply: Callable[[str], bytes], until: float = 3.0) -> str:
        nonlocal buf
        end = time.monotonic() + until
        while time.monotonic() < end:
            r, _, _ = select.select([master], [], [], 0.05)
            if r:
                buf += os.read(master, 1024)
            if b"\r" in buf:
                line, buf = buf.split(b"\r", 1)
                cmd = line.decode().strip()
                os.write(master, reply(cmd))
                return cmd
        raise AssertionError("no command")

    ptt = make_ptt("pei", port=path, gssi=1001, name="x1", init=[], timeout_ms=1000,
                   keepalive_s=30)
    cor = make_squelch("pei", port=path, gssi=1001, name="x1", keepalive_s=30)
    ptt.open()
    cor.open()
    try:
        for _ in range(3):                             # AT, AT+CTSDC, AT+CTGS
            serve(lambda c: b"\r\nOK\r\n")
        ptt.set_tx(True)
        cmd = serve(lambda c: b"\r\n+CTICN: 7,0,0,5,02060000100002042,1,1,0,1,1,5,"
                              b"02060000100001001,0\r\n\r\nOK\r\n+CTOCP: 7,0,0\r\n")
        assert cmd == "ATD1001"
        assert wait_for(lambda: cor.state(0)[0])
        assert cor.state(0)[1] == "pei call from 2042 on 1001 (call 7)"
        os.write(master, b"\r\n+CDTXC: 7,0\r\n\r\n+CTXG: 7,0,0,0\r\n")
        assert wait_for(lambda: ptt.granted(0))
        assert not cor.state(0)[0]
        events = ptt.poll_events()
        assert not [e for e in events if "refused" in e.info or e.topic.startswith("fault")]
    finally:
        ptt.close()
        cor.close()
        os.close(master)
        os.close(slave)


def test_site_loader_calling_convention(term: SimTerminal) -> None:
    """The gateway passes the profile's pei mapping and the catalogue talkgroup alias."""
    from brug.hw_profiles import load_profile
    from brug.talkgroups.catalogue import load_catalogue

    gssi = load_catalogue().resolve("be_astrid/BE-TAC3").gssi
    assert gssi is not None
    t2 = SimTerminal("be2", setup_ms=100, groups=[gssi])
    pei = dict(load_profile("sim-tetra").to_port_dict()["pei"], port=t2.path)
    ptt = make_ptt("pei", name="be2", pei=pei, talkgroup="BE-TAC3", lead_ms=400, hang_ms=500)
    try:
        ptt.open()
        assert wait_for(lambda: t2.gssi == gssi)
        ptt.set_tx(True)
        assert wait_for(lambda: ptt.granted(0))
        assert f"ATD{gssi}" in t2.log
    finally:
        ptt.close()
        t2.close()
    with pytest.raises(ValueError, match="NL-NOPE"):
        make_ptt("pei", pei=pei, talkgroup="NL-NOPE", network="nl_c2000")
    with pytest.raises(ValueError, match="pei.port is required"):
        make_squelch("pei", talkgroup="BE-TAC3")


def test_engine_waits_for_the_grant_and_keeps_the_first_syllable(term: SimTerminal) -> None:
    """A talker on an analog port keys a PEI terminal through a patch: no audio before
    +CTXG, and the whole first syllable (a 120 ms burst at the very start) arrives."""
    import threading

    import numpy as np

    from brug.gateway.engine import Engine, EngineConfig, PortSettings, PttSettings, SquelchSettings
    from brug.gateway.ports.base import MemoryPort
    from brug.gateway.signalling import ScheduledSquelch

    fs = 16000
    n = np.arange(int(0.12 * fs))
    syllable = (0.3 * np.sin(2 * np.pi * 1000 * n / fs)).astype(np.float32)
    rest = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(0.4 * fs)) / fs)).astype(np.float32)
    at = int(0.2 * fs)
    talker = MemoryPort("an1", np.concatenate([np.zeros(at, np.float32), syllable, rest]))
    dest = MemoryPort("be1")
    events: list[Event] = []
    eng = Engine(EngineConfig(rate_hz=fs, block_ms=5))
    eng.events.subscribe(events.extend)
    end = at + len(syllable) + len(rest)
    eng.add_port(talker, PortSettings("an1", squelch=SquelchSettings(type="schedule")),
                 squelch=ScheduledSquelch([(at, end)], info="cor"))
    pcfg = dict(port=term.path, gssi=1001, name="be1", init=INIT, timeout_ms=300,
                keepalive_s=0.5)
    ptt, cor = make_ptt("pei", **pcfg), make_squelch("pei", **pcfg)
    ptt.open()
    cor.open()
    assert wait_for(lambda: term.gssi == 1001)          # link up before the clock starts
    eng.add_port(dest, PortSettings("be1", squelch=SquelchSettings(type="pei",
                                                                 mask_while_tx=False),
                                    ptt=PttSettings(type="pei", lead_ms=0, hang_ms=100)),
                 squelch=cor, ptt=ptt)
    eng.create_patch("P", ["an1", "be1"])
    stop = threading.Event()
    th = threading.Thread(target=eng.run_realtime, args=(stop,))
    th.start()
    try:
        assert wait_for(lambda: any(e.topic == "port.be1.ptt" and not e.data["on"]
                                    for e in events), 5.0)
    finally:
        stop.set()
        th.join()
        eng.stop()
    key_t = next(e.t for e in events if e.topic == "port.be1.ptt" and e.data["on"])
    live = next(e for e in events if e.topic == "port.be1.live")
    assert "ATD1001" in term.log
    assert live.data["lead_ms"] >= 280                      # waited for the 300 ms set-up
    y = dest.tx
    first = int(np.flatnonzero(np.abs(y) > 1e-4)[0])
    assert first >= live.t                                  # nothing before the grant
    assert first >= key_t + int(0.28 * fs)

    def corr_at(k: int) -> float:
        seg = y[k:k + len(syllable)]
        return float(np.dot(seg, syllable) / (np.linalg.norm(seg) * np.linalg.norm(syllable)))

    start = max(range(first - 4, first + 4), key=corr_at)  # sin(0) = 0: first may be +1
    assert corr_at(start) > 0.99, corr_at(start)            # the first syllable, whole
    assert start >= live.t


def test_closing_while_keyed_unkeys_the_terminal(term: SimTerminal, pair: Pair) -> None:
    pair.ptt.set_tx(True)
    assert wait_for(lambda: pair.ptt.granted(0))
    pair.close()
    assert "AT+CUTXC=1" in term.log and not term.transmitting


def test_result_code_parser_never_raises_on_garbage() -> None:
    """Any line the terminal sends is handled, ignored or counted as garbled; the parser
    never raises (an exception would stop the link thread)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from brug.gateway.drivers.pei import PeiConnection

    conn = PeiConnection("unused", gssi=1001, name="fz")
    tags = st.sampled_from(["+CTXG", "+CTICN", "+CTCC", "+CTOCP", "+CDTXC", "+CTCR", "+CTXI",
                            "+CTXW", "+CTGS", "+CTX", "+C", ""])
    fields = st.lists(st.text(alphabet="0123456789,-: +\x00\xff", max_size=12), max_size=14)

    @settings(max_examples=300, deadline=None)
    @given(tags, fields, st.booleans())
    def check(tag: str, parts: list[str], keyed: bool) -> None:
        conn._tx = keyed
        handled = conn._unsolicited(f"{tag}: {','.join(parts)}")
        assert isinstance(handled, bool)
        assert isinstance(conn.rx_open, bool) and isinstance(conn.rx_info, str)

    check()


def test_select_talkgroup_live_and_refusal(term: SimTerminal, pair: Pair) -> None:
    pair.ptt.select_talkgroup("1002")
    assert wait_for(lambda: term.gssi == 1002)
    assert wait_for(lambda: pair.saw("talkgroup 1002 selected"))
    pair.ptt.set_tx(True)                             # the next over calls the new group
    assert wait_for(lambda: pair.ptt.granted(0))
    assert "ATD1002" in term.log
    pair.ptt.set_tx(False)
    pair.ptt.select_talkgroup("4242")                 # not allowed on this terminal
    assert wait_for(lambda: pair.saw("talkgroup 4242 refused"))
    assert term.gssi == 1002
