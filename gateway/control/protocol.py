"""The control-plane wire format (see docs/control-protocol.md).

Requests travel on a ROUTER socket; clients use DEALER (no delimiter frame) or REQ (an empty
delimiter frame, added by REQ itself). The payload is exactly one frame holding one JSON
object, the *envelope*::

    {"id": "c1f3...", "type": "patch.create", "version": 1, "body": {...}}

Every reply carries the request's ``id`` and either ``result`` or ``error``::

    {"id": "c1f3...", "type": "patch.create.reply", "version": 1, "result": {...}}
    {"id": "c1f3...", "type": "patch.create.reply", "version": 1,
     "error": {"code": "unknown_port", "message": "no port named 'xx'; ports: be1, nl1"}}

Events go out on a PUB socket as two frames ``[topic, json]``; the JSON carries ``seq`` (per
publisher, +1 per state event), ``t`` (engine samples), ``topic``, ``data`` and ``info``.

JSON is the only packer, behind :func:`pack` / :func:`unpack`; malformed input raises
:class:`ProtocolError` with a stable code, never anything else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

#: Protocol version this module speaks.
VERSION = 1
#: Largest request payload accepted, bytes.
MAX_MESSAGE = 64 * 1024
#: Longest request id accepted, characters.
MAX_ID = 128

#: Stable error codes (scripts match on these).
ERROR_CODES = (
    "unknown_port", "unknown_patch", "unknown_profile", "bad_request", "forbidden",
    "unknown_type", "too_large", "rate_limited", "conflict", "unavailable", "internal",
)

#: Roles, weakest first; a role may do everything a weaker one may.
ROLES = ("observer", "operator", "technician", "admin")


def role_rank(role: str) -> int:
    """Index of ``role`` in :data:`ROLES` (``-1`` for an unknown role: may do nothing)."""
    try:
        return ROLES.index(role)
    except ValueError:
        return -1


class ProtocolError(Exception):
    """A request the server refuses; ``code`` is one of :data:`ERROR_CODES`."""

    user_error = True

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Request:
    """One parsed request envelope."""

    id: str
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def pack(obj: Any) -> bytes:
    """Serialise ``obj`` as compact UTF-8 JSON; raises ``ValueError``/``TypeError`` if it is
    not JSON (NaN and infinities included)."""
    # ASCII with escapes: a lone surrogate from a peer's "\\ud800" survives the round trip
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")


def unpack(data: bytes) -> Any:
    """Parse UTF-8 JSON; raises :class:`ProtocolError` (``bad_request``/``too_large``)."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("too_large", f"message of {len(data)} bytes exceeds "
                            f"{MAX_MESSAGE} bytes")
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("bad_request", f"not UTF-8 JSON: {exc}"[:200]) from None


def peek_id(data: bytes) -> str | None:
    """Best-effort request id of a message that failed to parse, for the error reply."""
    try:
        obj = json.loads(data.decode("utf-8")) if len(data) <= MAX_MESSAGE else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= MAX_ID:
            return rid
    return None


def parse_request(data: bytes) -> Request:
    """Parse and validate one request payload.

    Raises
    ------
    ProtocolError
        ``too_large`` over :data:`MAX_MESSAGE`; ``bad_request`` for anything that is not an
        envelope of this version.
    """
    obj = unpack(data)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "envelope must be a JSON object")
    extra = set(obj) - {"id", "type", "version", "body", "sent"}
    if extra:
        raise ProtocolError("bad_request", f"unknown envelope keys: {', '.join(sorted(extra))}")
    rid = obj.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID:
        raise ProtocolError("bad_request", f"id must be a string of 1..{MAX_ID} characters")
    typ = obj.get("type")
    if not isinstance(typ, str) or not typ or len(typ) > 64:
        raise ProtocolError("bad_request", "type must be a non-empty string")
    if typ.endswith(".reply"):
        raise ProtocolError("bad_request", f"{typ!r} is a reply, not a request")
    ver = obj.get("version", VERSION)
    if type(ver) is not int or ver != VERSION:
        raise ProtocolError("bad_request", f"version {ver!r} not supported (this server "
                            f"speaks {VERSION})")
    body = obj.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError("bad_request", "body must be a JSON object")
    return Request(rid, typ, body, ver)


def make_request(rid: str, typ: str, body: dict[str, Any] | None = None) -> bytes:
    """Encode a request envelope."""
    return pack({"id": rid, "type": typ, "version": VERSION, "body": body or {}})


def make_reply(rid: str | None, typ: str | None, *, result: Any = None,
               error: ProtocolError | None = None) -> bytes:
    """Encode a reply envelope for request ``rid`` of type ``typ``."""
    msg: dict[str, Any] = {"id": rid, "type": f"{typ or 'error'}.reply", "version": VERSION}
    if error is not None:
        msg["error"] = error.as_dict()
    else:
        msg["result"] = result if result is not None else {}
    return pack(msg)


# ---------------------------------------------------------------- body field helpers
def _field(body: dict[str, Any], key: str, required: bool) -> Any:
    if key not in body:
        if required:
            raise ProtocolError("bad_request", f"body.{key} is required")
        return None
    return body[key]


def get_str(body: dict[str, Any], key: str, required: bool = True,
            max_len: int = 64) -> str | None:
    """``body[key]`` as a non-empty printable string of at most ``max_len`` characters."""
    v = _field(body, key, required)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > max_len or not v.isprintable():
        raise ProtocolError("bad_request", f"body.{key} must be a non-empty string of at most "
                            f"{max_len} printable characters")
    return v


def get_num(body: dict[str, Any], key: str, required: bool = True, lo: float = -math.inf,
            hi: float = math.inf) -> float | None:
    """``body[key]`` as a finite number within ``lo..hi``."""
    v = _field(body, key, required)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not lo <= v <= hi:
        raise ProtocolError("bad_request", f"body.{key} must be a number in {lo:g}..{hi:g}")
    return float(v)


def get_int(body: dict[str, Any], key: str, required: bool = True, lo: int = -10**6,
            hi: int = 10**6) -> int | None:
    v = _field(body, key, required)
    if v is None and not required:
        return None
    if type(v) is not int or not lo <= v <= hi:
        raise ProtocolError("bad_request", f"body.{key} must be an integer in {lo}..{hi}")
    return v


def get_bool(body: dict[str, Any], key: str, required: bool = True) -> bool | None:
    v = _field(body, key, required)
    if v is None and not required:
        return None
    if not isinstance(v, bool):
        raise ProtocolError("bad_request", f"body.{key} must be true or false")
    return v


def get_names(body: dict[str, Any], key: str, required: bool = True,
              max_items: int = 64) -> list[str] | None:
    """``body[key]`` as a list of distinct names."""
    v = _field(body, key, required)
    if v is None and not required:
        return None
    if not isinstance(v, list) or not v or len(v) > max_items or not all(
            isinstance(x, str) and 0 < len(x) <= 64 and x.isprintable() for x in v):
        raise ProtocolError("bad_request", f"body.{key} must be a list of 1..{max_items} names")
    if len(set(v)) != len(v):
        raise ProtocolError("bad_request", f"body.{key} names a port twice")
    return list(v)


def check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    """Refuse unknown body keys (a typo must not be silently ignored)."""
    extra = set(body) - allowed
    if extra:
        raise ProtocolError("bad_request", f"unknown body keys: {', '.join(sorted(extra))}; "
                            f"allowed: {', '.join(sorted(allowed)) or '(none)'}")
