"""Wire format, body validation, audit log and state-file handling (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brug.gateway.control.audit import AuditLog, read_audit
from brug.gateway.control.persist import (
    StateFileError,
    load_state,
    restore_state,
    save_state,
    state_from_snapshot,
)
from brug.gateway.control.protocol import (
    MAX_MESSAGE,
    ProtocolError,
    get_names,
    get_num,
    get_str,
    make_reply,
    make_request,
    pack,
    parse_request,
    peek_id,
    role_rank,
)


def test_request_round_trip() -> None:
    req = parse_request(make_request("abc", "patch.create", {"name": "P", "members": ["a"]}))
    assert (req.id, req.type, req.body, req.version) == (
        "abc", "patch.create", {"name": "P", "members": ["a"]}, 1)
    assert parse_request(b'{"id":"x","type":"status"}').body == {}


@pytest.mark.parametrize("data,code,text", [
    (b"nope", "bad_request", "not UTF-8 JSON"),
    (b"\xc3\x28", "bad_request", "not UTF-8 JSON"),
    (b"[]", "bad_request", "JSON object"),
    (b'{"type":"status"}', "bad_request", "id must be"),
    (b'{"id":"","type":"status"}', "bad_request", "id must be"),
    (b'{"id":"x"}', "bad_request", "type must be"),
    (b'{"id":"x","type":"status","version":2}', "bad_request", "version 2 not supported"),
    (b'{"id":"x","type":"status","version":true}', "bad_request", "not supported"),
    (b'{"id":"x","type":"status.reply"}', "bad_request", "is a reply"),
    (b'{"id":"x","type":"status","body":3}', "bad_request", "body must be"),
    (b'{"id":"x","type":"status","extra":1}', "bad_request", "unknown envelope keys: extra"),
    (b'{"id":"x","type":"status","body":{"v":Infinity}}', "bad_request", "not JSON"),
    (b" " * (MAX_MESSAGE + 1), "too_large", "exceeds 65536 bytes"),
])
def test_bad_envelopes_are_refused_with_a_code(data: bytes, code: str, text: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_request(data)
    assert ei.value.code == code and text in ei.value.message


def test_reply_carries_id_and_exactly_one_of_result_or_error() -> None:
    ok = json.loads(make_reply("r1", "status", result={"a": 1}))
    assert ok == {"id": "r1", "type": "status.reply", "version": 1, "result": {"a": 1}}
    err = json.loads(make_reply(None, None, error=ProtocolError("bad_request", "x")))
    assert err == {"id": None, "type": "error.reply", "version": 1,
                   "error": {"code": "bad_request", "message": "x"}}
    assert peek_id(b'{"id":"k9","type":7}') == "k9" and peek_id(b"{") is None


def test_pack_refuses_what_is_not_json_and_escapes_surrogates() -> None:
    with pytest.raises(ValueError):
        pack({"x": float("nan")})
    with pytest.raises(TypeError):
        pack({"x": object()})
    assert json.loads(pack({"id": "\ud800"}))["id"] == "\ud800"


def test_body_helpers_name_the_field() -> None:
    with pytest.raises(ProtocolError, match=r"body.port is required"):
        get_str({}, "port")
    with pytest.raises(ProtocolError, match=r"body.rx_db must be a number in -60..30"):
        get_num({"rx_db": 31}, "rx_db", lo=-60, hi=30)
    with pytest.raises(ProtocolError, match=r"body.rx_db"):
        get_num({"rx_db": True}, "rx_db")
    with pytest.raises(ProtocolError, match=r"names a port twice"):
        get_names({"members": ["a", "a"]}, "members")
    assert get_num({}, "x", required=False) is None
    assert role_rank("admin") > role_rank("technician") > role_rank("operator") > \
        role_rank("observer") > role_rank("nobody")


def test_audit_log_appends_and_survives_reopen(tmp_path: Path) -> None:
    p = tmp_path / "a" / "audit.jsonl"
    log = AuditLog(p)
    log.write(user="alice", role="technician", type_="patch.create", body={"name": "P"},
              outcome="ok", request_id="1")
    log.close()
    log = AuditLog(p)
    log.write(user="bob", role="observer", type_="patch.delete", body={"name": "P"},
              outcome="forbidden", message="needs technician", request_id="2")
    log.close()
    recs = read_audit(p)
    assert [(r["user"], r["outcome"]) for r in recs] == [("alice", "ok"), ("bob", "forbidden")]
    assert recs[1]["message"] == "needs technician" and recs[0]["ts"].endswith("+00:00")


def test_state_file_is_replaced_atomically_and_validated(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    snap = {"ports": {"a": {"profile": "x", "talkgroup": "T", "rx_gain_db": 1.0,
                            "tx_gain_db": 0.0, "rx_mute": False, "tx_mute": True}},
            "patches": {"P": {"members": ["a", "b"], "mode": "half_duplex", "priorities": {}}}}
    save_state(p, state_from_snapshot(snap, {"a": "T2"}))
    save_state(p, state_from_snapshot(snap, {"a": "T3"}))
    state = load_state(p)
    assert state is not None and state["ports"]["a"]["talkgroup"] == "T3"
    assert [f.name for f in tmp_path.iterdir()] == ["state.json"]
    p.write_text("{broken")
    with pytest.raises(StateFileError, match="cannot read state file"):
        load_state(p)
    p.write_text('{"schema": "other"}')
    with pytest.raises(StateFileError, match="schema"):
        load_state(p)
    assert load_state(tmp_path / "none.json") is None


def test_restore_skips_what_no_longer_fits(tmp_path: Path) -> None:
    from brug.gateway.control.local import memory_gateway

    p = tmp_path / "state.json"
    p.write_text(json.dumps({"schema": "brug-control-state/1",
                             "ports": {"gone": {"profile": "mem-a"},
                                       "a": {"profile": "mem-b", "rx_gain_db": -2.0}},
                             "patches": {"P": {"members": ["a", "gone"]},
                                         "Q": {"members": ["a", "b"], "mode": "full_duplex"}}}))
    gw = memory_gateway(["a", "b"])
    warnings = restore_state(p, gw)
    assert len(warnings) == 2
    assert "ports.gone: no such port" in warnings[0] and "patches.P" in warnings[1]
    snap = gw.engine.snapshot()
    assert list(snap["patches"]) == ["Q"] and snap["ports"]["a"]["profile"] == "mem-b"
