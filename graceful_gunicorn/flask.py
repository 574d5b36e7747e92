"""The Flask extension: ``@app.before_shutdown``, ``@app.on_shutdown``, ``@app.after_shutdown``.

::

    app = Flask(__name__)
    graceful = GracefulShutdown(app)      # or GracefulShutdown() + init_app(app)

    @app.on_shutdown(timeout=5)
    def flush() -> None: ...              # runs inside app.app_context()

The extension is a thin layer over :class:`~graceful_gunicorn.Lifecycle`:
each app gets one lifecycle, kept in ``app.extensions["graceful_gunicorn"]``,
and its ``wsgi_app`` is wrapped in the in-flight middleware. Under ``flask
run`` the callbacks run once when the server exits (:mod:`.dev_server`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection
from typing import Any

from flask import Flask, current_app, has_app_context, request

from ._core.callbacks import CallbackT, Registration
from ._core.context import Phase
from ._core.decorators import ShutdownDecorators
from ._flask import dev_server
from ._wsgi.discovery import EXTENSION_KEY
from ._wsgi.lifecycle import Lifecycle


def _in_app_context(app: Flask) -> Callable[[Callable[[], Any]], Any]:
    def invoke(func: Callable[[], Any]) -> Any:
        with app.app_context():
            return func()

    return invoke


def _arm_for_dev_server(app: Flask, lifecycle: Lifecycle) -> None:
    """Under ``flask run``: run the callbacks once when the serving process exits."""
    if dev_server.is_reloader_child():
        dev_server.arm(lifecycle)
        return

    def arm_on_first_request() -> None:
        # Only under flask run; left in place (removing it while Flask iterates
        # the list would skip the next function).
        if dev_server.is_dev_server_request(request.environ):
            dev_server.arm(lifecycle)

    app.before_request(arm_on_first_request)


class GracefulShutdown(ShutdownDecorators):
    """Give a Flask app a graceful shutdown lifecycle.

    Callbacks registered on the extension (``@graceful.on_shutdown``) apply
    to every app it is initialised on, before or after; callbacks registered
    on an app (``@app.on_shutdown``) apply to that app only. The extension
    keeps no app alive: it holds their lifecycles weakly.

    ``@app.on_shutdown`` is an attribute Flask's types do not declare, so
    ``mypy --strict`` rejects it in your code; the typed spellings are the
    extension's decorators and ``graceful.lifecycle(app).on_shutdown``.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._registrations: list[tuple[Phase, Callable[..., Any], dict[str, Any]]] = []
        self._lifecycles: weakref.WeakSet[Lifecycle] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set up ``app``: its lifecycle, middleware and decorators."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "graceful_gunicorn is already set up on this app: call GracefulShutdown(app) "
                "or init_app(app) once per app"
            )
        lifecycle = Lifecycle(invoke=_in_app_context(app))
        lifecycle.name = app.name
        app.extensions[EXTENSION_KEY] = lifecycle
        app.wsgi_app = lifecycle.wrap(app.wsgi_app)  # type: ignore[method-assign]
        for name in ("before_shutdown", "on_shutdown", "after_shutdown"):
            setattr(app, name, getattr(lifecycle, name))
        for phase, func, options in self._registrations:
            lifecycle.register(phase, func, **options)
        self._lifecycles.add(lifecycle)
        if dev_server.under_flask_run():
            _arm_for_dev_server(app, lifecycle)

    def register(
        self,
        phase: Phase,
        func: CallbackT,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> CallbackT:
        """Register ``func`` in ``phase`` on every app of this extension, those
        initialised later too; return it unchanged."""
        Registration.create(func, phase, timeout, reasons)  # invalid: raise now, once
        for lifecycle in list(self._lifecycles):
            lifecycle.register(phase, func, timeout=timeout, reasons=reasons)
        self._registrations.append((phase, func, {"timeout": timeout, "reasons": reasons}))
        return func

    def lifecycle(self, app: Flask | None = None) -> Lifecycle:
        """The lifecycle of ``app``, else of the current app, else of the only app."""
        if app is None and has_app_context():
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        if app is not None:
            found = app.extensions.get(EXTENSION_KEY)
            if not isinstance(found, Lifecycle):
                raise RuntimeError(
                    "graceful_gunicorn is not set up on this app: call init_app(app)"
                )
            return found
        lifecycles = list(self._lifecycles)
        if len(lifecycles) == 1:
            return lifecycles[0]
        raise RuntimeError(
            "no app to choose: call inside an app context or pass the app "
            f"({len(lifecycles)} apps use this extension)"
        )

    @property
    def in_flight(self) -> int:
        """Requests the app is serving right now."""
        return self.lifecycle().in_flight

    @property
    def draining(self) -> bool:
        """True once the app's shutdown began."""
        return self.lifecycle().draining
