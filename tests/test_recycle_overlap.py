"""The master's side of recycles without a hole, against a fake master.

The real scenarios (tests/test_recycles.py) run real gunicorn; these pin down
the rules in every case: one replacement per recycling worker, none once the
server stops, the SIGTERM held until the replacement is ready or too late.
"""

from __future__ import annotations

import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from graceful_gunicorn._gunicorn.recycle_overlap import RecycleOverlap
from graceful_gunicorn._gunicorn.worker_flags import WorkerFlags


@dataclass
class _Worker:
    age: int
    flags: WorkerFlags = field(default_factory=WorkerFlags)


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(("info", message % args))

    def warning(self, message: str, *args: object) -> None:
        self.lines.append(("warning", message % args))


class _Master:
    """What RecycleOverlap uses of gunicorn's Arbiter."""

    def __init__(self, workers: int) -> None:
        self.log = _Log()
        self.worker_age = 0
        self.WORKERS: dict[int, _Worker] = {}
        self.sigterms: list[int] = []
        self.num_workers = workers
        for _ in range(workers):
            self.spawn_worker()

    def spawn_worker(self) -> int:
        self.worker_age += 1
        pid = 1000 + self.worker_age
        self.WORKERS[pid] = _Worker(self.worker_age)
        return pid


def _overlap(
    master: _Master,
    timeout: float = 30.0,
    retiring: AbstractSet[int] = frozenset(),
    kept: bool = False,
) -> RecycleOverlap:
    """``retiring``: the old workers a reload's gate holds (read on each turn);
    ``kept``: whether a failed reload keeps them."""
    return RecycleOverlap(
        master,  # type: ignore[arg-type]
        lambda: timeout,
        master.sigterms.append,
        retiring.__contains__,
        lambda pid: kept,
    )


def test_a_worker_at_max_requests_is_replaced_once_and_stops_once_it_is_ready() -> None:
    master = _Master(2)
    overlap = _overlap(master)
    master.WORKERS[1002].flags.ask_for_replacement()
    overlap.update(stopping=False)
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003]  # one replacement, not two
    assert master.WORKERS[1002].age < master.WORKERS[1001].age  # gunicorn stops it first
    assert overlap.holds(1002) and not overlap.holds(1001)
    assert master.sigterms == []
    master.WORKERS[1001].flags.mark_ready()
    master.WORKERS[1003].flags.mark_ready()
    overlap.update(stopping=False)
    overlap.update(stopping=False)
    assert master.sigterms == [1002]  # once
    assert master.WORKERS[1002].flags.recycle  # the worker reads it as a recycle
    assert overlap.holds(1002)  # gunicorn's own SIGTERMs to it stay ours
    del master.WORKERS[1002]  # it exited and gunicorn reaped it
    overlap.update(stopping=False)
    assert not overlap.holds(1002)
    assert sorted(master.WORKERS) == [1001, 1003]


def test_workers_at_max_requests_together_each_get_one_replacement() -> None:
    master = _Master(2)
    overlap = _overlap(master)
    for pid in (1001, 1002):
        master.WORKERS[pid].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1004]
    master.WORKERS[1004].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == []  # one ready: the server would have one worker
    master.WORKERS[1003].flags.mark_ready()
    overlap.update(stopping=False)
    assert sorted(master.sigterms) == [1001, 1002]
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1004]  # no more


def test_a_worker_waiting_for_its_replacement_still_counts_as_serving() -> None:
    """Both at max_requests together, both serving: the first replacement that is
    ready lets one of them stop (the other still serves); the second, the other."""
    master = _Master(2)
    overlap = _overlap(master)
    for pid in (1001, 1002):
        master.WORKERS[pid].flags.mark_ready()
        master.WORKERS[pid].flags.ask_for_replacement()
    overlap.update(stopping=False)
    master.WORKERS[1004].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == [1001]  # 1002 and 1004 serve
    master.WORKERS[1003].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == [1001, 1002]
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1004]


def test_a_replacement_at_max_requests_before_the_master_saw_it_ready_frees_its_recycler() -> None:
    """A small max_requests under load: the replacement asks for its own before the
    master's next turn. Its recycler stops all the same (at once, not at the
    timeout), and each asker still gets one replacement, never more."""
    master = _Master(1)
    overlap = _overlap(master)
    master.WORKERS[1001].flags.mark_ready()
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002]
    master.WORKERS[1002].flags.mark_ready()
    master.WORKERS[1002].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert master.sigterms == [1001]
    assert sorted(master.WORKERS) == [1001, 1002, 1003]  # 1002's replacement
    del master.WORKERS[1001]
    master.WORKERS[1003].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == [1001, 1002]
    assert sorted(master.WORKERS) == [1002, 1003]
    assert not [line for kind, line in master.log.lines if kind == "warning"]


def test_a_replacement_not_ready_in_time_lets_the_old_worker_stop_with_a_warning() -> None:
    master = _Master(1)
    overlap = _overlap(master, timeout=0.001)
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    while not master.sigterms:
        overlap.update(stopping=False)
    assert master.sigterms == [1001]
    assert sorted(master.WORKERS) == [1001, 1002]
    warnings = [line for kind, line in master.log.lines if kind == "warning"]
    assert len(warnings) == 1 and "recycle_ready_timeout=0.001s" in warnings[0]


def test_a_worker_lost_while_one_waits_is_replaced_at_once() -> None:
    """gunicorn counts the waiting worker, so it would not fork for the lost one."""
    master = _Master(2)
    overlap = _overlap(master)
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003]
    del master.WORKERS[1002]  # killed (a timeout, the OOM killer)
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1003, 1004]
    assert master.sigterms == []


def test_during_a_reload_the_new_workers_are_the_replacements() -> None:
    """Two old workers serve while two new ones boot (the reload gate holds the
    old): one old worker at max_requests gets no extra worker, and stops once the
    new ones are ready."""
    master = _Master(2)
    master.spawn_worker(), master.spawn_worker()  # the reload's new workers
    master.num_workers = 2
    overlap = _overlap(master, retiring=frozenset({1001, 1002}))
    master.WORKERS[1001].flags.mark_ready()
    master.WORKERS[1002].flags.mark_ready()
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1004]
    master.WORKERS[1003].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == []  # 1002 retires with the gate: it does not count
    master.WORKERS[1004].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == [1001]  # 1003 and 1004 serve


def test_a_worker_sent_its_own_sigterm_is_not_counted() -> None:
    master = _Master(2)
    overlap = _overlap(master)
    overlap.note_sigterm(1002)  # SIGTTOU, or a reload's old worker
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1004]


def test_turned_off_a_worker_at_max_requests_stops_at_once() -> None:
    master = _Master(2)
    overlap = _overlap(master, timeout=0.0)
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002]
    assert master.sigterms == [1001]  # as in gunicorn


def test_while_the_server_goes_away_a_worker_at_max_requests_serves_on_alone() -> None:
    """shutdown_delay: no extra worker, and no hole either; the server's stop ends it."""
    master = _Master(2)
    overlap = _overlap(master)
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=True)
    overlap.update(stopping=True)
    assert sorted(master.WORKERS) == [1001, 1002]
    assert master.sigterms == []
    assert overlap.holds(1001)  # the master's kill_workers is not held (master.py)


def test_a_new_worker_at_max_requests_while_the_gate_holds_gets_its_replacement() -> None:
    """The old workers the reload gate holds are about to stop: they do not stand
    in for a new worker at max_requests, which waits for a replacement of its own
    (else it would stop at once, and gunicorn, one worker over, would keep an old one)."""
    master = _Master(2)
    master.spawn_worker(), master.spawn_worker()  # the reload's new workers
    overlap = _overlap(master, retiring=frozenset({1001, 1002}))
    for pid in (1001, 1002, 1003, 1004):
        master.WORKERS[pid].flags.mark_ready()
    master.WORKERS[1003].flags.ask_for_replacement()
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1004, 1005]
    assert master.sigterms == []  # 1001 and 1002 do not count: they retire
    master.WORKERS[1005].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == [1003]  # 1004 and 1005 serve


def test_a_worker_gunicorn_is_stopping_does_not_serve_on() -> None:
    master = _Master(2)
    overlap = _overlap(master)
    overlap.note_sigterm(1001)
    assert not overlap.serves_on(1001) and overlap.serves_on(1002)


def test_a_new_worker_lost_while_the_gate_holds_is_replaced() -> None:
    """gunicorn counts the old workers the gate holds, so it would not fork for a
    new worker lost meanwhile, nor for SIGTTIN: the gate would wait its timeout and
    leave an old worker serving the old code."""
    master = _Master(2)
    master.spawn_worker(), master.spawn_worker()  # the reload's new workers
    overlap = _overlap(master, timeout=0.0, retiring=frozenset({1001, 1002}))
    del master.WORKERS[1004]  # it crashed and gunicorn reaped it
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1005]
    master.num_workers = 3  # SIGTTIN
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1003, 1005, 1006]
    overlap.update(stopping=True)
    assert master.sigterms == [] and len(master.WORKERS) == 5


def test_an_old_worker_at_max_requests_stops_with_the_gate_not_at_its_timeout() -> None:
    master = _Master(2)
    master.spawn_worker(), master.spawn_worker()  # the reload's new workers
    overlap = _overlap(master, timeout=0.001, retiring=frozenset({1001, 1002}))
    master.WORKERS[1001].flags.mark_ready()
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    time.sleep(0.01)  # past its recycle_ready_timeout
    overlap.update(stopping=False)
    assert master.sigterms == [] and sorted(master.WORKERS) == [1001, 1002, 1003, 1004]
    master.WORKERS[1003].flags.mark_ready()
    master.WORKERS[1004].flags.mark_ready()
    overlap.update(stopping=False)
    assert master.sigterms == [1001]


def test_recycle_ready_timeout_counts_from_the_fork_of_the_replacement() -> None:
    """A reload's gate held the worker at max_requests, then failed and kept it: its
    replacement is forked only now, and has its whole recycle_ready_timeout."""
    master = _Master(2)
    master.spawn_worker(), master.spawn_worker()  # the reload's new workers
    retiring = {1001, 1002}
    overlap = _overlap(master, timeout=0.05, retiring=retiring, kept=True)
    master.WORKERS[1001].flags.mark_ready()
    master.WORKERS[1001].flags.ask_for_replacement()
    overlap.update(stopping=False)
    time.sleep(0.1)  # past the timeout while the gate holds
    retiring.clear()  # the reload failed: the old workers are kept
    del master.WORKERS[1003], master.WORKERS[1004]  # the new ones stopped
    overlap.update(stopping=False)
    assert sorted(master.WORKERS) == [1001, 1002, 1005]  # its replacement, now
    assert master.sigterms == []  # not "stops anyway" in the turn of the fork
    time.sleep(0.1)
    overlap.update(stopping=False)
    assert master.sigterms == [1001]  # its own timeout, with a warning


def test_an_old_worker_at_max_requests_gets_more_time_only_if_a_failed_reload_keeps_it() -> None:
    """The gate timed out: the old worker at max_requests stops now, as the
    warning says (its recycle_ready_timeout ran during the gate). The gate failed:
    the old workers serve on, and it has its whole timeout for a replacement."""
    for kept, stopped in ((False, [1001]), (True, [])):
        master = _Master(2)
        master.spawn_worker(), master.spawn_worker()  # the reload's new workers
        retiring = {1001, 1002}
        overlap = _overlap(master, timeout=0.05, retiring=retiring, kept=kept)
        master.WORKERS[1001].flags.mark_ready()
        master.WORKERS[1001].flags.ask_for_replacement()
        overlap.update(stopping=False)
        time.sleep(0.1)  # past its timeout while the gate holds
        retiring.clear()  # the gate ends; the new workers (not ready) stay
        overlap.update(stopping=False)
        assert master.sigterms == stopped, kept
