"""Site files: the minimal form works, profiles supply defaults, every mistake is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from brug.gateway.site import load_site, parse_site_text
from brug.hw_profiles.yamlconf import ConfigError

MINIMAL = Path(__file__).parent.parent / "gateway" / "sites" / "minimal.yaml"


def test_minimal_site_from_the_issue_loads() -> None:
    site = load_site(MINIMAL)
    assert site.engine.rate_hz == 16000 and site.engine.block == 80
    be1, nl1 = site.ports["be1"], site.ports["nl1"]
    assert (be1.input_device, be1.output_device, be1.rate_hz) == ("brug_be1", "brug_be1", 48000)
    assert nl1.settings.ptt.lead_ms == 300 and nl1.settings.squelch.type == "vox"
    assert site.patches["OP-TEST"].members == ("be1", "nl1")


def test_profile_supplies_defaults_and_inline_keys_override() -> None:
    site = parse_site_text("""
ports:
  nl1:
    profile: c2000-mtm5400
    device: {input: cap, output: play}
    network: nl_c2000
    talkgroup: NL-OPS2
    ptt: {lead_ms: 250}
  be1: {device: x, squelch: {type: vox}}
patches:
  P: {members: [nl1, be1], priorities: {nl1: 2}}
""", "site.yaml")
    nl1 = site.ports["nl1"]
    assert nl1.settings.profile == "c2000-mtm5400"
    assert nl1.settings.ptt.type == "pei" and nl1.settings.ptt.lead_ms == 250
    assert nl1.settings.ptt.tot_s > 0 and nl1.pei is not None
    assert (nl1.input_device, nl1.output_device) == ("cap", "play")
    assert site.patches["P"].priorities == {"nl1": 2}


def test_profile_filters_reach_the_port() -> None:
    """The analog profile's de-emphasis, voice band and squelch tail become the port's
    filters; a site may switch one off without copying the profile."""
    site = parse_site_text("""
ports:
  fm1: {profile: analog-cm108, device: x}
  fm2: {profile: analog-cm108, device: y, filters: {deemphasis: false}}
  ip1: {device: z}
""", "site.yaml")
    f1, f2 = site.ports["fm1"].settings.filters, site.ports["fm2"].settings.filters
    assert f1["deemphasis"] is True and f1["squelch_tail_ms"] == 150
    assert (f1["highpass_hz"], f1["lowpass_hz"]) == (300, 3000)
    assert f2["deemphasis"] is False and f2["squelch_tail_ms"] == 150
    assert site.ports["ip1"].settings.filters == {}     # inline ports are flat unless told


def test_the_engine_clock_names_a_sound_card_or_none() -> None:
    site = parse_site_text("engine: {clock: nl1}\nports:\n  be1: {device: x}\n"
                           "  nl1: {device: y}\n", "site.yaml")
    assert site.engine.clock == "nl1"
    assert parse_site_text("ports:\n  be1: {device: x}\n", "s.yaml").engine.clock == "none"


def test_agc_is_off_unless_a_port_asks() -> None:
    site = parse_site_text("""
ports:
  a: {device: x}
  b: {device: y, agc: true}
  c: {profile: c2000-mtm5400, device: z, agc: {target_dbfs: -20, max_gain_db: 12}}
""", "site.yaml")
    assert site.ports["a"].settings.agc is None and site.ports["b"].settings.agc == {}
    assert site.ports["c"].settings.agc == {"target_dbfs": -20.0, "max_gain_db": 12.0}


def test_buffers_reach_the_sound_card_port() -> None:
    """A site may trade margin for delay per card; what it sets is what the port opens."""
    from brug.gateway.ports.soundcard import (
        DEFAULT_LATENCY_S,
        DEFAULT_RX_MS,
        DEFAULT_TX_MS,
        SoundCardPort,
    )

    site = parse_site_text("""
ports:
  a: {device: x, buffers: {latency_ms: 10, tx_ms: 12}}
  b: {profile: c2000-mtm5400, device: y, buffers: {rx_ms: 20}}
  c: {device: z}
""", "site.yaml")
    a = SoundCardPort("a", 0, 0, **site.ports["a"].buffers)
    # what a port does not set keeps the port's default
    assert (a.latency, a.tx_setpoint, a.rx_setpoint) == (0.01, 12 * 48, DEFAULT_RX_MS * 48)
    assert SoundCardPort("b", 0, 0, **site.ports["b"].buffers).rx_setpoint == 20 * 48
    c = SoundCardPort("c", 0, 0, **site.ports["c"].buffers)
    assert (c.latency, c.tx_setpoint) == (DEFAULT_LATENCY_S, DEFAULT_TX_MS * 48)


BAD = [
    ("engine: {rate_hz: 16000, block_ms: 5}\nports:\n  be1: {device: x, squelch: {type: vux}}\n",
     "site.yaml:3: ports.be1.squelch.type: 'vux' is not one of:"),
    ("ports:\n  be1: {device: x, ptt: {type: rts}}\n", "site.yaml:2: ports.be1.ptt.type: 'rts'"),
    ("ports:\n  be1: {device: x}\n  nl1: {device: y}\npatches:\n  P: {members: [be1, zz]}\n",
     "site.yaml:5: patches.P.members[1]: unknown port 'zz'"),
    ("ports:\n  be1: {device: x}\npatches:\n  P: {members: [be1]}\n",
     "patches.P.members: a patch needs a list of at least 2"),
    ("ports:\n  be1: {network: be}\n", "site.yaml:2: ports.be1.device: a sound-card port needs"),
    ("engine: {rate_hz: 16000, block_ms: 5}\nports:\n  be1:\n    device: x\n    ptt:\n"
     "      lead_ms: -5\n", "site.yaml:6: ports.be1.ptt.lead_ms: -5 is outside"),
    ("engine: {rate_hz: 96000}\nports:\n  be1: {device: x}\n",
     "site.yaml:1: engine.rate_hz: 96000 is outside"),
    ("engine: {clock: nl1}\nports:\n  be1: {device: x}\n",
     "site.yaml:1: engine.clock: 'nl1' is not a sound-card port; give one of: be1, first, "
     "floor, none"),
    ("ports:\n  be1: {device: x, squelch: {type: vox, open_dbfs: -50, close_dbfs: -40}}\n",
     "ports.be1.squelch.close_dbfs: must not be above"),
    ("ports:\n  be1: {device: x, colour: red}\n",
     "site.yaml:2: ports.be1.colour: unknown port key"),
    ("ports:\n  be1: {device: x\n", "site.yaml"),
    ("ports:\n  a: {device: x}\n  b: {device: y}\n  c: {device: z}\npatches:\n"
     "  P: {members: [a, b]}\n  Q: {members: [b, c]}\n", "port 'b' is already in patch 'P'"),
    ("ports:\n  be1: {profile: no-such-radio, device: x}\n", "unknown profile 'no-such-radio'"),
    ("ports:\n  be1: {device: x, agc: {gain: 3}}\n",
     "site.yaml:2: ports.be1.agc.gain: unknown AGC key; valid keys: target_dbfs"),
    ("ports:\n  be1: {device: x, agc: {max_gain_db: 90}}\n",
     "ports.be1.agc.max_gain_db: 90 is outside"),
    ("ports:\n  be1: {device: x, filters: {hum: 50}}\n",
     "site.yaml:2: ports.be1.filters: unknown filter key 'hum'; valid keys:"),
    ("ports:\n  be1:\n    profile: analog-cm108\n    device: x\n    filters: {deemphasis: 3}\n",
     "site.yaml:5: ports.be1.filters.deemphasis"),
    ("ports:\n  be1: {device: x, buffers: {latency_ms: 1}}\n",
     "site.yaml:2: ports.be1.buffers.latency_ms: 1 is outside 2..200"),
    ("ports:\n  be1: {device: x, buffers: {tx: 5}}\n",
     "site.yaml:2: ports.be1.buffers.tx: unknown key; valid keys: latency_ms, rx_ms, tx_ms"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_mistakes_name_file_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_site_text(text, "site.yaml")
    assert message in str(err.value)


def test_brug_run_with_a_bad_site_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD[0][0])
    r = subprocess.run([sys.executable, "-m", "brug.gateway.cli", "run", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ports.be1.squelch.type" in lines[0] and ":3:" in lines[0]
    assert "Traceback" not in r.stderr
