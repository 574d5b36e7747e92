"""The package's own settings: names, defaults, sources and validation.

Each setting can be given in the gunicorn config file, next to gunicorn's own
settings, or as an environment variable named ``GRACEFUL_`` plus its name in
capitals. The environment wins over the config file, as ``GUNICORN_CMD_ARGS``
wins over the config file in gunicorn itself::

    shutdown_delay = 5                           # gunicorn.conf.py
    GRACEFUL_SHUTDOWN_DELAY=5 gunicorn ...       # environment

Every value is checked at start-up; a bad one raises :class:`SettingsError`
with one line that names the setting, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .plan import available_budget
from .seconds import parse_seconds

ENV_PREFIX = "GRACEFUL_"


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message is one line."""


@dataclass(frozen=True)
class Settings:
    """The resolved settings of graceful_gunicorn."""

    #: Seconds to keep serving, with readiness answering 503, after SIGTERM.
    shutdown_delay: float = 0.0
    #: Path answered by the middleware: 200 while serving, 503 once stopping.
    readiness_path: str | None = None
    #: Default timeout of one callback, in seconds.
    shutdown_callback_timeout: float = 5.0
    #: Budget of all callbacks on a quick stop (SIGINT/SIGQUIT) or an abort.
    quick_shutdown_timeout: float = 2.0
    #: File the master writes the JSON shutdown report to (it is always logged too).
    shutdown_report_path: str | None = None
    #: On SIGHUP, how long the old workers keep serving while the new ones load the
    #: app; they stop once every new worker is ready, or this late (0: at once).
    reload_ready_timeout: float = 30.0
    #: On ``max_requests``, how long the worker keeps serving while its replacement
    #: loads the app; it stops once the replacement is ready, or this late (0: at once).
    recycle_ready_timeout: float = 30.0
    #: The names that were set (in the config or the environment), not defaulted.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def names(cls) -> list[str]:
        """The setting names, as written in a config file."""
        return [f.name for f in fields(cls) if f.name != "given"]

    @classmethod
    def load(
        cls, config: Mapping[str, Any], environ: Mapping[str, str]
    ) -> tuple[Settings, list[str]]:
        """Resolve the settings from a config module's names and the environment.

        Returns the settings and warnings (unknown ``GRACEFUL_*`` variables).
        """
        values: dict[str, Any] = {}
        for name in cls.names():
            env_name = ENV_PREFIX + name.upper()
            if env_name in environ:
                values[name] = _parse(name, environ[env_name], env_name)
            elif config.get(name) is not None:
                values[name] = _parse(name, config[name], name)
        known = {ENV_PREFIX + n.upper() for n in cls.names()}
        warnings = [
            f"unknown environment variable {key} ignored; graceful_gunicorn knows "
            + ", ".join(sorted(known))
            for key in sorted(environ)
            if key.startswith(ENV_PREFIX) and key not in known
        ]
        return cls(**values, given=frozenset(values)), warnings

    @property
    def given_callback_timeout(self) -> float | None:
        """``shutdown_callback_timeout`` if it was set, else ``None``: then a lifecycle
        keeps its own ``callback_timeout`` (``Lifecycle(callback_timeout=8)``)."""
        given = "shutdown_callback_timeout" in self.given
        return self.shutdown_callback_timeout if given else None

    def check_budget(self, graceful_timeout: float, where: str = "graceful_timeout") -> None:
        """Raise :class:`SettingsError` if a quick stop's budget, as set, cannot fit.

        Callbacks without ``timeout=`` share the budget (SPEC section 5), so
        ``shutdown_callback_timeout`` always fits; an unset
        ``quick_shutdown_timeout`` shrinks to what ``graceful_timeout`` leaves.
        """
        available = available_budget(graceful_timeout)
        if "quick_shutdown_timeout" in self.given and self.quick_shutdown_timeout > available:
            raise SettingsError(
                f"quick_shutdown_timeout={self.quick_shutdown_timeout:g} does not fit in "
                f"{where}={graceful_timeout:g}: it must be at most {available:g} seconds "
                f"(raise {where} or lower quick_shutdown_timeout)"
            )


def _parse(name: str, raw: Any, source: str) -> Any:
    if name == "readiness_path":
        return _parse_path(raw, source)
    if name == "shutdown_report_path":
        return _parse_file(raw, source)
    return _parse_seconds(raw, source)


def _parse_seconds(raw: Any, source: str) -> float:
    try:
        return parse_seconds(raw, source, text=True)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _parse_path(raw: Any, source: str) -> str | None:
    if raw is None or raw == "":
        return None
    if (
        not isinstance(raw, str)
        or not raw.startswith("/")
        or any(c.isspace() or c in "?#" for c in raw)
    ):
        raise SettingsError(
            f"{source} must be a URL path starting with '/' without spaces, '?' or '#', got {raw!r}"
        )
    return raw


def _parse_file(raw: Any, source: str) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or "\0" in raw or raw.endswith("/"):
        raise SettingsError(f"{source} must be the path of a file, got {raw!r}")
    return raw
