"""Recycles that never leave the server a worker short.

On ``max_requests`` gunicorn's worker stops at once and the master forks its
replacement only once it has exited (arbiter.py ``manage_workers`` counts the
workers still there): for the stopping worker's drain plus the new one's
import, the server has a worker less, and none at all when a small server's
workers reach the limit together. A graceful worker that reaches it keeps
serving instead and asks the master for a replacement (:mod:`.worker_flags`).

On each turn of its loop the master counts the workers that will go on
serving: not the ones that asked, nor the ones sent a SIGTERM of their own
(``SIGTTOU``, a reload's old workers). It forks what is missing from the
configured number (gunicorn's ``manage_workers``, which counts every worker
still there, would not), makes the workers that asked the oldest (so that
gunicorn, one worker over, picks them to stop) and holds gunicorn's SIGTERMs
to them. Once as many other workers as configured are ready and serving
(workers that asked included: they serve until they get their SIGTERM), or
``recycle_ready_timeout`` after its replacement was forked (after it asked,
if none was), that worker gets the SIGTERM and runs its sequence with reason
``recycle``.

So each recycling worker has one extra worker beside it, never more, and a
worker lost meanwhile (a crash, a timeout) is replaced at once, as gunicorn
would. The old workers a reload's gate holds count neither: gunicorn counts
them, so without this a new worker lost during the gate (or added by
``SIGTTIN``) would not be forked until the gate timed out. None is forked
once the server is going away (``shutdown_delay``): a worker at
``max_requests`` then serves on until the server's stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from . import compat
from .worker_flags import flags_of

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter


class RecycleOverlap:
    """The master's side of recycles without a hole (see the module's docstring)."""

    def __init__(
        self,
        server: Arbiter,
        timeout: Callable[[], float],
        send_sigterm: Callable[[int], None],
        retiring: Callable[[int], bool] = lambda pid: False,
        kept: Callable[[int], bool] = lambda pid: False,
    ) -> None:
        self.server = server
        #: ``recycle_ready_timeout``, read on each turn (a reload may change it).
        self._timeout = timeout
        #: Sends gunicorn's own SIGTERM, past :meth:`holds`.
        self._send_sigterm = send_sigterm
        #: Whether a worker stops soon without a SIGTERM of its own yet: a
        #: reload's old worker, held by its gate (ReloadGate.retires).
        self._retiring = retiring
        #: Whether a worker is an old one that a failed reload keeps serving
        #: (ReloadGate.keeps).
        self._kept = kept
        #: The workers that asked, and when the master saw it (monotonic).
        self._asked: dict[int, float] = {}
        #: Those of them sent their SIGTERM.
        self._released: set[int] = set()
        #: Workers sent a SIGTERM of their own otherwise (they stop: not counted).
        self._stopping: set[int] = set()
        #: The workers that retired on the last turn.
        self._retired: set[int] = set()
        #: Those that asked whose replacement was forked (its timeout counts from then).
        self._replaced: set[int] = set()

    @property
    def _log(self) -> Any:
        return self.server.log  # gunicorn's error logger

    def holds(self, pid: int) -> bool:
        """Whether gunicorn's SIGTERM to worker ``pid`` is this overlap's to send."""
        return pid in self._asked

    def serves_on(self, pid: int) -> bool:
        """Whether worker ``pid`` was neither released nor sent a SIGTERM of its own."""
        return pid not in self._released and pid not in self._stopping

    def note_sigterm(self, pid: int) -> None:
        """The master sent worker ``pid`` alone a SIGTERM: it stops, it is not counted."""
        self._stopping.add(pid)

    def update(self, *, stopping: bool) -> None:
        """On each turn of the master's loop: fork what is missing, and release the
        workers that asked once enough other workers serve (``stopping``: the server
        is going away; nothing is forked or released)."""
        # Copies: gunicorn < 24 reaps workers in its SIGCHLD handler (arbiter.py
        # handle_chld), which may run between any two steps of this loop.
        workers = dict(self.server.WORKERS)
        for gone in [pid for pid in self._asked if pid not in workers]:
            del self._asked[gone]
            self._released.discard(gone)
            self._replaced.discard(gone)
        self._stopping &= set(workers)
        now = time.monotonic()
        for pid, worker in workers.items():
            flags = flags_of(worker)
            if flags is not None and flags.wants_replacement and pid not in self._asked:
                self._asked[pid] = now
                compat.make_oldest(self.server, pid)
        # A reload's old workers, held by its gate: gunicorn counts them, so it
        # would not replace a new worker lost meanwhile (or add one on SIGTTIN).
        retiring = {pid for pid in workers if self._retiring(pid)}
        for pid in self._retired - retiring:
            if pid not in self._asked or pid in self._replaced or not self.serves_on(pid):
                continue
            if self._kept(pid):
                # A failed reload keeps it: its replacement is forked only now,
                # so recycle_ready_timeout counts from now.
                self._asked[pid] = now
            else:
                # The gate opened or timed out: the new workers replace it, and
                # its time is not extended.
                self._replaced.add(pid)
        self._retired = retiring
        if not self._asked and not retiring:
            return  # gunicorn's own count is right
        waiting = [pid for pid in self._asked if pid not in self._released]
        timeout = self._timeout()
        if timeout <= 0:
            for pid in waiting:
                self._release(pid)
            waiting = []
        if stopping:
            # shutdown_delay: they serve on, with no extra worker, until the
            # server's graceful stop signals every worker (nothing holds that).
            return
        # Turned off, a worker at max_requests counts until it exits, as in gunicorn.
        leaving = self._stopping | retiring | (set(self._asked) if timeout > 0 else set())
        staying = [pid for pid in workers if pid not in leaving]
        for _ in range(self.server.num_workers - len(staying)):
            # In the forked child this call does not return: the worker's process
            # leaves the master's loop here, as from gunicorn's own spawn_workers.
            staying.append(self.server.spawn_worker())
            # (The old workers a gate holds get no fork of their own: not them.)
            unreplaced = [p for p in waiting if p not in self._replaced and p not in retiring]
            if unreplaced:
                # Forked later than it asked (a reload's gate held it): its
                # recycle_ready_timeout counts from this fork.
                first = min(unreplaced, key=self._asked.__getitem__)
                self._replaced.add(first)
                self._asked[first] = now
            asking = [pid for pid in waiting if pid not in retiring]
            if asking:
                self._log.info(
                    "graceful_gunicorn: worker %s forked beside %d worker(s) at "
                    "max_requests, which serve until it is ready (at most "
                    "recycle_ready_timeout=%gs)",
                    staying[-1],
                    len(asking),
                    timeout,
                )
            else:
                self._log.info(
                    "graceful_gunicorn: reload: worker %s forked for a new worker that "
                    "is missing; the old workers serve until the new ones are ready",
                    staying[-1],
                )
        if not waiting:
            return
        workers = dict(self.server.WORKERS)
        # Those that asked still serve, so they count as well: a replacement
        # that reached max_requests before the master saw it ready (a small
        # max_requests under load) must not keep its own recycler waiting.
        serving = {
            pid
            for pid, worker in workers.items()
            if self.serves_on(pid) and pid not in retiring and _ready(worker)
        }
        for pid in sorted(waiting, key=self._asked.__getitem__):
            others = len(serving - {pid})
            if others >= self.server.num_workers:
                serving.discard(pid)
                self._release(pid)
            elif now >= self._asked[pid] + timeout and pid not in retiring:
                # (An old worker the gate holds stops with the gate, not before.)
                self._log.warning(
                    "graceful_gunicorn: %d of %d worker(s) ready after "
                    "recycle_ready_timeout=%gs; worker %s, at max_requests, stops anyway",
                    others,
                    self.server.num_workers,
                    timeout,
                    pid,
                )
                serving.discard(pid)
                self._release(pid)

    def _release(self, pid: int) -> None:
        self._released.add(pid)
        flags = flags_of(self.server.WORKERS.get(pid))
        if flags is not None:
            flags.note_recycle()
        with suppress(OSError):
            self._send_sigterm(pid)


def _ready(worker: object) -> bool:
    """Whether a worker serves: a graceful one once it said so, any other at once."""
    if worker is None:
        return False
    flags = flags_of(worker)
    return flags is None or flags.ready


__all__ = ["RecycleOverlap"]
