"""One worker's shutdown, run in a thread of its own.

gunicorn's worker signal handlers run in the main thread, in the middle of
whatever it was doing (a request, on the sync worker). Ours therefore only
hand the signal to :class:`.stop_signals.StopSignals`, which says what it
means, and write one byte to a pipe; the shutdown thread (:class:`WorkerShutdown`)
wakes on that byte and runs :meth:`ShutdownSequence.run
<graceful_gunicorn._core.sequence.ShutdownSequence.run>` with what this
server does differently: gunicorn's own stop, its drain shortened to our drain
budget, and "drained" meaning that gunicorn's loop has returned. Then it makes
sure the process is gone before the master's deadline. A quick stop
(``SIGINT``/``SIGQUIT``) and an abort (worker timeout) skip ``before_shutdown``
and the drain, and give the other callbacks ``quick_shutdown_timeout``.

Every wait sends the master a heartbeat, so its ``timeout`` never kills a
worker that is stopping on purpose.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import threading
import time
import traceback
from contextlib import suppress
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from ..._core.context import QUICK_REASONS, Reason
from ..._core.lifecycle import Lifecycle
from ..._core.plan import ShutdownPlan, safety_margin
from ..._core.sequence import ShutdownSequence
from ..._core.settings import Settings
from .. import compat, master_state, worker_reports
from ..worker_flags import WorkerFlags
from .stop_signals import Decision, StopSignals

if TYPE_CHECKING:
    from gunicorn.glogging import Logger


class _AtexitRunner:
    """A thread, started early, that runs the ``atexit`` handlers when told to."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.finished = threading.Event()
        threading.Thread(target=self._run, name="graceful-atexit", daemon=True).start()

    def _run(self) -> None:
        self.go.wait()
        try:
            atexit._run_exitfuncs()
        finally:
            self.finished.set()


def _hold_the_main_thread() -> None:
    """An ``atexit`` handler: in the main thread, wait for ``os._exit`` (see below)."""
    if threading.current_thread() is threading.main_thread():
        threading.Event().wait()


class StoppableWorker(Protocol):
    """What the shutdown runner needs from a gunicorn worker."""

    log: Logger

    def notify(self) -> None: ...
    def wake_main_loop(self) -> None: ...
    def stop_serving(self, drain_seconds: float) -> None: ...
    def interrupt_main(self) -> None: ...
    def release_idle_connections(self, *, drain_over: bool = False) -> None: ...
    def request_frames(self) -> dict[int, FrameType]: ...


#: How long after its callbacks a worker may take to exit before it is ended
#: with ``os._exit`` (a non-daemon thread, a hung ``worker_exit`` hook).
EXIT_GRACE = 2.0

#: gunicorn 25+ SIGKILLs the workers 2 s after a SIGINT/SIGQUIT that interrupts
#: its graceful stop; earlier masters keep graceful_timeout (``None``).
MASTER_QUICK_LIMIT = compat.MASTER_QUICK_LIMIT


def _master_quick_cap() -> float | None:
    """Seconds left before gunicorn 25+ SIGKILLs the workers, or ``None`` if it will not soon.

    gunicorn 25+ reads a SIGINT/SIGQUIT inside its graceful ``stop()``, relays
    SIGQUIT and kills ``MASTER_QUICK_LIMIT`` after that relay (arbiter.py); a quick
    stop of the running master keeps ``graceful_timeout``. The master notes that
    it relayed from inside its graceful stop; before it has (a quick signal sent
    to the whole process group reaches a worker first), its stop kind still says
    ``STOP_TERMINATE``. Counted from the relay once the master noted its time.
    """
    state = master_state.current()
    if MASTER_QUICK_LIMIT is None or state is None:
        return None
    if not (state.escalated or state.stop_kind == master_state.STOP_TERMINATE):
        return None
    left = MASTER_QUICK_LIMIT - safety_margin(MASTER_QUICK_LIMIT)
    relayed_at = state.quick_relayed_at
    if relayed_at > 0:
        left -= max(0.0, time.monotonic() - relayed_at)
    return max(0.0, left)


class WorkerShutdown:
    """Coordinates the shutdown of one worker process."""

    def __init__(
        self,
        worker: StoppableWorker,
        graceful_timeout: float,
        generation: int | None = None,
        flags: WorkerFlags | None = None,
    ) -> None:
        self.worker = worker
        #: gunicorn's graceful_timeout as configured (the worker's copy is shortened later).
        self.graceful_timeout = graceful_timeout
        state = master_state.current()
        #: The master's reload generation this worker belongs to: read by the master
        #: when it made the worker, before the fork (a SIGHUP right after the fork
        #: must not make this worker take its own reload's SIGTERM for a recycle).
        self.generation = (
            generation if generation is not None else (state.generation if state is not None else 0)
        )
        self.lifecycle: Lifecycle | None = None
        self.settings = Settings()
        #: The stop signals this worker got, and the shutdown they ask for.
        self.signals = StopSignals(self.generation, flags)
        self.sequence: ShutdownSequence | None = None
        #: Set once the callbacks are over.
        self.done = threading.Event()
        #: Set once gunicorn's own loop has returned in the main thread.
        self.loop_finished = threading.Event()
        #: The report this worker handed to the master, if it did.
        self._report: dict[str, Any] | None = None
        self._atexit_runner: _AtexitRunner | None = None
        #: The worker process; a child the app forks is not it (see _after_fork_in_child).
        self.pid = os.getpid()
        self._parent = os.getppid()
        self._wake_read, self._wake_write = os.pipe()
        for fd in (self._wake_read, self._wake_write):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    @property
    def in_worker(self) -> bool:
        """Whether this is the worker process itself, not a child the app forked."""
        return os.getpid() == self.pid

    def _after_fork_in_child(self) -> None:
        """A child the app forks (``os.fork``, ``multiprocessing``) keeps no tie to us.

        CPython's C handler would write each signal the child gets into the
        pipe it shares with the worker, and the worker would stop.
        """
        if self.in_worker:
            return
        try:
            previous = signal.set_wakeup_fd(-1)
            if previous not in (-1, self._wake_write):
                signal.set_wakeup_fd(previous)  # somebody else's: leave it
        except ValueError:  # only the main thread may set it, and it forked
            pass

    def attach(self, lifecycle: Lifecycle, settings: Settings) -> None:
        """Use ``lifecycle`` and ``settings`` (once the app is loaded)."""
        self.lifecycle = lifecycle
        self.settings = settings

    @property
    def requested(self) -> Reason | None:
        """The shutdown asked for (quick once escalated), or ``None``."""
        return self.signals.reason

    # -- called from signal handlers: flags and one write, nothing else ----------

    def request(self, reason: Reason, signal_name: str | None = None) -> None:
        """Ask for a shutdown; a quick reason during a graceful one escalates it.

        ``signal_name`` is the signal that asked (``None``: gunicorn's loop ended
        by itself, as on ``max_requests``).
        """
        self._act(self.signals.stop(reason, signal_name))

    def request_after_sigterm(self, signal_name: str = "SIGTERM") -> None:
        """SIGTERM: ask for a shutdown for the reason the master recorded."""
        self._act(self.signals.sigterm(signal_name))

    def quick_signal(self, sig: int, now: float) -> Decision:
        """SIGINT/SIGQUIT ``sig``, whose handler began at ``now``: act on what it
        means; the caller exits on ``Decision.EXIT_NOW``."""
        decision = self.signals.quick(sig, now)
        self._act(decision)
        return decision

    def _act(self, decision: Decision) -> None:
        if decision is Decision.ESCALATE:
            sequence = self.sequence
            if sequence is not None:  # otherwise it starts quick (see _run)
                sequence.escalate(time.monotonic() + self._escalated_budget())
        if decision in (Decision.START, Decision.ESCALATE, Decision.IGNORED):
            self._wake()  # the shutdown thread starts, escalates, or logs the ignored SIGTERM

    def ending_stuck_main_thread(self) -> bool:
        """Whether the shutdown is over while the main thread is still in gunicorn's
        loop: a signal then is ``interrupt_main``'s, to make it leave a request."""
        return self.done.is_set() and not self.loop_finished.is_set()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"!")
        except OSError:  # the pipe is full: the shutdown thread is awake anyway
            pass

    def _escalated_budget(self) -> float:
        budget = self.settings.quick_shutdown_timeout
        cap = _master_quick_cap()
        return budget if cap is None else min(budget, cap)

    # -- the shutdown thread -----------------------------------------------------

    def start(self) -> None:
        """Start the shutdown thread (in the worker, after the fork)."""
        thread = threading.Thread(target=self._watch, name="graceful-shutdown", daemon=True)
        thread.start()

    def use_as_signal_wakeup(self) -> None:
        """Have CPython's C signal handler write each signal's number to our pipe.

        For a main thread that may sit in a restarted system call (the sync
        worker serving a request): the Python handler runs only when that
        call returns, but the shutdown thread reads the number at once.
        """
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    def _watch(self) -> None:
        try:
            self._watch_and_run()
        except BaseException:
            # Never leave the main thread waiting for a shutdown that cannot come.
            self.worker.log.exception("graceful_gunicorn: the shutdown coordinator failed")
            self.done.set()

    def _watch_and_run(self) -> None:
        signals = self.signals
        while True:
            while signals.reason is None:
                select.select([self._wake_read], [], [], 1.0)
                if not self.in_worker:
                    return  # a greenlet that survived a fork of the app's (gevent)
                try:
                    woke = os.read(self._wake_read, 64)
                except BlockingIOError:
                    woke = b""
                if woke.replace(b"!", b""):
                    # A signal's number: its Python handler runs in the main thread,
                    # which the kernel may have left asleep (the signal landed on
                    # another thread, as it can when two come at once on a busy
                    # machine); the wakeup fd gunicorn's loop waits on is ours now.
                    self.worker.wake_main_loop()
                if signal.SIGTERM in woke:
                    self.request_after_sigterm()
                if signals.take_ignored_sigterm():
                    self._log_ignored_sigterm()
            reason = signals.settle(self.graceful_timeout)
            if reason is not None:
                break
            self._log_ignored_sigterm()
        self._run(reason)

    def _log_ignored_sigterm(self) -> None:
        self.worker.log.info(
            "graceful_gunicorn: worker %s ignores a SIGTERM while the master holds "
            "shutdown_delay; it stops when the master stops it",
            os.getpid(),
        )

    def _deadline(self, plan: ShutdownPlan) -> float:
        state = master_state.current()
        started = self.signals.started_at
        if state is not None and state.stop_recorded and state.stop_at:
            # The master's clock runs from its own signal, whether this worker's
            # SIGTERM came before (the whole process group) or after it.
            started = state.stop_at
        master_deadline = started + self.graceful_timeout - plan.margin
        if plan.quick:
            # counted from now: the app may have been loading since the signal
            cap = _master_quick_cap()
            if cap is not None:  # a quick signal in the master's graceful stop
                master_deadline = min(master_deadline, time.monotonic() + cap)
            return min(time.monotonic() + plan.budget, master_deadline)
        return master_deadline

    def _run(self, reason: Reason) -> None:
        # Started now, while the main thread surely lives: Python 3.12+ starts no
        # thread once the interpreter began to exit (_make_sure_we_exit needs it then).
        self._atexit_runner = _AtexitRunner()
        lifecycle = self.lifecycle or Lifecycle()
        log = self.worker.log
        plan = lifecycle.plan(
            reason,
            graceful_timeout=self.graceful_timeout,
            quick_timeout=self.settings.quick_shutdown_timeout,
        )
        sequence = lifecycle.begin_shutdown(
            reason,
            deadline=self._deadline(plan),
            heartbeat=self.worker.notify,
            log=log,
            plan=plan,
        )
        self.sequence = sequence
        # An abort comes from the master's timeout: tell it at once that we are alive.
        self.worker.notify()
        if self.requested in QUICK_REASONS and not sequence.quick:
            # a quick signal came while the sequence was being created
            sequence.escalate(time.monotonic() + self._escalated_budget())
        try:
            log.info(
                "graceful_gunicorn: shutdown started (reason %s, signal %s, pid %s): "
                "%.2fs left, %d request(s) in flight, drain until %.2fs, "
                "%.2fs kept for callbacks; plan: %s",
                sequence.reason,  # quick, should a quick signal have come meanwhile
                self.signals.signal_name or "none",
                os.getpid(),
                sequence.remaining(),
                lifecycle.in_flight,
                max(0.0, sequence.drain_deadline - time.monotonic()),
                sequence.reserved,
                plan.describe(),
            )
            if reason == "abort":
                self._log_requests_with_stacks()
            report = sequence.run(
                # gunicorn's own stop; it drains its connections within our drain budget
                stop_serving=self.worker.stop_serving,
                ready=self._drained,
                # Cut short (its deadline, a Ctrl+C) or not: no connection waits now.
                drain_over=self._release_idle_connections,
            )
            state = master_state.current()
            # The master's summary reads it. Ctrl+C signals the whole group, so
            # a quick stop may be over before the master has recorded its own.
            if state is not None and (state.stop_recorded or sequence.quick):
                self._report = report.as_dict()
                worker_reports.write(self._report)
        except BaseException:
            log.exception("graceful_gunicorn: shutdown sequence failed")
        finally:
            self.done.set()
        self._make_sure_we_exit(sequence)

    def _release_idle_connections(self) -> None:
        self.worker.release_idle_connections(drain_over=True)

    def _drained(self) -> bool:
        """Whether gunicorn's loop is over; asked while no request is in flight."""
        if self.loop_finished.is_set():
            return True
        self.worker.release_idle_connections()
        return False

    def _log_requests_with_stacks(self) -> None:
        lifecycle = self.lifecycle
        requests = lifecycle.requests.snapshot() if lifecycle is not None else []
        frames = self.worker.request_frames()
        if not requests:
            self.worker.log.error("graceful_gunicorn: worker timeout with no request in flight")
        for request in requests:
            frame = frames.get(request.thread_id)
            stack = "".join(traceback.format_stack(frame)).rstrip() if frame else "(no stack)"
            self.worker.log.error(
                "graceful_gunicorn: worker timeout: %s %s in flight for %.1fs; its thread:\n%s",
                request.method,
                request.path,
                request.seconds,
                stack,
            )

    def _make_sure_we_exit(self, sequence: ShutdownSequence) -> None:
        """After the callbacks: the main thread may be stuck in a request; the
        process must still end.

        Python joins non-daemon threads before it exits; one that a callback or
        the app left running (or a hung ``worker_exit`` hook) must not hold the
        worker until the master's SIGKILL. It gets ``EXIT_GRACE``, at most until
        half of the safety margin after the deadline, to exit normally; then the
        ``atexit`` handlers that Python would have run (error trackers and
        tracing exporters flush there) get what is left before the SIGKILL, the
        report says the exit was forced, and the exit status is 1.
        """
        if not self.loop_finished.wait(0.05):
            self.worker.interrupt_main()
        margin = safety_margin(self.graceful_timeout)
        if sequence.quick and MASTER_QUICK_LIMIT is not None and _master_quick_cap() is not None:
            margin = safety_margin(MASTER_QUICK_LIMIT)  # the master kills 2 s after the SIGINT
        master_kills_at = sequence.deadline + margin
        give_up_at = min(master_kills_at - margin / 2, time.monotonic() + EXIT_GRACE)
        while time.monotonic() < give_up_at:
            time.sleep(0.05)
        self.worker.log.error(
            "graceful_gunicorn: worker %s did not exit after its shutdown; running its "
            "atexit handlers, then ending it (exit status 1)",
            os.getpid(),
        )
        if self._report is not None:
            with suppress(OSError):
                worker_reports.write({**self._report, "forced_exit": True})
        # Registered last, it runs first: should the main thread begin Python's own
        # exit meanwhile (the thread it waited for ended), it stops here instead of
        # running every handler a second time beside ours.
        atexit.register(_hold_the_main_thread)
        runner = self._atexit_runner
        if runner is not None:
            runner.go.set()
            runner.finished.wait(
                max(0.0, min(master_kills_at - 0.05, give_up_at + EXIT_GRACE) - time.monotonic())
            )
        os._exit(1)

    # -- the main thread, after gunicorn's loop returned ------------------------

    def main_loop_finished(self) -> None:
        """Wait (with heartbeats) until the shutdown is over."""
        self.loop_finished.set()
        if self.requested is None:
            # gunicorn left its loop by itself: max_requests, --reload, or its master
            # is gone (nothing replaces this worker: the service goes away with it)
            self.request("terminate" if os.getppid() != self._parent else "recycle")
        while not self.done.wait(0.25):
            self.worker.notify()
