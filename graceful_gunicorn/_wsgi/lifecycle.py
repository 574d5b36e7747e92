"""The public :class:`Lifecycle`: the core's, plus the middleware that counts requests.

A plain WSGI application uses it directly::

    lifecycle = Lifecycle()

    @lifecycle.on_shutdown(timeout=5)
    def flush() -> None: ...

    application = lifecycle.wrap(wsgi_app)   # counts in-flight requests

The gunicorn workers find the lifecycle through the application they load
(:mod:`.discovery`) and run its
:class:`~graceful_gunicorn._core.sequence.ShutdownSequence` when they stop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._core import lifecycle
from .middleware import InFlightMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class Lifecycle(lifecycle.Lifecycle):
    """The shutdown lifecycle of one WSGI application.

    Callbacks are registered with :meth:`before_shutdown`, :meth:`on_shutdown`
    and :meth:`after_shutdown`, bare or with ``timeout=`` and ``reasons=``;
    each decorator returns the function unchanged. :meth:`wrap` counts the
    app's requests, so that the drain waits for them.
    """

    def wrap(self, app: WSGIApplication) -> InFlightMiddleware:
        """Wrap ``app`` in the middleware that counts its in-flight requests."""
        return InFlightMiddleware(app, self.requests, owner=self, readiness=self.readiness)


__all__ = ["Lifecycle"]
