"""Unit tests of the worker classes' request-path details (no server)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn import version_info as gunicorn_version_info

from graceful_gunicorn._gunicorn.workers.gthread import GracefulThread


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

    from graceful_gunicorn._gunicorn import master_state, process_state
    from graceful_gunicorn._gunicorn.workers.sync import GracefulSync

    state = master_state.create()
    before = state.generation
    worker = GracefulSync(1, os.getpid(), [], None, 30, Config(), _NullLog())
    state.next_generation()  # the SIGHUP, before the worker installs its signals
    worker.PIPE = list(os.pipe())  # made by gunicorn's init_process, just before
    for fd in worker.PIPE:
        os.set_blocking(fd, False)
    try:
        worker.init_signals()
        assert worker.shutdown is not None
        assert worker.shutdown.generation == before
        assert worker.shutdown.signals.term_reason() == "reload"
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        worker.tmp.close()
        state._lock.close()
        process_state.reset()


class _NullLog:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None


def test_a_coordinator_that_fails_lets_the_worker_exit() -> None:
    """A recycling worker's main thread waits for ``done``: a coordinator that dies
    outside its sequence must still set it, and log why."""
    from graceful_gunicorn._gunicorn.workers.shutdown import WorkerShutdown

    logged: list[str] = []

    class Worker:
        class log:  # gunicorn's logger, as the shutdown thread uses it
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

        from graceful_gunicorn._gunicorn import master_state
        from graceful_gunicorn._gunicorn.workers.sync import GracefulSync

        self.state = master_state.create()
        self.worker = GracefulSync(1, os.getpid(), [], None, 30, Config(), _NullLog())
        self.worker.PIPE = list(os.pipe())
        for fd in self.worker.PIPE:
            os.set_blocking(fd, False)
        self.worker.init_signals()
        assert self.worker.shutdown is not None
        self.shutdown = self.worker.shutdown
        self.exits: list[int] = []
        monkeypatch.setattr(os, "_exit", self.exits.append)

    def master_gets(self, sig: int) -> None:
        """The master's side of a quick signal it got: what it records, in order."""
        from graceful_gunicorn._gunicorn import master_state

        self.state.note_quick_signal(sig)
        self.state.begin_stop(master_state.STOP_QUICK, time.monotonic())

    def master_relays(self, *, send: bool = True) -> None:
        """The master passes SIGQUIT on to this worker (``send=False``: merged with
        a SIGQUIT already pending, so nothing more arrives)."""
        self.state.count_quick_relay()
        if send:
            self.send(signal.SIGQUIT)
        self.state.note_quick_relay(time.monotonic())

    def send(self, sig: int) -> None:
        os.kill(os.getpid(), sig)  # its handler runs at the next bytecode

    def close(self) -> None:
        from graceful_gunicorn._gunicorn import process_state

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self.worker.tmp.close()
        for fd in (*self.worker.PIPE, self.shutdown._wake_read, self.shutdown._wake_write):
            os.close(fd)
        self.state._lock.close()
        process_state.reset()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[_QuickSignals]:
    signals = _QuickSignals(monkeypatch)
    try:
        yield signals
    finally:
        signals.close()


def test_a_relay_that_comes_while_the_first_handler_runs_is_not_a_second_stop(
    quick: _QuickSignals,
) -> None:
    """Ctrl+\\: the group's SIGQUIT, then the master's, which comes once CPython
    has cleared the first one's flag and runs inside that handler. The master
    noted its relay before the handler read the clock (a busy machine), which
    read as "merged, so this is a second stop": the worker exited without
    callbacks. Now one stop; a SIGQUIT a keystroke later is the user's second."""
    quick.master_gets(signal.SIGQUIT)
    quick.master_relays(send=False)
    shutdown = quick.shutdown
    stop = shutdown.signals.stop
    relayed: list[bool] = []

    def relay_arrives(*args: Any) -> Any:
        if not relayed:
            relayed.append(True)
            quick.send(signal.SIGQUIT)  # the master's, inside the first handler
        return stop(*args)

    shutdown.signals.stop = relay_arrives  # type: ignore[method-assign]
    quick.send(signal.SIGQUIT)
    assert relayed and quick.exits == []
    assert shutdown.requested == "quick"
    quick.send(signal.SIGQUIT)
    assert quick.exits == [0]


def test_ctrl_c_then_ctrl_backslash_is_a_second_stop(quick: _QuickSignals) -> None:
    """Ctrl+C: the group's SIGINT, then the master's SIGQUIT, one stop. A Ctrl+\\
    after that is a second stop, whenever the master noted its relay (it read as
    the relay when the master noted it after the worker's handler)."""
    quick.send(signal.SIGINT)
    quick.master_gets(signal.SIGINT)
    quick.master_relays()
    assert quick.exits == []
    quick.send(signal.SIGQUIT)  # Ctrl+\
    assert quick.exits == [0]


def test_ctrl_backslash_then_ctrl_c_is_a_second_stop(quick: _QuickSignals) -> None:
    """The master never sends SIGINT: one after Ctrl+\\ is the user's second stop."""
    quick.send(signal.SIGQUIT)
    quick.master_gets(signal.SIGQUIT)
    quick.master_relays()
    assert quick.exits == []
    quick.send(signal.SIGINT)
    assert quick.exits == [0]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_pkill_signals_the_master_first_and_the_worker_after_its_relay(
    quick: _QuickSignals, sig: int
) -> None:
    """``pkill -INT`` (or ``-QUIT``) gunicorn: the master first, which relays
    SIGQUIT, then the worker's own signal. One stop (the SIGINT one exited at
    once, without callbacks); the next signal is a second stop."""
    quick.master_gets(sig)
    quick.master_relays()
    quick.send(sig)
    assert quick.exits == []
    assert quick.shutdown.requested == "quick"
    quick.send(signal.SIGQUIT)
    assert quick.exits == [0]


def test_a_second_signal_to_the_master_alone_is_a_second_stop(quick: _QuickSignals) -> None:
    """``kill -INT <master>`` twice (Ctrl+C in ``docker run`` reaches PID 1 only):
    gunicorn < 25 relays each, and the second is a second stop (it took a third)."""
    quick.master_gets(signal.SIGINT)
    quick.master_relays()
    assert quick.exits == []
    quick.master_relays()
    assert quick.exits == [0]


def test_a_second_ctrl_backslash_after_a_merged_relay_is_a_second_stop(
    quick: _QuickSignals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl+\\ while the worker is descheduled: the master's SIGQUIT merges with the
    group's. A second Ctrl+\\ (a keystroke later) exits; one within RELAY_WINDOW of
    the worker's handler may be pkill's second half and is one stop."""
    from graceful_gunicorn._gunicorn.workers import quick_signals

    quick.master_gets(signal.SIGQUIT)
    quick.master_relays(send=False)  # merged with the group's, still pending
    quick.send(signal.SIGQUIT)
    assert quick.exits == []
    monkeypatch.setattr(quick_signals, "RELAY_WINDOW", 0.0)  # a keystroke later
    quick.send(signal.SIGQUIT)
    assert quick.exits == [0]


@pytest.mark.skipif(gunicorn_version_info < (24, 0), reason="gunicorn 24+ has the method queue")
def test_gthread_hands_nothing_to_a_loop_that_closed_its_queue() -> None:
    """The drain's end closes kept-alive connections through gunicorn's method
    queue, a pipe, and so does each request's end; once gunicorn's loop ended it
    is closed, and a write then went into whatever file or socket got the
    descriptor number next (NUL bytes in an app's log file)."""
    from gunicorn.config import Config

    worker = GracefulThread(1, os.getpid(), [], None, 30, Config(), _NullLog())
    worker.method_queue.init()
    worker.PIPE = list(os.pipe())
    worker._guard_method_queue()
    worker.stop_serving(5.0)  # the stop begins, as the shutdown thread begins it
    worker.method_queue.close()  # gunicorn's loop, as it ends
    read, write = os.pipe()  # the descriptor numbers the queue had
    try:
        os.set_blocking(read, False)
        worker.release_idle_connections(drain_over=True)
        worker.method_queue.defer(lambda: None)  # a request that outlived the loop ends
        with pytest.raises(BlockingIOError):
            os.read(read, 16)
    finally:
        for fd in (read, write, *worker.PIPE):
            os.close(fd)
        worker.tmp.close()
