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

from graceful_gunicorn import summary, worker_reports
from graceful_gunicorn.server_config import check_report_directory
from graceful_gunicorn.settings import Settings, SettingsError

from .conftest import WORKER_CLASSES
from .server import BOOT_TIMEOUT, Gunicorn, wait_until
from .test_reports import logged_report
from .test_shutdown_signals import APP, GRACEFUL, worker_args

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


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (which holds no file or lock)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _dead_pid() -> int:
    """The pid of a process that has just exited (reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def report_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A fresh workers' folder in this test's own temporary folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(worker_reports, "_directory", None)
    monkeypatch.setattr(worker_reports, "_lock", None)
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
    """1. a FIFO sits at shutdown_report_path (nobody reads it) 2. SIGTERM.

    Result: the master exits 0 at once, the error names the setting, and the
    FIFO is left as it was (it used to block the master's exit forever).
    """
    path = tmp_path / "report.json"
    os.mkfifo(path, 0o600)
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=1), APP],
        {"GRACEFUL_SHUTDOWN_REPORT_PATH": str(path)},
    )
    server.wait_ready(workers=1)
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


def test_save_never_goes_through_a_symlinked_folder(tmp_path: Path) -> None:
    """The README promises 'never through a symlink': a symlink among the folders
    of the path is refused, and nothing is written where it points."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(summary.UnsafeReportPath, match="is a symlink"):
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
    "world-writable": (0o777, None, "other users can write to"),
    "world-writable-sticky": (0o1777, None, "other users can write to"),
    "group-writable": (0o770, None, "other users can write to"),
    "group-writable-sticky": (0o1770, None, "other users can write to"),
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
    assert "use a folder that only the server's user can write to" in message
    assert "\n" not in message
    with pytest.raises(summary.UnsafeReportPath):  # and it is checked again on save
        summary.save(_summary(), path)
    assert not os.path.lexists(path)


def test_start_up_refuses_a_symlinked_folder_and_an_open_folder_on_the_way(
    tmp_path: Path,
) -> None:
    """A symlink among the folders, and a folder on the way that anyone may
    rename things in (world-writable, not sticky), are refused too."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SettingsError, match="is a symlink"):
        check_report_directory(Settings(shutdown_report_path=str(tmp_path / "link" / "r.json")))
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    (open_parent / "mine").mkdir(mode=0o700)
    with pytest.raises(SettingsError, match="other users can write to"):
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
    assert line == (
        f"Error: graceful_gunicorn: shutdown_report_path={path!r}: other users can write "
        "to '/tmp' (mode 1777); use a folder that only the server's user can write to, "
        "reached without a symlink, e.g. one made with 'install -d -m 700 /var/lib/myapp' "
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
def test_report_folder_is_shared_with_the_workers_group_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The folder stays the master's; the workers' group may create files in it
    (not list it); a worker that really runs as nobody writes its report; a
    reload back to the master's user and group makes it private again."""
    monkeypatch.setattr(worker_reports, "_directory", None)
    monkeypatch.setattr(worker_reports, "_lock", None)
    folder = worker_reports.create(NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        info = os.stat(folder)
        assert (info.st_uid, info.st_gid) == (os.geteuid(), NOBODY.pw_gid)
        assert stat.S_IMODE(info.st_mode) == worker_reports.SHARED_MODE == 0o730
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
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
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
    assert report["workers"] == {"stopped": 2, "clean": 2, "killed": 0}
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
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    for pid in first.worker_pids():
        os.kill(pid, signal.SIGKILL)
    for pid in first.worker_pids():
        wait_until(partial(_gone, pid), 10, f"orphaned worker {pid} to exit")
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
def test_stale_folder_removal_touches_only_dead_masters_folders_of_ours(tmp_path: Path) -> None:
    """Removed: a folder named after a dead pid, ours, unlocked. Kept: another
    user's, a symlink (and what it points to), a live master's, one still
    locked (an orphaned worker holds it), and names without a pid."""
    dead = _dead_pid()

    def folder(name: str) -> Path:
        path = tmp_path / name
        path.mkdir(mode=0o700)
        return path

    stale = folder(f"graceful_gunicorn-{dead}-aaaaaaaa")
    (stale / "123.json").write_text("{}")
    (stale / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("keep me\n")
    theirs = folder(f"graceful_gunicorn-{dead}-bbbbbbbb")
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    target = folder("target")
    (target / "precious").write_text("keep me\n")
    (tmp_path / f"graceful_gunicorn-{dead}-cccccccc").symlink_to(target)
    live = folder(f"graceful_gunicorn-{os.getppid()}-dddddddd")
    locked = folder(f"graceful_gunicorn-{dead}-eeeeeeee")
    old_style = folder("graceful_gunicorn-ffffffff")
    held = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert worker_reports.remove_stale(str(tmp_path)) == [str(stale)]
    finally:
        os.close(held)
    assert not stale.exists()
    assert (tmp_path / "outside").read_text() == "keep me\n"
    assert theirs.is_dir() and live.is_dir() and locked.is_dir() and old_style.is_dir()
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
    assert built["workers"] == {"stopped": 3, "clean": 1, "killed": 1, "forced": 1}
    assert built["killed_pids"] == [13]
    assert [r["pid"] for r in built["worker_reports"]] == [11, 12]
    assert built["callbacks"]["ok"] == 2
    assert (
        "1 of 3 worker(s) stopped cleanly, 1 killed, 1 forced to exit; 0 request(s) drained"
    ) in summary.summary_line(built)

    plain = summary.build(_record(11, 13), reports)
    assert plain["workers"] == {"stopped": 2, "clean": 1, "killed": 1}
    assert "1 of 2 worker(s) stopped cleanly, 1 killed; 0 request(s) drained" in (
        summary.summary_line(plain)
    )
    not_forced = summary.build(_record(11), {11: {"pid": 11, "forced_exit": "yes"}})
    assert not_forced["workers"] == {"stopped": 1, "clean": 1, "killed": 0}
