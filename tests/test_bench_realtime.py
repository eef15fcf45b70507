"""The first 15 s of the bundled scenario in real time: virtual sound cards, real PortAudio
streams on both sides (terminal and gateway), the engine on its real-time clock."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from brug.bench.plan import default_plan
from brug.bench.realtime import CARD_RATE_HZ, card_name, replay_realtime
from brug.bench.replay import quantize_period
from brug.bench.report import write_report
from brug.bench.scenario import BUNDLED_SCENARIO, load_scenario


def test_realtime_replay_through_virtual_sound_cards(soundcards, tmp_path: Path) -> None:
    sc = quantize_period(load_scenario(BUNDLED_SCENARIO).truncated(15.0))
    plan = default_plan(sc)
    assert card_name("be_astrid.BE-TAC3") == "be_astrid-BE-TAC3"
    m = replay_realtime(plan, tmp_path, quality=False, progress=False, cards=soundcards)
    write_report(m, tmp_path)
    assert m["mode"] == "realtime" and [r["id"] for r in m["transmissions"]] == [
        "tx001", "tx002", "tx003"]
    for p in plan.ports:      # what each terminal heard from the gateway, on the scenario clock
        info = sf.info(str(tmp_path / "tx" / f"{p.name}.wav"))
        assert info.samplerate == CARD_RATE_HZ and info.frames >= 15.0 * CARD_RATE_HZ
    events = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    holders = [e["data"]["holder"] for e in events if e["topic"] == "patch.OP-HARBOUR.floor"
               and e["data"].get("holder")]
    assert holders == ["be_astrid.BE-TAC3", "nl_c2000.NL-OPS2", "be_astrid.BE-TAC3"]
    # the scripted COR opened on the scenario clock: key-up + 40 ms
    first = next(e for e in events if e["topic"] == "port.be_astrid.BE-TAC3.cor")
    assert abs(first["t_s"] - 3.04) < 0.01
    s = m["summary"]
    assert s["leaked"] == 0
    assert not m["run"]["ports_outside_patch"]["be_astrid.BE-DISP"]["keyed_s"]
    # audio really went round: terminal -> PulseAudio -> gateway -> PulseAudio -> terminal
    heard = [d for r in m["transmissions"] for d in r["deliveries"] if d["forwarded"]]
    assert len(heard) >= 5, s
    assert all(20.0 <= d["latency_onset_ms"] <= 1500.0 for d in heard)
    assert (tmp_path / "report.md").exists()
