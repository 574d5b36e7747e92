"""One shutdown of one process: the steps, in order, each ending on time.

This module imports neither a web framework nor a server.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from .callbacks import Log, Registration, run_callback
from .context import QUICK_REASONS, Phase, Reason, ShutdownContext
from .in_flight import RequestEnds
from .plan import ShutdownPlan
from .report import CallbackResult, PhaseResult, ShutdownReport

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

#: How often the drain looks at the in-flight count. The count is cheap to read,
#: and a short interval lets a worker exit right after its last request.
DRAIN_POLL_INTERVAL = 0.005


def _no_listener(drain_seconds: float) -> None:
    pass


def _nothing_to_release() -> None:
    pass


class ShutdownSequence:
    """One shutdown of one process.

    :meth:`run` is the one place the order of the steps is written; a server
    gives it only what differs (how it stops serving, when its own loop is
    done), and :meth:`ends_at` is the one place that decides when each step
    ends. Each step logs one line; callbacks never raise out of it.
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

    def ends_at(
        self, step: Phase | Literal["drain"], registration: Registration | None = None
    ) -> float:
        """When ``step`` (or ``registration``'s callback in it) must be over.

        ``before_shutdown`` and the drain end by :attr:`drain_deadline`: the
        callbacks of phases 2 and 3 keep the rest. A callback of those phases
        ends in time for what the callbacks after it keep (``plan.keep_after``).
        Asked on every look, not once: :meth:`escalate` brings the deadlines
        forward and replans.
        """
        if step in ("before_shutdown", "drain"):
            return min(self.deadline, self.drain_deadline)
        if registration is None:
            return self.deadline
        return self.deadline - self.plan.keep_after(registration)

    def run(
        self,
        *,
        stop_serving: Callable[[float], None] = _no_listener,
        ready: Callable[[], bool] | None = None,
        drain_over: Callable[[], None] = _nothing_to_release,
    ) -> ShutdownReport:
        """Every step, in order, in this thread:

        1. ``before_shutdown``, while the server still serves;
        2. ``stop_serving(seconds)``: the server stops accepting, and may take
           that long for its own drain (0 on a quick stop);
        3. the drain, until no request is in flight and ``ready()`` (the
           server's loop is done); then ``drain_over()``, whether it completed
           or was cut short (not on a quick stop);
        4. ``on_shutdown``, then ``after_shutdown``; then the report.
        """
        self.run_phase("before_shutdown")
        drain_seconds = 0.0 if self.quick else self.ends_at("drain") - time.monotonic()
        stop_serving(max(0.0, drain_seconds))
        if not self.quick:
            self.drain(ready=ready)
            drain_over()
        self.run_phase("on_shutdown")
        self.run_phase("after_shutdown")
        return self.finish()

    def run_phase(self, phase: Phase, until: float | None = None) -> list[CallbackResult]:
        """Run the callbacks of ``phase`` newest first, none past ``until`` (nor
        past what :meth:`ends_at` says)."""
        given = math.inf if until is None else until
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
            callback_end = self._callback_end(phase, registration, given)
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
                    self.lifecycle.invoke,
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
        self, phase: Phase, registration: Registration, given: float
    ) -> Callable[[], float]:
        """When ``registration`` must end, as :meth:`ends_at` says on each look."""

        def end() -> float:
            return min(given, self.ends_at(phase, registration))

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
        given = math.inf if until is None else until
        started = time.monotonic()
        last_beat = started
        while self.lifecycle.in_flight or (ready is not None and not ready()):
            now = time.monotonic()
            end = min(given, self.ends_at("drain"))
            if now >= end:
                break
            if now - last_beat >= 0.5:
                self.heartbeat()
                last_beat = now
            time.sleep(min(DRAIN_POLL_INTERVAL, end - now))
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
        """:meth:`run` for in-process servers, with nothing to stop serving.

        Runs once: a second call (even from another thread) waits for the
        first and returns the same report.
        """
        with self._run_lock:
            if not self._ran:
                self._ran = True
                self.run()
        return self.report

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


__all__ = ["ShutdownSequence"]
