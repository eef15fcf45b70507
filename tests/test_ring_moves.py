"""Where a sound-card port moves its rings: in the pauses, not inside the speech.

A ring that runs short grows its cushion and is levelled again; the levelling moves the ring
(zeros added, or audio left out), and a transmit ring that ran dry is refilled. Made at once,
those moves put 12-20 ms gaps inside words (docs/soundcards.md). Here the port's own read and
write run against a device that delivers and takes audio in PulseAudio-sized bursts on a
simulated clock, so where each move lands is exact: the tests check that the gaps inside a
tone are only the ones the device forced, and that the moves were made in the pause after it;
and that a transmit ring that ran dry keeps the delay step, so the same burst does not run it
dry again.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from brug.gateway.ports.soundcard import SoundCardPort

from helpers import noise

FS = 48000
ENGINE = 16000
BLOCK = 80            # 5 ms engine block
TICK = 240            # device samples per engine tick
CB = 160              # device frames per callback
BURST = 4             # callbacks PulseAudio delivers together


class BurstDevice(SoundCardPort):
    """A SoundCardPort whose device is the test: no PortAudio stream and no supervisor; the
    test calls the port's callbacks in bursts of ``BURST`` callbacks on a simulated clock."""

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _supervise(self) -> None:
        pass

    def capture(self, x: np.ndarray) -> None:
        """One burst of capture callbacks carrying ``x`` (device samples)."""
        for i in range(0, len(x), CB):
            self._in_callback(x[i:i + CB, None], CB, None, None)

    def play(self, n: int) -> np.ndarray:
        """``n`` frames of playback callbacks; returns what the device played."""
        out = np.zeros((n, 1), np.float32)
        for i in range(0, n, CB):
            self._out_callback(out[i:i + CB], CB, None, None)
        return out[:, 0]


def tone_with_pauses(rate: int, seconds: float, on: tuple[float, float]) -> np.ndarray:
    """A 1 kHz tone at -10 dBFS between ``on`` (s), silence elsewhere, at ``rate``."""
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    x[(t < on[0]) | (t >= on[1])] = 0.0
    return x


def zero_runs(y: np.ndarray, a: int, b: int, min_len: int = 8) -> list[tuple[int, int]]:
    """(start, length) of the runs of exact zeros at least ``min_len`` long in ``y[a:b]``."""
    z = np.concatenate([[False], y[a:b] == 0.0, [False]])
    edges = np.flatnonzero(z[1:] != z[:-1])
    return [(a + int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])
            if e - s >= min_len]


def gaps_in_tone(y: np.ndarray, rate: int, on: tuple[float, float], event_s: float,
                 near_s: float, tail_s: float = 0.0
                 ) -> tuple[int, int, list[tuple[int, int]], list[tuple[int, int]]]:
    """Find the tone of ``on`` (s) in the output ``y`` (at ``rate``) by where it first goes
    above -26 dBFS, and its runs of exact zeros from 10 ms after its start to ``tail_s`` after
    its end. Returns where the event at ``event_s`` and the tone's end are in ``y``, the runs
    within ``near_s`` of the event (the device's own gaps) and the others."""
    lag = int(np.argmax(np.abs(y) > 0.05)) - int(on[0] * rate)
    a, b = int(on[0] * rate) + lag + rate // 100, int(on[1] * rate) + lag
    event = int(event_s * rate) + lag
    runs = zero_runs(y, a, b + int(tail_s * rate))
    forced = [r for r in runs if abs(r[0] - event) < int(near_s * rate)]
    return event, b, forced, [r for r in runs if r not in forced]


def test_a_grown_receive_cushion_is_levelled_in_the_pause_not_in_the_speech() -> None:
    """Capture comes late once while a tone plays: the engine reads the ring short (that gap
    is the device's), the cushion grows, and the ring must gain what it lacks. It gains it
    after the tone, in the silence, instead of holding the engine's output at zeros half a
    second later in the middle of the tone."""
    port = BurstDevice("rx", 0, 0, rate_hz=FS)
    port.start(ENGINE, BLOCK)
    try:
        on = (3.0, 4.2)
        x = tone_with_pauses(FS, 7.0, on)
        late_at = int(3.1 * ENGINE / BLOCK)          # tick of the late capture, in the tone
        buf = np.zeros(BLOCK, np.float32)
        out: list[np.ndarray] = []
        fed, t, held = 0, 0, 0
        for tick in range(int(7.0 * ENGINE / BLOCK)):
            t += TICK
            if tick == late_at:
                held = 6 * TICK                       # 30 ms of capture arrives late
            due = t - held
            while fed + BURST * CB <= due and fed + BURST * CB <= len(x):
                port.capture(x[fed:fed + BURST * CB])
                fed += BURST * CB
            if tick == late_at + 8:
                held = 0
            port.read(buf)
            out.append(buf.copy())
        faults = port.poll_faults()
    finally:
        port.stop()
    # the engine-rate output (the tone's delay is the ring plus the resampler)
    late, _, forced, other = gaps_in_tone(np.concatenate(out), ENGINE, on, 3.1, 0.1)
    print(f"\nfaults {faults}; zero runs in the tone {forced + other} (late capture at {late}); "
          f"stats {port.stats.as_dict()}")
    assert any(k == "cushion_raised" for k, _ in faults), "the late capture grew no cushion"
    assert forced, "the late capture did not reach the engine as a gap"
    assert not other, f"a ring move left gaps inside the tone: {other}"
    assert port._rx_level.done, "the ring was not levelled again after the tone"


def test_a_dry_transmit_ring_is_refilled_in_the_pause_not_in_the_speech() -> None:
    """The playback stream takes what the ring holds and more for 30 ms while a tone plays:
    the ring runs dry (the device plays zeros for what it lacked: that gap is the device's),
    the cushion
    grows and the ring is refilled to it. The refill's zeros go out in the pause after the
    tone instead of as a second, longer gap inside it; the tone's samples all come out."""
    port = BurstDevice("tx", 0, 0, rate_hz=FS)
    port.start(ENGINE, BLOCK)
    try:
        on = (2.0, 3.2)
        x = tone_with_pauses(ENGINE, 4.5, on)
        burst_at = int(2.1 * ENGINE / BLOCK)          # tick of the large burst, in the tone
        played: list[np.ndarray] = []
        t, taken = 0, 0
        for tick in range(len(x) // BLOCK):
            port.write(x[tick * BLOCK:(tick + 1) * BLOCK])
            t += TICK
            if burst_at <= tick < burst_at + 6:
                # the server refills its own buffer after an underrun: for 30 ms it takes
                # every frame the ring holds and a callback more (those play as zeros)
                n = (port.tx.fill // CB + 1) * CB
                played.append(port.play(n))
                taken += n
            while taken + BURST * CB <= t:
                played.append(port.play(BURST * CB))
                taken += BURST * CB
            # the port tells a ring the engine refills at once (a stall) from one that stays
            # low by the wall clock (REPRIME_AFTER_BLOCKS): keep ticks a block apart
            time.sleep(BLOCK / ENGINE)
        faults = port.poll_faults()
    finally:
        port.stop()
    y = np.concatenate(played)
    early, b, forced, other = gaps_in_tone(y, FS, on, 2.1, 0.05, tail_s=0.1)
    loud = int(np.sum(np.abs(y) > 0.05)), int(np.sum(np.abs(x) > 0.05)) * FS // ENGINE
    print(f"\nfaults {faults}; zero runs in the tone {forced + other} (large burst at {early}); "
          f"samples above -26 dBFS played / sent {loud}; stats {port.stats.as_dict()}")
    assert any(k == "cushion_raised" and ": tx " in m for k, m in faults), \
        "the dry ring grew no cushion"
    assert forced, "the large burst did not run the ring dry"
    assert not [r for r in other if r[0] < b], f"a refill left gaps inside the tone: {other}"
    # and nothing of the tone was left out (a levelling down takes silence only)
    assert loud[0] >= loud[1] - FS // 1000, f"tone samples played / sent: {loud}"


@pytest.mark.parametrize("pause_dbfs", [None, -45.0], ids=["silent-pauses", "noisy-pauses"])
def test_a_burst_that_ran_the_transmit_ring_dry_once_does_not_again(
        pause_dbfs: float | None) -> None:
    """At 10, 20 and 30 s the playback stream takes two callbacks early (6 in one burst, 2 in
    the next: the same rate). The first time the ring runs dry by what it lacked, and the
    stream is that much later from then on. The port keeps that step as cushion, so the same
    burst finds the ring deep enough the next times (a drift loop pulling the fill back to its
    old average ran it dry at every one), and gives it back after a calm spell (here 30 s), in
    the pauses of the speech (a 1 kHz tone with a 100 ms pause every second). The pauses are
    digital silence, or background noise at -45 dBFS on the whole path: a fixed -50 dBFS
    pause level found no pause there, and the step stayed in the ring."""
    port = BurstDevice("st", 0, 0, rate_hz=FS, shrink_first_s=30.0, shrink_after_s=30.0)
    port.start(ENGINE, BLOCK)
    t_s = np.arange(75 * ENGINE) / ENGINE
    x = (0.3 * np.sin(2 * np.pi * 1000 * t_s)).astype(np.float32)
    x[t_s % 1.0 >= 0.9] = 0.0
    if pause_dbfs is not None:
        x += noise(ENGINE, len(x) / ENGINE, pause_dbfs, seed=7)
    base = port.tx_setpoint
    lacked: list[int] = []          # zeros played at each early burst, device samples
    cushions: list[int] = []        # the transmit cushion just after each early burst
    try:
        t, taken, nb = 0, 0, 0
        for tick in range(len(x) // BLOCK):
            port.write(x[tick * BLOCK:(tick + 1) * BLOCK])
            t += TICK
            while taken + BURST * CB <= t:
                nb += 1
                at = nb % 750 == 0 and nb <= 2250       # 10, 20, 30 s (750 bursts of 13.3 ms)
                after = nb % 750 == 1 and 1 < nb <= 2251
                before = port.tx.underrun_samples
                n = (BURST + 2) * CB if at else (BURST - 2) * CB if after else BURST * CB
                port.play(n)
                taken += n
                if at:
                    lacked.append(port.tx.underrun_samples - before)
                if after:
                    cushions.append(port.tx_setpoint)
        faults = port.poll_faults()
    finally:
        port.stop()
    print(f"\nzeros played at each early burst {lacked} (device samples); cushions after them "
          f"{cushions}, at the end {port.tx_setpoint} (base {base}); faults {faults}; "
          f"stats {port.stats.as_dict()}")
    assert len(lacked) == 3
    assert lacked[0] > 0, "the first early burst did not run the ring dry"
    assert lacked[1:] == [0, 0], f"the same burst ran the ring dry again: {lacked}"
    assert cushions[0] == base + lacked[0], "the step was not kept as cushion"
    assert port.tx_setpoint == base, "the step was not given back after the calm spell"
    assert port._tx_level.shed == 0, "the step given back is still in the ring"
