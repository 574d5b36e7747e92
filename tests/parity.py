"""Never worse than plain gunicorn: one scenario, run on both, compared.

The project's rule, as a fixture: a scenario that has a plain-gunicorn
counterpart runs twice in the same test, first on plain gunicorn (no ``-c``)
and then with ``-c python:graceful_gunicorn.conf``, with the same app, the
same gunicorn arguments and the same clients, one after the other (never at
once: the two would compete for the CPU and change each other's timings).
:func:`compare` then asserts three rules:

1. graceful_gunicorn completes at least as many requests;
2. it fails none where plain gunicorn fails none;
3. it answers no request that plain gunicorn answers 200 with anything else
   (requests are matched by label; requests that share a label are
   interchangeable, so of those it must answer at least as many with 200).

A scenario is any callable that takes a started, ready :class:`Gunicorn` and
returns one :class:`Outcome` per request it sent (and per probe it made)::

    def in_flight(server: Gunicorn) -> list[Outcome]:
        requests = Requests(server.port, [("slow", "/sleep/2?key=slow")]).start()
        wait_until(lambda: server.events("entered"), 20, "the request in flight")
        server.signal(signal.SIGTERM)
        return requests.outcomes()

    with Parity(tmp_path) as parity:
        parity.run(in_flight, ["-k", "sync", "-w", "1"], workers=1)

Both sides' figures are printed with a ``[parity]`` prefix (``pytest -n 0 -s``)
and are part of the assertion message. The clients here (:class:`Requests`,
:class:`KeepAliveLoad`, :func:`read_response`) turn what they saw into
outcomes; every wait is bounded.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .server import Gunicorn

__all__ = [
    "APP",
    "END",
    "GRACEFUL",
    "KeepAliveLoad",
    "Outcome",
    "Parity",
    "RawResponse",
    "Requests",
    "Run",
    "Scenario",
    "compare",
    "note",
    "read_response",
    "read_until_closed",
]

#: The app both sides load: six callbacks without ``timeout=``.
APP = "tests.apps.parity_app:app"
#: What makes a side graceful; everything else is the same on both.
GRACEFUL = ("-c", "python:graceful_gunicorn.conf")
#: Every body of the app ends so (tests/apps/parity_app.py): a cut body does not.
END = b"end\n"
#: The longest a client waits for one answer.
ANSWER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Outcome:
    """What one request (or probe) got.

    ``status`` is the HTTP status of the answer (``None``: no answer);
    ``error`` says what went wrong besides the status (a reset, a cut body).
    A probe sends no request: it is right when it gets no byte at all (an
    idle kept-alive connection that the server closes).
    """

    label: str
    status: int | None = None
    error: str | None = None
    probe: bool = False

    @property
    def ok(self) -> bool:
        """A request answered 200 with its whole body; a probe closed without a byte."""
        if self.probe:
            return self.status is None and self.error is None
        return self.status == 200 and self.error is None

    @property
    def what(self) -> str:
        """A short description: ``200``, ``500``, ``RemoteDisconnected``, ``closed``."""
        parts = [str(self.status)] if self.status is not None else []
        if self.error is not None:
            parts.append(self.error)
        return " ".join(parts) or ("closed" if self.probe else "no answer")


#: A scenario: given a started, ready server, do something to it and report.
Scenario = Callable[[Gunicorn], list[Outcome]]


@dataclass
class Run:
    """One side of a comparison: what its scenario saw."""

    side: str
    outcomes: list[Outcome]
    #: From the server being ready to the scenario's return.
    seconds: float
    #: The master's exit status when the scenario ended (``None``: still running).
    exit_code: int | None
    log_path: Path

    @property
    def requests(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.probe]

    @property
    def completed(self) -> int:
        """Requests answered 200 with their whole body."""
        return sum(o.ok for o in self.requests)

    @property
    def failed(self) -> int:
        """Requests (and probes) that were not right."""
        return sum(not o.ok for o in self.outcomes)

    @property
    def non_200(self) -> int:
        """Answers with a status other than 200 (probes included)."""
        return sum(o.status is not None and o.status != 200 for o in self.outcomes)

    def ok_count(self, label: str) -> int:
        return sum(o.ok for o in self.outcomes if o.label == label)

    def figures(self) -> str:
        """One line: completed, failed, non-200, and what went wrong."""
        wrong = Counter(f"{o.label}: {o.what}" for o in self.outcomes if not o.ok)
        detail = ", ".join(f"{what} x{n}" for what, n in sorted(wrong.items()))
        probes = len(self.outcomes) - len(self.requests)
        return (
            f"{self.side:<8} completed {self.completed}/{len(self.requests)}"
            + (f" (+{probes} probe{'s' * (probes > 1)})" if probes else "")
            + f", failed {self.failed}, non-200 {self.non_200}"
            + (f", exit {self.exit_code}" if self.exit_code is not None else ", running")
            + f", {self.seconds:.1f}s"
            + (f"; {detail}" if detail else "")
        )


def _test_id() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]


def note(server: Gunicorn, text: str) -> None:
    """Print a scenario's own figure for the record, with its side (``pytest -n 0 -s``)."""
    side = "graceful" if server.graceful else "plain"
    print(f"[parity] {_test_id()}: {side:<8} {text}")


def compare(plain: Run, graceful: Run) -> None:
    """Assert the three rules; the message lists both sides' figures."""
    for run in (plain, graceful):
        print(f"[parity] {_test_id()}: {run.figures()}")
    labels = Counter(o.label for o in plain.outcomes)
    if labels != Counter(o.label for o in graceful.outcomes):
        raise AssertionError(
            "the scenario did not do the same on both sides:\n"
            f"  plain:    {sorted(labels.items())}\n"
            f"  graceful: {sorted(Counter(o.label for o in graceful.outcomes).items())}"
        )
    broken = []
    if graceful.completed < plain.completed:
        broken.append(
            f"1. graceful completed {graceful.completed} request(s), plain {plain.completed}"
        )
    if plain.failed == 0 and graceful.failed:
        broken.append(f"2. graceful failed {graceful.failed}, plain none")
    for label in sorted(labels):
        if graceful.ok_count(label) < plain.ok_count(label):
            got = Counter(o.what for o in graceful.outcomes if o.label == label)
            broken.append(
                f"3. {label!r}: plain answered {plain.ok_count(label)} of {labels[label]} "
                f"right, graceful {graceful.ok_count(label)} ({dict(got)})"
            )
    if broken:
        raise AssertionError(
            "graceful_gunicorn did worse than plain gunicorn:\n  "
            + "\n  ".join(broken)
            + f"\n  {plain.figures()}\n  {graceful.figures()}"
            + f"\n  logs: {plain.log_path} {graceful.log_path}"
        )


class Parity:
    """Runs scenarios on plain gunicorn and on graceful_gunicorn, and compares.

    Each side gets a directory of its own under ``workdir`` (its log and the
    app's events file). Each side's server is killed (``Gunicorn.stop``: the
    master's process group) once its scenario returned, and every one still
    alive on leaving the ``with`` block.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stack = ExitStack()
        self._runs = 0

    def __enter__(self) -> Parity:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    def run(
        self,
        scenario: Scenario,
        args: Sequence[str],
        *,
        workers: int,
        env: dict[str, str] | None = None,
        app: str = APP,
    ) -> tuple[Run, Run]:
        """Run ``scenario`` on each side (gunicorn ``args`` plus ``app``); compare.

        ``workers`` is how many workers must be ready before the scenario starts.
        """
        plain = self.side("plain", scenario, [*args, app], workers, env)
        graceful = self.side("graceful", scenario, [*GRACEFUL, *args, app], workers, env)
        compare(plain, graceful)
        return plain, graceful

    def side(
        self,
        side: str,
        scenario: Scenario,
        args: Sequence[str],
        workers: int,
        env: dict[str, str] | None = None,
    ) -> Run:
        """Start one server, wait until it serves, run ``scenario`` on it, kill it."""
        self._runs += 1
        workdir = self.workdir / f"{self._runs}-{side}"
        workdir.mkdir(parents=True)
        server = Gunicorn(workdir, args, env)
        self._stack.callback(server.stop)
        server.start().wait_ready(workers=workers, path="/hello")
        started = time.monotonic()
        outcomes = scenario(server)
        seconds = time.monotonic() - started
        assert server.process is not None
        exit_code = server.process.poll()
        server.stop()
        return Run(side, outcomes, seconds, exit_code, server.log_path)


# -- clients ----------------------------------------------------------------------


def _outcome(label: str, response: http.client.HTTPResponse) -> Outcome:
    body = response.read()
    if response.status == 200 and not body.endswith(END):
        return Outcome(label, response.status, "cut body")
    return Outcome(label, response.status)


class Requests:
    """``(label, path)`` GETs, all at once, each on a new connection in a thread."""

    def __init__(self, port: int, paths: Sequence[tuple[str, str]]) -> None:
        self.port = port
        self.paths = list(paths)
        self._results: list[Outcome | None] = [None] * len(self.paths)
        self._sent = threading.Semaphore(0)
        self._threads = [
            threading.Thread(target=self._send, args=(i,), daemon=True)
            for i in range(len(self.paths))
        ]

    def start(self) -> Requests:
        for thread in self._threads:
            thread.start()
        return self

    def wait_sent(self, timeout: float = 20.0) -> None:
        """Until every request was written (to the server or to its listen backlog)."""
        deadline = time.monotonic() + timeout
        for _ in self.paths:
            if not self._sent.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"timed out after {timeout}s sending the requests")

    def outcomes(self, timeout: float = ANSWER_TIMEOUT) -> list[Outcome]:
        """Wait for every answer; one still missing after ``timeout`` counts as none."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [
            result or Outcome(label, error=f"no answer within {timeout}s")
            for (label, _), result in zip(self.paths, self._results, strict=True)
        ]

    def _send(self, i: int) -> None:
        label, path = self.paths[i]
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=ANSWER_TIMEOUT)
        try:
            try:
                connection.request("GET", path)
            finally:
                self._sent.release()
            self._results[i] = _outcome(label, connection.getresponse())
        except (OSError, http.client.HTTPException) as exc:
            self._results[i] = Outcome(label, error=type(exc).__name__)
        finally:
            connection.close()


class KeepAliveLoad:
    """A bounded keep-alive load: ``connections`` clients, ``requests`` GETs each.

    Each client sends one request every ``interval`` seconds (catching up
    without pause when it fell behind), so both sides get the same number of
    requests over about the same time, whatever their speed. A response with
    ``Connection: close`` makes the client reconnect, as HTTP clients do; an
    error closes the connection and counts as a failure.

    ``gates`` holds a client back: before its request number ``index`` it closes
    its connection and waits for ``event`` (bounded by ``gate_timeout``), then
    goes on at its pace from there, on a new connection. A scenario that acts on
    the server during the load sets them, so that the load cannot end before the
    server did what the scenario waits for however slow the machine, and both
    sides still send the same requests.
    """

    def __init__(
        self,
        port: int,
        path: str = "/hello",
        connections: int = 8,
        requests: int = 100,
        interval: float = 0.02,
        label: str = "load",
        gates: Sequence[tuple[int, threading.Event]] = (),
        gate_timeout: float = 60.0,
    ) -> None:
        self.port = port
        self.gates = dict(gates)
        self.gate_timeout = gate_timeout
        self.path = path
        self.requests = requests
        self.interval = interval
        self.label = label
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(connections)
        ]
        self.total = requests * connections

    def start(self) -> KeepAliveLoad:
        for thread in self._threads:
            thread.start()
        return self

    @property
    def sent(self) -> int:
        """Requests answered or failed so far."""
        return len(self._outcomes)

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def outcomes(self, timeout: float) -> list[Outcome]:
        """Wait until every client sent all its requests (``AssertionError`` after ``timeout``)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not self.done():
            raise AssertionError(f"the load did not end within {timeout}s ({self.sent} sent)")
        return list(self._outcomes)

    def _client(self) -> None:
        connection: http.client.HTTPConnection | None = None
        started = time.monotonic()
        for k in range(self.requests):
            gate = self.gates.get(k)
            if gate is not None and not gate.is_set():
                if connection is not None:
                    # Closed, not left idle while held back: a server may close an
                    # idle kept-alive connection (a stopping one does), and the next
                    # request would go into it. Idle connections have their own test.
                    connection.close()
                    connection = None
                gate.wait(self.gate_timeout)
                started = time.monotonic() - k * self.interval
            time.sleep(max(0.0, started + k * self.interval - time.monotonic()))
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            current = connection
            try:
                current.request("GET", self.path)
                response = current.getresponse()
                outcome = _outcome(self.label, response)
                if response.will_close:
                    current.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = Outcome(self.label, error=type(exc).__name__)
                current.close()
                connection = None
            with self._lock:
                self._outcomes.append(outcome)
        if connection is not None:
            connection.close()


@dataclass
class RawResponse:
    """A response read off a socket, and the bytes that came after it."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"

    def outcome(self, label: str) -> Outcome:
        if self.error is not None:
            return Outcome(label, self.status, self.error)
        if self.status == 200 and not self.body.endswith(END):
            return Outcome(label, self.status, "cut body")
        return Outcome(label, self.status)


def read_response(sock: socket.socket) -> RawResponse:
    """Read one response with a ``Content-Length`` body, and not a byte more.

    (``http.client`` reads ahead into a buffer; a probe must see every later byte.)
    """
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return RawResponse(None, error="closed" if not data else "cut headers")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                return RawResponse(status, headers, body, "cut body")
            body += chunk
        return RawResponse(status, headers, body)
    except OSError as exc:
        return RawResponse(None, error=type(exc).__name__)


def read_until_closed(sock: socket.socket, label: str, timeout: float) -> Outcome:
    """A probe: wait until the server closes ``sock``; right when not a byte came."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return Outcome(label, error=f"still open after {timeout}s", probe=True)
    except OSError as exc:
        return Outcome(label, error=type(exc).__name__, probe=True)
    if not data:
        return Outcome(label, probe=True)
    parts = data.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return Outcome(label, status, f"{len(data)} unasked byte(s)", probe=True)
