"""Section 3: how fast a stop is, plain gunicorn versus graceful_gunicorn.

Two scenarios, each with one worker and ``shutdown_delay`` 0, alternated:

- **idle**: 1. start the server and wait until it answers 2. ``SIGTERM`` the
  master. Result: seconds until the worker exits, and until the master exits.
  gunicorn's master looks for exited workers every 0.1 s while it stops, so
  its exit comes in steps of 0.1 s; the worker's exit is the fine figure.
- **last request**: 1. start the server 2. hold a request in flight
  (``/hold?ms=400``; the app writes a marker when it starts) 3. ``SIGTERM`` the
  master. Result: seconds from the client's receipt of the whole response to
  the worker's exit (its drain must react to the in-flight count reaching zero),
  and from the signal to the master's exit.

Exits are timed with a pidfd, which becomes readable the moment the process
exits: no polling interval is added to the figures.

And, to tell what the worker's exit spends after ``atexit``: the **teardown**
of an interpreter that imported what a worker imports (the benchmark app, and
gunicorn's worker modules), from the end of its script to its exit, as it is
and with ``gc.freeze()`` first (which the package does not do; see
``benchmarks/README.md``).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .servers import REPO, Server, http_get
from .throughput import alternate

HOLD_MS = 400
TIMEOUT = 30.0

Progress = Callable[[str], None]


class ExitWatch:
    """Times the exit of a process, child or not (opened before the signal, so no pid reuse)."""

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)

    def wait(self, timeout: float = TIMEOUT) -> float:
        """:func:`time.monotonic` when the process exited; raises after ``timeout``."""
        try:
            readable, _, _ = select.select([self.fd], [], [], timeout)
            if not readable:
                raise TimeoutError(f"process did not exit within {timeout}s")
            return time.monotonic()
        finally:
            os.close(self.fd)


@dataclass
class ShutdownResults:
    """Seconds, one figure per round, by ``(worker_class, variant)``."""

    rounds: int
    idle_exit: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    idle_worker_exit: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    last_request_to_worker_exit: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    #: The part of it before the interpreter's teardown (the worker's ``atexit``).
    last_request_to_atexit: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    busy_master_exit: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    #: Seconds from the end of a script that imports a worker's modules to its exit,
    #: ``"as is"`` and ``"gc.freeze()"``.
    teardown: dict[str, list[float]] = field(default_factory=dict)


#: What a worker of the benchmark has imported, then the time the script ends.
_TEARDOWN_SCRIPT = """\
import benchmarks.apps.flask_app, gunicorn.arbiter, gunicorn.workers.sync
import gunicorn.workers.gthread, sys, time
{before_exit}
sys.stdout.write(repr(time.monotonic()))
sys.stdout.flush()
"""


def interpreter_teardown(freeze: bool) -> float:
    """Seconds from the end of the script to the exit of its process."""
    script = _TEARDOWN_SCRIPT.format(before_exit="import gc; gc.freeze()" if freeze else "")
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_DIR": ""}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    try:
        watch = ExitWatch(process.pid)
        assert process.stdout is not None
        ended = float(process.stdout.read())
        return watch.wait() - ended
    finally:
        process.kill()
        process.wait(TIMEOUT)


def idle_stop(workdir: Path, worker_class: str, graceful: bool) -> tuple[float, float]:
    """Seconds from ``SIGTERM`` to the exit of an idle worker, and of its master."""
    with Server(workdir, worker_class, graceful=graceful) as server:
        server.wait_ready()
        (worker,) = server.worker_pids()
        worker_watch, master_watch = ExitWatch(worker), ExitWatch(server.pid)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        worker_exited = worker_watch.wait()
        master_exited = master_watch.wait()
        server.reap(TIMEOUT)
        return worker_exited - signalled, master_exited - signalled


def busy_stop(workdir: Path, worker_class: str, graceful: bool) -> tuple[float, float, float]:
    """With one request in flight: (last response to worker exit, last response to
    the worker's ``atexit``, ``SIGTERM`` to master exit)."""
    with Server(workdir, worker_class, graceful=graceful) as server:
        server.wait_ready()
        (worker,) = server.worker_pids()
        marker = workdir / f"started-{worker}"
        marker.unlink(missing_ok=True)
        at_exit = workdir / f"atexit-{worker}"
        at_exit.unlink(missing_ok=True)
        answered: list[float] = []

        def client() -> None:
            status, _ = http_get(server.port, f"/hold?ms={HOLD_MS}", timeout=TIMEOUT)
            if status == 200:
                answered.append(time.monotonic())

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the held request never started:\n{server.log()}")
            time.sleep(0.001)
        worker_watch, master_watch = ExitWatch(worker), ExitWatch(server.pid)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        thread.join(TIMEOUT)
        worker_exited = worker_watch.wait()
        master_exited = master_watch.wait()
        server.reap(TIMEOUT)
        if not answered:
            raise RuntimeError(f"the held request failed:\n{server.log()}")
        interpreter_exit = float(at_exit.read_text())
        return (
            worker_exited - answered[0],
            interpreter_exit - answered[0],
            master_exited - signalled,
        )


def run_shutdown(
    workdir: Path, worker_classes: Sequence[str], rounds: int, progress: Progress
) -> ShutdownResults:
    """Both scenarios for each worker class, plain and graceful alternated."""
    results = ShutdownResults(rounds=rounds)
    for worker_class in worker_classes:
        for round_no in range(rounds):
            for variant in alternate(("plain", "graceful"), round_no):
                graceful = variant == "graceful"
                key = (worker_class, variant)
                idle_worker, idle = idle_stop(workdir, worker_class, graceful)
                last, to_atexit, master = busy_stop(workdir, worker_class, graceful)
                results.idle_exit.setdefault(key, []).append(idle)
                results.idle_worker_exit.setdefault(key, []).append(idle_worker)
                results.last_request_to_worker_exit.setdefault(key, []).append(last)
                results.last_request_to_atexit.setdefault(key, []).append(to_atexit)
                results.busy_master_exit.setdefault(key, []).append(master)
                progress(
                    f"shutdown   {worker_class:7} {variant:8} round {round_no}: idle exit "
                    f"{idle * 1000:6.0f} ms (worker {idle_worker * 1000:5.1f} ms), "
                    f"last request to worker exit {last * 1000:6.1f} ms "
                    f"(to atexit {to_atexit * 1000:5.1f} ms)"
                )
    for round_no in range(rounds):
        for variant in alternate(("as is", "gc.freeze()"), round_no):
            teardown = interpreter_teardown(freeze=variant == "gc.freeze()")
            results.teardown.setdefault(variant, []).append(teardown)
            progress(f"teardown   {variant:11} round {round_no}: {teardown * 1000:5.1f} ms")
    return results
