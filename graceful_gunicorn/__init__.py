"""A real, tested shutdown lifecycle for WSGI apps served by gunicorn.

Server side: ``gunicorn -c python:graceful_gunicorn.conf app:app``.
App side: ``GracefulShutdown(app)`` for Flask, :class:`Lifecycle` for any WSGI app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core.context import Phase, Reason, ShutdownContext
from ._core.report import CallbackResult, ShutdownReport
from ._core.sequence import ShutdownSequence
from ._core.settings import Settings, SettingsError
from ._wsgi.lifecycle import Lifecycle
from ._wsgi.middleware import InFlightMiddleware

if TYPE_CHECKING:
    from .flask import GracefulShutdown

__version__ = "0.1.0"

__all__ = [
    "CallbackResult",
    "GracefulShutdown",
    "InFlightMiddleware",
    "Lifecycle",
    "Phase",
    "Reason",
    "Settings",
    "SettingsError",
    "ShutdownContext",
    "ShutdownReport",
    "ShutdownSequence",
]


def __getattr__(name: str) -> Any:
    # Flask is optional for plain WSGI apps: import the extension on first use.
    if name == "GracefulShutdown":
        from .flask import GracefulShutdown

        return GracefulShutdown
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
