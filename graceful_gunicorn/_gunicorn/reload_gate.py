"""A reload that never leaves the server waiting for workers to boot.

On ``SIGHUP`` gunicorn forks the new workers and sends the old ones SIGTERM at
once, from ``manage_workers`` (arbiter.py ``reload``): while the new ones import
the app, nobody accepts, and every client waits for that import (seconds, for an
app with an ORM or a model to load). The gate holds those SIGTERMs until every
new worker has loaded the app (each one says so in the shared state when it is
about to serve), or ``reload_ready_timeout`` has passed (then with a warning).

If a new worker cannot load the app, the reload is given up: the old workers
keep serving, the new ones that did boot are stopped, the first failure's
traceback and one line of the master's are logged, and gunicorn's halt on a
boot error, which would take the serving server down, does not happen (the
worker exits with 0; :meth:`GracefulWorkerMixin.load_wsgi`).

gunicorn 24+ waits inside ``reload`` for the old workers to exit, up to
``graceful_timeout``, reaping every 0.1 s (its loop does not run meanwhile):
the gate opens from that reap there (:data:`compat.RELOAD_WAITS_FOR_OLD_WORKERS`).
"""

from __future__ import annotations

import signal
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from . import compat, master_state

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
        self, server: Arbiter, state: master_state.MasterState, generation: int, timeout: float
    ) -> None:
        self.server = server
        self.state = state
        #: The new generation (the master's, after its SIGHUP).
        self.generation = generation
        self.started = time.monotonic()
        self.until = self.started + timeout
        self.timeout = timeout
        #: ``None`` while the gate holds; ``"open"``, ``"timed out"`` or ``"failed"`` after.
        self.outcome: str | None = None
        self._said_held = False
        state.hold_reload(generation)

    @property
    def _log(self) -> Any:
        return self.server.log  # gunicorn's error logger

    @property
    def holding(self) -> bool:
        """Whether the old workers still wait for the new ones; after a failed
        reload, until the new ones are gone (gunicorn would stop the oldest)."""
        if self.outcome == "failed":
            return any(
                worker_generation(w) == self.generation for w in self.server.WORKERS.values()
            )
        return self.outcome is None

    def holds(self, pid: int) -> bool:
        """Whether a SIGTERM that gunicorn sends worker ``pid`` now must wait."""
        self.update()
        if not self.holding:
            return False
        generation = worker_generation(self.server.WORKERS.get(pid))
        held = generation is not None and generation < self.generation
        if held and not self._said_held and self.outcome is None:
            self._said_held = True
            self._log.info(
                "graceful_gunicorn: reload: the old workers serve until the new ones have "
                "loaded the app (at most reload_ready_timeout=%gs)",
                self.timeout,
            )
        return held

    def update(self) -> bool:
        """Look at the new workers; whether the gate has just opened."""
        if self.outcome is not None:
            return False
        now = time.monotonic()
        if self.state.reload_failed(self.generation):
            self._fail()
            return False
        ready = self.state.ready_in(self.generation)
        if ready >= self.server.num_workers:
            self._open("open")
            self._log.info(
                "graceful_gunicorn: reload: %d new worker(s) ready after %.1fs; "
                "the old workers stop now",
                ready,
                now - self.started,
            )
            return True
        if now >= self.until:
            self._open("timed out")
            self._log.warning(
                "graceful_gunicorn: reload: %d of %d new worker(s) ready after "
                "reload_ready_timeout=%gs; stopping the old workers anyway",
                ready,
                self.server.num_workers,
                self.timeout,
            )
            return True
        return False

    def close(self) -> None:
        """The server stops: nothing is held any more."""
        self._open("closed")

    def _open(self, outcome: str) -> None:
        self.outcome = outcome
        self.state.hold_reload(0)

    def _fail(self) -> None:
        # The old workers keep serving; the shared state keeps the gate, so that
        # a later worker of this generation that cannot boot does not halt either.
        self.outcome = "failed"
        self._log.error(
            "graceful_gunicorn: reload failed: a new worker could not load the app "
            "(see its traceback); the old workers keep serving. Fix the app and send "
            "SIGHUP again"
        )
        workers = sorted(self.server.WORKERS.items(), key=lambda item: item[1].age)
        old = [pid for pid, w in workers if (worker_generation(w) or 0) < self.generation]
        compat.make_newest(self.server, old)
        for pid, worker in workers:
            if worker_generation(worker) == self.generation:
                with suppress(OSError):
                    self.server.kill_worker(pid, signal.SIGTERM)


__all__ = ["ReloadGate", "worker_generation"]
