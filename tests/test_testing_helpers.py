"""graceful_gunicorn.testing, used the way the README shows, on the example app."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from flask import Flask

from graceful_gunicorn import GracefulShutdown
from graceful_gunicorn.testing import run_shutdown


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
