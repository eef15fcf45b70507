"""The simulated TETRA terminal: PEI bytes on its pty, the CLI, and its audio side."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial

from brug.gateway.sim import SimTerminal


@pytest.fixture
def term() -> Iterator[SimTerminal]:
    t = SimTerminal("s1", setup_ms=200, grant_ms=40, call_hang_ms=400, groups=[1001],
                    issi=1234, mcc=206, mnc=16)
    yield t
    t.close()


def chat(ser: serial.Serial, cmd: bytes, settle: float = 0.15) -> bytes:
    ser.reset_input_buffer()
    ser.write(cmd + b"\r")
    time.sleep(settle)
    return ser.read(ser.in_waiting)


def read_until(ser: serial.Serial, marker: bytes, timeout: float = 2.0) -> bytes:
    out = b""
    end = time.monotonic() + timeout
    while marker not in out and time.monotonic() < end:
        out += ser.read(max(1, ser.in_waiting))
    return out


def test_pei_bytes_on_the_pty(term: SimTerminal) -> None:
    with serial.Serial(term.path, 115200, timeout=0.05) as ser:
        assert chat(ser, b"AT") == b"AT\r\r\nOK\r\n"          # echo is on after power-up
        assert chat(ser, b"ATE0") == b"ATE0\r\r\nOK\r\n"
        assert chat(ser, b"AT+CTGS?") == b"\r\n+CTGS: 0\r\n\r\nOK\r\n"
        assert chat(ser, b"ATD1001") == b"\r\nERROR\r\n"     # call control not routed yet
        assert chat(ser, b"AT+CMEE=2") == b"\r\nOK\r\n"
        assert chat(ser, b"AT+CTGS=1,4242") == b"\r\n+CME ERROR: group not available\r\n"
        for c in (b"AT+CTOM=0", b"AT+CTSP=1,1,11", b"AT+CTGS=1,1001"):
            assert chat(ser, c) == b"\r\nOK\r\n"
        assert chat(ser, b"AT+CTGS?") == b"\r\n+CTGS: 1,1001\r\n\r\nOK\r\n"
        ser.reset_input_buffer()
        t0 = time.monotonic()
        ser.write(b"ATD1001\r")
        got = read_until(ser, b"+CTXG")
        got += read_until(ser, b"\r\n", 0.2)
        setup = time.monotonic() - t0
        assert got == (b"\r\nOK\r\n\r\n+CTOCP: 1,0,0\r\n\r\n+CTCC: 1,1,1,0,0,1,1\r\n"
                       b"\r\n+CTXG: 1,0,0,0\r\n")
        assert 0.19 <= setup < 0.6, setup
        assert chat(ser, b"AT+CUTXC=1") == b"\r\nOK\r\n"
        assert read_until(ser, b"+CTCR", 1.5).startswith(b"\r\n+CTCR: 1,0")
        assert chat(ser, b"AT+CTXD=1,1") == b"\r\n+CME ERROR: no such call\r\n"


def test_other_units_talking(term: SimTerminal) -> None:
    with serial.Serial(term.path, 115200, timeout=0.05) as ser:
        for c in (b"ATE0", b"AT+CTSP=1,1,11", b"AT+CTGS=1,1001"):
            chat(ser, c)
        ser.reset_input_buffer()
        assert term.start_incoming(issi=2042)
        assert not term.start_incoming(issi=2043)             # one talker at a time
        time.sleep(0.1)
        got = ser.read(ser.in_waiting)
        assert got == (b"\r\n+CTICN: 1,0,0,5,02060001600002042,1,1,0,1,1,5,"
                       b"02060001600001001,0\r\n\r\n+CTXG: 1,3,0,0,5,02060001600002042\r\n")
        # our demand while they talk is queued, granted when they stop
        assert chat(ser, b"AT+CTXD=1,1") == b"\r\nOK\r\n\r\n+CTXG: 1,2,0,0\r\n"
        term.stop_incoming()
        got = read_until(ser, b"+CTXG: 1,0")
        assert got.startswith(b"\r\n+CDTXC: 1,0\r\n")
        assert term.transmitting


def test_silent_terminal_drops_commands(term: SimTerminal) -> None:
    with serial.Serial(term.path, 115200, timeout=0.05) as ser:
        term.go_silent(0.3)
        assert chat(ser, b"AT") == b""
        time.sleep(0.3)
        assert chat(ser, b"AT") == b"AT\r\r\nOK\r\n"


def test_cli_prints_the_pei_path_and_serves_it() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "brug.gateway.cli", "sim", "terminal",
                             "drill1", "--setup-ms", "150"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/")
        with serial.Serial(path, 115200, timeout=0.05) as ser:
            assert chat(ser, b"ATE0", 0.3) == b"ATE0\r\r\nOK\r\n"
            chat(ser, b"AT+CTSP=1,1,11")
            chat(ser, b"AT+CTGS=1,1001")
            ser.reset_input_buffer()
            proc.stdin.write("rx 2042\n")
            proc.stdin.flush()
            assert b"+CTICN: 1,0,0,5," in read_until(ser, b"+CTXG")
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _rms_dbfs(x: Any) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x))) + 1e-12))


def test_talk_plays_into_the_gateway_input_and_record_hears_its_output(
        soundcards: Any, tmp_path: Path) -> None:
    import sounddevice as sd
    import soundfile as sf

    cards = soundcards.up("simau")
    c = cards["simau"]
    rate = 48000
    tone = (0.25 * np.sin(2 * np.pi * 1000 * np.arange(int(0.6 * rate)) / rate)).astype(
        np.float32)
    wav = tmp_path / "unit2042.wav"
    sf.write(wav, tone, rate)
    with SimTerminal("simau", call_hang_ms=300, groups=[1001]) as t:
        t.gssi = 1001                     # as if the gateway had selected it
        rec: list[Any] = []

        def capture() -> None:
            with sd.InputStream(samplerate=rate, channels=1, dtype="float32",
                                device=c.input) as inp:
                rec.append(inp.read(int(1.2 * rate))[0][:, 0])

        th = threading.Thread(target=capture)
        th.start()
        time.sleep(0.15)
        talker = t.talk(wav, issi=2042)
        time.sleep(0.05)
        assert talker.is_alive() and t.other_talking == 2042   # COR side follows the audio
        talker.join(5)
        th.join(5)
        assert t.other_talking is None
        got = rec[0]
        assert _rms_dbfs(got) > -30, _rms_dbfs(got)            # the tone arrived (-15 dBFS)

        # what the gateway transmits is what the terminal records
        def send() -> None:
            with sd.OutputStream(samplerate=rate, channels=1, dtype="float32",
                                 device=c.output) as out:
                out.write(np.tile(tone, 2)[:, None])

        player = threading.Thread(target=send)
        player.start()
        heard = t.record(0.8, rate)
        player.join(5)
        assert _rms_dbfs(heard[int(0.2 * rate):]) > -30
