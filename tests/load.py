"""A bounded HTTP load on 127.0.0.1: keep-alive client connections in threads.

Each connection sends requests (GET, or POST with a small form) one after
another until ``stop()`` or its share of ``max_requests``; a response other
than 200, or any connection error, is a failure. A response with
``Connection: close`` makes the client reconnect, as HTTP clients do.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """What the clients saw."""

    sent: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: The longest a request took (seconds, from sending to its whole response).
    slowest: float = 0.0
    #: How many requests took longer than a second.
    over_one_second: int = 0
    #: When each of those was sent (wall clock, as in gunicorn's log) and how long it took.
    slow: list[str] = field(default_factory=list)

    def figures(self) -> str:
        """One line for the record: sent, failed and why, the slowest, how many over 1 s."""
        return (
            f"sent {self.sent}, failed {self.failed} {dict(self.errors)}, "
            f"slowest {self.slowest:.2f}s, {self.over_one_second} over 1 s"
        )


class Load:
    """``connections`` clients sending ``path`` until stopped or bounded out."""

    def __init__(
        self,
        port: int,
        path: str = "/",
        connections: int = 16,
        max_seconds: float = 60.0,
        max_requests: int = 200_000,
        pause: float = 0.0,
        method: str = "GET",
    ) -> None:
        self.port = port
        self.path = path
        #: ``POST`` sends a small form body (``value=<n>``) with each request.
        self.method = method
        self.max_seconds = max_seconds
        #: Seconds each client waits after a response: a paced load leaves the CPUs
        #: room, so that a slow request says the server made it wait, not the machine.
        self.pause = pause
        self.per_connection = max(1, max_requests // connections)
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(connections)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return self.result

    def _client(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        connection = None
        for _ in range(self.per_connection):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            reused = connection is not None
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            error = None
            began = time.monotonic()
            sent_at = time.strftime("%H:%M:%S")
            try:
                if self.method == "POST":
                    body = f"value={time.monotonic_ns()}"
                    headers = {"Content-Type": "application/x-www-form-urlencoded"}
                    connection.request("POST", self.path, body, headers)
                else:
                    connection.request(self.method, self.path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    error = f"HTTP {response.status}"
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
                connection.close()
                connection = None
            took = time.monotonic() - began
            if self.pause:
                self._stop.wait(self.pause)
            with self._lock:
                self.result.sent += 1
                self.result.slowest = max(self.result.slowest, took)
                if took > 1.0:
                    self.result.over_one_second += 1
                    self.result.slow.append(f"{sent_at} {took:.2f}s reused={reused}")
                if error is not None:
                    self.result.failed += 1
                    self.result.errors[error] += 1
        if connection is not None:
            connection.close()
