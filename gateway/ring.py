"""A preallocated float32 ring buffer for one producer thread and one consumer thread.

Used between a PortAudio callback (real-time thread) and the engine thread: the callback
writes captured audio into the rx ring and reads playback audio from the tx ring; the engine
does the opposite. Neither side takes a lock.

Memory-ordering reasoning (CPython, GIL)
----------------------------------------
The ring keeps two monotonically increasing integer counters: ``_w`` (samples ever written,
changed only by the producer) and ``_r`` (samples ever read, changed only by the consumer).
Each side *reads* the other's counter once per call (a snapshot), copies the data with numpy,
and then *publishes* its own counter with one attribute store. An attribute store of a Python
int is atomic under the GIL, and the GIL hand-over between threads is a full memory barrier,
so when the consumer sees a new ``_w`` every sample the producer copied before storing it is
visible; likewise the producer never overwrites samples the consumer has not yet released by
storing ``_r``. Even if numpy releases the GIL during a large copy, the store of the counter
comes after the copy in program order, and the other thread only looks at the counter. A stale
snapshot is always safe: it only under-estimates what can be read or written.

The producer therefore never moves ``_r``: when the ring is full, :meth:`write` drops the
*newest* samples that do not fit and counts an overrun. The consumer never moves ``_w``: when
the ring runs short, :meth:`read_into` fills the rest with zeros and counts an underrun.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.float32]


class Ring:
    """Single-producer/single-consumer float32 ring with a power-of-two capacity.

    Parameters
    ----------
    capacity:
        Minimum number of samples it holds; rounded up to a power of two.

    Real-time limits: :meth:`write`, :meth:`read_into`, :meth:`write_zeros`, :meth:`discard`
    and the properties allocate no sample buffers (only numpy view objects), take no locks,
    do no I/O and never raise on full/empty (they count instead).

    Examples
    --------
    >>> r = Ring(8)
    >>> r.write(np.arange(5, dtype=np.float32))
    5
    >>> out = np.empty(3, np.float32); r.read_into(out), out.tolist(), r.fill
    (3, [0.0, 1.0, 2.0], 2)
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1 sample, got {capacity}")
        cap = 1 << (int(capacity) - 1).bit_length()
        self.capacity = cap
        self._mask = cap - 1
        self._buf: Audio = np.zeros(cap, np.float32)
        self._w = 0  # samples ever written (producer only)
        self._r = 0  # samples ever read (consumer only)
        self.overruns = 0          # write calls that did not fit completely
        self.overrun_samples = 0   # samples dropped by those calls
        self.underruns = 0         # read calls that could not be served completely
        self.underrun_samples = 0  # zeros given instead

    @property
    def fill(self) -> int:
        """Samples ready to read (a snapshot; exact on the consumer thread)."""
        return self._w - self._r

    @property
    def space(self) -> int:
        """Samples that can be written without overrun (exact on the producer thread)."""
        return self.capacity - (self._w - self._r)

    # -- producer side ------------------------------------------------------------------
    def write(self, x: Audio) -> int:
        """Copy ``x`` (1-D, any stride) in; return samples written. Drops what does not fit
        (newest samples) and counts one overrun. Producer thread only."""
        n = len(x)
        w = self._w
        free = self.capacity - (w - self._r)
        if n > free:
            self.overruns += 1
            self.overrun_samples += n - free
            n = free
        if n <= 0:
            return 0
        i = w & self._mask
        first = min(n, self.capacity - i)
        np.copyto(self._buf[i:i + first], x[:first], casting="unsafe")
        if n > first:
            np.copyto(self._buf[:n - first], x[first:n], casting="unsafe")
        self._w = w + n  # publish after the copy
        return n

    def write_zeros(self, n: int) -> int:
        """Write ``n`` zeros (pre-fill); return samples written. Producer thread only."""
        w = self._w
        n = max(0, min(n, self.capacity - (w - self._r)))
        i = w & self._mask
        first = min(n, self.capacity - i)
        self._buf[i:i + first] = 0.0
        if n > first:
            self._buf[:n - first] = 0.0
        self._w = w + n
        return n

    # -- consumer side ------------------------------------------------------------------
    def read_into(self, out: Audio) -> int:
        """Fill ``out`` (1-D, any stride) with the oldest samples; return how many were real.

        When fewer than ``len(out)`` are available the rest of ``out`` is zeroed and one
        underrun is counted. Consumer thread only.
        """
        want = len(out)
        r = self._r
        n = min(want, self._w - r)
        if n > 0:
            i = r & self._mask
            first = min(n, self.capacity - i)
            np.copyto(out[:first], self._buf[i:i + first], casting="unsafe")
            if n > first:
                np.copyto(out[first:n], self._buf[:n - first], casting="unsafe")
            self._r = r + n  # release after the copy
        else:
            n = 0
        if n < want:
            out[n:] = 0.0
            self.underruns += 1
            self.underrun_samples += want - n
        return n

    def discard(self, n: int) -> int:
        """Drop up to ``n`` of the oldest samples; return how many. Consumer thread only."""
        r = self._r
        n = max(0, min(n, self._w - r))
        self._r = r + n
        return n

    def clear(self) -> None:
        """Drop everything readable. Consumer thread only (or with the producer stopped)."""
        self._r = self._w

    def reset_counters(self) -> None:
        """Zero the overrun/underrun counters (keeps the contents)."""
        self.overruns = self.overrun_samples = 0
        self.underruns = self.underrun_samples = 0
