"""Unit tests of the worker classes' request-path details (no server)."""

from __future__ import annotations

import os
import signal
import threading

from graceful_gunicorn.workers.gthread import GracefulThread


def test_gthread_keep_flag_reads_false_in_a_thread_that_never_set_it() -> None:
    # ``alive`` reads the flag three times per request; a missing attribute
    # raised and caught an AttributeError each time (a 3% slower worker).
    finishing = GracefulThread._finishing
    finishing.keep = True
    try:
        seen: list[bool] = []
        reader = threading.Thread(target=lambda: seen.append(finishing.keep))
        reader.start()
        reader.join(5)
        assert seen == [False]
    finally:
        finishing.keep = False


def test_a_worker_belongs_to_the_generation_it_was_made_in() -> None:
    """The master makes the worker object before the fork; a SIGHUP between that and
    the worker's own start must not move the worker to the new generation (its
    reload's SIGTERM would read as a recycle, and reasons= filters pick wrong)."""
    from gunicorn.config import Config

    from graceful_gunicorn import master_state
    from graceful_gunicorn.workers.sync import GracefulSync

    state = master_state.create()
    before = state.generation
    worker = GracefulSync(1, os.getpid(), [], None, 30, Config(), _NullLog())
    state.next_generation()  # the SIGHUP, before the worker installs its signals
    worker.PIPE = list(os.pipe())  # made by gunicorn's init_process, just before
    for fd in worker.PIPE:
        os.set_blocking(fd, False)
    try:
        worker.init_signals()
        assert worker.graceful is not None
        assert worker.graceful.generation == before
        assert worker.graceful.term_reason() == "reload"
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        worker.tmp.close()
        state._lock.close()
        master_state._current = None


class _NullLog:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def test_a_coordinator_that_fails_lets_the_worker_exit() -> None:
    """A recycling worker's main thread waits for ``done``: a coordinator that dies
    outside its sequence must still set it, and log why."""
    from graceful_gunicorn.workers.coordinator import WorkerShutdown

    logged: list[str] = []

    class Worker:
        class log:  # gunicorn's logger, as the coordinator uses it
            @staticmethod
            def exception(message: str, *args: object) -> None:
                logged.append(message % args)

    shutdown = WorkerShutdown(Worker(), 30.0)  # type: ignore[arg-type]

    def broken() -> None:
        raise RuntimeError("broken")

    shutdown._watch_and_run = broken  # type: ignore[method-assign]
    shutdown._watch()
    assert shutdown.done.is_set()
    assert logged == ["graceful_gunicorn: the shutdown coordinator failed"]


def test_a_relay_that_comes_as_the_first_quick_handler_starts_is_not_a_second_stop() -> None:
    """CPython clears a signal's flag before it calls the Python handler: the
    master's SIGQUIT can come in that gap, after the group's, and run the handler
    a second time even though the master noted its relay before the first handler
    read the clock. That second run is the relay, not a second Ctrl+\\; a
    separate keystroke (RELAY_WINDOW later) is."""
    from graceful_gunicorn import master_state
    from graceful_gunicorn.workers.coordinator import RELAY_WINDOW, WorkerShutdown

    state = master_state.create()
    try:
        relayed = 1000.0
        state.begin_stop(master_state.STOP_QUICK, relayed - 0.001)
        state.note_quick_relay(relayed)

        racing = WorkerShutdown(_NullLog(), 30.0)  # type: ignore[arg-type]
        racing.quick_at = relayed + 0.002
        assert racing.take_master_relay(racing.quick_at + 0.01)
        assert not racing.take_master_relay(racing.quick_at + 0.02)  # once per stop

        merged = WorkerShutdown(_NullLog(), 30.0)  # type: ignore[arg-type]
        merged.quick_at = relayed + 0.002
        assert not merged.take_master_relay(merged.quick_at + RELAY_WINDOW)

        early = WorkerShutdown(_NullLog(), 30.0)  # type: ignore[arg-type]
        early.quick_at = relayed - 0.5  # the relay came after the first handler ran
        assert early.take_master_relay(relayed + 5)
    finally:
        state._lock.close()
        master_state._current = None
