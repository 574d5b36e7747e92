"""Rolling restarts behind a real HAProxy under steady keep-alive load (SPEC section 4).

Two gunicorn servers run the example app behind HAProxy, which health-checks
each one every 300 ms. Each server in turn gets SIGTERM and is started again
(a rolling deploy) while 16 keep-alive clients send requests through HAProxy.
The same scenario runs with plain gunicorn to show the failures graceful_gunicorn
avoids; only 127.0.0.1 is used and the load is bounded in time and count.

A server counts as down when it says so (the readiness path's 503) or refuses
connections, not when a busy machine is slow to answer (``timeout check`` in
tests/haproxy.py); the test fails with HAProxy's reason when the server left
serving was marked down too.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import WORKER_CLASSES
from .haproxy import HAProxy
from .load import Load, LoadResult
from .scenarios import GRACEFUL, worker_args
from .server import Gunicorn, free_port, wait_until

#: Load scenarios run one at a time (pyproject.toml, addopts).
pytestmark = pytest.mark.xdist_group("load")

READY = "/-/ready"
SHUTDOWN_DELAY = 2


def down_reasons(haproxy: HAProxy, server: int) -> list[str]:
    """Why HAProxy marked ``s<server>`` down, each time (its log line's own words)."""
    return re.findall(
        rf"^Server app/s{server} is DOWN, (reason: .*?)\. \d+ active", haproxy.log(), re.M
    )


def rolling_restarts(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, worker_class: str, graceful: bool
) -> tuple[LoadResult, list[str]]:
    """Run the scenario; return what the clients saw and what went wrong on the way."""
    mode = "graceful" if graceful else "plain"
    config = GRACEFUL if graceful else []
    env = {
        "EXAMPLE_DB": str(tmp_path / f"{mode}.sqlite3"),
        "GRACEFUL_READINESS_PATH": READY,
        "GRACEFUL_SHUTDOWN_DELAY": str(SHUTDOWN_DELAY),
    }
    args = [*config, *worker_args(worker_class), "--graceful-timeout", "15", "example_app.app:app"]
    ports = [free_port(), free_port()]
    servers = [gunicorn(args, env, port=port).wait_ready(workers=2, path="/") for port in ports]
    haproxy = HAProxy(tmp_path, ports, READY if graceful else "/")
    problems: list[str] = []
    try:
        haproxy.start()
        load = Load(haproxy.port, "/", connections=16, max_seconds=90).start()
        for i in range(2):
            other = 1 - i
            changes = haproxy.state_changes(i)
            assert changes[-1:] != ["DOWN"], f"{mode}: s{i} is down before its restart"
            downs, ups = changes.count("DOWN"), changes.count("UP")
            other_downs = len(down_reasons(haproxy, other))
            servers[i].signal(signal.SIGTERM)
            if graceful:
                wait_until(
                    lambda i=i, n=downs: haproxy.state_changes(i).count("DOWN") > n,
                    SHUTDOWN_DELAY + 5,
                    f"haproxy to mark s{i} down",
                )
                assert servers[i].process is not None
                if servers[i].process.poll() is not None:
                    problems.append(f"s{i} stopped before haproxy marked it down")
            servers[i].wait_exit(30)
            wait_until(
                lambda i=i, n=downs: haproxy.state_changes(i).count("DOWN") > n,
                10,
                f"haproxy to see s{i} down",
            )
            servers[i] = gunicorn(args, env, port=ports[i]).wait_ready(workers=2, path="/")
            wait_until(
                lambda i=i, n=ups: haproxy.state_changes(i).count("UP") > n,
                10,
                f"haproxy to mark s{i} up again",
            )
            # The other server served alone meanwhile: had HAProxy marked it
            # down too, it had no server for a while and answered 503.
            also_down = down_reasons(haproxy, other)[other_downs:]
            assert not also_down, f"{mode}: haproxy marked s{other} down too: {also_down}"
        result = load.stop()
    finally:
        haproxy.stop()
    return result, problems


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_rolling_restarts_behind_haproxy_fail_no_request(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, worker_class: str
) -> None:
    """1. HAProxy over two servers, 16 keep-alive clients 2. each server gets
    SIGTERM and is started again, in turn (with graceful_gunicorn, then plain).

    Result: with graceful_gunicorn no request fails and HAProxy marks each
    server down before it stops; plain gunicorn's figures are reported.
    """
    graceful, problems = rolling_restarts(gunicorn, tmp_path, worker_class, graceful=True)
    plain, _ = rolling_restarts(gunicorn, tmp_path, worker_class, graceful=False)
    figures = {
        "worker_class": worker_class,
        "graceful": {"sent": graceful.sent, "failed": graceful.failed, **graceful.errors},
        "plain": {"sent": plain.sent, "failed": plain.failed, **plain.errors},
    }
    print("haproxy rolling restarts:", json.dumps(figures))
    assert problems == []
    assert graceful.sent > 1000, "the load must run through the restarts"
    assert (graceful.failed, dict(graceful.errors)) == (0, {})
