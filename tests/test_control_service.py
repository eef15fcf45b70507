"""The control plane on the service layer: a real site file (memory ports), ``open_control``
restoring state before the first tick, live profile switches through the site's profiles,
and ``site.reload`` validated first and applied all or nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from brug.gateway.control.client import GatewayClient, GatewayError
from brug.gateway.control.server import ControlServer
from brug.gateway.control.service_adapter import open_control
from brug.gateway.service import Gateway
from brug.gateway.site import load_site

SITE = """\
control: {rep: "tcp://127.0.0.1:*", pub: "tcp://127.0.0.1:*", state_file: state.json,
          audit_log: audit.jsonl}
ports:
  a: {type: memory, profile: vox-radio, network: be_astrid, talkgroup: BE-TAC3}
  b: {type: memory, network: nl_c2000, talkgroup: NL-OPS2, squelch: {type: vox}}
  c: {type: memory, profile: vox-radio}
patches:
  P: {members: [a, b]}
"""


class Running:
    def __init__(self, site: Path) -> None:
        self.gw = Gateway(load_site(site))
        srv = open_control(self.gw)
        assert srv is not None
        self.srv: ControlServer = srv
        self.gw.start()
        self.client = GatewayClient(srv.endpoint, srv.pub_endpoint)

    def close(self) -> None:
        self.client.close()
        self.srv.stop()
        self.gw.stop()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(SITE)
    return p


@pytest.fixture
def running(site: Path) -> Iterator[Running]:
    r = Running(site)
    yield r
    r.close()


def test_lists_come_from_the_site_and_bundled_profiles(running: Running) -> None:
    c = running.client
    assert [p["name"] for p in c.ports()] == ["a", "b", "c"]
    assert "vox-radio" in {p["name"] for p in c.profiles()}
    assert {(t["network"], t["talkgroup"]) for t in c.talkgroups()} == {
        ("be_astrid", "BE-TAC3"), ("nl_c2000", "NL-OPS2")}


def test_profile_switch_uses_the_bundled_profile(running: Running) -> None:
    c = running.client
    r = c.set_profile("c", "ip-console-pcma")
    assert r == {"port": "c", "profile": "ip-console-pcma", "previous": "vox-radio"}
    assert {p["name"]: p for p in c.ports()}["c"]["profile"] == "ip-console-pcma"
    with pytest.raises(GatewayError) as ei:
        c.set_profile("c", "no-such-profile")
    assert ei.value.code == "unknown_profile" and "vox-radio" in ei.value.message


def test_reload_is_all_or_nothing(running: Running, site: Path) -> None:
    c = running.client
    c.set_profile("c", "ip-console-pcma")
    site.write_text(SITE.replace("members: [a, b]", "members: [a, zz]"))
    with pytest.raises(GatewayError) as ei:
        c.reload()
    assert ei.value.code == "bad_request" and "site.yaml:8" in ei.value.message
    assert c.patches()[0]["members"] == ["a", "b"]
    assert {p["name"]: p for p in c.ports()}["c"]["profile"] == "ip-console-pcma"
    site.write_text(SITE.replace("members: [a, b]", "members: [a, b, c]"))
    r = c.reload()
    assert r["patches"] == ["P"] and r["ports_replaced"] == ["c"]
    assert c.patches()[0]["members"] == ["a", "b", "c"]
    assert {p["name"]: p for p in c.ports()}["c"]["profile"] == "vox-radio"
    site.write_text(SITE + "  Q: {members: [c, a]}\n")
    with pytest.raises(GatewayError):       # a is in P already: refused, P unchanged
        c.reload()
    assert [p["name"] for p in c.patches()] == ["P"]


def test_state_survives_a_restart(site: Path) -> None:
    r = Running(site)
    try:
        r.client.patch_delete("P")
        r.client.patch_create("NIGHT", ["b", "c"], mode="full_duplex")
        r.client.set_profile("a", "ip-console-pcma")
    finally:
        r.close()
    state = json.loads((site.parent / "state.json").read_text())
    assert list(state["patches"]) == ["NIGHT"]
    r = Running(site)           # the site file still says P = [a, b]
    try:
        snap = r.client.snapshot()
        assert list(snap["patches"]) == ["NIGHT"]
        assert snap["patches"]["NIGHT"]["mode"] == "full_duplex"
        assert snap["ports"]["a"]["profile"] == "ip-console-pcma"
    finally:
        r.close()
