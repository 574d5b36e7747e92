"""A Flask app whose callbacks are described by ``$BUDGET_CALLBACKS``, for the budget tests.

``$BUDGET_CALLBACKS`` is a space-separated list of ``phase[:timeout][:reason+reason]``
items, registered in order: ``on`` (on_shutdown), ``before`` (before_shutdown)
or ``after`` (after_shutdown); a timeout in seconds or ``-`` for none; the
reasons the callback is limited to. With ``$BUDGET_CALLBACK_TIMEOUT`` the app is
a plain WSGI one on the framework-neutral core, ``Lifecycle(callback_timeout=...)``;
else a Flask app with ``GracefulShutdown``. Each callback returns at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask

from graceful_gunicorn import GracefulShutdown, Lifecycle

own_timeout = os.environ.get("BUDGET_CALLBACK_TIMEOUT")
flask_app = Flask(__name__)
registrar: Any
if own_timeout:
    registrar = Lifecycle(callback_timeout=float(own_timeout))
else:
    GracefulShutdown(flask_app)
    registrar = flask_app

PHASES = {"before": "before_shutdown", "on": "on_shutdown", "after": "after_shutdown"}


def _register(index: int, item: str) -> None:
    phase, _, rest = item.partition(":")
    timeout_text, _, reasons_text = rest.partition(":")
    options: dict[str, Any] = {}
    if timeout_text not in ("", "-"):
        options["timeout"] = float(timeout_text)
    if reasons_text:
        options["reasons"] = set(reasons_text.split("+"))

    def callback() -> None:
        pass

    callback.__name__ = callback.__qualname__ = f"{phase}{index}"
    getattr(registrar, PHASES[phase])(**options)(callback)


for number, spec in enumerate(os.environ.get("BUDGET_CALLBACKS", "").split()):
    _register(number, spec)


@flask_app.get("/hello")
def hello() -> str:
    return "hello\n"


@flask_app.get("/sleep/<float:seconds>")
def sleep(seconds: float) -> str:
    open("sleeping", "w").close()  # in the server's working directory: the test waits on it
    time.sleep(min(seconds, 10.0))
    return "slept\n"


def _plain(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


app: Any = registrar.wrap(_plain) if own_timeout else flask_app
