"""Two Flask apps behind werkzeug's DispatcherMiddleware, each with GracefulShutdown.

``/`` is the frontend; ``/api`` the api. Each app's callbacks append a
``callback`` line (with the name of the app whose context they ran in) to
``$EVENTS_FILE``; ``/api/sleep/<seconds>`` records ``entered`` and answers late.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, current_app
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from graceful_gunicorn import GracefulShutdown
from tests.apps.events import record


def _callback(phase: str, name: str) -> Callable[[], None]:
    def callback() -> None:
        record("callback", phase=phase, name=name, app=current_app.name)

    callback.__name__ = callback.__qualname__ = name
    return callback


frontend = Flask("frontend")
api = Flask("api")
for flask_app in (frontend, api):
    graceful = GracefulShutdown(flask_app)
    graceful.on_shutdown(_callback("on_shutdown", f"{flask_app.name}_flush"))
    graceful.after_shutdown(_callback("after_shutdown", f"{flask_app.name}_close"))


@frontend.get("/hello")
def hello() -> str:
    return "hello\n"


@api.get("/sleep/<float:seconds>")
def sleep(seconds: float) -> str:
    record("entered", key="api")
    time.sleep(min(seconds, 10.0))
    return "api\n"


app = DispatcherMiddleware(frontend, {"/api": api})
