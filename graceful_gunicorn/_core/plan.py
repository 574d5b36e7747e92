"""The budget of one stop: when the drain ends and what each callback keeps.

One function, :func:`plan_shutdown`, makes the plan from gunicorn's
``graceful_timeout`` and the app's callbacks (SPEC section 5); the workers,
the master's ``--preload`` check, ``python -m graceful_gunicorn check``,
``flask run`` and :func:`graceful_gunicorn.testing.run_shutdown` all use it::

    graceful_timeout T ─ margin (10% of T, at most 1 s) = budget B
    B = before_shutdown + drain │ on_shutdown + after_shutdown
                                ^ drain deadline = B - E - shared

- callbacks with an explicit ``timeout=`` keep it in full (E, their sum);
- callbacks without one share what is left of half of B after E, each up to
  its default, so they never push the drain deadline below half of B;
- while callbacks run, each one ends before what the callbacks after it
  keep, so a callback that overruns never eats a later one's time.

A quick stop (``SIGINT``/``SIGQUIT``) or an abort has no drain to protect:
its callbacks share ``quick_shutdown_timeout``, each keeping an equal part of
it (at most its timeout) for itself. This module imports neither Flask nor
gunicorn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .callbacks import Registration
from .context import QUICK_REASONS, Reason

#: The reasons of a graceful stop: before_shutdown and the drain run first.
GRACEFUL_REASONS: tuple[Reason, ...] = ("terminate", "reload", "recycle")


def safety_margin(graceful_timeout: float) -> float:
    """Seconds kept free before gunicorn's SIGKILL: 10% of the budget, at most 1 s."""
    return min(1.0, 0.1 * graceful_timeout)


def available_budget(graceful_timeout: float, margin: float | None = None) -> float:
    """What a stop may spend: ``graceful_timeout`` less the safety margin (by
    default :func:`safety_margin`), never negative."""
    margin = safety_margin(graceful_timeout) if margin is None else margin
    return max(0.0, graceful_timeout - margin)


def quick_budget(
    quick_timeout: float, graceful_timeout: float, margin: float | None = None
) -> float:
    """What a quick stop's callbacks share: ``quick_timeout``, within what is available."""
    return min(quick_timeout, available_budget(graceful_timeout, margin))


@dataclass(frozen=True)
class PlannedCallback:
    """One on_shutdown or after_shutdown callback, as the plan sees it."""

    registration: Registration
    #: Its own ``timeout=``, else the default.
    timeout: float
    #: Seconds reserved for it before the deadline.
    keeps: float

    @property
    def explicit(self) -> bool:
        """Whether it was registered with ``timeout=``."""
        return self.registration.timeout is not None


@dataclass(frozen=True)
class ShutdownPlan:
    """The budget of one stop, in seconds from the start of the graceful stop."""

    reason: Reason
    #: gunicorn's ``graceful_timeout``: the master SIGKILLs after it.
    graceful_timeout: float
    #: Kept free before the master's SIGKILL.
    margin: float
    #: What the stop may use: everything is over by then.
    budget: float
    #: The on_shutdown and after_shutdown callbacks of this reason, in the order they run.
    callbacks: tuple[PlannedCallback, ...]

    @property
    def quick(self) -> bool:
        """A quick stop or abort: no before_shutdown, no drain."""
        return self.reason in QUICK_REASONS

    @property
    def explicit(self) -> float:
        """E: the sum of the explicit timeouts."""
        return sum(c.timeout for c in self.callbacks if c.explicit)

    @property
    def reserved(self) -> float:
        """What the callbacks keep together before the deadline."""
        return sum(c.keeps for c in self.callbacks)

    @property
    def drain(self) -> float:
        """The drain deadline (before_shutdown ends by then too)."""
        return 0.0 if self.quick else max(0.0, self.budget - self.reserved)

    @property
    def fits(self) -> bool:
        """Whether every explicit timeout is kept in full."""
        return self.quick or _fits(self.explicit, self.budget)

    def keep_after(self, registration: Registration) -> float:
        """What the callbacks that run after ``registration`` keep."""
        later = 0.0
        for planned in reversed(self.callbacks):
            if planned.registration is registration:
                return later
            later += planned.keeps
        return 0.0

    def problem(self) -> str | None:
        """Why the plan cannot work, in one line naming the fix; ``None`` when it fits."""
        if self.fits:
            return None
        return (
            f"the timeout= of the on_shutdown and after_shutdown callbacks add up to "
            f"{self.explicit:g}s (reason {self.reason}), more than the {self.budget:g}s that "
            f"graceful_timeout={self.graceful_timeout:g} leaves after its {self.margin:g}s "
            "safety margin: raise graceful_timeout or lower those timeouts"
        )

    def describe(self) -> str:
        """The plan in one line, as the worker logs it and ``check`` prints it."""
        if self.quick:
            return (
                f"{self.budget:.2f}s for {len(self.callbacks)} callback(s), no drain, each "
                f"keeping up to {max((c.keeps for c in self.callbacks), default=0.0):.2f}s "
                f"(graceful_timeout={self.graceful_timeout:g}, margin {self.margin:g}s)"
            )
        explicit = [c for c in self.callbacks if c.explicit]
        implicit = [c for c in self.callbacks if not c.explicit]
        shares = ", ".join(sorted({f"{c.keeps:.2f}s" for c in implicit})) or "-"
        return (
            f"budget {self.budget:.2f}s (graceful_timeout={self.graceful_timeout:g}, margin "
            f"{self.margin:g}s): drain until {self.drain:.2f}s; callbacks keep "
            f"{self.reserved:.2f}s: {len(explicit)} with timeout= {self.explicit:.2f}s, "
            f"{len(implicit)} without {shares} each" + ("" if self.fits else "; DOES NOT FIT")
        )


def _fits(explicit: float, budget: float) -> bool:
    # 2.7 + 5.4 is 8.100000000000001: a sum of decimal timeouts that fits exactly fits.
    return explicit <= budget + 1e-9


def plan_shutdown(
    callbacks: Sequence[Registration],
    *,
    default_timeout: float,
    reason: Reason,
    graceful_timeout: float,
    quick_timeout: float,
    margin: float | None = None,
    timeout_of: Callable[[Registration], float] | None = None,
) -> ShutdownPlan:
    """Plan a stop for ``reason``; ``callbacks`` are its on_shutdown and after_shutdown
    callbacks in the order they run.

    ``margin`` defaults to :func:`safety_margin` of ``graceful_timeout`` (0 for
    an in-process shutdown that no master will kill); ``timeout_of`` gives each
    callback's timeout when it is not simply its own or ``default_timeout``. Never raises: a plan
    whose explicit timeouts do not fit gives them half of the budget in
    proportion, and says so in :meth:`ShutdownPlan.problem`.
    """
    margin = safety_margin(graceful_timeout) if margin is None else margin
    available = available_budget(graceful_timeout, margin)

    def own(registration: Registration) -> float:
        if timeout_of is not None:
            return timeout_of(registration)
        return default_timeout if registration.timeout is None else registration.timeout

    if reason in QUICK_REASONS:
        # No drain to protect: the budget is shared by the callbacks, each up to its
        # timeout, so that a hanging on_shutdown leaves after_shutdown its turn.
        budget = quick_budget(quick_timeout, graceful_timeout, margin)
        each = budget / len(callbacks) if callbacks else 0.0
        quick = tuple(PlannedCallback(r, own(r), min(own(r), each)) for r in callbacks)
        return ShutdownPlan(reason, graceful_timeout, margin, budget, quick)
    explicit = sum(r.timeout for r in callbacks if r.timeout is not None)
    implicit = sum(1 for r in callbacks if r.timeout is None)
    # Explicit timeouts come first. If they cannot all fit (a worker that serves
    # anyway after a reload), they share half of the budget in proportion: the
    # drain keeps the other half, as plain gunicorn's would keep all of it.
    scale = 1.0 if _fits(explicit, available) else available / 2 / explicit
    pool = max(0.0, available / 2 - explicit * scale)
    share = pool / implicit if implicit else 0.0
    planned = tuple(
        PlannedCallback(r, own(r), min(own(r), share) if r.timeout is None else r.timeout * scale)
        for r in callbacks
    )
    return ShutdownPlan(reason, graceful_timeout, margin, available, planned)


__all__ = [
    "GRACEFUL_REASONS",
    "PlannedCallback",
    "ShutdownPlan",
    "available_budget",
    "plan_shutdown",
    "quick_budget",
    "safety_margin",
]
