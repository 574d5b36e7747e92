"""Unit tests of the worker classes' request-path details (no server)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

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


class _QuickSignals:
    """A real sync worker's signal handlers, installed in this process, with the
    master's state of a quick stop: signals sent to ourselves run them as
    CPython does, and ``os._exit`` is recorded instead of done."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from gunicorn.config import Config

        from graceful_gunicorn import master_state
        from graceful_gunicorn.workers.sync import GracefulSync

        self.state = master_state.create()
        self.state.begin_stop(master_state.STOP_QUICK, time.monotonic())
        self.worker = GracefulSync(1, os.getpid(), [], None, 30, Config(), _NullLog())
        self.worker.PIPE = list(os.pipe())
        for fd in self.worker.PIPE:
            os.set_blocking(fd, False)
        self.worker.init_signals()
        assert self.worker.graceful is not None
        self.graceful = self.worker.graceful
        self.exits: list[int] = []
        monkeypatch.setattr(os, "_exit", self.exits.append)

    def send(self, sig: int) -> None:
        os.kill(os.getpid(), sig)  # its handler runs at the next bytecode

    def close(self) -> None:
        from graceful_gunicorn import master_state

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self.worker.tmp.close()
        for fd in (*self.worker.PIPE, self.graceful._wake_read, self.graceful._wake_write):
            os.close(fd)
        self.state._lock.close()
        master_state._current = None


@pytest.fixture
def quick_signals(monkeypatch: pytest.MonkeyPatch) -> Iterator[_QuickSignals]:
    signals = _QuickSignals(monkeypatch)
    try:
        yield signals
    finally:
        signals.close()


def test_a_relay_that_comes_while_the_first_handler_runs_is_not_a_second_stop(
    quick_signals: _QuickSignals,
) -> None:
    """Ctrl+\\: the group's SIGQUIT, then the master's, which comes once CPython
    has cleared the first one's flag and runs inside that handler. The master
    noted its relay before the handler read the clock (a busy machine), which
    read as "merged, so this is a second stop": the worker exited without
    callbacks. Now one stop; the next SIGQUIT is the user's second."""
    quick_signals.state.note_quick_relay(time.monotonic())
    graceful = quick_signals.graceful
    request = graceful.request
    relayed: list[bool] = []

    def relay_arrives(*args: Any) -> None:
        if not relayed:
            relayed.append(True)
            quick_signals.send(signal.SIGQUIT)  # the master's, inside the first handler
        request(*args)

    graceful.request = relay_arrives  # type: ignore[method-assign]
    quick_signals.send(signal.SIGQUIT)
    assert relayed and quick_signals.exits == []
    assert graceful.requested == "quick"
    quick_signals.send(signal.SIGQUIT)
    assert quick_signals.exits == [0]


def test_ctrl_c_then_ctrl_backslash_is_a_second_stop(quick_signals: _QuickSignals) -> None:
    """Ctrl+C: the group's SIGINT, then the master's SIGQUIT, merged into one stop.
    A Ctrl+\\ after that is a second stop, whenever the master noted its relay
    (it read as the relay when the master noted it after the worker's handler)."""
    quick_signals.send(signal.SIGINT)
    quick_signals.state.note_quick_relay(time.monotonic())
    quick_signals.send(signal.SIGQUIT)  # the master's
    assert quick_signals.exits == []
    quick_signals.send(signal.SIGQUIT)  # Ctrl+\
    assert quick_signals.exits == [0]


def test_ctrl_backslash_then_ctrl_c_is_a_second_stop(quick_signals: _QuickSignals) -> None:
    """The master never sends SIGINT: one after a SIGQUIT is the user's second stop."""
    quick_signals.send(signal.SIGQUIT)
    quick_signals.state.note_quick_relay(time.monotonic())
    quick_signals.send(signal.SIGQUIT)  # the master's
    assert quick_signals.exits == []
    quick_signals.send(signal.SIGINT)
    assert quick_signals.exits == [0]
