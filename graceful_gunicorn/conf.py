"""The gunicorn config module: ``gunicorn -c python:graceful_gunicorn.conf app:app``.

With a config file of your own, import it at the top and keep your settings
and hooks below; graceful_gunicorn chains its hooks with yours::

    from graceful_gunicorn.conf import *

    workers = 4
    shutdown_delay = 5

    def when_ready(server):      # runs after graceful_gunicorn's own when_ready
        ...

gunicorn applies every module-level name that matches one of its settings,
so this module defines only the hooks listed in ``__all__``. The worker class
is chosen in those hooks: ``-k sync``, ``-k gthread`` and ``-k gevent`` run
the graceful subclasses.
"""

from __future__ import annotations

from ._gunicorn.hooks import nworkers_changed, on_exit, on_reload, on_starting, when_ready

__all__ = ["nworkers_changed", "on_exit", "on_reload", "on_starting", "when_ready"]
