"""Real gunicorn processes for tests: start on a free port, log to a file, stop by PID."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Response:
    status: int | None
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def http_get(port: int, path: str, timeout: float = 60.0) -> Response:
    """One GET on a new connection; errors are returned, not raised."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return Response(response.status, response.read())
    except (OSError, http.client.HTTPException) as exc:
        return Response(None, error=f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


class Gunicorn:
    """One gunicorn master (and its workers), started in a new session."""

    def __init__(
        self,
        workdir: Path,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        port: int | None = None,
    ):
        self.workdir = workdir
        self.port = port or free_port()
        self.log_path = workdir / f"gunicorn-{self.port}-{time.monotonic_ns()}.log"
        self.events_path = workdir / "events.jsonl"
        self.release_dir = workdir / "release"
        self.release_dir.mkdir(exist_ok=True)
        self.args = list(args)
        self.graceful = any("graceful_gunicorn" in a for a in self.args)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "EVENTS_FILE": str(self.events_path),
            "RELEASE_DIR": str(self.release_dir),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._known_pids: set[int] = set()

    def start(self) -> Gunicorn:
        cmd = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{self.port}", *self.args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._known_pids.add(self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        pids = [int(p) for p in re.findall(r"Booting worker with pid: (\d+)", self.log())]
        self._known_pids.update(pids)
        return pids

    def wait_ready(self, workers: int = 1, path: str = "/hello") -> Gunicorn:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited early:\n{self.log()}")
            # A worker is ready once its signal handlers and app are in place:
            # a SIGTERM during gunicorn's own boot is lost (GUNICORN.md 3.9).
            booted = len(self.worker_pids())
            if self.graceful:
                booted = len(re.findall(r"graceful_gunicorn: worker \d+ ready with", self.log()))
            return booted >= workers and http_get(self.port, path, 2).ok

        wait_until(ready, BOOT_TIMEOUT, f"{workers} worker(s) to serve\n{self.log()}")
        return self

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"gunicorn did not exit within {timeout}s:\n{self.log()}"
            ) from None

    def release(self, key: str) -> None:
        (self.release_dir / key).touch()

    def events(self, event: str | None = None) -> list[dict[str, object]]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [e for e in found if event is None or e["event"] == event]

    def callbacks(self, phase: str | None = None) -> list[dict[str, object]]:
        return [e for e in self.events("callback") if phase is None or e["phase"] == phase]

    def stop(self) -> None:
        """Kill the master and every worker it ever had, by PID."""
        self.worker_pids()
        for pid in sorted(self._known_pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            self.process.wait(10)
