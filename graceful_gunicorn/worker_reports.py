"""How workers hand their shutdown reports to the master: a private folder.

The master makes the folder before the first fork, in the system's temporary
folder (``mkdtemp``: named ``graceful_gunicorn-<master pid>-<random>``, mode
0700, owned by the server's user) and holds an ``flock`` on it for as long as
it lives (its workers inherit the lock). When the workers run as another user
or group (gunicorn's ``user``/``group``; gunicorn chowns its worker temporary
files for the same reason, workers/workertmp.py), the folder's group becomes
theirs and its mode 0730: they can create files there but not list it. Its
owner stays the master's user, so that only folders of that user are ever
cleaned up as stale.

Each worker stopped by the master writes one JSON file named after its pid,
``<pid>.json``: first into a new file with a random name (created
exclusively, without following symlinks, mode 0600), then renamed into
place, so a second write (a forced exit) or a stale file of an earlier
worker with the same pid is replaced at once, and the master never reads a
half-written report. The master removes a worker's report when it reaps a
worker that stopped outside the master's own stop (a quick stop of one
worker, a worker timeout), so that a later worker with a reused pid is not
counted by it. JSON is data, never code: nothing is unpickled or executed on
the way, and no socket is opened.

A master killed with ``SIGKILL`` cannot remove its folder; the next master
of the same user removes, at start-up, every such folder whose master's pid
is gone and whose lock nobody holds (no orphaned worker is still alive). It
never follows a symlink there and never touches another user's folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

_directory: str | None = None
#: An open descriptor of the folder, locked (``flock``) while the master lives.
_lock: int | None = None

_PREFIX = "graceful_gunicorn-"
_STALE_NAME = re.compile(re.escape(_PREFIX) + r"([0-9]+)-[A-Za-z0-9_]+")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the folder must not hold the master's exit.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The folder's mode when the workers run as another user or group: they may
#: create and rename files in it, not list it.
SHARED_MODE = 0o730
#: A report larger than this is not a report.
MAX_REPORT_BYTES = 1 << 20


def create(uid: int | None = None, gid: int | None = None) -> str:
    """Make the folder (in the master, once, before the first fork).

    First removes the folders that masters killed earlier left behind
    (:func:`remove_stale`). ``uid``/``gid`` are those the workers will run
    as (gunicorn's ``cfg.uid``/``cfg.gid``); see :func:`share_with_workers`.
    """
    global _directory, _lock
    if _directory is None:
        if _lock is not None:
            with suppress(OSError):
                os.close(_lock)
        remove_stale()
        directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        lock = os.open(directory, _OPEN_FOLDER)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _directory, _lock = directory, lock
    share_with_workers(uid, gid)
    return _directory


def share_with_workers(uid: int | None, gid: int | None) -> None:
    """Let workers that run as ``uid``/``gid`` write into the folder (in the master).

    When either differs from the master's own, the folder's group becomes
    ``gid`` and its mode :data:`SHARED_MODE`; otherwise it stays 0700. Called
    when the folder is made and again on each reload, which may change
    gunicorn's ``user``/``group``. Raises ``OSError`` when the master may not
    change the folder's group.
    """
    if _lock is None:
        return
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    if uid != os.geteuid() or gid != os.getegid():
        os.fchown(_lock, -1, gid)
        os.fchmod(_lock, SHARED_MODE)
    else:
        os.fchmod(_lock, 0o700)


def write(report: dict[str, Any]) -> None:
    """Write this worker's report (in a worker); a second call replaces the first.

    Raises ``OSError`` when something other than a regular file (a symlink,
    a FIFO, a folder) sits at the report's name: it is left alone.
    """
    if _directory is None:
        return
    path = os.path.join(_directory, f"{os.getpid()}.json")
    with suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EEXIST, "not a regular file, left alone", path)
    new = os.path.join(_directory, f".{os.getpid()}-{secrets.token_hex(8)}.tmp")
    fd = os.open(new, _CREATE, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(report, file)
        os.replace(new, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(new)
        raise


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
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                continue
            data = file.read(MAX_REPORT_BYTES)
        try:
            report = json.loads(data)
        except ValueError:
            continue
        if isinstance(report, dict):
            reports[pid] = report
    return reports


def discard(pids: Iterable[int]) -> None:
    """Remove the reports of ``pids`` (in the master, for workers it reaped outside its stop)."""
    if _directory is None:
        return
    for pid in pids:
        with suppress(OSError):
            os.unlink(os.path.join(_directory, f"{int(pid)}.json"))


def remove() -> None:
    """Remove the folder (in the master, when it exits)."""
    global _directory, _lock
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
        _directory = None
    if _lock is not None:
        with suppress(OSError):
            os.close(_lock)
        _lock = None


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove the folders that killed masters of this user left in ``parent``.

    ``parent`` is the system's temporary folder unless given. A folder is
    removed only when all of these hold: its name is
    ``graceful_gunicorn-<pid>-<random>``; it is a real folder (not a
    symlink) owned by this process's user; no process ``<pid>`` exists; and
    its lock can be taken, so neither a master (in another pid namespace
    too) nor an orphaned worker still uses it. Returns the removed paths.
    """
    parent = tempfile.gettempdir() if parent is None else parent
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = _STALE_NAME.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        path = os.path.join(parent, name)
        with suppress(OSError):
            if _remove_if_stale(path):
                removed.append(path)
    return removed


def _remove_if_stale(path: str) -> bool:
    before = os.lstat(path)
    if not stat.S_ISDIR(before.st_mode) or before.st_uid != os.geteuid():
        return False
    fd = os.open(path, _OPEN_FOLDER)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            return False  # replaced since the lstat
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a process still holds it
        # rmtree works on descriptors here: it never follows a symlink inside.
        shutil.rmtree(path)
        return True
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False
    return True
