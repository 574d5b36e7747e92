"""The reload gate's count of ready new workers, against a fake master.

The real scenarios (tests/test_reloads.py) run real gunicorn; these pin down
which new workers count: ready ones that serve on, not one that gunicorn is
stopping (``SIGTTOU`` during the reload) nor one that has exited.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from graceful_gunicorn._gunicorn.master_state import MasterState
from graceful_gunicorn._gunicorn.reload_gate import ReloadGate
from graceful_gunicorn._gunicorn.worker_flags import WorkerFlags


@dataclass
class _Worker:
    age: int
    generation: int
    flags: WorkerFlags = field(default_factory=WorkerFlags)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args)

    warning = error = info


class _Master:
    """What ReloadGate uses of gunicorn's Arbiter: two old workers, two new ones."""

    def __init__(self) -> None:
        self.log = _Log()
        self.num_workers = 2
        self.WORKERS = {1000 + age: _Worker(age, 0 if age <= 2 else 1) for age in (1, 2, 3, 4)}


@pytest.fixture
def state() -> Iterator[MasterState]:
    shared = MasterState()
    yield shared
    shared._lock.close()  # its lock file: the master's lasts as long as the process


def _gate(master: _Master, state: MasterState, stopping: set[int]) -> ReloadGate:
    return ReloadGate(
        master,  # type: ignore[arg-type]
        state,
        1,
        lambda: 30.0,
        lambda pid: pid not in stopping,
    )


def test_the_gate_opens_once_as_many_new_workers_as_configured_serve(state: MasterState) -> None:
    master = _Master()
    gate = _gate(master, state, set())
    assert gate.holds(1001) and gate.retires(1002) and not gate.retires(1003)
    master.WORKERS[1003].flags.mark_ready()
    gate.update()
    assert gate.outcome is None and gate.ready() == 1
    master.WORKERS[1004].flags.mark_ready()
    gate.update()
    assert gate.outcome == "open"
    assert not gate.holds(1001) and not gate.retires(1001)


def test_a_new_worker_gunicorn_stops_or_that_exited_is_not_counted(state: MasterState) -> None:
    """SIGTTOU during the reload: gunicorn sends a new worker SIGTERM; the gate,
    with one worker configured now, must wait for another new one to be ready."""
    master = _Master()
    stopping: set[int] = set()
    gate = _gate(master, state, stopping)
    master.num_workers = 1
    master.WORKERS[1003].flags.mark_ready()
    stopping.add(1003)
    gate.update()
    assert gate.outcome is None and gate.ready() == 0
    master.WORKERS[1004].flags.mark_ready()
    del master.WORKERS[1004]  # it crashed and gunicorn reaped it
    gate.update()
    assert gate.outcome is None


def test_gunicorn_asking_about_the_old_workers_does_not_open_the_gate(state: MasterState) -> None:
    """SIGTTOU with the oldest new worker ready: in one pass gunicorn asks about the
    old workers first, then stops that new worker. The gate opens between passes."""
    master = _Master()
    stopping: set[int] = set()
    gate = _gate(master, state, stopping)
    master.num_workers = 1
    master.WORKERS[1003].flags.mark_ready()
    assert gate.holds(1001) and gate.holds(1002)
    stopping.add(1003)  # later in the same pass
    gate.update()
    assert gate.outcome is None
    master.WORKERS[1004].flags.mark_ready()
    gate.update()
    assert gate.outcome == "open"


def test_once_a_new_worker_failed_the_old_workers_no_longer_retire(state: MasterState) -> None:
    master = _Master()
    gate = _gate(master, state, set())
    assert gate.retires(1001)
    state.note_reload_failure(1)  # from the new worker that cannot load the app
    assert not gate.retires(1001)
