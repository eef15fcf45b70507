"""Hardware profiles: bundled ones load, malformed ones give one clear line each."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brug.hw_profiles import (
    PTT_PARAMS,
    SQUELCH_PARAMS,
    ConfigError,
    list_profiles,
    load_profile,
    load_yaml,
    merge_overrides,
)

BAD = Path(__file__).parent / "data" / "profiles_bad"
BAD_FILES = sorted(BAD.glob("*.yaml"))


def _expect(path: Path) -> tuple[int, str]:
    m = re.match(r"# expect: (\d+) (.*)", path.read_text().splitlines()[0])
    assert m, f"{path.name} lacks an '# expect: LINE TEXT' header"
    return int(m.group(1)), m.group(2)


def test_bundled_profiles_all_load() -> None:
    names = list_profiles()
    for needed in ("astrid-mtm5400", "c2000-mtm5400", "renita-srg3900", "analog-cm108",
                   "vox-radio", "ip-console-pcma", "sim-tetra"):
        assert needed in names
    for name in names:
        p = load_profile(name)
        assert p.name == name
        d = p.to_port_dict()
        assert d["squelch"]["type"] == p.squelch.type and d["ptt"]["type"] == p.ptt.type


def test_tetra_profiles_carry_pei_and_network_differences() -> None:
    astrid = load_profile("astrid-mtm5400")
    c2000 = load_profile("c2000-mtm5400")
    renita = load_profile("renita-srg3900")
    assert astrid.pei and astrid.pei.baud == 115200 and "AT+CTSP=1,1,11" in astrid.pei.init
    assert renita.pei and renita.pei.baud == 38400
    assert c2000.timing.ptt_lead_ms > astrid.timing.ptt_lead_ms  # extends overrides one key
    assert c2000.audio == astrid.audio
    ip = load_profile("ip-console-pcma")
    assert ip.codec and ip.codec.name == "pcma" and ip.codec.payload_type == 8


def test_profile_types_match_the_driver_registry() -> None:
    from brug.gateway import signalling

    # every type a profile may name has a driver (the engine may have more, e.g. schedule)
    assert set(SQUELCH_PARAMS) <= set(signalling.squelch_types())
    assert set(PTT_PARAMS) <= set(signalling.ptt_types())


def test_at_least_twenty_bad_profiles() -> None:
    assert len(BAD_FILES) >= 20


@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_profile_gives_file_line_and_key(path: Path) -> None:
    line, text = _expect(path)
    with pytest.raises(ConfigError) as ei:
        load_profile(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{ei.value.path}:{line}: "), msg
    assert path.name in ei.value.path
    assert text in msg, msg


def test_profiles_check_cli_one_line_exit_2() -> None:
    bad = BAD / "squelch_type_typo.yaml"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "brug.gateway.cli", "profiles", "check",
                        "hw_profiles/profiles/astrid-mtm5400.yaml", str(bad)],
                       capture_output=True, text=True, env=env, timeout=60,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert "squelch_type_typo.yaml:7: squelch.type='vux' is not one of:" in err[0]
    assert "serial_cts" in err[0] and "pei" in err[0]
    assert "astrid-mtm5400" in r.stdout and "ok" in r.stdout


def test_profiles_list_cli() -> None:
    r = subprocess.run([sys.executable, "-m", "brug.gateway.cli", "profiles", "list"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "renita-srg3900" in r.stdout and "38400" in r.stdout


def test_extends_keeps_parent_values_and_overrides_levels(tmp_path: Path) -> None:
    f = tmp_path / "my-site-astrid.yaml"
    f.write_text("extends: astrid-mtm5400\naudio:\n  rx_level_dbfs: -24\n")
    p = load_profile(f)
    base = load_profile("astrid-mtm5400")
    assert p.audio.rx_level_dbfs == -24 and p.audio.tx_level_dbfs == base.audio.tx_level_dbfs
    assert p.pei == base.pei and p.name == "my-site-astrid"


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match=r"circular"):
        load_profile(tmp_path / "a.yaml")


def test_unknown_profile_name_lists_bundled() -> None:
    with pytest.raises(ConfigError, match="astrid-mtm5400"):
        load_profile("no-such")


SITE = """\
ports:
  be1:
    profile: astrid-mtm5400
    network: be_astrid
    device: brug_be1
    squelch:
      type: vux
  nl1:
    profile: analog-cm108
    device: brug_nl1
    ptt: {lead_ms: 90, gpio: 4}
    squelch: {hang_ms: 50}
"""


def test_merge_overrides_names_the_site_file(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    data, pos = load_yaml(site)
    nl = merge_overrides(load_profile("analog-cm108"), data["ports"]["nl1"], str(site), pos,
                         "ports.nl1")
    assert nl.audio.device == "brug_nl1" and nl.timing.ptt_lead_ms == 90
    assert nl.ptt.params["gpio"] == 4 and nl.squelch.params["hang_ms"] == 50
    assert nl.squelch.params["input"] == "vol_down"          # kept from the profile
    with pytest.raises(ConfigError) as ei:
        merge_overrides(load_profile("astrid-mtm5400"), data["ports"]["be1"], str(site), pos,
                        "ports.be1")
    assert str(ei.value).startswith(f"{ei.value.path}:7: ports.be1.squelch.type='vux' is "
                                    "not one of:")
    assert ei.value.path.endswith("site.yaml")


def test_merge_overrides_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ports.x.devise.*valid keys"):
        merge_overrides(load_profile("vox-radio"), {"devise": "x"}, "site.yaml", {},
                        "ports.x")


def test_merge_error_on_an_inherited_key_points_into_the_profile() -> None:
    """Lowering open_dbfs below the profile's close_dbfs: the clash is reported where
    close_dbfs is written (the bundled vox-radio file), with both values."""
    with pytest.raises(ConfigError) as ei:
        merge_overrides(load_profile("vox-radio"), {"squelch": {"open_dbfs": -50}},
                        "site.yaml", {}, "ports.v1")
    line = next(i for i, t in enumerate(
        (Path(load_profile("vox-radio").source)).read_text().splitlines(), 1)
        if "close_dbfs" in t)
    assert ei.value.path.endswith("vox-radio.yaml") and ei.value.line == line
    assert "close_dbfs=-42.0 must not be above squelch.open_dbfs=-50" in str(ei.value)
