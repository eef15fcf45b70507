"""Recording tap: per-port receive and transmit audio to WAV files while the engine runs.

The tap runs on the engine thread and only copies the tick's arrays onto a deque (no I/O, no
locks); the control thread drains it into ``<record_dir>/<stamp>/<port>.rx.wav`` and
``<port>.tx.wav`` (engine rate, 16-bit PCM).
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

from brug.gateway.control.protocol import ProtocolError

if TYPE_CHECKING:
    from brug.gateway.control.commands import Context
    from brug.gateway.engine import Engine

Array = npt.NDArray[np.float32]
#: Most ticks held between drains (about 20 s at 5 ms); older ones are dropped and counted.
MAX_PENDING = 4096


class Recorder:
    """Start/stop a recording; :meth:`drain` writes queued blocks (control thread)."""

    def __init__(self, record_dir: Path) -> None:
        self.record_dir = record_dir
        self.active = False
        self._q: collections.deque[tuple[list[str], Array, Array]] = collections.deque(
            maxlen=MAX_PENDING)
        self._files: dict[str, sf.SoundFile] = {}
        self._remove: Any = None
        self._dir: Path | None = None
        self._ports: set[str] | None = None
        self.frames = 0

    def describe(self) -> dict[str, Any] | None:
        if not self.active or self._dir is None:
            return None
        return {"dir": str(self._dir), "files": sorted(self._files)}

    def start(self, ctx: Context, ports: list[str] | None) -> dict[str, Any]:
        if self.active:
            raise ProtocolError("conflict", "already recording")
        names = ctx.call(lambda e: e.port_names)
        if ports:
            missing = [p for p in ports if p not in names]
            if missing:
                raise ProtocolError("unknown_port", f"no port named {missing[0]!r}")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        d = self.record_dir / stamp
        n = 1
        while d.exists():
            n += 1
            d = self.record_dir / f"{stamp}-{n}"
        d.mkdir(parents=True)
        self._dir, self._ports, self.frames = d, set(ports) if ports else None, 0
        self._rate = ctx.engine.rate

        def tap(t: int, rx: Array, tx: Array) -> None:
            # engine thread: copy only
            self._q.append((self._engine.port_names, rx.copy(), tx.copy()))

        def add(e: Engine) -> Any:
            self._engine = e
            return e.add_tap(tap)

        self._remove = ctx.call(add)
        self.active = True
        ctx.publish("config.record", {"action": "start", "dir": str(d)}, "recording started")
        return {"dir": str(d), "ports": sorted(self._ports) if self._ports else names}

    def drain(self) -> None:
        """Write queued blocks to the WAV files (control thread; never the engine thread)."""
        while self._q and self._dir is not None:
            names, rx, tx = self._q.popleft()
            for i, name in enumerate(names):
                if self._ports is not None and name not in self._ports:
                    continue
                for side, arr in (("rx", rx), ("tx", tx)):
                    key = f"{name}.{side}.wav"
                    f = self._files.get(key)
                    if f is None:
                        f = sf.SoundFile(str(self._dir / key), "w", samplerate=self._rate,
                                         channels=1, subtype="PCM_16")
                        self._files[key] = f
                    f.write(np.clip(arr[i], -1.0, 1.0))
            self.frames += rx.shape[1]

    def stop(self, ctx: Context) -> dict[str, Any]:
        remove = self._remove
        ctx.call(lambda e: remove())
        self.drain()
        files = sorted(str(self._dir / k) for k in self._files) if self._dir else []
        for f in self._files.values():
            f.close()
        self._files.clear()
        self.active = False
        d = str(self._dir)
        ctx.publish("config.record", {"action": "stop", "dir": d}, "recording stopped")
        return {"dir": d, "files": files, "seconds": round(self.frames / self._rate, 3)}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self.active = False
