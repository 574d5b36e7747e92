"""How workers hand their shutdown reports to the master: a private folder.

The master makes the folder before the first fork (``mkdtemp``: a random
name, mode 0700, owned by the server's user); each worker stopped by the
master writes one JSON file named after its pid there, created exclusively,
without following symlinks, mode 0600. JSON is data, never code: nothing
is unpickled or executed on the way, and no socket is opened.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

_directory: str | None = None

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A report larger than this is not a report.
MAX_REPORT_BYTES = 1 << 20


def create() -> str:
    """Make the folder (in the master, once, before the first fork)."""
    global _directory
    if _directory is None:
        _directory = tempfile.mkdtemp(prefix="graceful_gunicorn-")
    return _directory


def write(report: dict[str, Any]) -> None:
    """Write this worker's report (in a worker, once)."""
    if _directory is None:
        return
    path = os.path.join(_directory, f"{os.getpid()}.json")
    fd = os.open(path, _CREATE, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(report, file)


def collect(pids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The reports of ``pids`` that were written (in the master)."""
    reports: dict[int, dict[str, Any]] = {}
    if _directory is None:
        return reports
    for pid in pids:
        try:
            fd = os.open(os.path.join(_directory, f"{int(pid)}.json"), _READ)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as file:
            data = file.read(MAX_REPORT_BYTES)
        try:
            report = json.loads(data)
        except ValueError:
            continue
        if isinstance(report, dict):
            reports[pid] = report
    return reports


def remove() -> None:
    """Remove the folder (in the master, when it exits)."""
    global _directory
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
        _directory = None
