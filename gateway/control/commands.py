"""Request handlers of the control plane, and what they need from the gateway.

Each request type maps to a :class:`Command`: the weakest role allowed to send it, whether it
changes state (then it is audited and persisted), and a handler ``fn(ctx, body) -> result``.
Handlers run on the control thread; anything touching the engine goes through
``Engine.submit`` and is applied between two ticks, so the audio thread never waits for the
control plane (it only runs the short closure the handler submitted).
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from brug.gateway.control.protocol import (
    VERSION,
    ProtocolError,
    check_keys,
    get_bool,
    get_int,
    get_names,
    get_num,
    get_str,
)
from brug.gateway.engine import Engine, EngineError, PortSettings
from brug.gateway.events import Event
from brug.gateway.ports.base import Port
from brug.gateway.signalling import LineSquelch, Ptt

if TYPE_CHECKING:
    from brug.gateway.control.recorder import Recorder

T = TypeVar("T")


class PortBuild(NamedTuple):
    """A port built from a hardware profile, ready for ``Engine.replace_port``."""

    port: Port
    settings: PortSettings
    squelch: LineSquelch | None = None
    ptt: Ptt | None = None


class GatewayLike(Protocol):
    """What the control server needs from the running gateway (the service layer provides it).

    ``build_port`` must not start the port (the control thread starts it before the swap) and
    raises an exception with ``user_error = True`` (or ``KeyError`` for an unknown profile) on a
    mistake. ``reload`` validates the site file first and applies it atomically or not at all,
    raising a ``user_error`` exception when it is invalid; it returns a short summary.
    ``talkgroup_overrides`` holds talkgroups selected live (port -> talkgroup).
    """

    @property
    def engine(self) -> Engine: ...

    @property
    def site_path(self) -> Path | None: ...

    @property
    def talkgroup_overrides(self) -> dict[str, str]: ...

    def profiles(self) -> list[dict[str, Any]]: ...

    def talkgroups(self) -> list[dict[str, Any]]: ...

    def build_port(self, name: str, profile: str) -> PortBuild: ...

    def reload(self) -> dict[str, Any]: ...


class PublisherLike(Protocol):
    seq: int


@dataclass
class Context:
    """Per-server state the handlers share."""

    gateway: GatewayLike
    publisher: PublisherLike
    recorder: Recorder | None = None
    started: float = field(default_factory=time.monotonic)
    timeout_s: float = 2.0
    #: random id of this server run; changes on restart (clients resync on a new epoch)
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    xruns: int = 0
    user: str = ""
    role: str = ""
    #: snapshot taken in the same engine call as the last state change (for persistence)
    last_snapshot: dict[str, Any] | None = None

    @property
    def engine(self) -> Engine:
        return self.gateway.engine

    def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn`` on the engine between ticks and wait for it (at most ``timeout_s``)."""
        fut = self.engine.submit(fn)
        try:
            return fut.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise ProtocolError("unavailable", "the engine is not ticking") from None
        except EngineError as exc:
            code = exc.code if exc.code in ("unknown_port", "unknown_patch", "bad_request",
                                            "conflict") else "internal"
            raise ProtocolError(code, exc.message) from None

    def change(self, fn: Callable[[Engine], T]) -> T:
        """Like :meth:`call` for a state change; also snapshots for persistence."""
        def both(e: Engine) -> tuple[T, dict[str, Any]]:
            out = fn(e)
            return out, e.snapshot()

        out, snap = self.call(both)
        self.last_snapshot = snap
        return out

    def publish(self, topic: str, data: dict[str, Any], info: str) -> None:
        """Publish a config event through the engine's bus (in sequence with engine events)."""
        self.call(lambda e: e.events.publish([Event(e.t, topic, data, info)]))


Handler = Callable[[Context, dict[str, Any]], Any]


@dataclass(frozen=True)
class Command:
    role: str
    mutating: bool
    fn: Handler
    summary: str


COMMANDS: dict[str, Command] = {}


def command(name: str, role: str, mutating: bool, summary: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        COMMANDS[name] = Command(role, mutating, fn, summary)
        return fn
    return deco


def _port(ctx: Context, body: dict[str, Any], key: str = "port") -> str:
    """A port name that exists now (checked without waiting for a tick; the engine checks
    again when the command is applied)."""
    name = get_str(body, key)
    assert name is not None
    names = ctx.engine.port_names
    if name not in names:
        raise ProtocolError("unknown_port", f"no port named {name!r}; ports: "
                            f"{', '.join(names) or '(none)'}")
    return name


def _patch(ctx: Context, body: dict[str, Any], key: str = "patch") -> str:
    name = get_str(body, key)
    assert name is not None
    names = ctx.engine.patch_names()
    if name not in names:
        raise ProtocolError("unknown_patch", f"no patch named {name!r}; patches: "
                            f"{', '.join(names) or '(none)'}")
    return name


def _merge_overrides(ctx: Context, snap: dict[str, Any]) -> dict[str, Any]:
    for name, tg in ctx.gateway.talkgroup_overrides.items():
        if name in snap.get("ports", {}):
            snap["ports"][name]["talkgroup"] = tg
    return snap


# ---------------------------------------------------------------- read-only
@command("status", "observer", False, "version, uptime, ticks, xruns")
def _status(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, set())
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("brug")
    except PackageNotFoundError:
        ver = "unknown"
    eng = ctx.engine
    return {"version": ver, "protocol": VERSION,
            "uptime_s": round(time.monotonic() - ctx.started, 3),
            "ticks": eng.ticks, "epoch": ctx.epoch, "t_s": round(eng.t / eng.rate, 3),
            "running": eng.running,
            "late_ticks": eng.late_ticks, "xruns": ctx.xruns, "seq": ctx.publisher.seq,
            "recording": ctx.recorder is not None and ctx.recorder.active,
            "user": ctx.user, "role": ctx.role}


def snapshot_with_seq(ctx: Context) -> dict[str, Any]:
    pub = ctx.publisher

    def snap(e: Engine) -> dict[str, Any]:
        s = e.snapshot()
        s["seq"] = pub.seq   # read on the engine thread: events up to seq are in the snapshot
        return s

    return _merge_overrides(ctx, ctx.call(snap))


@command("state.snapshot", "observer", False, "all state, with the event seq it matches")
def _snapshot(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, set())
    s = snapshot_with_seq(ctx)
    s["recording"] = ctx.recorder.describe() if ctx.recorder else None
    s["epoch"] = ctx.epoch
    return s


@command("port.list", "observer", False, "ports with profile, talkgroup, COR/PTT, gains")
def _port_list(ctx: Context, body: dict[str, Any]) -> list[dict[str, Any]]:
    check_keys(body, set())
    snap = _merge_overrides(ctx, ctx.call(lambda e: e.snapshot()))
    return [{"name": n, **{k: v for k, v in p.items() if k != "stats"}}
            for n, p in snap["ports"].items()]


@command("patch.list", "observer", False, "patches with members, mode, floor holder")
def _patch_list(ctx: Context, body: dict[str, Any]) -> list[dict[str, Any]]:
    check_keys(body, set())
    snap = ctx.call(lambda e: e.snapshot())
    return [{"name": n, **p} for n, p in snap["patches"].items()]


@command("profile.list", "observer", False, "hardware profiles the gateway can load")
def _profile_list(ctx: Context, body: dict[str, Any]) -> list[dict[str, Any]]:
    check_keys(body, set())
    return ctx.gateway.profiles()


@command("talkgroup.list", "observer", False, "talkgroups of the site's networks")
def _talkgroup_list(ctx: Context, body: dict[str, Any]) -> list[dict[str, Any]]:
    check_keys(body, set())
    return ctx.gateway.talkgroups()


# ---------------------------------------------------------------- patches (technician)
_MODES = ("half_duplex", "full_duplex")


def _mode(body: dict[str, Any], required: bool) -> str | None:
    mode = get_str(body, "mode", required)
    if mode is not None and mode not in _MODES:
        raise ProtocolError("bad_request", f"body.mode={mode!r} is not one of: "
                            f"{', '.join(_MODES)}")
    return mode


@command("patch.create", "technician", True, "join 2..N ports into a patch")
def _patch_create(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"name", "members", "mode", "priorities"})
    name = get_str(body, "name")
    members = get_names(body, "members")
    assert name is not None and members is not None
    mode = _mode(body, False) or "half_duplex"
    names = ctx.engine.port_names
    for m in members:
        if m not in names:
            raise ProtocolError("unknown_port", f"no port named {m!r}; ports: "
                                f"{', '.join(names) or '(none)'}")
    prio = body.get("priorities", {}) or {}
    if not isinstance(prio, dict) or not all(
            isinstance(k, str) and type(v) is int and -1000 <= v <= 1000 for k, v in prio.items()):
        raise ProtocolError("bad_request", "body.priorities must map port names to integers "
                            "-1000..1000")
    ctx.change(lambda e: e.create_patch(name, members, mode=mode, priorities=prio))
    return {"name": name, "members": members, "mode": mode, "priorities": prio}


@command("patch.delete", "technician", True, "remove a patch (its overs drain)")
def _patch_delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"name"})
    name = _patch(ctx, body, "name")
    ctx.change(lambda e: e.delete_patch(name))
    return {"name": name}


@command("patch.member.add", "technician", True, "add a port to a patch")
def _member_add(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"patch", "port", "priority"})
    patch, port = _patch(ctx, body), _port(ctx, body)
    prio = get_int(body, "priority", False, -1000, 1000)
    assert patch is not None
    ctx.change(lambda e: e.add_member(patch, port, prio))
    return {"patch": patch, "port": port}


@command("patch.member.remove", "technician", True, "remove a port from a patch")
def _member_remove(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"patch", "port"})
    patch, port = _patch(ctx, body), _port(ctx, body)
    assert patch is not None
    ctx.change(lambda e: e.remove_member(patch, port))
    return {"patch": patch, "port": port}


@command("patch.mode.set", "technician", True, "half_duplex or full_duplex")
def _mode_set(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"patch", "mode"})
    patch, mode = _patch(ctx, body), _mode(body, True)
    assert patch is not None and mode is not None
    ctx.change(lambda e: e.set_patch_mode(patch, mode))
    return {"patch": patch, "mode": mode}


@command("patch.priority.set", "technician", True, "a member's pre-emption priority")
def _prio_set(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"patch", "port", "priority"})
    patch, port = _patch(ctx, body), _port(ctx, body)
    prio = get_int(body, "priority", True, -1000, 1000)
    assert patch is not None and prio is not None
    ctx.change(lambda e: e.set_priority(patch, port, prio))
    return {"patch": patch, "port": port, "priority": prio}


@command("port.key", "technician", True, "manual test transmission, seconds mandatory")
def _port_key(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"port", "seconds", "tone_hz"})
    port = _port(ctx, body)
    limit = ctx.engine.config.manual_key_limit_s
    seconds = get_num(body, "seconds", True, 0.0, limit)
    tone = get_num(body, "tone_hz", False, 100.0, 4000.0)
    assert seconds is not None
    if seconds <= 0:
        raise ProtocolError("bad_request", f"body.seconds must be in 0..{limit:g} (exclusive 0)")
    ctx.call(lambda e: e.manual_key(port, seconds, tone))
    return {"port": port, "seconds": seconds, "tone_hz": tone}


@command("port.talkgroup.set", "technician", True, "select a talkgroup on a TETRA terminal")
def _tg_set(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"port", "talkgroup"})
    port, tg = _port(ctx, body), get_str(body, "talkgroup")
    assert tg is not None
    drivers = ctx.call(lambda e: (e.ptt_driver(port), e.port_settings(port)))
    ptt, settings = drivers
    via = "record"
    select = getattr(ptt, "select_talkgroup", None)
    if callable(select):
        try:
            select(tg)
        except Exception as exc:  # noqa: BLE001 - a driver refusal becomes a reply
            raise ProtocolError("conflict", f"terminal refused talkgroup {tg!r}: {exc}") from None
        via = "pei"
    ctx.gateway.talkgroup_overrides[port] = tg
    ctx.publish(f"config.port.{port}", {"action": "talkgroup", "talkgroup": tg, "via": via},
                f"talkgroup {tg} ({via})")
    ctx.last_snapshot = _merge_overrides(ctx, ctx.call(lambda e: e.snapshot()))
    return {"port": port, "talkgroup": tg, "previous": settings.talkgroup, "via": via}


# ---------------------------------------------------------------- operator
@command("port.gain.set", "operator", True, "receive/transmit gain in dB (-60..+30)")
def _gain_set(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"port", "rx_db", "tx_db"})
    port = _port(ctx, body)
    rx = get_num(body, "rx_db", False, -60.0, 30.0)
    tx = get_num(body, "tx_db", False, -60.0, 30.0)
    if rx is None and tx is None:
        raise ProtocolError("bad_request", "give body.rx_db and/or body.tx_db")
    ctx.change(lambda e: e.set_gain(port, rx, tx))
    return {"port": port, "rx_db": rx, "tx_db": tx}


@command("port.mute.set", "operator", True, "mute receive and/or transmit")
def _mute_set(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"port", "rx", "tx"})
    port = _port(ctx, body)
    rx, tx = get_bool(body, "rx", False), get_bool(body, "tx", False)
    if rx is None and tx is None:
        raise ProtocolError("bad_request", "give body.rx and/or body.tx")
    ctx.change(lambda e: e.set_mute(port, rx, tx))
    return {"port": port, "rx": rx, "tx": tx}


@command("port.profile.set", "operator", True, "switch a port's hardware profile live")
def _profile_set(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"port", "profile"})
    port, profile = _port(ctx, body), get_str(body, "profile", max_len=128)
    assert profile is not None
    eng = ctx.engine
    old_profile = ctx.call(lambda e: e.port_settings(port).profile)
    try:
        build = ctx.gateway.build_port(port, profile)
    except KeyError as exc:
        raise ProtocolError("unknown_profile", f"no profile {profile!r}: {exc}") from None
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - profile/device problems become a reply
        if getattr(exc, "user_error", False):
            raise ProtocolError("bad_request", str(exc)) from None
        raise
    # open the device here, on the control thread: the engine thread never waits for it
    build.port.start(eng.rate, eng.block)
    try:
        old = ctx.change(lambda e: e.replace_port(port, build.port, build.settings,
                                                  build.squelch, build.ptt, start=False))
    except BaseException:
        build.port.stop()
        raise
    old.stop()
    return {"port": port, "profile": profile, "previous": old_profile}


# ---------------------------------------------------------------- recording, site
@command("record.start", "technician", True, "record every port's rx/tx to WAV files")
def _record_start(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, {"ports"})
    if ctx.recorder is None:
        raise ProtocolError("unavailable", "no record_dir set in the control settings")
    ports = get_names(body, "ports", False)
    return ctx.recorder.start(ctx, ports)


@command("record.stop", "technician", True, "stop recording; lists the files")
def _record_stop(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, set())
    if ctx.recorder is None or not ctx.recorder.active:
        raise ProtocolError("conflict", "not recording")
    return ctx.recorder.stop(ctx)


@command("site.reload", "admin", True, "re-read the site file: validated, all or nothing")
def _site_reload(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_keys(body, set())
    try:
        result = ctx.gateway.reload()
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - an invalid site file is a reply, not a crash
        if getattr(exc, "user_error", False):
            raise ProtocolError("bad_request", f"site file not applied: {exc}") from None
        raise
    ctx.last_snapshot = _merge_overrides(ctx, ctx.call(lambda e: e.snapshot()))
    return result
