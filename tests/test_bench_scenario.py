"""Traffic scenarios and the port plan: what `brug bench` reads before replaying anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brug.bench.plan import default_plan, technology_kind
from brug.bench.scenario import BUNDLED_SCENARIO, ScenarioError, load_scenario
from brug.bench.squelch import ScriptedSquelch
from brug.gateway.cli import main


def test_bundled_scenario_loads_from_the_repo_copy() -> None:
    sc = load_scenario(BUNDLED_SCENARIO)
    assert len(sc.transmissions) == 37
    assert sc.patch_members == ("be_astrid/BE-TAC3", "nl_c2000/NL-OPS2", "be_blm/BLM-JOINT",
                                "port_vhf/PORT-CH1")
    # every file it names is bundled (a fresh clone needs no shared corpus)
    for tx in sc.transmissions:
        assert tx.file.is_file() and tx.file.is_relative_to(BUNDLED_SCENARIO.parent)
    x, fs = sc.audio(sc.transmissions[3])
    assert fs == 48000 and abs(len(x) / fs - 4.0) < 0.01
    readme = (BUNDLED_SCENARIO.parent / "README.md").read_text()
    for tx in sc.transmissions:     # origin and licence line per file
        rel = tx.file.relative_to(BUNDLED_SCENARIO.parent).as_posix()
        line = next(ln for ln in readme.splitlines() if f"`{rel}`" in ln)
        assert "|" in line and ("CC" in line or "GPL" in line or "BSD" in line or "ARCTIC" in line)


def _write(tmp: Path, mutate) -> Path:
    data = yaml.safe_load(BUNDLED_SCENARIO.read_text())
    data["audio_root"] = str(BUNDLED_SCENARIO.parent)
    mutate(data)
    p = tmp / "s.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.mark.parametrize("mutate, where, text", [
    (lambda d: d["transmissions"][2].update(talkgroup="BE-TAC9"),
     "transmissions[2].talkgroup", "is not one of network 'be_astrid'"),
    (lambda d: d["transmissions"][4].update(end_s=1.0), "transmissions[4].end_s",
     "must be after start_s"),
    (lambda d: d["transmissions"][5].update(file="clean/8k/nope.wav"), "transmissions[5].file",
     "cannot open audio file"),
    (lambda d: d["transmissions"][0].update(file="clean/48k/arctic_a0007.wav"),
     "transmissions[0].file", "is 48000 Hz but network 'be_astrid' plays 8000 Hz"),
    (lambda d: d["patch"].update(members=["be_astrid/BE-TAC3", "xx/YY"]), "patch.members[1]",
     "is not a network/talkgroup"),
    (lambda d: d.update(schema="radio-traffic-script/2"), "schema", "schema must be"),
    (lambda d: d["transmissions"][1].pop("start_s"), "transmissions[1]",
     "missing required key 'start_s'"),
])
def test_mistakes_name_file_line_and_field(tmp_path: Path, mutate, where: str, text: str) -> None:
    p = _write(tmp_path, mutate)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    msg = str(ei.value)
    assert msg.startswith("s.yaml:") or "s.yaml:" in msg
    assert where in msg and text in msg
    assert ei.value.line > 0


def test_cli_prints_one_line_for_a_bad_scenario(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, lambda d: d["transmissions"][2].update(network="fr_acropol"))
    rc = main(["bench", "replay", str(p), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "transmissions[2].network" in err[0] and "unknown network 'fr_acropol'" in err[0]


def test_cli_names_the_ports_when_the_clock_is_no_port(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "replay", "--out", str(tmp_path / "o"), "--quiet", "--clock", "be1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "--clock" in err[0] and "'be1' is no port" in err[0] and "nl_c2000.NL-OPS2" in err[0]


def test_loop_and_stretch_keep_overs_and_overlaps() -> None:
    sc = load_scenario(BUNDLED_SCENARIO)
    lp = sc.looped(3)
    assert len(lp.transmissions) == 111
    assert lp.transmissions[37].start_s == pytest.approx(sc.transmissions[0].start_s
                                                         + sc.total_duration_s)
    assert lp.transmissions[40].id == "tx004@1"
    st = sc.stretched(2.0)
    by = {t.id: t for t in st.transmissions}
    orig = {t.id: t for t in sc.transmissions}
    # durations unchanged, silence doubled, a simultaneous key-up stays 100 ms apart
    assert all(by[k].duration_s == pytest.approx(orig[k].duration_s) for k in by)
    assert by["tx008"].start_s - by["tx007"].start_s == pytest.approx(0.1)
    assert by["tx002"].start_s - by["tx001"].end_s == pytest.approx(2 * 0.8)
    assert st.total_duration_s > sc.total_duration_s


def test_default_plan_one_port_per_pair_with_technology_defaults() -> None:
    plan = default_plan(load_scenario(BUNDLED_SCENARIO))
    names = [p.name for p in plan.ports]
    assert names == ["be_astrid.BE-DISP", "be_astrid.BE-TAC3", "be_blm.BLM-JOINT",
                     "nl_c2000.NL-OPS2", "port_vhf.PORT-CH1"]
    assert "be_astrid.BE-DISP" not in plan.patch_members
    tetra, lte, fm = (plan.port(n) for n in ("nl_c2000.NL-OPS2", "be_blm.BLM-JOINT",
                                             "port_vhf.PORT-CH1"))
    assert tetra.scripted and tetra.settings.ptt.lead_ms == 300
    assert lte.scripted and lte.settings.ptt.lead_ms == 150 and lte.device_rate_hz == 48000
    assert not fm.scripted and fm.settings.squelch.type == "vox"
    assert fm.settings.ptt.lead_ms <= 50
    assert technology_kind("TETRA (ASTRID)") == "tetra"
    assert technology_kind("LTE MCPTT (wideband)") == "lte"
    assert technology_kind("analog FM VHF conventional") == "analog"
    assert technology_kind("smoke signals") is None


def test_scripted_squelch_follows_the_schedule_and_repeats() -> None:
    sq = ScriptedSquelch([(100, 200, "call A"), (150, 300, "call B")], period=1000)
    seen = [(t, sq.state(t)[0]) for t in range(0, 2000, 50)]
    opened = [t for t, o in seen if o]
    assert opened == [100, 150, 200, 250, 1100, 1150, 1200, 1250]
    assert sq.state(1120) == (True, "call A")


SITE = """\
engine: {rate_hz: 16000, block_ms: 5}
ports:
  be1: {profile: astrid-mtm5400, device: brug_be1, network: be_astrid, talkgroup: BE-TAC3,
        pei: {port: /dev/null}}
  nl1: {profile: c2000-mtm5400, device: brug_nl1, network: nl_c2000, talkgroup: NL-OPS2,
        pei: {port: /dev/null}}
patches:
  OP: {members: [be1, nl1], priorities: {be1: 2}}
"""


def test_site_file_maps_pairs_to_ports_profiles_and_the_patch(tmp_path: Path) -> None:
    from brug.bench.plan import site_plan
    from brug.bench.replay import quantize_period, replay_offline

    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    sc = quantize_period(load_scenario(BUNDLED_SCENARIO).truncated(12.0))
    plan = site_plan(sc, site)
    assert plan.patch_members == ("be1", "nl1") and plan.priorities == {"be1": 2}
    be1 = plan.port("be1")
    assert be1.pair == "be_astrid/BE-TAC3" and be1.scripted       # PEI COR -> scripted
    assert be1.settings.ptt.lead_ms == 400                        # from the TETRA profile
    assert not plan.port("be_blm.BLM-JOINT").in_patch            # unmapped: default port
    m = replay_offline(plan, tmp_path / "o", quality=False, progress=False)
    heard = {(r["id"], d["dest"]) for r in m["transmissions"] for d in r["deliveries"]
             if d["forwarded"]}
    assert heard == {("tx001", "nl1"), ("tx002", "be1"), ("tx003", "nl1")}
    assert m["run"]["ports_outside_patch"]["be_blm.BLM-JOINT"]["ok"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(SITE.replace("NL-OPS2", "NL-OPS9"))
    with pytest.raises(ScenarioError, match=r"bad.yaml:\d+: ports.nl1: .*'nl_c2000/NL-OPS9'"):
        site_plan(sc, bad)
