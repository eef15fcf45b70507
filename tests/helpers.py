"""Generic helpers for the test suite: test signals, WAV loading, delay measurement,
and playing/recording on the virtual sound cards of the ``soundcards`` fixture.

All signals are mono float32, nominal -1..1; levels in dBFS refer to a full-scale sine
(a sine of peak 1.0 is 0 dBFS, so its RMS is -3.01 dB below 1.0).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal as _signal

Audio = npt.NDArray[np.float32]

DATA = Path(__file__).parent / "data"


def tone(freq: float, fs: int, seconds: float, dbfs: float = -20.0, phase: float = 0.0) -> Audio:
    """A sine of ``freq`` Hz at ``fs`` Hz, ``seconds`` long, peak level ``dbfs`` (0 dBFS = 1.0)."""
    n = int(round(fs * seconds))
    amp = 10.0 ** (dbfs / 20.0)
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / fs + phase)).astype(np.float32)


def silence(fs: int, seconds: float) -> Audio:
    """``seconds`` of digital silence at ``fs`` Hz."""
    return np.zeros(int(round(fs * seconds)), np.float32)


def noise(fs: int, seconds: float, dbfs: float = -30.0, seed: int = 1) -> Audio:
    """White noise with RMS level ``dbfs`` (relative to 1.0), reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(round(fs * seconds))
    return (rng.standard_normal(n) * 10.0 ** (dbfs / 20.0)).astype(np.float32)


def rms_dbfs(x: npt.ArrayLike) -> float:
    """RMS level of ``x`` in dB relative to 1.0 (-inf for silence)."""
    a = np.asarray(x, np.float64)
    r = float(np.sqrt(np.mean(a * a))) if a.size else 0.0
    return 20.0 * np.log10(r) if r > 0 else float("-inf")


def load_wav(path: str | Path, fs: int | None = None) -> tuple[Audio, int]:
    """Load a WAV as mono float32; a bare name is looked up in tests/data.

    With ``fs`` given, resample to it (soxr, high quality). Returns ``(x, rate_hz)``.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists() and (DATA / p).exists():
        p = DATA / p
    x, rate = sf.read(str(p), dtype="float32", always_2d=True)
    mono = x.mean(axis=1).astype(np.float32)
    if fs is not None and fs != rate:
        import soxr

        mono = soxr.resample(mono, rate, fs, quality="HQ").astype(np.float32)
        rate = fs
    return mono, int(rate)


def xcorr_delay(ref: npt.ArrayLike, sig: npt.ArrayLike, fs: int,
                max_delay_s: float | None = None) -> int:
    """Delay of ``sig`` relative to ``ref`` in samples, by FFT cross-correlation.

    Positive when ``sig`` lags ``ref``. ``max_delay_s`` (s) restricts the search to
    ``0..max_delay_s`` (both signals at ``fs`` Hz).
    """
    r = np.asarray(ref, np.float64)
    s = np.asarray(sig, np.float64)
    c = _signal.correlate(s, r, mode="full", method="fft")
    lags = _signal.correlation_lags(len(s), len(r), mode="full")
    if max_delay_s is not None:
        keep = (lags >= 0) & (lags <= int(max_delay_s * fs))
        c, lags = c[keep], lags[keep]
    return int(lags[int(np.argmax(np.abs(c)))])


def xcorr_peak(ref: npt.ArrayLike, sig: npt.ArrayLike, lag: int) -> float:
    """Normalised correlation (-1..1) of ``sig`` shifted back by ``lag`` samples with ``ref``."""
    r = np.asarray(ref, np.float64)
    s = np.asarray(sig, np.float64)[lag:lag + len(r)]
    r = r[:len(s)]
    d = float(np.sqrt(np.sum(r * r) * np.sum(s * s)))
    return float(np.sum(r * s) / d) if d > 0 else 0.0


def dropouts(x: npt.ArrayLike, fs: int, ref: npt.ArrayLike, lag: int,
             window_ms: float = 5.0, floor_db: float = -30.0) -> int:
    """Count windows where ``ref`` carries signal but ``x`` (aligned by ``lag``) is near silent.

    A window of ``window_ms`` whose reference RMS is above ``ref``'s peak window minus 40 dB
    and whose received RMS is more than ``-floor_db`` dB below the reference counts as one
    dropout. Detects gaps of zeros from underruns in a path that should pass audio unchanged.
    """
    r = np.asarray(ref, np.float64)
    s = np.asarray(x, np.float64)[lag:lag + len(r)]
    r = r[:len(s)]
    w = max(1, int(fs * window_ms / 1000))
    n = len(r) // w
    if n == 0:
        return 0
    rr = np.sqrt(np.mean(r[:n * w].reshape(n, w) ** 2, axis=1))
    ss = np.sqrt(np.mean(s[:n * w].reshape(n, w) ** 2, axis=1))
    active = rr > rr.max() * 10 ** (-40 / 20)
    low = ss < rr * 10 ** (floor_db / 20)
    return int(np.sum(active & low))


class Recorder:
    """Record a PortAudio input device in the background (``start``/``stop`` -> audio).

    Runs an ``sd.InputStream`` whose callback appends copies; test code only, not real-time
    safe (allocates per block).
    """

    def __init__(self, device: str, fs: int, blocksize: int = 480) -> None:
        import sounddevice as sd

        self.fs = fs
        self._chunks: list[Audio] = []
        self._lock = threading.Lock()
        self.running = threading.Event()

        def cb(indata: npt.NDArray[np.float32], frames: int, t: object, status: object) -> None:
            if status:
                HARNESS_XRUNS[0] += 1
            with self._lock:
                self._chunks.append(indata[:, 0].copy())
            self.running.set()

        self._stream = sd.InputStream(device=device, samplerate=fs, channels=1,
                                      dtype="float32", blocksize=blocksize, callback=cb)

    def start(self, timeout: float = 5.0) -> Recorder:
        """Start and wait (up to ``timeout`` s) until the first block has arrived."""
        self._stream.start()
        if not self.running.wait(timeout):
            raise TimeoutError(f"no audio from {self._stream.device} within {timeout} s")
        return self

    def stop(self) -> Audio:
        self._stream.stop()
        self._stream.close()
        with self._lock:
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)


class Player:
    """Play a signal on a PortAudio output device in the background; zeros after its end."""

    def __init__(self, device: str, fs: int, x: npt.ArrayLike, blocksize: int = 480) -> None:
        import sounddevice as sd

        self.x = np.asarray(x, np.float32)
        self._pos = 0
        self.done = threading.Event()

        def cb(outdata: npt.NDArray[np.float32], frames: int, t: object, status: object) -> None:
            chunk = self.x[self._pos:self._pos + frames]
            outdata[:len(chunk), 0] = chunk
            outdata[len(chunk):, 0] = 0.0
            self._pos += frames
            if self._pos >= len(self.x):
                self.done.set()

        self._stream = sd.OutputStream(device=device, samplerate=fs, channels=1,
                                       dtype="float32", blocksize=blocksize, callback=cb)

    def start(self) -> Player:
        self._stream.start()
        return self

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)

    def stop(self) -> None:
        self._stream.stop()
        self._stream.close()


#: Callbacks of :func:`playrec`'s own two streams that came with a PortAudio status flag (an
#: xrun of the harness, not of what it measures), summed over every call in this process.
HARNESS_XRUNS = [0]


def playrec(play: str, rec: str, x: npt.ArrayLike, fs: int, tail_s: float = 0.5,
            blocksize: int = 240, latency: float = 0.02, lead_s: float = 0.02) -> Audio:
    """Play ``x`` on device ``play`` while recording device ``rec``; return the recording
    aligned with ``x`` and starting ``lead_s`` before it: sample ``lead + i`` was captured
    when ``x[i]`` left the output (so a path's delay shows as ``lead + delay`` samples, and a
    small negative timing error still correlates). ``tail_s`` longer than ``x``.

    Two streams, not one duplex stream: PortAudio's ALSA duplex path gives up (the recording
    breaks off or repeats) when the PulseAudio plugin reports an error on one direction. The
    streams share PortAudio's clock, so the ADC/DAC times of their first buffers align them
    to within a few ms. A callback of either that comes with a status flag (the harness
    itself glitched: a gap in what it played, or in what it recorded) counts in
    :data:`HARNESS_XRUNS`.
    """
    import sounddevice as sd

    sig = np.concatenate([np.asarray(x, np.float32), np.zeros(int(fs * tail_s), np.float32)])
    n = len(sig)
    got = np.zeros(n + 2 * fs, np.float32)
    done = threading.Event()

    class Clock:
        pos = 0                     # samples played
        written = 0                 # samples recorded
        dac0: float | None = None   # PortAudio time of the first sample played
        adc0: float | None = None   # ... and of the first sample recorded

    def out_cb(outdata: npt.NDArray[np.float32], frames: int, t: object,
               status: object) -> None:
        if status:
            HARNESS_XRUNS[0] += 1
        if Clock.dac0 is None:
            Clock.dac0 = float(t.outputBufferDacTime)  # type: ignore[attr-defined]
        chunk = sig[Clock.pos:Clock.pos + frames]
        outdata[:len(chunk), 0] = chunk
        outdata[len(chunk):, 0] = 0.0
        Clock.pos += frames
        if Clock.pos >= n:
            done.set()

    def in_cb(indata: npt.NDArray[np.float32], frames: int, t: object, status: object) -> None:
        if status:
            HARNESS_XRUNS[0] += 1
        if Clock.adc0 is None:
            Clock.adc0 = float(t.inputBufferAdcTime)  # type: ignore[attr-defined]
        k = min(frames, len(got) - Clock.written)
        got[Clock.written:Clock.written + k] = indata[:k, 0]
        Clock.written += k

    common = dict(samplerate=fs, channels=1, dtype="float32", blocksize=blocksize,
                  latency=latency)
    ins = sd.InputStream(device=rec, callback=in_cb, **common)
    outs = sd.OutputStream(device=play, callback=out_cb, **common)
    try:
        ins.start()
        sd.sleep(50)                       # the recording starts before the signal
        outs.start()
        if not done.wait(n / fs + 10):
            raise TimeoutError(f"playing on {play!r} did not finish")
        sd.sleep(int(1000 * min(tail_s, 0.2)))
    finally:
        outs.stop()
        ins.stop()
        outs.close()
        ins.close()
    if Clock.adc0 is None or Clock.dac0 is None:
        raise TimeoutError(f"no audio from {rec!r}")
    lead = int(round(lead_s * fs))
    off = int(round((Clock.dac0 - Clock.adc0) * fs)) - lead
    if off >= 0:
        out = got[off:off + n + lead]
    else:
        out = np.concatenate([np.zeros(-off, np.float32), got[:n + lead + off]])
    return np.asarray(out, np.float32)


def aligned_windows(ref: npt.ArrayLike, rec: npt.ArrayLike, at: int, fs: int = 48000,
                    track: bool = False) -> Iterator[tuple[Audio, Audio, int, bool]]:
    """Each 250 ms window of ``ref`` with the part of ``rec`` it came out in (from sample
    ``at``), aligned within 10 ms: (window, that part of ``rec``, the window's lag in it,
    whether the window carries signal). ``track``: each window is looked for within 10 ms of
    where the last window with signal was found rather than of ``at``, so a one-off step of
    the path's delay (a platform xrun refills a device buffer) costs the window it falls in,
    not every window after it."""
    ref = np.asarray(ref, np.float32)
    rec = np.asarray(rec, np.float32)
    w, slack = fs // 4, fs // 100
    for i in range(0, len(ref) - w, w):
        part = ref[i:i + w]
        voiced = bool(np.sqrt(np.mean(part ** 2)) >= 1e-3)
        a = max(0, at + i - slack)
        win = rec[a:a + w + 2 * slack]
        d = xcorr_delay(part, win, fs, max_delay_s=2 * slack / fs)
        yield part, win, d, voiced
        if track and voiced:
            at = a + d - i


def windowed_corr(ref: npt.ArrayLike, rec: npt.ArrayLike, at: int, fs: int = 48000) -> float:
    """Median normalised correlation of ``ref``'s 250 ms windows with ``rec`` from sample
    ``at``, each window aligned on its own within 10 ms: how well speech came through a path
    whose delay may move by a block now and then (a skipped silent block, an xrun)."""
    corrs = [xcorr_peak(part, win, d)
             for part, win, d, voiced in aligned_windows(ref, rec, at, fs) if voiced]
    return float(np.median(corrs)) if corrs else 0.0


#: Set in the child pytest that runs an :func:`isolated` test, to the test's name.
ISOLATED_ENV = "BRUG_ISOLATED_TEST"


def isolated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a drill that pulls a PulseAudio server from under live streams in a child pytest.

    The PulseAudio ALSA plugin can crash the process (abort, segmentation fault) when its
    server goes away while PortAudio opens or polls a stream. In a child, such a crash fails
    this one test, which is then rerun, instead of ending the whole session. The reruns are
    the parent's (tests/conftest.py); the child runs the test once."""
    import pytest

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get(ISOLATED_ENV) == fn.__name__:
            return fn(*args, **kwargs)
        node = f"{fn.__code__.co_filename}::{fn.__name__}"
        env = {**os.environ, ISOLATED_ENV: fn.__name__}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                            "-p", "no:randomly", "-p", "no:rerunfailures", node], env=env,
                           capture_output=True, text=True, timeout=600, check=False)
        print(r.stdout[-3000:])
        if r.returncode != 0:
            tail = "\n".join(ln for ln in (r.stdout + r.stderr).splitlines()
                             if not ln.startswith(("ALSA lib", "Expression")))[-4000:]
            pytest.fail(f"{fn.__name__} in a child pytest: exit status {r.returncode}\n{tail}")
        return None

    return wrapper
