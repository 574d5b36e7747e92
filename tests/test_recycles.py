"""Recycles (``max_requests``) that never leave the server a worker short.

Real gunicorn masters and workers on 127.0.0.1, an app that takes seconds to
import, a load that makes every worker recycle twice; each scenario runs on
plain gunicorn too, with the same load.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import WORKER_CLASSES
from .load import Load, LoadResult
from .scenarios import GRACEFUL, running_children, worker_args
from .server import Gunicorn, http_get, wait_until

#: Load scenarios run one at a time (pyproject.toml, addopts).
pytestmark = pytest.mark.xdist_group("load")

SLOW_APP = "tests.apps.slow_boot_app:app"
BOOT_SECONDS = 3.0
#: Each worker's share of the paced load below: about a second of it.
MAX_REQUESTS = 500
#: Each client waits this long after a response (a paced load: see Load).
PAUSE = 0.01
#: The two first workers and their replacements recycle: every slot twice.
RECYCLES = 4


#: The master forks a worker beside those at max_requests; they serve until it is ready.
_FORKED = re.compile(r"worker (\d+) forked beside \d+ worker\(s\) at max_requests")
_WAITING = re.compile(r"worker (\d+) serves on until the master has its replacement")


class _MostWorkers:
    """The most worker processes the master had at once, sampled every 50 ms (printed:
    with recycles close together, a replacement may recycle while its own
    recycler still drains, each with its replacement)."""

    def __init__(self, server: Gunicorn) -> None:
        self.server = server
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.most = max(self.most, len(running_children(self.server.pid)))
            except OSError:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.most


def _recycled_twice(server: Gunicorn) -> bool:
    """Whether the workers booted after the fourth recycle are all that is left."""
    booted = server.worker_pids()
    if len(booted) < 2 + RECYCLES:
        return False
    newest = set(booted[RECYCLES:])
    if not running_children(server.pid) <= newest:
        return False
    return http_get(server.port, "/hello", 10).ok


def _recycle_under_load(server: Gunicorn) -> tuple[LoadResult, int]:
    server.wait_ready(workers=2, path="/hello", timeout=30)
    most = _MostWorkers(server)
    load = Load(server.port, "/hello", connections=8, max_seconds=150, pause=PAUSE).start()
    wait_until(lambda: _recycled_twice(server), 120, "every worker to recycle twice")
    return load.stop(), most.stop()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_recycling_worker_serves_until_its_replacement_is_ready(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. an app that imports for 3 s, 2 workers, max_requests without jitter,
    8 keep-alive clients 2. until every worker recycled twice.

    Result: graceful_gunicorn fails no request and none takes a second: a worker
    at max_requests serves on until its replacement has loaded the app, with one
    extra worker each, never more. Plain gunicorn's figures
    beside it (both workers reach the limit together and the server has none
    for the import).
    """
    env = {"BOOT_SECONDS": str(BOOT_SECONDS)}
    args = [
        *worker_args(worker_class),
        "--max-requests",
        str(MAX_REQUESTS),
        "--max-requests-jitter",
        "0",
        SLOW_APP,
    ]
    results: dict[str, tuple[LoadResult, int]] = {}
    for side, config in (("plain", []), ("graceful", GRACEFUL)):
        server = gunicorn([*config, *args], env)
        results[side] = _recycle_under_load(server)
        if side == "graceful":
            log = server.log()
            assert len(_WAITING.findall(log)) >= RECYCLES, log
            assert "not ready after recycle_ready_timeout" not in log
            assert log.count("shutdown started (reason recycle") >= RECYCLES, log
        server.stop()
        if side == "graceful":
            # One extra worker per recycling worker, never more: every worker booted
            # is one of the first two or the replacement of one recycle.
            booted = server.worker_pids()
            replacements = [int(pid) for pid in _FORKED.findall(server.log())]
            recyclers = {int(pid) for pid in _WAITING.findall(server.log())}
            assert sorted(booted[2:]) == sorted(replacements), server.log()
            assert len(replacements) <= len(recyclers)
    (plain, plain_most), (graceful, graceful_most) = results["plain"], results["graceful"]
    print(
        f"{worker_class} recycles of a {BOOT_SECONDS:g} s boot: plain {plain.figures()}, at most "
        f"{plain_most} workers; graceful {graceful.figures()}, at most {graceful_most} workers"
    )
    assert graceful.failed == 0, graceful.errors
    assert graceful.over_one_second == 0, f"{graceful.slow}\n{log}"


def test_a_replacement_that_cannot_boot_stops_the_server_as_in_gunicorn(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. one worker, max_requests 20, graceful_timeout 20 2. break the app (its
    import raises) 3. requests until the worker reaches max_requests.

    Result: its replacement cannot boot, and gunicorn halts the server, as it
    does without graceful_gunicorn; the worker that waited for its replacement
    runs its sequence at once (gunicorn's halt signals every worker: nothing
    holds that SIGTERM), well before graceful_timeout.
    """
    broken = tmp_path / "broken"
    env = {"BROKEN_MARKER": str(broken)}
    args = [*worker_args("sync", workers=1), "--max-requests", "20", "--graceful-timeout", "20"]
    server = gunicorn([*GRACEFUL, *args, SLOW_APP], env)
    server.wait_ready(workers=1, path="/hello", timeout=30)
    broken.touch()
    for _ in range(25):
        if not http_get(server.port, "/hello", 5).ok:
            break
    status = server.wait_exit(15)
    log = server.log()
    assert status != 0 and "Worker failed to boot" in log, log
    assert "shutdown started" in log, log
