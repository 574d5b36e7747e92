"""Whether the server is going away: the state behind the readiness endpoint.

A load balancer or Kubernetes probes ``readiness_path``; the WSGI middleware
answers it from this state before the app sees the request
(:func:`graceful_gunicorn._wsgi.middleware.answer_readiness`). It only reads
state; nothing a client sends can start or change a shutdown.

Every request served while the server is going away, or while this worker
stops, has its connection closed after the response (``close_connection``,
which the graceful worker points at gunicorn's response): clients reconnect
through the listen socket to a worker or server that is not going away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class ByteFlag(Protocol):
    """One byte read by index: a ``bytearray`` or the master's shared ``mmap``."""

    def __getitem__(self, index: int, /) -> int: ...


def _leave_open(start_response: Any) -> None:
    pass


class Readiness:
    """Whether the server is going away: what the readiness path answers from."""

    def __init__(self) -> None:
        #: The path answered here (``None``: every path goes to the app).
        self.path: str | None = None
        #: True once this process's own shutdown began (any reason).
        self.stopping = False
        #: Non-zero at index 0 once the whole server is going away. A graceful
        #: worker points it at its master's shared memory; the middleware
        #: reads it on every request, so it is a byte, not a method call.
        self.server_flag: ByteFlag = bytearray(1)
        #: Without a master to say so, this process stopping is the server going away.
        self.standalone = True
        #: Closes the connection of the request whose WSGI ``start_response``
        #: it is given (the graceful worker points it at gunicorn's response).
        self.close_connection: Callable[[Any], None] = _leave_open

    def serve_under(
        self,
        path: str | None,
        *,
        close_connection: Callable[[Any], None],
        server_flag: ByteFlag | None = None,
    ) -> None:
        """Answer ``path`` for a server: ``close_connection`` closes a response's
        connection; ``server_flag`` is the master's byte that says the whole
        server is going away (``None``: no master, this process is the server)."""
        self.path = path
        self.close_connection = close_connection
        if server_flag is not None:
            self.server_flag = server_flag
            self.standalone = False

    def going_away(self) -> bool:
        """Whether the server is shutting down (readiness answers 503)."""
        return bool(self.server_flag[0]) or (self.standalone and self.stopping)
