"""Every bad setting stops gunicorn at start-up: one line, exit 1, no worker forked.

The table enumerates each setting of SPEC section 5 (and shutdown_report_path)
with each kind of bad value, given once in a gunicorn config file and once in
the environment, then the combinations that cannot work. Each case starts a
real gunicorn master.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from graceful_gunicorn._core.settings import ENV_PREFIX

from .server import Gunicorn

APP = "tests.apps.events_app:app"

NUMERIC = ["shutdown_delay", "shutdown_callback_timeout", "quick_shutdown_timeout"]
SECONDS = "must be a number of seconds between 0 and 86400"

#: (what is wrong, value in a config file, the same in the environment)
BAD_NUMBERS: list[tuple[str, Any, str]] = [
    ("non-numeric", "abc", "abc"),
    ("negative", -1, "-1"),
    ("nan", math.nan, "nan"),
    ("infinite", math.inf, "inf"),
    ("too-large", 10**9, "1000000000"),
]


class Case(NamedTuple):
    """A bad configuration and the words its error line must contain."""

    config: dict[str, Any]
    env: dict[str, str]
    args: list[str]
    expected: list[str]
    #: gunicorn itself rejects a worker class it cannot import, before our
    #: hooks run: its line, with the import's traceback printed above it.
    by_gunicorn: bool = False


def _numeric_cases() -> dict[str, Case]:
    cases = {}
    for name in NUMERIC:
        env_name = ENV_PREFIX + name.upper()
        for kind, in_config, in_env in BAD_NUMBERS:
            cases[f"{name}-{kind}-config"] = Case(
                {name: in_config}, {}, [], [f"{name} {SECONDS}", f"got {in_config!r}"]
            )
            cases[f"{name}-{kind}-env"] = Case(
                {}, {env_name: in_env}, [], [f"{env_name} {SECONDS}", f"got {in_env!r}"]
            )
    return cases


def _other_cases(tmp: str) -> dict[str, Case]:
    url_path = "must be a URL path starting with '/'"
    missing_dir = f"{tmp}/no-such-directory/report.json"
    return {
        "readiness_path-relative-config": Case(
            {"readiness_path": "ready"}, {}, [], [f"readiness_path {url_path}", "got 'ready'"]
        ),
        "readiness_path-relative-env": Case(
            {}, {"GRACEFUL_READINESS_PATH": "ready"}, [], ["GRACEFUL_READINESS_PATH", url_path]
        ),
        "readiness_path-query-config": Case(
            {"readiness_path": "/ready?x=1"}, {}, [], ["readiness_path", url_path]
        ),
        "readiness_path-number-config": Case(
            {"readiness_path": 42}, {}, [], ["readiness_path", url_path, "got 42"]
        ),
        "shutdown_report_path-directory-config": Case(
            {"shutdown_report_path": f"{tmp}/"},
            {},
            [],
            ["shutdown_report_path must be the path of a file"],
        ),
        "shutdown_report_path-missing-directory-env": Case(
            {},
            {"GRACEFUL_SHUTDOWN_REPORT_PATH": missing_dir},
            [],
            ["shutdown_report_path", "no-such-directory", "does not exist"],
        ),
        "quick-timeout-exceeds-graceful-timeout": Case(
            {"shutdown_callback_timeout": 1},
            {"GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "8"},
            ["--graceful-timeout", "6"],
            ["quick_shutdown_timeout=8 does not fit in graceful_timeout=6"],
        ),
        "zero-graceful-timeout": Case(
            {"quick_shutdown_timeout": 1},
            {},
            ["--graceful-timeout", "0"],
            ["quick_shutdown_timeout=1 does not fit in graceful_timeout=0"],
        ),
        "app-callbacks-exceed-graceful-timeout": Case(
            {},
            {"MISBEHAVE": "hang_quick"},
            ["--preload", "--graceful-timeout", "12"],
            [
                "the timeout= of the on_shutdown and after_shutdown callbacks add up to 16s",
                "raise graceful_timeout or lower those timeouts",
            ],
        ),
        "raw-env-not-a-number": Case(
            {},
            {},
            ["-e", "GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT=abc"],
            ["GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT must be a number of seconds", "got 'abc'"],
        ),
        "unsupported-worker-class": Case(
            {}, {}, ["-k", "gevent_pywsgi"], ["worker_class 'gevent_pywsgi' is not supported"]
        ),
        "unknown-worker-class": Case(
            {},
            {},
            ["-k", "no_such_module.Worker"],
            ["Error: class uri 'no_such_module.Worker' invalid or not found"],
            by_gunicorn=True,
        ),
    }


CASE_IDS = [*_numeric_cases(), *_other_cases("/tmp")]


def _case(case_id: str, tmp_path: Path) -> Case:
    return {**_numeric_cases(), **_other_cases(str(tmp_path))}[case_id]


def _config_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    lines = ["import math", "from graceful_gunicorn.conf import *", ""]
    for name, value in values.items():
        literal = repr(value)
        if isinstance(value, float) and not math.isfinite(value):
            literal = f"float({str(value)!r})"
        lines.append(f"{name} = {literal}")
    path = tmp_path / "bad.conf.py"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_configuration_stops_gunicorn_before_any_fork(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, case_id: str
) -> None:
    """1. gunicorn starts with one bad setting or impossible combination.

    Result: exit status 1, exactly one line starting with "Error:" that names
    the setting, the value and what is allowed, and no worker booted.
    """
    case = _case(case_id, tmp_path)
    config = _config_file(tmp_path, case.config)
    server = gunicorn(["-c", str(config), *case.args, APP], case.env)
    assert server.wait_exit(20) == 1
    log = server.log()
    errors = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, log
    for words in case.expected:
        assert words in errors[0]
    assert "Booting worker" not in log
    if not case.by_gunicorn:
        assert errors[0].startswith("Error: graceful_gunicorn: "), errors[0]
        assert "Traceback" not in log
