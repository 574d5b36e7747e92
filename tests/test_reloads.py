"""Reloads that never make a client wait for a worker to boot (the reload gate).

Real gunicorn masters and workers on 127.0.0.1, real SIGHUPs, an app that takes
seconds to import; each scenario runs on plain gunicorn too, with the same load.
"""

from __future__ import annotations

import re
import signal
import time
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
#: The scenario of the issue: the app imports for 3 s, two SIGHUPs 7 s apart.
BOOT_SECONDS = 3.0
BETWEEN_RELOADS = 7.0


def _booted(server: Gunicorn) -> list[int]:
    return server.worker_pids()


def _new_generation_serves(server: Gunicorn, booted_before: int) -> bool:
    """Whether only the workers booted after ``booted_before`` are left, and one answers."""
    new = set(_booted(server)[booted_before:])
    if len(new) < 2 or not running_children(server.pid) <= new:
        return False
    response = http_get(server.port, "/hello", 10)
    return response.ok and int(response.body) in new


def _reload_twice_under_load(server: Gunicorn) -> LoadResult:
    server.wait_ready(workers=2, path="/hello", timeout=30)
    load = Load(server.port, "/hello", connections=8, max_seconds=90, pause=0.01).start()
    wait_until(lambda: load.result.sent >= 50, 20, "the load to run")
    server.signal(signal.SIGHUP)
    time.sleep(BETWEEN_RELOADS)  # the scenario: the second reload comes 7 s later
    booted = len(_booted(server))
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(_booted(server)) >= booted + 2, 30, "the second reload's workers")
    wait_until(lambda: _new_generation_serves(server, booted), 40, "the second reload")
    return load.stop()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_reload_keeps_the_old_workers_serving_until_the_new_ones_are_ready(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. an app that imports for 3 s, 2 workers, 8 keep-alive clients 2. SIGHUP,
    and again 7 s later 3. until the second reload's workers serve.

    Result: graceful_gunicorn fails no request and none takes a second (the old
    workers serve while the new ones import); plain gunicorn's figures beside it
    (its clients wait for the import, and before 24 some requests fail).
    """
    env = {"BOOT_SECONDS": str(BOOT_SECONDS)}
    results = {}
    for side, config in (("plain", []), ("graceful", GRACEFUL)):
        server = gunicorn([*config, *worker_args(worker_class), SLOW_APP], env)
        results[side] = _reload_twice_under_load(server)
        if side == "graceful":
            log = graceful_log = server.log()
            assert len(re.findall(r"reload: 2 new worker\(s\) ready after", log)) == 2, log
            assert "reload_ready_timeout=30s; stopping" not in log
        server.stop()
    plain, graceful = results["plain"], results["graceful"]
    print(
        f"{worker_class} reload of a {BOOT_SECONDS:g} s boot: plain {plain.figures()}; "
        f"graceful {graceful.figures()}"
    )
    assert graceful.failed == 0, graceful.errors
    assert graceful.over_one_second == 0, f"{graceful.slow}\n{graceful_log}"
    assert graceful.sent >= plain.sent


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_reload_whose_app_cannot_load_leaves_the_old_workers_serving(
    gunicorn: Callable[..., Gunicorn], worker_class: str, tmp_path: Path
) -> None:
    """1. serve, with a load 2. break the app (its import raises) and SIGHUP
    3. fix it and SIGHUP again.

    Result: plain gunicorn halts ("App failed to load" or "Worker failed to
    boot"). graceful_gunicorn keeps the old workers serving, fails no request,
    logs the failure once (one traceback, one line of the master's), and the
    next SIGHUP with the fixed app reloads.
    """
    broken = tmp_path / "broken"
    env = {"BOOT_SECONDS": "0.3", "BROKEN_MARKER": str(broken)}

    plain = gunicorn([*worker_args(worker_class), SLOW_APP], env)
    plain.wait_ready(workers=2, path="/hello", timeout=30)
    broken.touch()
    plain.signal(signal.SIGHUP)
    plain_status = plain.wait_exit(40)
    broken.unlink()

    server = gunicorn([*GRACEFUL, *worker_args(worker_class), SLOW_APP], env)
    server.wait_ready(workers=2, path="/hello", timeout=30)
    old = running_children(server.pid)
    load = Load(server.port, "/hello", connections=4, max_seconds=90).start()
    wait_until(lambda: load.result.sent >= 20, 20, "the load to run")
    broken.touch()
    server.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in server.log(), 30, "the failed reload")
    wait_until(lambda: running_children(server.pid) == old, 30, "the new workers to be gone")
    served = http_get(server.port, "/hello", 10)
    broken.unlink()
    booted = len(_booted(server))
    server.signal(signal.SIGHUP)
    wait_until(lambda: _new_generation_serves(server, booted), 40, "the fixed reload")
    result = load.stop()
    log = server.log()

    print(f"{worker_class}: plain exited {plain_status}; graceful {result}")
    assert plain_status != 0
    assert served.ok and int(served.body) in old
    assert result.failed == 0, result.errors
    assert log.count("Traceback") == 1, log
    assert log.count("graceful_gunicorn: reload failed") == 1, log
    assert "Worker failed to boot" not in log and "App failed to load" not in log
    assert "reload: 2 new worker(s) ready after" in log


def test_new_workers_that_are_not_ready_in_time_do_not_hold_the_old_ones(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. reload_ready_timeout=1, an app that imports for 3 s 2. SIGHUP.

    Result: the old workers stop 1 s after the SIGHUP (with reason reload),
    with a warning that names the setting; the new workers then serve.
    """
    env = {"BOOT_SECONDS": "3", "GRACEFUL_RELOAD_READY_TIMEOUT": "1"}
    server = gunicorn([*GRACEFUL, *worker_args("sync"), SLOW_APP], env)
    server.wait_ready(workers=2, path="/hello", timeout=30)
    booted = len(_booted(server))
    server.signal(signal.SIGHUP)
    wait_until(lambda: "reload_ready_timeout=1s; stopping" in server.log(), 10, "the warning")
    assert not re.search(r"reload: \d+ new worker\(s\) ready after \d", server.log())
    wait_until(lambda: "shutdown started (reason reload" in server.log(), 10, "the old ones' stop")
    wait_until(lambda: _new_generation_serves(server, booted), 30, "the new workers")


def test_a_second_sighup_while_a_reload_fails_keeps_the_server_serving(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. break the app 2. SIGHUP twice, 0.2 s apart 3. fix it, SIGHUP.

    Result: the first reload's workers, made while its gate held, fail quietly
    although a second gate has replaced it: the master stays up (it halted, and
    left the old workers orphaned), the old workers serve, the fixed reload works.
    """
    broken = tmp_path / "broken"
    env = {"BOOT_SECONDS": "0.3", "BROKEN_MARKER": str(broken)}
    server = gunicorn([*GRACEFUL, *worker_args("sync"), SLOW_APP], env)
    server.wait_ready(workers=2, path="/hello", timeout=30)
    old = running_children(server.pid)
    broken.touch()
    server.signal(signal.SIGHUP)
    time.sleep(0.2)  # the scenario: a second SIGHUP while the first reload's workers boot
    server.signal(signal.SIGHUP)
    wait_until(lambda: server.log().count("reload failed") >= 1, 30, "a failed reload")
    wait_until(lambda: running_children(server.pid) == old, 30, "only the old workers")
    served = http_get(server.port, "/hello", 10)
    assert served.ok and int(served.body) in old, server.log()
    broken.unlink()
    booted = len(_booted(server))
    server.signal(signal.SIGHUP)
    wait_until(lambda: _new_generation_serves(server, booted), 40, "the fixed reload")
    assert "Worker failed to boot" not in server.log()


@pytest.mark.parametrize("side", ["plain", "graceful"])
def test_a_stop_while_the_new_workers_boot_is_read_at_once(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, side: str
) -> None:
    """1. a deploy makes the next import take 6 s 2. SIGHUP 3. SIGTERM once the
    new workers import.

    Result: with the gate holding, the master reads the SIGTERM at once (well
    before the 6 s import ends): gunicorn 24+ reads no signal while its reload
    waits for the old workers, and the gate ends that wait. Plain gunicorn reads
    it once its old workers have exited (seconds on a busy machine, at most its
    graceful_timeout). Every process exits before graceful_timeout.
    """
    seconds_file = tmp_path / "boot-seconds"
    env = {"BOOT_SECONDS_FILE": str(seconds_file)}
    config = GRACEFUL if side == "graceful" else []
    server = gunicorn([*config, *worker_args("sync"), "--graceful-timeout", "10", SLOW_APP], env)
    server.wait_ready(workers=2, path="/hello", timeout=30)
    seconds_file.write_text("6")
    booted = len(_booted(server))
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(_booted(server)) >= booted + 2, 20, "the new workers to fork")
    if side == "graceful":
        wait_until(lambda: "the old workers serve until" in server.log(), 10, "the gate")
    server.signal(signal.SIGTERM)
    read_within = 4 if side == "graceful" else 10  # plain: its reload's wait, at most
    wait_until(lambda: "Handling signal: term" in server.log(), read_within, "the SIGTERM read")
    assert server.wait_exit(10) == 0


def test_a_stop_during_a_failing_reload_counts_only_the_workers_that_served(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. break the app 2. SIGHUP 3. SIGTERM as soon as a new worker says it
    cannot load the app.

    Result: the summary counts the two old workers, stopped cleanly, and says
    that the reload's workers never loaded the app; none counts as killed.
    """
    broken = tmp_path / "broken"
    env = {"BOOT_SECONDS": "0.3", "BROKEN_MARKER": str(broken)}
    server = gunicorn([*GRACEFUL, *worker_args("sync"), SLOW_APP], env)
    server.wait_ready(workers=2, path="/hello", timeout=30)
    broken.touch()
    server.signal(signal.SIGHUP)
    wait_until(lambda: "cannot load the app" in server.log(), 30, "a new worker to fail")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    summary = re.findall(r"shutdown summary \(terminate, SIGTERM\): (.*?);", server.log())
    assert len(summary) == 1, server.log()
    assert re.fullmatch(
        r"2 of 2 worker\(s\) stopped cleanly, 0 killed"
        r"( \([12] of a failed reload never loaded the app\))?",
        summary[0],
    ), summary
