"""Slow and broken clients: the in-flight count returns to zero after each,
and none holds a stopping worker past its drain budget.

Real gunicorn masters and workers, raw sockets on 127.0.0.1.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import ExitStack

import pytest

from .conftest import WORKER_CLASSES
from .scenarios import assert_each_callback_ran_once, connection, exchange, one_worker, status_of
from .server import Gunicorn, http_get, print_figure, wait_until

GRACEFUL_TIMEOUT = 10
IO_TIMEOUT = 10.0


def start(gunicorn: Callable[..., Gunicorn], worker_class: str) -> Gunicorn:
    server = one_worker(gunicorn, worker_class, graceful_timeout=GRACEFUL_TIMEOUT)
    return server.wait_ready(workers=1)


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_broken_clients_leave_no_request_counted(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a client reads the first chunk of a stream and disconnects; malformed
    request lines and headers; a body far larger than its Content-Length
    2. SIGTERM.

    Result: the malformed requests get 400, the server keeps answering, and
    the drain finds no request in flight: it ends at once and the master
    exits within seconds.
    """
    server = start(gunicorn, worker_class)
    port = server.port

    with connection(port) as sock:
        sock.sendall(b"GET /stream/cut HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: server.events("entered"), 10, "the stream to start")
        assert b"200 OK" in sock.recv(4096)
    server.release("cut")  # the app writes the rest to a closed connection
    wait_until(lambda: server.events("closed"), 10, "the server to close the stream")

    assert status_of(exchange(port, b"GARBAGE\r\n\r\n")) == 400
    assert status_of(exchange(port, b"GET /hello HTTP/1.1\r\nNo colon here\r\n\r\n")) == 400
    bad_length = b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n"
    assert status_of(exchange(port, bad_length)) == 400
    oversized = exchange(
        port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n" + b"x" * 200_000,
    )
    assert status_of(oversized) == 200
    assert b"\r\n\r\n10\n" in oversized
    assert http_get(port, "/hello").status == 200

    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(GRACEFUL_TIMEOUT) == 0
    took = time.monotonic() - started
    print_figure("exit after the signal", took)
    log = server.log()
    assert "drain deadline passed" not in log
    assert took < 4, f"took {took:.1f}s"
    assert_each_callback_ran_once(server)
    assert [e["in_flight"] for e in server.callbacks("on_shutdown")] == [0, 0]


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_stalled_clients_do_not_hold_the_drain_past_its_budget(
    gunicorn: Callable[..., Gunicorn], worker_class: str
) -> None:
    """1. a client announces a 1 MB body, sends 10 bytes and stalls (the app
    waits for the rest); another sends half a request line and stalls 2. SIGTERM.

    Result: the drain ends at its deadline and logs the stalled POST /echo
    with its seconds in flight; on_shutdown and after_shutdown run once; the
    master exits before graceful_timeout without SIGKILL.
    """
    server = start(gunicorn, worker_class)
    with ExitStack() as stack:
        body = stack.enter_context(connection(server.port))
        body.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n0123456789")
        wait_until(lambda: server.events("entered"), 10, "the stalled POST to reach the app")
        half = stack.enter_context(connection(server.port))
        half.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Half: ")

        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(GRACEFUL_TIMEOUT + 5) == 0
        took = time.monotonic() - started
        print_figure("exit after the signal", took)

    log = server.log()
    assert "drain deadline passed" in log
    assert "still in flight: POST /echo" in log
    assert took < GRACEFUL_TIMEOUT, f"took {took:.1f}s"
    assert "SIGKILL" not in log and "WORKER TIMEOUT" not in log
    assert_each_callback_ran_once(server)
    assert [e["name"] for e in server.callbacks("on_shutdown")] == ["o2", "o1"]
    assert len(server.callbacks("after_shutdown")) == 1
    assert server.events("finished") == []
