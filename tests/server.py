"""Real gunicorn processes for tests, built on graceful_gunicorn.testing.GunicornServer."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from graceful_gunicorn.testing.server import BOOT_TIMEOUT, GunicornServer, wait_until

__all__ = ["BOOT_TIMEOUT", "REPO", "Gunicorn", "Response", "free_port", "http_get", "wait_until"]

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port that is free now (for servers that must be restarted on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class Gunicorn(GunicornServer):
    """A gunicorn master running a test app that records its events.

    The app (``tests.apps.events_app`` and the example app) writes each request
    and callback to ``events.jsonl`` in ``workdir``; ``release(key)`` ends a
    request held at ``/hold/<key>`` or ``/stream/<key>``.
    """

    def __init__(
        self,
        workdir: Path,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        port: int | None = None,
        command: Sequence[str] | None = None,
    ):
        self.workdir = workdir
        self.events_path = workdir / "events.jsonl"
        self.release_dir = workdir / "release"
        self.release_dir.mkdir(exist_ok=True)
        self.graceful = any("graceful_gunicorn" in a for a in args)
        super().__init__(
            args,
            env={
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "EVENTS_FILE": str(self.events_path),
                "RELEASE_DIR": str(self.release_dir),
                **(env or {}),
            },
            port=port or 0,
            cwd=workdir,
            log_path=workdir / f"gunicorn-{time.monotonic_ns()}.log",
            command=command,
        )

    def wait_ready(
        self, workers: int = 1, path: str = "/hello", timeout: float = BOOT_TIMEOUT
    ) -> Gunicorn:
        super().wait_ready(workers, path, timeout)
        return self

    def graceful_workers_ready(self) -> int:
        """How many graceful workers logged that they are ready, so far."""
        return len(re.findall(r"graceful_gunicorn: worker \d+ ready with", self.log()))

    def release(self, key: str) -> None:
        (self.release_dir / key).touch()

    def events(self, event: str | None = None) -> list[dict[str, object]]:
        if not self.events_path.exists():
            return []
        text = self.events_path.read_text()
        # Only whole lines: one still being written (a reader can see part of an
        # append) is read at the next look.
        lines = text[: text.rfind("\n") + 1].splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [e for e in found if event is None or e["event"] == event]

    def callbacks(self, phase: str | None = None) -> list[dict[str, object]]:
        return [e for e in self.events("callback") if phase is None or e["phase"] == phase]


def process_gone(pid: int) -> bool:
    """Whether ``pid`` ended (a zombie nobody reaped yet counts as ended, and holds no
    file or lock; Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # reaped before, or between open and read
        return True


def print_figure(what: str, seconds: float) -> None:
    """Print a measured time for the record (shown with ``pytest -n 0 -s``)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    print(f"[figure] {test}: {what} {seconds:.2f}s")
