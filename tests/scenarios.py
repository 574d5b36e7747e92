"""What the real-process scenarios share: the app, the server arguments, clients.

Test modules import these from here, never from one another.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .server import Gunicorn, Response, http_get, process_gone

#: The app most scenarios serve: it records each callback it runs (``events``).
APP = "tests.apps.events_app:app"
GRACEFUL = ["-c", "python:graceful_gunicorn.conf"]
#: gunicorn's graceful_timeout for a scenario that does not choose its own.
GRACEFUL_TIMEOUT = 30
#: How long a raw client waits on its socket.
IO_TIMEOUT = 10.0


def worker_args(worker_class: str, workers: int = 2) -> list[str]:
    args = ["-k", worker_class, "-w", str(workers)]
    if worker_class == "gthread":
        args += ["--threads", "4"]
    return args


def running_children(pid: int) -> set[int]:
    """The children of process ``pid`` that have not exited (Linux /proc): a
    master's workers, and during a binary upgrade its new master."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children if not process_gone(int(child))}


def send_in_background(
    server: Gunicorn, paths: list[str]
) -> tuple[list[Response], list[threading.Thread]]:
    results: list[Response] = [Response(None, error="not done")] * len(paths)

    def send(i: int, path: str) -> None:
        results[i] = http_get(server.port, path)

    threads = [threading.Thread(target=send, args=(i, p), daemon=True) for i, p in enumerate(paths)]
    for thread in threads:
        thread.start()
    return results, threads


def one_worker(
    gunicorn: Callable[..., Gunicorn],
    worker_class: str,
    env: dict[str, str] | None = None,
    graceful_timeout: float = GRACEFUL_TIMEOUT,
) -> Gunicorn:
    """Start (not wait for) a graceful master with one worker."""
    args = [*GRACEFUL, *worker_args(worker_class, workers=1)]
    return gunicorn([*args, "--graceful-timeout", str(graceful_timeout), APP], env)


def assert_each_callback_ran_once(server: Gunicorn) -> None:
    runs = Counter((e["pid"], e["phase"], e["name"]) for e in server.callbacks())
    assert runs, "no callback ran"
    twice = [key for key, n in runs.items() if n > 1]
    assert twice == [], f"callbacks run more than once: {twice}"


@contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes or 64 KiB arrived."""
    with connection(port) as sock:
        sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed first (ENOTCONN): read its answer
            pass
        received = b""
        while len(received) < 65536:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


def status_of(response: bytes) -> int | None:
    parts = response.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def logged_report(server: Gunicorn) -> dict[str, Any]:
    (line,) = re.findall(r"graceful_gunicorn: shutdown report (\{.*\})", server.log())
    report: dict[str, Any] = json.loads(line)
    return report
