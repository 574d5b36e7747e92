"""WSGI middleware that knows exactly which requests are in flight.

A request counts from the moment the middleware is called until the server
calls ``close()`` on the response iterable, as PEP 3333 requires every server
to do. Streaming responses, applications that raise, and clients that
disconnect mid-response therefore all end at zero::

    requests = InFlight()
    app = InFlightMiddleware(app, requests)
    ...
    len(requests)        # requests being served right now
    requests.snapshot()  # method, path, seconds in flight, serving thread

The counting itself is :mod:`graceful_gunicorn._core.in_flight`; this module
is what puts each request into it and takes it out.

A ``wsgi.file_wrapper`` response is returned as it is, with its ``close``
hooked, so that gunicorn keeps sending it with ``sendfile()``; a return
value that is not iterable (gunicorn's ``ALREADY_HANDLED`` for an app that
wrote to the socket itself) passes through untouched, no longer in flight.

Given a :class:`~graceful_gunicorn._core.readiness.Readiness`, the middleware
also answers its path (without counting it, :func:`answer_readiness`) and
closes the connection of each request served while the server goes away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .._core.in_flight import ActiveRequests, InFlight
from .._core.readiness import Readiness

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .._core.lifecycle import Lifecycle


class _Request:
    """One request in flight; also the response iterable handed to the server.

    Built without ``__init__`` by the middleware: this is on every request's path.
    """

    __slots__ = ("active", "environ", "iterable", "started", "thread_id")

    active: ActiveRequests
    environ: WSGIEnvironment
    iterable: Iterable[bytes]
    started: float
    thread_id: int

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.iterable)

    def close(self) -> None:
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        finally:
            self.active.discard(self)


_new_request = object.__new__
_monotonic = time.monotonic
# threading.get_ident is looked up on each call: gevent patches it after import.


class InFlightMiddleware:
    """Count the requests of ``app`` in ``requests`` until their response is closed."""

    def __init__(
        self,
        app: WSGIApplication,
        requests: InFlight,
        owner: Lifecycle | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.app = app
        self.requests = requests
        #: The lifecycle that made this middleware (:meth:`Lifecycle.wrap`), for
        #: the worker to find it (:mod:`graceful_gunicorn._wsgi.discovery`).
        self.owner = owner
        self.readiness = readiness

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request, counting it until its response is closed."""
        readiness = self.readiness
        if (
            readiness is not None
            and readiness.path is not None
            and environ.get("PATH_INFO") == readiness.path
        ):
            return answer_readiness(readiness, environ, start_response)
        request = _new_request(_Request)
        request.environ = environ
        request.started = _monotonic()
        request.thread_id = threading.get_ident()
        request.iterable = ()
        active = request.active = self.requests.active
        active.add(request)
        try:
            iterable = self.app(environ, start_response)
        except BaseException:
            # An Exception becomes the server's 500: served. GreenletExit is a cut.
            active.discard(request)
            raise
        # Asked once the app returned, so that a request that was running when
        # the stop began closes its connection too (gunicorn sends the headers
        # later, on the first write). Inline, not a method: every request runs it.
        if readiness is not None and (readiness.stopping or readiness.server_flag[0]):
            readiness.close_connection(start_response)
        if not hasattr(type(iterable), "__iter__"):
            # No response but a server's sentinel: gunicorn's ALREADY_HANDLED from
            # an app that wrote to environ["gunicorn.socket"] itself, compared by
            # identity (workers/base_async.py is_already_handled). It is done.
            active.discard(request)
            return iterable
        # PEP 3333 only asks for a callable; gunicorn's is a class, whose exact
        # type a file response has.
        if type(iterable) is environ.get("wsgi.file_wrapper"):
            return cast("Iterable[bytes]", _hook_close(iterable, request))
        request.iterable = iterable
        return request


def _hook_close(file_response: Any, request: _Request) -> Any:
    """Hook ``close`` of a file-wrapper response instead of wrapping it.

    gunicorn only uses ``sendfile()`` when the response *is* its
    ``FileWrapper``; a wrapper around it would be iterated block by block.
    """
    original = getattr(file_response, "close", None)

    def close() -> None:
        try:
            if original is not None:
                original()
        finally:
            request.active.discard(request)

    file_response.close = close
    return file_response


_READY = b"ready\n"
_STOPPING = b"stopping\n"
_NOT_ALLOWED = b"method not allowed\n"


def answer_readiness(
    readiness: Readiness, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer a request for ``readiness.path``: ``200 ready`` while serving,
    ``503 stopping`` once the server is going away, ``405`` but to ``GET`` and
    ``HEAD``. Nothing else is said: no version, no count, no stack."""
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        status, body, extra = "405 Method Not Allowed", _NOT_ALLOWED, [("Allow", "GET, HEAD")]
    elif readiness.going_away():
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
    if readiness.stopping or readiness.server_flag[0]:
        readiness.close_connection(start_response)  # a probe's connection too
    return [] if method == "HEAD" else [body]


__all__ = ["InFlight", "InFlightMiddleware", "answer_readiness"]
