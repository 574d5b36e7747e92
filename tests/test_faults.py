"""Callbacks that misbehave must not hang a worker or cost the callbacks after them.

Real gunicorn masters and workers, real signals, on 127.0.0.1.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from .conftest import WORKER_CLASSES
from .scenarios import APP, GRACEFUL, worker_args
from .server import Gunicorn, print_figure

GRACEFUL_TIMEOUT = 20


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_exit_thread_and_endless_async_callbacks_are_contained(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. on_shutdown has a callback that calls sys.exit(), one that starts a
    non-daemon thread, and an async one that never finishes 2. SIGTERM.

    Result: each is logged by name, only through gunicorn's logger; o2 and o1
    and after_shutdown still run; the worker exits by itself well before the
    master's deadline (no SIGKILL).
    """
    server = gunicorn(
        [
            *GRACEFUL,
            *worker_args(worker_class, workers=1),
            "--graceful-timeout",
            str(GRACEFUL_TIMEOUT),
            APP,
        ],
        {"MISBEHAVE": "exit,thread,async_hang"},
    )
    server.wait_ready(workers=1)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(GRACEFUL_TIMEOUT + 5) == 0
    took = time.monotonic() - started
    print_figure("exit after the signal", took)

    log = server.log()
    assert "on_shutdown callback tests.apps.events_app.never_finishes timed out" in log
    assert "on_shutdown callback tests.apps.events_app.calls_exit failed" in log
    assert "SystemExit: 3" in log
    assert [e["name"] for e in server.callbacks("on_shutdown")] == ["o2", "o1"]
    assert len(server.callbacks("after_shutdown")) == 1
    assert "SIGKILL" not in log
    # Only through gunicorn's logger: gevent's thread pool printed a traceback of
    # its own for the async callback's timeout (naming a private exception).
    assert "_DeadlinePassed" not in log and "failed with" not in log, log
    assert took < GRACEFUL_TIMEOUT / 2, f"took {took:.1f}s"


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_worker_held_by_a_thread_runs_its_atexit_handlers_and_says_it_was_forced(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. an on_shutdown callback leaves a non-daemon thread running; the app has an
    atexit handler 2. SIGTERM.

    Result: the worker cannot exit by itself; graceful_gunicorn ends it, but only
    after the atexit handler ran, and with exit status 1, not 0 (review defect 18).
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "10", APP],
        {"MISBEHAVE": "thread,atexit"},
    )
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    log = server.log()
    assert f"worker {worker} did not exit after its shutdown; running its atexit handlers" in log
    assert [e["pid"] for e in server.events("atexit")] == [worker]
    # gunicorn 21+ also logs the exit status: "Worker (pid:N) exited with code 1."
    assert "1 of 1 worker(s) stopped cleanly" not in log
    assert ", 1 forced to exit;" in log, log
    assert "SIGKILL" not in log


def test_atexit_handlers_run_once_when_the_thread_ends_while_they_run(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. an on_shutdown callback leaves a non-daemon thread that ends 2.5 s later;
    a slow atexit handler (1 s) 2. SIGTERM.

    Result: graceful_gunicorn gives up on a normal exit after 2 s and runs the
    handler; the thread ends meanwhile and the main thread begins Python's own
    exit, but the handler still runs once, not twice at the same time.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), "--graceful-timeout", "10", APP],
        {"MISBEHAVE": "thread_ends,atexit_slow"},
    )
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    assert [e["pid"] for e in server.events("atexit")] == [worker], server.log()
