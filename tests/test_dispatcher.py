"""Several apps in one process behind a dispatcher: every lifecycle runs (review defect 1)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import pytest

from graceful_gunicorn import Lifecycle
from graceful_gunicorn._wsgi.discovery import find_lifecycle, find_lifecycles

from .conftest import WORKER_CLASSES
from .scenarios import GRACEFUL, worker_args
from .server import Gunicorn, http_get, wait_until

APP = "tests.apps.dispatcher_app:app"


def test_find_lifecycles_follows_a_dispatchers_mounts() -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    outer, inner = Lifecycle(), Lifecycle()
    app = DispatcherMiddleware(outer.wrap(lambda e, s: []), {"/api": inner.wrap(lambda e, s: [])})
    assert find_lifecycles(app) == [outer, inner]
    combined = find_lifecycle(app)
    assert combined is not None and combined.members == (outer, inner)


def test_a_combined_lifecycle_runs_every_apps_callbacks_in_one_budget() -> None:
    outer, inner = Lifecycle(), Lifecycle()
    ran: list[str] = []
    outer.on_shutdown(lambda: ran.append("outer"))
    inner.on_shutdown(lambda: ran.append("inner"))
    inner.after_shutdown(timeout=1)(lambda: ran.append("inner after"))
    combined = Lifecycle.combine([outer, inner])
    report = combined.shutdown(timeout=10)
    assert ran == ["outer", "inner", "inner after"]
    assert outer.draining and inner.draining
    assert [c.outcome for c in report.callbacks] == ["ok"] * 3
    plan = combined.plan("terminate", graceful_timeout=10)
    assert plan.explicit == 1.0 and len(plan.callbacks) == 3


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_every_app_behind_a_dispatcher_runs_its_callbacks(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. DispatcherMiddleware(frontend, {"/api": api}), both with GracefulShutdown
    2. a request to /api is in flight 3. SIGTERM.

    Result: the api request completes (the drain waits for every app's requests);
    both apps' callbacks run, each in its own app's context; the worker's log
    names both apps. Only the frontend's ran before.
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), APP])
    server.wait_ready(workers=1)
    results: list[int | None] = []
    client = threading.Thread(
        target=lambda: results.append(http_get(server.port, "/api/sleep/1.5").status)
    )
    client.start()
    wait_until(lambda: server.events("entered"), 20, "the api request")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    client.join(10)
    assert results == [200]
    ran = [(e["name"], e["app"]) for e in server.callbacks()]
    assert ran == [
        ("frontend_flush", "frontend"),
        ("api_flush", "api"),
        ("frontend_close", "frontend"),
        ("api_close", "api"),
    ]
    assert "ready with 4 shutdown callback(s) of 2 apps (frontend, api)" in server.log()


def test_a_combined_lifecycle_reads_its_members_when_it_runs() -> None:
    """A callback registered after the lifecycles were combined (lazily, at the
    first request) runs; each app keeps its own default timeout; a callback one
    extension registered on both apps runs once."""
    outer, inner = Lifecycle(callback_timeout=1), Lifecycle(callback_timeout=8)
    combined = Lifecycle.combine([outer, inner])
    ran: list[str] = []

    def shared() -> None:
        ran.append("shared")

    outer.on_shutdown(shared)
    inner.on_shutdown(shared)
    inner.on_shutdown(lambda: ran.append("late"))
    plan = combined.plan("terminate", graceful_timeout=30)
    assert sorted(c.timeout for c in plan.callbacks) == [1.0, 8.0]
    combined.shutdown(timeout=30)
    assert ran == ["shared", "late"]
