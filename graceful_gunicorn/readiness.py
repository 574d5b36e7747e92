"""The readiness endpoint, and telling a worker that its server is going away.

A load balancer or Kubernetes probes ``readiness_path``; the middleware
answers it before the app sees the request: ``200 ready`` while serving,
``503 stopping`` once the server is going away. It answers only ``GET`` and
``HEAD`` on that exact path and says nothing else: no version, no count, no
stack. It only reads state; nothing a client sends can start or change a
shutdown.

Every request served while the server is going away, or while this worker
stops, has its connection closed after the response (``close_connection``,
which the graceful worker points at gunicorn's response): clients reconnect
through the listen socket to a worker or server that is not going away.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_READY = b"ready\n"
_STOPPING = b"stopping\n"
_NOT_ALLOWED = b"method not allowed\n"


class ByteFlag(Protocol):
    """One byte read by index: a ``bytearray`` or the master's shared ``mmap``."""

    def __getitem__(self, index: int, /) -> int: ...


def _leave_open(start_response: StartResponse) -> None:
    pass


class Readiness:
    """Whether the server is going away, and the answer of the readiness path."""

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
        #: Closes the connection of the request ``start_response`` belongs to.
        self.close_connection: Callable[[StartResponse], None] = _leave_open

    def going_away(self) -> bool:
        """Whether the server is shutting down (readiness answers 503)."""
        return bool(self.server_flag[0]) or (self.standalone and self.stopping)

    def respond(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer a request for :attr:`path`."""
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            status, body, extra = "405 Method Not Allowed", _NOT_ALLOWED, [("Allow", "GET, HEAD")]
        elif self.going_away():
            status, body, extra = "503 Service Unavailable", _STOPPING, []
        else:
            status, body, extra = "200 OK", _READY, []
        start_response(
            status,
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                *extra,
            ],
        )
        if self.stopping or self.server_flag[0]:
            self.close_connection(start_response)  # a probe's connection too
        return [] if method == "HEAD" else [body]
