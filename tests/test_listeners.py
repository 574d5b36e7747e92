"""A stopping server's listening socket: new connections refused, queued ones kept.

Real sockets on 127.0.0.1 (Linux: the socket filter and TCP_INFO are Linux's).
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from graceful_gunicorn._gunicorn import listeners

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock
    finally:
        sock.close()


def test_a_refusing_listener_keeps_its_queue_and_completes_no_new_connection(
    listener: socket.socket,
) -> None:
    """1. a client connects and sends its request 2. the listener refuses new
    connections 3. a second client tries to connect 4. the first is accepted.

    Result: the second attempt gets no answer (it is dropped, not queued); the
    first is served; once the listening socket is gone the next attempt is
    refused at once, before any request is sent.
    """
    port = listener.getsockname()[1]
    first = socket.create_connection(("127.0.0.1", port))
    first.sendall(b"request")
    assert listeners.queued([listener]) == 1
    assert listeners.refuse_new_connections([listener]) is True
    second = socket.socket()
    second.settimeout(0.3)
    with pytest.raises(TimeoutError):
        second.connect(("127.0.0.1", port))
    assert listeners.queued([listener]) == 1  # the dropped attempt is not queued
    served, _ = listener.accept()
    assert served.recv(16) == b"request"
    served.sendall(b"response")
    assert first.recv(16) == b"response"
    listener.close()
    began = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert time.monotonic() - began < 1.0
    for sock in (first, second, served):
        sock.close()


def test_waiting_for_the_queue_ends_once_it_is_accepted(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    began = time.monotonic()
    listeners.wait_until_accepted([listener], began + 0.2)
    assert time.monotonic() - began >= 0.2  # nobody accepted: waited the whole bound
    served, _ = listener.accept()
    began = time.monotonic()
    listeners.wait_until_accepted([listener], began + 5)
    assert time.monotonic() - began < 1.0
    client.close()
    served.close()


def test_unix_listeners_are_left_alone() -> None:
    unix = socket.socket(socket.AF_UNIX)
    try:
        assert listeners.refuse_new_connections([unix]) is False
        assert listeners.queued([unix]) is None
    finally:
        unix.close()
