"""Signals at awkward moments: none hangs a worker, runs a callback twice, or
makes the master wait for graceful_timeout without cause.

Real gunicorn masters and workers, real signals, on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from graceful_gunicorn._gunicorn.workers.stop_signals import REASON_SETTLE

from .conftest import WORKER_CLASSES
from .scenarios import (
    APP,
    GRACEFUL,
    assert_each_callback_ran_once,
    one_worker,
    send_in_background,
    worker_args,
)
from .server import Gunicorn, http_get, print_figure, wait_until

GRACEFUL_TIMEOUT = 30


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_twice_to_the_whole_group(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a request is held 2. SIGTERM to the process group (master and worker,
    as systemd does) 3. once before_shutdown ran, SIGTERM to the group again
    4. release the request.

    Result: the request completes 200; every callback ran once, with reason
    "terminate"; the master exits 0 soon after the release.
    """
    server = one_worker(gunicorn, worker_class)
    server.wait_ready(workers=1)
    results, threads = send_in_background(server, ["/hold/held"])
    wait_until(lambda: server.events("entered"), 20, "the request in flight")
    os.killpg(server.pid, signal.SIGTERM)
    wait_until(lambda: server.callbacks("before_shutdown"), 20, "before_shutdown")
    os.killpg(server.pid, signal.SIGTERM)
    time.sleep(0.2)  # lets a mishandled second SIGTERM do its damage first
    released = time.monotonic()
    server.release("held")
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    assert time.monotonic() - released < 5
    for thread in threads:
        thread.join(10)
    assert results[0].status == 200
    assert_each_callback_ran_once(server)
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}
    assert [e["name"] for e in server.callbacks("on_shutdown")] == ["o2", "o1"]


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigint_during_before_shutdown_cuts_it_short(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a before_shutdown callback runs for a long time (timeout 20 s)
    2. SIGTERM the master 3. once that callback started, SIGINT the master.

    Result: phase 1 ends at once; on_shutdown and after_shutdown run once with
    reason "quick"; the master exits within seconds, not after the callback's
    20 s or graceful_timeout.
    """
    server = one_worker(gunicorn, worker_class, {"MISBEHAVE": "slow_before"})
    server.wait_ready(workers=1)
    server.signal(signal.SIGTERM)
    wait_until(lambda: server.callbacks("before_shutdown"), 20, "the slow before_shutdown")
    started = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    took = time.monotonic() - started
    print_figure("exit after the signal", took)
    assert took < 5, f"took {took:.1f}s"
    assert_each_callback_ran_once(server)
    assert [e["name"] for e in server.callbacks("before_shutdown")] == ["slow-before-start"]
    assert [(e["name"], e["reason"]) for e in server.callbacks("on_shutdown")] == [
        ("o2", "quick"),
        ("o1", "quick"),
    ]
    assert len(server.callbacks("after_shutdown")) == 1
    assert "before_shutdown callback tests.apps.events_app.slow_before timed out" in server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigint_during_on_shutdown_shortens_it(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. an on_shutdown callback hangs (its timeout: 10 s) 2. SIGTERM the
    master 3. once it started, SIGINT the master.

    Result: the hanging callback is abandoned at the quick deadline (2 s), no
    callback runs twice, and the master exits long before the callback's 10 s.
    """
    server = one_worker(gunicorn, worker_class, {"MISBEHAVE": "hang_quick"})
    server.wait_ready(workers=1)
    server.signal(signal.SIGTERM)
    wait_until(lambda: server.callbacks("on_shutdown"), 20, "the hanging on_shutdown")
    started = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    took = time.monotonic() - started
    print_figure("exit after the signal", took)
    assert took < 6, f"took {took:.1f}s"
    assert_each_callback_ran_once(server)
    assert len(server.callbacks("before_shutdown")) == 1
    assert "on_shutdown callback tests.apps.events_app.hang_quick timed out" in server.log()
    assert "SIGKILL" not in server.log()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_while_the_app_loads(gunicorn: Callable[..., Gunicorn], worker_class: str) -> None:
    """1. loading the app takes 3 s 2. SIGTERM the master while the worker loads it.

    Result: the worker finishes booting, runs its callbacks once with reason
    "terminate" and exits; the master exits well before graceful_timeout.
    """
    server = one_worker(gunicorn, worker_class, {"MISBEHAVE": "slow_boot"})
    wait_until(lambda: server.events("booting"), 20, "the worker to load the app")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    took = time.monotonic() - started
    print_figure("exit after the signal", took)
    assert took < 10, f"took {took:.1f}s"
    assert_each_callback_ran_once(server)
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}
    assert len(server.callbacks("after_shutdown")) == 1


POST_FORK_CONFIG = """\
import os
import time

from graceful_gunicorn.conf import *


def post_fork(server, worker):
    with open(os.environ["FORKED_MARKER"], "a") as marker:
        marker.write(f"{os.getpid()}\\n")
    time.sleep(2)
"""


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_before_the_worker_has_its_signal_handlers(
    gunicorn: Callable[..., Gunicorn], worker_class: str, tmp_path: Path
) -> None:
    """1. a post_fork hook takes 2 s, so the worker still has the master's
    signal handlers 2. SIGTERM the master during that hook.

    Result: the SIGTERM, which gunicorn loses in such a worker, is not lost:
    the worker runs its callbacks once with reason "terminate" as soon as it
    booted; the master does not wait for graceful_timeout.
    """
    config = tmp_path / "post_fork.conf.py"
    config.write_text(POST_FORK_CONFIG)
    marker = tmp_path / "forked"
    server = gunicorn(
        [
            "-c",
            str(config),
            *worker_args(worker_class, workers=1),
            "--graceful-timeout",
            str(GRACEFUL_TIMEOUT),
            APP,
        ],
        {"FORKED_MARKER": str(marker)},
    )
    wait_until(marker.exists, 20, "the worker to be forked")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    took = time.monotonic() - started
    print_figure("exit after the signal", took)
    assert took < 10, f"took {took:.1f}s\n{server.log()}"
    assert_each_callback_ran_once(server)
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}
    assert len(server.callbacks("after_shutdown")) == 1


@pytest.mark.parametrize("delay", [0, 3], ids=["no-delay", "during-shutdown-delay"])
def test_sighup_during_a_stop_is_ignored(gunicorn: Callable[..., Gunicorn], delay: int) -> None:
    """1. a request is held 2. SIGTERM the master (with or without a
    shutdown_delay) 3. SIGHUP the master while it stops 4. release the request.

    Result: no new worker boots, the request completes 200, every callback ran
    once with reason "terminate", the master exits 0.
    """
    server = one_worker(gunicorn, "sync", {"GRACEFUL_SHUTDOWN_DELAY": str(delay)})
    server.wait_ready(workers=1)
    results, threads = send_in_background(server, ["/hold/held"])
    wait_until(lambda: server.events("entered"), 20, "the request in flight")
    server.signal(signal.SIGTERM)
    if delay:
        wait_until(lambda: "shutdown_delay" in server.log(), 10, "the shutdown delay")
    else:
        wait_until(lambda: server.callbacks("before_shutdown"), 20, "before_shutdown")
    server.signal(signal.SIGHUP)
    if delay:
        wait_until(lambda: "SIGHUP ignored" in server.log(), 10, "the SIGHUP to be read")
    server.release("held")
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    for thread in threads:
        thread.join(10)
    assert results[0].status == 200
    assert len(server.worker_pids()) == 1
    assert_each_callback_ran_once(server)
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}


def test_repeated_sigint_under_load_never_hangs_a_gthread_worker(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """gunicorn 27's own gthread worker can deadlock in its SIGINT handler (a
    lock held by the interrupted main thread). Ours only sets flags there.

    1. five times: a gthread worker with requests in flight 2. SIGINT.

    Result: every time, the master exits within a few seconds and after_shutdown ran.
    """
    for attempt in range(5):
        server = gunicorn(
            [*GRACEFUL, *worker_args("gthread", workers=1), "--graceful-timeout", "20", APP]
        )
        server.wait_ready(workers=1)
        _, threads = send_in_background(server, [f"/hold/{attempt}-{i}" for i in range(3)])
        wait_until(
            lambda server=server: len(server.events("entered")) == 3, 20, "requests in flight"
        )
        started = time.monotonic()
        server.signal(signal.SIGINT)
        assert server.wait_exit(20) == 0
        took = time.monotonic() - started
        print_figure("exit after the signal", took)
        assert took < 5, f"attempt {attempt} took {took:.1f}s"
        assert len(server.callbacks("after_shutdown")) == 1
        for i in range(3):
            server.release(f"{attempt}-{i}")
        for thread in threads:
            thread.join(10)
        server.events_path.unlink()


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_group_sigterm_during_shutdown_delay_keeps_the_workers_serving(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. shutdown_delay=2 and a readiness path 2. SIGTERM to the process group
    (master and worker, as systemd does).

    Result: during the delay the same worker keeps answering (readiness 503,
    the app 200) and no worker is respawned; then the master stops it and its
    callbacks run once with reason "terminate".
    """
    server = one_worker(
        gunicorn,
        worker_class,
        {"GRACEFUL_SHUTDOWN_DELAY": "2", "GRACEFUL_READINESS_PATH": "/-/ready"},
    )
    server.wait_ready(workers=1)
    os.killpg(server.pid, signal.SIGTERM)
    wait_until(lambda: "ignores a SIGTERM" in server.log(), 10, "the worker to ignore it")
    assert http_get(server.port, "/-/ready", 5).status == 503
    assert http_get(server.port, "/hello", 5).status == 200
    assert server.callbacks() == []
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    assert len(server.worker_pids()) == 1
    assert_each_callback_ran_once(server)
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}
    assert [e["name"] for e in server.callbacks("on_shutdown")] == ["o2", "o1"]


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_group_sigterm_is_a_terminate_however_late_the_master_runs(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. the master is stopped (SIGSTOP), as a busy machine may leave it unscheduled
    2. SIGTERM to the whole process group (systemd's KillMode=control-group)
    3. longer than the worker's REASON_SETTLE later, the master continues.

    Result: the worker's callbacks run with reason "terminate" (it settled on
    "recycle" 0.2 s after its own SIGTERM, and terminate-only callbacks were
    skipped; later, on a busy machine, it settled so once its 2 s had passed
    while its master still held the SIGTERM unhandled), and with their whole
    budget, counted from the master's stop: none is skipped for lack of time
    (with graceful_timeout 8 and the wait counted, two were).
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), "--graceful-timeout", "8", APP]
    )
    server.wait_ready(workers=1)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        server.signal_group(signal.SIGTERM)
        time.sleep(REASON_SETTLE + 1)  # the scenario: the master runs late; not synchronisation
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert server.wait_exit(30) == 0
    assert {e["reason"] for e in server.callbacks()} == {"terminate"}, server.log()
    assert "no time left" not in server.log()
    assert re.search(r"shutdown complete .*, 0 skipped", server.log()), server.log()


def test_a_quick_stop_of_a_running_master_keeps_a_stopping_workers_quick_budget(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. two sync workers; one gets SIGTERM by hand and stops on its own, its
    on_shutdown callback hanging 2. SIGINT the master, which was running.

    Result: that worker's stop turns quick with the whole quick_shutdown_timeout
    (6 s here) for its callbacks, as the other worker's: gunicorn's stop(False)
    waits graceful_timeout, and only a SIGINT read inside a graceful stop() cuts
    that to 2 s (arbiter.py). The review found it cut at 1.8 s.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args("sync", workers=2), APP],
        {"MISBEHAVE": "hang_quick", "GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "6"},
    )
    server.wait_ready(workers=2)
    stopping = server.worker_pids()[0]
    os.kill(stopping, signal.SIGTERM)
    wait_until(
        lambda: any(
            e["pid"] == stopping and e.get("name") == "hang-start"
            for e in server.events("callback")
        ),
        20,
        "the stopping worker's hanging on_shutdown",
    )
    server.signal(signal.SIGINT)
    assert server.wait_exit(30) == 0
    log = server.log()
    cut = {
        int(pid): float(seconds)
        for pid, seconds in re.findall(
            r"\[(\d+)\] \[ERROR\] graceful_gunicorn: on_shutdown callback "
            r"tests\.apps\.events_app\.hang_quick timed out after ([\d.]+)s",
            log,
        )
    }
    # 6 s shared by the quick callbacks: 1.5 s for the hanging one, in both workers
    # (the other worker's stop was quick from the start); 1.8 s less the margin, and
    # shared, before.
    assert len(cut) == 2 and cut[stopping] >= 1.4, log
    assert "0 killed" in log.split("shutdown summary")[1], log


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_group_ctrl_c_during_a_graceful_stop_ends_before_gunicorns_sigkill(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. quick_shutdown_timeout=20, an on_shutdown callback hanging 2. SIGTERM the
    master 3. once the callback runs, SIGINT the whole process group (Ctrl+C).

    Result: the workers, which get the SIGINT before the master relays it, keep
    to the 2 s after which gunicorn 25+ SIGKILLs them (they planned 20 s, shared: killed);
    no worker is killed on any gunicorn.
    """
    server = gunicorn(
        [*GRACEFUL, *worker_args(worker_class, workers=1), APP],
        {"MISBEHAVE": "hang_quick", "GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": "20"},
    )
    server.wait_ready(workers=1)
    server.signal(signal.SIGTERM)
    wait_until(
        lambda: any(e.get("name") == "hang-start" for e in server.events("callback")),
        20,
        "the hanging on_shutdown",
    )
    server.signal_group(signal.SIGINT)
    assert server.wait_exit(30) == 0
    log = server.log()
    assert "SIGKILL" not in log, log
    assert "0 killed" in log.split("shutdown summary")[1], log
