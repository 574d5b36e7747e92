"""The graceful ``gevent`` worker (``pip install graceful_gunicorn[gevent]``)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import io
import select
import socket
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any, cast

import gevent
import gevent.event
import gevent.monkey
import gevent.threadpool
import greenlet
from gunicorn.workers.base import Worker
from gunicorn.workers.ggevent import GeventWorker

from .. import compat
from .base import LINGER_MARGIN, STOP_KEEPALIVE_LINGER, GracefulWorkerMixin

_monotonic = time.monotonic  # on every request's path

#: The blocking poll, never gevent's: the hub itself asks it (close_if_idle).
_poll = gevent.monkey.get_original("select", "poll")
_POLLIN = select.POLLIN


class _Connection:
    """A client connection, and whether its greenlet waits for a request on it.

    Also the context gunicorn waits for each request of the connection in
    (``timeout_ctx``): it wraps gunicorn's keep-alive timeout and marks the
    connection as waiting meanwhile. One object per connection, none per request.
    """

    __slots__ = ("greenlet", "sock", "timeout", "waiting", "waiting_since", "waits")

    def __init__(self, sock: socket.socket, serving: Any) -> None:
        self.sock = sock
        #: The greenlet that serves it.
        self.greenlet = serving
        self.timeout: Any = None
        self.waiting = False
        self.waiting_since = 0.0
        #: How many requests it waited for; from the second on, it was kept alive.
        self.waits = 0

    def __enter__(self) -> Any:
        assert self.timeout is not None  # set by timeout_ctx
        self.waits += 1
        self.waiting = True
        self.waiting_since = _monotonic()
        return self.timeout.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        self.waiting = False
        assert self.timeout is not None
        return cast("bool | None", self.timeout.__exit__(*exc_info))

    def lingered(self, stopped_at: float, close_by: float) -> bool:
        """Waiting, since ``STOP_KEEPALIVE_LINGER`` after a response and the stop
        (``stopped_at``) or past ``close_by``, for a next request of which no byte
        has arrived."""
        if not self.waiting or self.waits < 2:
            return False
        now = time.monotonic()
        if now < close_by and now - max(self.waiting_since, stopped_at) < STOP_KEEPALIVE_LINGER:
            return False
        try:
            readable = _poll_in(self.sock)
        except (OSError, ValueError):
            return False
        return not readable and _waits_for_first_byte(self.greenlet)

    def close_if_idle(self, stopped_at: float, close_by: float) -> None:
        """End the wait for a next request as gunicorn's keep-alive timeout would.

        Run by the hub, while the connection's greenlet is suspended: looked at
        again, since the client may have sent meanwhile. The timeout is thrown
        in, not ``GreenletExit``: gunicorn swallows its own keep-alive timeout
        and closes the connection without a response, where any other
        exception gets a 500 written onto it (base_async.py ``handle``).
        """
        if (
            self.timeout is not None
            and not self.greenlet.dead
            and self.lingered(stopped_at, close_by)
        ):
            self.greenlet.throw(self.timeout)


def _poll_in(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes to read, now (poll: any descriptor number)."""
    poller = _poll()
    poller.register(sock.fileno(), _POLLIN)
    return bool(poller.poll(0))


#: The parser's methods that read more of a request (gunicorn http/message.py:
#: ``get_data`` to 26, ``read_into`` from 27), called with ``stop=True`` for
#: its first byte.
_PARSER_READS = frozenset({"get_data", "read_into"})


def _waits_for_first_byte(serving: Any) -> bool:
    """Whether ``serving`` waits inside gunicorn's parser with no byte of a request.

    A request whose first bytes arrived sits in the parser's buffer, no
    longer in the socket. Unknown ground (another parser) counts as started:
    such a connection then ends as in plain gunicorn, at its keep-alive timeout.
    """
    frame = getattr(serving, "gr_frame", None)
    while frame is not None:
        if frame.f_code.co_name in _PARSER_READS and "buf" in frame.f_code.co_varnames:
            buf = frame.f_locals.get("buf")
            if isinstance(buf, io.BytesIO):  # gunicorn up to 26
                received = buf.tell()
            elif isinstance(buf, (bytes, bytearray)):  # gunicorn 27
                received = len(buf)
            else:
                return False
            return received == 0 and frame.f_locals.get("stop") is True
        frame = frame.f_back
    return False


class GracefulGevent(GracefulWorkerMixin, GeventWorker):
    """gunicorn's gevent worker with the graceful shutdown sequence.

    gevent patches ``threading``, so the shutdown thread and the callbacks run in
    greenlets: a callback that never yields cannot be timed out.

    gunicorn's gevent worker keeps an idle kept-alive connection open for its
    whole ``keepalive`` timeout after it stopped accepting, so this one tracks
    which connections wait for a next request and closes those that waited
    ``STOP_KEEPALIVE_LINGER`` during the drain.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: dict[Any, _Connection] = {}
        self._stop_requested: gevent.event.Event | None = None
        self._listener_names: dict[int, Any] = {}
        self._stopped_at = 0.0
        self._close_idle_by = float("inf")

    def run(self) -> None:
        """gunicorn's loop, with its one-second sleeps cut short once we stop.

        gunicorn's gevent loop sleeps a second between looks at ``alive``, and
        a second between looks at its connection pool once stopping: up to two
        seconds between the last request and the exit. This worker process
        gives that loop a ``gevent`` whose ``sleep`` wakes when the stop
        begins and then looks every 20 ms.
        """
        self._stop_requested = gevent.event.Event()
        self._listener_names = {id(s): s.getsockname() for s in self.sockets}
        compat.replace_gevent_of_ggevent(_StopAwareGevent(self._stop_requested))
        super().run()

    def load_wsgi(self) -> None:
        """Load the app; its async callbacks' event loops run in native threads."""
        super().load_wsgi()
        assert self.shutdown is not None and self.shutdown.lifecycle is not None
        self.shutdown.lifecycle.run_async = _run_in_a_native_thread

    def notify(self) -> None:
        """Tell the master this worker is alive; an orphan still finishes its shutdown.

        gunicorn's gevent ``notify`` calls ``sys.exit`` once the parent changed
        (the master was killed): from our heartbeat that would end the process in
        the middle of a callback. Once the shutdown began, only the heartbeat.
        """
        shutdown = self.shutdown
        if shutdown is not None and shutdown.requested is not None:
            Worker.notify(self)
            return
        super().notify()

    def stop_serving(self, drain_seconds: float) -> None:
        """Stop accepting, and wake gunicorn's loop at once."""
        self._stopped_at = time.monotonic()
        self._close_idle_by = self._stopped_at + max(0.0, drain_seconds - LINGER_MARGIN)
        super().stop_serving(drain_seconds)
        if self._stop_requested is not None:
            self._stop_requested.set()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        """Serve one connection (in its own greenlet), tracked while it lasts."""
        current = gevent.getcurrent()
        self._connections[current] = _Connection(client, current)
        try:
            # A connection accepted just before the stop closed the listener
            # must still learn the listener's address, which gunicorn asks for.
            name = self._listener_names.get(id(listener))
            super().handle(_NamedListener(listener, name) if name else listener, client, addr)
        finally:
            self._connections.pop(current, None)

    # types-gunicorn says None; gunicorn returns a gevent.Timeout.
    def timeout_ctx(self) -> AbstractContextManager[Any]:  # type: ignore[override]
        """gunicorn waits for each request of a connection inside this context."""
        timeout = cast("AbstractContextManager[Any]", super().timeout_ctx())
        connection = self._connections.get(gevent.getcurrent())
        if connection is None:
            return timeout
        connection.timeout = timeout
        return connection

    def release_idle_connections(self, *, drain_over: bool = False) -> None:
        """Close the kept-alive connections on which no request came in time
        (``drain_over``: all those still waiting for one)."""
        loop = gevent.get_hub().loop
        close_by = float("-inf") if drain_over else self._close_idle_by
        for connection in list(self._connections.values()):
            if connection.lingered(self._stopped_at, close_by):
                loop.run_callback(connection.close_if_idle, self._stopped_at, close_by)

    def request_frames(self) -> dict[int, FrameType]:
        """Requests run in greenlets, whose ident is ``id(greenlet)`` under gevent."""
        frames = super().request_frames()
        for obj in gc.get_objects():
            if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
                frames[id(obj)] = obj.gr_frame
        return frames


def _run_in_a_native_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` in one of gevent's native threads, in this greenlet's context.

    asyncio keeps the running loop per OS thread, and every greenlet shares the
    main one: a loop run here would be "running" for each request that uses
    asyncio meanwhile (``asyncio.run()`` in a view: a RuntimeError), and one left
    running by an abandoned callback would fail the next async callback.
    """
    context = contextvars.copy_context()  # the app context, for the coroutine's tasks
    # A pool of its own: the hub's (10 threads, gevent's DNS resolver's too) must not
    # run dry when callbacks block in C calls past their timeouts.
    pool = gevent.threadpool.ThreadPool(1)
    try:
        # The exception comes back as a value: gevent's pool prints a traceback
        # of its own (to stderr, past gunicorn's log) for one raised in a thread.
        failure = pool.apply(context.run, (_exception_of, asyncio.run, coroutine))
    finally:
        pool.kill()
    if failure is not None:
        try:
            raise failure
        finally:
            del failure  # no cycle through the traceback's frame


def _exception_of(run: Callable[[Any], Any], coroutine: Any) -> BaseException | None:
    try:
        run(coroutine)
    except BaseException as exc:  # noqa: BLE001 - raised again in the calling greenlet
        return exc
    return None


class _StopAwareGevent:
    """The ``gevent`` module as gunicorn's gevent loop sees it in a graceful worker."""

    #: How often the loop looks at its connection pool once the worker stops.
    STOPPING_TICK = 0.02

    #: Looked up on every request (``timeout_ctx``): no ``__getattr__`` for it.
    Timeout = gevent.Timeout

    def __init__(self, stop_requested: gevent.event.Event) -> None:
        self._stop_requested = stop_requested

    def sleep(self, seconds: float = 0) -> None:
        """Sleep, but no longer than :attr:`STOPPING_TICK` once the worker stops."""
        if seconds <= self.STOPPING_TICK:
            gevent.sleep(seconds)
        elif self._stop_requested.is_set():
            gevent.sleep(self.STOPPING_TICK)
        else:
            self._stop_requested.wait(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(gevent, name)


class _NamedListener:
    """A listener whose address is known even after it was closed."""

    def __init__(self, listener: Any, name: Any) -> None:
        self._listener = listener
        self._name = name

    def getsockname(self) -> Any:
        """The address the listener had."""
        return self._name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)
