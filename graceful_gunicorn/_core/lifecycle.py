"""The framework-neutral lifecycle: callbacks in three phases, and a drain between them.

It registers the callbacks, plans their budget (:mod:`.plan`) and begins the
one :class:`~graceful_gunicorn._core.sequence.ShutdownSequence` of its process.
The public :class:`graceful_gunicorn.Lifecycle` adds ``wrap``, the WSGI
middleware that counts its requests (:mod:`graceful_gunicorn._wsgi.lifecycle`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from .callbacks import (
    AsyncRunner,
    CallbackT,
    Invoker,
    Log,
    Registration,
    check_timeout,
)
from .context import PHASES, REASONS, Phase, Reason
from .decorators import ShutdownDecorators
from .in_flight import InFlight
from .plan import ShutdownPlan, plan_shutdown
from .readiness import Readiness
from .report import ShutdownReport
from .sequence import ShutdownSequence

logger = logging.getLogger("graceful_gunicorn")

DEFAULT_CALLBACK_TIMEOUT = 5.0

#: The budget of a quick stop's callbacks when nothing else is said.
DEFAULT_QUICK_TIMEOUT = 2.0


def _call_directly(func: Callable[[], Any]) -> Any:
    return func()


def _no_heartbeat() -> None:
    pass


class Lifecycle(ShutdownDecorators):
    """The shutdown lifecycle of one WSGI application.

    Callbacks are registered with :meth:`before_shutdown`, :meth:`on_shutdown`
    and :meth:`after_shutdown`, bare or with ``timeout=`` and ``reasons=``;
    each decorator returns the function unchanged. Within a phase they run
    newest first; see :mod:`.callbacks` for the policy.
    """

    def __init__(
        self,
        *,
        callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
        invoke: Invoker | None = None,
    ) -> None:
        #: Timeout of a callback registered without ``timeout=``.
        self.callback_timeout = check_timeout(callback_timeout, "callback_timeout") or 0.0
        #: The server's ``shutdown_callback_timeout`` when it was set: it wins.
        self.server_callback_timeout: float | None = None
        #: The requests in flight through :meth:`wrap`.
        self.requests = InFlight()
        #: The readiness path and whether the server is going away (the
        #: graceful worker points it at the master's state).
        self.readiness = Readiness()
        #: How each callback is called: in the app's context for the Flask extension.
        self.invoke: Invoker = invoke or _call_directly
        #: How an ``async def`` callback's coroutine runs. The gevent worker runs it
        #: in a native thread, so that no greenlet serving a request sees its loop.
        self.run_async: AsyncRunner = asyncio.run
        self._registrations: dict[Phase, list[Registration]] = {p: [] for p in PHASES}
        self._sequence: ShutdownSequence | None = None
        #: The lifecycles of the apps this one stands for (see :meth:`combine`).
        self.members: tuple[Lifecycle, ...] = ()
        # Each member's registration as this lifecycle runs it, kept (by id, with
        # the original) so that the plan and the phases see the same objects.
        self._as_member: dict[int, tuple[Registration, Registration]] = {}
        #: The app's name in logs (the Flask extension sets the app's ``name``).
        self.name: str | None = None

    # -- registration ---------------------------------------------------------

    def register(
        self,
        phase: Phase,
        func: CallbackT,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> CallbackT:
        """Register ``func`` in ``phase``; return it unchanged."""
        registration = Registration.create(func, phase, timeout, reasons)
        if self._sequence is not None:
            raise RuntimeError(
                f"cannot register {registration.name} in {phase}: shutdown already began "
                f"(reason {self._sequence.reason!r})"
            )
        self._registrations[phase].append(registration)
        return func

    def callbacks(self, phase: Phase, reason: Reason | None = None) -> list[Registration]:
        """The callbacks of ``phase`` in the order they run (newest first)."""
        if self.members:
            return self._members_callbacks(phase, reason)
        registered = reversed(self._registrations[phase])
        return [r for r in registered if reason is None or r.applies_to(reason)]

    def timeout_of(self, registration: Registration) -> float:
        """The timeout ``registration`` runs with: its own, else the default."""
        if registration.timeout is not None:
            return registration.timeout
        if self.server_callback_timeout is None and registration.default_timeout is not None:
            return registration.default_timeout
        return self.default_timeout

    @property
    def default_timeout(self) -> float:
        """What a callback without ``timeout=`` may take: the server's setting, if it
        was set, else :attr:`callback_timeout`."""
        server = self.server_callback_timeout
        return self.callback_timeout if server is None else server

    def plan(
        self,
        reason: Reason,
        *,
        graceful_timeout: float,
        quick_timeout: float = DEFAULT_QUICK_TIMEOUT,
        margin: float | None = None,
    ) -> ShutdownPlan:
        """The budget of a stop for ``reason`` (see :mod:`graceful_gunicorn._core.plan`)."""
        return plan_shutdown(
            self.callbacks("on_shutdown", reason) + self.callbacks("after_shutdown", reason),
            default_timeout=self.default_timeout,
            timeout_of=self.timeout_of,
            reason=reason,
            graceful_timeout=graceful_timeout,
            quick_timeout=quick_timeout,
            margin=margin,
        )

    @classmethod
    def combine(cls, lifecycles: Sequence[Lifecycle]) -> Lifecycle:
        """One lifecycle for several apps of one process (a dispatcher mounting apps).

        One sequence and one budget for all of them: the drain waits for every
        app's requests; each phase runs the apps in the order given (outermost
        first), each app's callbacks newest first, each in its own app's context.
        Every app's ``draining`` turns true and its readiness answers 503 when the
        shutdown begins. A callback without ``timeout=`` keeps its own app's
        default (unless the server's ``shutdown_callback_timeout`` is set).
        """
        first = lifecycles[0]
        combined = cls(callback_timeout=first.callback_timeout, invoke=first.invoke)
        combined.members = tuple(lifecycles)
        combined.requests = _AllInFlight([member.requests for member in lifecycles])
        combined.readiness = first.readiness
        return combined

    def _members_callbacks(self, phase: Phase, reason: Reason | None) -> list[Registration]:
        """The members' callbacks, read now (one registered after boot runs too).

        A callback registered on several apps (one ``GracefulShutdown`` with
        ``init_app`` on each) runs once, in the first app's context.
        """
        found: list[Registration] = []
        funcs: set[int] = set()
        for member in self.members:
            for registration in member.callbacks(phase, reason):
                if id(registration.func) in funcs:
                    continue
                funcs.add(id(registration.func))
                key = id(registration)
                kept = self._as_member.get(key)
                if kept is None or kept[0] is not registration:
                    as_member = dataclasses.replace(
                        registration,
                        invoke=member.invoke,
                        default_timeout=member.callback_timeout,
                    )
                    kept = self._as_member[key] = (registration, as_member)
                found.append(kept[1])
        return found

    # -- requests -----------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests in flight right now."""
        return len(self.requests)

    @property
    def draining(self) -> bool:
        """True once shutdown began: the process is going away."""
        return self._sequence is not None

    @property
    def sequence(self) -> ShutdownSequence | None:
        """The running or finished shutdown, or ``None`` while serving."""
        return self._sequence

    # -- shutdown -----------------------------------------------------------------

    def begin_shutdown(
        self,
        reason: Reason,
        *,
        deadline: float,
        heartbeat: Callable[[], None] = _no_heartbeat,
        log: Log = logger,
        plan: ShutdownPlan | None = None,
    ) -> ShutdownSequence:
        """Start the shutdown (once): later calls return the same sequence.

        ``deadline`` is the :func:`time.monotonic` time by which everything
        must be over; ``plan`` says what the callbacks keep before it (by
        default planned for the time left, with no safety margin).
        """
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {sorted(REASONS)}, got {reason!r}")
        if self._sequence is None:
            if plan is None:
                left = max(0.0, deadline - time.monotonic())
                plan = self.plan(reason, graceful_timeout=left, quick_timeout=left, margin=0.0)
            self._sequence = ShutdownSequence(self, reason, deadline, heartbeat, log, plan)
            self.readiness.stopping = True  # responses close their connections from now on
            for member in self.members:
                member._sequence = self._sequence
                member.readiness.stopping = True
        return self._sequence

    def shutdown(
        self,
        reason: Reason = "terminate",
        *,
        timeout: float = 30.0,
        quick_timeout: float = DEFAULT_QUICK_TIMEOUT,
        heartbeat: Callable[[], None] = _no_heartbeat,
        log: Log = logger,
    ) -> ShutdownReport:
        """Run the whole sequence in this thread and return its report.

        For servers without a graceful worker (the development server) and for
        tests: ``before_shutdown``, the drain, ``on_shutdown``, ``after_shutdown``,
        planned as a gunicorn worker plans them: ``timeout`` is its
        ``graceful_timeout``, less the same safety margin. A quick reason skips
        the first two and runs the callbacks within ``quick_timeout``.
        """
        check_timeout(timeout, "timeout")
        check_timeout(quick_timeout, "quick_timeout")
        plan = self.plan(reason, graceful_timeout=timeout, quick_timeout=quick_timeout)
        sequence = self.begin_shutdown(
            reason,
            deadline=time.monotonic() + plan.budget,
            heartbeat=heartbeat,
            log=log,
            plan=plan,
        )
        return sequence.run_all()


class _AllInFlight(InFlight):
    """The requests in flight of several apps, counted as one.

    A request that passes through two of them (an app mounted inside another
    app's ``wsgi_app``) counts once: they share its environ.
    """

    def __init__(self, parts: Sequence[InFlight]) -> None:
        super().__init__()
        self.parts = list(parts)

    def _sets(self) -> list[Any]:
        return [active for part in self.parts for active in part._sets()]

    def __len__(self) -> int:
        return len(self._in_flight())


__all__ = ["Lifecycle"]
