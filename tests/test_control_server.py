"""Control server over real ZeroMQ sockets on loopback, against the real engine (MemoryPorts
on the real-time clock). Endpoints use random free ports (``tcp://127.0.0.1:*``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import zmq

from brug.gateway.control.audit import read_audit
from brug.gateway.control.client import GatewayClient, GatewayError
from brug.gateway.control.local import LocalGateway, memory_gateway
from brug.gateway.control.persist import restore_state
from brug.gateway.control.protocol import MAX_MESSAGE, make_request
from brug.gateway.control.server import ControlConfigError, ControlServer, ControlSettings

PORTS = ["be1", "nl1", "lu1", "fm1"]
RATE = 16000


def settings(tmp: Path, **kw: Any) -> ControlSettings:
    base: dict[str, Any] = dict(rep="tcp://127.0.0.1:*", pub="tcp://127.0.0.1:*",
                                audit_log=tmp / "audit.jsonl", state_file=tmp / "state.json",
                                record_dir=tmp / "rec", heartbeat_s=0.2)
    base.update(kw)
    return ControlSettings(**base)


class Rig:
    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.tmp = tmp
        self.gw: LocalGateway = memory_gateway(
            PORTS, talkgroups=[{"network": "be_astrid", "name": "BE-TAC3", "gssi": 2003}])
        self.gw.run()
        self.srv = ControlServer(self.gw, settings(tmp, **kw))
        self.srv.start()
        self.client = GatewayClient(self.srv.endpoint, self.srv.pub_endpoint, timeout=2.0)

    def close(self) -> None:
        self.client.close()
        self.srv.stop()
        self.gw.shutdown()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def feed(gw: LocalGateway, port: str, x: np.ndarray) -> None:
    """Append receive audio to a MemoryPort between ticks (thread-safe)."""
    gw.engine.submit(lambda e: e.port_object(port).feed(x)).result(2.0)


def chirp(seconds: float, level: float = 0.25) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    f0, f1 = 300.0, 3000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    return (level * np.sin(phase)).astype(np.float32)


def test_loopback_mode_status_and_lists(rig: Rig) -> None:
    st = rig.client.status()
    assert st["user"] == "loopback" and st["role"] == "admin"
    assert st["running"] and st["ticks"] > 0 and st["protocol"] == 1
    names = [p["name"] for p in rig.client.ports()]
    assert names == PORTS
    assert {p["name"] for p in rig.client.profiles()} == {"mem-a", "mem-b"}
    assert rig.client.talkgroups()[0]["name"] == "BE-TAC3"
    assert rig.client.patches() == []


def test_every_state_command_changes_the_engine_and_is_audited(rig: Rig) -> None:
    c = rig.client
    c.patch_create("OP-HARBOUR", ["be1", "nl1"], priorities={"be1": 2})
    snap = c.snapshot()
    assert snap["patches"]["OP-HARBOUR"]["members"] == ["be1", "nl1"]
    assert snap["patches"]["OP-HARBOUR"]["priorities"] == {"be1": 2}
    c.patch_add_member("OP-HARBOUR", "lu1", priority=1)
    c.patch_set_priority("OP-HARBOUR", "nl1", 5)
    c.patch_set_mode("OP-HARBOUR", "full_duplex")
    p = c.patches()[0]
    assert p["members"] == ["be1", "nl1", "lu1"] and p["mode"] == "full_duplex"
    assert p["priorities"]["nl1"] == 5
    c.patch_remove_member("OP-HARBOUR", "lu1")
    assert c.patches()[0]["members"] == ["be1", "nl1"]
    c.set_gain("fm1", rx_db=-6.0, tx_db=3.0)
    c.set_mute("fm1", tx=True)
    port = {p["name"]: p for p in c.ports()}["fm1"]
    assert port["rx_gain_db"] == pytest.approx(-6.0) and port["tx_gain_db"] == pytest.approx(3.0)
    assert port["tx_mute"] and not port["rx_mute"]
    r = c.set_profile("lu1", "mem-b")
    assert r["previous"] == "mem-a"
    assert {p["name"]: p for p in c.ports()}["lu1"]["profile"] == "mem-b"
    r = c.set_talkgroup("lu1", "LU-RESCUE")
    assert r["via"] == "record"
    assert {p["name"]: p for p in c.ports()}["lu1"]["talkgroup"] == "LU-RESCUE"
    c.key("fm1", 0.2, tone_hz=1000.0)
    c.patch_delete("OP-HARBOUR")
    assert c.patches() == []
    types = [r["type"] for r in read_audit(rig.tmp / "audit.jsonl")]
    assert types == ["patch.create", "patch.member.add", "patch.priority.set", "patch.mode.set",
                     "patch.member.remove", "port.gain.set", "port.mute.set",
                     "port.profile.set", "port.talkgroup.set", "port.key", "patch.delete"]
    assert all(r["outcome"] == "ok" and r["user"] == "loopback"
               for r in read_audit(rig.tmp / "audit.jsonl"))


def test_manual_key_transmits_and_has_a_mandatory_limit(rig: Rig) -> None:
    c = rig.client
    with pytest.raises(GatewayError) as ei:
        c.request("port.key", {"port": "fm1"})
    assert ei.value.code == "bad_request"
    with pytest.raises(GatewayError) as ei:
        c.key("fm1", 31.0)
    assert ei.value.code == "bad_request"
    c.key("fm1", 0.3, tone_hz=1000.0)
    deadline = time.monotonic() + 3
    seen = False
    while time.monotonic() < deadline:
        if c.snapshot()["ports"]["fm1"]["ptt"]:
            seen = True
            break
        time.sleep(0.01)
    assert seen
    tx = rig.gw.engine.port_object("fm1").tx
    assert np.max(np.abs(tx)) > 0.05   # the test tone went out


@pytest.mark.parametrize("type_,body,code", [
    ("patch.create", {"name": "X", "members": ["be1", "zz9"]}, "unknown_port"),
    ("patch.create", {"name": "X", "members": ["be1"], "mode": "simplex"}, "bad_request"),
    ("patch.create", {"name": "X", "members": "be1"}, "bad_request"),
    ("patch.delete", {"name": "nope"}, "unknown_patch"),
    ("patch.member.add", {"patch": "nope", "port": "be1"}, "unknown_patch"),
    ("port.gain.set", {"port": "be1", "rx_db": 99}, "bad_request"),
    ("port.gain.set", {"port": "be1"}, "bad_request"),
    ("port.gain.set", {"port": "be1", "rx_db": 1, "oops": 1}, "bad_request"),
    ("port.mute.set", {"port": "be1", "rx": "yes"}, "bad_request"),
    ("port.profile.set", {"port": "be1", "profile": "no-such"}, "unknown_profile"),
    ("port.profile.set", {"port": "zz", "profile": "mem-b"}, "unknown_port"),
    ("port.key", {"port": "be1", "seconds": 0}, "bad_request"),
    ("record.stop", {}, "conflict"),
    ("site.reload", {}, "unavailable"),
    ("no.such.type", {}, "unknown_type"),
    ("status", {"x": 1}, "bad_request"),
])
def test_refusals_have_stable_codes_and_change_nothing(rig: Rig, type_: str,
                                                        body: dict[str, Any], code: str) -> None:
    before = rig.client.snapshot()
    msg = rig.client.request_raw(type_, body)
    assert msg["error"]["code"] == code and msg["error"]["message"]
    assert msg["type"] == f"{type_}.reply" and "result" not in msg
    after = rig.client.snapshot()
    assert after["patches"] == before["patches"]
    strip = ("rx_level_dbfs", "stats", "delay_ms")
    assert ({n: {k: v for k, v in p.items() if k not in strip} for n, p in after["ports"].items()}
            == {n: {k: v for k, v in p.items() if k not in strip}
                for n, p in before["ports"].items()})


def test_conflicts(rig: Rig) -> None:
    c = rig.client
    c.patch_create("A", ["be1", "nl1"])
    with pytest.raises(GatewayError) as ei:
        c.patch_create("B", ["nl1", "lu1"])
    assert ei.value.code == "conflict"
    with pytest.raises(GatewayError) as ei:
        c.patch_create("A", ["lu1", "fm1"])
    assert ei.value.code == "conflict"
    with pytest.raises(GatewayError) as ei:
        c.patch_remove_member("A", "nl1")     # would leave one member
    assert ei.value.code == "conflict"
    audit = read_audit(rig.tmp / "audit.jsonl")
    assert [r["outcome"] for r in audit] == ["ok", "conflict", "conflict", "conflict"]


def raw_dealer(rig: Rig) -> zmq.Socket[bytes]:
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.rcvtimeo = 2000
    s.connect(rig.srv.endpoint)
    return s


def test_malformed_oversized_and_out_of_order_messages_get_error_replies(rig: Rig) -> None:
    s = raw_dealer(rig)
    cases: list[tuple[list[bytes], str, str | None]] = [
        ([b"not json"], "bad_request", None),
        ([b"\xff\xfe"], "bad_request", None),
        ([b"[1,2]"], "bad_request", None),
        ([json.dumps({"id": "a1", "type": "status", "version": 7}).encode()], "bad_request", "a1"),
        ([json.dumps({"id": "a2", "type": "status.reply", "result": {}}).encode()],
         "bad_request", "a2"),
        ([json.dumps({"id": "a3", "type": "status", "body": [1]}).encode()], "bad_request", "a3"),
        ([make_request("a4", "status"), b"extra"], "bad_request", None),
        ([json.dumps({"id": "a5", "type": "status", "body": {"pad": "x" * MAX_MESSAGE}}).encode()],
         "too_large", None),
        ([b'{"id":"a6","type":"status","body":{"x":NaN}}'], "bad_request", "a6"),
        ([b"[" * 100000 + b"]" * 100000], "too_large", None),
        ([b"[" * 5000 + b"]" * 5000], "bad_request", None),
    ]
    for frames, code, rid in cases:
        s.send_multipart(frames)
        reply = json.loads(s.recv())
        assert reply["error"]["code"] == code, (frames[0][:40], reply)
        assert reply["id"] == rid
    assert rig.client.status()["running"]     # still serving
    s.close(0)


def test_req_socket_works_too(rig: Rig) -> None:
    s: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    s.linger = 0
    s.rcvtimeo = 2000
    s.connect(rig.srv.endpoint)
    s.send(make_request("r1", "status"))
    reply = json.loads(s.recv())
    assert reply["id"] == "r1" and reply["result"]["running"]
    s.close(0)


def test_a_retried_change_is_applied_once(rig: Rig) -> None:
    s = raw_dealer(rig)
    req = make_request("same-id", "patch.create", {"name": "P", "members": ["be1", "nl1"]})
    s.send(req)
    first = json.loads(s.recv())
    s.send(req)                                  # Lazy-Pirate resend of the same request
    second = json.loads(s.recv())
    assert first == second and "result" in first
    assert len([r for r in read_audit(rig.tmp / "audit.jsonl")
                if r["type"] == "patch.create"]) == 1
    s.close(0)


def test_flood_is_rate_limited_per_client(tmp_path: Path) -> None:
    r = Rig(tmp_path, rate_per_s=20.0, burst=10.0)
    try:
        s = raw_dealer(r)
        for i in range(50):
            s.send(make_request(f"f{i}", "status"))
        codes = [json.loads(s.recv()).get("error", {}).get("code") for _ in range(50)]
        assert codes.count(None) >= 10 and codes.count("rate_limited") >= 30
        # another client is not starved by the first one's flood
        assert r.client.status()["running"]
        s.close(0)
    finally:
        r.close()


def test_late_subscriber_gets_a_consistent_snapshot(rig: Rig) -> None:
    c = rig.client
    c.patch_create("P", ["be1", "nl1"])
    c.key("fm1", 0.6)
    time.sleep(0.1)                          # fm1 is keyed when the late joiner arrives
    late = GatewayClient(rig.srv.endpoint, rig.srv.pub_endpoint)
    it = late.events(timeout=2.0)
    first = next(it)
    assert first["topic"] == "state.snapshot"
    snap = first["data"]
    assert snap["seq"] == first["seq"] > 0
    assert snap["patches"]["P"]["members"] == ["be1", "nl1"]
    ptt = snap["ports"]["fm1"]["ptt"]
    last = first["seq"]
    for ev in it:
        if ev["topic"] == "state.snapshot":
            ptt = ev["data"]["ports"]["fm1"]["ptt"]
            last = ev["seq"]
            continue
        assert ev["seq"] == last + 1         # nothing lost, nothing repeated
        last = ev["seq"]
        if ev["topic"] == "port.fm1.ptt":
            ptt = ev["data"]["on"]
            if not ptt:
                break
    assert ptt is False                      # snapshot + events = the final state
    assert rig.client.snapshot()["ports"]["fm1"]["ptt"] is False
    late.close()


def test_a_sequence_gap_triggers_a_resync(rig: Rig) -> None:
    it = rig.client.events(timeout=2.0)
    assert next(it)["topic"] == "state.snapshot"

    def skip(e: Any) -> None:
        rig.srv.publisher.seq += 7           # as if 7 events were lost on the way

    rig.gw.engine.submit(skip).result(2.0)
    topics = []
    for ev in it:
        topics.append(ev["topic"])
        if ev["topic"] == "state.snapshot":
            break
    assert topics[-1] == "state.snapshot"


def test_heartbeat_carries_time_to_dead_and_seq(rig: Rig) -> None:
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.rcvtimeo = 3000
    sub.subscribe(b"hb")
    sub.connect(rig.srv.pub_endpoint)
    topic, data = sub.recv_multipart()
    hb = json.loads(data)
    assert topic == b"hb" and hb["time_to_dead"] == 3.0 and "seq" in hb and hb["running"]
    sub.close(0)


def test_level_meters_are_published_at_about_5_hz(rig: Rig) -> None:
    feed(rig.gw, "be1", chirp(2.0))
    it = rig.client.events(("port.be1.level",), timeout=2.0)
    next(it)
    t0, levels = time.monotonic(), []
    for ev in it:
        if ev["topic"] == "port.be1.level":
            levels.append(ev["data"]["rx_dbfs"])
        if time.monotonic() - t0 > 1.0:
            break
    assert 3 <= len(levels) <= 8
    assert max(levels) == pytest.approx(20 * np.log10(0.25 / np.sqrt(2)), abs=1.5)


def test_profile_switch_leaves_other_ports_flowing_without_a_gap(rig: Rig) -> None:
    c, eng = rig.client, rig.gw.engine
    c.patch_create("P", ["be1", "nl1"])
    x = chirp(2.5)
    rx = np.concatenate([np.zeros(RATE // 5, np.float32), x, np.zeros(RATE // 2, np.float32)])
    nl1 = eng.port_object("nl1")
    start = eng.submit(lambda e: (e.port_object("be1").feed(rx), len(nl1.tx))
                       ).result(2.0)[1]
    time.sleep(0.6)
    switches = 0
    for prof in ("mem-b", "mem-a", "mem-b", "mem-a"):
        c.set_profile("lu1", prof)           # the device of lu1 is replaced four times
        switches += 1
        time.sleep(0.15)
    deadline = time.monotonic() + 5
    while len(nl1.tx) - start < len(rx) + RATE // 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert switches == 4
    y = nl1.tx[start:]
    # find the constant delay of the over, then demand sample-exact continuity: a gap,
    # a repeated or dropped block would break the match somewhere in 2.5 s of chirp
    n = len(x)
    corr = np.correlate(y[: len(rx) + RATE // 2], x[:RATE // 4], mode="valid")
    k = int(np.argmax(corr))
    seg = y[k:k + n]
    assert len(seg) == n
    np.testing.assert_allclose(seg, x, atol=2e-3)
    snap = c.snapshot()
    assert snap["ports"]["lu1"]["profile"] == "mem-a"
    assert snap["patches"]["P"]["members"] == ["be1", "nl1"]


def test_recording_writes_per_port_wavs(rig: Rig) -> None:
    c = rig.client
    feed(rig.gw, "be1", chirp(0.5))
    r = c.record_start(["be1", "nl1"])
    assert Path(r["dir"]).is_dir()
    with pytest.raises(GatewayError) as ei:
        c.record_start()
    assert ei.value.code == "conflict"
    time.sleep(0.4)
    out = c.record_stop()
    names = sorted(Path(f).name for f in out["files"])
    assert names == ["be1.rx.wav", "be1.tx.wav", "nl1.rx.wav", "nl1.tx.wav"]
    data, fs = sf.read(Path(r["dir"]) / "be1.rx.wav")
    assert fs == RATE and len(data) > 0.2 * RATE and np.max(np.abs(data)) > 0.2
    assert out["seconds"] > 0.2


def test_changes_persist_and_restore_before_the_first_tick(rig: Rig, tmp_path: Path) -> None:
    c = rig.client
    c.patch_create("OP", ["be1", "nl1", "lu1"], mode="full_duplex", priorities={"lu1": 3})
    c.set_profile("fm1", "mem-b")
    c.set_gain("nl1", rx_db=-3.0)
    c.set_talkgroup("be1", "BE-TAC3")
    state = json.loads((rig.tmp / "state.json").read_text())
    assert state["patches"]["OP"]["members"] == ["be1", "nl1", "lu1"]
    assert not list(rig.tmp.glob(".state.json.*"))       # no temp file left behind
    # a fresh gateway (the restart) gets it all back before it ticks
    gw2 = memory_gateway(PORTS)
    gw2.engine.create_patch("SITE", ["fm1", "lu1"])       # the site file's patch
    warnings = restore_state(rig.tmp / "state.json", gw2)
    assert warnings == []
    snap = gw2.engine.snapshot()
    assert snap["ticks"] == 0
    assert list(snap["patches"]) == ["OP"]
    assert snap["patches"]["OP"]["mode"] == "full_duplex"
    assert snap["patches"]["OP"]["priorities"] == {"lu1": 3}
    assert snap["ports"]["fm1"]["profile"] == "mem-b"
    assert snap["ports"]["nl1"]["rx_gain_db"] == pytest.approx(-3.0)
    assert gw2.talkgroup_overrides == {"be1": "BE-TAC3"}


def test_site_reload_is_validated_first(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    applied: list[str] = []

    class BadSite(ValueError):
        user_error = True

    def reloader() -> dict[str, Any]:
        text = site.read_text()
        if "patches" not in text:
            raise BadSite(f"{site}:1: patches: missing")
        applied.append(text)
        return {"applied": True}

    r = Rig(tmp_path)
    try:
        r.gw._reloader = reloader
        site.write_text("ports: {}\n")
        msg = r.client.request_raw("site.reload")
        assert msg["error"]["code"] == "bad_request" and "not applied" in msg["error"]["message"]
        assert applied == []
        site.write_text("ports: {}\npatches: {}\n")
        assert r.client.reload() == {"applied": True}
        assert [a["outcome"] for a in read_audit(tmp_path / "audit.jsonl")] == \
            ["bad_request", "ok"]
    finally:
        r.close()


def test_loopback_mode_refuses_a_public_bind(tmp_path: Path) -> None:
    gw = memory_gateway(["a", "b"])
    with pytest.raises(ControlConfigError, match="not loopback"):
        ControlServer(gw, ControlSettings(rep="tcp://0.0.0.0:*", pub="tcp://127.0.0.1:*"))


def test_settings_from_site_mapping(tmp_path: Path) -> None:
    s = ControlSettings.from_mapping({"rep": "tcp://127.0.0.1:6000", "keys_dir": "keys",
                                      "allow_loopback_without_keys": False}, base=tmp_path)
    assert s.keys_dir == tmp_path / "keys" and s.curve()
    with pytest.raises(ControlConfigError, match="control: unknown key"):
        ControlSettings.from_mapping({"rpe": "x"})
    with pytest.raises(ControlConfigError, match="control.rate_per_s"):
        ControlSettings.from_mapping({"rate_per_s": -1})
