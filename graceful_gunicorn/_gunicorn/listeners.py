"""A server's listening sockets at its stop: refuse new connections, serve the queued ones.

When a gunicorn server stops, its listening socket lives until the last
process holding it closes it: the master closes its copy first, each worker
when it stops accepting (gevent), after its drain (gthread) or at exit (sync).
Meanwhile the kernel goes on completing connections that nobody will accept,
and resets them when the socket goes. A client that already sent its request
on one (a proxy's fresh upstream connection) gets an error after the request
left: nginx does not resend a ``POST`` then (``proxy_next_upstream``), and
answers 502.

So the master, when the whole server stops gracefully and its listeners are
its own, makes them drop new connection attempts (a socket filter that drops
every packet reaching the listening socket, Linux): the connections already
queued are served by the workers, which keep accepting until the queue is
empty; a client whose attempt was dropped tries again, and is refused once the
socket is gone, before it sent anything, which any proxy safely sends elsewhere.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any

#: ``SO_ATTACH_FILTER`` in Linux's ``asm-generic/socket.h``.
_SO_ATTACH_FILTER = 26

#: One classic BPF instruction, ``BPF_RET | BPF_K`` with ``k = 0``: keep no byte
#: of any packet (``struct sock_filter``: code, jt, jf, k).
_DROP_EVERYTHING = struct.pack("HBBI", 0x06, 0, 0, 0)

#: ``TCP_LISTEN`` in Linux's ``tcp_states.h``.
_TCP_LISTEN = 10


def _is_tcp(listener: Any) -> bool:
    return getattr(listener, "family", None) in (socket.AF_INET, socket.AF_INET6)


def refuse_new_connections(listeners: Iterable[Any]) -> bool:
    """Make each TCP listener drop new connection attempts; whether it did (Linux).

    Connections already queued are other sockets, and stay; so does the filter
    for as long as the listening socket lives, in every process that holds it.
    """
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(_DROP_EVERYTHING, len(_DROP_EVERYTHING))
    # struct sock_fprog: the number of instructions and a pointer to them
    # (the kernel copies them during the call).
    fprog = struct.pack("HL", 1, ctypes.addressof(program))
    refused = False
    for listener in listeners:
        if not _is_tcp(listener):
            continue
        try:
            listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        except OSError:
            continue
        refused = True
    return refused


def queued(listeners: Iterable[Any]) -> int | None:
    """How many connections wait in the listeners' accept queues (Linux), else ``None``.

    ``TCP_INFO`` of a listening socket gives its accept queue's length as
    ``tcpi_unacked`` (the kernel's ``sk_ack_backlog``), the sixth field.
    """
    total = 0
    for listener in listeners:
        try:
            info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        except (OSError, AttributeError):  # a unix socket, another platform
            return None
        (state,) = struct.unpack_from("=B", info, 0)
        if state != _TCP_LISTEN:
            return None
        total += struct.unpack_from("=I", info, 24)[0]
    return total


def wait_until_accepted(listeners: Iterable[Any], until: float) -> None:
    """Wait (until the monotonic time ``until`` at most) for the accept queues to empty."""
    listeners = list(listeners)
    while time.monotonic() < until:
        waiting = queued(listeners)
        if not waiting:
            return
        time.sleep(0.005)


__all__ = ["queued", "refuse_new_connections", "wait_until_accepted"]
