"""gunicorn's binary upgrade under load: ``USR2``, then ``TERM`` to the old master.

``USR2`` makes the master start a new master beside it, on the same listening
sockets, with workers of its own; ``TERM`` then stops the old one (``WINCH``
first stops its workers, but only for a daemonized master: gunicorn ignores it
otherwise). Real masters and workers on 127.0.0.1, plain gunicorn beside.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import WORKER_CLASSES
from .load import Load, LoadResult
from .scenarios import GRACEFUL, running_children, worker_args
from .server import Gunicorn, http_get, process_gone, wait_until

#: Load scenarios run one at a time (pyproject.toml, addopts).
pytestmark = pytest.mark.xdist_group("load")

SLOW_APP = "tests.apps.slow_boot_app:app"
#: gunicorn's console script beside this Python (see GunicornServer's ``command``).
CONSOLE_SCRIPT = [str(Path(sys.executable).with_name("gunicorn"))]
_STARTING = re.compile(r"\[(\d+)\] \[INFO\] Starting gunicorn")


def _new_master(server: Gunicorn) -> int | None:
    masters = [int(pid) for pid in _STARTING.findall(server.log())]
    return masters[1] if len(masters) > 1 else None


def _answered_by(server: Gunicorn, pids: set[int]) -> bool:
    response = http_get(server.port, "/hello", 5)
    return response.ok and int(response.body) in pids


def _upgrade_under_load(server: Gunicorn) -> tuple[LoadResult, int, int]:
    """Upgrade, stop the old master, serve from the new one; return what the
    clients saw and the two masters' pids."""
    server.wait_ready(workers=2, path="/hello", timeout=30)
    load = Load(server.port, "/hello", connections=8, max_seconds=90, pause=0.01).start()
    wait_until(lambda: load.result.sent >= 50, 20, "the load to run")
    server.signal(signal.SIGUSR2)
    wait_until(lambda: _new_master(server) is not None, 20, "the new master")
    new = _new_master(server)
    assert new is not None
    wait_until(
        lambda: len(running_children(new) - {server.pid}) >= 2, 30, "the new master's workers"
    )
    new_workers = running_children(new)
    wait_until(lambda: _answered_by(server, new_workers), 30, "a new worker to answer")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    sent = load.result.sent
    wait_until(lambda: load.result.sent >= sent + 100, 20, "the new master to serve alone")
    result = load.stop()
    old = server.pid
    os.kill(new, signal.SIGTERM)
    wait_until(lambda: process_gone(new), 30, "the new master to stop")
    return result, old, new


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_binary_upgrade_under_load_fails_no_request(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. 2 workers, 8 keep-alive clients 2. USR2 3. once a new worker answers,
    TERM to the old master 4. the new master serves alone, then gets TERM.

    Result: graceful_gunicorn fails no request; each master stops its own
    workers (reason terminate) and logs its own summary; plain gunicorn's
    figures beside it.
    """
    env = {"BOOT_SECONDS": "1"}
    results = {}
    for side, config in (("plain", []), ("graceful", GRACEFUL)):
        args = [*config, *worker_args(worker_class), SLOW_APP]
        server = gunicorn(args, env, command=CONSOLE_SCRIPT)
        result, old, new = _upgrade_under_load(server)
        results[side] = result
        if side == "graceful":
            log = server.log()
            for master in (old, new):
                summary = (
                    rf"\[{master}\] \[INFO\] graceful_gunicorn: shutdown summary "
                    r"\(terminate, SIGTERM\): 2 of 2 worker\(s\) stopped cleanly"
                )
                assert re.search(summary, log), f"{master}\n{log}"
            assert "reason terminate" in log and "reason reload" not in log
    plain, graceful = results["plain"], results["graceful"]
    print(f"{worker_class} binary upgrade: plain {plain.figures()}; graceful {graceful.figures()}")
    assert graceful.failed == 0, graceful.errors
