"""The graceful ``sync`` worker."""

from __future__ import annotations

import errno
import select
import signal
import threading
import time

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from .base import GracefulWorkerMixin

_NOTHING_WAITING = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED)

#: How long the connections taken from the backlog during the drain may take,
#: together, to send their first byte: a client's request is there on connect.
BACKLOG_FIRST_BYTE = 1.0


# Not named "...SyncWorker": gunicorn silently swaps a worker class whose name
# ends so for its stock gthread worker when threads > 1 (GUNICORN.md 4.6).
class GracefulSync(GracefulWorkerMixin, SyncWorker):
    """gunicorn's sync worker with the graceful shutdown sequence."""

    def init_signals(self) -> None:
        """Let the coordinator see a SIGTERM that arrives during a blocking call.

        gunicorn restarts system calls after SIGTERM (``SA_RESTART``, so that a
        request is not disturbed), so while the main thread waits in ``recv()``
        (a client that stalls its body, a slow database) the Python handler
        would not run until that call returns, and the worker would not begin
        its shutdown. The C handler still writes the signal's number to the
        wakeup pipe, which the coordinator thread reads. Our stop wakes
        gunicorn's loop through its own pipe (:meth:`stop_serving`).
        """
        super().init_signals()
        assert self.graceful is not None  # created by the mixin's init_signals
        self.graceful.use_as_signal_wakeup()

    def serve_backlog(self) -> None:
        """Serve the connections still queued in the listen backlog, within the drain.

        A sync worker accepts one connection at a time, so when a stop begins,
        clients that connected meanwhile wait in the kernel's backlog; gunicorn
        would leave them there to be reset when the last worker exits.
        """
        graceful = self.graceful
        sequence = graceful.sequence if graceful is not None else None
        if sequence is None or sequence.quick:
            return
        # One window for all of them: a client's request is there on connect, and
        # twenty silent connections must not cost twenty seconds.
        first_bytes_by = time.monotonic() + BACKLOG_FIRST_BYTE
        for listener in self.sockets:
            while time.monotonic() < sequence.drain_deadline and not sequence.quick:
                try:
                    client, addr = listener.accept()
                except OSError as exc:
                    if exc.errno in _NOTHING_WAITING:
                        break
                    raise
                client.setblocking(True)
                util.close_on_exec(client)
                self.notify()
                wait = min(first_bytes_by, sequence.drain_deadline) - time.monotonic()
                if not select.select([client], [], [], max(0.0, wait))[0]:
                    # Silent (a load balancer's pre-opened connection, a slowloris): the
                    # parser would hold this worker until the drain deadline. Plain
                    # gunicorn resets it when the worker exits; so, sooner, do we.
                    util.close(client)
                    continue
                self.handle(listener, client, addr)

    def interrupt_main(self) -> None:
        """Serve the request in the main thread no longer: raise SystemExit in it.

        The handler raises only when the shutdown is over; gunicorn 22+ then
        answers 500 to that request, as its own quick stop does.
        """
        main = threading.main_thread().ident
        if main is not None:
            signal.pthread_kill(main, signal.SIGQUIT)
