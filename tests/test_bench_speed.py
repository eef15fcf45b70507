"""Offline speed of the 4-network scenario (run with --benchmark-enable for the figure).

With benchmarks disabled (the default suite) each function still runs once as a quick test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from brug.bench.plan import default_plan
from brug.bench.replay import quantize_period, replay_offline
from brug.bench.scenario import BUNDLED_SCENARIO, load_scenario


@pytest.mark.parametrize("block_ms", [5.0, 20.0])
def test_offline_replay_speed(benchmark, tmp_path: Path, block_ms: float) -> None:
    import dataclasses

    plan = default_plan(quantize_period(load_scenario(BUNDLED_SCENARIO).truncated(40.0)))
    plan = dataclasses.replace(plan, engine=dataclasses.replace(plan.engine, block_ms=block_ms))
    m = benchmark.pedantic(replay_offline, args=(plan, tmp_path),
                           kwargs={"quality": False, "progress": False}, rounds=1, iterations=1)
    t = m["timing"]
    benchmark.extra_info.update(x_real_time=t["speed_x"], engine_x_real_time=t["engine_speed_x"],
                                us_per_tick=t["us_per_tick"])
    assert m["summary"]["missed"] == 0 and m["summary"]["forwarded"] >= 20
