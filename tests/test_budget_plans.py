"""The plan ``check`` prints is the plan a real worker stops with (SPEC section 5).

Each configuration runs ``python -m graceful_gunicorn check`` and a real
gunicorn master with the same arguments and environment (one sync worker,
``tests.apps.budget_app``); after a ``SIGTERM`` the worker's "shutdown
started" line must carry the very plan ``check`` printed. A configuration
that ``check`` rejects must stop the server at start-up with the same line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .server import REPO, Gunicorn, http_get, wait_until

APP = "tests.apps.budget_app:app"
GRACEFUL = ["-c", "python:graceful_gunicorn.conf"]


@dataclass(frozen=True)
class Case:
    """One configuration: gunicorn's graceful_timeout, the app's callbacks, the environment."""

    id: str
    callbacks: str = ""
    graceful_timeout: float | None = None  # None: gunicorn's default, 30 s
    env: dict[str, str] = field(default_factory=dict)
    preload: bool = False
    extra: tuple[str, ...] = ()
    workers: int = 1

    def args(self) -> list[str]:
        args = [*GRACEFUL, "-w", str(self.workers), *self.extra]
        if self.graceful_timeout is not None:
            args += ["--graceful-timeout", f"{self.graceful_timeout:g}"]
        if self.preload:
            args.append("--preload")
        return [*args, APP]

    def environ(self) -> dict[str, str]:
        return {"BUDGET_CALLBACKS": self.callbacks, **self.env}


FITS = [
    Case("defaults-no-callbacks"),
    Case("defaults-six-without-timeout", "before on on on on after"),
    Case("issue-app-at-15", "before on on on:2 after", 15),
    Case("issue-app-at-15-preload", "before on on on:2 after", 15, preload=True),
    Case("small-timeout-no-callbacks", "", 5),
    Case("tiny-timeout-no-callbacks", "", 1),
    Case("small-timeout-two-without", "on on", 5),
    Case("tiny-timeout-three-without", "on on on", 3),
    Case("example-app", "on:10 after"),
    Case("example-app-at-12", "on:10 after", 12),
    Case("twelve-without-share-half", " ".join(["on"] * 12)),
    Case("explicit-over-half", "on:20 on"),
    Case("explicit-fill-the-budget", "on:14.5 on:14.5"),
    Case("delay", "on on", env={"GRACEFUL_SHUTDOWN_DELAY": "0.5"}),
    Case("reasons-filter", "on:3:terminate on on:-:reload+recycle"),
    Case("reload-only", "on:-:reload after"),
    Case("setting-given", "on on on", env={"GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT": "1"}),
    Case(
        "setting-given-caps-share",
        "on on after after",
        20,
        {"GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT": "10"},
    ),
    Case("lifecycle-own-timeout", "on on", env={"BUDGET_CALLBACK_TIMEOUT": "8"}),
    Case(
        "setting-beats-lifecycle",
        "on on",
        env={"BUDGET_CALLBACK_TIMEOUT": "8", "GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT": "2"},
    ),
    Case("all-phases-explicit", "before:3 on:2 after:2", 10),
    Case("long-timeout", "on:30 after:20", 60),
    Case("two-seconds", "on:1", 2),
    Case("decimal-timeouts-fit-exactly", "on:2.7 on:5.4", 9),
    Case("raw-env-setting", "on on", extra=("-e", "GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT=1")),
]

REJECTED = [
    Case("explicit-over-budget", "on:10 after", 10),
    Case("explicit-sum-over-budget", "on:20 on:10"),
    Case("explicit-over-budget-preload", "on:10", 10, preload=True),
    Case("zero-graceful-timeout-with-a-timeout", "on:1", 0),
    Case("explicit-over-budget-three-workers", "on:3 on:3", 5, workers=3),
]

_PLAN_LINE = re.compile(r"^\s*plan \(terminate\): (.*)$", re.MULTILINE)
_WORKER_PLAN = re.compile(
    r"graceful_gunicorn: shutdown started \(reason terminate.*; plan: (.*)$", re.MULTILINE
)


def check(case: Case) -> subprocess.CompletedProcess[str]:
    gunicorn_args = [a for a in case.args() if a != "--preload"]
    return subprocess.run(
        [sys.executable, "-m", "graceful_gunicorn", "check", *gunicorn_args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **case.environ()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("case", FITS, ids=[c.id for c in FITS])
def test_the_worker_stops_with_the_plan_check_printed(
    gunicorn: Callable[..., Gunicorn], case: Case
) -> None:
    """1. check prints the plan 2. a real server with the same settings boots 3. SIGTERM.

    Result: check exits 0, the worker booted without an error and logged the same plan.
    """
    result = check(case)
    assert result.returncode == 0, result.stderr
    planned = _PLAN_LINE.findall(result.stdout)
    assert len(planned) == 1, result.stdout

    server = gunicorn(case.args(), case.environ())
    server.wait_ready(workers=1)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(60) == 0
    log = server.log()
    assert " [ERROR] " not in log, log
    assert _WORKER_PLAN.findall(log) == planned, log


@pytest.mark.parametrize("case", REJECTED, ids=[c.id for c in REJECTED])
def test_what_check_rejects_does_not_start(gunicorn: Callable[..., Gunicorn], case: Case) -> None:
    """1. check rejects the plan 2. a real server with the same settings is started.

    Result: check exits 1; the server exits non-zero before serving, with the
    same problem in one line (from the master with --preload, else from the
    first worker, which exits with gunicorn's boot-error code).
    """
    result = check(case)
    assert result.returncode == 1, result.stdout
    (problem,) = [
        line.split("does not fit: ", 1)[1]
        for line in result.stderr.splitlines()
        if "does not fit: " in line
    ]

    server = gunicorn(case.args(), case.environ())
    status = server.wait_exit(60)
    log = server.log()
    if case.preload:
        assert status == 1, log
        assert f"Error: graceful_gunicorn: {problem}" in log.splitlines()
    else:
        assert status == 3, log  # gunicorn's WORKER_BOOT_ERROR: "Worker failed to boot."
        ours = [line for line in log.splitlines() if problem in line]
        assert len(ours) == 1 and "[ERROR] graceful_gunicorn: " in ours[0], log
        assert "Reason: Worker failed to boot." in log
        assert "Traceback" not in log


@pytest.mark.parametrize("config", ["ours", "worker-class-only"])
def test_a_reload_that_brings_timeouts_too_long_keeps_serving_and_draining(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, config: str
) -> None:
    """1. a config file with graceful_timeout = 30 and an on_shutdown(timeout=10)
    (with graceful_gunicorn.conf, or only its worker class named) 2. the file is
    edited to graceful_timeout = 5 3. SIGHUP 4. a 1.5 s request 5. SIGTERM.

    Result: the new worker logs the problem in one line and serves anyway (a bad
    reload never takes a serving server down), keeping half of its budget for the
    drain: the request completes, as on plain gunicorn; the master exits 0.
    """
    head = {
        "ours": "from graceful_gunicorn.conf import *\n",
        "worker-class-only": "worker_class = 'graceful_gunicorn.workers.GracefulSync'\n",
    }[config]
    path = tmp_path / "reloaded.conf.py"
    path.write_text(head + "graceful_timeout = 30\n")
    server = gunicorn(["-c", str(path), "-w", "1", APP], {"BUDGET_CALLBACKS": "on:10"})
    server.wait_ready(workers=1)
    path.write_text(head + "graceful_timeout = 5\n")
    server.signal(signal.SIGHUP)
    wait_until(lambda: server.graceful_workers_ready() == 2, 30, "the reloaded worker")
    log = server.log()
    # Not gunicorn's "Worker (pid:N) was sent SIGTERM!": its loop resends SIGTERM
    # to an old worker on each turn until it reaps it (arbiter.py manage_workers),
    # and one that lands as the worker's interpreter ends, once CPython has put
    # back the default handlers, ends it by the signal (plain gunicorn too).
    errors = [line for line in log.splitlines() if "[ERROR] graceful_gunicorn" in line]
    assert len(errors) == 1, log
    assert "Traceback" not in log, log
    assert "add up to 10s (reason terminate), more than the 4.5s" in errors[0]
    assert "this worker serves anyway" in errors[0]
    results: list[int | None] = []
    slow = threading.Thread(
        target=lambda: results.append(http_get(server.port, "/sleep/1.5").status)
    )
    slow.start()
    wait_until((tmp_path / "sleeping").exists, 10, "the request in the app")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    slow.join(10)
    assert results == [200], server.log()
