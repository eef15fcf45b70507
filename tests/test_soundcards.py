"""Virtual sound cards: devices PortAudio lists, and audio flowing between their two sides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import sounddevice as sd

from brug.gateway.soundcards import SoundCards

from conftest import VirtualCards
from helpers import Player, Recorder, load_wav, tone, xcorr_delay, xcorr_peak

FS = 48000


def _names() -> set[str]:
    return {str(d["name"]) for d in sd.query_devices()}


def test_cards_appear_in_portaudio(soundcards: VirtualCards) -> None:
    cards = soundcards.up("sca", "scb")
    names = _names()
    for c in cards.values():
        assert {c.input, c.output, c.air_rx, c.air_tx} <= names
    assert set(soundcards.cards.cards()) >= {"sca", "scb"}


def test_up_is_idempotent(soundcards: VirtualCards) -> None:
    soundcards.up("sca")
    soundcards.up("sca")
    out = subprocess.run(["pactl", "list", "short", "sinks"], env=soundcards.env,
                         capture_output=True, text=True, check=True).stdout
    assert sum(1 for line in out.splitlines() if "\tbrug_sca_air\t" in line) == 1


def _through(play_dev: str, rec_dev: str, x: np.ndarray) -> np.ndarray:
    rec = Recorder(rec_dev, FS).start()
    p = Player(play_dev, FS, x).start()
    assert p.wait(len(x) / FS + 5)
    sd.sleep(300)
    p.stop()
    return rec.stop()


def test_air_rx_reaches_gateway_input(soundcards: VirtualCards) -> None:
    c = soundcards.up("sca")["sca"]
    speech, _ = load_wav("engine_ps_goforward_48k.wav", FS)
    x = np.concatenate([np.zeros(FS // 10, np.float32), speech[:FS]])
    y = _through(c.air_rx, c.input, x)
    lag = xcorr_delay(x, y, FS, max_delay_s=1.0)
    assert xcorr_peak(x, y, lag) > 0.99


def test_gateway_output_reaches_air_tx(soundcards: VirtualCards) -> None:
    c = soundcards.up("scb")["scb"]
    x = np.concatenate([np.zeros(FS // 10, np.float32), tone(1000, FS, 0.3, -6),
                        np.zeros(FS // 10, np.float32), tone(440, FS, 0.3, -12)])
    y = _through(c.output, c.air_tx, x)
    lag = xcorr_delay(x, y, FS, max_delay_s=1.0)
    assert xcorr_peak(x, y, lag) > 0.99
    # the two cards are separate: nothing of scb's output leaks into sca's input
    a = soundcards.up("sca")["sca"]
    y2 = _through(c.output, a.input, x)
    assert np.max(np.abs(y2)) < 1e-4


def test_cli_up_env_down(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    run = [sys.executable, "-m", "brug.gateway.cli", "soundcards", "--runtime-dir", str(rt)]
    try:
        up = subprocess.run([*run, "up", "cli1"], capture_output=True, text=True, check=True)
        assert "brug_cli1_air_rx" in up.stdout
        env = subprocess.run([*run, "env"], capture_output=True, text=True, check=True).stdout
        assert f"export PULSE_SERVER=unix:{rt}/pulse/native" in env
        assert "ALSA_CONFIG_PATH=" in env
        # a separate process with that environment sees the cards
        script = env + f"{sys.executable} -c 'import sounddevice as sd; print(sd.query_devices())'"
        listing = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                                 check=True).stdout
        assert "brug_cli1_in" in listing and "brug_cli1_air_tx" in listing
    finally:
        subprocess.run([*run, "down"], capture_output=True, text=True)
    assert not SoundCards(rt).running()
    bad = subprocess.run([*run, "env"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "brug soundcards up" in bad.stderr


def test_server_stops_when_its_owner_is_killed(tmp_path: Path) -> None:
    """A test session or bench run killed with SIGKILL leaves no server burning CPU."""
    import os
    import signal
    import time

    rt = tmp_path / "rt"
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from brug.gateway.soundcards import SoundCards\n"
         f"c = SoundCards({str(rt)!r}); c.start(); c.stop_with_this_process()\n"
         "print('up', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    cards = SoundCards(rt)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
        pid = cards._pid()
        assert pid is not None and cards.running()
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "the server outlived the process that owned it"
        assert not cards.running()
    finally:
        owner.kill()
        cards.down()

