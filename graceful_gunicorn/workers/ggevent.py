"""The graceful ``gevent`` worker (``pip install graceful_gunicorn[gevent]``)."""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventWorker

from .base import GracefulWorkerMixin


class GracefulGevent(GracefulWorkerMixin, GeventWorker):
    """gunicorn's gevent worker with the graceful shutdown sequence.

    gevent patches ``threading``, so the coordinator and the callbacks run in
    greenlets: a callback that never yields cannot be timed out.
    """
