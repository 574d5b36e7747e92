"""graceful_gunicorn.testing, used the way the README shows, on the example app."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from flask import Flask

from graceful_gunicorn import GracefulShutdown, ShutdownContext
from graceful_gunicorn.testing import run_shutdown
from graceful_gunicorn.testing.pytest_plugin import StartServer
from graceful_gunicorn.testing.server import GunicornServer, wait_until

from .server import REPO


def test_example_app_drains_held_requests_and_flushes_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. three acknowledged writes 2. a slow and a streaming request in
    flight 3. the terminate sequence.

    Result: both requests complete with their whole body, every callback is
    ok, and the three writes are in SQLite.
    """
    from example_app import app as example

    monkeypatch.setattr(example, "DB_PATH", str(tmp_path / "example.sqlite3"))
    client = example.app.test_client()
    for value in ("a", "b", "c"):
        assert client.get(f"/items/add?value={value}", buffered=True).status_code == 200

    run = run_shutdown(
        example.app, "terminate", hold=["/slow?seconds=0.3", "/stream?chunks=3&seconds=0.1"]
    )

    assert [r.status_code for r in run.responses] == [200, 200]
    assert run.responses[1].get_data(as_text=True) == "chunk 0\nchunk 1\nchunk 2\n"
    assert run.report.requests_drained == 2
    assert [(c.name.rsplit(".", 1)[-1], c.outcome) for c in run.report.callbacks] == [
        ("stop_flusher", "ok"),
        ("flush_buffer", "ok"),
        ("close_pool", "ok"),
    ]
    with closing(sqlite3.connect(tmp_path / "example.sqlite3")) as connection:
        rows = connection.execute("SELECT value FROM items ORDER BY value").fetchall()
    assert rows == [("a",), ("b",), ("c",)]


def test_run_shutdown_takes_a_dispatcher_of_several_apps() -> None:
    """1. two Flask apps with GracefulShutdown behind Werkzeug's DispatcherMiddleware
    2. run_shutdown on the dispatcher, a slow request to the mounted app held.

    Result: the held request is drained, and both apps' callbacks run in one
    sequence, outermost app first, as in a gunicorn worker (it raised: no
    test_client on a dispatcher).
    """
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    seen: list[str] = []
    frontend, api = Flask("frontend"), Flask("api")
    for flask_app in (frontend, api):
        graceful = GracefulShutdown(flask_app)

        @graceful.on_shutdown
        def record(ctx: ShutdownContext, name: str = flask_app.name) -> None:
            seen.append(name)

    @api.get("/slow")
    def slow() -> str:
        time.sleep(0.3)
        return "slow\n"

    run = run_shutdown(DispatcherMiddleware(frontend, {"/api": api}), hold=["/api/slow"])

    assert [r.status_code for r in run.responses] == [200]
    assert run.report.requests_drained == 1
    assert seen == ["frontend", "api"]


def test_quick_reason_skips_the_drain_and_reports_a_failing_callback() -> None:
    app = Flask(__name__)
    GracefulShutdown(app)
    seen = []

    @app.before_shutdown
    def never() -> None:
        seen.append("before")

    @app.on_shutdown
    def broken() -> None:
        raise RuntimeError("no database")

    run = run_shutdown(app, "quick")
    assert seen == []
    assert [(c.phase, c.outcome) for c in run.report.callbacks] == [
        ("before_shutdown", "skipped"),
        ("on_shutdown", "error"),
    ]
    assert "no database" in (run.report.callbacks[1].error or "")


def test_a_request_that_ends_too_fast_to_hold_is_an_error() -> None:
    app = Flask(__name__)
    GracefulShutdown(app)
    app.get("/fast")(lambda: "ok")
    with pytest.raises(TimeoutError, match="0 of 1 held request"):
        run_shutdown(app, hold=["/fast"], hold_timeout=0.5)


def test_gunicorn_server_fixture_on_the_example_app(
    gunicorn_server: StartServer, tmp_path: Path
) -> None:
    """The pytest fixture, used as the README shows: the example app under a
    real gunicorn (its own config: 2 gthread workers), three writes, SIGTERM.

    Result: the master exits 0, both workers stopped cleanly, the writes are
    in SQLite, and the JSON report names the example app's callbacks.
    """
    db = tmp_path / "example.sqlite3"
    report_path = tmp_path / "report.json"
    server = gunicorn_server(
        "-c",
        "example_app/gunicorn.conf.py",
        env={"EXAMPLE_DB": str(db), "GRACEFUL_SHUTDOWN_REPORT_PATH": str(report_path)},
        cwd=REPO,
    )
    server.wait_ready(workers=2, path="/-/ready")
    assert server.get("/-/ready") == (200, b"ready\n")
    for value in ("a", "b", "c"):
        assert server.get(f"/items/add?value={value}")[0] == 200

    server.signal(signal.SIGTERM)
    assert server.wait_exit(40) == 0

    assert "2 of 2 worker(s) stopped cleanly, 0 killed" in server.log()
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT value FROM items ORDER BY value").fetchall()
    assert rows == [("a",), ("b",), ("c",)]
    report = json.loads(report_path.read_text())
    assert report["reason"] == "terminate"
    names = {c["name"].rsplit(".", 1)[-1] for w in report["worker_reports"] for c in w["callbacks"]}
    assert {"stop_flusher", "flush_buffer", "close_pool"} <= names


def test_gunicorn_server_kills_what_it_started(tmp_path: Path) -> None:
    """Leaving the with block kills the master and its workers by PID."""
    server = GunicornServer(
        ["-c", "python:graceful_gunicorn.conf", "-w", "2", "example_app.app:app"],
        cwd=REPO,
        env={"EXAMPLE_DB": str(tmp_path / "db.sqlite3")},
        log_path=tmp_path / "gunicorn.log",
    )
    with server:
        server.wait_ready(workers=2, path="/")
        pids = [server.pid, *server.worker_pids()]
        assert len(pids) == 3
    assert server.process is not None and server.process.returncode is not None
    for pid in pids[1:]:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10, f"worker {pid} to go")


def test_run_shutdown_plans_as_a_worker_does() -> None:
    """A quick stop's callbacks get quick_timeout (not the 3 s they asked for)."""
    app = Flask(__name__)
    GracefulShutdown(app)
    durations: list[float] = []

    @app.on_shutdown(timeout=3)  # type: ignore[attr-defined]
    def slow(ctx: ShutdownContext) -> None:
        durations.append(ctx.deadline - time.monotonic())

    run_shutdown(app, "quick", quick_timeout=0.5)
    assert durations[-1] == pytest.approx(0.5, abs=0.1)
