"""Rolling restarts behind a real nginx, POSTs on kept-alive connections.

Two gunicorn servers run the example app behind nginx configured by
``example_app/nginx.conf`` (upstream keep-alive, ``proxy_next_upstream error
timeout http_502 http_503``, ``max_fails=1 fail_timeout=2s``). nginx has no
health checks and never resends a ``POST`` that reached a server, so every
request that a stopping server loses is a client's error. Each server in turn
gets SIGTERM and is started again (a rolling deploy) while 16 clients send
POSTs (each acknowledges a write); the same scenario runs with plain gunicorn.
Only 127.0.0.1 is used and the load is bounded in time and count.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from .conftest import WORKER_CLASSES
from .load import Load, LoadResult
from .nginx import Nginx
from .scenarios import GRACEFUL, worker_args
from .server import Gunicorn, free_port, wait_until

#: Load scenarios run one at a time (pyproject.toml, addopts).
pytestmark = pytest.mark.xdist_group("load")

READY = "/-/ready"
SHUTDOWN_DELAY = 2


def _served_by(nginx: Nginx, port: int) -> int:
    """How many requests nginx's access log says ``127.0.0.1:port`` answered."""
    return len(re.findall(rf" 127\.0\.0\.1:{port} 200$", nginx.access_log(), re.M))


def _stored(database: Path) -> int:
    # closing(): "with connection" only commits, and Python 3.13 warns about the
    # connection left open when the garbage collector finds it (in a later test).
    with closing(sqlite3.connect(database)) as connection:
        (count,) = connection.execute("SELECT COUNT(*) FROM items").fetchone()
    return int(count)


def rolling_restarts(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, worker_class: str, graceful: bool
) -> tuple[LoadResult, int]:
    """Run the scenario; return what the clients saw and how many writes were stored."""
    mode = "graceful" if graceful else "plain"
    database = tmp_path / f"{mode}.sqlite3"
    env = {
        "EXAMPLE_DB": str(database),
        "GRACEFUL_READINESS_PATH": READY,
        "GRACEFUL_SHUTDOWN_DELAY": str(SHUTDOWN_DELAY),
    }
    config = GRACEFUL if graceful else []
    args = [*config, *worker_args(worker_class), "--graceful-timeout", "15", "example_app.app:app"]
    ports = [free_port(), free_port()]
    servers = [gunicorn(args, env, port=port).wait_ready(workers=2, path="/") for port in ports]
    nginx = Nginx(tmp_path, ports)
    try:
        nginx.start()
        load = Load(nginx.port, "/items", connections=16, max_seconds=120, method="POST")
        load.start()
        wait_until(lambda: load.result.sent >= 200, 20, "the load to run")
        for i in range(2):
            servers[i].signal(signal.SIGTERM)
            servers[i].wait_exit(30)
            servers[i] = gunicorn(args, env, port=ports[i]).wait_ready(workers=2, path="/")
            # nginx took it out for fail_timeout on its first refused connection:
            # it is back once nginx sent it requests again.
            served = _served_by(nginx, ports[i])
            wait_until(
                lambda i=i, n=served: _served_by(nginx, ports[i]) > n + 20,
                15,
                f"nginx to send s{i} requests again",
            )
        result = load.stop()
    finally:
        nginx.stop()
    for server in servers:
        server.signal(signal.SIGTERM)
        server.wait_exit(30)
    return result, _stored(database)


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_rolling_restarts_behind_nginx_lose_no_post(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, worker_class: str
) -> None:
    """1. nginx over two servers (example_app/nginx.conf), 16 kept-alive clients
    sending POSTs 2. each server in turn gets SIGTERM and is started again
    (graceful_gunicorn, then plain gunicorn).

    Result: with graceful_gunicorn no request fails and every acknowledged
    write is stored; plain gunicorn's figures are printed beside it.
    """
    graceful, graceful_stored = rolling_restarts(gunicorn, tmp_path, worker_class, graceful=True)
    plain, plain_stored = rolling_restarts(gunicorn, tmp_path, worker_class, graceful=False)
    figures = {
        "worker_class": worker_class,
        "graceful": {
            "sent": graceful.sent,
            "failed": graceful.failed,
            **graceful.errors,
            "slowest": round(graceful.slowest, 2),
            "acknowledged": graceful.sent - graceful.failed,
            "stored": graceful_stored,
        },
        "plain": {
            "sent": plain.sent,
            "failed": plain.failed,
            **plain.errors,
            "slowest": round(plain.slowest, 2),
            "acknowledged": plain.sent - plain.failed,
            "stored": plain_stored,
        },
    }
    print("nginx rolling restarts:", json.dumps(figures))
    assert graceful.sent > 500, "the load must run through the restarts"
    assert (graceful.failed, dict(graceful.errors)) == (0, {})
    assert graceful_stored == graceful.sent
