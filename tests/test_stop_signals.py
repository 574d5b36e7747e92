"""What each signal means to a worker, decided apart from running the sequence.

Unit tests of :class:`StopSignals` against a real (in-process) master state;
the scenarios with real gunicorn masters are in test_shutdown_signals.py and
test_awkward_signals.py.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from graceful_gunicorn._gunicorn import master_state, process_state
from graceful_gunicorn._gunicorn.worker_flags import WorkerFlags
from graceful_gunicorn._gunicorn.workers.stop_signals import Decision, StopSignals


@pytest.fixture
def state() -> Iterator[master_state.MasterState]:
    created = master_state.create()
    try:
        yield created
    finally:
        created._lock.close()
        process_state.reset()


def test_the_first_stop_starts_and_a_quick_one_escalates(state: master_state.MasterState) -> None:
    signals = StopSignals(state.generation)
    assert signals.reason is None
    assert signals.stop("terminate", "SIGTERM") is Decision.START
    assert (signals.reason, signals.signal_name) == ("terminate", "SIGTERM")
    assert signals.stop("recycle") is Decision.NOTHING
    assert signals.stop("quick", "SIGINT") is Decision.ESCALATE
    assert signals.reason == "quick"
    assert signals.stop("abort", "SIGABRT") is Decision.NOTHING


def test_a_sigterm_reads_the_reason_the_master_recorded(state: master_state.MasterState) -> None:
    generation = state.generation
    assert StopSignals(generation).term_reason() == "recycle"
    state.next_generation()
    assert StopSignals(generation).term_reason() == "reload"
    state.begin_stop(master_state.STOP_TERMINATE, time.monotonic())
    assert StopSignals(generation).term_reason() == "terminate"
    state.begin_stop(master_state.STOP_QUICK, time.monotonic())
    assert StopSignals(generation).term_reason() == "quick"


def test_without_a_master_a_sigterm_is_a_terminate() -> None:
    process_state.reset()
    signals = StopSignals(0)
    assert signals.sigterm() is Decision.START
    assert signals.settle(30.0) == "terminate"


def test_a_sigterm_during_the_masters_delay_is_ignored_once_logged(
    state: master_state.MasterState,
) -> None:
    state.announce_going_away()  # shutdown_delay: going away, no stop recorded yet
    signals = StopSignals(state.generation)
    assert signals.sigterm() is Decision.IGNORED
    assert signals.reason is None
    assert signals.take_ignored_sigterm() is True
    assert signals.take_ignored_sigterm() is False
    state.begin_stop(master_state.STOP_TERMINATE, time.monotonic())
    assert signals.sigterm() is Decision.START
    assert signals.settle(30.0) == "terminate"


def test_a_recycle_the_master_announced_settles_at_once(state: master_state.MasterState) -> None:
    flags = WorkerFlags()
    flags.note_recycle()
    signals = StopSignals(state.generation, flags)
    assert signals.sigterm() is Decision.START
    began = time.monotonic()
    assert signals.settle(30.0) == "recycle"
    assert time.monotonic() - began < 1.0  # no REASON_SETTLE wait


def test_an_unexplained_sigterm_withdraws_when_the_delay_begins(
    state: master_state.MasterState,
) -> None:
    """The group's SIGTERM reached the worker before the master began its delay."""
    signals = StopSignals(state.generation)
    assert signals.sigterm() is Decision.START
    timer = threading.Timer(0.1, state.announce_going_away)
    timer.start()
    try:
        assert signals.settle(30.0) is None
    finally:
        timer.cancel()
    assert signals.reason is None


def test_a_second_quick_signal_exits_and_the_masters_relay_does_not(
    state: master_state.MasterState,
) -> None:
    signals = StopSignals(state.generation)
    now = time.monotonic()
    assert signals.quick(signal.SIGINT, now) is Decision.START  # Ctrl+C: the group's SIGINT
    state.note_quick_signal(signal.SIGINT)
    state.begin_stop(master_state.STOP_QUICK, now)
    state.count_quick_relay()
    assert signals.quick(signal.SIGQUIT, now) is Decision.NOTHING  # the master's relay
    assert signals.quick(signal.SIGQUIT, now + 1) is Decision.EXIT_NOW  # Ctrl+\


def test_a_quick_signal_during_the_settle_is_run_however_the_master_explains(
    state: master_state.MasterState,
) -> None:
    """A SIGTERM by hand, then Ctrl+C while the worker waits for the master's word,
    then the master begins its shutdown_delay: the quick stop runs at once (it was
    withdrawn with the SIGTERM, in a busy loop, and later run as a terminate)."""
    signals = StopSignals(state.generation)
    assert signals.sigterm() is Decision.START  # unexplained: a recycle, to be settled
    assert signals.stop("quick", "SIGINT") is Decision.ESCALATE
    state.announce_going_away()
    began = time.monotonic()
    assert signals.settle(30.0) == "quick"
    assert time.monotonic() - began < 1.0
    assert signals.settle(30.0) == "quick"
