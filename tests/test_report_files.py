"""The files behind the shutdown report: ``shutdown_report_path`` and the workers' folder.

Real gunicorn masters where the defect lives in a real stop (a FIFO at the
report path, workers that run as another user, a stale report, a master
killed with SIGKILL), in-process tests for the rules themselves. The tests
run as root here: ``nobody``/``nogroup`` stand for the other user.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from graceful_gunicorn._core.settings import Settings, SettingsError
from graceful_gunicorn._gunicorn import summary, worker_reports
from graceful_gunicorn._gunicorn.process_state import STATE
from graceful_gunicorn._gunicorn.server_settings import check_report_directory

from .conftest import WORKER_CLASSES
from .scenarios import APP, GRACEFUL, logged_report, worker_args
from .server import BOOT_TIMEOUT, Gunicorn, process_gone, wait_until

NOBODY = pwd.getpwnam("nobody")
# Here the interpreter lives under /root (mode 0700): a worker that runs as
# nobody cannot import a module of the standard library itself. So the root
# master loads the app (--preload) and, from the config file, the one codec
# Flask imports lazily on the first request.
DROP_PRIVILEGES = ["--user", "nobody", "--group", "nogroup", "--preload"]
PRELOADING_CONFIG = "from graceful_gunicorn.conf import *  # noqa: F403\nimport encodings.idna\n"
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _record(*pids: int) -> summary.MasterStopRecord:
    return summary.MasterStopRecord("terminate", "SIGTERM", time.monotonic(), 0.0, list(pids))


def _summary() -> dict[str, Any]:
    return summary.build(_record(), {})


def _folders(parent: Path) -> list[Path]:
    return sorted(parent.glob("graceful_gunicorn-*"))


def _kill_with_its_workers(server: Gunicorn) -> None:
    """SIGKILL the master (on_exit never runs), then each orphaned worker, by pid."""
    server.signal(signal.SIGKILL)
    server.wait_exit(10)
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    for pid in server.worker_pids():
        wait_until(partial(process_gone, pid), 10, f"orphaned worker {pid} to exit")


def _dead_pid() -> int:
    """The pid of a process that has just exited (reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def report_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fresh workers' folder in this test's own temporary folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(STATE, "report_folder", None)
    monkeypatch.setattr(STATE, "report_folder_fd", None)
    try:
        yield Path(worker_reports.create())
    finally:
        worker_reports.remove()


@pytest.fixture
def private_tmp(tmp_path: Path) -> Path:
    """A TMPDIR for one gunicorn master: its report folder is the only one there."""
    folder = tmp_path / "tmp"
    folder.mkdir(mode=0o700)
    return folder


# -- 7. shutdown_report_path trusts what is already there --------------------------------


def test_report_path_on_a_fifo_does_not_hold_the_masters_exit(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. start 2. a FIFO appears at shutdown_report_path (nobody reads it;
    one there at start-up is refused, F6) 3. SIGTERM.

    Result: the master exits 0 at once, the error names the setting, and the
    FIFO is left as it was (it used to block the master's exit forever).
    """
    path = tmp_path / "report.json"
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), APP],
        {"GRACEFUL_SHUTDOWN_REPORT_PATH": str(path)},
    )
    server.wait_ready(workers=1)
    os.mkfifo(path, 0o600)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    assert "cannot write shutdown_report_path" in server.log()
    assert stat.S_ISFIFO(path.lstat().st_mode)


@ROOT_ONLY
def test_save_replaces_another_users_file_with_an_owner_only_one(tmp_path: Path) -> None:
    """A file another user made at the path is replaced, not filled: the report
    is ours, mode 0600, and that user's file (they may hold it open) is unchanged."""
    path = tmp_path / "report.json"
    path.write_text("theirs\n")
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    path.chmod(0o644)
    theirs = os.open(path, os.O_RDONLY)
    try:
        summary.save(_summary(), str(path))
        info = path.lstat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o600)
        assert json.loads(path.read_text())["event"] == "graceful_gunicorn.shutdown"
        assert os.pread(theirs, 100, 0) == b"theirs\n"
    finally:
        os.close(theirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left


@ROOT_ONLY
def test_save_never_goes_through_another_users_symlink(tmp_path: Path) -> None:
    """A symlink among the folders that belongs to another user is refused, and
    nothing is written where it points."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    os.lchown(tmp_path / "link", NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(summary.UnsafeReportPath, match=r"the symlink .* belongs to another user"):
        summary.save(_summary(), str(tmp_path / "link" / "report.json"))
    assert list(real.iterdir()) == []


def test_save_leaves_a_symlink_at_the_path_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "report.json").symlink_to(target)
    with pytest.raises(OSError, match="not a regular file"):
        summary.save(_summary(), str(tmp_path / "report.json"))
    assert target.read_text() == "keep me\n"
    assert (tmp_path / "report.json").is_symlink()


def _chown_nobody(path: Path) -> None:
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)


UNSAFE_FOLDERS: dict[str, tuple[int, Callable[[Path], None] | None, str]] = {
    # id: (mode of the report's folder, what else to do to it, what the error says)
    "world-writable": (0o777, None, "anyone can write to"),
    "world-writable-sticky": (0o1777, None, "anyone can write to"),
    "another-users": (0o755, _chown_nobody, "belongs to another user"),
}


@ROOT_ONLY
@pytest.mark.parametrize("case", UNSAFE_FOLDERS)
def test_start_up_refuses_a_folder_other_users_can_write(tmp_path: Path, case: str) -> None:
    mode, change, says = UNSAFE_FOLDERS[case]
    folder = tmp_path / "reports"
    folder.mkdir()
    folder.chmod(mode)
    if change is not None:
        change(folder)
    path = str(folder / "report.json")
    with pytest.raises(SettingsError) as raised:
        check_report_directory(Settings(shutdown_report_path=path))
    message = str(raised.value)
    assert message.startswith(f"shutdown_report_path={path!r}: ")
    assert says in message
    assert "use a folder owned by root or the master's user ('root', uid 0)" in message
    assert "\n" not in message
    with pytest.raises(summary.UnsafeReportPath):  # and it is checked again on save
        summary.save(_summary(), path)
    assert not os.path.lexists(path)


@ROOT_ONLY
def test_start_up_refuses_another_users_symlink_and_an_open_folder_on_the_way(
    tmp_path: Path,
) -> None:
    """Another user's symlink among the folders, and a folder on the way that
    anyone may rename things in (world-writable, not sticky), are refused."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    os.lchown(tmp_path / "link", NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(SettingsError, match=r"the symlink .* belongs to another user"):
        check_report_directory(Settings(shutdown_report_path=str(tmp_path / "link" / "r.json")))
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    (open_parent / "mine").mkdir(mode=0o700)
    with pytest.raises(SettingsError, match=r"anyone can write to .* a folder on the way"):
        check_report_directory(Settings(shutdown_report_path=str(open_parent / "mine" / "r.json")))


@pytest.mark.parametrize("mode", [0o700, 0o755])
def test_start_up_accepts_a_folder_only_its_owner_can_write(tmp_path: Path, mode: int) -> None:
    """tmp_path is under /tmp: a sticky world-writable folder on the way is fine."""
    folder = tmp_path / "reports"
    folder.mkdir()
    folder.chmod(mode)
    check_report_directory(Settings(shutdown_report_path=str(folder / "report.json")))
    summary.save(_summary(), str(folder / "report.json"))
    assert json.loads((folder / "report.json").read_text())["workers"]["stopped"] == 0


def test_master_refuses_a_report_path_in_tmp_before_any_fork(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. shutdown_report_path=/tmp/<name>.json 2. start the master.

    Result: it exits 1 before booting any worker, with one line that names the
    setting, why, and the fix.
    """
    path = f"/tmp/graceful-report-{os.getpid()}-{time.monotonic_ns()}.json"
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), APP],
        {"GRACEFUL_SHUTDOWN_REPORT_PATH": path},
    )
    assert server.wait_exit(BOOT_TIMEOUT) == 1
    log = server.log()
    (line,) = [line for line in log.splitlines() if "shutdown_report_path" in line]
    user = f"{pwd.getpwuid(os.geteuid()).pw_name!r}, uid {os.geteuid()}"
    assert line == (
        f"Error: graceful_gunicorn: shutdown_report_path={path!r}: anyone can write "
        "to '/tmp' (mode 1777), the report's folder; use a folder owned by root or the "
        f"master's user ({user}) that is not world-writable, reached only through folders "
        "and symlinks of those users, e.g. one made with 'install -d -m 755 /var/lib/myapp' "
        "(not /tmp)"
    )
    assert "Booting worker" not in log
    assert not os.path.lexists(path)


# -- 9. workers that run as another user (gunicorn's user/group) --------------------------


@ROOT_ONLY
@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_workers_running_as_another_user_report_their_clean_stop(
    gunicorn: Callable[..., Gunicorn], worker_class: str, tmp_path: Path
) -> None:
    """1. a root master with --user nobody --group nogroup, two workers 2. SIGTERM.

    Result: both workers write their reports into the master's folder; the
    summary says 2 of 2 clean (it said 0 of 2, 2 killed, and each worker
    logged 'shutdown sequence failed' with a PermissionError).
    """
    shared = Path(tempfile.mkdtemp(prefix="graceful-test-nobody-"))
    try:
        os.chown(shared, NOBODY.pw_uid, NOBODY.pw_gid)
        config = tmp_path / "gunicorn_conf.py"
        config.write_text(PRELOADING_CONFIG)
        server = gunicorn(
            ["-c", str(config), *worker_args(worker_class), *DROP_PRIVILEGES, APP],
            {"EVENTS_FILE": str(shared / "events.jsonl"), "RELEASE_DIR": str(shared)},
        )
        server.wait_ready(workers=2)
        server.signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0
        log = server.log()
        assert "shutdown sequence failed" not in log
        assert "2 of 2 worker(s) stopped cleanly, 0 killed;" in log
        report = logged_report(server)
        assert sorted(r["pid"] for r in report["worker_reports"]) == sorted(server.worker_pids())
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@ROOT_ONLY
def test_report_folder_is_given_to_the_workers_user_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The folder becomes the workers' (nobody:nogroup, 0700, as gunicorn's
    worker temporary files); a worker that really runs as nobody writes its
    report; a reload back to the master's user and group gives it back."""
    monkeypatch.setattr(STATE, "report_folder", None)
    monkeypatch.setattr(STATE, "report_folder_fd", None)
    folder = worker_reports.create(NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        info = os.stat(folder)
        assert (info.st_uid, info.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
        assert stat.S_IMODE(info.st_mode) == 0o700
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.setgid(NOBODY.pw_gid)
                os.setgroups([])
                os.setuid(NOBODY.pw_uid)
                worker_reports.write({"pid": os.getpid()})
                worker_reports.write({"pid": os.getpid(), "second": True})
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert worker_reports.collect([pid]) == {pid: {"pid": pid, "second": True}}
        assert os.stat(Path(folder) / f"{pid}.json").st_uid == NOBODY.pw_uid
        worker_reports.share_with_workers(os.geteuid(), os.getegid())
        info = os.stat(folder)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o700)
    finally:
        worker_reports.remove()


# -- 10. stale reports ------------------------------------------------------------------------


def _report_folder_of(tmpdir: Path) -> Path:
    (folder,) = _folders(tmpdir)
    return folder


def test_a_stale_report_under_a_reused_pid_is_replaced_by_the_workers_own(
    gunicorn: Callable[..., Gunicorn], private_tmp: Path
) -> None:
    """1. two workers 2. a report for the first worker's pid is already in the
    master's folder, as an earlier worker with the same pid left it 3. SIGTERM.

    Result: the worker writes its own report over it; the summary holds that
    one (before: the worker failed with FileExistsError and the master counted
    the stale report as its clean stop).
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync"), APP],
        {"TMPDIR": str(private_tmp), "MISBEHAVE": "raise"},
    )
    server.wait_ready(workers=2)
    reused = server.worker_pids()[0]
    stale = _report_folder_of(private_tmp) / f"{reused}.json"
    fd = os.open(stale, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, json.dumps({"pid": reused, "stale": True, "callbacks": []}).encode())
    os.close(fd)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0

    log = server.log()
    assert "shutdown sequence failed" not in log
    assert "2 of 2 worker(s) stopped cleanly, 0 killed;" in log
    (own,) = [r for r in logged_report(server)["worker_reports"] if r["pid"] == reused]
    assert "stale" not in own
    assert any(c["outcome"] == "error" for c in own["callbacks"])


def test_a_worker_stopped_alone_leaves_no_report_behind(
    gunicorn: Callable[..., Gunicorn], private_tmp: Path
) -> None:
    """1. two workers 2. SIGQUIT to the first one only (a quick stop of one
    worker: it writes its report and exits) 3. the master reaps it and boots a
    replacement 4. SIGTERM the master.

    Result: once the replacement booted, the stopped worker's report is gone
    from the folder (it stayed until the master exited); the summary counts
    the two workers it stopped, both clean.
    """
    server = gunicorn([*GRACEFUL, *worker_args("sync"), APP], {"TMPDIR": str(private_tmp)})
    server.wait_ready(workers=2)
    folder = _report_folder_of(private_tmp)
    alone = server.worker_pids()[0]
    os.kill(alone, signal.SIGQUIT)
    wait_until(lambda: len(server.worker_pids()) == 3, 20, "a replacement worker")
    server.wait_ready(workers=3)  # counts the stopped one's 'ready' line too
    assert [p.name for p in folder.iterdir()] == []

    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    report = logged_report(server)
    assert report["workers"] == {
        "stopped": 2,
        "clean": 2,
        "killed": 0,
        "forced": 0,
        "not_booted": 0,
    }
    assert alone not in [r["pid"] for r in report["worker_reports"]]


def test_a_second_write_replaces_the_first_and_a_stale_file(report_folder: Path) -> None:
    """In one worker: a report over a stale one of the same pid, then a second
    report (a forced exit): each replaces the last at once; no temporary stays."""
    mine = report_folder / f"{os.getpid()}.json"
    mine.write_text('{"stale": true}')
    worker_reports.write({"pid": os.getpid()})
    assert worker_reports.collect([os.getpid()]) == {os.getpid(): {"pid": os.getpid()}}
    before = mine.stat().st_ino
    worker_reports.write({"pid": os.getpid(), "forced_exit": True})
    assert mine.stat().st_ino != before  # a new file renamed into place
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    assert worker_reports.collect([os.getpid()])[os.getpid()]["forced_exit"] is True
    assert [p.name for p in report_folder.iterdir()] == [mine.name]


def test_master_discards_reports_and_skips_a_fifo(report_folder: Path) -> None:
    os.mkfifo(report_folder / "4000001.json")  # never blocks the master's exit
    (report_folder / "4000002.json").write_text('{"pid": 4000002}')
    assert worker_reports.collect([4000001, 4000002]) == {4000002: {"pid": 4000002}}
    worker_reports.discard([4000001, 4000002, 4000003])
    assert list(report_folder.iterdir()) == []


# -- 14. folders left by masters killed with SIGKILL --------------------------------------


def test_the_next_master_removes_the_folder_of_a_killed_one(
    gunicorn: Callable[..., Gunicorn], private_tmp: Path
) -> None:
    """1. a master with two workers 2. SIGKILL the master, then its orphaned
    workers (each by pid): its folder stays behind 3. start another master.

    Result: the new master removed the killed master's folder at start-up;
    only its own remains.
    """
    first = gunicorn([*GRACEFUL, *worker_args("sync"), APP], {"TMPDIR": str(private_tmp)})
    first.wait_ready(workers=2)
    (left,) = _folders(private_tmp)
    _kill_with_its_workers(first)
    assert _folders(private_tmp) == [left]  # on_exit never ran

    second = gunicorn([*GRACEFUL, *worker_args("sync"), APP], {"TMPDIR": str(private_tmp)})
    second.wait_ready(workers=2)
    assert not left.exists()
    (own,) = _folders(private_tmp)
    assert own.name.startswith(f"graceful_gunicorn-{second.pid}-")
    second.signal(signal.SIGTERM)
    assert second.wait_exit(20) == 0
    assert _folders(private_tmp) == []


@ROOT_ONLY
def test_stale_folder_removal_trusts_the_lock_not_the_pid_or_the_owner(tmp_path: Path) -> None:
    """Removed: unlocked folders of this version's name, whoever owns them (the
    workers' user after a privilege drop) and whatever pid they name (a live
    one: a restarted container's master has the dead one's). Kept: a symlink
    (and what it points to, and what a symlink inside points to), one still
    locked (a master or an orphaned worker holds it), one being made (.new,
    young), and old-style names that are young or not empty."""
    dead = _dead_pid()

    def folder(name: str) -> Path:
        path = tmp_path / name
        path.mkdir(mode=0o700)
        return path

    stale = folder(f"graceful_gunicorn-{dead}-aaaaaaaa")
    (stale / "123.json").write_text("{}")
    (stale / "sub").mkdir()
    (stale / "sub" / "link").symlink_to(tmp_path / "outside")
    (stale / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("keep me\n")
    theirs = folder(f"graceful_gunicorn-{dead}-bbbbbbbb")
    (theirs / "9.json").write_text("{}")
    os.chown(theirs / "9.json", NOBODY.pw_uid, NOBODY.pw_gid)
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    target = folder("target")
    (target / "precious").write_text("keep me\n")
    (tmp_path / f"graceful_gunicorn-{dead}-cccccccc").symlink_to(target)
    same_pid = folder(f"graceful_gunicorn-{os.getpid()}-dddddddd")
    locked = folder(f"graceful_gunicorn-{dead}-eeeeeeee")
    being_made = folder(f"graceful_gunicorn-{dead}-gggggggg.new")
    old_style = folder("graceful_gunicorn-ffffffff")
    held = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        removed = worker_reports.remove_stale(str(tmp_path))
        assert sorted(removed) == sorted([str(stale), str(theirs), str(same_pid)])
    finally:
        os.close(held)
    assert not stale.exists() and not theirs.exists() and not same_pid.exists()
    assert (tmp_path / "outside").read_text() == "keep me\n"
    assert locked.is_dir() and being_made.is_dir() and old_style.is_dir()
    assert (tmp_path / f"graceful_gunicorn-{dead}-cccccccc").is_symlink()
    assert (target / "precious").read_text() == "keep me\n"
    # once nothing holds its lock, the last stale one goes too
    assert worker_reports.remove_stale(str(tmp_path)) == [str(locked)]


def test_report_folder_is_named_after_its_master_and_locked(report_folder: Path) -> None:
    assert re.fullmatch(rf"graceful_gunicorn-{os.getpid()}-\w{{8,}}", report_folder.name)
    other = os.open(report_folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


# -- 18. a worker forced to exit after its sequence ---------------------------------------


def test_a_worker_forced_to_exit_is_counted_apart_from_clean_ones() -> None:
    """A report with "forced_exit": true counts in workers.forced, not clean;
    the line says so only then, and keeps today's wording otherwise."""
    reports = {
        11: {"pid": 11, "callbacks": [{"outcome": "ok"}]},
        12: {"pid": 12, "forced_exit": True, "callbacks": [{"outcome": "ok"}]},
    }
    built = summary.build(_record(11, 12, 13), reports)
    assert built["workers"] == {"stopped": 3, "clean": 1, "killed": 1, "forced": 1, "not_booted": 0}
    assert built["killed_pids"] == [13]
    assert built["forced_pids"] == [12]
    assert [r["pid"] for r in built["worker_reports"]] == [11, 12]
    assert built["callbacks"]["ok"] == 2
    assert (
        "1 of 3 worker(s) stopped cleanly, 1 killed, 1 forced to exit; 0 request(s) drained"
    ) in summary.summary_line(built)

    assert built["requests"]["uncounted_workers"] == 1
    assert "abandoned (not counting 1 worker(s) without a report);" in summary.summary_line(built)

    sigkilled = _record(11, 12)
    sigkilled.sigkilled = [11]
    killed_after_report = summary.build(sigkilled, reports)
    assert killed_after_report["workers"] == {
        "stopped": 2,
        "clean": 0,
        "killed": 1,
        "forced": 1,
        "not_booted": 0,
    }
    assert killed_after_report["killed_pids"] == [11]
    assert killed_after_report["requests"]["uncounted_workers"] == 0
    assert [r["pid"] for r in killed_after_report["worker_reports"]] == [11, 12]
    assert killed_after_report["callbacks"]["ok"] == 2

    plain = summary.build(_record(11, 13), reports)
    assert plain["workers"] == {"stopped": 2, "clean": 1, "killed": 1, "forced": 0, "not_booted": 0}
    assert plain["forced_pids"] == []
    assert "1 of 2 worker(s) stopped cleanly, 1 killed; 0 request(s) drained" in (
        summary.summary_line(plain)
    )
    not_forced = summary.build(_record(11), {11: {"pid": 11, "forced_exit": "yes"}})
    assert not_forced["workers"] == {
        "stopped": 1,
        "clean": 1,
        "killed": 0,
        "forced": 0,
        "not_booted": 0,
    }


# -- review F1: a worker's report of the wrong shape ---------------------------------------

BAD_REPORTS = {
    "drained-a-string": '{"pid": 1, "requests_drained": "x"}',
    "callbacks-an-object": '{"callbacks": {"a": 1}}',
    "callbacks-of-numbers": '{"callbacks": [1, 2]}',
    "abandoned-null": '{"requests_abandoned": null}',
    "outcome-a-list": '{"callbacks": [{"outcome": ["x"]}]}',
    "outcome-unknown": '{"callbacks": [{"outcome": "fine"}]}',
    "negative-count": '{"requests_drained": -3}',
    "name-a-number": '{"callbacks": [{"name": 7, "outcome": "ok"}]}',
    "phases-an-object": '{"phases": {"name": "drain"}}',
    "nan": '{"requests_drained": NaN}',
    "infinity": '{"requests_abandoned": Infinity}',
    "infinity-as-a-duration": '{"callbacks": [{"outcome": "ok", "duration": -Infinity}]}',
    "a-list": "[1, 2]",
    "not-json": "{",
    "nested-too-deep": "[" * 200_000 + "]" * 200_000,
}


@pytest.mark.parametrize("case", BAD_REPORTS)
def test_a_bad_report_counts_its_worker_as_killed(report_folder: Path, case: str) -> None:
    """Read back from the folder, a report of the wrong shape is no report: its
    worker counts as killed, the other worker's report still counts, and the
    summary is valid JSON (it raised TypeError/ValueError/AttributeError, or
    logged NaN)."""
    (report_folder / "4000001.json").write_text(BAD_REPORTS[case])
    (report_folder / "4000002.json").write_text('{"pid": 4000002, "requests_drained": 2}')
    reports = worker_reports.collect([4000001, 4000002])
    assert 4000001 not in reports or summary.report_problem(reports[4000001]) is not None
    built = summary.build(_record(4000001, 4000002), reports)
    assert built["workers"] == {"stopped": 2, "clean": 1, "killed": 1, "forced": 0, "not_booted": 0}
    assert built["killed_pids"] == [4000001]
    assert built["requests"] == {"drained": 2, "abandoned": 0, "uncounted_workers": 1}
    json.dumps(built, allow_nan=False)


def test_a_report_as_a_worker_writes_it_is_valid() -> None:
    """The real thing (ShutdownReport.as_dict) passes the check."""
    from graceful_gunicorn._core.report import CallbackResult, PhaseResult, ShutdownReport

    real = ShutdownReport("terminate", 5, 1, 1, 0, 0.5)
    real.phases.append(PhaseResult("drain", 0.1))
    real.callbacks.append(CallbackResult("app.flush", "on_shutdown", "error", 0.2, "boom"))
    assert summary.report_problem(real.as_dict()) is None
    assert summary.report_problem({**real.as_dict(), "forced_exit": True}) is None


BAD_REPORT_CONFIG = '''\
import os

from graceful_gunicorn.conf import *  # noqa: F403


def worker_exit(server, worker):
    """In the worker, after its report: replace it with the test's bad one."""
    from graceful_gunicorn._gunicorn.process_state import STATE

    folder = STATE.report_folder
    with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as file:
        file.write(os.environ["BAD_REPORT"])


def on_exit(server):
    with open(os.environ["ON_EXIT_MARK"], "w") as file:
        file.write("ran")
'''


@pytest.mark.parametrize("case", ["drained-a-string", "nan", "callbacks-of-numbers"])
def test_a_bad_worker_report_neither_stops_the_summary_nor_the_users_on_exit(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, private_tmp: Path, case: str
) -> None:
    """1. a user config whose worker_exit overwrites its worker's report with a
    bad one, and whose own on_exit writes a mark 2. two workers 3. SIGTERM.

    Result: the master exits 0, warns for each worker naming its pid, counts
    both killed, writes shutdown_report_path, runs the user's on_exit, and
    removes its folder (before: a traceback in on_exit, no summary, the
    user's on_exit never ran, the folder leaked, exit status 1).
    """
    config = tmp_path / "bad_report_conf.py"
    config.write_text(BAD_REPORT_CONFIG)
    mark = tmp_path / "on_exit.mark"
    path = tmp_path / "report.json"
    server = gunicorn(
        ["-c", str(config), *worker_args("sync"), APP],
        {
            "TMPDIR": str(private_tmp),
            "BAD_REPORT": BAD_REPORTS[case],
            "ON_EXIT_MARK": str(mark),
            "GRACEFUL_SHUTDOWN_REPORT_PATH": str(path),
        },
    )
    server.wait_ready(workers=2)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    log = server.log()
    for pid in server.worker_pids():
        assert f"the shutdown report of worker {pid} is not valid (" in log
    assert "0 of 2 worker(s) stopped cleanly, 2 killed;" in log
    assert json.loads(path.read_text())["workers"]["killed"] == 2
    assert mark.read_text() == "ran"
    assert _folders(private_tmp) == []
    assert "Traceback" not in log


# -- review F2: workers that run as another user own their folder --------------------------


@ROOT_ONLY
def test_another_account_of_the_workers_group_cannot_plant_anything(
    report_folder: Path,
) -> None:
    """1. the folder is shared with workers running as nobody:nogroup 2. another
    account whose group is nogroup too tries to plant a FIFO at a worker's
    report name. Result: EACCES (before: 0730 with group nogroup let it)."""
    worker_reports.share_with_workers(NOBODY.pw_uid, NOBODY.pw_gid)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgid(NOBODY.pw_gid)
            os.setgroups([NOBODY.pw_gid])
            os.setuid(54321)  # another service sharing nogroup
            # through the folder's descriptor: pytest's own folders above are 0700
            assert STATE.report_folder_fd is not None
            try:
                os.mkfifo("4000001.json", dir_fd=STATE.report_folder_fd)
            except PermissionError:
                status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(report_folder.iterdir()) == []


def test_a_workers_write_replaces_whatever_is_at_its_name(report_folder: Path) -> None:
    """A FIFO or a symlink at <pid>.json is replaced by the rename, not
    followed or refused (before: OSError 'not a regular file, left alone', so
    the worker's clean stop was lost)."""
    mine = report_folder / f"{os.getpid()}.json"
    outside = report_folder.parent / "outside.txt"
    outside.write_text("keep me\n")
    for plant in (partial(os.mkfifo, mine), partial(mine.symlink_to, outside)):
        plant()
        worker_reports.write({"pid": os.getpid()})
        assert worker_reports.collect([os.getpid()]) == {os.getpid(): {"pid": os.getpid()}}
        mine.unlink()
    assert outside.read_text() == "keep me\n"


@ROOT_ONLY
def test_workers_running_as_nobody_own_a_private_folder_and_the_next_master_cleans_it(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path, private_tmp: Path
) -> None:
    """1. a root master with --user nobody --group nogroup 2. while it serves,
    the folder is nobody:nogroup 0700 3. SIGKILL the master and its workers
    4. start a master again.

    Result: it removes the nobody-owned folder left behind (before: only
    folders owned by the master's own user were removed, and the folder was
    root:nogroup 0730).
    """
    shared = Path(tempfile.mkdtemp(prefix="graceful-test-nobody-"))
    private_tmp.chmod(0o1777)  # nobody's gunicorn worker files go to TMPDIR too
    try:
        os.chown(shared, NOBODY.pw_uid, NOBODY.pw_gid)
        config = tmp_path / "gunicorn_conf.py"
        config.write_text(PRELOADING_CONFIG)
        args = ["-c", str(config), *worker_args("sync"), *DROP_PRIVILEGES, APP]
        env = {
            "EVENTS_FILE": str(shared / "events.jsonl"),
            "RELEASE_DIR": str(shared),
            "TMPDIR": str(private_tmp),
        }
        first = gunicorn(args, env)
        first.wait_ready(workers=2)
        (left,) = _folders(private_tmp)
        info = left.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
            NOBODY.pw_uid,
            NOBODY.pw_gid,
            0o700,
        )
        _kill_with_its_workers(first)

        second = gunicorn(args, env)
        second.wait_ready(workers=2)
        assert not left.exists()
        second.signal(signal.SIGTERM)
        assert second.wait_exit(20) == 0
        assert "2 of 2 worker(s) stopped cleanly, 0 killed;" in second.log()
        assert _folders(private_tmp) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# -- review F3: a master with the dead one's pid (PID 1 in a container) --------------------


def test_a_master_with_the_dead_masters_pid_removes_its_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1. a folder named after this very pid, unlocked, as a container's PID 1
    master left it before the container restarted 2. this process makes its
    folder. Result: the old one is removed (before: _alive(os.getpid()) kept
    it forever); the new one is locked from the moment it has its name."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(STATE, "report_folder", None)
    monkeypatch.setattr(STATE, "report_folder_fd", None)
    old = tmp_path / f"graceful_gunicorn-{os.getpid()}-oldoldol"
    old.mkdir(mode=0o700)
    (old / "1.json").write_text("{}")
    try:
        own = Path(worker_reports.create())
        assert not old.exists()
        assert _folders(tmp_path) == [own]
        assert worker_reports.remove_stale(str(tmp_path)) == []  # its own is skipped
        assert own.is_dir()
    finally:
        worker_reports.remove()
    assert _folders(tmp_path) == []


# -- review F4: folders operators really use ------------------------------------------------


def _layout(tmp_path: Path, case: str) -> str:
    """The report path of one folder layout an operator really has."""
    if case == "fsgroup-volume-2775":
        folder = tmp_path / "volume"
        folder.mkdir()
        folder.chmod(0o2775)
        return str(folder / "report.json")
    if case == "group-writable-ancestor-0775":  # Ubuntu's /var/log, root:syslog
        parent = tmp_path / "log"
        parent.mkdir()
        parent.chmod(0o775)
        (parent / "myapp").mkdir(mode=0o755)
        return str(parent / "myapp" / "report.json")
    if case == "var-run-symlink":  # /var/run -> /run, absolute
        (tmp_path / "run").mkdir()
        (tmp_path / "var").mkdir()
        (tmp_path / "var" / "run").symlink_to(tmp_path / "run")
        return str(tmp_path / "var" / "run" / "report.json")
    assert case == "capistrano-current"  # current -> releases/20260101 (relative)
    (tmp_path / "releases" / "20260101" / "log").mkdir(parents=True)
    (tmp_path / "current").symlink_to("releases/20260101")
    return str(tmp_path / "current" / "log" / "report.json")


@pytest.mark.parametrize(
    "case",
    [
        "fsgroup-volume-2775",
        "group-writable-ancestor-0775",
        "var-run-symlink",
        "capistrano-current",
    ],
)
def test_start_up_accepts_the_folders_operators_use(tmp_path: Path, case: str) -> None:
    """Group-writable folders and ancestors, and symlinks of root or the
    master's user on the way, pass start-up and the report is saved there
    (before: each was refused at start-up)."""
    path = _layout(tmp_path, case)
    check_report_directory(Settings(shutdown_report_path=path))
    summary.save(_summary(), path)
    assert json.loads(Path(path).read_text())["event"] == "graceful_gunicorn.shutdown"


def test_master_writes_its_report_into_a_group_writable_folder_through_a_symlink(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. shutdown_report_path=<tmp>/current/log/report.json, current -> a
    release, log 2775 (Capistrano, fsGroup) 2. SIGTERM.

    Result: the master starts, exits 0 and writes the report (before: it exited
    1 at start-up, 'is a symlink').
    """
    path = _layout(tmp_path, "capistrano-current")
    Path(path).parent.chmod(0o2775)
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), APP],
        {"GRACEFUL_SHUTDOWN_REPORT_PATH": path},
    )
    server.wait_ready(workers=1)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(20) == 0
    assert json.loads(Path(path).read_text())["workers"]["clean"] == 1


# -- review F5: a file bind-mounted at the path --------------------------------------------


@ROOT_ONLY
@pytest.mark.parametrize("source_on", ["another-filesystem", "the-same-filesystem"])
def test_save_writes_into_a_bind_mounted_file(tmp_path: Path, source_on: str) -> None:
    """1. a file bind-mounted at shutdown_report_path (Docker -v, a Kubernetes
    subPath) 2. save. Result: the report is in the mounted file, which stays
    a mount point, and no temporary is left (before: rename failed with EBUSY
    and the report was lost)."""
    if source_on == "another-filesystem":
        host = Path(tempfile.mkdtemp(dir="/dev/shm")) / "report.json"
    else:
        host = tmp_path / "host-report.json"
    host.write_text("old report, longer than nothing at all\n" * 100)
    folder = tmp_path / "app"
    folder.mkdir()
    path = folder / "report.json"
    path.touch()
    subprocess.run(["mount", "--bind", str(host), str(path)], check=True)
    try:
        check_report_directory(Settings(shutdown_report_path=str(path)))
        summary.save(_summary(), str(path))
        assert json.loads(host.read_text())["event"] == "graceful_gunicorn.shutdown"
        assert f" {path} " in Path("/proc/self/mounts").read_text()  # still mounted
        assert sorted(p.name for p in folder.iterdir()) == ["report.json"]
    finally:
        subprocess.run(["umount", str(path)], check=True)
        if source_on == "another-filesystem":
            shutil.rmtree(host.parent)


# -- review F6: what is at the path itself --------------------------------------------------


def _at_path(tmp_path: Path, case: str) -> tuple[str, str]:
    path = tmp_path / "report.json"
    if case == "folder":
        path.mkdir()
        return str(path), "is a folder"
    if case == "fifo":
        os.mkfifo(path)
        return str(path), "is a FIFO"
    if case == "symlink":
        (tmp_path / "precious.txt").write_text("keep me\n")
        path.symlink_to(tmp_path / "precious.txt")
        return str(path), "is a symlink"
    assert case == "trailing-slash"
    return str(path) + "/", "names a folder, not a file"


@pytest.mark.parametrize("case", ["folder", "fifo", "symlink", "trailing-slash"])
def test_start_up_refuses_what_cannot_become_the_report(tmp_path: Path, case: str) -> None:
    """A folder, FIFO or symlink at the path, or a path ending in '/', fails at
    start-up with one line (before: it started, and the report was lost at exit)."""
    path, says = _at_path(tmp_path, case)
    with pytest.raises(SettingsError) as raised:
        check_report_directory(Settings(shutdown_report_path=path))
    message = str(raised.value)
    assert message.startswith(f"shutdown_report_path={path!r}: ")
    assert says in message
    assert message.endswith("; name a regular file, or one that does not exist yet")
    assert "\n" not in message


def test_master_refuses_a_folder_at_the_report_path_before_any_fork(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    """1. shutdown_report_path names a folder 2. start. Result: exit 1, one
    line, no worker booted (before: it served and lost the report at exit)."""
    (tmp_path / "report.json").mkdir()
    path = str(tmp_path / "report.json")
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), APP],
        {"GRACEFUL_SHUTDOWN_REPORT_PATH": path},
    )
    assert server.wait_exit(BOOT_TIMEOUT) == 1
    log = server.log()
    assert f"shutdown_report_path={path!r}: {path!r} is a folder; name a regular file" in log
    assert "Booting worker" not in log


# -- review F7: folders of earlier development versions --------------------------------------


@ROOT_ONLY
def test_old_style_folders_are_removed_only_when_empty_ours_and_a_day_old(
    tmp_path: Path,
) -> None:
    """graceful_gunicorn-<random> (no pid, no lock): removed when empty, this
    user's and older than a day; kept otherwise (before: never removed)."""
    day_and_more = time.time() - 25 * 3600

    def old(name: str, *, age: float = day_and_more) -> Path:
        path = tmp_path / f"graceful_gunicorn-{name}"
        path.mkdir(mode=0o700)
        os.utime(path, (age, age))
        return path

    gone = old("aaaa1111")
    young = old("bbbb2222", age=time.time())
    full = old("cccc3333")
    (full / "12.json").write_text("{}")
    os.utime(full, (day_and_more, day_and_more))
    theirs = old("dddd4444")
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    assert worker_reports.remove_stale(str(tmp_path)) == [str(gone)]
    assert young.is_dir() and full.is_dir() and theirs.is_dir()


def test_a_child_counts_running_without_os_waitid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The master's SIGKILL bookkeeping never raises: macOS before Python 3.13 has
    no os.waitid (the master crashed in gunicorn's stop(), before its SIGKILL)."""
    import subprocess
    import sys

    from graceful_gunicorn._gunicorn import master

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert master._running(child.pid)
        monkeypatch.delattr(os, "waitid")
        assert master._running(child.pid)
    finally:
        child.kill()
        child.wait(10)
    monkeypatch.undo()
    assert not master._running(child.pid)  # reaped: no longer our child
