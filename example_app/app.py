"""The example app: ``gunicorn -c example_app/gunicorn.conf.py example_app.app:app``.

- ``POST /items`` (or ``GET /items/add?value=...``) acknowledges a write that a
  write-behind buffer stores in SQLite later: on_shutdown flushes it.
- A background thread flushes the buffer every ``EXAMPLE_FLUSH_INTERVAL``
  seconds; before_shutdown stops it.
- ``GET /slow?seconds=2`` and ``GET /stream?chunks=4&seconds=0.5`` are the
  requests a deploy must not cut.
- after_shutdown closes the pool of database connections.

Settings come from the environment: ``EXAMPLE_DB`` (the SQLite file),
``EXAMPLE_FLUSH_INTERVAL`` (seconds, default 30).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

from flask import Flask, Response, current_app, request

from graceful_gunicorn import GracefulShutdown, ShutdownContext

from .store import ConnectionPool, WriteBehindBuffer

app = Flask(__name__)
graceful = GracefulShutdown(app)

DB_PATH = os.environ.get("EXAMPLE_DB", "example.sqlite3")
FLUSH_INTERVAL = float(os.environ.get("EXAMPLE_FLUSH_INTERVAL", "30"))


class _Resources:
    """This process's pool, buffer and flusher thread, made after the fork."""

    def __init__(self) -> None:
        self.pool = ConnectionPool(DB_PATH)
        self.buffer = WriteBehindBuffer(self.pool)
        self.stop_flusher = threading.Event()
        self.flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self.flusher.start()

    def _flush_periodically(self) -> None:
        while not self.stop_flusher.wait(FLUSH_INTERVAL):
            self.buffer.flush()


_resources: dict[int, _Resources] = {}
_resources_lock = threading.Lock()


def resources() -> _Resources:
    """The resources of this process (made on first use, so --preload is safe)."""
    pid = os.getpid()
    with _resources_lock:
        if pid not in _resources:
            _resources[pid] = _Resources()
        return _resources[pid]


@app.post("/items")
@app.get("/items/add")
def add_item() -> dict[str, object]:
    """Acknowledge one write."""
    value = request.values.get("value", "")
    resources().buffer.add(value)
    return {"accepted": value}


@app.get("/items/count")
def count_items() -> dict[str, int]:
    """How many items are stored, and how many wait in this process's buffer."""
    res = resources()
    with res.pool.connection() as connection:
        (stored,) = connection.execute("SELECT COUNT(*) FROM items").fetchone()
    return {"stored": stored, "pending": res.buffer.pending}


@app.get("/slow")
def slow() -> str:
    """A request that takes a while."""
    time.sleep(float(request.args.get("seconds", "2")))
    return "done\n"


@app.get("/stream")
def stream() -> Response:
    """A streaming response, a chunk at a time."""
    chunks = int(request.args.get("chunks", "4"))
    pause = float(request.args.get("seconds", "0.5"))

    def generate() -> Iterator[str]:
        for i in range(chunks):
            time.sleep(pause)
            yield f"chunk {i}\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/")
def index() -> dict[str, object]:
    """Hello, with this process's view of the shutdown."""
    return {"pid": os.getpid(), "in_flight": graceful.in_flight, "draining": graceful.draining}


@app.before_shutdown
def stop_flusher() -> None:
    """Phase 1: stop the background thread; requests are still being served."""
    res = _resources.get(os.getpid())
    if res is not None:
        res.stop_flusher.set()
        res.flusher.join(timeout=2)


@app.on_shutdown(timeout=10)
def flush_buffer(ctx: ShutdownContext) -> None:
    """Phase 2: every acknowledged write reaches the database."""
    res = _resources.get(os.getpid())
    if res is not None:
        stored = res.buffer.close()
        logging.getLogger("gunicorn.error").info(
            "example_app: flushed %d buffered write(s) (reason %s, app %s)",
            stored,
            ctx.reason,
            current_app.name,
        )


@app.after_shutdown
def close_pool() -> None:
    """Phase 3: close the database connections."""
    res = _resources.get(os.getpid())
    if res is not None:
        res.pool.close()
