"""``flask run`` parity: the development server runs the callbacks once at exit.

Under gunicorn a graceful worker runs the shutdown sequence. Under ``flask
run`` nothing would, so the Flask extension arms a quick shutdown (reason
``quick``: on_shutdown and after_shutdown within ``quick_shutdown_timeout``)
that runs when the serving process exits, for example on Ctrl+C. The
reloader's parent process loads the app too but never serves: it stays
unarmed. The serving process is armed as soon as it is known: at start-up in
the reloader's child (``WERKZEUG_RUN_MAIN``), else at the first request the
development server hands to the app.

It runs at interpreter shutdown *before* non-daemon threads are joined (as
``concurrent.futures`` does), so a callback can still stop such a thread.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from typing import Any

from .._core.lifecycle import Lifecycle
from .._core.settings import Settings

#: Set by ``flask run`` (Flask 2.2 to 3.1) in the process that loads the app.
FROM_FLASK_CLI = "FLASK_RUN_FROM_CLI"
#: Set by Werkzeug's reloader in the child process that serves.
RELOADER_CHILD = "WERKZEUG_RUN_MAIN"


def under_flask_run() -> bool:
    """Whether this process was started by ``flask run`` (or another flask command)."""
    return os.environ.get(FROM_FLASK_CLI) == "true"


def is_reloader_child() -> bool:
    """Whether this is the process Werkzeug's reloader started to serve."""
    return os.environ.get(RELOADER_CHILD) == "true"


def is_dev_server_request(environ: dict[str, Any]) -> bool:
    """Whether Werkzeug's development server sent this request."""
    return str(environ.get("SERVER_SOFTWARE", "")).startswith("Werkzeug/")


_armed: set[int] = set()
_arm_lock = threading.Lock()


def arm(lifecycle: Lifecycle) -> None:
    """Run ``lifecycle``'s quick shutdown when this process exits (once)."""
    with _arm_lock:
        if id(lifecycle) in _armed:
            return
        _armed.add(id(lifecycle))
    register: Callable[[Callable[[], None]], Any] = getattr(
        threading, "_register_atexit", atexit.register
    )
    register(lambda: shutdown_at_exit(lifecycle))


def shutdown_at_exit(lifecycle: Lifecycle) -> None:
    """The quick shutdown, unless a shutdown already ran in this process."""
    if lifecycle.draining:
        return
    settings, _ = Settings.load({}, os.environ)
    lifecycle.server_callback_timeout = settings.given_callback_timeout
    lifecycle.shutdown("quick", quick_timeout=settings.quick_shutdown_timeout)
