"""Real gunicorn masters and workers, real signals, real HTTP on 127.0.0.1.

Each scenario is run for the sync, gthread and gevent workers.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable

import pytest
from gunicorn import version_info as gunicorn_version_info

from .conftest import WORKER_CLASSES
from .scenarios import APP, GRACEFUL, send_in_background, worker_args
from .server import Gunicorn, Response, http_get, wait_until


def in_flight_per_class(worker_class: str) -> int:
    # Two sync workers serve one request each. One gthread worker may accept
    # every connection, so no more than its 4 threads; gevent takes any number.
    return {"sync": 2, "gthread": 4, "gevent": 6}[worker_class]


@pytest.mark.parametrize("preload", [False, True], ids=["", "preload"])
@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_completes_in_flight_requests_then_runs_callbacks(
    gunicorn: Callable[..., Gunicorn], worker_class: str, preload: bool
) -> None:
    """1. two workers (app loaded in each, or in the master with --preload)
    hold plain and streaming requests 2. SIGTERM the master.

    Result: every request ends 200 with its whole body; each worker runs
    on_shutdown once, after its last request finished, in the app context,
    newest first (o2 before o1); the master exits 0.
    """
    options = ["--preload"] if preload else []
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class), *options, "--graceful-timeout", "20", APP]
    )
    server.wait_ready(workers=2)
    count = in_flight_per_class(worker_class)
    keys = [f"r{i}" for i in range(count)]
    paths = [f"/hold/{k}" if i % 2 == 0 else f"/stream/{k}" for i, k in enumerate(keys)]
    results, threads = send_in_background(server, paths)
    wait_until(lambda: len(server.events("entered")) == count, 20, "all requests in flight")

    server.signal(signal.SIGTERM)
    wait_until(lambda: len(server.callbacks("before_shutdown")) == 2, 20, "before_shutdown")
    time.sleep(0.2)  # not synchronisation: lets a wrong implementation run callbacks too early
    busy = {e["pid"] for e in server.events("entered")}
    early = [e for e in server.callbacks("on_shutdown") if e["pid"] in busy]
    assert early == [], "on_shutdown ran while its worker had requests in flight"
    for key in keys:
        server.release(key)
    assert server.wait_exit(30) == 0
    for thread in threads:
        thread.join(10)

    assert [r.status for r in results] == [200] * count, [r.error for r in results]
    for key, path, result in zip(keys, paths, results, strict=True):
        if path.startswith("/hold"):
            assert result.body == f"held {key}\n".encode() + b"x" * 10_000
        else:
            assert result.body.decode().splitlines() == [f"first {key}"] + [
                f"chunk {i} {key}" for i in range(5)
            ]
    on_shutdown = server.callbacks("on_shutdown")
    worker_pids = {e["pid"] for e in server.callbacks("before_shutdown")}
    assert {e["pid"] for e in on_shutdown} == worker_pids
    for pid in worker_pids:
        mine = [e for e in on_shutdown if e["pid"] == pid]
        assert [e["name"] for e in mine] == ["o2", "o1"]
        assert all(e["app_context"] and e["in_flight"] == 0 for e in mine)
        assert all(e["reason"] == "terminate" for e in mine)
    for pid in busy:
        finished_at = max(float(e["t"]) for e in server.events("finished") if e["pid"] == pid)  # type: ignore[arg-type]
        assert all(float(e["t"]) > finished_at for e in on_shutdown if e["pid"] == pid)  # type: ignore[arg-type]
    assert len(server.callbacks("after_shutdown")) == 2
    assert "graceful_gunicorn: drain done" in server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigint_right_after_writes_loses_none(
    gunicorn: Callable[..., Gunicorn], worker_class: str, tmp_path: object
) -> None:
    """1. 200 acknowledged writes to the example app 2. SIGINT the master at once.

    Result: with graceful_gunicorn all 200 rows are in SQLite; plain gunicorn
    (same app, no graceful_gunicorn config) stores none of them.
    """
    saved = {}
    for mode in ("graceful", "plain"):
        db = f"{tmp_path}/{mode}.sqlite3"
        env = {"EXAMPLE_DB": db, "EXAMPLE_FLUSH_INTERVAL": "3600"}
        config = GRACEFUL if mode == "graceful" else []
        server = gunicorn(
            [
                *config,
                *worker_args(worker_class),
                "--graceful-timeout",
                "15",
                "example_app.app:app",
            ],
            env,
        )
        server.wait_ready(workers=2, path="/")
        for i in range(200):
            assert http_get(server.port, f"/items/add?value={mode}{i}").ok
        server.signal(signal.SIGINT)
        server.wait_exit(20)
        import sqlite3
        from contextlib import closing

        # "with connection" only commits; Python 3.13 warns about a connection left open.
        with closing(sqlite3.connect(db)) as connection:
            (saved[mode],) = connection.execute("SELECT COUNT(*) FROM items").fetchone()
    assert saved["graceful"] == 200
    assert saved["plain"] < 200


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sighup_runs_old_workers_callbacks_with_reason_reload(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. two workers, requests sent all along 2. SIGHUP the master.

    Result: every request succeeds; both old workers run their callbacks with
    reason "reload"; new workers serve.
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class), APP])
    server.wait_ready(workers=2)
    old = set(server.worker_pids())
    failures: list[Response] = []
    stop = threading.Event()

    def load() -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            result = http_get(server.port, "/hello", 10)
            if not result.ok:
                failures.append(result)

    client = threading.Thread(target=load, daemon=True)
    client.start()
    server.signal(signal.SIGHUP)
    wait_until(lambda: len(server.callbacks("after_shutdown")) == 2, 30, "old workers' callbacks")
    wait_until(lambda: len(server.worker_pids()) >= 4, 30, "new workers")
    time.sleep(0.5)  # keep the load going a little on the new workers
    stop.set()
    client.join(20)

    assert failures == []
    callbacks = server.callbacks()
    assert {e["pid"] for e in callbacks} == old
    assert {e["reason"] for e in callbacks} == {"reload"}
    assert http_get(server.port, "/hello").ok


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_max_requests_recycles_with_reason_recycle(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. one worker with max_requests=5 2. send requests one after another,
    waiting for each recycle, until two workers were recycled (at most 200).

    Result: every request succeeds; the recycled workers ran their callbacks
    with reason "recycle".
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--max-requests", "5", APP]
    )
    server.wait_ready(workers=1)
    results = []
    for _ in range(200):
        results.append(http_get(server.port, "/hello", 10))
        # gevent keeps accepting for up to 1 s after max_requests: let the
        # recycle happen before sending more, or one worker takes them all.
        restarts = server.log().count("Autorestarting worker")
        wait_until(lambda n=restarts: len(server.callbacks("after_shutdown")) >= n, 20, "recycle")
        if restarts >= 2:
            break
    assert [r.error for r in results if not r.ok] == []
    assert len(server.callbacks("after_shutdown")) >= 2
    assert {e["reason"] for e in server.callbacks()} == {"recycle"}


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigttou_stops_one_worker_with_reason_recycle(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. two workers, one holding a request 2. SIGTTOU the master (one worker fewer).

    Result: exactly one worker runs its callbacks, with reason "recycle"; the
    held request completes; the server keeps answering with one worker.
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class), APP])
    server.wait_ready(workers=2)
    results, threads = send_in_background(server, ["/hold/ttou"])
    wait_until(lambda: server.events("entered"), 10, "the request to be in flight")
    server.signal(signal.SIGTTOU)
    wait_until(lambda: server.callbacks("before_shutdown"), 10, "one worker's stop")
    server.release("ttou")
    wait_until(lambda: server.callbacks("after_shutdown"), 20, "its callbacks")
    threads[0].join(10)

    assert results[0].ok, results[0].error
    assert len({e["pid"] for e in server.callbacks()}) == 1
    assert {e["reason"] for e in server.callbacks()} == {"recycle"}
    assert [e["name"] for e in server.callbacks()] == ["b1", "o2", "o1", "a1"]
    for _ in range(5):
        assert http_get(server.port, "/hello").ok
    assert len(server.worker_pids()) == 2, "no worker was started in its place"


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_hanging_and_raising_callbacks_are_contained(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. on_shutdown has a callback that hangs and one that raises 2. SIGTERM.

    Result: the hang is cut at its 1 s timeout, the error is logged with its
    traceback, the other callbacks still run, and the master exits well
    before graceful_timeout.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "20", APP],
        {"MISBEHAVE": "hang,raise"},
    )
    server.wait_ready(workers=1)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0
    elapsed = time.monotonic() - started

    log = server.log()
    assert "on_shutdown callback tests.apps.events_app.hang timed out" in log
    assert "on_shutdown callback tests.apps.events_app.boom failed" in log
    assert "RuntimeError: boom from a callback" in log
    assert [e["name"] for e in server.callbacks("on_shutdown")] == ["hang-start", "o2", "o1"]
    assert len(server.callbacks("after_shutdown")) == 1
    assert elapsed < 10


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_second_sigint_ends_the_worker_at_once(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. an on_shutdown callback hangs with a 10 s timeout 2. SIGINT to the
    process group (master and worker) 3. SIGINT again to the worker.

    Result: the worker exits at once on the second SIGINT, long before the
    callback's timeout.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "30", APP],
        {"MISBEHAVE": "hang_quick", "GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "20"},
    )
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    server.signal_group(signal.SIGINT)  # Ctrl+C: one send to the whole group
    wait_until(lambda: server.callbacks("on_shutdown"), 10, "the hanging callback to start")
    time.sleep(0.3)  # a second Ctrl+C is a separate keystroke, not the same group signal
    started = time.monotonic()
    os.kill(worker, signal.SIGINT)
    server.wait_exit(10)
    assert time.monotonic() - started < 3
    assert "second quick stop signal, exiting now" in server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_group_sigquit_is_one_stop_however_late_the_master_passes_it_on(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """Ctrl+\\ (or ``kill -QUIT -PGID``, or an init that forwards signals to the
    group) gives a worker SIGQUIT twice: once itself, once from the master,
    whenever the master gets to run. 1. an on_shutdown callback takes 3 s
    2. the master is stopped (SIGSTOP), as a busy machine may leave it
    unscheduled 3. SIGQUIT to the group 4. once the worker's callbacks run,
    a second later, the master continues and passes its SIGQUIT on.

    Result: one quick stop: every callback runs, the worker does not take the
    master's SIGQUIT for a second stop.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "30", APP],
        {"MISBEHAVE": "slow_quick", "GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "10"},
    )
    server.wait_ready(workers=1)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        server.signal_group(signal.SIGQUIT)
        wait_until(lambda: server.callbacks("on_shutdown"), 10, "the worker's quick stop")
        time.sleep(1)  # the scenario: the master runs late; not synchronisation
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert server.wait_exit(20) == 0
    assert "second quick stop signal" not in server.log()
    names = [e["name"] for e in server.callbacks("on_shutdown")]
    assert names == ["slow-start", "slow-done", "o2", "o1"]
    assert len(server.callbacks("after_shutdown")) == 1


#: tgkill(2) by architecture: a signal for one thread of another process.
_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}


def signal_thread(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to thread ``tid`` of process ``pid`` (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_TGKILL[platform.machine()], pid, tid, sig) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() not in _SYS_TGKILL,
    reason="tgkill(2) through ctypes: Linux on x86_64 or aarch64",
)
@pytest.mark.parametrize(
    "worker_class",
    [
        "sync",
        "gthread",
    ],
)
def test_quick_signal_taken_by_another_thread_starts_the_stop_at_once(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """The kernel gives a process-directed signal to any thread of the worker
    that does not block it: it picks another thread than the main one (where
    Python runs the handler) when the main thread already has a signal pending
    and is not running, which is what Ctrl+C does on a busy machine (the
    group's SIGINT and the master's SIGQUIT come together). This test makes it
    happen every time: 1. an idle worker with --timeout 120 (the sync worker's
    loop waits up to 60 s in select) 2. SIGINT to one of its other threads.

    Result: the quick stop starts at once (its callbacks run), not when the
    main loop wakes up by itself. (A gevent worker has no other thread: its
    coordinator is a greenlet, so the kernel always picks the main thread.)
    """
    server = gunicorn([*GRACEFUL, *worker_args(worker_class, workers=1), "--timeout", "120", APP])
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{worker}/task") if int(tid) != worker)
    assert others, "the worker has no thread but its main one"
    signal_thread(worker, others[0], signal.SIGINT)
    wait_until(lambda: server.callbacks("after_shutdown"), 10, "the quick stop's callbacks")
    assert [e["reason"] for e in server.callbacks("on_shutdown")] == ["quick", "quick"]


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigint_during_graceful_stop_skips_the_drain(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a request is held in flight 2. SIGTERM the master 3. once before_shutdown
    ran, SIGINT the master alone (not its process group).

    Result: the worker stops draining and runs on_shutdown and after_shutdown
    with reason "quick"; the master exits long before graceful_timeout, with
    the request still held. gunicorn before 25 does not pass this SIGINT on.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "30", APP]
    )
    server.wait_ready(workers=1)
    _, threads = send_in_background(server, ["/hold/held"])
    wait_until(lambda: len(server.events("entered")) == 1, 20, "the request in flight")
    server.signal(signal.SIGTERM)
    wait_until(lambda: server.callbacks("before_shutdown"), 20, "before_shutdown")
    started = time.monotonic()
    server.signal(signal.SIGINT)
    server.wait_exit(20)
    assert time.monotonic() - started < 8
    assert [e["name"] for e in server.callbacks("on_shutdown")] == ["o2", "o1"]
    assert {e["reason"] for e in server.callbacks("on_shutdown")} == {"quick"}
    assert len(server.callbacks("after_shutdown")) == 1
    assert server.events("finished") == []
    server.release("held")
    for thread in threads:
        thread.join(10)


def test_idle_keepalive_connection_does_not_stall_a_recycle(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. a gthread worker with max_requests=3 and timeout=4 2. one request on a
    connection that is then kept alive and idle 3. a third request recycles it.

    Result: the worker runs its callbacks with reason "recycle" within a few
    seconds and the master never times it out (gunicorn 24-26 wait for an idle
    keep-alive connection until graceful_timeout, without heartbeats).
    """
    import http.client

    server = gunicorn(
        [
            *GRACEFUL,
            *worker_args("gthread", workers=1),
            *("--max-requests", "3", "--timeout", "4", "--keep-alive", "5"),
            *("--graceful-timeout", "20", APP),
        ]
    )
    server.wait_ready(workers=1)  # its request is the first of three
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        idle.request("GET", "/hello")
        assert idle.getresponse().read() == b"hello\n"
        started = time.monotonic()
        assert http_get(server.port, "/hello").ok
        wait_until(lambda: server.callbacks("after_shutdown"), 15, "the recycle")
        assert time.monotonic() - started < 5
    finally:
        idle.close()
    assert {e["reason"] for e in server.callbacks()} == {"recycle"}
    assert "WORKER TIMEOUT" not in server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_second_group_sigquit_ends_the_worker_at_once(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. an on_shutdown callback hangs with a 10 s timeout 2. Ctrl+\\ (SIGQUIT to
    the process group) 3. once the callback runs, Ctrl+\\ again.

    Result: the worker exits at once on the second one: the master's own SIGQUIT
    had merged with the first (signals do not queue), so the second is no relay.
    (Most runs on a busy machine waited for the 20 s quick budget.)
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "30", APP],
        {"MISBEHAVE": "hang_quick", "GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "20"},
    )
    server.wait_ready(workers=1)
    (worker,) = server.worker_pids()
    # The worker is held (SIGSTOP) while the group's SIGQUIT and the master's own
    # reach it, so that they merge into one, as on a busy machine.
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(worker) == "T", 10, "the worker to stop")
        server.signal_group(signal.SIGQUIT)
        wait_until(lambda: signal.SIGQUIT in pending_signals(worker), 10, "the group's SIGQUIT")
        wait_until(
            lambda: (
                "quick stop passed on to the workers" in server.log()
                or (gunicorn_version_info < (25, 0) and "Handling signal: quit" in server.log())
            ),
            10,
            "the master's SIGQUIT",
        )
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: server.callbacks("on_shutdown"), 10, "the hanging callback to start")
    time.sleep(0.3)  # the scenario: a second Ctrl+\ is a separate keystroke (RELAY_WINDOW)
    started = time.monotonic()
    server.signal_group(signal.SIGQUIT)
    server.wait_exit(10)
    assert time.monotonic() - started < 3
    assert "second quick stop signal, exiting now" in server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
@pytest.mark.parametrize(
    ("first", "second"), [(signal.SIGINT, signal.SIGQUIT), (signal.SIGQUIT, signal.SIGINT)]
)
def test_ctrl_c_and_ctrl_backslash_are_two_stops(
    gunicorn: Callable[..., Gunicorn], worker_class: str, first: int, second: int
) -> None:
    """1. an on_shutdown callback hangs with a 20 s quick budget 2. Ctrl+C (or
    Ctrl+\\) to the process group; the master passes its SIGQUIT on 3. the other
    key, a separate keystroke later.

    Result: the worker exits at once on the second key: the master's SIGQUIT was
    taken for the relay of the first, so the user's is a second stop. (Ctrl+C
    then Ctrl+\\ waited out the quick budget when the master noted its relay
    after the worker's handler ran; the other order always did.)
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "30", APP],
        {"MISBEHAVE": "hang_quick", "GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "20"},
    )
    server.wait_ready(workers=1)
    server.signal_group(first)
    wait_until(lambda: server.callbacks("on_shutdown"), 10, "the hanging callback to start")
    wait_until(
        lambda: "quick stop passed on to the workers" in server.log(), 10, "the master's SIGQUIT"
    )
    time.sleep(0.5)  # the scenario: a separate keystroke, not synchronisation
    started = time.monotonic()
    server.signal_group(second)
    server.wait_exit(10)
    assert time.monotonic() - started < 3
    assert "second quick stop signal, exiting now" in server.log()


def pending_signals(pid: int) -> set[int]:
    """The signals pending for process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("ShdPnd:"):
                mask = int(line.split()[1], 16)
                return {n for n in range(1, 65) if mask & (1 << (n - 1))}
    return set()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_one_group_sigquit_runs_every_workers_callbacks(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. two workers; an on_shutdown callback hangs 2. one Ctrl+\\ (SIGQUIT to the
    process group).

    Result: no worker takes the master's SIGQUIT for a second stop, however soon it
    comes: both run on_shutdown and after_shutdown.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=2), "--graceful-timeout", "30", APP],
        {"MISBEHAVE": "hang_quick", "GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "4"},
    )
    server.wait_ready(workers=2)
    server.signal_group(signal.SIGQUIT)
    assert server.wait_exit(20) == 0
    assert "second quick stop signal" not in server.log()
    assert len(server.callbacks("after_shutdown")) == 2, server.log()


def process_state(pid: int) -> str:
    """The state letter of process ``pid`` (Linux /proc): R, S, T (stopped), Z, ..."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]
