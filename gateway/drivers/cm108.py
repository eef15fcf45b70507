"""PTT and COR on the GPIO of a CM108/CM119 USB sound chip, through HID reports (hidapi).

The common USB radio interfaces wire PTT to GPIO3 and the radio's COR to the chip's
volume-down button input. The chip is driven with HID reports:

* Output report (what :meth:`Cm108Device.set_gpio` writes), 5 bytes as hidapi takes them:
  ``[0x00 report id, 0x00, data, mask, 0x00]``: ``data`` holds the GPIO levels, ``mask`` sets
  which GPIOs are outputs; GPIO *n* is bit ``n - 1`` (GPIO3 = ``0x04``).
* Input report (what the chip sends when a button input changes): byte 0 holds the button
  bits: volume up ``0x01``, volume down ``0x02``, playback mute ``0x04``, record mute
  ``0x08``. A bit is set while its input is pulled low (button pressed).

One :class:`Cm108Device` (one HID handle, one reader thread) serves the PTT and the COR of
the same interface. Tests pass a fake device object with ``write(list[int]) -> int``,
``read(size, timeout_ms) -> list[int]`` and ``close()``.
"""

from __future__ import annotations

import threading
from typing import Any

from brug.gateway.events import Event
from brug.gateway.signalling import (
    LineSquelch,
    Ptt,
    SignallingConfigError,
    register_ptt,
    register_squelch,
)

CMEDIA_VID = 0x0D8C
INPUT_BITS = {"vol_up": 0x01, "vol_down": 0x02, "mute_play": 0x04, "mute_rec": 0x08}
POLARITIES = ("active_high", "active_low")

_devices: dict[str, Cm108Device] = {}
_lock = threading.Lock()


def output_report(gpio_levels: int, gpio_mask: int) -> list[int]:
    """The 5-byte hidapi output report setting GPIOs in ``gpio_mask`` to ``gpio_levels``."""
    return [0x00, 0x00, gpio_levels & 0xFF, gpio_mask & 0xFF, 0x00]


def find_cm108() -> str | None:
    """HID path of the first C-Media (CM108/CM119 family) device, or None."""
    import hid

    for d in hid.enumerate(CMEDIA_VID, 0):
        path = d.get("path")
        if path:
            return path.decode() if isinstance(path, bytes) else str(path)
    return None


def _open_hid(path: str | None) -> Any:
    import hid

    if path is None:
        path = find_cm108()
        if path is None:
            raise OSError("no CM108/CM119 (C-Media, USB vendor 0d8c) HID device found")
    dev = hid.device()
    dev.open_path(path.encode())
    return dev


class Cm108Device:
    """A CM108/CM119 HID handle shared by PTT and COR, with a thread reading input reports.

    Parameters
    ----------
    hid_path:
        hidraw path (``/dev/hidraw2``); None picks the first C-Media device.
    device:
        An already opened device object (tests: a fake recording the reports).
    """

    def __init__(self, hid_path: str | None, device: Any = None, poll_ms: float = 20.0
                 ) -> None:
        self.hid_path = hid_path
        self._dev = device
        self._given = device is not None
        self.poll_ms = poll_ms
        self.buttons = 0                  # last input report byte 0
        self.up = False
        self.names: set[str] = set()
        self._levels = 0
        self._mask = 0
        self._events: list[Event] = []
        self._lk = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refs = 0
        self._fault = False

    @classmethod
    def acquire(cls, hid_path: str | None, device: Any = None, poll_ms: float = 20.0,
                name: str = "") -> Cm108Device:
        key = hid_path or (f"fake:{id(device)}" if device is not None else "auto")
        with _lock:
            d = _devices.get(key)
            if d is None:
                d = _devices[key] = cls(hid_path, device, poll_ms)
                d._key = key
            d._refs += 1
            if name:
                d.names.add(name)
            if d._thread is None:
                d._thread = threading.Thread(target=d._run, name=f"cm108 {key}", daemon=True)
                d._thread.start()
            return d

    _key = ""

    def release(self) -> None:
        with _lock:
            self._refs -= 1
            if self._refs > 0:
                return
            _devices.pop(self._key, None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                dev.close()
            except OSError:
                pass

    def set_gpio(self, gpio: int, level: bool) -> None:
        """Set GPIO ``gpio`` (1..8) to ``level`` and make it an output: one HID write.

        The write is one small USB control transfer (well under 1 ms on a healthy bus); a
        failed write is reported as a fault event and retried by the reader thread.
        """
        bit = 1 << (gpio - 1)
        with self._lk:
            self._mask |= bit
            self._levels = (self._levels | bit) if level else (self._levels & ~bit)
            report = output_report(self._levels, self._mask)
            dev = self._dev
        if dev is None:
            return                        # applied by the thread once the device opens
        try:
            if dev.write(report) < 0:
                raise OSError("HID write failed")
        except (OSError, ValueError) as exc:
            self._report_fault(f"CM108 write failed: {exc}")

    def take_events(self) -> list[Event]:
        with self._lk:
            ev, self._events = self._events, []
        return ev

    def _report_fault(self, info: str) -> None:
        with self._lk:
            if self._fault:
                return
            self._fault = True
            self.up = False
            for name in sorted(self.names) or ["cm108"]:
                self._events.append(Event(0, f"fault.port.{name}",
                                          {"fault": "cm108", "device": self.hid_path}, info))

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if self._dev is None:
                    self._dev = _open_hid(self.hid_path)
                    with self._lk:
                        report = output_report(self._levels, self._mask)
                    if self._mask:
                        self._dev.write(report)
                if not self.up:
                    self.up = True
                    if self._fault:
                        with self._lk:
                            self._fault = False
                            for name in sorted(self.names) or ["cm108"]:
                                self._events.append(Event(0, f"port.{name}.cm108",
                                                          {"state": "up"}, "CM108 back"))
                    backoff = 0.5
                data = self._dev.read(4, int(self.poll_ms))
                if data:
                    self.buttons = int(data[0])
            except (OSError, ValueError, ImportError) as exc:
                self._report_fault(f"CM108 {self.hid_path or '(auto)'}: {exc}; retrying")
                if not self._given:
                    dev, self._dev = self._dev, None
                    if dev is not None:
                        try:
                            dev.close()
                        except OSError:
                            pass
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 8.0)


def _polarity(p: str) -> bool:
    if p not in POLARITIES:
        raise SignallingConfigError(f"polarity={p!r} is not one of: {', '.join(POLARITIES)}")
    return p == "active_high"


class Cm108Ptt(Ptt):
    """Keys on a CM108 GPIO (default GPIO3, asserted high while keyed)."""

    def __init__(self, hid_path: str | None = None, gpio: int = 3,
                 polarity: str = "active_high", name: str = "", device: Any = None,
                 **_: Any) -> None:
        if not 1 <= int(gpio) <= 8:
            raise SignallingConfigError(f"gpio={gpio!r} is out of range [1, 8]")
        self.hid_path = hid_path
        self.gpio = int(gpio)
        self.active = _polarity(polarity)
        self.name = name or "cm108"
        self._device = device
        self._d: Cm108Device | None = None
        self.keyed = False

    def open(self) -> None:
        if self._d is None:
            self._d = Cm108Device.acquire(self.hid_path, self._device, name=self.name)
            self._d.set_gpio(self.gpio, not self.active)

    def set_tx(self, on: bool) -> None:
        """One 5-byte HID output report; returns in well under a millisecond."""
        if self._d is None:
            self.open()
        assert self._d is not None
        self.keyed = on
        self._d.set_gpio(self.gpio, self.active if on else not self.active)

    def close(self) -> None:
        d, self._d = self._d, None
        if d is not None:
            d.set_gpio(self.gpio, not self.active)
            d.release()

    def poll_events(self) -> list[Event]:
        return self._d.take_events() if self._d else []


class Cm108Squelch(LineSquelch):
    """COR on a CM108 button input (default volume-down); ``active_high`` = bit set = open."""

    def __init__(self, hid_path: str | None = None, input: str = "vol_down",
                 polarity: str = "active_high", name: str = "", device: Any = None,
                 poll_ms: float = 20.0, **_: Any) -> None:
        if input not in INPUT_BITS:
            raise SignallingConfigError(
                f"input={input!r} is not one of: {', '.join(sorted(INPUT_BITS))}")
        self.hid_path = hid_path
        self.input = input
        self.bit = INPUT_BITS[input]
        self.active = _polarity(polarity)
        self.name = name or "cm108"
        self._device = device
        self.poll_ms = poll_ms
        self._d: Cm108Device | None = None

    def open(self) -> None:
        if self._d is None:
            self._d = Cm108Device.acquire(self.hid_path, self._device, self.poll_ms,
                                          self.name)

    def state(self, t: int) -> tuple[bool, str]:
        d = self._d
        if d is None or not d.up:
            return False, "cm108 unavailable"
        bit = bool(d.buttons & self.bit)
        return bit == self.active, f"cm108 {self.input} {'set' if bit else 'clear'}"

    def close(self) -> None:
        d, self._d = self._d, None
        if d is not None:
            d.release()

    def poll_events(self) -> list[Event]:
        return self._d.take_events() if self._d else []


register_ptt("cm108")(Cm108Ptt)
register_squelch("cm108")(Cm108Squelch)
