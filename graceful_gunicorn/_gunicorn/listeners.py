"""A server's listening sockets at its stop: refuse new connections, serve the queued ones.

When a gunicorn server stops, its listening socket lives until the last
process holding it closes it: the master closes its copy first, each worker
when it stops accepting (gevent), after its drain (gthread) or at exit (sync).
Meanwhile the kernel goes on completing connections that nobody will accept,
and resets them when the socket goes. A client that already sent its request
on one (a proxy's fresh upstream connection) gets an error after the request
left: nginx does not resend a ``POST`` then (``proxy_next_upstream``), and
answers 502.

So when the whole server stops gracefully and its listeners are the master's
own, each worker, as it stops accepting, makes them drop new connection
attempts (a socket filter that drops TCP SYNs, Linux; handshakes already under
way complete): the connections already queued are served, as the worker keeps
accepting until the queue is empty. A client whose attempt was dropped tries
again (its kernel, after 1 s), and is refused once the last process closed the
socket; a proxy gives up on it after its connect timeout. Either way nothing
was sent, and any proxy safely sends the request elsewhere.
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

#: A classic BPF program (``struct sock_filter``: code, jt, jf, k) that drops a
#: connection attempt and keeps every other packet. A TCP listener's filter sees
#: the TCP header (net/ipv4/tcp_ipv4.c ``tcp_v4_rcv``, ``tcp_filter``), also for
#: the last packet of a handshake already under way, which must pass: its
#: client may have sent its request behind it.
_DROP_CONNECTION_ATTEMPTS = b"".join(
    struct.pack("HBBI", *instruction)
    for instruction in (
        (0x30, 0, 0, 13),  # BPF_LD | BPF_B | BPF_ABS: A = the flags byte
        (0x54, 0, 0, 0x12),  # BPF_ALU | BPF_AND | BPF_K: A &= SYN | ACK
        (0x15, 0, 1, 0x02),  # BPF_JMP | BPF_JEQ | BPF_K: a SYN without ACK?
        (0x06, 0, 0, 0),  # BPF_RET | BPF_K: yes, keep no byte (drop it)
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: no, keep it whole
    )
)

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
    code = _DROP_CONNECTION_ATTEMPTS
    program = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog: the number of instructions and a pointer to them
    # (the kernel copies them during the call).
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(program))
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
    """Wait (until the monotonic time ``until`` at most) for the TCP listeners'
    accept queues to empty."""
    tcp = [listener for listener in listeners if _is_tcp(listener)]
    while time.monotonic() < until:
        waiting = queued(tcp)
        if not waiting:
            return
        time.sleep(0.005)


__all__ = ["queued", "refuse_new_connections", "wait_until_accepted"]
