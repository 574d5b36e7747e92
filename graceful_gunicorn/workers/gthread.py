"""The graceful ``gthread`` worker."""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

from .base import GracefulWorkerMixin


class GracefulThread(GracefulWorkerMixin, ThreadWorker):
    """gunicorn's gthread worker with the graceful shutdown sequence.

    Requests run in the thread pool, so the main thread is never stuck in one;
    the in-flight count covers requests that outlive gunicorn's own drain.
    """
