"""VOX squelch: hysteresis, attack, hang, and decisions independent of block size."""

from __future__ import annotations

import numpy as np
import pytest

from brug.gateway.vox import VoxBank

FS = 16000


def level(dbfs: float, seconds: float, f: float = 700.0) -> np.ndarray:
    n = int(FS * seconds)
    amp = 10 ** (dbfs / 20) * np.sqrt(2)
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / FS)).astype(np.float32)


def edges(x: np.ndarray, block: int, **cfg: float) -> list[tuple[int, bool]]:
    v = VoxBank(FS, 1)
    v.configure(0, **{"open_dbfs": -40, "close_dbfs": -46, "attack_ms": 10, "hang_ms": 300,
                      **cfg})
    out: list[tuple[int, bool]] = []
    for i in range(0, len(x), block):
        out += [(e.t, e.open) for e in v.process(i, x[None, i:i + block])]
    return out


def speechlike() -> np.ndarray:
    rng = np.random.default_rng(7)
    parts = [np.zeros(FS // 2, np.float32)]
    for _ in range(6):
        n = int(rng.integers(800, 8000))
        env = 10 ** (rng.uniform(-35, -10) / 20)
        parts.append((env * rng.standard_normal(n)).astype(np.float32))
        parts.append(np.zeros(int(rng.integers(300, 9000)), np.float32))
    return np.concatenate(parts)


@pytest.mark.parametrize("block", [1, 7, 80, 160, 480, 4096])
def test_vox_decisions_do_not_depend_on_block_size(block: int) -> None:
    x = speechlike()
    ref = edges(x, 80)
    assert len(ref) >= 4
    assert edges(x, block) == ref


def test_hysteresis_between_close_and_open_threshold() -> None:
    # -43 dBFS is between close (-46) and open (-40): it neither opens nor closes
    x = np.concatenate([level(-43, 1.0), level(-30, 0.2), level(-43, 1.0), level(-60, 0.5)])
    e = edges(x, 80)
    assert [o for _, o in e] == [True, False]
    t_open, t_close = e[0][0], e[1][0]
    assert abs(t_open - (FS + 10 * 16)) <= 16            # 10 ms attack after the step up
    assert abs(t_close - (int(2.2 * FS) + 300 * 16)) <= 16  # 300 ms hang after it falls below


def test_burst_shorter_than_attack_does_not_open() -> None:
    x = np.concatenate([np.zeros(1600, np.float32), level(-20, 0.006), np.zeros(8000, np.float32)])
    assert edges(x, 80, attack_ms=10) == []
    assert edges(x, 80, attack_ms=5)[0][1] is True


def test_close_threshold_above_open_is_refused() -> None:
    with pytest.raises(ValueError, match="close threshold"):
        VoxBank(FS, 1).configure(0, open_dbfs=-40, close_dbfs=-30, attack_ms=10, hang_ms=100)
