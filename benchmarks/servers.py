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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

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


def _is_gunicorn(pid: int) -> bool:
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Server:
    """One gunicorn master with one worker, serving a variant of the benchmark app."""

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
        self.port = free_port()
        variant = app or ("graceful" if graceful else "plain")
        self.log_path = workdir / f"gunicorn-{variant}-{worker_class}-{self.port}.log"
        self.args = [
            "-b",
            f"127.0.0.1:{self.port}",
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
        ]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "BENCH_DIR": str(workdir),
            **(env or {}),
        }
        #: A command the master runs under (``valgrind ...``); its workers are forks.
        self.wrapper = list(wrapper)
        self.process: subprocess.Popen[bytes] | None = None
        self._pids: set[int] = set()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    @property
    def pid(self) -> int:
        """The master's pid."""
        if self.process is None:
            raise RuntimeError("the server is not started")
        return self.process.pid

    def start(self) -> None:
        """Start the master (in the working directory, so no stray gunicorn.conf.py is read)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, sys.executable, "-m", "gunicorn", *self.args],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pids.add(self.process.pid)

    def log(self) -> str:
        """What gunicorn logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Poll until the worker answers (its signal handlers are in place by then)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log()}")
            try:
                status, _ = http_get(self.port, "/pid", timeout=2.0)
                if status == 200:
                    self.worker_pids()
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The master's children right now (its workers)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            pids = [int(p) for p in path.read_text().split()]
        except OSError:
            return []
        self._pids.update(pids)
        return pids

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the master only."""
        os.kill(self.pid, sig)

    def reap(self, timeout: float) -> int | None:
        """Wait for the master to exit; its exit code, or ``None`` after ``timeout``."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the master and every worker it had, by PID; reap the master."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.worker_pids()
        for pid in sorted(self._pids):
            if pid == self.process.pid and self.process.poll() is not None:
                continue  # reaped: the pid may belong to someone else by now
            if pid != self.process.pid and not _is_gunicorn(pid):
                continue  # exited, and perhaps reused
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)
