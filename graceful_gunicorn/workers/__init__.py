"""Graceful subclasses of gunicorn's workers.

``-k sync``, ``-k gthread`` and ``-k gevent`` are mapped to these by
``graceful_gunicorn.conf``; they can also be named directly, for example
``-k graceful_gunicorn.workers.GracefulThread``. ``ThreadWorker`` and
``GeventWorker`` are the same classes under gunicorn's names. There is no
``SyncWorker`` alias: gunicorn replaces any class so named by gthread when
``threads > 1``.
"""

from __future__ import annotations

from typing import Any

from .._gunicorn.workers.base import GracefulWorkerMixin
from .._gunicorn.workers.gthread import GracefulThread
from .._gunicorn.workers.sync import GracefulSync

ThreadWorker = GracefulThread

__all__ = [
    "GeventWorker",
    "GracefulGevent",
    "GracefulSync",
    "GracefulThread",
    "GracefulWorkerMixin",
    "ThreadWorker",
]


def __getattr__(name: str) -> Any:
    # gevent is optional: import its worker only when asked for.
    if name in ("GracefulGevent", "GeventWorker"):
        from .._gunicorn.workers.ggevent import GracefulGevent

        return GracefulGevent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
