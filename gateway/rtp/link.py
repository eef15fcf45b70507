"""Site links: a port that joins two brug gateways over RTP with ED-137 signalling.

Each side of a link is a :class:`LinkPort` (site-file ``type: link``). Audio flows as RTP with the
ED-137 extension on every packet, so the far side's COR follows our PTT exactly. A patch can then
span sites: the link port is a member of a patch at each site.

Floor arbitration across the link
---------------------------------
When a local talker takes the floor, the engine keys the link port. From that moment every packet
we send carries a :class:`~brug.gateway.rtp.ed137.FloorClaim`: our ``priority``, the wall-clock
time of the key-up in ms (32 bits) and the site id (CRC-32 of the site name). The link does not
report a transmit grant for ``arbitration_ms``: the engine holds our audio back (nothing is lost,
it is buffered) while the claim travels. If the far side also claims the floor, both sides
compare the *same two claims* with the same rule and reach the same verdict:

1. higher priority wins;
2. then the earlier key-up time (serial arithmetic on the 32-bit ms counter);
3. then the smaller site id.

The winner drops the loser's packets until the loser's claim ends and goes live when its window
ends. The loser never grants: it stops sending (three PTT-off packets), reports
``port.<name>.blocked``, and opens its COR for the winner's audio, which pre-empts the local
talker because a link port is given a higher patch priority than local members. The verdict is
the same on both sides as long as ``arbitration_ms`` exceeds the one-way link delay plus the clock
offset between the sites; a conflict found later is still resolved the same way but reported as a
``late_collision`` (the loser stops sending at once).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from brug.gateway.events import Event
from brug.gateway.rtp.ed137 import FEATURE_FLOOR_CLAIM, Ed137Header, FloorClaim, site_id
from brug.gateway.rtp.packet import RtpPacket
from brug.gateway.rtp.port import RtpConfigError, RtpPort
from brug.gateway.signalling import LineSquelch, Ptt

#: A remote claim counts as active while its packets keep arriving within this time (s).
CLAIM_TIMEOUT_S = 0.3


class LinkPort(RtpPort):
    """One side of a site link.

    Parameters
    ----------
    site:
        This gateway's site name (its id is the last tie-breaker).
    priority:
        Claim priority (0..255) of overs this site sends over the link.
    arbitration_ms:
        Time (ms) a new over is held back while the claim crosses the link; must exceed the
        one-way delay plus the clock offset between sites.
    **kw:
        As :class:`~brug.gateway.rtp.port.RtpPort` (``ed137`` is always on; the site file's
        default payload for links is ``opus`` with in-band FEC).
    """

    def __init__(self, name: str, listen: tuple[str, int], send: tuple[str, int] | None,
                 site: str = "", priority: int = 0, arbitration_ms: float = 150.0,
                 **kw: Any) -> None:
        kw["ed137"] = True
        super().__init__(name, listen, send, **kw)
        if not site:
            raise RtpConfigError(f"ports.{name}.site: missing (this gateway's site name)")
        if not 0 <= priority <= 255:
            raise RtpConfigError(f"ports.{name}.priority={priority} is not in 0..255")
        self.site = site
        self.site_id = site_id(site)
        self.priority = priority
        self.arbitration_ms = float(arbitration_ms)
        self.remote_claim: FloorClaim | None = None
        self._remote_seen = 0.0
        self._key_sample = 0
        self._key_wall = 0.0
        self.yielded = False
        self.winner: int | None = None      # site id of the last arbitration's winner
        self.collisions = 0

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any]) -> LinkPort:
        kw = cls._kwargs(name, cfg)
        if "payload" not in cfg:
            kw["payload"] = "opus"     # in-band FEC rides out single losses on a WAN link
        for k in ("priority",):
            if k in cfg:
                kw[k] = int(cfg[k])
        if "arbitration_ms" in cfg:
            kw["arbitration_ms"] = float(cfg["arbitration_ms"])
        kw.pop("ed137", None)
        return cls(name, site=str(cfg.get("site", "")), **kw)

    def bind_drivers(self, squelch: LineSquelch | None, ptt: Ptt) -> None:
        """As :meth:`RtpPort.bind_drivers`, but a link needs the ``ed137`` (or ``rtp``) PTT
        driver: floor arbitration works through its transmit grant."""
        from brug.gateway.rtp.squelch import RtpPtt

        if not isinstance(ptt, RtpPtt):
            raise RtpConfigError(f"ports.{self.name}.ptt.type: a site link is keyed by ptt "
                                 f"type ed137 (floor arbitration needs its grant)")
        super().bind_drivers(squelch, ptt)

    # ------------------------------------------------------------------ engine thread
    def set_tx(self, on: bool) -> None:
        with self._lock:
            if on and not self._tx_on:
                self.local_claim = FloorClaim(self.priority, int(time.time() * 1000) & 0xFFFFFFFF,
                                              self.site_id)
                self._key_sample = self.samples_read
                self._key_wall = time.monotonic()
                self.yielded = False
                rc = self._active_remote(time.monotonic())
                if rc is not None:
                    self._arbitrate(self.local_claim, rc, late=False)
            elif not on:
                self.local_claim = None
                self.yielded = False
        super().set_tx(on)
        if on and not self.yielded:
            # the claim leaves at once, not after the first full frame of audio
            self._send_frame(np.zeros(self.frame, np.float32), True)

    def tx_granted(self) -> bool | None:
        if not self._tx_on:
            return None
        if self.yielded:
            return False
        # both clocks must have run the window: engine samples (the engine may tick in bursts
        # after a stall) and the wall clock (the claim travels in network time)
        window = int(self.arbitration_ms * self.engine_rate / 1000)
        return (self.samples_read - self._key_sample >= window
                and time.monotonic() - self._key_wall >= self.arbitration_ms / 1000)

    def _may_send(self) -> bool:
        return not self.yielded

    # ------------------------------------------------------------------ receive thread
    def _active_remote(self, now: float) -> FloorClaim | None:
        if self.remote_claim is not None and now - self._remote_seen <= CLAIM_TIMEOUT_S:
            return self.remote_claim
        return None

    def _accept(self, pkt: RtpPacket, hdr: Ed137Header | None, now: float) -> bool:
        with self._lock:
            if hdr is None or not hdr.ptt:
                self.remote_claim = None
                return True
            raw = hdr.feature(FEATURE_FLOOR_CLAIM)
            claim = FloorClaim.from_feature(raw) if raw is not None else \
                FloorClaim(0, 0, 0xFFFFFFFF)
            self.remote_claim = claim
            self._remote_seen = now
            local = self.local_claim
            if local is None or self.yielded:
                return True
            late = bool(self.tx_granted())
            return self._arbitrate(local, claim, late)

    def _arbitrate(self, local: FloorClaim, remote: FloorClaim, late: bool) -> bool:
        """Decide a collision; return True if the remote side won (its audio may play)."""
        if local.beats(remote):
            if self.winner != local.site or self.collisions == 0:
                self._report(local, remote, won=True, late=late)
            return False
        self.yielded = True
        self._tx_tail = 3
        self._report(local, remote, won=False, late=late)
        return True

    def _report(self, local: FloorClaim, remote: FloorClaim, won: bool, late: bool) -> None:
        self.collisions += 1
        self.winner = local.site if won else remote.site
        data = {"winner_site_id": self.winner, "local": _claim_dict(local),
                "remote": _claim_dict(remote), "late_collision": late}
        if won:
            self._events.append(Event(0, f"port.{self.name}.link_floor", {**data, "won": True},
                                      f"link floor kept by {self.site}"))
        else:
            self._events.append(Event(0, f"port.{self.name}.blocked", {**data, "won": False},
                                      f"link floor lost to site {remote.site:08x}"))


def _claim_dict(c: FloorClaim) -> dict[str, int]:
    return {"priority": c.priority, "claim_ms": c.claim_ms, "site_id": c.site}
