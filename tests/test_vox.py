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


def _reference(x: np.ndarray, settings: list[dict[str, float]], disable_at: dict[int, int],
               frame: int = 16) -> list[tuple[int, int, bool]]:
    """The VOX rules frame by frame and port by port, in plain Python: (port, t, open)."""
    from brug.gateway.vox import _sum_threshold

    out = []
    for i, s in enumerate(settings):
        open_sum = _sum_threshold(s["open_dbfs"], frame)
        close_sum = _sum_threshold(s["close_dbfs"], frame)
        attack, hang = round(s["attack_ms"]), round(s["hang_ms"])
        is_open, loud, quiet = False, 0, 0
        for k in range(x.shape[1] // frame):
            e = float(np.sum(np.square(x[i, k * frame:(k + 1) * frame], dtype=np.float64)))
            loud = loud + 1 if e >= open_sum else 0
            quiet = quiet + 1 if e < close_sum else 0
            t = (k + 1) * frame
            enabled = t <= disable_at.get(i, 1 << 40)
            if is_open and (not enabled or quiet >= hang):
                is_open, loud = False, 0
                out.append((i, t, False))
            elif not is_open and enabled and loud >= attack:
                is_open, quiet = True, 0
                out.append((i, t, True))
    return sorted(out, key=lambda e: (e[1], not e[2], e[0]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bank_of_ports_matches_the_rules_frame_by_frame(seed: int) -> None:
    """Four ports with their own thresholds and times, speech-like bursts hovering around the
    thresholds, odd block sizes, and one port's VOX switched off while it is open: every edge
    (port, sample, direction) is the one the rules give, port by port and frame by frame."""
    rng = np.random.default_rng(seed)
    settings = [dict(open_dbfs=-40, close_dbfs=-46, attack_ms=10, hang_ms=300),
                dict(open_dbfs=-30, close_dbfs=-30, attack_ms=1, hang_ms=20),
                dict(open_dbfs=-45, close_dbfs=-55, attack_ms=3, hang_ms=50),
                dict(open_dbfs=-35, close_dbfs=-42, attack_ms=25, hang_ms=5)]
    n = FS * 6
    x = np.zeros((4, n), np.float32)
    for row in x:
        pos = 0
        while pos < n:
            length = int(rng.integers(16, 6000))
            db = rng.uniform(-60, -20)
            row[pos:pos + length] = 10 ** (db / 20) * rng.standard_normal(min(length, n - pos))
            pos += length + int(rng.integers(0, 4000))
    want = _reference(x, settings, {})
    # switch port 0's VOX off while it is open: it closes at the next frame
    opens0 = [t for i, t, o in want if i == 0 and o]
    assert opens0, "the signal never opens port 0"
    off_at = (opens0[0] // 160 + 1) * 160      # a block boundary after its first opening
    want = _reference(x, settings, {0: off_at})
    v = VoxBank(FS, 4)
    for i, s in enumerate(settings):
        v.configure(i, **s)
    got = []
    pos = 0
    sizes = [1, 7, 80, 160, 33, 480]
    k = 0
    while pos < n:
        b = sizes[k % len(sizes)]
        k += 1
        if pos < off_at < pos + b:
            b = off_at - pos
        if pos == off_at:
            v.configure(0, **settings[0], enabled=False)
        got += [(e.port, e.t, e.open) for e in v.process(pos, x[:, pos:pos + b])]
        pos += b
    assert len(want) > 40
    assert got == want


def test_hang_counts_from_the_frame_after_the_opening_one() -> None:
    """A burst exactly as long as the attack, then silence: the quiet run that closes the
    port starts after the frame that opened it, so it closes one hang after the opening."""
    v = VoxBank(FS, 1)
    v.configure(0, open_dbfs=-40, close_dbfs=-46, attack_ms=10, hang_ms=30)
    x = np.zeros(FS // 2, np.float32)
    x[:160] = level(-20, 160 / FS)       # 10 frames of 1 ms: exactly the attack
    got = [(e.t, e.open) for e in v.process(0, x[None, :])]
    assert got == [(160, True), (160 + 30 * 16, False)]
