"""The master's shutdown summary: one log line, one JSON report, optionally a file.

When the master exits (gunicorn's ``on_exit`` hook), it reads the report of
each worker it stopped (see :mod:`graceful_gunicorn.worker_reports`); a
worker without a report was killed or crashed on the way out, and one whose
report says ``"forced_exit": true`` finished its sequence but had to be
ended with ``os._exit`` (counted as forced, not clean).

The file named by ``shutdown_report_path`` is never written in place: the
report goes into a new file in the same folder (random name, created
exclusively, mode 0600), which is then renamed over the path. The folder is
reached one component at a time without following any symlink, and must be
one that no other user can write to (:func:`open_report_folder`); the
master checks it at start-up and again when it saves.
"""

from __future__ import annotations

import errno
import json
import os
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
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


@dataclass
class MasterStopRecord:
    """What the master knows of its own stop."""

    reason: str
    signal: str
    #: When the first stop signal came (monotonic), before any shutdown delay.
    signalled_at: float
    shutdown_delay: float = 0.0
    workers: list[int] = field(default_factory=list)


def build(record: MasterStopRecord, reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The summary of a server's shutdown as JSON-ready data."""
    reported = [pid for pid in record.workers if pid in reports]
    forced = [pid for pid in reported if reports[pid].get("forced_exit") is True]
    clean = [pid for pid in reported if pid not in forced]
    killed = [pid for pid in record.workers if pid not in reports]
    workers = {"stopped": len(record.workers), "clean": len(clean), "killed": len(killed)}
    if forced:
        workers["forced"] = len(forced)
    callbacks = {outcome: 0 for outcome in OUTCOMES}
    drained = abandoned = 0
    for report in reports.values():
        drained += int(report.get("requests_drained", 0))
        abandoned += int(report.get("requests_abandoned", 0))
        for callback in report.get("callbacks", []):
            outcome = callback.get("outcome")
            if outcome in callbacks:
                callbacks[outcome] += 1
    return {
        "event": "graceful_gunicorn.shutdown",
        "reason": record.reason,
        "signal": record.signal,
        "shutdown_delay": record.shutdown_delay,
        "duration": round(time.monotonic() - record.signalled_at, 3),
        "workers": workers,
        "killed_pids": killed,
        "requests": {"drained": drained, "abandoned": abandoned},
        "callbacks": callbacks,
        "worker_reports": [dict(reports[pid]) for pid in reported],
    }


def summary_line(summary: Mapping[str, Any]) -> str:
    """The one-line, human-readable form of :func:`build`'s result."""
    workers, requests, callbacks = summary["workers"], summary["requests"], summary["callbacks"]
    forced = f", {workers['forced']} forced to exit" if workers.get("forced") else ""
    return (
        f"shutdown summary ({summary['reason']}, {summary['signal']}): "
        f"{workers['clean']} of {workers['stopped']} worker(s) stopped cleanly, "
        f"{workers['killed']} killed{forced}; {requests['drained']} request(s) drained, "
        f"{requests['abandoned']} abandoned; callbacks {callbacks['ok']} ok, "
        f"{callbacks['error']} failed, {callbacks['timeout']} timed out, "
        f"{callbacks['skipped']} skipped; {summary['duration']:.2f}s in all"
    )


class UnsafeReportPath(OSError):
    """``shutdown_report_path`` is in a folder the report must not be written to."""


def open_report_folder(path: str) -> int:
    """A descriptor of the folder of ``path``, reached without following a symlink.

    Raises :class:`UnsafeReportPath` when a component of the folder is a
    symlink, or when another user can change what the path names: the
    folder itself is group- or world-writable (sticky or not: ``/tmp`` is
    refused), or a folder on the way is group- or world-writable without the
    sticky bit, or one of them belongs to a user other than this one or
    root. Raises ``OSError`` when a folder does not exist. The caller closes
    the descriptor.
    """
    folder = os.path.dirname(os.path.abspath(path))
    parts = [part for part in folder.split(os.sep) if part]
    fd = os.open(os.sep, _WALK)
    try:
        walked = os.sep
        _check_folder(fd, walked, last=not parts)
        for i, part in enumerate(parts):
            walked = os.path.join(walked, part)
            try:
                child = os.open(part, _WALK, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                    os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                ):
                    raise UnsafeReportPath(
                        f"{walked!r} is a symlink (to {os.path.realpath(walked)!r}); "
                        "the report is never written through one"
                    ) from None
                raise
            os.close(fd)
            fd = child
            _check_folder(fd, walked, last=i == len(parts) - 1)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_folder(fd: int, path: str, *, last: bool) -> None:
    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (0, os.geteuid()):
        raise UnsafeReportPath(f"{path!r} belongs to another user (uid {info.st_uid})")
    if mode & _OTHERS_WRITE and (last or not mode & stat.S_ISVTX):
        raise UnsafeReportPath(f"other users can write to {path!r} (mode {mode:04o})")


def save(summary: Mapping[str, Any], path: str) -> None:
    """Write the JSON report to ``path``: owner-only, never through a symlink.

    The report is written to a new file next to ``path`` and renamed over
    it: a file already there (another user's too) is replaced, never written
    into; a symlink, FIFO or folder there is left alone (``OSError``).
    """
    folder = open_report_folder(path)
    try:
        name = os.path.basename(path)
        with suppress(FileNotFoundError):
            mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(errno.EEXIST, "not a regular file, left alone", path)
        new = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(new, _CREATE, 0o600, dir_fd=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                os.fchmod(file.fileno(), 0o600)
                json.dump(summary, file, indent=2)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.rename(new, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with suppress(OSError):
                os.unlink(new, dir_fd=folder)
            raise
    finally:
        os.close(folder)


def report(
    log: Any, record: MasterStopRecord, reports: Mapping[int, Any], path: str | None
) -> dict[str, Any]:
    """Log the summary line and the JSON report; save it to ``path`` if given."""
    summary = build(record, reports)
    workers = summary["workers"]
    level = log.warning if workers["killed"] or workers.get("forced") else log.info
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
    "open_report_folder",
    "report",
    "save",
    "summary_line",
]
