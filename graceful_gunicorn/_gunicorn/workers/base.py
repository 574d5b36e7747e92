"""The behaviour every graceful worker shares, mixed into gunicorn's own workers.

The mixin overrides as little as it can and always calls ``super()``:

- ``init_signals``: creates the shutdown runner (WorkerShutdown) before the handlers exist;
- ``load_wsgi``: finds the app's lifecycle (or wraps the app in a fresh one);
- ``run``: starts the shutdown thread, runs gunicorn's loop, waits for the shutdown;
- ``handle_exit`` / ``handle_quit`` / ``handle_abort``: only record a flag.

gunicorn's own handlers do real work in signal context (``worker_int``, a
0.1 s sleep, ``sys.exit`` in the middle of a request; gthread's quick exit can
deadlock on a lock the interrupted thread holds), which is exactly what a
graceful shutdown must not do.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import suppress
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from gunicorn.arbiter import Arbiter

from ..._core.context import PHASES
from ..._core.lifecycle import Lifecycle
from ..._core.settings import SettingsError
from ..._wsgi.discovery import find_lifecycle
from ..._wsgi.lifecycle import Lifecycle as WSGILifecycle
from .. import compat, listeners, master_state, worker_reports
from ..master_state import STOP_TERMINATE
from ..server_settings import check_lifecycle_fits, settings_in_force
from ..worker_flags import WorkerFlags
from .shutdown import WorkerShutdown
from .stop_signals import Decision

#: How long a stopping worker keeps a kept-alive connection open for a next
#: request, from its last response or the stop, whichever came later (its own
#: ``keepalive`` timeout still ends it sooner): the client may already be
#: sending, and a close then loses the request. gunicorn 27's gthread worker
#: keeps its connections this long (``STOP_KEEPALIVE_LINGER`` in
#: gunicorn/workers/gthread.py); at the default ``keepalive`` of 2 s, gunicorn's
#: gevent worker keeps them as long. (0.1 s lost requests of a client that a
#: busy machine left unscheduled for longer.)
STOP_KEEPALIVE_LINGER = 2.0

#: Lingering connections close this long before the drain deadline at the
#: latest, so that gunicorn's loop finds them gone in time and the drain ends
#: by itself.
LINGER_MARGIN = 0.2

#: The most a stopping worker waits for the connections queued on its listeners to
#: be accepted, once the master's listeners refuse new ones (listeners.py).
BACKLOG_ACCEPT_WAIT = 1.0

if TYPE_CHECKING:
    from gunicorn.workers.base import Worker

    _Base = Worker
else:
    _Base = object


class GracefulWorkerMixin(_Base):
    """Gives a gunicorn worker class the graceful shutdown sequence."""

    #: Lets graceful_gunicorn recognise its workers (and subclasses of them).
    graceful_gunicorn_worker = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Runs in the master before the fork: nothing process-wide here.
        super().__init__(*args, **kwargs)
        self.shutdown: WorkerShutdown | None = None
        state = master_state.current()
        #: The reload generation the master made this worker in.
        self.generation = state.generation if state is not None else 0
        #: Whether a reload's gate held the old workers when the master made this one:
        #: then it may exit quietly if it cannot load the app (reload_gate.py).
        self.reload_gated = (
            state is not None and state.generation > 0 and state.reload_gate == state.generation
        )
        #: What this worker tells the master: ready, or at max_requests (recycle_overlap.py).
        self.flags = WorkerFlags() if state is not None else None

    @property
    def alive(self) -> bool:
        """Whether gunicorn's loop goes on serving."""
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        if not value and self._serve_until_replaced(sys._getframe(1)):
            return
        self._alive = value

    def _serve_until_replaced(self, caller: FrameType) -> bool:
        """At ``max_requests`` gunicorn stops the worker (``alive = False`` in its
        ``handle_request``, every worker class); serve on instead while the master
        forks the replacement (recycle_overlap.py). Whether this worker does.

        ``caller`` set ``alive``: only gunicorn's request path means max_requests
        (``--reload``'s ``changed`` and the signal handlers set it too)."""
        if caller.f_code.co_name not in compat.MAX_REQUESTS_STOPS_IN:
            return False
        flags, shutdown = getattr(self, "flags", None), getattr(self, "shutdown", None)
        if flags is None or shutdown is None or shutdown.requested is not None:
            return False
        if flags.wants_replacement:
            return True
        state = master_state.current()
        if (
            self.nr < self.max_requests
            or state is None
            or state.stop_recorded
            or shutdown.settings.recycle_ready_timeout <= 0
        ):
            return False
        # gunicorn compares on every request: once is enough.
        self.max_requests = sys.maxsize
        flags.ask_for_replacement()
        self.log.info(
            "graceful_gunicorn: worker %s serves on until the master has its replacement ready",
            os.getpid(),
        )
        return True

    def init_signals(self) -> None:
        """Create the shutdown runner first: our handlers need it."""
        self.shutdown = WorkerShutdown(
            self, float(self.cfg.graceful_timeout), self.generation, self.flags
        )
        super().init_signals()
        state = master_state.current()
        if state is not None and state.stop_recorded:
            # The master stopped while this worker was being forked: its signal
            # reached the master's handler, inherited until now, and was lost.
            sent = "SIGTERM" if state.stop_kind == master_state.STOP_TERMINATE else "SIGQUIT"
            self.shutdown.request_after_sigterm(f"{sent} (sent while the worker booted)")

    def load_wsgi(self) -> None:
        """Load the app, then find its lifecycle or give it one."""
        try:
            super().load_wsgi()
        except Exception:
            self._leave_a_failed_reload()
            raise
        lifecycle: Lifecycle | None = find_lifecycle(self.wsgi)
        if lifecycle is None:
            counted = WSGILifecycle()
            self.wsgi = cast(Any, counted.wrap(cast(Any, self.wsgi)))
            lifecycle = counted
        settings = settings_in_force(self.cfg)
        state = master_state.current()
        try:
            check_lifecycle_fits(lifecycle, settings, float(self.cfg.graceful_timeout))
        except SettingsError as exc:
            self._refuse_or_serve_anyway(state, str(exc))
        if state is not None:
            state.mark_worker_booted()
        for each in (lifecycle, *lifecycle.members):  # every app a dispatcher mounts
            each.readiness.serve_under(
                settings.readiness_path,
                close_connection=compat.close_after_response,
                server_flag=state.flag if state is not None else None,
            )
        assert self.shutdown is not None  # created in init_signals, which runs first
        self.shutdown.attach(lifecycle, settings)
        apps = ""
        if lifecycle.members:
            names = ", ".join(m.name or "unnamed" for m in lifecycle.members)
            apps = f" of {len(lifecycle.members)} apps ({names})"
        self.log.info(
            "graceful_gunicorn: worker %s ready with %d shutdown callback(s)%s",
            os.getpid(),
            sum(len(lifecycle.callbacks(phase)) for phase in PHASES),
            apps,
        )
        if self.flags is not None:
            self.flags.mark_ready()  # a reload's gate and a recycle's overlap wait for it

    def _leave_a_failed_reload(self) -> None:
        """The app cannot be loaded by a reload's new worker: exit quietly, so that
        gunicorn does not halt a server whose old workers serve (reload_gate.py)."""
        state = master_state.current()
        if state is None or not self.reload_gated:
            return  # a first boot, a respawn: gunicorn halts, as it does
        if state.claim_reload_failure(self.generation):
            self.log.exception(
                "graceful_gunicorn: worker %s of the reload cannot load the app; "
                "the old workers keep serving",
                os.getpid(),
            )
        state.note_reload_failure(self.generation)
        with suppress(OSError):  # the summary leaves it out: it never served
            worker_reports.write({"pid": os.getpid(), "not_booted": True})
        sys.exit(0)

    def _refuse_or_serve_anyway(self, state: master_state.MasterState | None, problem: str) -> None:
        """The app's callbacks cannot fit: stop the server, unless it already serves."""
        # Without our config (a graceful worker class named alone) there is no
        # shared state: gunicorn's own count tells a first worker from a later one.
        first_boot = not state.worker_booted if state is not None else self.age <= self.cfg.workers
        if not first_boot:
            # A reload or a recycle brought it: never take a serving server down.
            self.log.error(
                "graceful_gunicorn: %s; this worker serves anyway (the server is already "
                "serving), its explicit timeouts cut to half of the budget",
                problem,
            )
            return
        if state is None or state.claim_boot_failure():
            # Stop the server, as an import error does: the master halts on a worker's
            # WORKER_BOOT_ERROR ("Worker failed to boot.", arbiter.py reap_workers).
            self.log.error("graceful_gunicorn: %s", problem)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        # A sibling says it and stops the server; this one leaves quietly meanwhile.
        sys.exit(0)

    def run(self) -> None:
        """Serve until told to stop, then wait for the shutdown sequence to end."""
        assert self.shutdown is not None
        self.shutdown.start()
        try:
            super().run()
            self.serve_backlog()
        except KeyboardInterrupt:
            # Never let it reach gunicorn's Arbiter.run in the worker: it would
            # call halt() there and signal the sibling workers.
            raise SystemExit(0) from None
        finally:
            self.shutdown.main_loop_finished()

    # -- signal handlers: flags only ------------------------------------------------

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: a graceful stop (terminate, reload or recycle)."""
        if self.shutdown is None or not self.shutdown.in_worker:
            super().handle_exit(sig, frame)
            return
        self.shutdown.request_after_sigterm()

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT/SIGQUIT: a quick stop; a second one exits at once."""
        now = time.monotonic()
        shutdown = self.shutdown
        if shutdown is None or not shutdown.in_worker:
            super().handle_quit(sig, frame)
            return
        if _inside_handle_quit(frame):
            # It came while this handler ran for another quick signal: CPython
            # runs a pending handler at its next bytecode check, even inside a
            # running one (Modules/signalmodule.c), so the group's SIGQUIT and the
            # master's, microseconds apart, land here. One stop; the outer run
            # goes on with it.
            shutdown.signals.merge_nested_quick()
            return
        if shutdown.ending_stuck_main_thread():
            # Sent by interrupt_main(): leave the request the main thread is stuck in.
            raise SystemExit(0)
        if shutdown.quick_signal(sig, now) is Decision.EXIT_NOW:
            os.write(2, b"graceful_gunicorn: second quick stop signal, exiting now\n")
            os._exit(0)

    def handle_abort(self, sig: int, frame: FrameType | None) -> None:
        """SIGABRT (worker timeout): log what is stuck, then the quick callbacks."""
        shutdown = self.shutdown
        if shutdown is None or not shutdown.in_worker:
            super().handle_abort(sig, frame)
            return
        if shutdown.ending_stuck_main_thread():
            raise SystemExit(1)
        shutdown.request("abort", "SIGABRT")

    # -- used by the shutdown thread ------------------------------------------

    def stop_serving(self, drain_seconds: float) -> None:
        """Stop accepting; gunicorn's own drain may take ``drain_seconds`` at most.

        When the server stops and its listeners end with it (listeners.py),
        they refuse new connections from now on, and the connections already
        queued are accepted first, as gunicorn's loop accepts them, for
        ``BACKLOG_ACCEPT_WAIT`` at most.
        """
        state = master_state.current()
        if state is not None and state.listeners_die and state.stop_kind == STOP_TERMINATE:
            began = time.monotonic()
            listeners.refuse_new_connections(self.sockets)
            wait = min(BACKLOG_ACCEPT_WAIT, drain_seconds / 2)
            listeners.wait_until_accepted(self.sockets, began + wait)
            drain_seconds = max(0.0, drain_seconds - (time.monotonic() - began))
        # Each worker reads graceful_timeout when its drain starts; this copy of
        # the config belongs to this process alone.
        compat.set_graceful_timeout(self.cfg, drain_seconds)
        super().handle_exit(signal.SIGTERM, None)
        compat.wake_worker(self)  # the sync worker waits in select()

    def wake_main_loop(self) -> None:
        """Wake gunicorn's loop (its select), so the main thread runs pending signal handlers."""
        compat.wake_worker(self)

    def interrupt_main(self) -> None:
        """Make a main thread that is still inside a request leave it (sync worker)."""

    def serve_backlog(self) -> None:
        """After gunicorn's loop: serve connections the kernel already queued (sync)."""

    def release_idle_connections(self, *, drain_over: bool = False) -> None:
        """Close kept-alive connections that hold the worker during its drain (gevent);
        ``drain_over``: the drain ended (done, deadline, a quick signal), close them all."""

    def request_frames(self) -> dict[int, FrameType]:
        """The current frame of each thread that may serve a request, by its ident."""
        return sys._current_frames()


_HANDLE_QUIT = GracefulWorkerMixin.handle_quit.__code__


def _inside_handle_quit(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside a call of ``handle_quit`` (a nested signal run)."""
    while frame is not None:
        if frame.f_code is _HANDLE_QUIT:
            return True
        frame = frame.f_back
    return False
