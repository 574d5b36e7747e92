"""The graceful ``gthread`` worker."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from .. import compat
from .base import LINGER_MARGIN, STOP_KEEPALIVE_LINGER, GracefulWorkerMixin


class _Finishing(threading.local):
    """Per thread: whether its ``finish_request`` keeps a connection."""

    # A class default: reading it where it was never set raises no AttributeError
    # (whose message costs more than the rest of ``alive``, read thrice a request).
    keep = False


class GracefulThread(GracefulWorkerMixin, ThreadWorker):
    """gunicorn's gthread worker with the graceful shutdown sequence.

    Requests run in the thread pool, so the main thread is never stuck in one;
    the in-flight count covers requests that outlive gunicorn's own drain.
    """

    _serving = True
    #: gunicorn 24+: its method queue's ``defer`` that writes only while it is open.
    _defer_while_open: Callable[..., None] | None = None
    _linger_until: float | None = None
    _lingered = False
    _lock: AbstractContextManager[object]  # gunicorn before 24 only
    _finishing = _Finishing()

    @property
    def alive(self) -> bool:
        """False once told to stop; gunicorn's loop (before 24) sees it after a linger."""
        if self._serving or self._finishing.keep:
            return True
        if (
            not compat.GTHREAD_DROPS_POLLED_CONNECTIONS
            or self._lingered
            or threading.current_thread() is not threading.main_thread()
        ):
            return False
        return self._serve_polled_connections()

    @alive.setter
    def alive(self, value: bool) -> None:
        if not value and self._serve_until_replaced(sys._getframe(1)):
            return
        shutdown = getattr(self, "shutdown", None)  # unset while Worker.__init__ runs
        if not value and self._serving and shutdown is not None and shutdown.requested is None:
            # gunicorn stops by itself (max_requests): start our sequence now, so
            # that its drain gets heartbeats and a keep-alive linger.
            shutdown.request("recycle")
        self._serving = value

    def run(self) -> None:
        """gunicorn's loop; from 24 on, nothing goes into its queue once it closed it."""
        if not compat.GTHREAD_DROPS_POLLED_CONNECTIONS:
            self._guard_method_queue()
        super().run()

    def _guard_method_queue(self) -> None:
        """Our stop keeps the process running for seconds after gunicorn's loop,
        while a request that outlived the drain finishes (its done-callback defers
        ``finish_request``) and the app opens files: from the stop on (see
        stop_serving), every write to the queue checks first that it is open.
        Before it, the request path keeps gunicorn's own ``defer``: a request
        ends before the loop does."""
        self._defer_while_open = compat.guard_method_queue(self.method_queue)

    def stop_serving(self, drain_seconds: float) -> None:
        """Stop accepting; on gunicorn 24-26, close idle keep-alive connections after a linger."""
        defer_while_open = self._defer_while_open
        if defer_while_open is not None:
            compat.replace_method_queue_defer(self.method_queue, defer_while_open)
        super().stop_serving(drain_seconds)
        if not compat.GTHREAD_HOLDS_IDLE_KEEPALIVE:
            return
        # Closed before the drain deadline, so that the drain ends by itself.
        linger = min(STOP_KEEPALIVE_LINGER, max(0.0, drain_seconds - LINGER_MARGIN))
        self._linger_until = time.monotonic() + linger
        self.method_queue.defer(self._cap_idle_keepalive, time.monotonic() + linger)
        wake = threading.Timer(linger, self.method_queue.defer, (self.murder_keepalived,))
        wake.daemon = True
        wake.start()

    def release_idle_connections(self, *, drain_over: bool = False) -> None:
        """Once the drain is over (done, its deadline, a Ctrl+C during it), close the
        kept-alive connections at once: gunicorn's loop would keep them its linger
        long, and a Ctrl+C during a graceful stop ends in a SIGKILL 2 s after the
        master passed it on (gunicorn 25+, arbiter.py ``stop``)."""
        if not drain_over:
            return
        if compat.GTHREAD_DROPS_POLLED_CONNECTIONS:
            self._linger_until = time.monotonic()  # _serve_polled_connections closes them
            return
        # In gunicorn's main loop, which the queue wakes; the murder closes what expired.
        self.method_queue.defer(self._cap_idle_keepalive, time.monotonic())
        self.method_queue.defer(self.murder_keepalived)

    # gunicorn 27 keeps such a connection itself: nothing of ours on its request path.
    if compat.GTHREAD_CLOSES_ANNOUNCED_KEEPALIVE:

        def finish_request(self, *args: Any) -> None:
            """Keep a connection whose response announced keep-alive, as gunicorn 27 does.

            Its next request, which the client may be sending already, is then
            answered with ``Connection: close``, instead of the connection being
            reset. Only while gunicorn still serves its poller: the linger of
            ``_serve_polled_connections`` (before 24) or of ``stop_serving`` (24-26).
            """
            if self._serving:
                super().finish_request(*args)
                return
            if compat.GTHREAD_DROPS_POLLED_CONNECTIONS:
                with self._lock:  # in a request thread: against the end of the linger
                    self._finish_keeping(not self._lingered, args)
                return
            # 24-26: gunicorn's main thread, during its drain; the linger closes it.
            # Only a finished keep-alive response (25-26 also return a "deferred" marker).
            conn, fs = args
            deadline = self._linger_until
            keep = deadline is None or time.monotonic() < deadline
            announced = not fs.cancelled() and fs.exception() is None and fs.result() is True
            self._finish_keeping(keep and announced, args)
            if keep and announced and deadline is not None and conn.timeout is not None:
                conn.timeout = min(conn.timeout, deadline)

    def _finish_keeping(self, keep: bool, args: tuple[Any, ...]) -> None:
        self._finishing.keep = keep
        try:
            super().finish_request(*args)
        finally:
            self._finishing.keep = False

    def _cap_idle_keepalive(self, deadline: float) -> None:
        # In gunicorn's main loop; the deque stays sorted by timeout.
        for conn in self.keepalived_conns:
            if conn.timeout is None or conn.timeout > deadline:
                conn.timeout = deadline

    def _serve_polled_connections(self) -> bool:
        """Keep gunicorn's loop (before 24) running for the connections it would drop.

        Runs in its main loop: stops accepting, lets the connections already
        accepted send their request (answered with ``Connection: close``, as
        ``alive`` is False in the request threads) for ``STOP_KEEPALIVE_LINGER`` at
        most, then closes the ones that sent nothing.
        """
        now = time.monotonic()
        if self._linger_until is None:
            self._linger_until = now + min(STOP_KEEPALIVE_LINGER, float(self.cfg.graceful_timeout))
            for listener in self.sockets:
                with suppress(KeyError, ValueError, OSError):
                    self.poller.unregister(listener)
        with self._lock:
            polled = compat.polled_connections(self.poller)
            waiting = [conn for conn in polled if isinstance(conn, TConn)]
            # Connections in a request thread come back to the poller (finish_request).
            busy = self.nr_conns > len(waiting)
            if (waiting or busy) and now < self._linger_until:
                return True
            for conn in waiting:
                with suppress(KeyError, ValueError, OSError):
                    self.poller.unregister(conn.sock)
                conn.close()
            self._lingered = True
        return False
