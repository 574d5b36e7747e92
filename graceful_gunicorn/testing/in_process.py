"""Test your own shutdown callbacks, in-process, with Flask's test client.

::

    from graceful_gunicorn.testing import run_shutdown

    def test_buffered_writes_are_flushed(app):
        client = app.test_client()
        client.post("/items", data={"value": "a"}, buffered=True)
        run = run_shutdown(app, "terminate", hold=["/slow?seconds=0.5"])
        assert run.responses[0].status_code == 200      # drained, not cut
        assert run.report.count("error") == 0
        assert stored_items() == ["a"]                    # on_shutdown flushed it

The requests in ``hold`` are sent through the app's test client, each in a
thread of its own, and the shutdown begins once all of them are in flight,
so the drain waits for them as it does under gunicorn. A lifecycle shuts
down once: use a fresh app (an app factory) for each test.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._core.context import Reason
from .._core.report import ShutdownReport
from .._core.settings import Settings
from .._wsgi.discovery import find_lifecycle


@dataclass
class ShutdownRun:
    """What :func:`run_shutdown` saw."""

    report: ShutdownReport
    #: The test client's response to each request of ``hold``, in order.
    responses: list[Any] = field(default_factory=list)


def run_shutdown(
    app: Any,
    reason: Reason = "terminate",
    *,
    hold: Sequence[str] = (),
    timeout: float = 30.0,
    quick_timeout: float | None = None,
    hold_timeout: float = 5.0,
) -> ShutdownRun:
    """Run ``app``'s shutdown sequence for ``reason`` with ``hold`` in flight.

    ``app`` is a Flask app set up with ``GracefulShutdown``, or any WSGI app
    that the server would find lifecycles in (a ``Lifecycle().wrap(app)``, a
    ``DispatcherMiddleware`` mounting such apps: every app's callbacks run in
    one sequence, as in a worker); ``hold`` goes through Flask's test client, or
    Werkzeug's for other apps. The sequence is
    planned as a gunicorn worker plans it (:mod:`graceful_gunicorn._core.plan`):
    ``timeout`` is gunicorn's ``graceful_timeout`` (30 s by default), of which
    the same safety margin is kept; a quick reason's callbacks get
    ``quick_timeout`` (by default ``$GRACEFUL_QUICK_SHUTDOWN_TIMEOUT``, else 2 s).
    A test-client response counts as in flight until it is closed
    (PEP 3333), so send earlier requests with ``buffered=True`` or close them. Raises
    ``TimeoutError`` if the held requests are not all in flight within
    ``hold_timeout`` seconds (they ended too fast to be held).
    """
    lifecycle = find_lifecycle(app)
    if lifecycle is None:
        raise ValueError(
            "the app has no graceful_gunicorn lifecycle: call GracefulShutdown(app) "
            "or wrap it with Lifecycle().wrap(app)"
        )
    responses: list[Any] = [None] * len(hold)
    client = _client(app)

    def send(index: int, path: str) -> None:
        responses[index] = client.get(path, buffered=True)

    threads = [
        threading.Thread(target=send, args=(i, path), daemon=True) for i, path in enumerate(hold)
    ]
    expected = lifecycle.in_flight + len(hold)
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + hold_timeout
    while lifecycle.in_flight < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {lifecycle.in_flight - expected + len(hold)} of {len(hold)} held "
                "request(s) were in flight "
                f"after {hold_timeout:g}s"
            )
        time.sleep(0.005)
    if quick_timeout is None:
        quick_timeout = Settings.load({}, os.environ)[0].quick_shutdown_timeout
    report = lifecycle.shutdown(reason, timeout=timeout, quick_timeout=quick_timeout)
    for thread in threads:
        thread.join(timeout)
    return ShutdownRun(report, responses)


def _client(app: Any) -> Any:
    """Flask's test client for a Flask app, Werkzeug's for any other WSGI app."""
    if hasattr(app, "test_client"):
        return app.test_client()
    try:
        from werkzeug.test import Client
    except ImportError as exc:  # pragma: no cover - Werkzeug comes with Flask
        message = "run_shutdown needs Werkzeug for a WSGI app: pip install werkzeug"
        raise RuntimeError(message) from exc
    return Client(app)
