"""Talkgroup catalogues and patch plans: bundled ones load; mistakes name file, line, key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brug.talkgroups.catalogue import CATALOGUE_DIR, CatalogueError, load_catalogue


def test_bundled_catalogues_and_plans() -> None:
    cat = load_catalogue()
    assert set(cat.networks) == {"be_astrid", "nl_c2000", "lu_renita", "be_blm", "port_vhf"}
    astrid = cat.networks["be_astrid"]
    assert (astrid.country, astrid.technology, astrid.mcc) == ("BE", "tetra", 206)
    assert cat.networks["nl_c2000"].mcc == 204 and cat.networks["lu_renita"].mcc == 270
    for ref in ("be_astrid/BE-TAC3", "be_astrid/BE-DISP", "nl_c2000/NL-OPS2",
                "lu_renita/LU-INT1", "be_blm/BLM-JOINT", "port_vhf/PORT-CH1"):
        tg = cat.resolve(ref)
        assert tg.ref == ref and tg.illustrative
    assert cat.resolve("port_vhf/PORT-CH1").gssi is None       # analog: no GSSI
    harbour = cat.plan("OP-HARBOUR")
    assert harbour.members == (("be_astrid", "BE-TAC3"), ("nl_c2000", "NL-OPS2"),
                               ("be_blm", "BLM-JOINT"), ("port_vhf", "PORT-CH1"))
    assert ("be_astrid", "BE-DISP") not in harbour.members     # dispatch stays private
    assert cat.plan("OP-BENELUX").members[2] == ("lu_renita", "LU-INT1")


def test_bundled_plan_matches_the_bench_traffic_script() -> None:
    import yaml

    scripts = list(Path(__file__).parent.parent.glob("bench/traffic/*.yaml"))
    if not scripts:
        pytest.skip("no bundled traffic script")
    script = yaml.safe_load(scripts[0].read_text())
    cat = load_catalogue()
    members = tuple(tuple(m.split("/")) for m in script["patch"]["members"])
    assert cat.plan(script["patch"]["id"]).members == members


def test_unknown_talkgroup_lists_known_ones() -> None:
    with pytest.raises(CatalogueError, match=r"nl_c2000/NL-OPS9 is not a talkgroup of "
                                             r"nl_c2000; known: NL-MK, NL-OPS1"):
        load_catalogue().resolve("nl_c2000/NL-OPS9")


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "cat"
    shutil.copytree(CATALOGUE_DIR, d)
    return d


@pytest.mark.parametrize(("file", "old", "new", "expect"), [
    ("plans.yaml", "nl_c2000/NL-OPS2, be_blm", "nl_c2000/NL-OPS9, be_blm",
     r"plans.yaml:8: plans.OP-HARBOUR.members\[1\]: nl_c2000/NL-OPS9 is not a talkgroup"),
    ("plans.yaml", "+ lu_renita/LU-INT1", "+ xx_net/LU-INT1",
     r"plans.yaml:\d+: plans.OP-BENELUX.members: unknown network 'xx_net'; known: be_astrid"),
    ("plans.yaml", "mode: half_duplex", "mode: simplex",
     r"plans.yaml:7: plans.OP-HARBOUR.mode: mode='simplex' is not one of"),
    ("nl_c2000.yaml", "gssi: 2040202", "gssi: 2040201",
     r"nl_c2000.yaml:16: talkgroups\[2\].gssi: gssi 2040201 is also NL-OPS1"),
    ("lu_renita.yaml", "mcc: 270", "mcc: 2700",
     r"lu_renita.yaml:11: network.mcc: mcc=2700 is out of range"),
    ("be_astrid.yaml", "technology: tetra", "technology: tetraa",
     r"be_astrid.yaml:11: network.technology: technology='tetraa' is not one of"),
    ("be_astrid.yaml", "{alias: BE-TAC1, gssi: 2060101", "{alias: BE-TAC1, gssi: 20601xx",
     r"be_astrid.yaml:16: talkgroups\[1\].gssi: gssi='20601xx' must be int"),
    ("be_blm.yaml", "country: BE", "country: Belgium",
     r"be_blm.yaml:9: network.country: country='Belgium' must be an ISO 3166 code"),
    ("port_vhf.yaml", "talkgroups:", "talkgroups: [\n",
     r"port_vhf.yaml:\d+: YAML syntax error"),
])
def test_catalogue_mistakes(tmp_path: Path, file: str, old: str, new: str,
                            expect: str) -> None:
    d = _copy(tmp_path)
    f = d / file
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new, 1))
    with pytest.raises(CatalogueError, match=expect) as ei:
        load_catalogue(d)
    assert "\n" not in str(ei.value)
