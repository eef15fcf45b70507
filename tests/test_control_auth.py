"""CURVE access control over real sockets: allow-listed keys with roles, refusals audited,
unknown keys cannot connect at all, loopback mode off once keys exist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from brug.gateway.control.audit import read_audit
from brug.gateway.control.auth import KeyError_, load_allowed, new_client_key
from brug.gateway.control.client import GatewayClient, GatewayError, GatewayTimeout
from brug.gateway.control.local import LocalGateway, memory_gateway
from brug.gateway.control.server import ControlServer, ControlSettings


class Secure:
    def __init__(self, tmp: Path) -> None:
        self.keys = tmp / "keys"
        for name, role in (("obs", "observer"), ("op", "operator"), ("tech", "technician"),
                           ("boss", "admin")):
            new_client_key(self.keys, name, role)
        self.gw: LocalGateway = memory_gateway(["be1", "nl1", "lu1"])
        self.gw.run()
        self.audit = tmp / "audit.jsonl"
        self.srv = ControlServer(self.gw, ControlSettings(
            rep="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*", keys_dir=self.keys,
            audit_log=self.audit))
        self.srv.start()

    def client(self, name: str, timeout: float = 2.0, retries: int = 0) -> GatewayClient:
        return GatewayClient(self.srv.endpoint, self.srv.pub_endpoint, keys_dir=self.keys,
                             key=name, timeout=timeout, retries=retries)

    def close(self) -> None:
        self.srv.stop()
        self.gw.shutdown()


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[Secure]:
    s = Secure(tmp_path)
    yield s
    s.close()


def test_keys_are_written_with_their_role(tmp_path: Path) -> None:
    pub, sec = new_client_key(tmp_path, "alice", "technician")
    assert pub.name == "alice.key" and sec.name == "alice.key_secret"
    assert (tmp_path / "server.key_secret").exists()
    allowed = load_allowed(tmp_path)
    assert [(k.name, k.role) for k in allowed.values()] == [("alice", "technician")]
    assert oct(sec.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(KeyError_, match="exists already"):
        new_client_key(tmp_path, "alice", "observer")
    with pytest.raises(KeyError_, match="role='god'"):
        new_client_key(tmp_path, "bob", "god")
    with pytest.raises(KeyError_, match="key name"):
        new_client_key(tmp_path, "../x", "observer")


def test_curve_is_on_once_keys_exist(secure: Secure) -> None:
    assert secure.srv.curve
    with secure.client("obs") as c:
        st = c.status()
    assert st["user"] == "obs" and st["role"] == "observer"


def test_roles_are_enforced_and_refusals_audited(secure: Secure) -> None:
    with secure.client("obs") as c:
        assert len(c.ports()) == 3                       # observers read
        with pytest.raises(GatewayError) as ei:
            c.set_gain("be1", rx_db=-3)
        assert ei.value.code == "forbidden" and "operator" in ei.value.message
    with secure.client("op") as c:
        c.set_gain("be1", rx_db=-3)                      # operators: gains and profiles
        c.set_profile("lu1", "mem-b")
        with pytest.raises(GatewayError) as ei:
            c.patch_create("P", ["be1", "nl1"])
        assert ei.value.code == "forbidden"
    with secure.client("tech") as c:
        c.patch_create("P", ["be1", "nl1"])              # technicians: patches and keying
        c.key("lu1", 0.1)
        with pytest.raises(GatewayError) as ei:
            c.reload()
        assert ei.value.code == "forbidden"
    with secure.client("boss") as c:
        with pytest.raises(GatewayError) as ei:
            c.reload()
        assert ei.value.code == "unavailable"            # allowed, but nothing to reload
        assert [p["name"] for p in c.patches()] == ["P"]
    audit = [(r["user"], r["type"], r["outcome"]) for r in read_audit(secure.audit)]
    assert audit == [("obs", "port.gain.set", "forbidden"), ("op", "port.gain.set", "ok"),
                     ("op", "port.profile.set", "ok"), ("op", "patch.create", "forbidden"),
                     ("tech", "patch.create", "ok"), ("tech", "port.key", "ok"),
                     ("tech", "site.reload", "forbidden"), ("boss", "site.reload", "unavailable")]


def test_a_key_not_on_the_allow_list_cannot_connect(secure: Secure, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    zmq.auth.create_certificates(str(other), "mallory")
    pub, sec = zmq.auth.load_certificate(str(other / "mallory.key_secret"))
    srv_pub, _ = zmq.auth.load_certificate(str(secure.keys / "server.key"))
    assert sec is not None
    c = GatewayClient(secure.srv.endpoint, curve=(pub, sec, srv_pub), timeout=0.5, retries=1)
    with pytest.raises(GatewayTimeout):
        c.status()
    c.close()
    assert secure.srv.zap.refused >= 1
    # without CURVE at all: the handshake never completes either
    plain = GatewayClient(secure.srv.endpoint, timeout=0.5, retries=0)
    with pytest.raises(GatewayTimeout):
        plain.status()
    plain.close()
    with secure.client("obs") as c:                        # the server is unharmed
        assert c.status()["role"] == "observer"


def test_a_revoked_key_is_refused_at_once(secure: Secure) -> None:
    c = secure.client("tech", timeout=0.5)
    assert c.status()["role"] == "technician"
    (secure.keys / "tech.key").unlink()                   # revoke: the connection is open
    with pytest.raises(GatewayError) as ei:
        c.patch_create("P", ["be1", "nl1"])
    assert ei.value.code == "forbidden"
    c.close()
    last = read_audit(secure.audit)[-1]
    assert (last["user"], last["role"], last["outcome"]) == ("tech", "revoked", "forbidden")


def test_events_need_an_allowed_key_too(secure: Secure) -> None:
    with secure.client("obs") as c:
        it = c.events(timeout=1.5, include_heartbeats=True)
        assert next(it)["topic"] == "state.snapshot"
        assert any(ev.get("topic") == "hb" for ev in it)
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    sub.connect(secure.srv.pub_endpoint)                   # no CURVE: never gets a frame
    assert not sub.poll(1500)
    sub.close(0)
