"""A worker whose master died finishes its shutdown, then exits (review defect 2)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from .conftest import WORKER_CLASSES
from .scenarios import APP, GRACEFUL, worker_args
from .server import Gunicorn, process_gone, wait_until


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_an_orphaned_worker_runs_its_callbacks_to_the_end(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. an on_shutdown callback takes 3 s 2. kill -9 the master.

    Result: the worker notices its parent is gone, stops (reason terminate), runs the
    slow callback to its end and after_shutdown, then exits. On gevent, gunicorn's
    heartbeat used to sys.exit() in the middle of the callback.
    """
    # gunicorn's sync worker looks at its parent between waits of half its
    # --timeout (workers/sync.py run_for_one): 15 s at the default 30.
    args = [*GRACEFUL, *worker_args(worker_class, workers=1), "--timeout", "6", APP]
    server = gunicorn(args, {"MISBEHAVE": "slow_quick"})
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    server.signal(signal.SIGKILL)
    assert server.wait_exit(10) == -signal.SIGKILL
    wait_until(lambda: process_gone(worker), 30, "the orphaned worker to exit")
    names = [e["name"] for e in server.callbacks()]
    assert "slow-start" in names and "slow-done" in names, names
    assert names[-1] == "a1", names  # after_shutdown ran last
    assert all(e["pid"] == worker for e in server.callbacks())
    # nothing replaces an orphan: its service goes away (reasons={"terminate"} runs)
    assert {e["reason"] for e in server.callbacks() if "reason" in e} == {"terminate"}
