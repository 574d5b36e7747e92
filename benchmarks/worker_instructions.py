"""Section 1b: instructions per request in a real gunicorn worker, under callgrind.

Requests per second on this shared machine vary by 10 to 40% between
identical runs, far more than the 2% the throughput target allows. The number
of instructions a worker executes per request does not: it is the CPU cost
that throughput is the inverse of, counted instead of timed.

The master runs under ``valgrind --tool=callgrind --dump-before=getsid``, and
its worker (a fork) with it. Nothing in a worker calls ``getsid()`` but the
benchmark app's ``/mark`` route, so each ``/mark`` writes the instructions the
worker executed since the previous one. A window is ``window`` requests to
``/hello`` from one client, one after the other (kept alive where the worker
class keeps connections alive; or shared by several concurrent clients), then
``/mark``: its count divided by
``window + 1`` is what one request costs the worker, everything included:
gunicorn's parsing and loop, Flask, and graceful_gunicorn. Each round starts
a fresh plain and a fresh graceful server, in alternating order.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .instructions import read_total
from .servers import Server
from .stats import Spread

#: Requests served before the first window: imports and caches are done by then.
WARMUP_REQUESTS = 100
#: A worker under valgrind runs some 50 times slower.
BOOT_TIMEOUT = 180.0
#: The longest a window's requests may take (some 15 ms each under valgrind).
CLIENT_TIMEOUT = 600.0

Progress = Callable[[str], None]


@dataclass
class WorkerInstructions:
    """``runs[(worker_class, variant)]``: instructions per request, one per window."""

    window: int
    windows: int
    rounds: int
    clients: int
    runs: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def spread(self, worker_class: str, variant: str) -> Spread:
        """Instructions per request of one variant, over all its windows."""
        return Spread.of(self.runs[(worker_class, variant)])

    def added(self, worker_class: str) -> float:
        """Instructions graceful_gunicorn adds per request: the difference of the medians."""
        return self.spread(worker_class, "graceful").median - self.plain_median(worker_class)

    def ratio(self, worker_class: str) -> float:
        """Median instructions per request, graceful/plain."""
        return self.spread(worker_class, "graceful").median / self.plain_median(worker_class)

    def plain_median(self, worker_class: str) -> float:
        """Plain gunicorn's median instructions per request."""
        return self.spread(worker_class, "plain").median


class _Client:
    """Sequential GETs, on one connection for as long as the server keeps it."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._connection: http.client.HTTPConnection | None = None

    def get(self, path: str) -> bytes:
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=60)
        self._connection.request("GET", path)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
        if response.will_close:
            self.close()
        return body

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _get_once(port: int, path: str) -> bytes:
    client = _Client(port)
    try:
        return client.get(path)
    finally:
        client.close()


def _send(port: int, requests: int, clients: int) -> None:
    """``requests`` GETs of ``/hello``, shared by ``clients`` concurrent clients."""
    errors: list[Exception] = []

    def one_client(count: int) -> None:
        client = _Client(port)
        try:
            for _ in range(count):
                client.get("/hello")
        except Exception as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            errors.append(exc)
        finally:
            client.close()

    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=one_client, args=(n,)) for n in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT)
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"{requests} requests took over {CLIENT_TIMEOUT}s")


def _dumps(workdir: Path, worker: int) -> set[Path]:
    return set(workdir.glob(f"callgrind-{worker}.out.*"))


def count_windows(
    workdir: Path,
    worker_class: str,
    variant: str,
    window: int,
    windows: int,
    keep_in: Path | None = None,
    clients: int = 1,
) -> list[float]:
    """Start one server under callgrind; instructions per request of each window.

    ``clients`` send a window's requests side by side, each on its own connection.

    With ``keep_in``, each window's callgrind file is moved there (named
    ``<class>-<variant>-<pid>.<window>``), for ``callgrind_annotate``.
    """
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--dump-before=getsid",
        f"--callgrind-out-file={workdir}/callgrind-%p.out",
    ]
    server = Server(
        workdir,
        worker_class,
        graceful=variant == "graceful",
        env={"PYTHONHASHSEED": "0"},
        extra_args=["--timeout", "600"],
        wrapper=wrapper,
    )
    estimates = []
    with server:
        server.wait_ready(BOOT_TIMEOUT)
        worker = int(_get_once(server.port, "/pid"))
        _send(server.port, WARMUP_REQUESTS, clients)
        _get_once(server.port, "/mark")
        seen = _dumps(workdir, worker)
        for _ in range(windows):
            _send(server.port, window, clients)
            _get_once(server.port, "/mark")  # the dump is written before it answers
            (dump,) = _dumps(workdir, worker) - seen
            seen.add(dump)
            estimates.append(read_total(dump) / (window + 1))
            if keep_in is not None:
                keep_in.mkdir(parents=True, exist_ok=True)
                target = f"{worker_class}-{variant}-{worker}.{len(estimates)}"
                dump.rename(keep_in / target)
    for path in workdir.glob("callgrind-*.out*"):
        path.unlink()
    return estimates


def run_worker_instructions(
    workdir: Path,
    worker_classes: Sequence[str],
    rounds: int,
    window: int,
    windows: int,
    progress: Progress,
    keep_in: Path | None = None,
    clients: int = 1,
) -> WorkerInstructions:
    """Each worker class: ``rounds`` alternated pairs of servers, ``windows`` windows each."""
    results = WorkerInstructions(window=window, windows=windows, rounds=rounds, clients=clients)
    for worker_class in worker_classes:
        for round_no in range(rounds):
            variants = ("plain", "graceful") if round_no % 2 == 0 else ("graceful", "plain")
            for variant in variants:
                estimates = count_windows(workdir, worker_class, variant, window, windows, keep_in)
                results.runs.setdefault((worker_class, variant), []).extend(estimates)
                progress(
                    f"instructions {worker_class:7} {variant:8} round {round_no}: "
                    + " ".join(f"{e:,.0f}" for e in estimates)
                )
    return results
