"""GatewayClient (Lazy Pirate retries, reply matching) and ``brug ctl`` output, against a
real server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brug.gateway.cli import main
from brug.gateway.client import GatewayClient, GatewayTimeout
from brug.gateway.control.local import LocalGateway, memory_gateway
from brug.gateway.control.server import ControlServer, ControlSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    def __init__(self, tmp: Path, rep: str = "tcp://127.0.0.1:*") -> None:
        self.gw: LocalGateway = memory_gateway(["be1", "nl1", "lu1"])
        self.gw.run()
        self.srv = ControlServer(self.gw, ControlSettings(
            rep=rep, pub="tcp://127.0.0.1:*", audit_log=tmp / "audit.jsonl"))

    def close(self) -> None:
        self.srv.stop()
        self.gw.shutdown()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    r.srv.start()
    yield r
    r.close()


def test_lazy_pirate_retries_until_the_gateway_comes_up(tmp_path: Path) -> None:
    port = free_port()
    r = Rig(tmp_path, rep=f"tcp://127.0.0.1:{port}")
    client = GatewayClient(f"tcp://127.0.0.1:{port}", timeout=0.3, retries=20)
    timer = threading.Timer(0.8, r.srv.start)
    timer.start()
    try:
        t0 = time.monotonic()
        st = client.status()                  # sent before the server exists
        assert st["running"]
        assert client.reconnects >= 1 and time.monotonic() - t0 >= 0.6
    finally:
        timer.join()
        client.close()
        r.close()


def test_timeout_after_the_retry_limit() -> None:
    client = GatewayClient(f"tcp://127.0.0.1:{free_port()}", timeout=0.2, retries=2)
    t0 = time.monotonic()
    with pytest.raises(GatewayTimeout, match="after 3 attempts"):
        client.status()
    assert 0.55 <= time.monotonic() - t0 < 2.0
    assert client.reconnects == 3
    client.close()


def ctl(rig: Rig, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["ctl", "--endpoint", rig.srv.endpoint, "--events", rig.srv.pub_endpoint,
               *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_ctl_commands_print_readable_output(rig: Rig, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    rc, out, _ = ctl(rig, capsys, "status")
    assert rc == 0 and "you are loopback (admin)" in out and "ticks" in out
    rc, out, _ = ctl(rig, capsys, "patch", "create", "OP-HARBOUR", "be1", "nl1",
                     "--priority", "be1=2")
    assert out.strip() == "patch OP-HARBOUR: be1 + nl1 (half_duplex)"
    rc, out, _ = ctl(rig, capsys, "patches")
    assert out.splitlines()[0].split() == ["NAME", "MODE", "MEMBERS", "HOLDER", "BLOCKED"]
    assert out.splitlines()[1].split()[:3] == ["OP-HARBOUR", "half_duplex", "be1,nl1"]
    rc, out, _ = ctl(rig, capsys, "profile", "lu1", "mem-b")
    assert out.strip() == "lu1: profile mem-a -> mem-b"
    rc, out, _ = ctl(rig, capsys, "--json", "ports")
    ports = json.loads(out)
    assert [p["profile"] for p in ports] == ["mem-a", "mem-a", "mem-b"]
    rc, out, _ = ctl(rig, capsys, "key", "lu1", "0.5")
    assert out.strip() == "lu1 keyed for 0.5 s"
    rc, out, _ = ctl(rig, capsys, "gain", "be1", "--rx", "-4")
    assert json.loads(out)["rx_db"] == -4.0
    rc, out, _ = ctl(rig, capsys, "patch", "delete", "OP-HARBOUR")
    assert out.strip() == "patch OP-HARBOUR deleted"


def test_ctl_errors_are_one_line(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = ctl(rig, capsys, "patch", "create", "X", "be1", "zz")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "brug: error: patch.create: unknown_port: no port named 'zz'; ports: be1, nl1, lu1"]
    rc, out, err = ctl(rig, capsys, "key", "be1", "45")
    assert rc == 2 and "bad_request" in err and "Traceback" not in err


def test_ctl_watch_shows_snapshot_then_events(rig: Rig, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    threading.Timer(0.3, lambda: GatewayClient(rig.srv.endpoint).key("be1", 0.2)).start()
    rc, out, _ = ctl(rig, capsys, "watch", "--topic", "port.be1", "--count", "3")
    lines = out.splitlines()
    assert lines[0].startswith("== snapshot seq ") and "3 ports" in lines[0]
    assert "port.be1.manual" in lines[1] and "port.be1.ptt on=True" in lines[2]


def test_ctl_keys_new_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    assert main(["ctl", "--keys-dir", str(keys), "keys", "new", "alice", "--role",
                 "technician"]) == 0
    assert "alice.key" in capsys.readouterr().out
    assert (keys / "alice.key_secret").exists() and (keys / "server.key").exists()
    assert main(["ctl", "--keys-dir", str(keys), "keys", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["alice", "technician"]
    assert main(["ctl", "--keys-dir", str(keys), "keys", "new", "alice", "--role",
                 "observer"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_night_shift_example_runs_and_is_idempotent(rig: Rig) -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "night_shift.py"
    spec = importlib.util.spec_from_file_location("night_shift", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lines: list[str] = []
    with GatewayClient(rig.srv.endpoint) as gw:
        gw.patch_create("DAY-BE-NL", ["be1", "nl1"])
        setattr(mod, "NIGHT_PROFILES", {"lu1": "mem-b"})  # noqa: B010
        mod.night_shift(gw, lines.append)
        assert [p["name"] for p in gw.patches()] == ["NIGHT-ALL"]
        assert gw.patches()[0]["members"] == ["be1", "nl1", "lu1"]
        assert {p["name"]: p for p in gw.ports()}["lu1"]["profile"] == "mem-b"
        lines.clear()
        mod.night_shift(gw, lines.append)              # second run changes nothing
        assert not any("profile" in x or "patch" in x for x in lines)


def test_event_stream_reports_a_dead_gateway_and_resyncs_after_restart(tmp_path: Path
                                                                        ) -> None:
    p1, p2 = free_port(), free_port()
    eps = dict(rep=f"tcp://127.0.0.1:{p1}", pub=f"tcp://127.0.0.1:{p2}", heartbeat_s=0.2,
               time_to_dead_s=0.6)
    gw = memory_gateway(["be1", "nl1"])
    gw.run()
    srv = ControlServer(gw, ControlSettings(**eps))
    srv.start()
    client = GatewayClient(f"tcp://127.0.0.1:{p1}", f"tcp://127.0.0.1:{p2}", timeout=0.5,
                           retries=10)
    it = client.events(timeout=5.0, include_heartbeats=True)
    first = next(it)
    assert first["topic"] == "state.snapshot"
    epoch = first["data"]["epoch"]
    for ev in it:                                  # a heartbeat tells time_to_dead
        if ev["topic"] == "hb":
            assert ev["time_to_dead"] == 0.6
            break
    srv.stop()                                     # the gateway's control plane goes away
    topics = []
    for ev in it:
        topics.append(ev["topic"])
        if ev["topic"] == "server.dead":
            break
    assert topics[-1] == "server.dead"
    srv = ControlServer(gw, ControlSettings(**eps))
    srv.start()                                    # back, with a new epoch
    try:
        for ev in it:
            if ev["topic"] == "state.snapshot":
                assert ev["data"]["epoch"] != epoch
                break
        else:
            pytest.fail("no resync after the restart")
    finally:
        client.close()
        srv.stop()
        gw.shutdown()
