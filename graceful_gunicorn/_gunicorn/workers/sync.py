"""The graceful ``sync`` worker."""

from __future__ import annotations

import errno
import select
import signal
import socket
import threading
import time
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from .. import listeners
from .base import GracefulWorkerMixin

_NOTHING_WAITING = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED)

#: How long a connection taken from the backlog during the drain may take to send
#: its first byte: a client's request is there on connect, or a moment after.
BACKLOG_FIRST_BYTE = 1.0


# Not named "...SyncWorker": gunicorn silently swaps a worker class whose name
# ends so for its stock gthread worker when threads > 1 (config.py
# ``Config.worker_class``: ``uri.endswith('SyncWorker')``).
class GracefulSync(GracefulWorkerMixin, SyncWorker):
    """gunicorn's sync worker with the graceful shutdown sequence."""

    def init_signals(self) -> None:
        """Let the shutdown thread see a SIGTERM that arrives during a blocking call.

        gunicorn restarts system calls after SIGTERM (``SA_RESTART``, so that a
        request is not disturbed), so while the main thread waits in ``recv()``
        (a client that stalls its body, a slow database) the Python handler
        would not run until that call returns, and the worker would not begin
        its shutdown. The C handler still writes the signal's number to the
        wakeup pipe, which the shutdown thread reads. Our stop wakes
        gunicorn's loop through its own pipe (:meth:`stop_serving`).
        """
        super().init_signals()
        assert self.shutdown is not None  # created by the mixin's init_signals
        self.shutdown.use_as_signal_wakeup()

    def serve_backlog(self) -> None:
        """Serve what is queued, then close this worker's copy of the listeners.

        gunicorn's sync worker keeps them until it exits, after the callbacks:
        when the server stops, the listening socket would live that long,
        completing connections nobody accepts (listeners.py).
        """
        try:
            self._serve_queued()
        finally:
            for listener in self.sockets:
                util.close(listener)

    def _serve_queued(self) -> None:
        """Serve the connections still queued in the listen backlog, within the drain.

        A sync worker accepts one connection at a time, so when a stop begins,
        clients that connected meanwhile wait in the kernel's backlog; gunicorn
        would leave them there to be reset when the last worker exits.

        Connections are taken one at a time, as gunicorn's loop does, so that
        the sibling workers share the backlog, and each is served once its
        request arrives. One that sends nothing for ``BACKLOG_FIRST_BYTE`` (a
        load balancer's pre-opened connection, a slowloris) is closed without a
        response, as plain gunicorn resets it at exit: the parser would hold the
        worker until the drain deadline. Silent ones wait side by side, while
        the next connections are taken.
        """
        shutdown = self.shutdown
        sequence = shutdown.sequence if shutdown is not None else None
        if sequence is None or sequence.quick:
            return
        pending: dict[socket.socket, tuple[socket.socket, Any, float]] = {}
        # What was queued when the stop began; under steady traffic more keeps
        # coming, which plain gunicorn never serves, and which would hold the worker
        # (and on_shutdown) until the drain deadline.
        left = listeners.queued(self.sockets)
        while time.monotonic() < sequence.drain_deadline and not sequence.quick:
            ready = select.select(list(pending), [], [], 0)[0] if pending else []
            if not ready and (left is None or left > 0) and self._take_one(pending):
                left = None if left is None else left - 1
                continue  # a new connection: its request is usually there already
            if not ready:
                if not pending:
                    return
                expires = min(t for _, _, t in pending.values()) + BACKLOG_FIRST_BYTE
                wait = max(0.0, min(expires, sequence.drain_deadline) - time.monotonic())
                watched = self.sockets if left is None or left > 0 else []
                woke = select.select([*pending, *watched], [], [], wait)[0]
                ready = [c for c in woke if c in pending]
                if not ready:
                    self._close_silent(pending)
                    continue
            listener, addr, _ = pending.pop(ready[0])
            self.notify()
            self.handle(listener, ready[0], addr)
        for client in pending:
            util.close(client)

    def _take_one(self, pending: dict[socket.socket, tuple[socket.socket, Any, float]]) -> bool:
        """Accept one queued connection, if any (the rest stay for the sibling workers)."""
        for listener in self.sockets:
            try:
                client, addr = listener.accept()
            except OSError as exc:
                if exc.errno in _NOTHING_WAITING:
                    continue
                raise
            client.setblocking(True)
            util.close_on_exec(client)
            pending[client] = (listener, addr, time.monotonic())
            return True
        return False

    @staticmethod
    def _close_silent(pending: dict[socket.socket, tuple[socket.socket, Any, float]]) -> None:
        """Close the connections that sent nothing for ``BACKLOG_FIRST_BYTE``."""
        now = time.monotonic()
        for client in [c for c, (_, _, t) in pending.items() if now - t >= BACKLOG_FIRST_BYTE]:
            del pending[client]
            util.close(client)

    def interrupt_main(self) -> None:
        """Serve the request in the main thread no longer: raise SystemExit in it.

        The handler raises only when the shutdown is over; gunicorn 22+ then
        answers 500 to that request, as its own quick stop does.
        """
        main = threading.main_thread().ident
        if main is not None:
            signal.pthread_kill(main, signal.SIGQUIT)
