"""The port contract between the engine and a device (sound card, file, memory, RTP).

A port moves *engine-rate*, mono float32 blocks. Everything device-specific (sample format,
channel selection, resampling with drift correction, codecs, jitter buffers) happens inside the
port. The engine calls :meth:`Port.read` and :meth:`Port.write` once per tick, in that order, from
its own thread (never from a PortAudio callback).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Block = npt.NDArray[np.float32]


@dataclass
class PortStats:
    """Counters a port keeps; all counts are events or samples, never wall time."""

    underruns: int = 0        # engine asked for audio the device had not delivered (zeros given)
    overruns: int = 0         # device delivered audio with no room for it (oldest dropped)
    status_flags: int = 0     # PortAudio status flags OR-ed together
    reopens: int = 0          # times a supervisor reopened the device
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"underruns": self.underruns, "overruns": self.overruns,
                "status_flags": self.status_flags, "reopens": self.reopens, **self.extra}


class Port(ABC):
    """Device side of one gateway port.

    Lifecycle: ``start(engine_rate, block)`` once, then ``read``/``write`` once per tick each,
    then ``stop()``. ``read`` and ``write`` run on the engine thread and must not block for
    longer than a fraction of a block (no waiting on devices: give zeros and count an underrun).
    """

    name: str
    #: Extra delay this port adds on its receive side, in engine samples (resampler group delay,
    #: jitter buffer); reported, not compensated.
    latency_samples: int = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = PortStats()

    @abstractmethod
    def start(self, engine_rate: int, block: int) -> None:
        """Open the device. ``engine_rate`` in Hz, ``block`` in engine samples per tick."""

    @abstractmethod
    def read(self, out: Block) -> None:
        """Fill ``out`` (shape ``(block,)``, engine rate, float32, nominal -1..1) in place.

        Real-time limits: called once per tick on the engine thread; no allocation on the hot
        path where avoidable, never blocks; on missing data fill zeros and count an underrun.
        """

    @abstractmethod
    def write(self, block: Block) -> None:
        """Queue one engine-rate block for the device (the engine has limited it to -1..1)."""

    @abstractmethod
    def stop(self) -> None:
        """Close the device. Idempotent."""

    def retime(self, shift_ppm: float | None = None) -> None:
        """The engine's ticks now follow another clock (its clock card was lost or came back,
        or the clock moved to the card of a new talker): buffers sized for the old pattern of
        ticks may measure themselves again. ``shift_ppm``: how much faster the new clock runs
        than the old one, when known (a card's offset its drift loop has learned), else
        ``None``. Called on the engine thread between ticks; default: nothing to do."""

    def poll_faults(self) -> list[tuple[str, str]]:
        """Return and clear faults seen since the last call as ``(kind, info)`` pairs.

        Called by the engine between ticks; kinds like ``"device_lost"``, ``"reopened"``.
        """
        return []


class MemoryPort(Port):
    """A port on numpy arrays at the engine rate: the virtual-clock port for tests and replays.

    ``rx`` is what the terminal receives over the air (fed to the gateway); everything the
    gateway writes is appended to ``tx`` (engine rate, same length as the run).
    """

    def __init__(self, name: str, rx: npt.ArrayLike | None = None) -> None:
        super().__init__(name)
        self._rx = np.zeros(0, np.float32) if rx is None else np.asarray(rx, np.float32)
        self._pos = 0
        self._tx: list[Block] = []

    def start(self, engine_rate: int, block: int) -> None:
        self._pos = 0

    def feed(self, x: npt.ArrayLike) -> None:
        """Append receive audio (engine rate) to what the port will deliver."""
        self._rx = np.concatenate([self._rx[self._pos:], np.asarray(x, np.float32)])
        self._pos = 0

    def read(self, out: Block) -> None:
        n = len(out)
        chunk = self._rx[self._pos:self._pos + n]
        out[:len(chunk)] = chunk
        if len(chunk) < n:
            out[len(chunk):] = 0.0
        self._pos += n

    def write(self, block: Block) -> None:
        self._tx.append(block.copy())

    @property
    def tx(self) -> Block:
        return np.concatenate(self._tx) if self._tx else np.zeros(0, np.float32)

    def stop(self) -> None:
        pass
