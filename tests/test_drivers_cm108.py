"""CM108 GPIO PTT/COR against a fake HID device that records the reports (hidapi boundary)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from brug.gateway.drivers.cm108 import output_report
from brug.gateway.signalling import make_ptt, make_squelch


class FakeHid:
    """Stands in for ``hid.device()``: records output reports, serves queued input reports."""

    def __init__(self) -> None:
        self.written: list[list[int]] = []
        self.inputs: list[list[int]] = []
        self.closed = False
        self._lk = threading.Lock()

    def write(self, data: list[int]) -> int:
        with self._lk:
            self.written.append(list(data))
        return len(data)

    def read(self, size: int, timeout_ms: int = 0) -> list[int]:
        with self._lk:
            if self.inputs:
                return self.inputs.pop(0)[:size]
        time.sleep(timeout_ms / 1000.0)
        return []

    def press(self, byte0: int) -> None:
        with self._lk:
            self.inputs.append([byte0, 0, 0, 0])

    def close(self) -> None:
        self.closed = True


def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def test_output_report_layout() -> None:
    assert output_report(0x04, 0x04) == [0x00, 0x00, 0x04, 0x04, 0x00]
    assert bytes(output_report(0x00, 0x04)).hex() == "0000000400"


def test_ptt_on_gpio3_writes_the_expected_reports() -> None:
    dev = FakeHid()
    ptt = make_ptt("cm108", gpio=3, device=dev, name="an1")
    ptt.open()
    ptt.set_tx(True)
    ptt.set_tx(False)
    ptt.close()
    assert dev.written == [
        [0x00, 0x00, 0x00, 0x04, 0x00],   # open: GPIO3 output, low (unkeyed)
        [0x00, 0x00, 0x04, 0x04, 0x00],   # keyed: GPIO3 high
        [0x00, 0x00, 0x00, 0x04, 0x00],   # unkeyed
        [0x00, 0x00, 0x00, 0x04, 0x00],   # close: left unkeyed
    ]
    assert dev.closed


def test_ptt_active_low_gpio1() -> None:
    dev = FakeHid()
    ptt = make_ptt("cm108", gpio=1, polarity="active_low", device=dev, name="an2")
    ptt.open()
    ptt.set_tx(True)
    ptt.close()
    assert dev.written[:2] == [[0, 0, 0x01, 0x01, 0], [0, 0, 0x00, 0x01, 0]]


def test_cor_on_volume_down_shared_with_ptt() -> None:
    dev = FakeHid()
    ptt = make_ptt("cm108", device=dev, name="an3")
    cor = make_squelch("cm108", device=dev, input="vol_down", name="an3", poll_ms=5)
    ptt.open()
    cor.open()
    try:
        assert wait_for(lambda: cor.state(0) == (False, "cm108 vol_down clear"))
        dev.press(0x02)                     # COR pulls the volume-down input
        assert wait_for(lambda: cor.state(0) == (True, "cm108 vol_down set"))
        dev.press(0x01)                     # volume-up only: not our input
        assert wait_for(lambda: cor.state(0)[0] is False)
        ptt.set_tx(True)
        assert dev.written[-1] == [0, 0, 0x04, 0x04, 0]
    finally:
        ptt.close()
        cor.close()


def test_write_failure_becomes_a_fault_event() -> None:
    class Broken(FakeHid):
        def write(self, data: list[int]) -> int:
            raise OSError("device disconnected")

    ptt = make_ptt("cm108", device=Broken(), name="an4")
    ptt.open()
    ptt.set_tx(True)
    events = ptt.poll_events()
    ptt.close()
    assert [e.topic for e in events] == ["fault.port.an4"]
    assert "device disconnected" in events[0].info


def test_bad_gpio_and_input_are_config_errors() -> None:
    with pytest.raises(ValueError, match="gpio=9"):
        make_ptt("cm108", gpio=9, device=FakeHid())
    with pytest.raises(ValueError, match="input='vol_middle' is not one of"):
        make_squelch("cm108", input="vol_middle", device=FakeHid())


def test_no_interface_plugged_in_is_a_fault_not_a_crash() -> None:
    from brug.gateway.drivers.cm108 import find_cm108

    if find_cm108() is not None:
        pytest.skip("a C-Media device is plugged in")
    ptt = make_ptt("cm108", name="an5")            # real hidapi enumeration
    cor = make_squelch("cm108", name="an5")
    ptt.open()
    cor.open()
    try:
        ptt.set_tx(True)                           # returns at once, nothing to write yet
        events: list[Any] = []

        def got() -> bool:
            events.extend(ptt.poll_events())
            return bool(events)

        assert wait_for(got)
        assert events[0].topic == "fault.port.an5"
        assert "no CM108/CM119" in events[0].info
        assert cor.state(0) == (False, "cm108 unavailable")
    finally:
        ptt.close()
        cor.close()
