"""Finding the lifecycles of a loaded WSGI app, as the gunicorn worker does.

The worker loads whatever object gunicorn's ``app:app`` names; the lifecycles
are found through it (:func:`find_lifecycles`): a Flask-style extension
registry, the middleware of :meth:`Lifecycle.wrap`, the attributes middleware
keep their app in, and the apps a dispatcher mounts.
"""

from __future__ import annotations

from .._core.lifecycle import Lifecycle
from .lifecycle import Lifecycle as WSGILifecycle
from .middleware import InFlightMiddleware

#: The key of the lifecycle in a framework's extension registry (``app.extensions``).
EXTENSION_KEY = "graceful_gunicorn"

_WRAPPED_APP_ATTRIBUTES = ("wsgi_app", "app", "application", "__wrapped__")


#: Where a dispatcher keeps the apps it mounts (werkzeug's DispatcherMiddleware).
_MOUNTED_APPS_ATTRIBUTES = ("mounts",)


def find_lifecycles(app: object, depth: int = 8) -> list[Lifecycle]:
    """Every lifecycle ``app`` was set up with, outermost first.

    Looks at ``app.extensions["graceful_gunicorn"]`` (Flask and similar), at
    :class:`InFlightMiddleware` made by :meth:`Lifecycle.wrap`, through the
    attributes middleware usually keep their application in, and through
    the apps a dispatcher mounts (``DispatcherMiddleware(app, {"/api": api})``).
    """
    found: list[Lifecycle] = []
    seen: set[int] = set()
    level = [app]
    for _ in range(depth):
        following: list[object] = []
        for obj in level:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            lifecycle = _own_lifecycle(obj)
            if lifecycle is not None and lifecycle not in found:
                found.append(lifecycle)
            following.extend(
                inner
                for inner in (getattr(obj, a, None) for a in _WRAPPED_APP_ATTRIBUTES)
                if inner is not None and inner is not obj
            )
            for attribute in _MOUNTED_APPS_ATTRIBUTES:
                mounted = getattr(obj, attribute, None)
                if isinstance(mounted, dict):
                    following.extend(mounted.values())
        if not following:
            break
        level = following
    return found


def _own_lifecycle(obj: object) -> Lifecycle | None:
    if isinstance(obj, Lifecycle):
        return obj
    if isinstance(obj, InFlightMiddleware) and isinstance(obj.owner, Lifecycle):
        return obj.owner
    extensions = getattr(obj, "extensions", None)
    if isinstance(extensions, dict):
        found = extensions.get(EXTENSION_KEY)
        if isinstance(found, Lifecycle):
            return found
    return None


def find_lifecycle(app: object, depth: int = 8) -> Lifecycle | None:
    """The lifecycle that ``app`` was set up with, or ``None``.

    With several (apps mounted by a dispatcher), one that combines them
    (:meth:`Lifecycle.combine`): every app's callbacks run, in one sequence.
    """
    found = find_lifecycles(app, depth)
    if not found:
        return None
    return found[0] if len(found) == 1 else WSGILifecycle.combine(found)


__all__ = ["EXTENSION_KEY", "find_lifecycle", "find_lifecycles"]
