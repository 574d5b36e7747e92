"""Worker timeouts (SIGABRT) and the heartbeat of a worker that stops on purpose.

Real gunicorn masters and workers, real signals, real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from .conftest import WORKER_CLASSES
from .scenarios import APP, GRACEFUL, send_in_background, worker_args
from .server import Gunicorn, http_get, wait_until


def assert_abort_handled(server: Gunicorn, worker: int, key: str) -> None:
    """The worker logged the stuck request with its stack, then ran the quick callbacks."""
    wait_until(lambda: len(server.callbacks("after_shutdown")) == 1, 20, "abort callbacks")
    wait_until(lambda: f"Worker exiting (pid: {worker})" in server.log(), 20, "worker exit")
    log = server.log()
    assert f"worker timeout: GET /hold/{key} in flight for" in log
    assert "in wait_for_release" in log, "the stack of the thread serving the request"
    callbacks = server.callbacks()
    assert [e["name"] for e in callbacks] == ["o2", "o1", "a1"]
    assert {e["reason"] for e in callbacks} == {"abort"}
    assert all(e["app_context"] for e in callbacks)
    assert "SIGKILL" not in log


def test_worker_timeout_logs_the_stuck_request_then_runs_quick_callbacks(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. a sync worker with --timeout 2 is stuck in a request 2. the master's
    timeout sends it SIGABRT.

    Result: the log names the request and shows its thread's stack; on_shutdown
    and after_shutdown run with reason "abort" (before_shutdown does not); the
    worker exits by itself (no SIGKILL) and the master boots a new one.
    """
    server = gunicorn([*GRACEFUL, *worker_args("sync", workers=1), "--timeout", "2", APP])
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    results, _ = send_in_background(server, ["/hold/stuck"])
    wait_until(lambda: server.events("entered"), 10, "the request to be in flight")

    wait_until(lambda: "WORKER TIMEOUT" in server.log(), 20, "the master's timeout")
    assert_abort_handled(server, worker, "stuck")
    assert server.callbacks("before_shutdown") == []
    wait_until(lambda: len(server.worker_pids()) == 2, 20, "a new worker")
    server.release("stuck")
    wait_until(lambda: http_get(server.port, "/hello", 5).ok, 20, "the new worker to serve")
    wait_until(lambda: results[0].status is not None or results[0].error != "not done", 20, "reply")
    # gunicorn's sync worker answers 500 to the request it leaves (or closes it).
    assert results[0].status != 200


@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_sigabrt_logs_requests_then_runs_quick_callbacks(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a request is in flight 2. SIGABRT to the worker, as the master's
    timeout sends it (these worker classes heartbeat from their main loop, so
    a stuck request alone does not time them out).

    Result: as for the sync worker's real timeout.
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), APP])
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    send_in_background(server, ["/hold/stuck"])
    wait_until(lambda: server.events("entered"), 10, "the request to be in flight")

    os.kill(worker, signal.SIGABRT)
    assert_abort_handled(server, worker, "stuck")
    assert server.callbacks("before_shutdown") == []
    server.release("stuck")


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_stopping_worker_keeps_the_heartbeat(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. --timeout 2; a request is in flight 2. SIGHUP 3. the request ends
    after 3 s; an on_shutdown callback then takes 4 s.

    Result: the master never times the old worker out; the request ends 200,
    the slow callback and the later ones finish, and the reload completes.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--timeout", "2", APP],
        {"MISBEHAVE": "slow"},
    )
    server.wait_ready(workers=1)
    results, threads = send_in_background(server, ["/hold/long"])
    wait_until(lambda: server.events("entered"), 10, "the request to be in flight")
    server.signal(signal.SIGHUP)
    wait_until(lambda: server.callbacks("before_shutdown"), 10, "the old worker's stop")
    time.sleep(3)  # the scenario itself: a drain longer than --timeout
    server.release("long")
    wait_until(lambda: server.callbacks("after_shutdown"), 30, "the old worker's callbacks")
    threads[0].join(10)

    assert results[0].ok, results[0].error
    names = [e["name"] for e in server.callbacks("on_shutdown")]
    assert names == ["slow-done", "o2", "o1"]
    assert {e.get("reason") for e in server.callbacks()} == {"reload", None}  # slow-done has none
    assert "WORKER TIMEOUT" not in server.log()
    assert http_get(server.port, "/hello").ok
