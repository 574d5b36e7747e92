"""``python -m graceful_gunicorn check``: the planned shutdown timeline, checked.

It takes gunicorn's own arguments (or reads the config file they name, as
gunicorn does), loads the app if one is given to count its callbacks, prints
when each step of a ``SIGTERM`` shutdown happens, and exits non-zero when the
plan cannot fit: a bad setting, callbacks longer than ``graceful_timeout``,
or a platform grace period (``--grace-period``, such as Kubernetes'
``terminationGracePeriodSeconds``) shorter than the delay and the stop::

    python -m graceful_gunicorn check -c gunicorn.conf.py --grace-period 45 app:app
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import Application
from gunicorn.app.wsgiapp import WSGIApplication

from .lifecycle import Lifecycle, find_lifecycle
from .server_config import check_lifecycle_fits, graceful_worker_class, load_settings
from .settings import Settings, SettingsError, safety_margin


@dataclass(frozen=True)
class Timeline:
    """When each step of a SIGTERM shutdown happens, in seconds after the signal."""

    graceful_timeout: float
    settings: Settings
    #: Seconds the on_shutdown and after_shutdown callbacks keep (None: app unknown).
    reserved: float | None
    grace_period: float | None = None

    @property
    def stop_begins(self) -> float:
        """The master begins its graceful stop (after ``shutdown_delay``)."""
        return self.settings.shutdown_delay

    @property
    def margin(self) -> float:
        """Kept free before the master's SIGKILL."""
        return safety_margin(self.graceful_timeout)

    @property
    def workers_done(self) -> float:
        """Every worker has run its callbacks."""
        return self.stop_begins + self.graceful_timeout - self.margin

    @property
    def drain_until(self) -> float:
        """before_shutdown and the drain end here at the latest."""
        return self.workers_done - (self.reserved or 0.0)

    @property
    def master_deadline(self) -> float:
        """gunicorn's master SIGKILLs workers still alive."""
        return self.stop_begins + self.graceful_timeout

    def problems(self) -> list[str]:
        """Why the plan cannot work (empty when it fits)."""
        found = []
        if self.reserved is not None and self.drain_until < self.stop_begins:
            found.append(
                f"the callbacks keep {self.reserved:g}s, more than graceful_timeout="
                f"{self.graceful_timeout:g} leaves after the {self.margin:g}s safety margin"
            )
        if self.grace_period is not None and self.grace_period < self.master_deadline:
            found.append(
                f"grace period {self.grace_period:g}s is shorter than shutdown_delay + "
                f"graceful_timeout = {self.master_deadline:g}s: the platform kills the "
                "server before it is done"
            )
        return found

    def lines(self) -> list[str]:
        """The timeline as text, one step a line."""
        s = self.settings
        callbacks = (
            f"{self.reserved:g}s kept: the sum of their timeouts"
            if self.reserved is not None
            else "budget unknown: name the app to count its callbacks"
        )
        delay = f"; still serving for shutdown_delay={s.shutdown_delay:g}s"
        lines = [
            f"{0.0:7.1f}s  SIGTERM: readiness answers 503" + (delay if s.shutdown_delay else ""),
            f"{self.stop_begins:7.1f}s  graceful stop: listeners close; before_shutdown, the drain",
            f"{self.drain_until:7.1f}s  drain deadline: on_shutdown, after_shutdown ({callbacks})",
            f"{self.workers_done:7.1f}s  every worker done (safety margin {self.margin:g}s)",
            f"{self.master_deadline:7.1f}s  master's deadline (graceful_timeout="
            f"{self.graceful_timeout:g}s): workers still alive are killed",
        ]
        if self.grace_period is not None:
            spare = self.grace_period - self.master_deadline
            verdict = f"{spare:g}s to spare" if spare >= 0 else "TOO SHORT"
            lines.append(f"{self.grace_period:7.1f}s  platform grace period: {verdict}")
        lines.append(
            f"quick stop (SIGINT/SIGQUIT) and worker timeout: on_shutdown and after_shutdown "
            f"within quick_shutdown_timeout={s.quick_shutdown_timeout:g}s"
        )
        return lines


class _ConfigOnly(WSGIApplication):
    """gunicorn's own argument and config-file parsing, with the app optional."""

    def load_config(self) -> None:
        Application.load_config(self)
        if self.app_uri is None and self.cfg.wsgi_app is not None:
            self.app_uri = self.cfg.wsgi_app


def _load_gunicorn(gunicorn_args: Sequence[str]) -> _ConfigOnly:
    argv = sys.argv
    sys.argv = ["gunicorn", *gunicorn_args]
    try:
        return _ConfigOnly("%(prog)s [OPTIONS] [APP_MODULE]")
    finally:
        sys.argv = argv


def plan(gunicorn_args: Sequence[str], grace_period: float | None = None) -> Timeline:
    """The timeline of the server these gunicorn arguments would run.

    Raises :class:`SettingsError` for a setting that stops gunicorn at start-up.
    """
    application = _load_gunicorn(gunicorn_args)
    cfg: Any = application.cfg
    settings, _ = load_settings(cfg)
    graceful_worker_class(cfg)
    graceful_timeout = float(cfg.graceful_timeout)
    reserved = None
    if application.app_uri is not None:
        lifecycle = find_lifecycle(application.wsgi()) or Lifecycle()
        lifecycle.callback_timeout = settings.shutdown_callback_timeout
        check_lifecycle_fits(lifecycle, settings, graceful_timeout)
        reserved = max(lifecycle.reserve(r) for r in ("terminate", "reload", "recycle"))
    return Timeline(graceful_timeout, settings, reserved, grace_period)


def main(argv: Sequence[str]) -> int:
    """Print the timeline; return 0 if it fits, 1 if not."""
    parser = argparse.ArgumentParser(
        prog="python -m graceful_gunicorn check",
        description="Print the planned shutdown timeline of a gunicorn server and check it "
        "fits. Other arguments are gunicorn's own (-c CONFIG, --graceful-timeout, APP_MODULE).",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        metavar="SECONDS",
        help="the platform's grace period after SIGTERM (Kubernetes' "
        "terminationGracePeriodSeconds); checked against shutdown_delay + graceful_timeout",
    )
    options, gunicorn_args = parser.parse_known_args(argv)
    try:
        timeline = plan(gunicorn_args, options.grace_period)
    except SettingsError as exc:
        print(f"graceful_gunicorn check: {exc}", file=sys.stderr)
        return 1
    print(f"graceful_gunicorn shutdown timeline (graceful_timeout={timeline.graceful_timeout:g}s):")
    for line in timeline.lines():
        print("  " + line)
    problems = timeline.problems()
    for problem in problems:
        print(f"graceful_gunicorn check: does not fit: {problem}", file=sys.stderr)
    return 1 if problems else 0
