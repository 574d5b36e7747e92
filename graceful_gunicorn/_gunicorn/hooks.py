"""The gunicorn server hooks of graceful_gunicorn, and how they join a user's own.

All of these run in the **master**. gunicorn takes one function per hook
name from the config module, so a user who writes ``from
graceful_gunicorn.conf import *`` and then defines ``when_ready`` shadows
ours. Whichever of our hooks runs first (``nworkers_changed`` runs before
any other, on start-up and on every reload) therefore chains every hook the
user shadowed: ours first, then theirs, with gunicorn's exact arity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.settings import Settings, SettingsError
from .._wsgi.discovery import find_lifecycle
from . import compat, master_state, worker_reports
from .master import MasterStop
from .process_state import STATE
from .server_settings import (
    check_lifecycle_fits,
    check_report_directory,
    graceful_worker_class,
    keep_in_force,
    load_settings,
    settings_in_force,
)

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter

_CHAINED = "__graceful_gunicorn_chain__"
_INSTALLED = "_graceful_gunicorn_installed"


def nworkers_changed(server: Arbiter, new_value: int, old_value: int | None) -> None:
    """Master: set graceful_gunicorn up on each (re)loaded config."""
    _install(server)


def on_starting(server: Arbiter) -> None:
    """Master, before the listeners exist: set up, in case nworkers_changed was shadowed."""
    _install(server)


def when_ready(server: Arbiter) -> None:
    """Master, before the first fork: share state with workers and take over stop signals."""
    _install(server)
    _check_preloaded_app(server)
    _take_over_master_signals(server)


def on_reload(server: Arbiter) -> None:
    """Master, on SIGHUP before the new workers spawn: set up the new config."""
    _install(server)


def on_exit(server: Arbiter) -> None:
    """Master, last: the shutdown summary and JSON report, then the workers' folder goes.

    Nothing here stops the rest: a failing summary is logged with its
    traceback, the folder is removed anyway, and a user's own ``on_exit``
    (chained after this one) still runs.
    """
    try:
        stop = MasterStop.of(server)
        if stop is not None:
            stop.report()
    except Exception:  # noqa: BLE001 - logged with its traceback; the rest must run
        _log(server).exception("graceful_gunicorn: the shutdown summary failed")
    finally:
        worker_reports.remove()


_OUR_HOOKS: dict[str, tuple[int, Callable[..., None]]] = {
    "nworkers_changed": (3, nworkers_changed),
    "on_starting": (1, on_starting),
    "when_ready": (1, when_ready),
    "on_reload": (1, on_reload),
    "on_exit": (1, on_exit),
}


def _install(server: Arbiter) -> None:
    """Once per gunicorn Config: check settings, pick the graceful worker, chain hooks."""
    cfg = server.cfg
    if getattr(cfg, _INSTALLED, False):
        return
    object.__setattr__(cfg, _INSTALLED, True)
    first_start = master_state.current() is None
    try:
        settings, warnings = load_settings(cfg)
        if first_start:
            check_report_directory(settings)
        else:
            _warn_if_unwritable(server, settings)
            _share_report_folder(server)  # a reload may change user/group
        keep_in_force(settings)
    except SettingsError as exc:
        if first_start:
            # gunicorn prints a RuntimeError as "Error: ..." and exits 1, before any fork.
            raise RuntimeError(f"graceful_gunicorn: {exc}") from None
        # A reload with a bad value: the server goes on with the settings it had.
        _log(server).error("graceful_gunicorn: %s; the previous settings stay in force", exc)
        warnings = []
    try:
        worker = graceful_worker_class(cfg)
    except SettingsError as exc:
        if first_start:
            raise RuntimeError(f"graceful_gunicorn: {exc}") from None
        _log(server).error("graceful_gunicorn: %s; new workers stop without it", exc)
        return
    for warning in warnings:
        _log(server).warning("graceful_gunicorn: %s", warning)
    if worker is not None:
        cfg.set("worker_class", worker)
        server.worker_class = cfg.worker_class
    _chain_shadowed_hooks(cfg)
    _warn_old_gunicorn(server.log)


def _chain_shadowed_hooks(cfg: Any) -> None:
    for name, (arity, ours) in _OUR_HOOKS.items():
        current = compat.setting(cfg, name)
        if current is ours or getattr(current, _CHAINED, False):
            continue
        cfg.set(name, _chain(name, arity, ours, current))


def _log(server: Arbiter) -> Any:
    # gunicorn's error logger; typed Optional only because it is set in setup().
    return server.log


def _chain(
    name: str, arity: int, ours: Callable[..., None], theirs: Callable[..., Any]
) -> Callable[..., None]:
    # gunicorn checks a hook's positional arity exactly: no *args wrapper.
    hook: Callable[..., None]
    if arity == 1:

        def hook(server: Any) -> None:
            ours(server)
            theirs(server)

    else:

        def hook(server: Any, new_value: Any, old_value: Any) -> None:
            ours(server, new_value, old_value)
            theirs(server, new_value, old_value)

    hook.__name__ = hook.__qualname__ = name
    setattr(hook, _CHAINED, True)
    return hook


def _warn_old_gunicorn(log: Any) -> None:
    if compat.KNOWN_REQUEST_SMUGGLING and not STATE.warned_old_gunicorn:
        STATE.warned_old_gunicorn = True
        log.warning(
            "graceful_gunicorn: gunicorn %s has known HTTP request smuggling "
            "vulnerabilities (fixed in 22.0 and 23.0); upgrade to gunicorn 23 or newer",
            ".".join(map(str, compat.VERSION)),
        )


def _warn_if_unwritable(server: Arbiter, settings: Settings) -> None:
    try:
        check_report_directory(settings)
    except SettingsError as exc:
        _log(server).warning("graceful_gunicorn: %s; the report will only be logged", exc)


def _share_report_folder(server: Arbiter) -> None:
    """Let workers that run as gunicorn's ``user``/``group`` write their reports.

    gunicorn chowns its worker temporary files for the same reason
    (workers/workertmp.py); called at start-up and on each reload.
    """
    try:
        worker_reports.share_with_workers(server.cfg.uid, server.cfg.gid)
    except OSError as exc:
        _log(server).error(
            "graceful_gunicorn: workers running as uid %s, gid %s cannot write their "
            "shutdown reports (%s); the summary will count them as killed",
            server.cfg.uid,
            server.cfg.gid,
            exc,
        )


def _check_preloaded_app(server: Arbiter) -> None:
    """With ``--preload`` the app is known before the fork: check its callbacks fit."""
    if not server.cfg.preload_app:
        return
    lifecycle = find_lifecycle(server.app.wsgi())
    if lifecycle is None:
        return
    settings = settings_in_force(server.cfg)
    try:
        check_lifecycle_fits(lifecycle, settings, float(server.cfg.graceful_timeout))
    except SettingsError as exc:
        raise RuntimeError(f"graceful_gunicorn: {exc}") from None


def _take_over_master_signals(server: Arbiter) -> None:
    """Share state with the workers (before the first fork) and handle the stop signals."""
    state = master_state.create()
    worker_reports.create()
    _share_report_folder(server)
    if MasterStop.install(server, state, before_spawn=_install) is not None:
        _log(server).info(
            "graceful_gunicorn: graceful shutdown on (graceful_timeout=%ss)",
            server.cfg.graceful_timeout,
        )


__all__ = ["nworkers_changed", "on_exit", "on_reload", "on_starting", "when_ready"]
