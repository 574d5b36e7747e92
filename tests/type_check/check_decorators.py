"""The types users' code sees, checked by ``mypy --strict`` (``tox -e type``); never run.

Each decorator returns the decorated function with its own type, bare or
called with options: a call of a decorated function keeps its return type
(``assert_type`` fails if a decorator returned ``Any``).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from typing_extensions import assert_type

from graceful_gunicorn import GracefulShutdown, InFlightMiddleware, Lifecycle, ShutdownContext

app = Flask(__name__)
graceful = GracefulShutdown(app)


@graceful.on_shutdown
def flush(ctx: ShutdownContext) -> int:
    return 1


@graceful.after_shutdown(timeout=2, reasons={"terminate", "recycle"})
def close_pool() -> str:
    return "closed"


async def send_metrics() -> None:
    pass


assert_type(flush(ShutdownContext("terminate", "on_shutdown", 0.0, lambda: 0)), int)
assert_type(close_pool(), str)
metrics: Callable[[], object] = graceful.before_shutdown(send_metrics)

# The per-app spelling that passes mypy --strict (``@app.on_shutdown`` is an
# attribute Flask's types do not declare).
lifecycle = graceful.lifecycle(app)
assert_type(lifecycle, Lifecycle)


@lifecycle.on_shutdown(timeout=5)
def flush_this_app() -> bytes:
    return b""


assert_type(flush_this_app(), bytes)

# Any WSGI app.
plain = Lifecycle(callback_timeout=8)


@plain.before_shutdown
def stop_consumers(ctx: ShutdownContext) -> float:
    return ctx.remaining()


assert_type(stop_consumers(ShutdownContext("reload", "before_shutdown", 0.0, lambda: 0)), float)
assert_type(plain.wrap(app.wsgi_app), InFlightMiddleware)
assert_type(graceful.in_flight, int)
