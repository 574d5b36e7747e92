"""A reload that never leaves the server waiting for workers to boot.

On ``SIGHUP`` gunicorn forks the new workers and sends the old ones SIGTERM at
once, from ``manage_workers`` (arbiter.py ``reload``): while the new ones import
the app, nobody accepts, and every client waits for that import (seconds, for an
app with an ORM or a model to load). The gate holds those SIGTERMs until every
new worker has loaded the app (each one says so in its flags when it is about
to serve, :mod:`.worker_flags`), or ``reload_ready_timeout`` has passed (then with a warning);
gunicorn's loop asks again on each turn (``manage_workers``).

If a new worker cannot load the app, the reload is given up: the old workers
keep serving (given the newest ages, so that gunicorn keeps them), the new ones
that did boot are stopped, the first failure's traceback and one line of the
master's are logged, and gunicorn's halt on a boot error, which would take the
serving server down, does not happen: a worker made while the gate held exits
with 0 (:meth:`GracefulWorkerMixin.load_wsgi`). A worker made later (a
recycle, a respawn) loads the new app as gunicorn's do, and halts the server
if it cannot.

gunicorn 24+ waits inside ``reload`` for the old workers to exit, up to
``graceful_timeout``, reading no signal meanwhile; while the gate holds, the
master ends that wait at once (:func:`compat.make_newest` on every worker, in
their order), so that its loop goes on reading signals and asking the gate.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from . import compat, master_state
from .worker_flags import flags_of

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter


def worker_generation(worker: Any) -> int | None:
    """The reload generation a worker object of the master was made in (graceful
    workers carry it), or ``None`` for a worker class that is not ours."""
    generation = getattr(worker, "generation", None)
    return generation if isinstance(generation, int) else None


class ReloadGate:
    """Holds the old workers' SIGTERMs of one reload until the new generation is ready."""

    def __init__(
        self,
        server: Arbiter,
        state: master_state.MasterState,
        generation: int,
        timeout: Callable[[], float],
        serves_on: Callable[[int], bool],
    ) -> None:
        self.server = server
        self.state = state
        #: The new generation (the master's, after its SIGHUP).
        self.generation = generation
        self.started = time.monotonic()
        #: ``reload_ready_timeout``, read once gunicorn has read the reloaded config.
        self._timeout = timeout
        #: Whether a worker is not being stopped (RecycleOverlap.serves_on).
        self._serves_on = serves_on
        self.timeout: float | None = None
        #: ``None`` while the gate holds; ``"open"``, ``"timed out"``, ``"failed"``,
        #: ``"closed"`` (the server stops) or ``"off"`` (``reload_ready_timeout=0``) after.
        self.outcome: str | None = None
        self._said_held = False
        #: After a failed reload, the old workers until gunicorn's loop turns: its
        #: pass that found the failure chose whom to stop by the ages before it.
        self._kept: set[int] = set()
        self._failed_this_turn = False
        state.hold_reload(generation)

    @property
    def _log(self) -> Any:
        return self.server.log  # gunicorn's error logger

    @property
    def holding(self) -> bool:
        """Whether the gate still holds a SIGTERM of gunicorn's."""
        return self.outcome is None or self._failed_this_turn

    def next_turn(self) -> None:
        """gunicorn's loop begins a turn (``murder_workers``, then ``manage_workers``):
        its reload is over; a worker made from now on is not this reload's."""
        if self._failed_this_turn:
            self._failed_this_turn = False
            self._kept.clear()
            self.state.hold_reload(0)

    def resolve(self) -> None:
        """Read ``reload_ready_timeout`` (gunicorn has read the reloaded config by the
        time it forks the new workers); 0 opens the gate before they are made."""
        if self.timeout is None:
            self.timeout = self._timeout()
            if self.timeout <= 0:
                self._open("off")

    def holds(self, pid: int) -> bool:
        """Whether a SIGTERM that gunicorn sends worker ``pid`` now must wait.

        The gate opens only between gunicorn's passes (:meth:`update`, from the
        master's loop): inside one, gunicorn may yet stop the new worker that
        would open it (``SIGTTOU``; arbiter.py ``manage_workers`` signals the
        oldest first, the old workers before it).
        """
        self.resolve()
        if pid in self._kept:
            return True
        if self.outcome is not None:
            return False
        generation = worker_generation(self.server.WORKERS.get(pid))
        held = generation is not None and generation < self.generation
        if held and not self._said_held:
            self._said_held = True
            self._log.info(
                "graceful_gunicorn: reload: the old workers serve until the new ones have "
                "loaded the app (at most reload_ready_timeout=%gs)",
                self.timeout,
            )
        return held

    def retires(self, pid: int) -> bool:
        """Whether worker ``pid`` is an old one that stops once the gate opens (not
        once a new worker failed: the old ones are kept)."""
        if self.outcome is not None or self.state.reload_failed(self.generation):
            return False
        generation = worker_generation(self.server.WORKERS.get(pid))
        return generation is not None and generation < self.generation

    def keeps(self, pid: int) -> bool:
        """Whether worker ``pid`` is an old one that serves on because a new worker
        could not load the app."""
        if self.outcome != "failed" and not self.state.reload_failed(self.generation):
            return False
        generation = worker_generation(self.server.WORKERS.get(pid))
        return generation is not None and generation < self.generation

    def ready(self) -> int:
        """How many new workers loaded the app and serve on: a worker that became
        ready and then exited, or that gunicorn is stopping (``SIGTTOU`` during the
        reload), is not counted."""
        return sum(
            1
            for pid, worker in list(self.server.WORKERS.items())
            if worker_generation(worker) == self.generation
            and _ready(worker)
            and self._serves_on(pid)
        )

    def update(self) -> None:
        """Look at the new workers: open the gate once they are ready, or too late."""
        self.resolve()
        if self.outcome is not None or self.timeout is None:
            return
        now = time.monotonic()
        if self.state.reload_failed(self.generation):
            self._fail()
            return
        ready = self.ready()
        if ready >= self.server.num_workers:
            self._open("open")
            self._log.info(
                "graceful_gunicorn: reload: %d new worker(s) ready after %.1fs; "
                "the old workers stop now",
                ready,
                now - self.started,
            )
            return
        if now >= self.started + self.timeout:
            self._open("timed out")
            self._log.warning(
                "graceful_gunicorn: reload: %d of %d new worker(s) ready after "
                "reload_ready_timeout=%gs; stopping the old workers anyway",
                ready,
                self.server.num_workers,
                self.timeout,
            )

    def close(self) -> None:
        """The server stops: nothing is held any more."""
        self._open("closed")

    def _open(self, outcome: str) -> None:
        self.outcome = outcome
        self.state.hold_reload(0)

    def _fail(self) -> None:
        # The shared gate stays until gunicorn's loop turns: a worker its reload
        # still forks (the failure can come first) is this reload's too.
        self.outcome = "failed"
        self._failed_this_turn = True
        self._log.error(
            "graceful_gunicorn: reload failed: a new worker could not load the app "
            "(see its traceback); the old workers keep serving (a worker that replaces "
            "one of them loads the new app). Fix the app and send SIGHUP again"
        )
        workers = sorted(self.server.WORKERS.items(), key=lambda item: item[1].age)
        old = [pid for pid, w in workers if (worker_generation(w) or 0) < self.generation]
        compat.make_newest(self.server, old)  # gunicorn now stops the new ones first
        self._kept = set(old)
        for pid, worker in workers:
            if worker_generation(worker) == self.generation:
                with suppress(OSError):
                    self.server.kill_worker(pid, signal.SIGTERM)


def _ready(worker: object) -> bool:
    flags = flags_of(worker)
    return flags is not None and flags.ready


__all__ = ["ReloadGate", "worker_generation"]
