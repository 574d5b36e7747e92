"""The graceful ``sync`` worker."""

from __future__ import annotations

import signal
import threading

from gunicorn.workers.sync import SyncWorker

from .base import GracefulWorkerMixin


# Not named "...SyncWorker": gunicorn silently swaps a worker class whose name
# ends so for its stock gthread worker when threads > 1 (GUNICORN.md 4.6).
class GracefulSync(GracefulWorkerMixin, SyncWorker):
    """gunicorn's sync worker with the graceful shutdown sequence."""

    def interrupt_main(self) -> None:
        """Serve the request in the main thread no longer: raise SystemExit in it.

        The handler raises only when the shutdown is over; gunicorn 22+ then
        answers 500 to that request, as its own quick stop does.
        """
        main = threading.main_thread().ident
        if main is not None:
            signal.pthread_kill(main, signal.SIGQUIT)
