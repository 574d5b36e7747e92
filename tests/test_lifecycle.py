"""The framework-neutral lifecycle: registration, phases, timeouts, the drain."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import create_environ

from graceful_gunicorn import Lifecycle, ShutdownSequence
from graceful_gunicorn._core.context import ShutdownContext
from graceful_gunicorn._core.report import ShutdownReport
from graceful_gunicorn._wsgi.discovery import EXTENSION_KEY, find_lifecycle
from graceful_gunicorn._wsgi.middleware import InFlight, InFlightMiddleware

PHASES = ["before_shutdown", "on_shutdown", "after_shutdown"]

#: Upper bound of any wait in this module; no test is meant to come near it.
WAIT = 5.0


def noop_start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
    return lambda data: None


def slow_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A WSGI app whose body blocks until ``environ["test.release"]`` is set."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    release: threading.Event = environ["test.release"]

    def body() -> Iterator[bytes]:
        yield b"first"
        release.wait(WAIT)
        yield b"last"

    return body()


class HeldRequest:
    """A request served by a thread of its own, in flight until :attr:`release` is set."""

    def __init__(self, app: Callable[..., Any], path: str) -> None:
        self.release = threading.Event()
        self.counted = threading.Event()
        #: Set just before the response's close(), whose end takes it out of the count.
        self.closing = threading.Event()
        self.closed = threading.Event()
        environ = create_environ(path)
        environ["test.release"] = self.release
        self.thread = threading.Thread(target=self._serve, args=(app, environ), daemon=True)
        self.thread.start()
        assert self.counted.wait(WAIT), "the request never started"

    def _serve(self, app: Callable[..., Any], environ: dict[str, Any]) -> None:
        response = app(environ, noop_start_response)
        self.counted.set()
        try:
            for _ in response:
                pass
        finally:
            self.closing.set()
            response.close()
            self.closed.set()


@pytest.fixture
def hold() -> Iterator[Callable[..., HeldRequest]]:
    """Start requests that stay in flight until released (at the latest at teardown)."""
    held: list[HeldRequest] = []

    def start(app: Callable[..., Any], path: str = "/slow") -> HeldRequest:
        request = HeldRequest(app, path)
        held.append(request)
        return request

    yield start
    for request in held:
        request.release.set()
    for request in held:
        request.thread.join(WAIT)


@pytest.fixture
def blocker() -> Iterator[threading.Event]:
    """An event that blocking callbacks wait on; set at teardown so their threads end."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def lifecycle() -> Lifecycle:
    """A lifecycle whose callbacks default to 1 s, so that several fit in one shutdown."""
    return Lifecycle(callback_timeout=1.0)


def outcomes(report: ShutdownReport) -> list[tuple[str, str]]:
    return [(r.phase, r.outcome) for r in report.callbacks]


def run_in_thread(func: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``func`` in a daemon thread; its return value lands in the returned list."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(func()), daemon=True)
    thread.start()
    return thread, result


def shutdown_then_escalate(lifecycle: Lifecycle, entered: threading.Event, cut: float) -> Any:
    """A graceful shutdown that turns quick, ``cut`` seconds from then, once
    ``entered`` is set; it must end within 1.5 s of that. Returns its report."""
    thread, result = run_in_thread(lambda: lifecycle.shutdown(timeout=WAIT * 6))
    assert entered.wait(WAIT)
    sequence = lifecycle.sequence
    assert sequence is not None
    started = time.monotonic()
    sequence.escalate(time.monotonic() + cut)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.5
    return result[0]


# -- registration -------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_decorators_return_the_function_unchanged(lifecycle: Lifecycle, phase: str) -> None:
    """Each decorator, bare or with options, returns the very function it was given."""
    decorator = getattr(lifecycle, phase)

    def bare() -> None:
        pass

    def with_options(ctx: ShutdownContext) -> None:
        pass

    assert decorator(bare) is bare
    assert decorator(timeout=1.5, reasons={"terminate", "reload"})(with_options) is with_options
    assert [r.func for r in lifecycle.callbacks(phase)] == [with_options, bare]


def test_callbacks_run_newest_first_within_a_phase(lifecycle: Lifecycle) -> None:
    """Within one phase the callback registered last runs first."""
    ran: list[str] = []
    for name in ("first", "second", "third"):
        lifecycle.register("on_shutdown", lambda name=name: ran.append(name))

    lifecycle.shutdown(timeout=WAIT)

    assert ran == ["third", "second", "first"]


def test_phases_run_in_order_around_the_drain(lifecycle: Lifecycle) -> None:
    """before_shutdown, the drain, on_shutdown and after_shutdown run in that order."""
    ran: list[str] = []
    # Registered in the reverse order, so that only the phase decides the order.
    lifecycle.after_shutdown(lambda: ran.append("after_shutdown"))
    lifecycle.on_shutdown(lambda: ran.append("on_shutdown"))
    lifecycle.before_shutdown(lambda: ran.append("before_shutdown"))

    report = lifecycle.shutdown("terminate", timeout=WAIT)

    assert ran == PHASES
    assert isinstance(report, ShutdownReport)
    assert [p.name for p in report.phases] == [
        "before_shutdown",
        "drain",
        "on_shutdown",
        "after_shutdown",
    ]
    assert report.reason == "terminate"
    assert report.pid == os.getpid()
    assert report.count("ok") == 3
    assert report.duration >= 0


def test_callbacks_with_and_without_context(lifecycle: Lifecycle) -> None:
    """A callback with one parameter gets a ShutdownContext; one without gets nothing."""
    seen: list[tuple[str, str, float, int]] = []
    plain_calls: list[str] = []

    for phase in PHASES:

        def with_context(ctx: ShutdownContext) -> None:
            seen.append((ctx.reason, ctx.phase, ctx.remaining(), ctx.in_flight))

        lifecycle.register(phase, with_context, timeout=2)
        lifecycle.register(phase, lambda phase=phase: plain_calls.append(phase), timeout=0.5)

    report = lifecycle.shutdown("reload", timeout=2 * WAIT)

    assert [(reason, phase, in_flight) for reason, phase, _, in_flight in seen] == [
        ("reload", phase, 0) for phase in PHASES
    ]
    assert all(0 < remaining <= 2 for _, _, remaining, _ in seen)
    assert plain_calls == PHASES
    assert report.count("ok") == 6


def test_context_counts_requests_in_flight(
    lifecycle: Lifecycle, hold: Callable[..., HeldRequest]
) -> None:
    """ctx.in_flight is the number of requests still being served when the callback runs."""
    request = hold(lifecycle.wrap(slow_app))
    counts: list[int] = []

    @lifecycle.before_shutdown
    def count(ctx: ShutdownContext) -> None:
        counts.append(ctx.in_flight)
        request.release.set()

    @lifecycle.on_shutdown(timeout=1)
    def count_again(ctx: ShutdownContext) -> None:
        counts.append(ctx.in_flight)

    lifecycle.shutdown(timeout=WAIT)

    assert counts == [1, 0]


def test_async_callbacks_run(lifecycle: Lifecycle) -> None:
    """``async def`` callbacks, with and without a context, are run to completion."""
    ran: list[str] = []

    @lifecycle.on_shutdown
    async def without_context() -> None:
        await asyncio.sleep(0)
        ran.append("without_context")

    @lifecycle.after_shutdown
    async def with_context(ctx: ShutdownContext) -> None:
        await asyncio.sleep(0)
        ran.append(f"with_context:{ctx.phase}")

    report = lifecycle.shutdown(timeout=WAIT)

    assert ran == ["without_context", "with_context:after_shutdown"]
    assert outcomes(report) == [("on_shutdown", "ok"), ("after_shutdown", "ok")]


@pytest.mark.parametrize(
    ("error", "text"),
    [(ValueError("boom"), "ValueError: boom"), (SystemExit(3), "SystemExit: 3")],
    ids=["ValueError", "SystemExit"],
)
def test_raising_callback_is_an_error_and_the_next_one_runs(
    lifecycle: Lifecycle, caplog: pytest.LogCaptureFixture, error: BaseException, text: str
) -> None:
    """A callback that raises is recorded as an error with its traceback logged; the rest run."""
    ran: list[str] = []
    lifecycle.on_shutdown(lambda: ran.append("older"))

    @lifecycle.on_shutdown
    def explode() -> None:
        raise error

    with caplog.at_level(logging.ERROR, logger="graceful_gunicorn"):
        report = lifecycle.shutdown(timeout=WAIT)

    assert ran == ["older"]
    assert [r.outcome for r in report.callbacks] == ["error", "ok"]
    assert report.callbacks[0].error == text
    assert "explode" in report.callbacks[0].name
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "explode" in failures[0].getMessage()
    assert failures[0].exc_info is not None and failures[0].exc_info[1] is error
    logged = caplog.text  # the message with its traceback, as a handler formats it
    assert "Traceback (most recent call last)" in logged
    assert text in logged


def test_callback_raising_timeout_error_is_an_error(
    lifecycle: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises TimeoutError itself failed: outcome error, traceback logged."""

    @lifecycle.on_shutdown(timeout=WAIT)
    def flush() -> None:
        raise TimeoutError("database did not answer")

    with caplog.at_level(logging.ERROR, logger="graceful_gunicorn"):
        report = lifecycle.shutdown(timeout=WAIT)

    assert report.callbacks[0].outcome == "error"
    assert "database did not answer" in caplog.text


def test_blocking_callback_times_out_and_the_next_one_runs(
    lifecycle: Lifecycle, blocker: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that overruns its own timeout is abandoned; the next callback still runs."""
    ran: list[str] = []
    lifecycle.on_shutdown(lambda: ran.append("older"), timeout=1)

    @lifecycle.on_shutdown(timeout=0.2)
    def stuck() -> None:
        blocker.wait(WAIT)

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="graceful_gunicorn"):
        report = lifecycle.shutdown(timeout=WAIT)
    elapsed = time.monotonic() - started

    assert [r.outcome for r in report.callbacks] == ["timeout", "ok"]
    assert ran == ["older"]
    assert 0.15 <= report.callbacks[0].duration < 1.5
    assert elapsed < 2
    assert "stuck timed out" in caplog.text


def test_shutdown_ends_within_its_timeout_when_a_callback_blocks(
    blocker: threading.Event,
) -> None:
    """A callback that blocks forever cannot make shutdown() outlast its own timeout."""
    lifecycle = Lifecycle()
    lifecycle.after_shutdown(lambda: blocker.wait(WAIT))  # default timeout: 5 s

    started = time.monotonic()
    report = lifecycle.shutdown(timeout=0.3)
    elapsed = time.monotonic() - started

    assert [r.outcome for r in report.callbacks] == ["timeout"]
    assert 0.25 <= elapsed < 1.5


def test_async_callback_awaiting_forever_times_out(lifecycle: Lifecycle) -> None:
    """An async callback that never finishes times out and is cancelled (its finally runs)."""
    cancelled = threading.Event()
    ran: list[str] = []
    lifecycle.on_shutdown(lambda: ran.append("older"), timeout=1)

    @lifecycle.on_shutdown(timeout=0.2)
    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    started = time.monotonic()
    report = lifecycle.shutdown(timeout=WAIT)

    assert time.monotonic() - started < 2
    assert [r.outcome for r in report.callbacks] == ["timeout", "ok"]
    assert ran == ["older"]
    assert cancelled.wait(WAIT)


@pytest.mark.parametrize(
    ("reasons", "runs_for"),
    [
        ("reload", {"reload"}),
        (["reload", "recycle"], {"reload", "recycle"}),
        (frozenset({"quick"}), {"quick"}),
    ],
)
@pytest.mark.parametrize("reason", ["terminate", "reload", "recycle", "quick", "abort"])
def test_reasons_filter_callbacks(reasons: Any, runs_for: set[str], reason: Any) -> None:
    """A callback registered with reasons= runs only for those; it is skipped for others."""
    lifecycle = Lifecycle(callback_timeout=1.0)
    ran: list[str] = []
    lifecycle.on_shutdown(lambda: ran.append("filtered"), reasons=reasons)
    lifecycle.on_shutdown(lambda: ran.append("always"))

    report = lifecycle.shutdown(reason, timeout=WAIT)

    expected = "ok" if reason in runs_for else "skipped"
    assert [r.outcome for r in report.callbacks] == ["ok", expected]
    assert ran == (["always", "filtered"] if reason in runs_for else ["always"])


@pytest.mark.parametrize("reason", ["quick", "abort"])
def test_quick_reasons_skip_before_shutdown_and_the_drain(
    lifecycle: Lifecycle, hold: Callable[..., HeldRequest], reason: Any
) -> None:
    """A quick stop skips before_shutdown and does not wait for requests in flight."""
    ran: list[str] = []
    lifecycle.before_shutdown(lambda: ran.append("before_shutdown"))
    lifecycle.before_shutdown(lambda: ran.append("before_shutdown"), reasons={reason})

    @lifecycle.on_shutdown(timeout=1)
    def on_shutdown(ctx: ShutdownContext) -> None:
        ran.append(f"on_shutdown:{ctx.reason}:{ctx.in_flight}")

    hold(lifecycle.wrap(slow_app))

    started = time.monotonic()
    report = lifecycle.shutdown(reason, timeout=WAIT)

    assert time.monotonic() - started < 2
    assert ran == [f"on_shutdown:{reason}:1"]
    assert outcomes(report) == [
        ("before_shutdown", "skipped"),
        ("before_shutdown", "skipped"),
        ("on_shutdown", "ok"),
    ]
    assert "drain" not in [p.name for p in report.phases]
    assert report.phases[0].skipped
    assert report.in_flight_at_start == 1


def test_register_rejects_a_non_callable(lifecycle: Lifecycle) -> None:
    """Registering something that cannot be called is a TypeError."""
    with pytest.raises(TypeError, match="on_shutdown expects a callable"):
        lifecycle.on_shutdown("flush")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        lifecycle.register("after_shutdown", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1, -0.001, float("nan"), float("inf")])
@pytest.mark.parametrize("phase", PHASES)
def test_register_rejects_a_bad_timeout(lifecycle: Lifecycle, phase: str, timeout: float) -> None:
    """A negative, NaN or infinite timeout is a ValueError, raised by the decorator call."""
    with pytest.raises(ValueError, match=f"{phase} timeout"):
        getattr(lifecycle, phase)(timeout=timeout)
    with pytest.raises(ValueError, match=f"{phase} timeout"):
        lifecycle.register(phase, lambda: None, timeout=timeout)  # type: ignore[arg-type]
    assert lifecycle.callbacks(phase) == []  # type: ignore[arg-type]


def test_register_rejects_a_timeout_that_is_not_a_number(lifecycle: Lifecycle) -> None:
    """A timeout given as a string or a bool is a TypeError."""
    for timeout in ("5", True):
        with pytest.raises(TypeError, match="number of seconds"):
            lifecycle.on_shutdown(timeout=timeout)  # type: ignore[call-overload]


@pytest.mark.parametrize("reasons", ["bogus", [], ["terminate", "nope"], {"SIGTERM"}])
def test_register_rejects_bad_reasons(lifecycle: Lifecycle, reasons: Any) -> None:
    """reasons= must be a non-empty collection of known reasons."""
    with pytest.raises(ValueError, match="reasons must be a non-empty set"):
        lifecycle.on_shutdown(reasons=reasons)(lambda: None)
    assert lifecycle.callbacks("on_shutdown") == []


def test_register_rejects_a_callback_requiring_two_arguments(lifecycle: Lifecycle) -> None:
    """A callback needing two arguments cannot be called; it is refused at registration."""

    def two(ctx: ShutdownContext, other: object) -> None:
        pass

    with pytest.raises(TypeError, match="requires 2"):
        lifecycle.on_shutdown(two)


def test_optional_and_variadic_parameters_are_allowed(lifecycle: Lifecycle) -> None:
    """Parameters with defaults or *args do not count: such callbacks are accepted and run."""
    got: list[Any] = []

    @lifecycle.on_shutdown
    def ctx_and_default(ctx: ShutdownContext, extra: int = 7) -> None:
        got.append((ctx.phase, extra))

    @lifecycle.on_shutdown
    def variadic(*args: Any) -> None:
        got.append(args)

    report = lifecycle.shutdown(timeout=WAIT)

    assert got == [(), ("on_shutdown", 7)]
    assert report.count("ok") == 2


@pytest.mark.parametrize("phase", PHASES)
def test_registering_after_shutdown_began_is_refused(lifecycle: Lifecycle, phase: str) -> None:
    """Once shutdown began, registering raises a RuntimeError naming the phase."""
    lifecycle.begin_shutdown("terminate", deadline=time.monotonic() + WAIT)

    def late() -> None:
        pass

    with pytest.raises(RuntimeError, match=f"in {phase}: shutdown already began"):
        getattr(lifecycle, phase)(late)
    assert lifecycle.callbacks(phase) == []  # type: ignore[arg-type]


def test_begin_shutdown_twice_returns_the_same_sequence(lifecycle: Lifecycle) -> None:
    """A second begin_shutdown returns the first sequence, keeping its reason."""
    assert not lifecycle.draining
    assert lifecycle.sequence is None

    first = lifecycle.begin_shutdown("terminate", deadline=time.monotonic() + WAIT)
    second = lifecycle.begin_shutdown("reload", deadline=time.monotonic() + 1)

    assert isinstance(first, ShutdownSequence)
    assert second is first
    assert first.reason == "terminate"
    assert lifecycle.sequence is first
    assert lifecycle.draining


def test_begin_shutdown_rejects_an_unknown_reason(lifecycle: Lifecycle) -> None:
    """An unknown reason is a ValueError and does not start the shutdown."""
    with pytest.raises(ValueError, match="reason must be one of"):
        lifecycle.begin_shutdown("sigterm", deadline=time.monotonic() + 1)  # type: ignore[arg-type]
    assert not lifecycle.draining


def test_second_shutdown_does_not_rerun_callbacks(lifecycle: Lifecycle) -> None:
    """A second shutdown() returns the first report and runs no callback again."""
    ran: list[str] = []
    for phase in PHASES:
        lifecycle.register(phase, lambda phase=phase: ran.append(phase))

    first = lifecycle.shutdown(timeout=WAIT)
    second = lifecycle.shutdown("reload", timeout=WAIT)

    assert second is first
    assert ran == PHASES
    assert len(second.callbacks) == 3


# -- the drain ----------------------------------------------------------------------


def test_drain_waits_for_requests_in_flight(
    lifecycle: Lifecycle, hold: Callable[..., HeldRequest]
) -> None:
    """on_shutdown runs only after the request in flight has been closed."""
    events: list[str] = []
    before_done = threading.Event()
    on_shutdown_ran = threading.Event()

    @lifecycle.before_shutdown
    def before() -> None:
        before_done.set()

    @lifecycle.on_shutdown(timeout=1)
    def on_shutdown(ctx: ShutdownContext) -> None:
        # Asked here, not by the test thread afterwards: that one may wake late.
        closed = "closed" if request.closing.is_set() else "open"
        events.append(f"on_shutdown:{ctx.in_flight}:{closed}")
        on_shutdown_ran.set()

    request = hold(lifecycle.wrap(slow_app))
    thread, result = run_in_thread(lambda: lifecycle.shutdown(timeout=WAIT))

    assert before_done.wait(WAIT)
    # The shutdown is past phase 1 and the request is still open: it must wait.
    assert not on_shutdown_ran.wait(0.1)
    assert lifecycle.in_flight == 1

    request.release.set()
    assert request.closed.wait(WAIT)
    thread.join(WAIT)

    assert not thread.is_alive()
    assert events == ["on_shutdown:0:closed"]
    report = result[0]
    assert report.in_flight_at_start == 1
    assert report.requests_drained == 1
    assert report.requests_abandoned == 0
    assert [p.name for p in report.phases][:2] == ["before_shutdown", "drain"]


def test_drain_gives_up_at_its_deadline(
    lifecycle: Lifecycle, hold: Callable[..., HeldRequest], caplog: pytest.LogCaptureFixture
) -> None:
    """A request outliving the drain is abandoned, counted and logged; shutdown goes on."""
    ran: list[str] = []
    lifecycle.on_shutdown(lambda: ran.append("on_shutdown"), timeout=0.1)
    hold(lifecycle.wrap(slow_app), "/very/slow")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="graceful_gunicorn"):
        report = lifecycle.shutdown(timeout=0.4)
    elapsed = time.monotonic() - started

    assert 0.25 <= elapsed < 1.5
    assert report.requests_abandoned == 1
    assert report.requests_drained == 0
    assert ran == ["on_shutdown"]
    assert "still in flight: GET /very/slow" in caplog.text


def test_drain_leaves_time_for_later_callbacks(
    lifecycle: Lifecycle, hold: Callable[..., HeldRequest]
) -> None:
    """The drain stops early enough for on_shutdown callbacks to get their own timeout."""
    remaining: list[float] = []

    @lifecycle.on_shutdown(timeout=0.5)
    def flush(ctx: ShutdownContext) -> None:
        remaining.append(ctx.remaining())

    hold(lifecycle.wrap(slow_app))
    report = lifecycle.shutdown(timeout=0.8)

    assert report.requests_abandoned == 1
    assert len(remaining) == 1
    assert 0.1 < remaining[0] <= 0.5


def test_escalate_turns_a_graceful_shutdown_quick(
    lifecycle: Lifecycle, hold: Callable[..., HeldRequest]
) -> None:
    """After escalate() the sequence is quick: the drain ends at once, callbacks see 'quick'."""
    reasons: list[str] = []
    lifecycle.on_shutdown(lambda ctx: reasons.append(ctx.reason), timeout=1)
    hold(lifecycle.wrap(slow_app))

    sequence = lifecycle.begin_shutdown("terminate", deadline=time.monotonic() + WAIT)
    assert not sequence.quick
    sequence.run_phase("before_shutdown", until=sequence.drain_deadline)

    limit = time.monotonic() + 2
    sequence.escalate(limit)
    assert sequence.quick
    assert sequence.reason == "quick"
    assert sequence.deadline == limit

    started = time.monotonic()
    assert sequence.drain() is False
    assert time.monotonic() - started < 0.5
    sequence.run_phase("on_shutdown")
    report = sequence.finish()

    assert reasons == ["quick"]
    assert report.reason == "quick"
    assert report.requests_abandoned == 1

    sequence.escalate(time.monotonic() + 60)
    assert sequence.deadline == limit


def test_escalate_interrupts_a_running_drain(
    lifecycle: Lifecycle, hold: Callable[..., HeldRequest]
) -> None:
    """Escalating while shutdown() is draining in another thread ends the drain promptly."""
    before_done = threading.Event()
    reasons: list[str] = []
    lifecycle.before_shutdown(before_done.set)
    lifecycle.on_shutdown(lambda ctx: reasons.append(ctx.reason), timeout=0.5)
    hold(lifecycle.wrap(slow_app))

    thread, result = run_in_thread(lambda: lifecycle.shutdown(timeout=WAIT))
    assert before_done.wait(WAIT)
    sequence = lifecycle.sequence
    assert sequence is not None
    sequence.escalate(time.monotonic() + 2)
    thread.join(WAIT)

    assert not thread.is_alive()
    assert reasons == ["quick"]
    assert result[0].reason == "quick"
    assert result[0].requests_abandoned == 1


def test_escalate_cuts_a_running_before_shutdown_callback(lifecycle: Lifecycle) -> None:
    """A before_shutdown callback still running when the stop turns quick is abandoned.

    Its own timeout (WAIT * 4) is not waited for: phase 1 ends at once and the
    on_shutdown callbacks run with reason 'quick'.
    """
    entered = threading.Event()
    release = threading.Event()
    reasons: list[str] = []

    def blocks() -> None:
        entered.set()
        release.wait(WAIT * 4)

    lifecycle.before_shutdown(blocks, timeout=WAIT * 4)
    lifecycle.on_shutdown(lambda ctx: reasons.append(ctx.reason), timeout=1)
    try:
        report = shutdown_then_escalate(lifecycle, entered, cut=2)
    finally:
        release.set()
    outcomes = {(c.phase, c.outcome) for c in report.callbacks}
    assert ("before_shutdown", "timeout") in outcomes
    assert reasons == ["quick"]


def test_escalate_shortens_a_running_on_shutdown_callback(lifecycle: Lifecycle) -> None:
    """An on_shutdown callback running when the stop turns quick gets the quick deadline."""
    entered = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def blocks() -> None:
        entered.set()
        release.wait(WAIT * 4)

    lifecycle.on_shutdown(lambda: ran.append("first registered, runs last"), timeout=1)
    lifecycle.on_shutdown(blocks, timeout=WAIT * 4)
    try:
        report = shutdown_then_escalate(lifecycle, entered, cut=0.5)
    finally:
        release.set()
    # the quick budget is shared: the blocked one gets its half, the next one its turn
    assert [(c.phase, c.outcome) for c in report.callbacks if c.phase == "on_shutdown"] == [
        ("on_shutdown", "timeout"),
        ("on_shutdown", "ok"),
    ]
    assert ran == ["first registered, runs last"]


def test_escalate_cancels_a_running_async_callback_at_the_new_cut(lifecycle: Lifecycle) -> None:
    """An async on_shutdown callback awaiting when the stop turns quick is
    cancelled at the quick cut (its ``finally`` runs then), not left running
    beside the next callback until its own timeout."""
    entered = threading.Event()
    events: list[str] = []

    async def awaits() -> None:
        entered.set()
        try:
            await asyncio.sleep(WAIT * 4)
        finally:
            events.append("cancelled")

    lifecycle.on_shutdown(lambda: events.append("next"), timeout=1)
    lifecycle.on_shutdown(awaits, timeout=WAIT * 4)
    report = shutdown_then_escalate(lifecycle, entered, cut=0.5)
    assert events == ["cancelled", "next"]
    assert [(c.phase, c.outcome) for c in report.callbacks if c.phase == "on_shutdown"] == [
        ("on_shutdown", "timeout"),
        ("on_shutdown", "ok"),
    ]


# -- find_lifecycle ---------------------------------------------------------------


def plain_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


class Holder:
    """An object keeping another application in an attribute, as middleware do."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


def test_find_lifecycle_through_wrap(lifecycle: Lifecycle) -> None:
    """The middleware made by Lifecycle.wrap leads back to its lifecycle."""
    assert find_lifecycle(lifecycle.wrap(plain_app)) is lifecycle
    assert find_lifecycle(lifecycle) is lifecycle


def test_find_lifecycle_through_extensions(lifecycle: Lifecycle) -> None:
    """An app with extensions["graceful_gunicorn"] (Flask-style) leads to that lifecycle."""
    app = Holder(extensions={EXTENSION_KEY: lifecycle, "other": object()})
    assert find_lifecycle(app) is lifecycle


def test_find_lifecycle_through_nested_middleware(lifecycle: Lifecycle) -> None:
    """Middleware keeping the app in .wsgi_app, .app and the like are looked through."""
    inner = Holder(extensions={EXTENSION_KEY: lifecycle})
    app = Holder(app=Holder(wsgi_app=Holder(application=inner)))
    assert find_lifecycle(app) is lifecycle

    counting_only = InFlightMiddleware(lifecycle.wrap(plain_app), InFlight())
    assert find_lifecycle(Holder(wsgi_app=counting_only)) is lifecycle


def test_find_lifecycle_returns_none_without_one() -> None:
    """A plain WSGI function, or apps without a lifecycle, give None."""
    assert find_lifecycle(plain_app) is None
    assert find_lifecycle(Holder(extensions={}, wsgi_app=plain_app)) is None
    loop = Holder()
    loop.app = loop
    assert find_lifecycle(loop) is None


def test_report_as_dict_rounds_durations_to_milliseconds(lifecycle: Lifecycle) -> None:
    lifecycle.on_shutdown(lambda: time.sleep(0.0012345))
    data = lifecycle.shutdown("quick", timeout=WAIT).as_dict()
    durations = [data["duration"]] + [i["duration"] for i in data["phases"] + data["callbacks"]]
    assert all(d == round(d, 3) for d in durations)
    assert data["callbacks"][0]["duration"] >= 0.001


def test_callbacks_run_in_the_calling_thread_when_no_thread_can_start(
    lifecycle: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At interpreter exit Python 3.12+ refuses new threads: the callbacks still run."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    ran: list[str] = []
    lifecycle.on_shutdown(lambda: ran.append(threading.current_thread().name))
    lifecycle.after_shutdown(lambda ctx: ran.append(ctx.reason))
    monkeypatch.setattr(threading.Thread, "start", refuse)
    report = lifecycle.shutdown("quick", timeout=WAIT)
    assert ran == [threading.current_thread().name, "quick"]
    assert report.count("ok") == 2


def test_a_drain_that_times_out_with_the_server_busy_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No request in flight, but the server is not done (a silent connection): the
    drain line says its deadline passed instead of "drain done"."""
    lifecycle = Lifecycle()
    sequence = lifecycle.begin_shutdown("terminate", deadline=time.monotonic() + 5)
    with caplog.at_level("INFO", logger="graceful_gunicorn"):
        assert not sequence.drain(until=time.monotonic() + 0.1, ready=lambda: False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("drain deadline passed after" in m and "still busy" in m for m in messages)
    assert not any("drain done" in m for m in messages)
