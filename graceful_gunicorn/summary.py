"""The master's shutdown summary: one log line, one JSON report, optionally a file.

When the master exits (gunicorn's ``on_exit`` hook), it reads the report of
each worker it stopped (see :mod:`graceful_gunicorn.worker_reports`); a
worker without a report was killed or crashed on the way out.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("ok", "error", "timeout", "skipped")

_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


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
    clean = [pid for pid in record.workers if pid in reports]
    killed = [pid for pid in record.workers if pid not in reports]
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
        "workers": {"stopped": len(record.workers), "clean": len(clean), "killed": len(killed)},
        "killed_pids": killed,
        "requests": {"drained": drained, "abandoned": abandoned},
        "callbacks": callbacks,
        "worker_reports": [dict(reports[pid]) for pid in clean],
    }


def summary_line(summary: Mapping[str, Any]) -> str:
    """The one-line, human-readable form of :func:`build`'s result."""
    workers, requests, callbacks = summary["workers"], summary["requests"], summary["callbacks"]
    return (
        f"shutdown summary ({summary['reason']}, {summary['signal']}): "
        f"{workers['clean']} of {workers['stopped']} worker(s) stopped cleanly, "
        f"{workers['killed']} killed; {requests['drained']} request(s) drained, "
        f"{requests['abandoned']} abandoned; callbacks {callbacks['ok']} ok, "
        f"{callbacks['error']} failed, {callbacks['timeout']} timed out, "
        f"{callbacks['skipped']} skipped; {summary['duration']:.2f}s in all"
    )


def save(summary: Mapping[str, Any], path: str) -> None:
    """Write the JSON report to ``path``: owner-only, never through a symlink."""
    fd = os.open(path, _WRITE, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)
        json.dump(summary, file, indent=2)
        file.write("\n")


def report(
    log: Any, record: MasterStopRecord, reports: Mapping[int, Any], path: str | None
) -> dict[str, Any]:
    """Log the summary line and the JSON report; save it to ``path`` if given."""
    summary = build(record, reports)
    level = log.warning if summary["workers"]["killed"] else log.info
    level("graceful_gunicorn: %s", summary_line(summary))
    log.info("graceful_gunicorn: shutdown report %s", json.dumps(summary, separators=(",", ":")))
    if path is not None:
        try:
            save(summary, path)
        except OSError as exc:
            log.error("graceful_gunicorn: cannot write shutdown_report_path %r: %s", path, exc)
    return summary


__all__: Sequence[str] = ["MasterStopRecord", "build", "report", "save", "summary_line"]
