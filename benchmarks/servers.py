"""gunicorn masters for the benchmarks: 127.0.0.1, a free port, stopped by PID.

::

    with Server(workdir, "sync", graceful=True) as server:
        server.wait_ready()
        ...                      # load it, signal it
    # the master and every worker it had are gone here

A ``plain`` server serves ``benchmarks.apps.flask_app:plain`` with gunicorn's
own settings; a ``graceful`` one serves ``...:graceful`` (``GracefulShutdown(app)``)
with ``-c python:graceful_gunicorn.conf``. Both log to a file in ``workdir``
(a pipe nobody reads would block gunicorn).
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from graceful_gunicorn.testing import GunicornServer, wait_until

REPO = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 30.0

#: gunicorn arguments of each worker class (one worker: the load generator needs the other core).
WORKER_ARGS: dict[str, list[str]] = {
    "sync": ["-k", "sync"],
    "gthread": ["-k", "gthread", "--threads", "4"],
    "gevent": ["-k", "gevent", "--worker-connections", "1000"],
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a new connection: status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_exit(pid: int, timeout: float) -> float | None:
    """Wait for ``pid`` (any process) to exit; return :func:`time.monotonic` then, or ``None``.

    A pidfd becomes readable the moment the process exits, so the time is
    exact, with no polling interval.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return time.monotonic()
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return time.monotonic() if readable else None
    finally:
        os.close(fd)


class Server(GunicornServer):
    """One gunicorn master with one worker, serving a variant of the benchmark app.

    The shipped :class:`GunicornServer`, with the benchmarks' arguments; it
    logs at ``warning`` (no boot lines), so readiness is a ``/pid`` answer and
    the workers are the master's children.
    """

    def __init__(
        self,
        workdir: Path,
        worker_class: str,
        *,
        graceful: bool,
        app: str | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.worker_class = worker_class
        self.graceful = graceful
        port = free_port()
        variant = app or ("graceful" if graceful else "plain")
        super().__init__(
            [
                "-w",
                "1",
                *WORKER_ARGS[worker_class],
                "--graceful-timeout",
                "10",
                "--log-level",
                "warning",
                *(["-c", "python:graceful_gunicorn.conf"] if graceful else []),
                *(extra_args or []),
                f"benchmarks.apps.flask_app:{variant}",
            ],
            env={
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
                ),
                "BENCH_DIR": str(workdir),
                **(env or {}),
            },
            port=port,
            # In the working directory, so that no stray gunicorn.conf.py is read.
            cwd=workdir,
            log_path=workdir / f"gunicorn-{variant}-{worker_class}-{port}.log",
            wrapper=wrapper,
        )

    def wait_ready(  # type: ignore[override]
        self, timeout: float = BOOT_TIMEOUT
    ) -> Server:
        """Poll until the worker answers (its signal handlers are in place by then)."""

        def answers() -> bool:
            self._fail_if_exited("while booting")
            try:
                return http_get(self.port, "/pid", timeout=2.0)[0] == 200
            except OSError:
                return False

        wait_until(answers, timeout, f"gunicorn to answer\n{self.log()}")
        return self

    def worker_pids(self) -> list[int]:
        """The master's children right now (its workers)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def reap(self, timeout: float) -> int | None:
        """Wait for the master to exit; its exit code, or ``None`` after ``timeout``."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the master and every worker it had (its process group); reap the master."""
        self.stop()
