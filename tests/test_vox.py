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


@pytest.mark.parametrize("db", [-40.0, -46.0, -60.0, -33.3, -120.0, 0.0])
def test_linear_threshold_is_exactly_the_db_comparison(db: float) -> None:
    from brug.gateway.vox import _sum_threshold, frame_level_db

    f = FS // 1000
    thr = _sum_threshold(db, f)
    near = np.array([np.nextafter(thr, -np.inf), thr, np.nextafter(thr, np.inf),
                     thr * (1 - 1e-9), thr * (1 + 1e-9)])
    near = near[near >= 0]
    assert np.array_equal(frame_level_db(near, f) >= db, near >= thr)


def test_meter_reads_every_port_without_vox() -> None:
    # no port on VOX: nothing is decided, but the meter still shows each port's last frame
    v = VoxBank(FS, 2)
    x = np.zeros((2, 80), np.float32)
    x[0] = level(-20, 80 / FS)
    assert v.process(0, x) == []
    assert v.level_db[0] == pytest.approx(-20, abs=0.5)
    assert v.level_db[1] == -120.0


def test_attack_counts_from_when_vox_is_enabled() -> None:
    v = VoxBank(FS, 1)
    loud = level(-20, 0.2)[None, :]
    assert v.process(0, loud[:, :1600]) == []          # VOX off: a loud line does not open
    v.configure(0, open_dbfs=-40, close_dbfs=-46, attack_ms=10, hang_ms=300)
    opened = v.process(1600, loud[:, 1600:])
    assert [(e.t, e.open) for e in opened] == [(1600 + 10 * 16, True)]
