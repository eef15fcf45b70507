"""Serial-line PTT/COR at pyserial's boundary: loop:// wires RTS->CTS and DTR->DSR."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import serial

from brug.gateway.signalling import make_ptt, make_squelch


def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture
def pty_path() -> Iterator[str]:
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_rts_ptt_keys_cts_cor_through_loopback() -> None:
    ptt = make_ptt("serial_rts", port="loop://", polarity="active_high", name="a1")
    cor = make_squelch("serial_cts", port="loop://", polarity="active_high", name="a1")
    cor.open()
    ptt.open()
    try:
        assert wait_for(lambda: cor.state(0) == (False, "serial CTS low"))
        ptt.set_tx(True)
        assert wait_for(lambda: cor.state(0)[0])
        assert cor.state(0) == (True, "serial CTS high")
        ptt.set_tx(False)
        assert wait_for(lambda: not cor.state(0)[0])
    finally:
        ptt.close()
        cor.close()


def test_dtr_active_low_and_dsr_active_low() -> None:
    ptt = make_ptt("serial_dtr", port="loop://", polarity="active_low", name="b1")
    cor = make_squelch("serial_dsr", port="loop://", polarity="active_low", name="b1")
    ptt.open()
    cor.open()
    try:
        # unkeyed, active_low: DTR asserted; the DSR COR reads "high" = closed
        assert wait_for(lambda: cor.state(0) == (False, "serial DSR high"))
        ptt.set_tx(True)     # keyed: DTR dropped
        assert wait_for(lambda: cor.state(0) == (True, "serial DSR low"))
    finally:
        ptt.close()
        cor.close()


def test_ptt_line_is_not_asserted_when_the_port_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyserial asserts RTS on open by default; the driver must not key the radio then."""
    seen: list[bool] = []
    real = serial.serial_for_url

    def spy(url: str, *a: Any, **kw: Any) -> Any:
        s = real(url, *a, **kw)
        orig_open = s.open

        def opened() -> None:
            seen.append(bool(s.rts))
            orig_open()

        s.open = opened  # type: ignore[method-assign]
        return s

    monkeypatch.setattr(serial, "serial_for_url", spy)
    ptt = make_ptt("serial_rts", port="loop://", name="c1")
    ptt.open()
    try:
        assert wait_for(lambda: bool(seen))
        assert seen == [False]
    finally:
        ptt.close()


def test_dcd_reads_asserted_on_loopback() -> None:
    cor = make_squelch("serial_dcd", port="loop://", name="d1")
    cor.open()
    try:
        assert wait_for(lambda: cor.state(0) == (True, "serial DCD high"))
    finally:
        cor.close()


def test_pty_has_no_modem_lines_gives_fault_event(pty_path: str) -> None:
    ptt = make_ptt("serial_rts", port=pty_path, name="e1")
    ptt.open()
    try:
        assert wait_for(lambda: bool(events := ptt.poll_events()) and _keep(events))
        ev = _kept[-1][0]
        assert ev.topic == "fault.port.e1"
        assert "Inappropriate ioctl" in ev.info and pty_path in ev.info
        ptt.set_tx(True)     # still returns at once, no exception in the engine thread
    finally:
        ptt.close()


def test_missing_device_fault_then_cor_reads_closed() -> None:
    cor = make_squelch("serial_cts", port="/dev/ttyNOSUCH9", name="f1")
    cor.open()
    try:
        assert wait_for(lambda: bool(events := cor.poll_events()) and _keep(events))
        assert _kept[-1][0].topic == "fault.port.f1"
        assert cor.state(0) == (False, "serial CTS unavailable")
    finally:
        cor.close()


def test_bad_polarity_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="polarity='low' is not one of"):
        make_ptt("serial_rts", port="loop://", polarity="low")


_kept: list[list] = []


def _keep(events: list) -> bool:
    _kept.append(events)
    return True
