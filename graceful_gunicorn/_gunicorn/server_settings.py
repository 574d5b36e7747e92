"""Reading graceful_gunicorn's settings and worker class out of gunicorn's ``Config``.

gunicorn ignores names it does not know in a config module, so our settings
(``shutdown_delay = 5``) are read here from the module gunicorn loaded, and
from ``GRACEFUL_*`` environment variables. Used by the master at start-up and
by each worker when it boots; imports gunicorn, never Flask.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from gunicorn.config import Config

from .._core.lifecycle import Lifecycle
from .._core.plan import GRACEFUL_REASONS, ShutdownPlan
from .._core.settings import Settings, SettingsError
from . import compat
from .process_state import STATE
from .summary import UnsafeReportPath, check_report_path

#: gunicorn's stock worker classes and the graceful subclass that replaces each.
GRACEFUL_WORKERS = {
    "gunicorn.workers.sync.SyncWorker": "graceful_gunicorn.workers.GracefulSync",
    "gunicorn.workers.gthread.ThreadWorker": "graceful_gunicorn.workers.GracefulThread",
    "gunicorn.workers.ggevent.GeventWorker": "graceful_gunicorn.workers.GracefulGevent",
}

# gunicorn runs a file config as the module "__config__" (all versions).
_FILE_CONFIG_MODULE = "__config__"


def config_namespace(cfg: Config) -> Mapping[str, Any]:
    """The names of the config module gunicorn loaded (empty if none)."""
    location = compat.setting(cfg, "config")
    module = None
    if isinstance(location, str) and location.startswith("python:"):
        module = sys.modules.get(location[len("python:") :])
    if module is None:
        module = sys.modules.get(_FILE_CONFIG_MODULE)
    return vars(module) if module is not None else {}


def load_settings(
    cfg: Config, environ: Mapping[str, str] | None = None
) -> tuple[Settings, list[str]]:
    """Our settings for this gunicorn config, checked against its ``graceful_timeout``.

    gunicorn's ``-e``/``raw_env`` wins over the environment (gunicorn copies it
    into the master's environment, but only after the hooks that call this
    have run: arbiter.py ``setup``), which wins over the config file.
    """
    base = os.environ if environ is None else environ
    settings, warnings = Settings.load(config_namespace(cfg), {**base, **cfg.env})
    settings.check_budget(float(cfg.graceful_timeout))
    return settings, warnings


def keep_in_force(settings: Settings) -> None:
    """Record the settings the master checked (workers inherit them at the fork)."""
    STATE.settings_in_force = settings


def settings_in_force(cfg: Config) -> Settings:
    """``cfg``'s settings; after a reload brought a bad value, the ones in force before.

    Raises :class:`SettingsError` when there are none to fall back on.
    """
    try:
        settings, _ = load_settings(cfg)
    except SettingsError:
        if STATE.settings_in_force is None:
            raise
        return STATE.settings_in_force
    return settings


def graceful_worker_class(cfg: Config) -> str | None:
    """The dotted name of the graceful worker to use, or ``None`` if it is already one.

    Raises :class:`SettingsError` for a worker class we cannot make graceful.
    """
    try:
        worker_class = cfg.worker_class  # resolves "sync" + threads > 1 to gthread
    except Exception as exc:  # noqa: BLE001 - any import error of the class itself
        raise SettingsError(
            f"worker_class {cfg.worker_class_str!r} cannot be loaded: {exc}"
        ) from None
    if getattr(worker_class, "graceful_gunicorn_worker", False):
        return None
    dotted = f"{worker_class.__module__}.{worker_class.__qualname__}"
    if dotted in GRACEFUL_WORKERS:
        return GRACEFUL_WORKERS[dotted]
    raise SettingsError(
        f"worker_class {cfg.worker_class_str!r} is not supported by graceful_gunicorn: "
        "use sync, gthread or gevent (or graceful_gunicorn.workers.GracefulSync, "
        "GracefulThread, GracefulGevent)"
    )


def graceful_plans(
    lifecycle: Lifecycle, settings: Settings, graceful_timeout: float
) -> list[ShutdownPlan]:
    """The plan of a terminate, a reload and a recycle of a worker serving ``lifecycle``.

    Gives the lifecycle the server's default callback timeout first (when
    it was set; a reload that drops it gives the lifecycle its own back).
    """
    lifecycle.server_callback_timeout = settings.given_callback_timeout
    return [
        lifecycle.plan(
            reason,
            graceful_timeout=graceful_timeout,
            quick_timeout=settings.quick_shutdown_timeout,
        )
        for reason in GRACEFUL_REASONS
    ]


def check_lifecycle_fits(lifecycle: Lifecycle, settings: Settings, graceful_timeout: float) -> None:
    """Raise :class:`SettingsError` if the app's explicit timeouts cannot fit in the budget."""
    for plan in graceful_plans(lifecycle, settings, graceful_timeout):
        problem = plan.problem()
        if problem is not None:
            raise SettingsError(problem)


def check_report_directory(settings: Settings) -> None:
    """Raise :class:`SettingsError` if the JSON report could never be saved safely.

    Checked when the master starts, so that the report is not lost at the
    end: the folder must exist and be writable, pass the rule of
    :func:`graceful_gunicorn._gunicorn.summary.open_report_folder` (no folder that
    anyone can write to, nothing on the way that belongs to a user other
    than root or the master's), and the path must name a regular file or
    nothing yet (:func:`graceful_gunicorn._gunicorn.summary.check_report_path`). The
    error is one line: the setting, what is wrong with which real path, the fix.
    """
    path = settings.shutdown_report_path
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SettingsError(
            f"shutdown_report_path={path!r}: the directory {directory!r} does not exist"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SettingsError(
            f"shutdown_report_path={path!r}: the directory {directory!r} is not writable"
        )
    try:
        check_report_path(path)
    except UnsafeReportPath as exc:
        raise SettingsError(f"shutdown_report_path={path!r}: {exc}; {exc.fix}") from None
    except OSError as exc:
        raise SettingsError(f"shutdown_report_path={path!r}: {exc}") from None
