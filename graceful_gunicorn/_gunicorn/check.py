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
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import Application
from gunicorn.app.wsgiapp import WSGIApplication

from .._core.context import Reason
from .._core.lifecycle import Lifecycle
from .._core.plan import ShutdownPlan, available_budget, quick_budget, safety_margin
from .._core.settings import Settings, SettingsError
from .._wsgi.discovery import find_lifecycle
from .server_settings import (
    check_report_directory,
    graceful_plans,
    graceful_worker_class,
    load_settings,
)


@dataclass(frozen=True)
class Timeline:
    """When each step of a SIGTERM shutdown happens, in seconds after the signal."""

    graceful_timeout: float
    settings: Settings
    #: The plan of each graceful reason (None: the app is not known).
    plans: dict[Reason, ShutdownPlan] | None
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
        return self.stop_begins + available_budget(self.graceful_timeout)

    @property
    def drain_until(self) -> float:
        """before_shutdown and the drain of a terminate end here at the latest."""
        drain = self.plans["terminate"].drain if self.plans else self.workers_done
        return self.stop_begins + drain

    @property
    def master_deadline(self) -> float:
        """gunicorn's master SIGKILLs workers still alive."""
        return self.stop_begins + self.graceful_timeout

    def problems(self) -> list[str]:
        """Why the plan cannot work (empty when it fits)."""
        # The first reason that does not fit, as the server reports it (check_lifecycle_fits).
        plan_problems = (plan.problem() for plan in (self.plans or {}).values())
        found = [problem for problem in plan_problems if problem][:1]
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
            f"they keep {self.plans['terminate'].reserved:.2f}s"
            if self.plans
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
            "reload (SIGHUP): the old workers serve until the new ones have loaded the app"
            + (
                f", at most reload_ready_timeout={s.reload_ready_timeout:g}s"
                if s.reload_ready_timeout
                else " (reload_ready_timeout=0: they stop at once)"
            )
        )
        lines.append(
            "recycle (max_requests): the worker serves until its replacement has loaded the app"
            + (
                f", at most recycle_ready_timeout={s.recycle_ready_timeout:g}s"
                if s.recycle_ready_timeout
                else " (recycle_ready_timeout=0: it stops at once)"
            )
        )
        quick = quick_budget(s.quick_shutdown_timeout, self.graceful_timeout)
        lines.append(
            f"quick stop (SIGINT/SIGQUIT) and worker timeout: on_shutdown and after_shutdown "
            f"within {quick:g}s (quick_shutdown_timeout={s.quick_shutdown_timeout:g})"
        )
        shown: list[str] = []
        for reason, plan in (self.plans or {}).items():
            described = plan.describe()
            if described not in shown:  # a reason= filter makes the plans differ
                shown.append(described)
                lines.append(f"plan ({reason}): {described}")
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

    Raises :class:`SettingsError` for what stops gunicorn at start-up: the
    same checks, in the same functions, as the master and the workers make.
    """
    if grace_period is not None and not (math.isfinite(grace_period) and grace_period >= 0):
        raise SettingsError(
            f"--grace-period must be a number of seconds >= 0, got {grace_period!r}"
        )
    application = _load_gunicorn(gunicorn_args)
    cfg: Any = application.cfg
    settings, _ = load_settings(cfg)
    check_report_directory(settings)
    graceful_worker_class(cfg)
    graceful_timeout = float(cfg.graceful_timeout)
    plans = None
    if application.app_uri is not None:
        lifecycle = find_lifecycle(application.wsgi()) or Lifecycle()
        plans = {p.reason: p for p in graceful_plans(lifecycle, settings, graceful_timeout)}
    return Timeline(graceful_timeout, settings, plans, grace_period)


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
