"""Which requests are in flight, exactly, and how each one ended.

A request counts from the moment the WSGI middleware
(:class:`graceful_gunicorn._wsgi.middleware.InFlightMiddleware`) adds it to
:attr:`InFlight.active` until its response is closed. The bookkeeping is one
set insertion and one removal per request: both are atomic in CPython, so no
lock is taken on the request path (a real lock would also block the gevent
hub). Once a shutdown watches them (:meth:`InFlight.watch_ends`), the set
becomes one whose removal also records how each request ended (an append,
atomic too): served, or cut by a ``BaseException`` that is not an
``Exception`` (``GreenletExit`` from gevent's kill, ``SystemExit``): the
process, not the app, ended it, whatever the server then answers. Until then
the request path runs no code of ours for it.

A request here is any object with ``environ`` (a dict, PEP 3333's, shared by
nested middleware of one request), ``started`` (a :func:`time.monotonic`
time) and ``thread_id``; nothing here imports a web framework or a server.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import Any

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def printable(value: object) -> str:
    """``value`` as text for a log line: control characters and ``\\`` escaped.

    A client chooses its request's path: a ``%0A`` in it must not start a
    forged line in the log that operators alert on.
    """
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


@dataclass(frozen=True)
class RequestInfo:
    """A request in flight, as logs show it (method and path escaped by :func:`printable`)."""

    method: str
    path: str
    seconds: float
    thread_id: int


#: How one request ended, once watched: a token stored in its environ (which
#: inner and outer middleware of one request share) and whether it was served.
End = tuple[object, bool]
_END_TOKEN = "graceful_gunicorn.ended"


class _Ended:
    """Stored in a watched request's environ as it ends, to count it once."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<graceful_gunicorn: this request has ended>"


def _key(environ: Any) -> object:
    """What names a request in the ends: a token in its environ (nested middleware
    share the environ, and the environ, with what hangs on it, is not kept alive);
    for an environ that takes no new key (not a dict), the environ itself."""
    if isinstance(environ, dict):
        return environ.setdefault(_END_TOKEN, _Ended())
    return _Same(environ)  # PEP 3333 asks for a dict; count it anyway


class _Same:
    """A key equal only for one object, hashable whatever it is."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


class ActiveRequests(set):  # type: ignore[type-arg]
    """The requests in flight: a plain set's C methods on the request path."""

    __slots__ = ("ends",)
    #: Set by :meth:`InFlight.watch_ends`, when the set becomes :class:`_Watched`.
    ends: list[End]


class _Watched(ActiveRequests):
    """The requests in flight, once a shutdown watches how each one ends.

    Only the class of the set changes (same layout), so requests already in
    flight, which hold the set, are watched too.
    """

    __slots__ = ()

    def discard(self, request: Any) -> None:
        """Remove ``request`` and record its end: served unless a ``BaseException``
        that is no ``Exception`` is propagating (``GreenletExit`` from gevent's
        kill, ``SystemExit``: the process, not the app, ended it, whatever the
        server then answers). Recorded before the removal, so that a count taken
        meanwhile sees it in both places, never in neither; counts dedupe."""
        if request in self:
            try:
                cut = sys.exc_info()[0]
                self.ends.append((_key(request.environ), cut is None or issubclass(cut, Exception)))
            finally:
                set.discard(self, request)


@dataclass(frozen=True)
class RequestEnds:
    """Requests by how they ended since a shutdown began watching, and those in flight."""

    served: int
    cut: int
    #: In flight and not ended, oldest first.
    left: list[RequestInfo]


class InFlight:
    """The requests this process is serving right now."""

    def __init__(self) -> None:
        self.active: ActiveRequests = ActiveRequests()
        #: One entry per request ended since :meth:`watch_ends`; ``None`` until
        #: a shutdown watches.
        self.ends: list[End] | None = None

    def _sets(self) -> list[ActiveRequests]:
        return [self.active]

    def _in_flight(self) -> list[Any]:
        """The requests in flight, one per environ (nested middleware count once)."""
        unique: dict[int, Any] = {}
        for active in self._sets():
            for request in list(active):
                unique.setdefault(id(request.environ), request)
        return list(unique.values())

    def __len__(self) -> int:
        return len(self.active)

    def watch_ends(self, ends: list[End] | None = None) -> list[End]:
        """From now on, record each request's end in ``ends`` (a new list by default)."""
        self.ends = [] if ends is None else ends
        for active in self._sets():
            active.ends = self.ends
            active.__class__ = _Watched
        return self.ends

    def tally(self) -> RequestEnds:
        """How the requests ended since :meth:`watch_ends`, each counted once."""
        in_flight = self._in_flight()  # first: a request leaves it after it ended
        ended = dict((self.ends or [])[:])
        served = sum(ended.values())
        left = [r for r in in_flight if _ended_key(r.environ) not in ended]
        return RequestEnds(served, len(ended) - served, _describe(left))

    def snapshot(self) -> list[RequestInfo]:
        """The requests in flight, oldest first."""
        return _describe(self._in_flight())


def _ended_key(environ: Any) -> object:
    """The key :func:`_key` gave ``environ``'s end, if it ended (``None`` if not)."""
    return environ.get(_END_TOKEN) if isinstance(environ, dict) else _Same(environ)


def _describe(requests: list[Any]) -> list[RequestInfo]:
    now = time.monotonic()
    return [
        RequestInfo(
            method=printable(r.environ.get("REQUEST_METHOD", "?")),
            path=printable(r.environ.get("PATH_INFO", "?")),
            seconds=now - r.started,
            thread_id=r.thread_id,
        )
        for r in sorted(requests, key=lambda r: r.started)
    ]


__all__ = ["ActiveRequests", "InFlight", "RequestEnds", "RequestInfo", "printable"]
