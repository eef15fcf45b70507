"""Python client of the control plane: :class:`GatewayClient`.

Requests go out on a DEALER socket; each carries a fresh id and the reply with that id is
awaited under a ``time.monotonic()`` deadline (replies with another id, late answers to an
earlier attempt, are dropped). On a timeout the client follows the Lazy Pirate pattern: LINGER 0,
close, reopen, resend the *same* request (the server answers a repeated state change from its
reply cache, so it is applied once), up to ``retries`` times, then raises
:class:`GatewayTimeout`.

:meth:`GatewayClient.events` yields events from the PUB socket, starting with a
``state.snapshot`` and resynchronising with a new one whenever a sequence gap shows that
events were lost (slow joiner, high-water mark, server restart).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import zmq

from brug.gateway.control.auth import load_client_key
from brug.gateway.control.protocol import MAX_MESSAGE, make_request, unpack

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_EVENTS = "tcp://127.0.0.1:5556"


class GatewayError(Exception):
    """The gateway refused a request; ``code`` is the stable error code."""

    user_error = True

    def __init__(self, code: str, message: str, type_: str = "") -> None:
        super().__init__(f"{type_ + ': ' if type_ else ''}{code}: {message}")
        self.code = code
        self.message = message


class GatewayTimeout(TimeoutError):
    """No reply after every retry (gateway down, wrong endpoint, or key refused)."""

    user_error = True


CurveKeys = tuple[bytes, bytes, bytes]  # client public, client secret, server public (Z85)


class GatewayClient:
    """Typed client of the brug control plane.

    Parameters
    ----------
    endpoint, events:
        Request (ROUTER) and event (PUB) endpoints of the gateway.
    keys_dir, key:
        Use CURVE with the key pair ``keys_dir/KEY.key_secret`` and ``keys_dir/server.key``.
    curve:
        Or give the three Z85 keys directly.
    timeout:
        Seconds to wait for one reply attempt.
    retries:
        Attempts after the first before :class:`GatewayTimeout`.

    Examples
    --------
    >>> with GatewayClient("tcp://127.0.0.1:5555") as gw:        # doctest: +SKIP
    ...     gw.patch_create("OP-HARBOUR", ["be1", "nl1"])
    ...     print(gw.status()["ticks"])
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, events: str = DEFAULT_EVENTS, *,
                 keys_dir: Path | None = None, key: str | None = None,
                 curve: CurveKeys | None = None, timeout: float = 2.0,
                 retries: int = 2) -> None:
        self.endpoint = endpoint
        self.events_endpoint = events
        if curve is None and key is not None:
            if keys_dir is None:
                raise GatewayError("bad_request", "a key name needs a keys directory")
            curve = load_client_key(keys_dir, key)
        self.curve = curve
        self.timeout = timeout
        self.retries = retries
        self._zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self.reconnects = 0

    # ------------------------------------------------------------------ sockets
    def _secure(self, sock: zmq.Socket[bytes]) -> None:
        sock.linger = 0
        if self.curve is not None:
            pub, sec, srv = self.curve
            sock.curve_publickey = pub
            sock.curve_secretkey = sec
            sock.curve_serverkey = srv

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            s = self._zctx.socket(zmq.DEALER)
            self._secure(s)
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
            self.reconnects += 1

    def close(self) -> None:
        """Close every socket, event streams included (pending requests are dropped)."""
        self._sock = None
        self._zctx.destroy(linger=0)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def request_raw(self, type_: str, body: dict[str, Any] | None = None,
                    timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return the whole reply envelope (``result`` or ``error``)."""
        rid = uuid.uuid4().hex
        payload = make_request(rid, type_, body)
        wait = self.timeout if timeout is None else timeout
        for _attempt in range(self.retries + 1):
            sock = self._socket()
            sock.send(payload)
            deadline = time.monotonic() + wait
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                    if time.monotonic() < deadline:
                        continue
                    break
                data = sock.recv()
                try:
                    msg = unpack(data)
                except Exception:  # noqa: BLE001 - garbage on the wire: keep waiting
                    continue
                if isinstance(msg, dict) and msg.get("id") == rid:
                    return msg
            self._reset()   # Lazy Pirate: the socket may be wedged; reopen and resend
        raise GatewayTimeout(f"no reply from {self.endpoint} to {type_} after "
                             f"{self.retries + 1} attempts of {wait:g} s")

    def request(self, type_: str, body: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Send one request and return its ``result``; raise :class:`GatewayError` on error."""
        msg = self.request_raw(type_, body, timeout)
        err = msg.get("error")
        if err is not None:
            raise GatewayError(str(err.get("code")), str(err.get("message")), type_)
        return msg.get("result")

    # ------------------------------------------------------------------ typed API
    def status(self) -> dict[str, Any]:
        """Version, uptime (s), ticks, xruns, event seq, your user and role."""
        return dict(self.request("status"))

    def snapshot(self) -> dict[str, Any]:
        """All state; ``seq`` is the last event already reflected in it."""
        return dict(self.request("state.snapshot"))

    def ports(self) -> list[dict[str, Any]]:
        return list(self.request("port.list"))

    def patches(self) -> list[dict[str, Any]]:
        return list(self.request("patch.list"))

    def profiles(self) -> list[dict[str, Any]]:
        return list(self.request("profile.list"))

    def talkgroups(self) -> list[dict[str, Any]]:
        return list(self.request("talkgroup.list"))

    def patch_create(self, name: str, members: Sequence[str], mode: str = "half_duplex",
                     priorities: dict[str, int] | None = None) -> dict[str, Any]:
        return dict(self.request("patch.create", {"name": name, "members": list(members),
                                                  "mode": mode,
                                                  "priorities": priorities or {}}))

    def patch_delete(self, name: str) -> dict[str, Any]:
        return dict(self.request("patch.delete", {"name": name}))

    def patch_add_member(self, patch: str, port: str, priority: int | None = None
                         ) -> dict[str, Any]:
        body: dict[str, Any] = {"patch": patch, "port": port}
        if priority is not None:
            body["priority"] = priority
        return dict(self.request("patch.member.add", body))

    def patch_remove_member(self, patch: str, port: str) -> dict[str, Any]:
        return dict(self.request("patch.member.remove", {"patch": patch, "port": port}))

    def patch_set_mode(self, patch: str, mode: str) -> dict[str, Any]:
        return dict(self.request("patch.mode.set", {"patch": patch, "mode": mode}))

    def patch_set_priority(self, patch: str, port: str, priority: int) -> dict[str, Any]:
        return dict(self.request("patch.priority.set",
                                 {"patch": patch, "port": port, "priority": priority}))

    def set_profile(self, port: str, profile: str) -> dict[str, Any]:
        """Switch ``port`` to hardware ``profile`` live (other ports keep flowing)."""
        return dict(self.request("port.profile.set", {"port": port, "profile": profile},
                                 timeout=max(self.timeout, 10.0)))

    def set_talkgroup(self, port: str, talkgroup: str) -> dict[str, Any]:
        return dict(self.request("port.talkgroup.set", {"port": port, "talkgroup": talkgroup}))

    def set_gain(self, port: str, rx_db: float | None = None, tx_db: float | None = None
                 ) -> dict[str, Any]:
        body: dict[str, Any] = {"port": port}
        if rx_db is not None:
            body["rx_db"] = rx_db
        if tx_db is not None:
            body["tx_db"] = tx_db
        return dict(self.request("port.gain.set", body))

    def set_mute(self, port: str, rx: bool | None = None, tx: bool | None = None
                 ) -> dict[str, Any]:
        body: dict[str, Any] = {"port": port}
        if rx is not None:
            body["rx"] = rx
        if tx is not None:
            body["tx"] = tx
        return dict(self.request("port.mute.set", body))

    def key(self, port: str, seconds: float, tone_hz: float | None = None) -> dict[str, Any]:
        """Manual test transmission on ``port`` for ``seconds`` (the server's limit applies)."""
        body: dict[str, Any] = {"port": port, "seconds": seconds}
        if tone_hz is not None:
            body["tone_hz"] = tone_hz
        return dict(self.request("port.key", body))

    def record_start(self, ports: Sequence[str] | None = None) -> dict[str, Any]:
        return dict(self.request("record.start", {"ports": list(ports)} if ports else {}))

    def record_stop(self) -> dict[str, Any]:
        return dict(self.request("record.stop"))

    def reload(self) -> dict[str, Any]:
        return dict(self.request("site.reload", timeout=max(self.timeout, 10.0)))

    # ------------------------------------------------------------------ events
    def events(self, topics: Sequence[str] = ("",), *, timeout: float | None = None,
               include_heartbeats: bool = False) -> Iterator[dict[str, Any]]:
        """Yield events whose topic starts with one of ``topics``.

        The first item is ``{"topic": "state.snapshot", "seq": S, "data": {...}}``; every
        event after it has ``seq > S`` and none is missing: on a gap (or a heartbeat showing a
        later ``seq``, or a server restart) a fresh ``state.snapshot`` item is yielded and the
        stream continues from it. When nothing arrives for the heartbeat's ``time_to_dead`` a
        ``{"topic": "server.dead"}`` item is yielded once. ``timeout`` (s) ends the iterator
        after that much silence in total; ``None`` waits forever.
        """
        sub = self._zctx.socket(zmq.SUB)
        self._secure(sub)
        sub.setsockopt(zmq.RCVHWM, 100000)
        sub.maxmsgsize = 16 * MAX_MESSAGE
        sub.subscribe(b"")   # all topics: seq numbers count every topic, so filter here
        sub.connect(self.events_endpoint)
        prefixes = tuple(topics)
        try:
            snap = self.snapshot()
            last = int(snap.get("seq", 0))
            yield {"topic": "state.snapshot", "seq": last, "data": snap}
            ttd = 3.0
            heard = time.monotonic()
            dead = False
            while True:
                wait = min(ttd, 0.5)
                if not sub.poll(int(wait * 1000)):
                    quiet = time.monotonic() - heard
                    if timeout is not None and quiet >= timeout:
                        return
                    if quiet >= ttd and not dead:
                        dead = True
                        yield {"topic": "server.dead", "seq": last, "data": {"silent_s": quiet}}
                    continue
                frames = sub.recv_multipart()
                heard = time.monotonic()
                if len(frames) != 2:
                    continue
                try:
                    msg = unpack(frames[1])
                except Exception:  # noqa: BLE001
                    continue
                if not isinstance(msg, dict):
                    continue
                seq = int(msg.get("seq", 0))
                if frames[0] == b"hb":
                    ttd = float(msg.get("time_to_dead", ttd))
                    # missed events, a restarted server (new epoch) or back from the dead
                    resync = seq > last or msg.get("epoch") != snap.get("epoch") or dead
                    dead = False
                    if resync:
                        snap = self.snapshot()
                        last = int(snap.get("seq", 0))
                        yield {"topic": "state.snapshot", "seq": last, "data": snap}
                    if include_heartbeats:
                        yield msg
                    continue
                dead = False
                if seq <= last:
                    continue
                if seq > last + 1:
                    snap = self.snapshot()
                    last = int(snap.get("seq", 0))
                    yield {"topic": "state.snapshot", "seq": last, "data": snap}
                    if seq <= last:
                        continue
                last = seq
                topic = str(msg.get("topic", ""))
                if topic.startswith(prefixes):
                    yield msg
        finally:
            sub.close(0)
