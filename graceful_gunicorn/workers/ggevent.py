"""The graceful ``gevent`` worker (``pip install graceful_gunicorn[gevent]``)."""

from __future__ import annotations

import gc
from types import FrameType

import greenlet
from gunicorn.workers.ggevent import GeventWorker

from .base import GracefulWorkerMixin


class GracefulGevent(GracefulWorkerMixin, GeventWorker):
    """gunicorn's gevent worker with the graceful shutdown sequence.

    gevent patches ``threading``, so the coordinator and the callbacks run in
    greenlets: a callback that never yields cannot be timed out.
    """

    def request_frames(self) -> dict[int, FrameType]:
        """Requests run in greenlets, whose ident is ``id(greenlet)`` under gevent."""
        frames = super().request_frames()
        for obj in gc.get_objects():
            if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
                frames[id(obj)] = obj.gr_frame
        return frames
