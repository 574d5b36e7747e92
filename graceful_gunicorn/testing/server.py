"""A real gunicorn master and its workers, run for a test on 127.0.0.1.

::

    from graceful_gunicorn.testing import GunicornServer

    with GunicornServer(["-c", "python:graceful_gunicorn.conf", "app:app"]) as server:
        server.wait_ready()
        assert server.get("/")[0] == 200
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0
    assert "shutdown summary" in server.log()

gunicorn binds port 0 unless told otherwise, so the kernel picks a free port
and :attr:`GunicornServer.port` reads it from gunicorn's log, which goes to
``log_path`` at level info (a ``--log-level`` in ``args`` wins; an
``errorlog`` set in a config file does not). The master runs in a session of
its own; :meth:`GunicornServer.stop` (also on leaving the ``with`` block)
kills its process group: the master and every worker. Without ``log_path``
the log is a temporary file, kept so that it can be read after the stop.
The pytest fixture ``gunicorn_server`` (:mod:`graceful_gunicorn.testing.pytest_plugin`)
starts one with graceful_gunicorn's config.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

#: Seconds a server may take to boot before a test fails.
BOOT_TIMEOUT = 30.0

_LISTENING = re.compile(r"Listening at: https?://127\.0\.0\.1:(\d+)")
_BOOTED = re.compile(r"Booting worker with pid: (\d+)")
_GRACEFUL_READY = re.compile(r"graceful_gunicorn: worker \d+ ready with")


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; raise ``AssertionError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class GunicornServer:
    """One gunicorn master, started with ``args`` (gunicorn's command line
    without ``-b``) and bound to ``127.0.0.1:port``."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        port: int = 0,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        wrapper: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> None:
        self.args = list(args)
        #: A command the master runs under (``valgrind ...``); its workers are forks.
        self.wrapper = list(wrapper)
        #: How gunicorn is started: this Python's ``-m gunicorn``, or for example its
        #: console script. A binary upgrade (``USR2``) needs the script: gunicorn runs
        #: its own command line again, and ``-m gunicorn`` comes back as the script
        #: ``gunicorn/__main__.py``, whose folder then hides the standard ``http``.
        self.command = list(command) if command is not None else [sys.executable, "-m", "gunicorn"]
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        #: Extra environment variables, on top of this process's environment.
        self.env = {**os.environ, **(env or {})}
        self._port = port
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
            os.close(fd)
            log_path = name
        #: gunicorn's stdout and stderr (its error log, our lines included).
        self.log_path = Path(log_path)
        self.process: subprocess.Popen[bytes] | None = None

    # -- starting and stopping -----------------------------------------------------

    def start(self) -> GunicornServer:
        """Start the master in a session of its own; returns at once."""
        command = [
            *self.wrapper,
            *self.command,
            "-b",
            f"127.0.0.1:{self._port}",
            # the port and the workers are read from gunicorn's log: keep it here
            "--error-logfile",
            "-",
            "--log-level",
            "info",
            *self.args,
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        """Kill the master and its workers (``SIGKILL``); harmless when they are gone.

        The master leads a process group of its own, which its workers share,
        so one ``killpg`` reaches every one of them, even one forked a moment
        ago, and nothing outside it.
        """
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the whole group is gone already
        self.process.wait(10)

    def __enter__(self) -> GunicornServer:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it says and who it is ---------------------------------------------------

    @property
    def pid(self) -> int:
        """The master's PID."""
        if self.process is None:
            raise RuntimeError("the server has not been started")
        return self.process.pid

    @property
    def port(self) -> int:
        """The port gunicorn listens on (read from its log when it chose one)."""
        if self._port == 0:
            found: list[str] = []

            def listening() -> bool:
                found.extend(_LISTENING.findall(self.log()))
                self._fail_if_exited("before listening")
                return bool(found)

            wait_until(listening, BOOT_TIMEOUT, f"gunicorn to listen\n{self.log()}")
            self._port = int(found[0])
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything gunicorn wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """Every worker the master booted so far, in order."""
        return [int(pid) for pid in _BOOTED.findall(self.log())]

    # -- talking to it ----------------------------------------------------------------

    def wait_ready(
        self, workers: int = 1, path: str = "/", timeout: float = BOOT_TIMEOUT
    ) -> GunicornServer:
        """Wait until ``workers`` workers booted and ``GET path`` gets an answer below 500.

        With graceful_gunicorn, a worker counts once its signal handlers and
        app are in place (its "ready with N shutdown callback(s)" line).
        """

        def ready() -> bool:
            self._fail_if_exited("while booting")
            log = self.log()
            booted = len(self.worker_pids())
            if "graceful_gunicorn:" in log:
                booted = len(_GRACEFUL_READY.findall(log))
            if booted < workers:
                return False
            try:
                status, _ = self.get(path, timeout=2)
            except (OSError, http.client.HTTPException):
                return False
            return status < 500

        wait_until(ready, timeout, f"{workers} worker(s) to serve {path}\n{self.log()}")
        return self

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
        """``GET path`` on a new connection: the status and the whole body."""
        return self.request("GET", path, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """One request on a new connection: the status and the whole body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the master."""
        os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the master and every worker at once, as Ctrl+C in a terminal does.

        One ``killpg``, never a send to the master and then one to each
        worker: a busy machine can deschedule the sender between two sends,
        which a real keystroke never does.
        """
        os.killpg(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the master to exit; its exit status. ``AssertionError`` on timeout."""
        if self.process is None:
            raise RuntimeError("the server has not been started")
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"gunicorn did not exit within {timeout}s:\n{self.log()}"
            ) from None

    def _fail_if_exited(self, when: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited {when}:\n{self.log()}")
