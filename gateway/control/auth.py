"""Keys, roles and the ZAP handler of the control plane.

A *keys directory* holds ZeroMQ CURVE certificates in the format of :mod:`zmq.auth`:

* ``server.key`` / ``server.key_secret``: the gateway's key pair (clients need ``server.key``);
* ``NAME.key`` (public, carries ``role = "..."`` in its metadata section) and
  ``NAME.key_secret`` for each client. Every ``*.key`` other than ``server.key`` is on the
  allow-list with its role; deleting the file revokes the key (re-read on the next connect).

The server answers ZAP requests itself (:class:`ZapHandler`): a CURVE client whose public key is
on the allow-list is accepted with the key's name as ZeroMQ ``User-Id``; every other key is
refused before any message reaches the server. In loopback mode (no CURVE) only connections
from 127.0.0.1 / ::1 are accepted, as user ``loopback``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from brug.gateway.control.protocol import ROLES

SERVER_KEY = "server"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
_ROLE_RE = re.compile(r'^\s+role\s*=\s*"([a-z]+)"\s*$', re.M)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
LOOPBACK_USER = "loopback"


class KeyError_(ValueError):
    """A key name, role or keys directory that cannot work (a user mistake)."""

    user_error = True


@dataclass(frozen=True)
class ClientKey:
    """One allowed client key."""

    name: str
    role: str
    public: bytes  # Z85, 40 bytes


def check_name(name: str) -> str:
    if not _NAME_RE.match(name) or name == SERVER_KEY:
        raise KeyError_(f"key name {name!r}: use 1..48 letters, digits, '_', '.', '-' "
                        f"(not {SERVER_KEY!r})")
    return name


def ensure_server_key(keys_dir: Path) -> tuple[bytes, bytes]:
    """Return the server's (public, secret) Z85 keys, creating them on first use."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    secret_file = keys_dir / f"{SERVER_KEY}.key_secret"
    if not secret_file.exists():
        zmq.auth.create_certificates(str(keys_dir), SERVER_KEY)
        os.chmod(secret_file, 0o600)
    pub, sec = zmq.auth.load_certificate(str(secret_file))
    assert sec is not None
    return pub, sec


def new_client_key(keys_dir: Path, name: str, role: str) -> tuple[Path, Path]:
    """Create ``NAME.key`` (public, with its role) and ``NAME.key_secret`` in ``keys_dir``.

    Returns the two paths. Refuses to overwrite an existing key.
    """
    check_name(name)
    if role not in ROLES:
        raise KeyError_(f"role={role!r} is not one of: {', '.join(ROLES)}")
    ensure_server_key(keys_dir)
    pub_file, sec_file = keys_dir / f"{name}.key", keys_dir / f"{name}.key_secret"
    if pub_file.exists() or sec_file.exists():
        raise KeyError_(f"{pub_file}: key {name!r} exists already")
    zmq.auth.create_certificates(str(keys_dir), name)
    os.chmod(sec_file, 0o600)
    # the role lives in the public certificate's metadata section (ZPL, as zmq.auth reads it)
    text = pub_file.read_text("utf-8")
    if "metadata\n" in text:
        text = text.replace("metadata\n", f'metadata\n    role = "{role}"\n', 1)
    else:
        text += f'metadata\n    role = "{role}"\n'
    tmp = pub_file.with_suffix(".key.tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, pub_file)
    return pub_file, sec_file


def load_allowed(keys_dir: Path) -> dict[bytes, ClientKey]:
    """Read the allow-list: public key (Z85) -> :class:`ClientKey`. Unreadable files are
    skipped (a half-written key must not take the server down)."""
    out: dict[bytes, ClientKey] = {}
    if not keys_dir.is_dir():
        return out
    for f in sorted(keys_dir.glob("*.key")):
        name = f.name[:-4]
        if name == SERVER_KEY:
            continue
        try:
            text = f.read_text("utf-8")
            pub, _ = zmq.auth.load_certificate(str(f))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        m = _ROLE_RE.search(text)
        role = m.group(1) if m and m.group(1) in ROLES else "observer"
        out[pub] = ClientKey(name, role, pub)
    return out


def has_client_keys(keys_dir: Path | None) -> bool:
    return bool(keys_dir and load_allowed(keys_dir))


def load_client_key(keys_dir: Path, name: str) -> tuple[bytes, bytes, bytes]:
    """Return ``(client_public, client_secret, server_public)`` for ``brug ctl --key NAME``."""
    sec_file = keys_dir / f"{name}.key_secret"
    srv_file = keys_dir / f"{SERVER_KEY}.key"
    for f in (sec_file, srv_file):
        if not f.exists():
            raise KeyError_(f"{f}: no such key file (create one with `brug ctl keys new`)")
    pub, sec = zmq.auth.load_certificate(str(sec_file))
    srv, _ = zmq.auth.load_certificate(str(srv_file))
    if sec is None:
        raise KeyError_(f"{sec_file}: has no secret key")
    return pub, sec, srv


class ZapHandler:
    """Answers ZAP requests on ``inproc://zeromq.zap.01`` (poll :attr:`socket`, then call
    :meth:`handle`). Keeps the allow-list fresh by re-reading ``keys_dir`` when it changes."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], keys_dir: Path | None,
                 curve: bool) -> None:
        self.keys_dir = keys_dir
        self.curve = curve
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        self.socket.linger = 0
        self.socket.bind(ZAP_ENDPOINT)
        self._stamp: tuple[float, int] | None = None
        self._allowed: dict[bytes, ClientKey] = {}
        self.refused = 0
        self.accepted = 0

    def allowed(self) -> dict[bytes, ClientKey]:
        if self.keys_dir is None:
            return {}
        try:
            st = self.keys_dir.stat()
            stamp = (st.st_mtime, st.st_nlink)
        except OSError:
            return {}
        if stamp != self._stamp:
            self._allowed = load_allowed(self.keys_dir)
            self._stamp = stamp
        return self._allowed

    def role_of(self, user: str) -> str | None:
        """Role of an authenticated user id (key name), ``None`` if it was revoked."""
        if user == LOOPBACK_USER and not self.curve:
            return "admin"
        for k in self.allowed().values():
            if k.name == user:
                return k.role
        return None

    def handle(self) -> None:
        frames = self.socket.recv_multipart()
        if len(frames) < 6:
            self.socket.send_multipart([b"1.0", b"", b"400", b"bad ZAP request", b"", b""])
            return
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        creds = frames[6:]
        status, text, user = b"400", b"refused", b""
        addr = address.decode("ascii", "replace")
        if self.curve and mechanism == b"CURVE" and creds:
            pub = zmq.utils.z85.encode(creds[0])
            key = self.allowed().get(pub)
            if key is not None:
                status, text, user = b"200", b"OK", key.name.encode()
            else:
                text = b"client key not on the allow-list"
        elif not self.curve and mechanism == b"NULL":
            if addr in ("127.0.0.1", "::1") or addr.startswith("::ffff:127."):
                status, text, user = b"200", b"OK", LOOPBACK_USER.encode()
            else:
                text = b"loopback only"
        if status == b"200":
            self.accepted += 1
        else:
            self.refused += 1
        self.socket.send_multipart([version, request_id, status, text, user, b""])

    def close(self) -> None:
        self.socket.close(0)
