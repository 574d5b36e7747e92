"""The master's side of a stop: record why and when, and hold ``shutdown_delay``.

gunicorn dispatches a queued signal to ``getattr(arbiter, "handle_" + name)``
from its main loop, not from signal context (arbiter.py ``Arbiter.run``), so
instance attributes replace its handlers in every version. Ours record the
stop in the state shared with the workers, then call gunicorn's own handler.

On ``SIGTERM`` with a ``shutdown_delay``, the master first announces that the
server is going away (every worker's readiness path answers 503 from the next
request on, and responses close their keep-alive connections) and keeps its
listeners and workers serving; its loop still reaps, respawns and watches
timeouts. When the delay is over, the graceful stop begins and gunicorn's
``graceful_timeout`` starts to count. A second ``SIGTERM`` skips the rest of
the delay; ``SIGINT``/``SIGQUIT`` stop quickly at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._core.settings import Settings, SettingsError
from . import compat, master_state, worker_reports
from .recycle_overlap import RecycleOverlap
from .reload_gate import ReloadGate
from .server_settings import settings_in_force
from .summary import MasterStopRecord, report
from .worker_flags import flags_of

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter

_INSTALLED = "_graceful_gunicorn_master"


def _running(pid: int) -> bool:
    """Whether a child has not exited yet; its status stays for gunicorn's reap (WNOWAIT).

    Without ``os.waitid`` (macOS before Python 3.13), every child still in
    gunicorn's table counts as running.
    """
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        return True
    try:
        return waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


class MasterStop:
    """Replaces the stop handlers of one gunicorn ``Arbiter``."""

    def __init__(self, server: Arbiter, state: master_state.MasterState) -> None:
        self.server = server
        self.state = state
        #: When the shutdown delay ends (monotonic), while one is running.
        self.delay_until: float | None = None
        self._stopping = False
        #: Why and when the master stops, once it does.
        self.record: MasterStopRecord | None = None
        self._term: Callable[[], None] = server.handle_term
        self._int: Callable[[], None] = server.handle_int
        self._quit: Callable[[], None] = server.handle_quit
        self._hup: Callable[[], None] = server.handle_hup
        self._murder_workers: Callable[[], None] = server.murder_workers
        self._reap_workers: Callable[[], None] = server.reap_workers
        self._kill_workers: Callable[[int], None] = server.kill_workers
        self._kill_worker: Callable[[int, int], None] = server.kill_worker
        #: The last SIGINT/SIGQUIT gunicorn queued: its own stop() relays either as SIGQUIT.
        self._quick_signal = "SIGQUIT"
        #: The last reload's gate, while it holds the old workers.
        self.reload_gate: ReloadGate | None = None
        self._in_reload = False
        self._reload_wait_ended = False
        self._signalling_all = False
        #: Workers at max_requests that serve until their replacement is ready.
        self.recycles = RecycleOverlap(
            server,
            lambda: self._settings().recycle_ready_timeout,
            lambda pid: self._kill_worker(pid, signal.SIGTERM),
            self._retires,
            self._kept_by_a_failed_reload,
        )

    @classmethod
    def install(
        cls,
        server: Arbiter,
        state: master_state.MasterState,
        before_spawn: Callable[[Arbiter], None] | None = None,
    ) -> MasterStop | None:
        """Install the handlers on ``server`` (once).

        ``before_spawn`` runs before each worker is forked: it sets up a config
        that a reload brought, should a user's hooks shadow every one of ours that
        gunicorn calls on a reload (``nworkers_changed`` and ``on_reload``).
        """
        if getattr(server, _INSTALLED, None) is not None:
            return None
        stop = cls(server, state)
        spawn = server.spawn_worker

        def spawn_worker() -> Any:
            if before_spawn is not None:
                before_spawn(server)
            # The config is the reloaded one now: the worker made next reads the gate.
            if stop.reload_gate is not None:
                stop.reload_gate.resolve()
            return spawn()

        compat.replace_handlers(server, {"spawn_worker": spawn_worker})
        object.__setattr__(server, _INSTALLED, stop)
        compat.replace_handlers(
            server,
            {
                "handle_term": stop.handle_term,
                "handle_int": stop.handle_int,
                "handle_quit": stop.handle_quit,
                "handle_hup": stop.handle_hup,
                "murder_workers": stop.murder_workers,
                "reap_workers": stop.reap_workers,
                "kill_workers": stop.kill_workers,
                "kill_worker": stop.kill_worker,
            },
        )
        stop._watch_quick_signals()
        return stop

    def _watch_quick_signals(self) -> None:
        # gunicorn installed its handler, the bound Arbiter.signal that queues the
        # signal, in init_signals(), before when_ready (arbiter.py start()).
        for sig in (signal.SIGINT, signal.SIGQUIT):
            queue = signal.getsignal(sig)
            if callable(queue):
                signal.signal(sig, partial(self._note_quick_signal, queue))

    def _note_quick_signal(
        self, queue: Callable[[int, FrameType | None], Any], sig: int, frame: FrameType | None
    ) -> None:
        # Signal context: two assignments, then gunicorn's own handler.
        self._quick_signal = signal.Signals(sig).name
        self.state.note_quick_signal(sig)
        queue(sig, frame)

    @classmethod
    def of(cls, server: Arbiter) -> MasterStop | None:
        """The handlers installed on ``server``, if any."""
        stop = getattr(server, _INSTALLED, None)
        return stop if isinstance(stop, cls) else None

    @property
    def log(self) -> Any:
        """gunicorn's error logger."""
        return self.server.log

    def handle_term(self) -> None:
        """SIGTERM: hold the shutdown delay first, if there is one."""
        if self.delay_until is None and not self._stopping:
            delay = self._settings().shutdown_delay
            self._record("terminate", "SIGTERM", delay)
            if delay > 0:
                self.state.announce_going_away()
                self.delay_until = time.monotonic() + delay
                self.log.info(
                    "graceful_gunicorn: readiness now answers 503; serving %gs more "
                    "before the graceful stop (shutdown_delay)",
                    delay,
                )
                self._wake_up_in(delay)
                return
        elif self.delay_until is not None:
            self.log.info("graceful_gunicorn: second SIGTERM, skipping the rest of shutdown_delay")
        self._begin(master_state.STOP_TERMINATE, self._term)

    def handle_int(self) -> None:
        """SIGINT: a quick stop, also during the shutdown delay."""
        self._record("quick", "SIGINT", 0.0)
        self.state.note_quick_signal(signal.SIGINT)
        self._begin(master_state.STOP_QUICK, self._int)

    def handle_quit(self) -> None:
        """SIGQUIT: a quick stop, also during the shutdown delay."""
        self._record("quick", "SIGQUIT", 0.0)
        self.state.note_quick_signal(signal.SIGQUIT)
        self._begin(master_state.STOP_QUICK, self._quit)

    def handle_hup(self) -> None:
        """SIGHUP: a new generation of workers; the old ones stop with reason ``reload``.

        Ignored once the server is going away (during ``shutdown_delay``): new
        workers would only be stopped again.
        """
        if self.delay_until is not None or self._stopping:
            self.log.warning("graceful_gunicorn: SIGHUP ignored, the server is stopping")
            return
        self.state.next_generation()
        self.reload_gate = ReloadGate(
            self.server,
            self.state,
            self.state.generation,
            lambda: self._settings().reload_ready_timeout,
            self.recycles.serves_on,
        )
        self._reload_wait_ended = False
        self._in_reload = True
        try:
            self._hup()
        finally:
            self._in_reload = False

    def _retires(self, pid: int) -> bool:
        gate = self.reload_gate
        return gate is not None and gate.retires(pid)

    def _kept_by_a_failed_reload(self, pid: int) -> bool:
        gate = self.reload_gate
        return gate is not None and gate.keeps(pid)

    def _update_reload_gate(self) -> None:
        gate = self.reload_gate
        if gate is None:
            return
        gate.update()
        if not gate.holding:
            self.reload_gate = None

    def murder_workers(self) -> None:
        """Runs on every turn of the master's loop: end the delay when it is over."""
        if self.delay_until is not None and time.monotonic() >= self.delay_until:
            self.log.info("graceful_gunicorn: shutdown_delay over, stopping gracefully")
            self._begin(master_state.STOP_TERMINATE, self._term)
        if self.reload_gate is not None and not self._in_reload:
            self.reload_gate.next_turn()
        if not self._in_reload:
            # Before the gate: on the turn it opens, the old workers it held get
            # their SIGTERMs only in manage_workers, and must not count as staying.
            self.recycles.update(stopping=self.delay_until is not None or self._stopping)
        self._update_reload_gate()  # gunicorn's manage_workers comes next in its loop
        self._murder_workers()

    def reap_workers(self) -> None:
        """gunicorn's reap; a worker reaped outside our stop leaves no report behind.

        A worker stopped alone (a quick stop of one worker, a worker timeout)
        writes its report while the master keeps running; a later worker with
        the same pid would be counted clean by it. gunicorn calls this from its
        SIGCHLD handling and from its own ``stop()`` (all versions).
        """
        before = set(self.server.WORKERS)
        try:
            self._reap_workers()
        finally:
            # gunicorn <= 23 reaps in signal context, possibly inside _begin().
            counted = set(self.record.workers) if self.record is not None else set()
            if not self._stopping:
                worker_reports.discard(before - set(self.server.WORKERS) - counted)
        if self._in_reload and compat.RELOAD_WAITS_FOR_OLD_WORKERS:
            self._end_the_reload_wait()

    def _end_the_reload_wait(self) -> None:
        """gunicorn 24+ reaps in its reload's wait for the old workers, reading no
        signal meanwhile: while the gate holds them, end that wait (arbiter.py
        ``reload``), so that a SIGTERM or Ctrl+C is read at once."""
        gate = self.reload_gate
        # Whether the gate held the SIGTERMs gunicorn's reload sent the old
        # workers: it may open (or time out) right now, and they are still unsent.
        held = gate is not None and gate.holding
        self._update_reload_gate()
        if not held or self._reload_wait_ended:
            return
        self._reload_wait_ended = True
        in_order = sorted(self.server.WORKERS.items(), key=lambda item: item[1].age)
        compat.make_newest(self.server, [pid for pid, _ in in_order])

    def _begin(self, kind: int, gunicorn_handler: Callable[[], None]) -> None:
        if not self._stopping and self.record is not None:
            self.record.workers = sorted(self.server.WORKERS)
        self._stopping = True
        self.delay_until = None
        if self.reload_gate is not None:
            self.reload_gate.close()
            self.reload_gate = None
        self.state.begin_stop(kind, time.monotonic())
        if kind == master_state.STOP_TERMINATE and compat.listeners_die_with_server(self.server):
            self.state.note_listeners_die()  # the workers refuse new connections (listeners.py)
        if kind == master_state.STOP_TERMINATE and compat.MASTER_DEAF_WHILE_STOPPING:
            for sig in (signal.SIGINT, signal.SIGQUIT):
                signal.signal(sig, self._relay_quick_stop)
        gunicorn_handler()  # raises StopIteration: gunicorn's loop halts

    def kill_workers(self, sig: int) -> None:
        """gunicorn signals every worker; a SIGQUIT during a graceful stop makes it quick.

        gunicorn 25 and newer read a SIGINT/SIGQUIT inside their own ``stop()``
        and send the workers SIGQUIT from there (arbiter.py): the summary must
        say the stop became quick, as the workers' reports do. At the end of its
        graceful_timeout, stop() sends the workers still there SIGKILL: the
        summary counts them killed.
        """
        if sig == signal.SIGQUIT and self.record is not None and self.record.reason != "quick":
            graceful_stop = self.state.stop_kind == master_state.STOP_TERMINATE
            self._record("quick", self._quick_signal, 0.0)
            self.state.begin_stop(master_state.STOP_QUICK, time.monotonic())
            if graceful_stop:  # not gunicorn's stop(False) after an error in its loop
                self.state.note_escalation()
        if sig == signal.SIGKILL and self.record is not None:
            # stop() at its limit: whoever is left is killed, report or not; one
            # that exited since stop()'s last reap (0.1 s ago) is not. Nothing here
            # may keep gunicorn from sending the SIGKILL.
            with suppress(Exception):
                self.record.sigkilled = [p for p in sorted(self.server.WORKERS) if _running(p)]
        if sig == signal.SIGTERM and self._stopping:
            # gunicorn's stop() counts graceful_timeout from here, just before it
            # signals the workers (arbiter.py stop: "limit = time.time() + ..."),
            # which can be seconds after the SIGTERM: 25.3+ first stops its control
            # socket server, joining its thread for up to 2 s (arbiter.py halt).
            self.state.restart_stop_clock(time.monotonic())
        if sig == signal.SIGQUIT:
            self.state.count_quick_relay()
        # gunicorn's kill_workers calls kill_worker for each: nothing is held then,
        # also when gunicorn stops without our handlers (a halt: "Worker failed to
        # boot", arbiter.py run and halt).
        self._signalling_all = True
        try:
            self._kill_workers(sig)
        finally:
            self._signalling_all = False
        if sig == signal.SIGQUIT:
            # After sending: a worker whose first quick handler ran later had it
            # merged with the group's SIGQUIT (standard signals do not queue).
            self.state.note_quick_relay(time.monotonic())
            self.log.info("graceful_gunicorn: quick stop passed on to the workers")

    def kill_worker(self, pid: int, sig: int) -> None:
        """gunicorn signals one worker: a SIGTERM outside a stop is a recycle (SIGTTOU,
        fewer workers), recorded first so that the worker need not wait to tell it
        from a SIGTERM to the whole process group (arbiter.py manage_workers).
        A worker at max_requests gets only the SIGTERM of its overlap."""
        if sig == signal.SIGTERM and not self._stopping and not self._signalling_all:
            gate = self.reload_gate
            if gate is not None and gate.holds(pid):
                return  # an old worker serves until the new ones are ready
            if self.recycles.holds(pid):
                return  # it serves until its replacement is ready, then gets ours
            flags = flags_of(self.server.WORKERS.get(pid))
            if flags is not None:
                flags.note_recycle()
            self.recycles.note_sigterm(pid)
        self._kill_worker(pid, sig)

    def _relay_quick_stop(self, sig: int, frame: FrameType | None) -> None:
        # Signal context, during gunicorn's stop(): record, then only os.kill.
        self._record("quick", signal.Signals(sig).name, 0.0)
        self.state.note_quick_signal(sig)
        self.state.begin_stop(master_state.STOP_QUICK, time.monotonic())
        self.state.count_quick_relay()
        for pid in list(self.server.WORKERS):
            with suppress(OSError):
                os.kill(pid, signal.SIGQUIT)
        self.state.note_quick_relay(time.monotonic())

    def _record(self, reason: str, signal_name: str, delay: float) -> None:
        if self.record is None:
            self.record = MasterStopRecord(reason, signal_name, time.monotonic(), delay)
        elif reason == "quick":
            self.record.reason, self.record.signal = reason, f"{self.record.signal}+{signal_name}"

    def _settings(self) -> Settings:
        try:
            return settings_in_force(self.server.cfg)
        except SettingsError:  # cannot happen once start-up checked the settings
            return Settings()

    def report(self) -> None:
        """On exit: log the shutdown summary and JSON report (and save it if asked to)."""
        if self.record is None:
            return
        reports = worker_reports.collect(self.record.workers)
        report(self.log, self.record, reports, self._settings().shutdown_report_path)

    def _wake_up_in(self, seconds: float) -> None:
        # gunicorn's loop waits up to 1 s for a signal; wake it when the delay ends.
        timer = threading.Timer(seconds, self.server.wakeup)
        timer.daemon = True
        timer.start()
