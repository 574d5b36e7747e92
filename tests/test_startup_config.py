"""Start-up: settings checked before any worker is forked, user hooks chained with ours."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .server import Gunicorn, http_get, wait_until

APP = "tests.apps.events_app:app"
GRACEFUL = ["-c", "python:graceful_gunicorn.conf"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            [],
            {"GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT": "abc"},
            "Error: graceful_gunicorn: GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT must be a number of "
            "seconds between 0 and 86400, got 'abc'",
        ),
        (
            ["--graceful-timeout", "3"],
            {"GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "5"},
            "Error: graceful_gunicorn: quick_shutdown_timeout=5 does not fit in graceful_timeout=3",
        ),
        (
            [],
            {"GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "-1"},
            "Error: graceful_gunicorn: GRACEFUL_QUICK_SHUTDOWN_TIMEOUT must be a number of seconds",
        ),
        (
            ["-k", "gevent_pywsgi"],
            {},
            "Error: graceful_gunicorn: worker_class 'gevent_pywsgi' is not supported",
        ),
        (
            ["--preload", "--graceful-timeout", "12"],
            {"MISBEHAVE": "hang_quick"},
            "Error: graceful_gunicorn: the timeout= of the on_shutdown and after_shutdown "
            "callbacks add up to 16s (reason terminate)",
        ),
    ],
    ids=["non-numeric", "quick-exceeds-budget", "negative", "unknown-worker", "preload-budget"],
)
def test_bad_configuration_fails_before_any_worker_is_forked(
    gunicorn: Callable[..., Gunicorn], args: list[str], env: dict[str, str], message: str
) -> None:
    """A setting that cannot work stops gunicorn with one line naming it, exit 1, no fork."""
    server = gunicorn([*GRACEFUL, *args, APP], env)
    assert server.wait_exit(20) == 1
    log = server.log()
    assert message in log
    error_lines = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert "Booting worker" not in log


def test_user_config_file_keeps_its_hooks_and_settings(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """A gunicorn.conf.py that imports ours and defines its own hooks and settings: both run.

    1. the user's file sets workers, quick_shutdown_timeout and defines
       when_ready and worker_exit 2. SIGTERM. Result: the user's hooks ran,
    graceful_gunicorn's worker class and callbacks ran too.
    """
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(
        "from graceful_gunicorn.conf import *\n"
        "import os\n"
        "workers = 2\n"
        "worker_class = 'sync'\n"
        "quick_shutdown_timeout = 1.5\n"
        "def when_ready(server):\n"
        "    server.log.info('USER when_ready')\n"
        "def worker_exit(server, worker):\n"
        "    server.log.info('USER worker_exit %s', os.getpid())\n"
    )
    server = gunicorn([APP])  # ./gunicorn.conf.py in the working directory, loaded by gunicorn
    server.wait_ready(workers=2)
    server.signal(__import__("signal").SIGTERM)
    assert server.wait_exit(30) == 0
    log = server.log()
    assert "USER when_ready" in log
    assert "graceful_gunicorn: graceful shutdown on" in log
    assert "Using worker: graceful_gunicorn.workers.GracefulSync" in log
    assert log.count("USER worker_exit") == 2
    assert len(server.callbacks("after_shutdown")) == 2


def test_reload_with_a_bad_value_keeps_the_previous_settings(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. a config file with shutdown_callback_timeout = 3 2. the file is edited
    to a bad value 3. SIGHUP 4. SIGTERM.

    Result: the reload logs the error and goes on: the new worker is a graceful
    one with the previous settings, serves, and runs its callbacks on SIGTERM.
    """
    config = tmp_path / "reloaded.conf.py"
    config.write_text("from graceful_gunicorn.conf import *\nshutdown_callback_timeout = 3\n")
    server = gunicorn(["-c", str(config), "-w", "1", APP])
    server.wait_ready(workers=1)
    config.write_text("from graceful_gunicorn.conf import *\nshutdown_callback_timeout = 'abc'\n")
    server.signal(signal.SIGHUP)
    wait_until(lambda: server.graceful_workers_ready() == 2, 30, "the reloaded worker")
    # The old worker stops once the new one is ready (the reload gate), not at once.
    wait_until(lambda: len(server.callbacks("after_shutdown")) >= 1, 30, "the old worker's stop")
    log = server.log()
    assert "shutdown_callback_timeout must be a number of seconds" in log
    assert "the previous settings stay in force" in log
    assert http_get(server.port, "/hello").status == 200
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    reasons = [(e["name"], e["reason"]) for e in server.callbacks("on_shutdown")]
    assert reasons == [("o2", "reload"), ("o1", "reload"), ("o2", "terminate"), ("o1", "terminate")]


def test_a_reload_keeps_graceful_workers_when_the_users_hooks_shadow_ours(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. a config file that imports ours and defines its own nworkers_changed and
    on_reload (not calling ours: the two hooks gunicorn calls on a reload) 2. SIGHUP.

    Result: the reloaded worker is a graceful one too, and both user hooks ran.
    """
    config = tmp_path / "shadowing.conf.py"
    config.write_text(
        "from graceful_gunicorn.conf import *\n"
        "def nworkers_changed(server, new_value, old_value):\n"
        "    server.log.info('USER nworkers_changed')\n"
        "def on_reload(server):\n"
        "    server.log.info('USER on_reload')\n"
    )
    server = gunicorn(["-c", str(config), "-w", "1", APP])
    server.wait_ready(workers=1)
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(server.worker_pids()) == 2, 30, "the reloaded worker to boot")
    wait_until(
        lambda: server.graceful_workers_ready() == 2, 30, "the reloaded worker to be a graceful one"
    )
    log = server.log()
    assert "USER on_reload" in log and "USER nworkers_changed" in log
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
