"""The control server: ROUTER for requests, PUB for events, CURVE + ZAP for access.

One control thread owns every socket. It answers requests (:mod:`.commands`), publishes the
engine's events with a per-publisher sequence number, sends a heartbeat and writes recordings.
The engine thread only appends to a deque (event subscriber, level tap): it never waits for
the control plane, and a dead or slow control thread only costs dropped events, which the
sequence numbers reveal to subscribers.

Frame layout (see docs/control-protocol.md)::

    request  (DEALER -> ROUTER): [payload]            (REQ adds an empty delimiter: [b"", payload])
    reply    (ROUTER -> DEALER): [payload]            (to REQ: [b"", payload])
    event    (PUB -> SUB):       [topic, payload]     topic = b"port.be1.cor", b"hb", ...
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from brug.gateway.control.audit import AuditLog
from brug.gateway.control.auth import (
    ZapHandler,
    ensure_server_key,
    has_client_keys,
)
from brug.gateway.control.commands import COMMANDS, Context, GatewayLike
from brug.gateway.control.persist import save_state, state_from_snapshot
from brug.gateway.control.protocol import (
    MAX_MESSAGE,
    ProtocolError,
    make_reply,
    pack,
    parse_request,
    peek_id,
    role_rank,
)
from brug.gateway.control.recorder import Recorder
from brug.gateway.engine import Engine
from brug.gateway.events import Event

log = logging.getLogger(__name__)
Array = npt.NDArray[np.float32]

DEFAULT_REP = "tcp://127.0.0.1:5555"
DEFAULT_PUB = "tcp://127.0.0.1:5556"
#: Messages larger than this are cut off by ZeroMQ itself (the peer is disconnected);
#: between MAX_MESSAGE and this the server answers ``too_large``.
HARD_MAX_MESSAGE = 1024 * 1024


class ControlConfigError(ValueError):
    """A ``control:`` section that cannot work (reported as one line)."""

    user_error = True


@dataclass(frozen=True)
class ControlSettings:
    """The site file's ``control:`` section.

    Parameters
    ----------
    rep, pub:
        ZeroMQ endpoints of the request ROUTER and the event PUB socket (``tcp://host:*`` picks
        a free port; see :attr:`ControlServer.endpoint`).
    keys_dir:
        CURVE keys directory (server key pair plus one ``NAME.key`` per allowed client).
    audit_log, state_file, record_dir:
        Audit log (JSON lines), persisted state (JSON) and recordings folder.
    allow_loopback_without_keys:
        ``True``: no CURVE, loopback connections only, full rights. ``False``: CURVE always.
        ``None`` (default): loopback mode only while the keys directory holds no client key.
    rate_per_s, burst:
        Per-client token bucket: sustained requests per second and bucket size.
    heartbeat_s, time_to_dead_s:
        Heartbeat period and the silence after which subscribers declare the server dead.
    level_hz:
        Rate of ``port.<name>.level`` meter events, Hz.
    """

    rep: str = DEFAULT_REP
    pub: str = DEFAULT_PUB
    keys_dir: Path | None = None
    audit_log: Path | None = None
    state_file: Path | None = None
    record_dir: Path | None = None
    allow_loopback_without_keys: bool | None = None
    rate_per_s: float = 200.0
    burst: float = 400.0
    heartbeat_s: float = 1.0
    time_to_dead_s: float = 3.0
    level_hz: float = 5.0

    @classmethod
    def from_mapping(cls, m: dict[str, Any] | None, base: Path | None = None,
                     where: str = "control") -> ControlSettings:
        """Build from the parsed YAML mapping; relative paths are taken from ``base``."""
        m = dict(m or {})
        kw: dict[str, Any] = {}
        for key in ("rep", "pub"):
            if key in m:
                v = m.pop(key)
                if not isinstance(v, str) or "://" not in v:
                    raise ControlConfigError(f"{where}.{key}={v!r} is not a ZeroMQ endpoint")
                kw[key] = v
        for key in ("keys_dir", "audit_log", "state_file", "record_dir"):
            if key in m:
                v = m.pop(key)
                if not isinstance(v, str) or not v:
                    raise ControlConfigError(f"{where}.{key} must be a path")
                p = Path(v)
                kw[key] = p if p.is_absolute() or base is None else base / p
        if "allow_loopback_without_keys" in m:
            v = m.pop("allow_loopback_without_keys")
            if v is not None and not isinstance(v, bool):
                raise ControlConfigError(f"{where}.allow_loopback_without_keys must be "
                                         "true or false")
            kw["allow_loopback_without_keys"] = v
        for key in ("rate_per_s", "burst", "heartbeat_s", "time_to_dead_s", "level_hz"):
            if key in m:
                v = m.pop(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    raise ControlConfigError(f"{where}.{key}={v!r} must be a positive number")
                kw[key] = float(v)
        if m:
            raise ControlConfigError(f"{where}: unknown key(s) {', '.join(sorted(m))}")
        return cls(**kw)

    def curve(self) -> bool:
        """True when the server must use CURVE (see ``allow_loopback_without_keys``)."""
        if self.allow_loopback_without_keys is None:
            return has_client_keys(self.keys_dir)
        return not self.allow_loopback_without_keys


class Publisher:
    """Sequence numbers and the engine-thread side of event publishing.

    ``seq`` is written only on the engine thread (event subscriber and level tap), so a
    snapshot taken on the engine thread knows exactly which events it already contains.
    """

    def __init__(self, engine: Engine, level_hz: float, maxlen: int = 65536) -> None:
        self.seq = 0
        self.dropped = 0
        self.queue: collections.deque[tuple[int, str, dict[str, Any]]] = collections.deque(
            maxlen=maxlen)
        self._engine = engine
        self._every = max(1, int(round(engine.rate / engine.block / level_hz)))
        self._acc: Array | None = None
        self._n = 0
        self.xruns = 0

    def _put(self, topic: str, msg: dict[str, Any]) -> None:
        self.seq += 1
        msg["seq"] = self.seq
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append((self.seq, topic, msg))

    def on_events(self, events: list[Event]) -> None:
        """EventBus subscriber: engine thread, appends only."""
        rate = self._engine.rate
        for ev in events:
            self._put(ev.topic, ev.to_json(rate))

    def tap(self, t: int, rx: Array, tx: Array) -> None:
        """Meter tap: engine thread; one (2, ports) sum per tick, events at ``level_hz``."""
        n = rx.shape[0]
        if self._acc is None or self._acc.shape[1] != n:
            self._acc = np.zeros((2, n), np.float32)
            self._n = 0
        self._acc[0] += np.einsum("ij,ij->i", rx, rx)
        self._acc[1] += np.einsum("ij,ij->i", tx, tx)
        self._n += rx.shape[1]
        if self._n < self._every * rx.shape[1]:
            return
        db = 10.0 * np.log10(np.maximum(self._acc / self._n, 1e-12))
        eng = self._engine
        names = eng.port_names
        xr = 0
        for i, name in enumerate(names):
            self._put(f"port.{name}.level",
                      {"t": t, "t_s": round(t / eng.rate, 6), "topic": f"port.{name}.level",
                       "data": {"rx_dbfs": round(float(db[0, i]), 1),
                                "tx_dbfs": round(float(db[1, i]), 1)}, "info": ""})
            st = eng.port_object(name).stats
            xr += st.underruns + st.overruns
        self.xruns = xr
        self._acc[:] = 0.0
        self._n = 0


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class ControlServer:
    """Serve the control plane of ``gateway`` on its own thread.

    Parameters
    ----------
    gateway:
        Anything satisfying :class:`~brug.gateway.control.commands.GatewayLike`.
    settings:
        The ``control:`` section (:class:`ControlSettings`).

    Examples
    --------
    >>> srv = ControlServer(gw, ControlSettings(rep="tcp://127.0.0.1:*",
    ...                                         pub="tcp://127.0.0.1:*"))  # doctest: +SKIP
    >>> srv.start(); print(srv.endpoint); srv.stop()                   # doctest: +SKIP
    """

    def __init__(self, gateway: GatewayLike, settings: ControlSettings | None = None) -> None:
        self.gateway = gateway
        self.settings = s = settings or ControlSettings()
        self.curve = s.curve()
        if self.curve and s.keys_dir is None:
            raise ControlConfigError("control: allow_loopback_without_keys is false but no "
                                     "keys_dir is set")
        if not self.curve:
            for ep in (s.rep, s.pub):
                host = ep.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
                if host not in ("127.0.0.1", "localhost", "::1") and not ep.startswith("inproc"):
                    raise ControlConfigError(
                        f"control: {ep} is not loopback; without keys the control plane only "
                        "listens on 127.0.0.1 (create keys with `brug ctl keys new`)")
        self.publisher = Publisher(gateway.engine, s.level_hz)
        self.recorder = Recorder(s.record_dir) if s.record_dir else None
        self.ctx = Context(gateway, self.publisher, self.recorder)
        self.audit = AuditLog(s.audit_log) if s.audit_log else None
        self.endpoint = ""
        self.pub_endpoint = ""
        self.server_public: bytes | None = None
        self.requests = 0
        self._last_pub_seq = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._buckets: dict[bytes, _Bucket] = {}
        self._replies: collections.OrderedDict[tuple[str, str], bytes] = (
            collections.OrderedDict())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsub: list[Callable[[], None]] = []
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind the sockets (errors raise here) and start the control thread."""
        s = self.settings
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._ctx = ctx
        self.zap = ZapHandler(ctx, s.keys_dir, self.curve)
        self.router = ctx.socket(zmq.ROUTER)
        self.pub = ctx.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.linger = 0
            sock.zap_domain = b"brug"
            sock.maxmsgsize = HARD_MAX_MESSAGE
            if self.curve:
                assert s.keys_dir is not None
                pub, sec = ensure_server_key(s.keys_dir)
                self.server_public = pub
                sock.curve_server = True
                sock.curve_publickey = pub
                sock.curve_secretkey = sec
        self.router.setsockopt(zmq.SNDHWM, 10000)
        self.pub.setsockopt(zmq.SNDHWM, 100000)
        try:
            self.router.bind(s.rep)
            self.pub.bind(s.pub)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise ControlConfigError(f"control: cannot bind {s.rep} / {s.pub}: {exc}") from None
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        eng = self.gateway.engine
        self._unsub.append(eng.events.subscribe(self.publisher.on_events))
        self._unsub.append(eng.add_tap(self.publisher.tap) if not eng.running else
                           eng.submit(lambda e: e.add_tap(self.publisher.tap)).result(2.0))
        self._thread = threading.Thread(target=self._run, name="brug-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the control thread and close the sockets. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        eng = self.gateway.engine
        for u in self._unsub:
            if eng.running:      # the engine iterates its taps: remove between ticks
                def remove(_e: Engine, u: Callable[[], None] = u) -> None:
                    u()
                try:
                    eng.submit(remove).result(1.0)
                except Exception:  # noqa: BLE001 - engine stopped meanwhile
                    u()
            else:
                u()
        self._unsub.clear()
        if self.recorder is not None:
            self.recorder.close()
        if self.audit is not None:
            self.audit.close()
            self.audit = None
        self._close_sockets()

    def _close_sockets(self) -> None:
        for name in ("router", "pub"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(0)
                setattr(self, name, None)
        zap = getattr(self, "zap", None)
        if zap is not None:
            zap.close()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def close(self) -> None:
        """Same as :meth:`stop`."""
        self.stop()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.zap.socket, zmq.POLLIN)
        next_hb = time.monotonic()
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(5))
                if self.zap.socket in ready:
                    self.zap.handle()
                if self.router in ready:
                    for _ in range(64):
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
                self._flush_events()
                now = time.monotonic()
                if now >= next_hb:
                    next_hb = now + self.settings.heartbeat_s
                    self._heartbeat()
                if self.recorder is not None and self.recorder.active:
                    self.recorder.drain()
            except Exception:  # noqa: BLE001 - the control thread must survive anything
                log.exception("control loop error")
                self.errors["internal"] += 1

    def _flush_events(self) -> None:
        q = self.publisher.queue
        while q:
            _seq, topic, msg = q.popleft()
            try:
                self.pub.send_multipart([topic.encode("utf-8"), pack(msg)], zmq.NOBLOCK)
            except (zmq.Again, ValueError, TypeError):
                self.errors["publish"] += 1
            self._last_pub_seq = msg["seq"]

    def _heartbeat(self) -> None:
        eng = self.gateway.engine
        self.ctx.xruns = self.publisher.xruns
        msg = {"topic": "hb", "seq": self._last_pub_seq, "epoch": self.ctx.epoch,
               "time_to_dead": self.settings.time_to_dead_s,
               "interval": self.settings.heartbeat_s, "t": eng.t, "ticks": eng.ticks,
               "running": eng.running, "dropped": self.publisher.dropped}
        try:
            self.pub.send_multipart([b"hb", pack(msg)], zmq.NOBLOCK)
        except zmq.Again:
            pass

    # ------------------------------------------------------------------ requests
    def _rate_ok(self, ident: bytes) -> bool:
        now = time.monotonic()
        b = self._buckets.get(ident)
        if b is None:
            if len(self._buckets) > 4096:
                self._buckets.clear()
            b = self._buckets[ident] = _Bucket(self.settings.burst, now)
        b.tokens = min(self.settings.burst, b.tokens + (now - b.stamp) * self.settings.rate_per_s)
        b.stamp = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def _handle(self, frames: list[zmq.Frame]) -> None:
        ident = frames[0].bytes
        rest = frames[1:]
        delim = bool(rest) and len(rest[0]) == 0
        if delim:
            rest = rest[1:]
        envelope = [ident, b""] if delim else [ident]
        try:
            uid = frames[-1].get("User-Id")
        except (zmq.ZMQError, UnicodeDecodeError):
            uid = ""
        try:
            reply = self._answer(ident, str(uid or ""), rest)
        except Exception as exc:  # noqa: BLE001 - every request gets an answer
            log.exception("request failed")
            self.errors["internal"] += 1
            reply = make_reply(None, None, error=ProtocolError("internal", type(exc).__name__))
        try:
            self.router.send_multipart([*envelope, reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.errors["send"] += 1

    def _answer(self, ident: bytes, user: str, rest: list[zmq.Frame]) -> bytes:
        self.requests += 1
        rid: str | None = None
        typ: str | None = None
        role = self.zap.role_of(user) if user else None
        try:
            if not self._rate_ok(ident):
                raise ProtocolError("rate_limited", f"more than {self.settings.rate_per_s:g} "
                                    "requests/s; slow down")
            if len(rest) != 1:
                raise ProtocolError("bad_request", f"expected one payload frame, got {len(rest)}")
            data = rest[0].bytes
            if len(data) > MAX_MESSAGE:
                raise ProtocolError("too_large", f"message of {len(data)} bytes exceeds "
                                    f"{MAX_MESSAGE} bytes")
            rid = peek_id(data)
            req = parse_request(data)
            rid, typ = req.id, req.type
            cmd = COMMANDS.get(req.type)
            if cmd is None:
                raise ProtocolError("unknown_type", f"no request type {req.type!r}; types: "
                                    f"{', '.join(sorted(COMMANDS))}")
            if role is None:
                err = ProtocolError("forbidden", f"key {user!r} is no longer allowed")
                if cmd.mutating:
                    self._audit(user, "revoked", req.type, req.body, req.id, err)
                raise err
            if cmd.mutating:
                cached = self._replies.get((user, req.id))
                if cached is not None:          # a Lazy-Pirate retry: same answer, done once
                    return cached
            if role_rank(role) < role_rank(cmd.role):
                err = ProtocolError("forbidden", f"{req.type} needs role {cmd.role}; key "
                                    f"{user!r} has role {role}")
                self._audit(user, role, req.type, req.body, req.id, err)
                raise err
            self.ctx.user, self.ctx.role = user, role
            self.ctx.xruns = self.publisher.xruns
            self.ctx.last_snapshot = None
            try:
                result = cmd.fn(self.ctx, req.body)
            except ProtocolError as exc:
                if cmd.mutating:
                    self._audit(user, role, req.type, req.body, req.id, exc)
                    reply = make_reply(rid, typ, error=exc)
                    self._remember(user, req.id, reply)
                    return reply
                raise
            except Exception as exc:  # noqa: BLE001 - a bug in a handler is a reply
                log.exception("handler %s failed", req.type)
                err = ProtocolError("internal", f"{type(exc).__name__}: {exc}"[:300])
                if cmd.mutating:
                    self._audit(user, role, req.type, req.body, req.id, err)
                raise err from None
            if cmd.mutating:
                self._persist()
                self._audit(user, role, req.type, req.body, req.id, None)
            reply = make_reply(rid, typ, result=result)
            if cmd.mutating:
                self._remember(user, req.id, reply)
            return reply
        except ProtocolError as exc:
            self.errors[exc.code] += 1
            return make_reply(rid, typ, error=exc)
        except (ValueError, TypeError) as exc:   # result not JSON-serialisable
            self.errors["internal"] += 1
            return make_reply(rid, typ, error=ProtocolError("internal", str(exc)[:300]))

    def _remember(self, user: str, rid: str, reply: bytes) -> None:
        self._replies[(user, rid)] = reply
        while len(self._replies) > 4096:
            self._replies.popitem(last=False)

    def _audit(self, user: str, role: str, typ: str, body: dict[str, Any], rid: str,
               err: ProtocolError | None) -> None:
        if self.audit is None:
            return
        self.audit.write(user=user, role=role, type_=typ, body=body, request_id=rid,
                         outcome="ok" if err is None else err.code,
                         message="" if err is None else err.message)

    def _persist(self) -> None:
        path = self.settings.state_file
        snap = self.ctx.last_snapshot
        if path is None or snap is None:
            return
        save_state(path, state_from_snapshot(snap, self.gateway.talkgroup_overrides))

    # ------------------------------------------------------------------ info
    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": dict(self.errors),
                "seq": self.publisher.seq, "dropped": self.publisher.dropped,
                "zap_accepted": self.zap.accepted, "zap_refused": self.zap.refused}



def serve_gateway(gateway: Any) -> ControlServer | None:
    """Restore saved state and start the control plane of a service ``Gateway`` (the call
    ``brug run`` makes). Better called before ``gateway.start()`` so the restore happens
    before the first tick; when the engine already runs, the restore is applied between two
    ticks instead. Returns ``None`` when the ``control:`` section says ``enabled: false``."""
    from brug.gateway.control.service_adapter import open_control

    return open_control(gateway)
