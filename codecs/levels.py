"""Levels: line-level calibration of a port, and a streaming AGC.

Conventions
-----------
- **dBFS** is RMS relative to full scale 1.0, as the VOX and the meters read it: a sine of
  peak 1.0 is -3.01 dBFS (:data:`SINE_FS_DBFS`), a 1 kHz tone of RMS 0.1 is -20 dBFS.
- **dBu** is RMS volts relative to 0.7746 V (:data:`DBU_VOLTS`, 1 mW into 600 ohm).
- **dBm0** is a level relative to the interface's 0 dBm0 point (its nominal or "zero
  relative" level). A terminal's audio connector has its 0 dBm0 point at some line level in
  dBu (``zero_dbm0_dbu``, the relative level in dBr); a line-up tone at 0 dBm0 is the
  nominal level of that port.

The engine reference
--------------------
Inside the engine every port's nominal level is carried at :data:`REFERENCE_DBFS` = -18 dBFS.
A port's nominal level is the level at which its terminal delivers (or expects) nominal
speech: the profile's ``rx_level_dbfs`` / ``tx_level_dbfs``, or its ``line_out_dbu`` /
``line_in_dbu`` through the card's calibration. This module takes that level as the port's
0 dBm0 point, so 0 dBm0 reads -18 dBFS in the engine on every port, and a port's receive gain
is ``REFERENCE_DBFS - nominal_dbfs`` and its transmit gain ``nominal_dbfs - REFERENCE_DBFS``
(:func:`rx_gain`, :func:`tx_gain`), the figure and formulas ``brug.gateway.site`` applies.

Why -18 dBFS: speech peaks 12-15 dB above its active RMS level, so nominal speech peaks at
-6..-3 dBFS; a talker a few dB hotter than nominal reaches the limiter (ceiling -1 dBFS) rather
than full scale, and a quiet talker at -40 dBFS is 22 dB below, within the AGC's range. It is
also the number of the EBU R68 alignment level (a 0 dBu line-up tone at -18 dBFS); R68 counts
dBFS by the sine (AES17), which reads 3.01 dB above the RMS convention used here, so on a card
aligned to R68 a 0 dBu tone reads -21 dBFS in brug.

:class:`LineCalibration` turns a profile's line levels into dBFS on the card, either from the
card's full-scale voltage or from a profile's pair "this line level reads as X dBFS"
(``audio.line_out_dbu`` with ``audio.rx_level_dbfs``).

:class:`Agc` is an optional automatic gain control for ports whose talkers vary (a -40 dBFS
talker far from the microphone); it holds its gain in pauses, so background noise is not
pumped up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal

#: Engine reference level: a port's nominal level (0 dBm0) is carried at this level, dBFS RMS.
REFERENCE_DBFS: float = -18.0
#: 0 dBu in volts RMS (1 mW into 600 ohm: sqrt(0.6)).
DBU_VOLTS: float = math.sqrt(0.6)
#: RMS level of a full-scale sine (peak 1.0) in dBFS.
SINE_FS_DBFS: float = 20.0 * math.log10(math.sqrt(0.5))

LineUnit = Literal["dBu", "dBm0"]
_UNITS: tuple[str, ...] = ("dBu", "dBm0")


def db_to_gain(db: float) -> float:
    """Linear amplitude gain of ``db`` decibels."""
    return float(10.0 ** (db / 20.0))


def gain_to_db(gain: float) -> float:
    """Decibels of a linear amplitude ``gain`` (> 0)."""
    if not gain > 0.0:
        raise ValueError(f"gain must be positive, got {gain}")
    return 20.0 * math.log10(gain)


def dbu_to_volts(dbu: float) -> float:
    """Volts RMS of a level in dBu (0 dBu = 0.7746 V)."""
    return DBU_VOLTS * 10.0 ** (dbu / 20.0)


def volts_to_dbu(volts_rms: float) -> float:
    """Level in dBu of ``volts_rms`` volts RMS."""
    if not volts_rms > 0.0:
        raise ValueError(f"voltage must be positive, got {volts_rms}")
    return 20.0 * math.log10(volts_rms / DBU_VOLTS)


class Gain(NamedTuple):
    """A gain in dB and as a linear amplitude factor."""

    db: float
    linear: float

    @classmethod
    def of_db(cls, db: float) -> Gain:
        return cls(float(db), db_to_gain(db))


def rx_gain(nominal_dbfs: float, reference_dbfs: float = REFERENCE_DBFS) -> Gain:
    """Receive gain that brings a port's nominal level (dBFS on the card) to the reference."""
    return Gain.of_db(reference_dbfs - nominal_dbfs)


def tx_gain(nominal_dbfs: float, reference_dbfs: float = REFERENCE_DBFS) -> Gain:
    """Transmit gain that brings the reference to a port's nominal level (dBFS on the card)."""
    return Gain.of_db(nominal_dbfs - reference_dbfs)


@dataclass(frozen=True)
class LineCalibration:
    """How line levels at a terminal's connector read on the sound card (one direction).

    The card is linear, so one number fixes it: ``dbfs_at_0dbu``, the reading (dBFS RMS) of a
    0 dBu signal. ``zero_dbm0_dbu`` places the interface's 0 dBm0 point on the line.

    Parameters
    ----------
    dbfs_at_0dbu : float
        dBFS reading of 0 dBu at the connector (transmit: the line level a dBFS level
        produces, read the other way round).
    zero_dbm0_dbu : float
        Line level in dBu of the 0 dBm0 point (the terminal's nominal level); default 0 dBu.

    Examples
    --------
    A card whose full scale is a 1.228 V RMS sine (+4 dBu), terminal nominal at -10 dBu:

    >>> cal = LineCalibration.from_full_scale(volts_rms=1.228, zero_dbm0_dbu=-10.0)
    >>> round(cal.dbm0_to_dbfs(0.0), 1), round(cal.rx_gain().db, 1)
    (-17.0, -1.0)
    """

    dbfs_at_0dbu: float
    zero_dbm0_dbu: float = 0.0

    @classmethod
    def from_full_scale(cls, *, volts_rms: float | None = None, dbu: float | None = None,
                        zero_dbm0_dbu: float = 0.0) -> LineCalibration:
        """From the card's full scale: the RMS voltage (or dBu) of a sine that just reaches
        digital full scale, as card data sheets give it ("maximum input level +4 dBu")."""
        if (volts_rms is None) == (dbu is None):
            raise ValueError("give exactly one of volts_rms or dbu for the full scale")
        fs_dbu = volts_to_dbu(volts_rms) if volts_rms is not None else float(dbu or 0.0)
        return cls(SINE_FS_DBFS - fs_dbu, float(zero_dbm0_dbu))

    @classmethod
    def from_pair(cls, line_level: float, dbfs: float, unit: LineUnit = "dBu",
                  zero_dbm0_dbu: float = 0.0) -> LineCalibration:
        """From a measured or profile pair: ``line_level`` (in ``unit``) reads as ``dbfs``.

        A profile's ``audio.line_out_dbu: -8`` with ``rx_level_dbfs: -20`` is
        ``from_pair(-8, -20)``.
        """
        if unit not in _UNITS:
            raise ValueError(f"unit must be one of: {', '.join(_UNITS)}; got {unit!r}")
        dbu = line_level if unit == "dBu" else line_level + zero_dbm0_dbu
        return cls(float(dbfs) - float(dbu), float(zero_dbm0_dbu))

    # conversions -----------------------------------------------------------------------
    def dbu_to_dbfs(self, dbu: float) -> float:
        """Card reading (dBFS) of a line level in dBu."""
        return float(dbu) + self.dbfs_at_0dbu

    def dbfs_to_dbu(self, dbfs: float) -> float:
        """Line level in dBu of a card level in dBFS."""
        return float(dbfs) - self.dbfs_at_0dbu

    def dbm0_to_dbu(self, dbm0: float) -> float:
        """Line level in dBu of a level in dBm0."""
        return float(dbm0) + self.zero_dbm0_dbu

    def dbu_to_dbm0(self, dbu: float) -> float:
        """Level in dBm0 of a line level in dBu."""
        return float(dbu) - self.zero_dbm0_dbu

    def dbm0_to_dbfs(self, dbm0: float) -> float:
        """Card reading (dBFS) of a level in dBm0."""
        return self.dbu_to_dbfs(self.dbm0_to_dbu(dbm0))

    def dbfs_to_dbm0(self, dbfs: float) -> float:
        """Level in dBm0 of a card level in dBFS."""
        return self.dbu_to_dbm0(self.dbfs_to_dbu(dbfs))

    def to_dbfs(self, level: float, unit: LineUnit) -> float:
        """Card reading of ``level`` given in ``unit`` (``"dBu"`` or ``"dBm0"``)."""
        if unit == "dBu":
            return self.dbu_to_dbfs(level)
        if unit == "dBm0":
            return self.dbm0_to_dbfs(level)
        raise ValueError(f"unit must be one of: {', '.join(_UNITS)}; got {unit!r}")

    @property
    def nominal_dbfs(self) -> float:
        """Card reading of the 0 dBm0 point (the port's nominal level), dBFS."""
        return self.dbm0_to_dbfs(0.0)

    def rx_gain(self, nominal: float = 0.0, unit: LineUnit = "dBm0",
                reference_dbfs: float = REFERENCE_DBFS) -> Gain:
        """Receive gain that brings ``nominal`` (default 0 dBm0) to ``reference_dbfs``."""
        return rx_gain(self.to_dbfs(nominal, unit), reference_dbfs)

    def tx_gain(self, nominal: float = 0.0, unit: LineUnit = "dBm0",
                reference_dbfs: float = REFERENCE_DBFS) -> Gain:
        """Transmit gain that brings ``reference_dbfs`` to ``nominal`` (default 0 dBm0) on the
        line."""
        return tx_gain(self.to_dbfs(nominal, unit), reference_dbfs)


def frame_levels_dbfs(x: ArrayLike, frame: int) -> NDArray[np.float64]:
    """RMS level in dBFS of each whole frame of ``frame`` samples of 1-D ``x`` (-120 floor)."""
    a = np.asarray(x, dtype=np.float64)
    n = len(a) // frame
    p = np.mean(a[:n * frame].reshape(n, frame) ** 2, axis=1)
    return 10.0 * np.log10(np.maximum(p, 1e-12))


def active_speech_level(x: ArrayLike, rate_hz: int) -> tuple[float, float]:
    """Active speech level of a recording (ITU-T P.56 method B), for calibration and tests.

    The envelope is ``|x|`` through two one-pole smoothers of 30 ms; a sample is active while
    the envelope is at or above a threshold or within 200 ms after it (hangover). Over
    thresholds 6 dB apart (full scale / 2**k), the level is the energy per active sample where
    it is 15.9 dB above the threshold (interpolated in dB).

    Parameters
    ----------
    x : array_like
        1-D samples, full scale 1.0.
    rate_hz : int
        Sample rate in Hz.

    Returns
    -------
    (level_dbfs, activity) : tuple of float
        Active level in dBFS RMS (-120 for silence) and the active fraction of ``x`` (0..1).

    Notes
    -----
    Offline: allocates several arrays of ``len(x)``; not for the engine thread.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected 1-D samples, got shape {a.shape}")
    n = len(a)
    energy = float(np.dot(a, a))
    if n == 0 or energy == 0.0:
        return _FLOOR_DB, 0.0
    g = math.exp(-1.0 / (rate_hz * 0.03))
    env = signal.lfilter([1.0 - g], [1.0, -g], np.abs(a))
    env = signal.lfilter([1.0 - g], [1.0, -g], env)
    hang = int(round(0.2 * rate_hz))
    idx = np.arange(n)
    thresholds = 2.0 ** np.arange(-15, 1)
    active = np.empty(len(thresholds))
    for j, c in enumerate(thresholds):
        last_on = np.maximum.accumulate(np.where(env >= c, idx, -hang - 1))
        active[j] = np.count_nonzero(idx - last_on <= hang)
    margin = 15.9
    lvl = np.full(len(thresholds), -np.inf)
    ok = active > 0
    lvl[ok] = 10.0 * np.log10(energy / active[ok])
    diff = lvl - 20.0 * np.log10(thresholds)
    if diff[0] < margin:
        return float(lvl[0]), float(active[0] / n)
    for j in range(len(thresholds) - 1):
        if diff[j] >= margin > diff[j + 1]:
            if not np.isfinite(diff[j + 1]):
                return float(lvl[j]), float(active[j] / n)
            t = (diff[j] - margin) / (diff[j] - diff[j + 1])
            level = lvl[j] + t * (lvl[j + 1] - lvl[j])
            act = active[j] + t * (active[j + 1] - active[j])
            return float(level), float(act / n)
    return float(lvl[-1]), float(active[-1] / n)


_FLOOR_DB = -120.0
_SILENT = 1e-10          # -100 dBFS: digital silence


class Agc:
    """Streaming automatic gain control that holds its gain in pauses.

    The detector works on the *input* in frames of ``frame_ms`` (default 2.5 ms, carried across
    blocks). Per frame:

    1. An envelope, the frame power smoothed with a 30 ms time constant (as ITU-T P.56 does),
       is compared with the gate: ``gate_dbfs``, and ``gate_above_noise_db`` above the noise
       floor, the lowest envelope of the last second (minimum statistics: it follows the
       noise down at once and up within a second; digital silence below -100 dBFS, an idle
       port, does not count). A frame at or above the gate is *speech*; the ``hang_ms`` after
       the last speech frame are *hangover*. Steady noise, however loud, sets its own floor
       and is never taken for speech; speech keeps dipping to the floor between syllables.
    2. The speech level is a power average over speech and hangover frames with time constant
       ``average_ms`` (a running mean until that much has been seen). Counting short pauses
       this way measures the active speech level as P.56 does.
    3. Only in speech frames, the gain moves towards ``target_dbfs - level`` (kept within
       ``min_gain_db`` .. ``max_gain_db``), at most 20 dB per ``attack_ms`` downwards and
       20 dB per ``release_ms`` upwards (the limiter's convention).

    In pauses nothing moves the gain, so background noise is never raised ("hold"). The gain of
    each frame is computed from the frames before it and ramped linearly across it, so the AGC
    adds no delay and no zipper noise; a partial frame at the end of a block is processed at
    once and its ramp continues in the next block, so the output does not depend on the block
    size.

    Parameters
    ----------
    rate_hz : int
        Sample rate in Hz.
    channels : int
        Channels (ports); ``process`` takes 1-D when 1, else (channels, samples).
    target_dbfs : float
        Output active speech level in dBFS RMS (default the engine reference, -18 dBFS).
    max_gain_db, min_gain_db : float
        Gain range in dB (default +24 / -12).
    attack_ms : float
        Time for the gain to fall 20 dB, in ms (default 100).
    release_ms : float
        Time for the gain to rise 20 dB, in ms (default 800).
    average_ms : float
        Time constant of the speech-level average, in ms (default 400).
    hang_ms : float
        Hangover after speech that still counts in the level (not in the gain), ms
        (default 200, as P.56).
    frame_ms : float
        Detector frame in ms (default 2.5; rounded to whole samples).
    gate_dbfs : float
        Absolute gate: quieter frames are pauses (default -50 dBFS).
    gate_above_noise_db : float or None
        Relative gate above the tracked noise floor, dB (default 10); ``None`` uses the
        absolute gate only.
    initial_gain_db : float
        Gain after construction and :meth:`reset`, dB (default 0).

    Notes
    -----
    Measured on the test recordings (tests/test_codecs_levels.py): from reset, a -40 dBFS
    talker (P.56 active level) in -65 dBFS noise has the gain within 1 dB of its settled value
    1.3-1.5 s after speech starts (22 dB at 20 dB per 800 ms, with pauses not counting), and
    from then on comes out at -18.4 dBFS; a talker 20 dB louder than the last is brought within
    3 dB of its gain about 0.1 s after it starts (the limiter catches the first peaks); a
    quieter one takes about 1.5 s. In 5 s of -60 dBFS (or -40 dBFS steady) noise the gain does
    not move.

    A signal whose level never dips except into digital silence (a tone keyed on and off) sets
    its own noise floor and is not levelled; use ``gate_above_noise_db=None`` for such test
    signals.

    Real-time: ``process`` is called from the engine thread; it allocates a few arrays of the
    block size and runs a short Python loop per detector frame and channel (2 frames per 5 ms
    block): about 19 microseconds per 5 ms block of one channel at 16 kHz, 37 for 8 channels.
    """

    _ENVELOPE_MS = 30.0
    _FLOOR_WINDOW_MS = 1000.0
    _FLOOR_PARTS = 8            # the window is kept as the minima of this many sub-windows

    def __init__(self, rate_hz: int, channels: int = 1, *,
                 target_dbfs: float = REFERENCE_DBFS, max_gain_db: float = 24.0,
                 min_gain_db: float = -12.0, attack_ms: float = 100.0,
                 release_ms: float = 800.0, average_ms: float = 400.0, hang_ms: float = 200.0,
                 frame_ms: float = 2.5, gate_dbfs: float = -50.0,
                 gate_above_noise_db: float | None = 10.0,
                 initial_gain_db: float = 0.0) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if target_dbfs > 0.0:
            raise ValueError(f"target_dbfs must be <= 0 dBFS, got {target_dbfs}")
        if min_gain_db > max_gain_db:
            raise ValueError(f"min_gain_db must not be above max_gain_db, got {min_gain_db} "
                             f"and {max_gain_db}")
        if not min_gain_db <= initial_gain_db <= max_gain_db:
            raise ValueError(f"initial_gain_db must be within {min_gain_db}..{max_gain_db} dB, "
                             f"got {initial_gain_db}")
        if attack_ms <= 0 or release_ms <= 0 or average_ms <= 0 or hang_ms < 0:
            raise ValueError(f"attack_ms, release_ms and average_ms must be > 0 and hang_ms "
                             f">= 0, got {attack_ms}, {release_ms}, {average_ms}, {hang_ms}")
        frame = int(round(frame_ms * rate_hz / 1000.0))
        if frame < 1:
            raise ValueError(f"frame_ms must give at least one sample at {rate_hz} Hz, "
                             f"got {frame_ms}")
        if gate_above_noise_db is not None and gate_above_noise_db < 0:
            raise ValueError(f"gate_above_noise_db must be >= 0 or None, got "
                             f"{gate_above_noise_db}")
        self.rate_hz = int(rate_hz)
        self.channels = int(channels)
        self.target_dbfs = float(target_dbfs)
        self.max_gain_db = float(max_gain_db)
        self.min_gain_db = float(min_gain_db)
        self.attack_ms = float(attack_ms)
        self.release_ms = float(release_ms)
        self.average_ms = float(average_ms)
        self.hang_ms = float(hang_ms)
        self.gate_dbfs = float(gate_dbfs)
        self.gate_above_noise_db = None if gate_above_noise_db is None \
            else float(gate_above_noise_db)
        self.initial_gain_db = float(initial_gain_db)
        self.frame = frame
        self.frame_ms = 1000.0 * frame / self.rate_hz
        self._down = 20.0 * self.frame_ms / self.attack_ms      # dB per frame
        self._up = 20.0 * self.frame_ms / self.release_ms
        self._alpha = 1.0 - math.exp(-self.frame_ms / self.average_ms)
        self._beta = 1.0 - math.exp(-self.frame_ms / self._ENVELOPE_MS)
        self._hang = int(round(self.hang_ms / self.frame_ms))
        self._part_frames = max(1, int(round(self._FLOOR_WINDOW_MS / self._FLOOR_PARTS
                                             / self.frame_ms)))
        self._ramp = (np.arange(1, frame + 1, dtype=np.float64) / frame)
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Delay from input to output: 0 (the gain comes from past frames)."""
        return 0

    @property
    def gain_db(self) -> NDArray[np.float64]:
        """Gain per channel reached at the end of the last complete frame, dB."""
        return np.array(self._g_db)

    @property
    def level_dbfs(self) -> NDArray[np.float64]:
        """Active speech level estimate per channel, dBFS (-120 before any speech)."""
        return np.array([10.0 * math.log10(p) if p > 0 else _FLOOR_DB for p in self._level])

    @property
    def noise_dbfs(self) -> NDArray[np.float64]:
        """Noise floor per channel (lowest envelope of the last second), dBFS; NaN before the
        first frame that is not digital silence."""
        out = np.array([min(self._floor_cur[c], *self._floor_parts[c])
                        for c in range(self.channels)])
        out[np.isinf(out)] = np.nan
        return out

    def reset(self) -> None:
        """Clear state (level, noise floor, envelope, gain back to ``initial_gain_db``, partial
        frame); keep parameters."""
        n = self.channels
        g0 = self.initial_gain_db
        self._g_db = [g0] * n                   # gain at the end of the last complete frame
        self._ramp_from = np.full(n, db_to_gain(g0))   # linear gains the current frame ramps
        self._ramp_to = np.full(n, db_to_gain(g0))     # between (from the frames before it)
        self._level = [0.0] * n                 # active power average (0: none yet)
        self._seen = [0] * n                    # frames in the average (running-mean start)
        self._env = [-1.0] * n                  # 30 ms power envelope (-1: none yet)
        # noise floor: running minimum of the current sub-window and the last sub-windows' minima
        self._floor_cur = [math.inf] * n
        self._floor_n = [0] * n
        self._floor_parts = [[math.inf] * self._FLOOR_PARTS for _ in range(n)]
        self._hang_left = [0] * n
        self._acc = np.zeros(n)                 # sum of squares of the partial frame
        self._acc_n = 0                         # samples in the partial frame

    def _frame_gain(self, c: int, power: float) -> float:
        """Update channel ``c`` with one complete frame of mean power ``power``; return the
        new gain in dB."""
        env = self._env[c]
        env = power if env < 0.0 else env + self._beta * (power - env)
        # after digital silence the envelope restarts on the next frame (no slow rise from 0)
        self._env[c] = env if power > _SILENT else -1.0
        lvl = 10.0 * math.log10(env) if env > _SILENT else _FLOOR_DB
        gate = self.gate_dbfs
        if self.gate_above_noise_db is not None:
            parts = self._floor_parts[c]
            floor = min(self._floor_cur[c], *parts)     # inf (no gate passes) until known
            gate = max(gate, floor + self.gate_above_noise_db)
            if env > _SILENT:                   # digital silence (an idle port) says nothing
                if lvl < self._floor_cur[c]:
                    self._floor_cur[c] = lvl
                self._floor_n[c] += 1
                if self._floor_n[c] == self._part_frames:
                    parts.pop(0)
                    parts.append(self._floor_cur[c])
                    self._floor_cur[c] = math.inf
                    self._floor_n[c] = 0
        speech = lvl >= gate
        if speech:
            self._hang_left[c] = self._hang
        elif self._hang_left[c] > 0:
            self._hang_left[c] -= 1
        else:
            return self._g_db[c]                # pause: hold
        seen = self._seen[c] + 1
        self._seen[c] = seen
        a = max(self._alpha, 1.0 / seen)
        p = self._level[c] + a * (power - self._level[c])
        self._level[c] = p
        g = self._g_db[c]
        if not speech or p <= 0.0:
            return g                            # hangover: counts in the level only
        want = self.target_dbfs - 10.0 * math.log10(p)
        want = min(max(want, self.min_gain_db), self.max_gain_db)
        if want < g:
            g = max(want, g - self._down)
        else:
            g = min(want, g + self._up)
        self._g_db[c] = g
        return g

    def process(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """Apply the AGC to one block.

        Parameters
        ----------
        x : ndarray of float
            1-D when ``channels == 1``, else (channels, samples); any length including 0.

        Returns
        -------
        ndarray of float32
            Same shape; not delayed.
        """
        a = np.asarray(x)
        if a.dtype.kind != "f":
            raise ValueError(f"Agc takes float samples (full scale 1.0), got {a.dtype.name}")
        one_d = a.ndim == 1
        if one_d:
            if self.channels != 1:
                raise ValueError(f"Agc has {self.channels} channels; pass (channels, "
                                 f"samples), got shape {a.shape}")
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] != self.channels:
            raise ValueError(f"expected shape ({self.channels}, samples), got {a.shape}")
        m = a.shape[1]
        if m == 0:
            out0 = np.zeros(a.shape, dtype=np.float32)
            return out0[0] if one_d else out0
        f, n0, ch = self.frame, self._acc_n, self.channels
        pos = n0 + m                            # samples since the current frame began
        done = pos // f                         # frames completed in this block
        nf = (pos + f - 1) // f                 # frames touched (current one included)
        sq = np.zeros((ch, nf * f))
        sq[:, n0:pos] = np.square(a, dtype=np.float64)
        sums = sq.reshape(ch, nf, f).sum(axis=2)
        sums[:, 0] += self._acc
        # linear gains at the frame boundaries: [ramp start, end of frame 0, end of frame 1 ...]
        bounds = np.empty((ch, nf + 1))
        bounds[:, 0] = self._ramp_from
        bounds[:, 1] = self._ramp_to
        inv_f = 1.0 / f
        for c in range(ch):
            for k in range(done):
                g_db = self._frame_gain(c, float(sums[c, k]) * inv_f)
                if k + 2 <= nf:
                    bounds[c, k + 2] = 10.0 ** (g_db / 20.0)
        # per-sample gain: frame k ramps from bounds[k] to bounds[k + 1]
        j = np.arange(n0, pos)
        fk = j // f
        frac = self._ramp[j - fk * f]
        lo = bounds[:, fk]
        gain = lo + (bounds[:, fk + 1] - lo) * frac
        y = (a * gain).astype(np.float32)
        # carry: the partial frame and the ramp it is on
        if done:
            self._ramp_from = bounds[:, done].copy()
            self._ramp_to = np.array([10.0 ** (g / 20.0) for g in self._g_db])
        self._acc_n = pos % f
        self._acc = sums[:, done].copy() if self._acc_n else np.zeros(ch)
        return y[0] if one_d else y


__all__ = ["DBU_VOLTS", "REFERENCE_DBFS", "SINE_FS_DBFS", "Agc", "Gain", "LineCalibration",
           "LineUnit", "active_speech_level", "db_to_gain", "dbu_to_volts",
           "frame_levels_dbfs", "gain_to_db", "rx_gain", "tx_gain", "volts_to_dbu"]
