"""Three bytes one worker shares with its master, in memory mapped before the fork.

gunicorn makes each worker object in the master and forks right after
(arbiter.py ``spawn_worker``), so a map the object creates in ``__init__`` is
seen by both: the worker says that it is ready (its app loaded, about to serve)
and that it reached ``max_requests`` and wants a replacement; the master reads
both from the worker objects it keeps (``Arbiter.WORKERS``), and says, before
it sends this worker alone a SIGTERM, that the SIGTERM is a recycle. Like
:mod:`.master_state`, the map is anonymous and holds plain bytes.
"""

from __future__ import annotations

import mmap

_READY = 0
_WANTS_REPLACEMENT = 1
_RECYCLE = 2


class WorkerFlags:
    """What one worker tells its master without a signal (see the module's docstring)."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, 3)

    @property
    def ready(self) -> bool:
        """Whether the worker loaded the app and serves."""
        return self._map[_READY] != 0

    def mark_ready(self) -> None:
        """From the worker: it loaded the app and is about to serve."""
        self._map[_READY] = 1

    @property
    def wants_replacement(self) -> bool:
        """Whether the worker reached ``max_requests`` and serves until it is replaced."""
        return self._map[_WANTS_REPLACEMENT] != 0

    def ask_for_replacement(self) -> None:
        """From the worker: it reached ``max_requests``; the master forks its replacement."""
        self._map[_WANTS_REPLACEMENT] = 1

    @property
    def recycle(self) -> bool:
        """Whether the master sent this worker alone a SIGTERM: a recycle."""
        return self._map[_RECYCLE] != 0

    def note_recycle(self) -> None:
        """From the master, before it sends this worker alone a SIGTERM (``max_requests``,
        ``SIGTTOU``): the worker need not wait to tell it from a SIGTERM to the whole
        process group."""
        self._map[_RECYCLE] = 1


def flags_of(worker: object) -> WorkerFlags | None:
    """The flags of a worker object of the master (graceful workers have them)."""
    flags = getattr(worker, "flags", None)
    return flags if isinstance(flags, WorkerFlags) else None


__all__ = ["WorkerFlags", "flags_of"]
