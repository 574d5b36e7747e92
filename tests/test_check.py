"""``python -m graceful_gunicorn check``: the timeline, and its exit status."""

from __future__ import annotations

import os
import subprocess
import sys

from .server import REPO

CONFIG = ["-c", "example_app/gunicorn.conf.py"]


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graceful_gunicorn", "check", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_plan_that_fits_prints_the_timeline_and_exits_0() -> None:
    """The example app's config, a 10 s delay and a 45 s grace period fit."""
    result = check(*CONFIG, "--grace-period", "45", env={"GRACEFUL_SHUTDOWN_DELAY": "10"})
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "0.0s  SIGTERM: readiness answers 503; still serving for shutdown_delay=10s" in lines
    assert any(line.startswith("10.0s  graceful stop") for line in lines)
    # example_app: on_shutdown(timeout=10) keeps 10 s; after_shutdown (no timeout=) gets what
    # is left of half the 29 s budget, 4.5 s of its 5 s default: the drain keeps 14.5 s
    assert "24.5s  drain deadline: on_shutdown, after_shutdown (they keep 14.50s)" in lines
    assert (
        "plan (terminate): budget 29.00s (graceful_timeout=30, margin 1s): drain until 14.50s; "
        "callbacks keep 14.50s: 1 with timeout= 10.00s, 1 without 4.50s each"
    ) in lines
    assert (
        "40.0s  master's deadline (graceful_timeout=30s): workers still alive are killed" in lines
    )
    assert "45.0s  platform grace period: 5s to spare" in lines


def test_a_grace_period_too_short_exits_1() -> None:
    assert check(*CONFIG, "--grace-period", "35").returncode == 0  # 30 s fit in 35
    result = check(*CONFIG, "--grace-period", "35", env={"GRACEFUL_SHUTDOWN_DELAY": "10"})
    assert result.returncode == 1
    assert "platform grace period: TOO SHORT" in result.stdout
    assert "grace period 35s is shorter than shutdown_delay + graceful_timeout = 40s" in (
        result.stderr
    )


def test_explicit_timeouts_longer_than_the_budget_exit_1() -> None:
    """The example app's on_shutdown(timeout=10) fits in 12 s (11 s after the margin), not in 10."""
    fits = check(*CONFIG, "--graceful-timeout", "12")
    assert fits.returncode == 0, fits.stderr
    # the callback without timeout= keeps nothing: 10 s are more than half of 11 s
    assert "drain until 1.00s; callbacks keep 10.00s: 1 with timeout= 10.00s, 1 without 0.00s" in (
        fits.stdout
    )
    result = check(*CONFIG, "--graceful-timeout", "10")
    assert result.returncode == 1
    assert (
        "the timeout= of the on_shutdown and after_shutdown callbacks add up to 10s (reason "
        "terminate), more than the 9s that graceful_timeout=10 leaves after its 1s safety "
        "margin: raise graceful_timeout or lower those timeouts"
    ) in result.stderr


def test_a_bad_grace_period_exits_1_naming_it() -> None:
    for value in ("nan", "inf", "-1"):
        result = check(*CONFIG, "--grace-period", value)
        assert result.returncode == 1, value
        assert f"--grace-period must be a number of seconds >= 0, got {float(value)!r}" in (
            result.stderr
        )


def test_a_bad_setting_exits_1_naming_it() -> None:
    result = check(
        "-c",
        "python:graceful_gunicorn.conf",
        "example_app.app:app",
        env={"GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "abc"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # gunicorn 20.1 adds a DeprecationWarning of its own (pkg_resources) to stderr
    ours = [line for line in result.stderr.splitlines() if "graceful_gunicorn" in line]
    assert ours == [
        "graceful_gunicorn check: GRACEFUL_QUICK_SHUTDOWN_TIMEOUT must be a number of seconds "
        "between 0 and 86400, got 'abc'"
    ]


def test_without_an_app_the_callback_budget_is_unknown() -> None:
    result = check("-c", "python:graceful_gunicorn.conf")
    assert result.returncode == 0, result.stderr
    assert "budget unknown: name the app to count its callbacks" in result.stdout
