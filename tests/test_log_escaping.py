"""Values a client controls reach graceful_gunicorn's log lines escaped (review defect 13)."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

from graceful_gunicorn._core.in_flight import printable

from .server import Gunicorn, wait_until

APP = "tests.apps.events_app:app"
GRACEFUL = ["-c", "python:graceful_gunicorn.conf"]
FORGED = "[INFO] graceful_gunicorn: shutdown summary (terminate, SIGTERM): all clean"


def test_printable_escapes_control_characters_and_backslashes() -> None:
    assert printable("/a\nb\r\x1b[31m\\\x7f\x85é") == "/a\\x0ab\\x0d\\x1b[31m\\x5c\\x7f\\x85é"
    assert printable("/plain/path?x=1") == "/plain/path?x=1"


def test_a_path_in_flight_at_the_drain_deadline_cannot_forge_a_log_line(
    gunicorn: Callable[..., Gunicorn],
) -> None:
    """1. a request to /hold/x%0A<a forged summary line> is held 2. SIGTERM with a
    1 s drain (graceful_timeout 8 less the callbacks' 6 s and the margin).

    Result: the "still in flight" line shows the path with \\x0a; no log line
    starts with the forged text.
    """
    server = gunicorn([*GRACEFUL, "-w", "1", "--graceful-timeout", "8", APP])
    server.wait_ready(workers=1)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        forged_path = "/hold/x%0A" + FORGED.replace(" ", "%20")
        client.sendall(f"GET {forged_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: server.events("entered"), 30, "the held request")
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0
    finally:
        client.close()
    log = server.log()
    in_flight = [line for line in log.splitlines() if "still in flight: GET /hold/x" in line]
    assert len(in_flight) == 1, log
    assert "still in flight: GET /hold/x\\x0a" + FORGED + " (" in in_flight[0], in_flight[0]
    assert not any(line.startswith(FORGED) for line in log.splitlines()), log
