"""Squelch (COR) and PTT drivers of RTP ports, registered with :mod:`brug.gateway.signalling`.

* ``stream``: COR open while audio packets are played out, closed ``hang_ms`` after the last
  one (the stream-and-silence convention of many RoIP gateways and consoles).
* ``ed137``: COR follows the PTT bit (or the SQU bit) of the ED-137 extension of the frames
  being played, so it opens and closes exactly with the audio; ``hang_ms`` only covers a stream
  that stops without a PTT-off packet.
* PTT ``rtp`` / ``ed137``: keying the port makes it send packets (with PTT set in the extension
  for ``ed137``); unkeying stops the stream (after three PTT-off packets for ``ed137``).

All times are converted to engine samples; ``state(t)`` reads cached port state and never
blocks. The factories take the port object as ``port=``, or none: the site loader builds the
drivers first and then calls :meth:`RtpPort.bind_drivers`.
"""

from __future__ import annotations

from typing import Any

from brug.gateway.events import Event
from brug.gateway.rtp.port import RtpPort
from brug.gateway.signalling import (
    LineSquelch,
    Ptt,
    SignallingConfigError,
    register_ptt,
    register_squelch,
)


def _need_port(port: object, what: str) -> RtpPort | None:
    """``None``: built by the site loader first and bound later by
    :meth:`RtpPort.bind_drivers`."""
    if port is not None and not isinstance(port, RtpPort):
        raise SignallingConfigError(f"{what} works only on a port of type rtp or link")
    return port

UNBOUND = "not bound to a port of type rtp or link"


@register_squelch("stream")
class StreamSquelch(LineSquelch):
    """COR from stream presence plus ``hang_ms`` (ms)."""

    def __init__(self, port: object = None, hang_ms: float = 300.0, **_: Any) -> None:
        self.port = _need_port(port, "squelch.type=stream")
        self.hang_ms = float(hang_ms)

    def _hang(self) -> int:
        return 0 if self.port is None else int(self.hang_ms * self.port.engine_rate / 1000)

    def state(self, t: int) -> tuple[bool, str]:
        p = self.port
        if p is None:
            return False, UNBOUND
        if p.rx_active:
            return True, "rtp stream"
        if p.samples_read - p.last_audio_sample < self._hang():
            return True, "rtp stream hang"
        return False, "rtp stream stopped"

    def poll_events(self) -> list[Event]:
        return [] if self.port is None else self.port.poll_events()


@register_squelch("ed137")
class Ed137Squelch(StreamSquelch):
    """COR from the ED-137 PTT/SQU bits of the played frames."""

    def state(self, t: int) -> tuple[bool, str]:
        p = self.port
        if p is None:
            return False, UNBOUND
        h = p.rx_ed137
        if h is None:                      # peer without the extension: stream presence
            return super().state(t)
        on = h.ptt or h.squ
        if not on:
            return False, "ed137 ptt off"
        if p.rx_active or p.samples_read - p.last_audio_sample < self._hang():
            return True, f"ed137 ptt id {h.ptt_id}"
        return False, "ed137 stream lost"


@register_ptt("rtp")
class RtpPtt(Ptt):
    """Keys an RTP port: packets flow while keyed."""

    def __init__(self, port: object = None, **_: Any) -> None:
        self.port = _need_port(port, "ptt.type=rtp")

    def set_tx(self, on: bool) -> None:
        if self.port is not None:
            self.port.set_tx(on)

    def granted(self, t: int) -> bool | None:
        return None if self.port is None else self.port.tx_granted()

    def close(self) -> None:
        if self.port is not None:
            self.port.set_tx(False)


register_ptt("ed137")(RtpPtt)
