"""The master's shutdown summary: one log line, one JSON report, optionally a file.

When the master exits (gunicorn's ``on_exit`` hook), it reads the report of
each worker it stopped (see :mod:`graceful_gunicorn._gunicorn.worker_reports`); a
worker without a report, or with one that is not what a worker writes
(:func:`report_problem`), was killed or crashed on the way out, and one
whose report says ``"forced_exit": true`` finished its sequence but had to
be ended with ``os._exit`` (counted as forced, not clean).

The file named by ``shutdown_report_path`` is never written in place: the
report goes into a new file in the same folder (random name, created
exclusively, mode 0600), which is then renamed over the path. Only a file
bind-mounted at the path (Docker ``-v``, a Kubernetes ``subPath``), which
cannot be renamed over, is written in place, once it is confirmed a regular
file. The folder is reached one component at a time, following a symlink
only when root or the master's user owns it, and must be one that no other
user can use to replace the report (:func:`open_report_folder`); the master
checks it at start-up (:func:`check_report_path`) and again when it saves.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pwd
import secrets
import stat
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("ok", "error", "timeout", "skipped")

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# O_PATH (Linux): a folder the master may only search (x, not r) is walked too.
_WALK = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: In place, into a file bind-mounted at the path: never a FIFO's wait, never a symlink.
_IN_PLACE = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Symlinks followed on the way to the report's folder, at most (the kernel's own limit).
_MAX_SYMLINKS = 40


@dataclass
class MasterStopRecord:
    """What the master knows of its own stop."""

    reason: str
    signal: str
    #: When the first stop signal came (monotonic), before any shutdown delay.
    signalled_at: float
    shutdown_delay: float = 0.0
    workers: list[int] = field(default_factory=list)
    #: Workers gunicorn's stop() still had to SIGKILL at graceful_timeout.
    sigkilled: list[int] = field(default_factory=list)


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def _seconds(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (math.isfinite(value) and value >= 0)
    )


def _text(value: object) -> bool:
    return isinstance(value, str)


def _text_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


#: What a worker writes (:meth:`graceful_gunicorn._core.report.ShutdownReport.as_dict`),
#: key by key; a key may be missing, never of another type.
_REPORT_FIELDS = {
    "reason": _text,
    "pid": _count,
    "in_flight_at_start": _count,
    "requests_drained": _count,
    "requests_abandoned": _count,
    "duration": _seconds,
    # A new worker of a reload that could not load the app (reload_gate.py).
    "not_booted": lambda value: isinstance(value, bool),
}
_CALLBACK_FIELDS = {
    "name": _text,
    "phase": _text,
    "outcome": lambda value: value in OUTCOMES,
    "duration": _seconds,
    "error": _text_or_none,
}
_PHASE_FIELDS = {
    "name": _text,
    "duration": _seconds,
    "skipped": lambda value: isinstance(value, bool),
}


def _bad_field(item: Mapping[str, Any], fields: Mapping[str, Any]) -> str | None:
    for key, fits in fields.items():
        if key in item and not fits(item[key]):
            return f"{key}={item[key]!r:.60}"
    return None


def report_problem(report: object) -> str | None:
    """What is wrong with a worker's report, or ``None`` when it is one a worker writes.

    Counts are ints >= 0, durations finite numbers >= 0, names strings,
    ``callbacks`` and ``phases`` lists of objects, each outcome one of
    :data:`OUTCOMES` (``NaN`` is read as the text ``"NaN"``, so it fails
    as any text in a number's place). A key may be missing; extra keys are kept.
    """
    if not isinstance(report, Mapping):
        return f"not a JSON object: {report!r:.60}"
    bad = _bad_field(report, _REPORT_FIELDS)
    if bad is not None:
        return bad
    for key, fields in (("callbacks", _CALLBACK_FIELDS), ("phases", _PHASE_FIELDS)):
        items = report.get(key, [])
        if not isinstance(items, list):
            return f"{key} is not a list: {items!r:.60}"
        for item in items:
            if not isinstance(item, Mapping):
                return f"{key} holds {item!r:.60}, not an object"
            bad = _bad_field(item, fields)
            if bad is not None:
                return f"{key}: {bad}"
    return None


def build(record: MasterStopRecord, reports: Mapping[int, Any]) -> dict[str, Any]:
    """The summary of a server's shutdown as JSON-ready data.

    A report with a :func:`report_problem` counts as none: its worker was killed.
    A worker that gunicorn had to ``SIGKILL`` counts as killed even with a
    report (its exit, the interpreter's ``atexit`` handlers, was cut), and its
    report still counts. The requests of a worker without a report are unknown:
    ``requests.uncounted_workers`` says how many workers they are.
    """
    usable = {pid: r for pid, r in reports.items() if report_problem(r) is None}
    # A reload's new worker that could not load the app never served: not stopped.
    not_booted = [p for p in record.workers if usable.get(p, {}).get("not_booted") is True]
    stopped = [pid for pid in record.workers if pid not in not_booted]
    counted = [pid for pid in stopped if pid in usable]
    reported = [pid for pid in counted if pid not in record.sigkilled]
    forced = [pid for pid in reported if usable[pid].get("forced_exit") is True]
    clean = [pid for pid in reported if pid not in forced]
    killed = [pid for pid in stopped if pid not in reported]
    workers = {
        "stopped": len(stopped),
        "clean": len(clean),
        "killed": len(killed),
        "forced": len(forced),
        "not_booted": len(not_booted),
    }
    callbacks = {outcome: 0 for outcome in OUTCOMES}
    drained = abandoned = 0
    for pid in counted:
        report = usable[pid]
        drained += report.get("requests_drained", 0)
        abandoned += report.get("requests_abandoned", 0)
        for callback in report.get("callbacks", []):
            if "outcome" in callback:
                callbacks[callback["outcome"]] += 1
    return {
        "event": "graceful_gunicorn.shutdown",
        "reason": record.reason,
        "signal": record.signal,
        "shutdown_delay": record.shutdown_delay,
        "duration": round(time.monotonic() - record.signalled_at, 3),
        "workers": workers,
        "killed_pids": killed,
        "forced_pids": forced,
        "requests": {
            "drained": drained,
            "abandoned": abandoned,
            "uncounted_workers": len(stopped) - len(counted),
        },
        "callbacks": callbacks,
        "worker_reports": [dict(usable[pid]) for pid in counted],
    }


def summary_line(summary: Mapping[str, Any]) -> str:
    """The one-line, human-readable form of :func:`build`'s result."""
    workers, requests, callbacks = summary["workers"], summary["requests"], summary["callbacks"]
    forced = f", {workers['forced']} forced to exit" if workers.get("forced") else ""
    if workers.get("not_booted"):
        forced += f" ({workers['not_booted']} of a failed reload never loaded the app)"
    uncounted = requests.get("uncounted_workers", 0)
    unknown = f" (not counting {uncounted} worker(s) without a report)" if uncounted else ""
    return (
        f"shutdown summary ({summary['reason']}, {summary['signal']}): "
        f"{workers['clean']} of {workers['stopped']} worker(s) stopped cleanly, "
        f"{workers['killed']} killed{forced}; {requests['drained']} request(s) drained, "
        f"{requests['abandoned']} abandoned{unknown}; callbacks {callbacks['ok']} ok, "
        f"{callbacks['error']} failed, {callbacks['timeout']} timed out, "
        f"{callbacks['skipped']} skipped; {summary['duration']:.2f}s in all"
    )


class UnsafeReportPath(OSError):
    """``shutdown_report_path`` names a place the report must not be written to.

    ``fix`` says in a few words what the operator can do.
    """

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix

    def __str__(self) -> str:
        return str(self.args[0])


def _master_user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name!r}, uid {uid}"
    except KeyError:
        return f"uid {uid}"


def _folder_fix() -> str:
    return (
        f"use a folder owned by root or the master's user ({_master_user()}) that is not "
        "world-writable, reached only through folders and symlinks of those users, e.g. "
        "one made with 'install -d -m 755 /var/lib/myapp' (not /tmp)"
    )


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


def open_report_folder(path: str) -> int:
    """A descriptor of the folder of ``path``, reached one component at a time.

    The rule, for the master's user (with gunicorn's ``user``/``group`` the
    master is root): every folder on the way and the report's own folder
    belong to root or that user, no folder on the way is world-writable
    without the sticky bit, and the report's own folder is not world-writable
    at all (``/tmp`` is refused: anyone could put a file there first).
    Group-writable folders are accepted (a Kubernetes ``fsGroup`` volume,
    2775; Ubuntu's ``/var/log``, 0775 root:syslog): the group is trusted to
    that extent. A symlink on the way (``/var/run`` -> ``/run``, a
    Capistrano ``current``) is followed when root or that user owns it,
    and its target is checked by the same rule. Raises
    :class:`UnsafeReportPath` otherwise, ``OSError`` when a folder does not
    exist. The caller closes the descriptor.
    """
    fd, _ = _walk(os.path.dirname(os.path.abspath(path)))
    return fd


def _walk(folder: str) -> tuple[int, str]:
    """``folder``'s descriptor and real path, checked by :func:`open_report_folder`'s rule."""
    pending = [part for part in reversed(folder.split(os.sep)) if part]
    fd = os.open(os.sep, _WALK)
    walked = os.sep
    followed = 0
    try:
        _check_folder(fd, walked, last=False)
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                child = os.open("..", _WALK, dir_fd=fd)
                walked = os.path.dirname(walked)
            else:
                try:
                    child = os.open(part, _WALK, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(info.st_mode):
                        raise
                    link = os.path.join(walked, part)
                    if not _trusted(info.st_uid):
                        raise UnsafeReportPath(
                            f"the symlink {link!r} belongs to another user (uid {info.st_uid})",
                            _folder_fix(),
                        ) from None
                    followed += 1
                    if followed > _MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, "too many symlinks", folder) from None
                    target = os.readlink(part, dir_fd=fd)
                    pending.extend(p for p in reversed(target.split(os.sep)) if p)
                    if os.path.isabs(target):
                        child, walked = os.open(os.sep, _WALK), os.sep
                        os.close(fd)
                        fd = child
                        _check_folder(fd, walked, last=False)
                    continue
                walked = os.path.join(walked, part)
            os.close(fd)
            fd = child
            _check_folder(fd, walked, last=False)
        _check_folder(fd, walked, last=True)
    except BaseException:
        os.close(fd)
        raise
    return fd, walked


def _check_folder(fd: int, path: str, *, last: bool) -> None:
    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    if not _trusted(info.st_uid):
        raise UnsafeReportPath(
            f"{path!r} belongs to another user (uid {info.st_uid})", _folder_fix()
        )
    if mode & stat.S_IWOTH and (last or not mode & stat.S_ISVTX):
        where = "the report's folder" if last else "a folder on the way"
        raise UnsafeReportPath(
            f"anyone can write to {path!r} (mode {mode:04o}), {where}", _folder_fix()
        )


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symlink",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
}
_PATH_FIX = "name a regular file, or one that does not exist yet"


def check_report_path(path: str) -> None:
    """Raise :class:`UnsafeReportPath` if the report could never be saved at ``path``.

    The folder must pass :func:`open_report_folder`'s rule, and the path must
    name a regular file or nothing yet: not a folder (nor end with ``/``), a
    symlink (the report would replace the link, never what it points to,
    which is not what whoever made it meant), a FIFO or a device. ``OSError``
    when a folder does not exist.
    """
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        raise UnsafeReportPath(f"{path!r} names a folder, not a file", _PATH_FIX)
    fd, real = _walk(os.path.dirname(os.path.abspath(path)))
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise UnsafeReportPath(f"{os.path.join(real, name)!r} is {kind}", _PATH_FIX)


def save(summary: Mapping[str, Any], path: str) -> None:
    """Write the JSON report to ``path``: owner-only, never through a symlink.

    The report is written to a new file next to ``path`` and renamed over
    it: a file already there (another user's too) is replaced, never written
    into; a symlink, FIFO or folder there is left alone (``OSError``). A
    file bind-mounted at the path (Docker ``-v``, a Kubernetes ``subPath``)
    cannot be renamed over (``EBUSY``): it is written in place, opened
    without following a symlink or waiting for a FIFO's reader, once
    ``fstat`` says it is a regular file.
    """
    name = os.path.basename(path)
    if name in ("", ".", ".."):
        raise UnsafeReportPath(f"{path!r} names a folder, not a file", _PATH_FIX)
    text = json.dumps(summary, indent=2) + "\n"
    folder = open_report_folder(path)
    try:
        with suppress(FileNotFoundError):
            mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(errno.EEXIST, "not a regular file, left alone", path)
        new = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(new, _CREATE, 0o600, dir_fd=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            try:
                os.rename(new, name, src_dir_fd=folder, dst_dir_fd=folder)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                _write_in_place(folder, name, text, path)  # a mount point: no rename
                os.unlink(new, dir_fd=folder)
        except BaseException:
            with suppress(OSError):
                os.unlink(new, dir_fd=folder)
            raise
    finally:
        os.close(folder)


def _write_in_place(folder: int, name: str, text: str, path: str) -> None:
    fd = os.open(name, _IN_PLACE, dir_fd=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EEXIST, "not a regular file, left alone", path)
        file.truncate(0)
        file.write(text)
        file.flush()
        os.fsync(fd)


def report(
    log: Any, record: MasterStopRecord, reports: Mapping[int, Any], path: str | None
) -> dict[str, Any]:
    """Log the summary line and the JSON report; save it to ``path`` if given.

    A worker's report that is not one a worker writes gets a warning naming
    the worker's pid, and the worker counts as killed.
    """
    for pid in record.workers:
        problem = report_problem(reports[pid]) if pid in reports else None
        if problem is not None:
            log.warning(
                "graceful_gunicorn: the shutdown report of worker %s is not valid (%s); "
                "the worker counts as killed",
                pid,
                problem,
            )
    summary = build(record, reports)
    workers = summary["workers"]
    level = log.warning if workers["killed"] or workers["forced"] else log.info
    level("graceful_gunicorn: %s", summary_line(summary))
    log.info("graceful_gunicorn: shutdown report %s", json.dumps(summary, separators=(",", ":")))
    if path is not None:
        try:
            save(summary, path)
        except OSError as exc:
            log.error("graceful_gunicorn: cannot write shutdown_report_path %r: %s", path, exc)
    return summary


__all__: Sequence[str] = [
    "MasterStopRecord",
    "UnsafeReportPath",
    "build",
    "check_report_path",
    "open_report_folder",
    "report",
    "report_problem",
    "save",
    "summary_line",
]
