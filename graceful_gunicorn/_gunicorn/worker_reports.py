"""How workers hand their shutdown reports to the master: a private folder.

The master makes the folder before the first fork, in the system's temporary
folder, named ``graceful_gunicorn-<master pid>-<random>``, mode 0700. It is
made under a temporary name, locked (``flock``) and only then given that
name, so no other master ever sees it unlocked; the master holds the lock for
as long as it lives (its workers inherit it). When the workers run as another
user (gunicorn's ``user``), the folder is chowned to their uid and gid and
stays 0700, as gunicorn chowns its worker temporary files
(workers/workertmp.py); the master, root then, still reads it. When only
the group differs the workers keep the master's uid and 0700 is enough. No
other account, not even one sharing the workers' group, can create or
replace anything in it.

Each worker stopped by the master writes one JSON file named after its pid,
``<pid>.json``: first into a new file with a random name (created
exclusively, without following symlinks, mode 0600), then renamed into
place, so a second write (a forced exit) or a stale file of an earlier
worker with the same pid (whatever it is: a rename replaces it) is replaced
at once, and the master never reads a half-written report. The master reads
each report through the folder's locked descriptor (never by its path, which
the workers' user could rename), without following a symlink or blocking on
a FIFO (``NaN``/``Infinity`` are read as text); the summary then checks
each report's types (:func:`graceful_gunicorn._gunicorn.summary.report_problem`). The
master removes a worker's report when it reaps a worker that stopped outside
the master's own stop (a quick stop of one worker, a worker timeout), so that
a later worker with a reused pid is not counted by it. JSON is data, never
code: nothing is unpickled or executed on the way, and no socket is opened.

A master killed with ``SIGKILL`` cannot remove its folder; the next master
removes, at start-up, every such folder whose lock nobody holds (neither a
master, in this pid namespace or another, nor an orphaned worker): the lock
is the test, not the pid in the name, which a restarted container's master
(PID 1) shares with the dead one. Whoever owns the folder (the workers' user
after a privilege drop) does not matter; the name must match and nothing is
followed through a symlink. Folders of earlier development versions
(``graceful_gunicorn-<random>``, no pid, no lock) are removed when they are
empty, this user's and more than a day old.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from .process_state import STATE

_PREFIX = "graceful_gunicorn-"
#: A folder of this version; ``.new`` while it is being made (see :func:`create`).
_STALE_NAME = re.compile(re.escape(_PREFIX) + r"[0-9]+-[A-Za-z0-9_]+(\.new)?")
#: A folder of an earlier development version (``mkdtemp(prefix=_PREFIX)``).
_OLD_STYLE_NAME = re.compile(re.escape(_PREFIX) + r"[a-z0-9_]{8}")
_OLD_STYLE_AGE = 24 * 3600.0
#: A folder still being made has its lock within microseconds; older and unlocked is left over.
_NEW_AGE = 60.0
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the folder must not hold the master's exit.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: How deep the clean-up goes into a stale folder (ours hold no sub-folders).
_MAX_DEPTH = 8
#: A report larger than this is not a report.
MAX_REPORT_BYTES = 1 << 20


def create(uid: int | None = None, gid: int | None = None) -> str:
    """Make the folder (in the master, once, before the first fork).

    First removes the folders that masters killed earlier left behind
    (:func:`remove_stale`). The folder is made as ``<name>.new``, locked, and
    only then renamed to its name, so that it is never seen unlocked under a
    name another master would remove. ``uid``/``gid`` are those the workers
    will run as (gunicorn's ``cfg.uid``/``cfg.gid``); see
    :func:`share_with_workers`.
    """
    if STATE.report_folder is None:
        if STATE.report_folder_fd is not None:
            with suppress(OSError):
                os.close(STATE.report_folder_fd)
        remove_stale()
        new = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", suffix=".new")
        lock = os.open(new, _OPEN_FOLDER)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            directory = new[: -len(".new")]
            os.rename(new, directory)
        except BaseException:
            os.close(lock)
            with suppress(OSError):
                os.rmdir(new)
            raise
        STATE.report_folder, STATE.report_folder_fd = directory, lock
    share_with_workers(uid, gid)
    return STATE.report_folder


def share_with_workers(uid: int | None, gid: int | None) -> None:
    """Let workers that run as ``uid``/``gid`` write into the folder (in the master).

    When ``uid`` differs from the master's own, the folder becomes
    ``uid:gid``'s, mode 0700 (gunicorn's workers/workertmp.py chowns its
    worker temporary files the same way); otherwise it is the master's, mode
    0700 (the workers keep the master's uid when only the group differs).
    Called when the folder is made and again on each reload, which may change
    gunicorn's ``user``/``group``. Raises ``OSError`` when the master may not
    chown the folder.
    """
    folder = STATE.report_folder_fd
    if folder is None:
        return
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    if uid != os.geteuid():
        os.fchown(folder, uid, gid)
    elif os.fstat(folder).st_uid != os.geteuid():
        os.fchown(folder, os.geteuid(), os.getegid())  # a reload back to the master's user
    os.fchmod(folder, 0o700)


def write(report: dict[str, Any]) -> None:
    """Write this worker's report (in a worker); a second call replaces the first.

    Whatever sits at the report's name (a stale report, a FIFO, a symlink)
    is replaced by the rename, never written into or followed.
    """
    if STATE.report_folder is None or STATE.report_folder_fd is None:
        return
    name = f"{os.getpid()}.json"
    new = f".{os.getpid()}-{secrets.token_hex(8)}.tmp"
    fd = os.open(new, _CREATE, 0o600, dir_fd=STATE.report_folder_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(report, file, allow_nan=False)
        os.replace(new, name, src_dir_fd=STATE.report_folder_fd, dst_dir_fd=STATE.report_folder_fd)
    except BaseException:
        with suppress(OSError):
            os.unlink(new, dir_fd=STATE.report_folder_fd)
        raise


def _constant_as_text(name: str) -> str:
    return name  # NaN, Infinity: kept as text, so the summary's check refuses it by name


def collect(pids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The reports of ``pids`` that were written (in the master), as JSON objects.

    The summary checks their types. A name that is not a regular file (a
    FIFO, a symlink, a folder) or not a JSON object counts as no report.
    ``NaN``/``Infinity`` are read as the strings ``"NaN"``/``"Infinity"``,
    never as floats, so the summary stays valid JSON.
    """
    reports: dict[int, dict[str, Any]] = {}
    if STATE.report_folder is None or STATE.report_folder_fd is None:
        return reports
    for pid in pids:
        try:
            fd = os.open(f"{int(pid)}.json", _READ, dir_fd=STATE.report_folder_fd)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                continue
            data = file.read(MAX_REPORT_BYTES)
        try:
            report = json.loads(data, parse_constant=_constant_as_text)
        except (ValueError, RecursionError):
            continue
        if isinstance(report, dict):
            reports[pid] = report
    return reports


def discard(pids: Iterable[int]) -> None:
    """Remove the reports of ``pids`` (in the master, for workers it reaped outside its stop)."""
    if STATE.report_folder is None or STATE.report_folder_fd is None:
        return
    for pid in pids:
        with suppress(OSError):
            os.unlink(f"{int(pid)}.json", dir_fd=STATE.report_folder_fd)


def remove() -> None:
    """Remove the folder (in the master, when it exits)."""
    if STATE.report_folder is not None and STATE.report_folder_fd is not None:
        with suppress(OSError):
            _empty(STATE.report_folder_fd, 0)
            # Only if its name still names it: the workers' user may have renamed it.
            if _same(os.lstat(STATE.report_folder), os.fstat(STATE.report_folder_fd)):
                os.rmdir(STATE.report_folder)
    STATE.report_folder = None
    if STATE.report_folder_fd is not None:
        with suppress(OSError):
            os.close(STATE.report_folder_fd)
        STATE.report_folder_fd = None


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove the folders that killed masters left in ``parent``.

    ``parent`` is the system's temporary folder unless given. A folder is
    removed when its name is ``graceful_gunicorn-<pid>-<random>``, it is a
    real folder (not a symlink; nothing inside is followed either) and its
    lock can be taken: no master (in any pid namespace) and no orphaned
    worker still holds it. The pid in the name is not trusted (a restarted
    container's master has the same one), nor is the folder's owner (the
    workers' user owns it after a privilege drop); this master's own folder
    is skipped. A ``<name>.new`` folder must also be a minute old, and a
    folder of an earlier version (``graceful_gunicorn-<random>``) empty,
    this user's and a day old. Returns the removed paths.
    """
    parent = tempfile.gettempdir() if parent is None else parent
    removed: list[str] = []
    try:
        parent_fd = os.open(parent, _OPEN_FOLDER)
    except OSError:
        return removed
    try:
        for name in sorted(os.listdir(parent_fd)):
            with suppress(OSError):
                if _remove_if_stale(parent_fd, name):
                    removed.append(os.path.join(parent, name))
    finally:
        os.close(parent_fd)
    return removed


def _remove_if_stale(parent: int, name: str) -> bool:
    match = _STALE_NAME.fullmatch(name)
    if match is None:
        return _OLD_STYLE_NAME.fullmatch(name) is not None and _remove_old_style(parent, name)
    before = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISDIR(before.st_mode):
        return False
    if STATE.report_folder_fd is not None and _same(before, os.fstat(STATE.report_folder_fd)):
        return False  # this master's own
    if match.group(1) and time.time() - before.st_mtime < _NEW_AGE:
        return False  # another master is making it
    fd = os.open(name, _OPEN_FOLDER, dir_fd=parent)
    try:
        if not _same(os.fstat(fd), before):
            return False  # replaced since the stat
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a master or an orphaned worker still holds it
        _empty(fd, 0)
    finally:
        os.close(fd)
    # rmdir removes only an empty folder: whatever was swapped in meanwhile stays.
    os.rmdir(name, dir_fd=parent)
    return True


def _remove_old_style(parent: int, name: str) -> bool:
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    if time.time() - info.st_mtime < _OLD_STYLE_AGE:
        return False
    try:
        os.rmdir(name, dir_fd=parent)  # fails unless empty
    except OSError:
        return False
    return True


def _empty(fd: int, depth: int) -> None:
    """Empty the folder open at ``fd`` through descriptors only: no symlink is followed."""
    for entry in list(os.scandir(fd)):
        if entry.is_dir(follow_symlinks=False):
            if depth >= _MAX_DEPTH:
                raise OSError(f"more than {_MAX_DEPTH} folders deep")
            child = os.open(entry.name, _OPEN_FOLDER, dir_fd=fd)
            try:
                _empty(child, depth + 1)
            finally:
                os.close(child)
            os.rmdir(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
