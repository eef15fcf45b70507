"""Soaks: loops of the scenario on the virtual clock, measured loop by loop in fixed buffers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brug.bench.soak import LoopBuffer
from brug.gateway.cli import main


def test_loop_buffer_places_samples_by_absolute_index() -> None:
    b = LoopBuffer(10)
    b(np.arange(7, dtype=np.float32))
    b(np.arange(7, 12, dtype=np.float32))          # 3 samples spill into the next loop
    assert b.buf.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    b.advance()
    b(np.ones(4, np.float32))
    assert b.buf[:6].tolist() == [0, 0, 1, 1, 1, 1]  # the spilled 3 were the loop's first


def test_short_soak_passes_and_keeps_memory_flat(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "soak"
    rc = main(["bench", "soak", "--seconds", "20", "--hours", "0.04", "--out", str(out),
               "--no-quality", "--quiet"])
    text = capsys.readouterr()
    m = json.loads((out / "metrics.json").read_text())
    assert rc == 0, text.err
    assert "soak PASS" in text.out
    assert m["verdict"] == {"status": "PASS", "failures": []}
    assert len(m["loops"]) == 8                   # 144 s in 20 s loops, rounded up
    # every loop forwards the same deliveries with the same latency (deterministic engine)
    heard = {lp["summary"]["forwarded"] for lp in m["loops"]}
    onset = {lp["summary"]["latency_onset_ms"]["median"] for lp in m["loops"]}
    assert len(heard) == 1 and heard.pop() >= 12 and len(onset) == 1
    assert all(lp["lost_vs_first_loop"] == [] for lp in m["loops"])
    r = m["run"]["resources"]
    assert r["rss_growth_after_warmup_mb"] < 2.0
    assert (out / "report.md").exists() and (out / "soak.png").exists()


def test_soak_fails_loudly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # an impossible memory budget must turn into a failing exit status and a clear message
    rc = main(["bench", "soak", "--seconds", "12", "--hours", "0.01", "--out",
               str(tmp_path / "s"), "--no-quality", "--quiet", "--max-rss-growth-mb", "-1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "brug bench soak: FAIL: memory: resident set grew" in err
