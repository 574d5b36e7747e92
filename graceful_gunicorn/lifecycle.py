"""The framework-neutral core: callbacks in three phases, and a drain between them.

A plain WSGI application uses it directly::

    lifecycle = Lifecycle()

    @lifecycle.on_shutdown(timeout=5)
    def flush() -> None: ...

    application = lifecycle.wrap(wsgi_app)   # counts in-flight requests

The gunicorn workers find the lifecycle through the application they load and
run its :class:`ShutdownSequence` when they stop. This module imports neither
Flask nor gunicorn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, overload

from .budget import ShutdownPlan, plan_shutdown
from .callbacks import (
    AsyncRunner,
    CallbackT,
    Invoker,
    Log,
    Registration,
    check_timeout,
    run_callback,
)
from .context import PHASES, QUICK_REASONS, REASONS, Phase, Reason, ShutdownContext
from .middleware import InFlight, InFlightMiddleware, RequestEnds
from .readiness import Readiness
from .report import CallbackResult, PhaseResult, ShutdownReport

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

logger = logging.getLogger("graceful_gunicorn")

#: How often the drain looks at the in-flight count. The count is cheap to read,
#: and a short interval lets a worker exit right after its last request.
DRAIN_POLL_INTERVAL = 0.005

DEFAULT_CALLBACK_TIMEOUT = 5.0

#: The budget of a quick stop's callbacks when nothing else is said.
DEFAULT_QUICK_TIMEOUT = 2.0


def _call_directly(func: Callable[[], Any]) -> Any:
    return func()


def _no_heartbeat() -> None:
    pass


class Lifecycle:
    """The shutdown lifecycle of one WSGI application.

    Callbacks are registered with :meth:`before_shutdown`, :meth:`on_shutdown`
    and :meth:`after_shutdown`, bare or with ``timeout=`` and ``reasons=``;
    each decorator returns the function unchanged. Within a phase they run
    newest first; see :mod:`graceful_gunicorn.callbacks` for the policy.
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
        self._invoke = invoke or _call_directly
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
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")
        registration = Registration.create(func, phase, timeout, reasons)
        if self._sequence is not None:
            raise RuntimeError(
                f"cannot register {registration.name} in {phase}: shutdown already began "
                f"(reason {self._sequence.reason!r})"
            )
        self._registrations[phase].append(registration)
        return func

    def _decorator(
        self,
        phase: Phase,
        func: CallbackT | None,
        timeout: float | None,
        reasons: Collection[str] | None,
    ) -> Any:
        if func is not None:
            return self.register(phase, func, timeout=timeout, reasons=reasons)
        # Validate the options now, not when the decorator is applied.
        check_timeout(timeout, f"{phase} timeout")

        def decorate(f: CallbackT) -> CallbackT:
            return self.register(phase, f, timeout=timeout, reasons=reasons)

        return decorate

    @overload
    def before_shutdown(self, func: CallbackT) -> CallbackT: ...
    @overload
    def before_shutdown(
        self, *, timeout: float | None = None, reasons: Collection[str] | None = None
    ) -> Callable[[CallbackT], CallbackT]: ...
    def before_shutdown(
        self,
        func: CallbackT | None = None,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> Any:
        """Register a callback of phase 1: runs while the server still serves."""
        return self._decorator("before_shutdown", func, timeout, reasons)

    @overload
    def on_shutdown(self, func: CallbackT) -> CallbackT: ...
    @overload
    def on_shutdown(
        self, *, timeout: float | None = None, reasons: Collection[str] | None = None
    ) -> Callable[[CallbackT], CallbackT]: ...
    def on_shutdown(
        self,
        func: CallbackT | None = None,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> Any:
        """Register a callback of phase 2: runs after in-flight requests drained."""
        return self._decorator("on_shutdown", func, timeout, reasons)

    @overload
    def after_shutdown(self, func: CallbackT) -> CallbackT: ...
    @overload
    def after_shutdown(
        self, *, timeout: float | None = None, reasons: Collection[str] | None = None
    ) -> Callable[[CallbackT], CallbackT]: ...
    def after_shutdown(
        self,
        func: CallbackT | None = None,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> Any:
        """Register a callback of phase 3: the last word before the process exits."""
        return self._decorator("after_shutdown", func, timeout, reasons)

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
        """The budget of a stop for ``reason`` (see :mod:`graceful_gunicorn.budget`)."""
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
        combined = cls(callback_timeout=first.callback_timeout, invoke=first._invoke)
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
                        invoke=member._invoke,
                        default_timeout=member.callback_timeout,
                    )
                    kept = self._as_member[key] = (registration, as_member)
                found.append(kept[1])
        return found

    # -- requests -----------------------------------------------------------------

    def wrap(self, app: WSGIApplication) -> InFlightMiddleware:
        """Wrap ``app`` in the middleware that counts its in-flight requests."""
        return InFlightMiddleware(app, self.requests, owner=self, readiness=self.readiness)

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


class ShutdownSequence:
    """One shutdown of one process, run step by step by the server.

    The server calls the steps in order, doing its own work in between
    (stopping its listeners, waiting for its loop)::

        sequence.run_phase("before_shutdown", until=sequence.drain_deadline)
        ...stop accepting...
        sequence.drain(until=sequence.drain_deadline)
        sequence.run_phase("on_shutdown", until=sequence.deadline)
        sequence.run_phase("after_shutdown", until=sequence.deadline)
        report = sequence.finish()

    Each step logs one line; callbacks never raise out of it.
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        reason: Reason,
        deadline: float,
        heartbeat: Callable[[], None],
        log: Log,
        plan: ShutdownPlan,
    ) -> None:
        self.lifecycle = lifecycle
        self.reason: Reason = reason
        self.started = time.monotonic()
        #: Everything must be over by then.
        self.deadline = deadline
        #: The budget this stop was planned with (replanned when it turns quick).
        self.plan = plan
        #: Whether a quick signal cut this graceful stop short.
        self.escalated = False
        #: The callbacks of phases 2 and 3 keep this much time for themselves.
        self.reserved = min(plan.reserved, max(0.0, deadline - self.started))
        #: The end of phase 1 and of the drain.
        self.drain_deadline = deadline - self.reserved
        self.heartbeat = heartbeat
        self.log = log
        self.report = ShutdownReport(
            reason=reason, pid=os.getpid(), in_flight_at_start=lifecycle.in_flight
        )
        lifecycle.requests.watch_ends()  # each request's end, from now on
        self._finished = False
        self._drained = False
        self._ran = False
        self._run_lock = threading.Lock()

    @property
    def quick(self) -> bool:
        """Whether this shutdown skips phase 1 and the drain."""
        return self.reason in QUICK_REASONS

    def escalate(self, deadline: float) -> None:
        """Turn this shutdown into a quick one that ends by ``deadline``.

        Called when ``SIGINT``/``SIGQUIT`` arrive during a graceful stop: what
        is left of phase 1 and of the drain is skipped.
        """
        if self.quick:
            return
        self.escalated = True
        self.reason = "quick"
        self.report.reason = "quick"
        self.deadline = min(self.deadline, deadline)
        now = time.monotonic()
        self.drain_deadline = min(self.drain_deadline, now)
        left = max(0.0, self.deadline - now)
        self.plan = self.lifecycle.plan(
            "quick", graceful_timeout=left, quick_timeout=left, margin=0.0
        )

    def remaining(self) -> float:
        """Seconds left until :attr:`deadline` (never negative)."""
        return max(0.0, self.deadline - time.monotonic())

    def run_phase(self, phase: Phase, until: float | None = None) -> list[CallbackResult]:
        """Run the callbacks of ``phase`` newest first, none past ``until``."""
        given = self.deadline if until is None else until

        def phase_end() -> float:
            # Read on every turn: escalate() may bring either deadline forward.
            end = min(given, self.deadline)
            return min(end, self.drain_deadline) if phase == "before_shutdown" else end

        started = time.monotonic()
        registered = self.lifecycle.callbacks(phase)
        skip_phase = phase == "before_shutdown" and self.quick
        results = []
        for registration in registered:
            skip_phase = skip_phase or (phase == "before_shutdown" and self.quick)
            if skip_phase or not registration.applies_to(self.reason):
                results.append(CallbackResult(registration.name, phase, "skipped", 0.0))
                continue
            now = time.monotonic()
            callback_end = self._callback_end(phase, registration, phase_end)
            until = callback_end()
            if now >= until:
                self.log.error(
                    "graceful_gunicorn: %s callback %s skipped: no time left",
                    phase,
                    registration.name,
                )
                results.append(CallbackResult(registration.name, phase, "skipped", 0.0))
                continue
            ctx = ShutdownContext(
                reason=self.reason,
                phase=phase,
                deadline=min(until, now + self.lifecycle.timeout_of(registration)),
                _in_flight=lambda: self.lifecycle.in_flight,
            )
            results.append(
                run_callback(
                    registration,
                    ctx,
                    self.lifecycle._invoke,
                    self.log,
                    self.heartbeat,
                    cut_at=callback_end,
                    run_async=self.lifecycle.run_async,
                )
            )
        duration = time.monotonic() - started
        self.report.callbacks.extend(results)
        self.report.phases.append(PhaseResult(phase, duration, skipped=skip_phase))
        self._log_phase(phase, results, duration, skip_phase)
        return results

    def _callback_end(
        self, phase: Phase, registration: Registration, phase_end: Callable[[], float]
    ) -> Callable[[], float]:
        """When ``registration`` must end: in time for what the callbacks after it keep.

        Read on every look: an escalation to a quick stop replans on the spot.
        """
        if phase == "before_shutdown":
            return phase_end

        def end() -> float:
            return min(phase_end(), self.deadline - self.plan.keep_after(registration))

        return end

    def _log_phase(
        self, phase: Phase, results: list[CallbackResult], duration: float, skipped: bool
    ) -> None:
        if skipped:
            self.log.info("graceful_gunicorn: %s skipped (reason %s)", phase, self.reason)
            return
        counts = {
            o: sum(1 for r in results if r.outcome == o)
            for o in ("ok", "error", "timeout", "skipped")
        }
        level = logging.INFO if counts["error"] == counts["timeout"] == 0 else logging.WARNING
        self.log.log(
            level,
            "graceful_gunicorn: %s done in %.3fs: %d ok, %d failed, %d timed out, %d skipped",
            phase,
            duration,
            counts["ok"],
            counts["error"],
            counts["timeout"],
            counts["skipped"],
        )

    def drain(self, until: float | None = None, ready: Callable[[], bool] | None = None) -> bool:
        """Wait until no request is in flight and ``ready()`` is true, or ``until``.

        Returns whether the drain completed; on a deadline each request still
        in flight is logged.
        """
        until = self.drain_deadline if until is None else min(until, self.deadline)
        started = time.monotonic()
        last_beat = started
        while self.lifecycle.in_flight or (ready is not None and not ready()):
            now = time.monotonic()
            if now >= min(until, self.drain_deadline):
                break
            if now - last_beat >= 0.5:
                self.heartbeat()
                last_beat = now
            time.sleep(min(DRAIN_POLL_INTERVAL, until - now))
        duration = time.monotonic() - started
        left = self._count_requests().left
        served = self.report.requests_drained
        self._drained = True
        self.report.phases.append(PhaseResult("drain", duration))
        if not left and self.lifecycle.in_flight == 0 and ready is not None and not ready():
            self.log.warning(
                "graceful_gunicorn: drain deadline passed after %.3fs with no request in "
                "flight but the server still busy (a connection open with no whole request "
                "on it: kept alive, or half sent); %d request(s) completed",
                duration,
                served,
            )
            return False
        if left:
            self.log.warning(
                "graceful_gunicorn: drain deadline passed after %.3fs with %d request(s) in flight",
                duration,
                len(left),
            )
            for request in left:
                self.log.warning(
                    "graceful_gunicorn: still in flight: %s %s (%.1fs)",
                    request.method,
                    request.path,
                    request.seconds,
                )
            return False
        self.log.info(
            "graceful_gunicorn: drain done in %.3fs: %d request(s) completed",
            duration,
            served,
        )
        return True

    def _count_requests(self) -> RequestEnds:
        """Count into the report every request that ended since the shutdown began,
        by how it ended (not what was in flight at the start: a sync worker serves
        its backlog, gevent's kill cuts a request), and what is still in flight."""
        ends = self.lifecycle.requests.tally()
        self.report.requests_drained = ends.served
        self.report.requests_abandoned = len(ends.left) + ends.cut
        return ends

    def run_all(self) -> ShutdownReport:
        """Every step in order, in this thread; the sequence for in-process servers.

        Runs once: a second call (even from another thread) waits for the
        first and returns the same report.
        """
        with self._run_lock:
            if not self._ran:
                self._ran = True
                self._run_steps()
        return self.report

    def _run_steps(self) -> None:
        if not self.quick:
            self.run_phase("before_shutdown", until=self.drain_deadline)
            self.drain()
        else:
            self.run_phase("before_shutdown")
        self.run_phase("on_shutdown")
        self.run_phase("after_shutdown")
        self.finish()

    def finish(self) -> ShutdownReport:
        """Close the report and log its one-line summary."""
        if not self._finished:
            self._finished = True
            if not self._drained:
                # A quick stop or an abort does not wait: what is in flight now is
                # cut, as is what was cut already.
                self._count_requests()
            self.report.duration = time.monotonic() - self.started
            report = self.report
            self.log.info(
                "graceful_gunicorn: shutdown complete in %.3fs (reason %s): "
                "%d request(s) drained, %d abandoned; callbacks %d ok, %d failed, "
                "%d timed out, %d skipped",
                report.duration,
                report.reason,
                report.requests_drained,
                report.requests_abandoned,
                report.count("ok"),
                report.count("error"),
                report.count("timeout"),
                report.count("skipped"),
            )
        return self.report


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
    return found[0] if len(found) == 1 else Lifecycle.combine(found)


__all__ = ["EXTENSION_KEY", "Lifecycle", "ShutdownSequence", "find_lifecycle", "find_lifecycles"]
