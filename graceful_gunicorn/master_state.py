"""State the gunicorn master shares with its workers, in memory mapped before the fork.

The master writes, its workers read: why the master is stopping and when it
started (so that a worker knows its real deadline), and a generation number
that ``SIGHUP`` increments (so that an old worker knows a ``SIGTERM`` means
"reload"). The map is anonymous (no path, no file) and holds plain numbers:
nothing is ever unpickled or executed from it.
"""

from __future__ import annotations

import mmap
import struct

STOP_NONE = 0
STOP_TERMINATE = 1
STOP_QUICK = 2

# stop kind (uint8), padding, generation (uint64), stop time (double, monotonic)
_LAYOUT = struct.Struct("<B7xQd")


class MasterState:
    """A few numbers shared between a gunicorn master and its forked workers."""

    def __init__(self) -> None:
        # Anonymous and MAP_SHARED: the forked workers see the master's writes.
        self._map = mmap.mmap(-1, _LAYOUT.size)

    def _read(self) -> tuple[int, int, float]:
        kind, generation, stop_at = _LAYOUT.unpack_from(self._map, 0)
        return int(kind), int(generation), float(stop_at)

    def _write(self, kind: int, generation: int, stop_at: float) -> None:
        _LAYOUT.pack_into(self._map, 0, kind, generation, stop_at)

    @property
    def stop_kind(self) -> int:
        """``STOP_NONE``, ``STOP_TERMINATE`` or ``STOP_QUICK``."""
        return self._read()[0]

    @property
    def stop_at(self) -> float:
        """The master's :func:`time.monotonic` time when it began to stop (0 if not)."""
        return self._read()[2]

    @property
    def generation(self) -> int:
        """How many times the master reloaded (``SIGHUP``)."""
        return self._read()[1]

    def begin_stop(self, kind: int, at: float) -> None:
        """Record that the master stops (the first stop wins its time)."""
        current, generation, stop_at = self._read()
        if current == STOP_NONE:
            stop_at = at
        self._write(max(kind, current), generation, stop_at)

    def next_generation(self) -> None:
        """Record a reload."""
        kind, generation, stop_at = self._read()
        self._write(kind, generation + 1, stop_at)


_current: MasterState | None = None


def current() -> MasterState | None:
    """The state of this process's master, if graceful_gunicorn.conf set it up."""
    return _current


def create() -> MasterState:
    """Create the state in the master (once, before the first fork)."""
    global _current
    if _current is None:
        _current = MasterState()
    return _current
