"""Recycles that never leave the server a worker short.

On ``max_requests`` gunicorn's worker stops at once and the master forks its
replacement only once it has exited (arbiter.py ``manage_workers`` counts the
workers still there): for the stopping worker's drain plus the new one's
import, the server has a worker less, and none at all when a small server's
workers reach the limit together. A graceful worker that reaches it keeps
serving instead and asks the master for a replacement (:mod:`.worker_flags`);
on its next turn the master forks one, makes the old worker the oldest (so
that gunicorn, now one worker over, picks it to stop), and holds gunicorn's
SIGTERMs to it until its replacement is ready or ``recycle_ready_timeout``
has passed. Then the old worker runs its sequence with reason ``recycle``.

One replacement per recycling worker, and none once the server stops: a
worker that reaches the limit then stops at once, as in gunicorn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import compat
from .worker_flags import flags_of

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter


@dataclass
class _Overlap:
    """One recycling worker and the replacement forked for it."""

    #: The replacement's pid (``None``: none is made, the worker stops at once).
    replacement: int | None
    #: When the worker stops anyway (monotonic), ready or not.
    deadline: float
    timeout: float = 0.0
    released: bool = False


class RecycleOverlap:
    """The master's side of recycles without a hole (see the module's docstring)."""

    def __init__(
        self,
        server: Arbiter,
        timeout: Callable[[], float],
        send_sigterm: Callable[[int], None],
    ) -> None:
        self.server = server
        #: ``recycle_ready_timeout``, read on each new recycle (a reload may change it).
        self._timeout = timeout
        #: Sends gunicorn's own SIGTERM, past :meth:`holds`.
        self._send_sigterm = send_sigterm
        self._overlaps: dict[int, _Overlap] = {}

    @property
    def _log(self) -> Any:
        return self.server.log  # gunicorn's error logger

    def holds(self, pid: int) -> bool:
        """Whether gunicorn's SIGTERM to worker ``pid`` is this overlap's to send."""
        return pid in self._overlaps

    def update(self, *, stopping: bool) -> None:
        """On each turn of the master's loop: replace the workers that asked, and
        release the ones whose replacement is ready (``stopping``: the server
        stops, no more workers are made)."""
        workers = self.server.WORKERS
        for pid in [pid for pid in self._overlaps if pid not in workers]:
            del self._overlaps[pid]
        for pid, worker in list(workers.items()):
            flags = flags_of(worker)
            if flags is not None and flags.wants_replacement and pid not in self._overlaps:
                self._begin(pid, stopping=stopping)
        now = time.monotonic()
        for pid, overlap in self._overlaps.items():
            if not overlap.released:
                self._maybe_release(pid, overlap, now)

    def _begin(self, pid: int, *, stopping: bool) -> None:
        timeout = self._timeout()
        if stopping or timeout <= 0:
            self._overlaps[pid] = _Overlap(None, time.monotonic())
            return
        compat.make_oldest(self.server, pid)
        # In the forked child this call does not return: the worker's process
        # leaves the master's loop here, as from gunicorn's own spawn_workers.
        replacement = self.server.spawn_worker()
        self._overlaps[pid] = _Overlap(replacement, time.monotonic() + timeout, timeout)
        self._log.info(
            "graceful_gunicorn: worker %s reached max_requests; it serves until its "
            "replacement %s is ready (at most recycle_ready_timeout=%gs)",
            pid,
            replacement,
            timeout,
        )

    def _maybe_release(self, pid: int, overlap: _Overlap, now: float) -> None:
        replacement = overlap.replacement
        if replacement is not None:
            worker = self.server.WORKERS.get(replacement)
            flags = flags_of(worker)
            if worker is not None and (flags is None or not flags.ready):
                if now < overlap.deadline:
                    return
                self._log.warning(
                    "graceful_gunicorn: the replacement %s of worker %s is not ready after "
                    "recycle_ready_timeout=%gs; worker %s stops anyway",
                    replacement,
                    pid,
                    overlap.timeout,
                    pid,
                )
        overlap.released = True
        flags = flags_of(self.server.WORKERS.get(pid))
        if flags is not None:
            flags.note_recycle()
        with suppress(OSError):
            self._send_sigterm(pid)


__all__ = ["RecycleOverlap"]
