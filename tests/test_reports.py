"""The master's shutdown summary and JSON report, after real shutdowns."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from .scenarios import APP, GRACEFUL, logged_report, worker_args
from .server import BOOT_TIMEOUT, Gunicorn, http_get, wait_until


def test_report_names_each_callback_outcome(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. two workers; on_shutdown has a hanging and a raising callback;
    shutdown_report_path is set 2. SIGTERM.

    Result: the summary line counts 2 clean workers and the failed and timed
    out callbacks; the JSON report (logged, and in the file, mode 0600) names
    each callback with its outcome and duration, and each phase.
    """
    path = tmp_path / "report.json"
    server = gunicorn(
        [*GRACEFUL, *worker_args("gthread"), "--graceful-timeout", "20", APP],
        {"MISBEHAVE": "hang,raise", "GRACEFUL_SHUTDOWN_REPORT_PATH": str(path)},
    )
    server.wait_ready(workers=2)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0

    assert (
        "shutdown summary (terminate, SIGTERM): 2 of 2 worker(s) stopped cleanly, 0 killed; "
        "0 request(s) drained, 0 abandoned; callbacks 8 ok, 2 failed, 2 timed out, 0 skipped"
    ) in server.log()
    saved = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved == logged_report(server)
    assert saved["workers"] == {"stopped": 2, "clean": 2, "killed": 0, "forced": 0, "not_booted": 0}
    assert saved["callbacks"] == {"ok": 8, "error": 2, "timeout": 2, "skipped": 0}
    for worker in saved["worker_reports"]:
        outcomes = {c["name"].rsplit(".", 1)[-1]: c["outcome"] for c in worker["callbacks"]}
        assert outcomes == {
            "b1": "ok",
            "hang": "timeout",
            "boom": "error",
            "o2": "ok",
            "o1": "ok",
            "a1": "ok",
        }
        assert all(c["duration"] >= 0 for c in worker["callbacks"])
        boom = next(c for c in worker["callbacks"] if c["outcome"] == "error")
        assert "boom from a callback" in boom["error"]
        phases = [p["name"] for p in worker["phases"]]
        assert phases == ["before_shutdown", "drain", "on_shutdown", "after_shutdown"]
    assert_worker_log_lines(server.log(), "terminate", "SIGTERM")


#: gunicorn's error log format: "[time] [pid] [LEVEL] message".
LINE = r"^\[[^\]]+\] \[{pid}\] \[{level}\] graceful_gunicorn: {message}"


def assert_worker_log_lines(log: str, reason: str, signal_name: str) -> None:
    """Each worker logged its start, each phase, and each failing callback, in order."""
    pids = re.findall(r"Booting worker with pid: (\d+)", log)
    assert pids
    for pid in pids:
        expected = [
            (
                "INFO",
                rf"shutdown started \(reason {reason}, signal {signal_name}, pid {pid}\): "
                r"[\d.]+s left, \d+ request\(s\) in flight, drain until [\d.]+s, "
                r"[\d.]+s kept for callbacks; plan: budget [\d.]+s .*$",
            ),
            ("INFO", r"before_shutdown done in [\d.]+s: 1 ok, 0 failed, 0 timed out, 0 skipped$"),
            ("INFO", r"drain done in [\d.]+s: 0 request\(s\) completed$"),
            (
                "ERROR",
                r"on_shutdown callback tests\.apps\.events_app\.boom failed after "
                r"[\d.]+s:$",
            ),
            (
                "ERROR",
                r"on_shutdown callback tests\.apps\.events_app\.hang timed out after "
                r"[\d.]+s and was abandoned$",
            ),
            ("WARNING", r"on_shutdown done in [\d.]+s: 2 ok, 1 failed, 1 timed out, 0 skipped$"),
            ("INFO", r"after_shutdown done in [\d.]+s: 1 ok, 0 failed, 0 timed out, 0 skipped$"),
        ]
        position = 0
        for level, message in expected:
            pattern = re.compile(LINE.format(pid=pid, level=level, message=message), re.M)
            found = pattern.search(log, position)
            assert found, f"worker {pid}: no line {level} {message!r} after {position}\n{log}"
            position = found.end()
        # the traceback follows the failing callback's line
        assert "RuntimeError: boom from a callback" in log


def test_summary_counts_a_worker_killed_mid_shutdown(gunicorn: Callable[..., Gunicorn]) -> None:
    """1. two workers, a slow on_shutdown callback 2. SIGTERM 3. SIGKILL one
    worker while its callbacks run.

    Result: the other worker stops cleanly; the summary counts one killed and
    names its pid.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync"), "--graceful-timeout", "20", APP], {"MISBEHAVE": "slow"}
    )
    server.wait_ready(workers=2)
    victim = server.worker_pids()[0]
    server.signal(signal.SIGTERM)
    wait_until(lambda: len(server.callbacks("before_shutdown")) == 2, 10, "both workers stopping")
    os.kill(victim, signal.SIGKILL)
    assert server.wait_exit(20) == 0

    report = logged_report(server)
    assert report["workers"] == {
        "stopped": 2,
        "clean": 1,
        "killed": 1,
        "forced": 0,
        "not_booted": 0,
    }
    assert report["killed_pids"] == [victim]
    assert report["requests"]["uncounted_workers"] == 1
    assert "1 of 2 worker(s) stopped cleanly, 1 killed" in server.log()
    assert "abandoned (not counting 1 worker(s) without a report)" in server.log()
    assert [e["pid"] for e in server.callbacks("after_shutdown")] != [victim]


def test_summary_counts_a_worker_sigkilled_after_its_report_as_killed(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. one worker whose atexit handler is slow 2. SIGTERM 3. once the handler
    runs (the worker's report is written), SIGSTOP the worker, so that gunicorn's
    stop() SIGKILLs it at graceful_timeout.

    Result: the summary counts the worker killed, not clean (the review found it
    counted clean: its report was there), and still counts its requests.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), "--graceful-timeout", "8", APP],
        {"MISBEHAVE": "atexit_slow"},
    )
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    server.signal(signal.SIGTERM)
    wait_until(lambda: server.events("atexit"), 10, "the worker's atexit handler")
    os.kill(worker, signal.SIGSTOP)
    assert server.wait_exit(20) == 0

    report = logged_report(server)
    assert report["workers"] == {
        "stopped": 1,
        "clean": 0,
        "killed": 1,
        "forced": 0,
        "not_booted": 0,
    }
    assert report["killed_pids"] == [worker]
    assert report["requests"]["uncounted_workers"] == 0
    assert [r["pid"] for r in report["worker_reports"]] == [worker]
    assert "0 of 1 worker(s) stopped cleanly, 1 killed;" in server.log()


def test_summary_counts_a_worker_that_crashed_mid_shutdown(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. two gthread workers; an on_shutdown callback makes the first worker
    that runs it exit at once (os._exit, as a crash) 2. SIGTERM.

    Result: the other worker runs all its callbacks; the summary counts one
    clean and one killed worker, naming the crashed one; the master exits 0
    without waiting for graceful_timeout.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args("gthread"), "--graceful-timeout", "20", APP],
        {"MISBEHAVE": "crash_one"},
    )
    server.wait_ready(workers=2)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0

    [crashed] = [e["pid"] for e in server.events("crashing")]
    report = logged_report(server)
    assert report["workers"] == {
        "stopped": 2,
        "clean": 1,
        "killed": 1,
        "forced": 0,
        "not_booted": 0,
    }
    assert report["killed_pids"] == [crashed]
    assert [e["pid"] for e in server.callbacks("after_shutdown")] == [
        pid for pid in server.worker_pids() if pid != crashed
    ]


def test_ctrl_c_to_the_whole_group_counts_every_worker_clean(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """Ctrl+C in a terminal signals every process; a worker may finish its quick
    stop before the master has read its own SIGINT. 1. two workers 2. SIGINT to
    each worker 3. once both ran after_shutdown, SIGINT to the master.

    Result: the summary counts both workers clean.
    """
    server = gunicorn([*GRACEFUL, *worker_args("gthread"), APP])
    server.wait_ready(workers=2)
    for worker in server.worker_pids():
        os.kill(worker, signal.SIGINT)
    wait_until(lambda: len(server.callbacks("after_shutdown")) == 2, 10, "both workers done")
    server.signal(signal.SIGINT)
    assert server.wait_exit(20) == 0
    assert "2 of 2 worker(s) stopped cleanly, 0 killed" in server.log()
    assert len(server.callbacks("after_shutdown")) == 2


def test_report_file_is_never_written_through_a_symlink(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. shutdown_report_path is a symlink to another file 2. start the master.

    Result: it exits 1 before any fork, with one line naming the setting (the
    report would replace the link, never write where it points, which is not
    what whoever made the link meant: refused at start-up, review F6, instead of
    an error at exit); the file it points to is untouched.
    """
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), APP],
        {"GRACEFUL_SHUTDOWN_REPORT_PATH": str(link)},
    )
    assert server.wait_exit(BOOT_TIMEOUT) == 1
    assert target.read_text() == "keep me\n"
    assert f"shutdown_report_path={str(link)!r}: {str(link)!r} is a symlink" in server.log()
    assert "Booting worker" not in server.log()


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_a_sigint_during_a_graceful_stop_makes_the_summary_quick(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a request is held 2. SIGTERM the master 3. once before_shutdown ran,
    SIGINT the master alone (Ctrl+C during a deploy's stop).

    Result: the workers stop quick, and so does the master's summary (review
    defect 12: it stayed "terminate, SIGTERM"), which names the SIGINT; no
    worker is left for gunicorn's SIGKILL.
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), APP])
    server.wait_ready(workers=1)
    client = threading.Thread(target=http_get, args=(server.port, "/hold/k"), daemon=True)
    client.start()
    wait_until(lambda: server.events("entered"), 30, "the held request")
    server.signal(signal.SIGTERM)
    wait_until(lambda: server.callbacks("before_shutdown"), 30, "before_shutdown")
    server.signal(signal.SIGINT)
    assert server.wait_exit(30) == 0
    log = server.log()
    assert "shutdown summary (quick, SIGTERM+SIGINT)" in log, log
    # gunicorn 25+ SIGKILLs 2 s after it relays the SIGINT: the worker's quick
    # budget counts from that relay (it counted from its own, later, handler).
    assert "worker(s) stopped cleanly, 0 killed" in log.split("shutdown summary")[1], log
    assert {e["reason"] for e in server.callbacks("on_shutdown")} == {"quick"}
