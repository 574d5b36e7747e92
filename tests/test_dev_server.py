"""Under ``flask run`` the callbacks run once when the development server stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .server import REPO, free_port, http_get, wait_until


def flask_run(tmp_path: Path, *options: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    events = tmp_path / "events.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "EVENTS_FILE": str(events),
        "RELEASE_DIR": str(tmp_path),
    }
    env.pop("WERKZEUG_RUN_MAIN", None)
    command = [sys.executable, "-m", "flask", "--app", "tests.apps.events_app", "run"]
    process = subprocess.Popen(
        [*command, "--port", str(port), *options],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # A test run started in the background ignores SIGINT, and so would
        # flask run: Ctrl+C must reach it as it does in a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return process, port, events


@pytest.mark.parametrize("reload", [False, True], ids=["no-reload", "reload"])
def test_ctrl_c_runs_the_callbacks_once(tmp_path: Path, reload: bool) -> None:
    """1. flask run (with or without the reloader) 2. one request 3. Ctrl+C
    (SIGINT to the process group).

    Result: on_shutdown and after_shutdown ran once, in the serving process,
    with reason "quick"; the reloader's parent ran none.
    """
    process, port, events = flask_run(tmp_path, "--reload" if reload else "--no-reload")
    try:
        wait_until(lambda: http_get(port, "/hello", 2).ok, 30, "flask run to serve")
        os.killpg(process.pid, signal.SIGINT)
        process.wait(20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    recorded = (
        [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    )
    callbacks = [e for e in recorded if e["event"] == "callback"]
    assert [e["name"] for e in callbacks] == ["o2", "o1", "a1"]
    assert {e["reason"] for e in callbacks} == {"quick"}
    assert len({e["pid"] for e in callbacks}) == 1
    if reload:
        assert callbacks[0]["pid"] != process.pid, "the reloader's parent runs no callback"
