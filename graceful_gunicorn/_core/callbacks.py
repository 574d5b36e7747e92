"""Registering shutdown callbacks and running one of them within its timeout.

The hook policy, in one place:

- within a phase, callbacks run newest first (like ``atexit`` and Flask's
  teardown functions);
- every callback runs, whatever the one before it did;
- a callback that raises (``SystemExit`` included) is logged with its name and
  traceback; one that overruns its timeout is logged and abandoned;
- nothing is ever raised out of a shutdown.

Each callback runs in a daemon thread of its own (a greenlet under gevent), so
that a callback that blocks forever can be abandoned and cannot hold the
process open.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .context import PHASES, REASONS, Phase, Reason, ShutdownContext
from .report import CallbackResult, Outcome
from .seconds import parse_seconds

Callback = Callable[..., Any]
"""A callable taking no argument or one :class:`ShutdownContext`; sync or ``async``."""

CallbackT = TypeVar("CallbackT", bound=Callback)

Invoker = Callable[[Callable[[], Any]], Any]
"""Runs a zero-argument callable inside whatever context the framework needs."""


class Log(Protocol):
    """What the lifecycle logs through: a :class:`logging.Logger` or gunicorn's logger."""

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def error(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None: ...
    def log(self, lvl: int, msg: str, *args: Any, **kwargs: Any) -> None: ...


_HEARTBEAT_INTERVAL = 0.5
_CUT_CHECK_INTERVAL = 0.05


def callback_name(func: Callback) -> str:
    """The name logs and reports use for ``func``: ``module.qualname``."""
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{qualname}"


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """Validate a timeout in seconds: ``None``, or as :func:`.seconds.parse_seconds` reads it."""
    return None if timeout is None else parse_seconds(timeout, what)


def _takes_context(func: Callback) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(positional) > 1:
        raise TypeError(
            f"shutdown callback {callback_name(func)} must take no argument or one "
            f"(a ShutdownContext), but it requires {len(positional)}"
        )
    return len(positional) == 1


@dataclass(frozen=True)
class Registration:
    """One registered callback and the options it was registered with."""

    func: Callback
    phase: Phase
    timeout: float | None
    reasons: frozenset[str] | None
    takes_context: bool
    name: str
    #: Runs it in its own app's context, when it differs from its lifecycle's
    #: (one lifecycle for several apps: see ``Lifecycle.combine``).
    invoke: Invoker | None = None
    #: Its own app's default timeout, likewise (``Lifecycle(callback_timeout=...)``).
    default_timeout: float | None = None

    @classmethod
    def create(
        cls,
        func: Callback,
        phase: Phase,
        timeout: float | None,
        reasons: Collection[str] | None,
    ) -> Registration:
        """Validate the arguments of a registration; raise ``TypeError``/``ValueError``."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {list(PHASES)}, got {phase!r}")
        if not callable(func):
            raise TypeError(f"{phase} expects a callable, got {func!r}")
        timeout = check_timeout(timeout, f"{phase} timeout")
        reason_set: frozenset[str] | None = None
        if reasons is not None:
            if isinstance(reasons, str):
                reasons = {reasons}
            reason_set = frozenset(reasons)
            unknown = sorted(reason_set - REASONS)
            if unknown or not reason_set:
                raise ValueError(
                    f"{phase} reasons must be a non-empty set of {sorted(REASONS)}, "
                    f"got {sorted(reason_set)!r}"
                )
        return cls(func, phase, timeout, reason_set, _takes_context(func), callback_name(func))

    def applies_to(self, reason: Reason) -> bool:
        """Whether this callback runs for a shutdown of this ``reason``."""
        return self.reasons is None or reason in self.reasons


class _Outcome:
    """Filled by the callback's thread, read by the waiting one."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()


AsyncRunner = Callable[[Coroutine[Any, Any, None]], None]
"""Runs an ``async def`` callback's coroutine to its end: :func:`asyncio.run` by default."""


def _call(
    registration: Registration,
    ctx: ShutdownContext,
    run_async: AsyncRunner,
    remaining: Callable[[], float],
) -> None:
    result = registration.func(ctx) if registration.takes_context else registration.func()
    if inspect.isawaitable(result):
        run_async(_bounded(result, remaining))


class _DeadlinePassed(Exception):
    """An async callback was cancelled at its deadline."""


#: An async callback is cancelled this long before its deadline, so that its
#: event loop has closed when the next callback starts (under gevent all
#: "threads" share one OS thread, and with it asyncio's running loop).
_CANCEL_AHEAD = 0.05


async def _bounded(awaitable: Awaitable[Any], remaining: Callable[[], float]) -> None:
    """Await the callback until ``remaining()`` (which may shrink: a quick signal
    during a graceful stop) runs out, then cancel it, so that its ``finally``
    blocks run before the next callback starts."""
    task = asyncio.ensure_future(awaitable)
    while True:
        left = remaining() - _CANCEL_AHEAD
        if left <= 0:
            break
        done, _ = await asyncio.wait({task}, timeout=min(left, _CUT_CHECK_INTERVAL))
        if done:
            task.result()  # the callback's own exception, its own TimeoutError too
            return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise _DeadlinePassed


def run_callback(
    registration: Registration,
    ctx: ShutdownContext,
    invoke: Invoker,
    logger: Log,
    heartbeat: Callable[[], None],
    cut_at: Callable[[], float] | None = None,
    run_async: AsyncRunner = asyncio.run,
) -> CallbackResult:
    """Run one callback until it returns or ``ctx.deadline`` passes; never raise.

    ``cut_at`` gives the end of the callback's phase, which may move earlier
    while the callback runs (a ``SIGINT`` during a graceful stop); ``run_async``
    runs an async callback's coroutine.
    """
    outcome = _Outcome()

    def remaining() -> float:
        end = ctx.deadline if cut_at is None else min(ctx.deadline, cut_at())
        return max(0.0, end - time.monotonic())

    def target() -> None:
        try:
            (registration.invoke or invoke)(lambda: _call(registration, ctx, run_async, remaining))
        except BaseException as exc:  # noqa: BLE001 - the policy: nothing escapes
            outcome.error = exc
        finally:
            outcome.done.set()

    started = time.monotonic()
    thread = threading.Thread(target=target, name=f"graceful:{registration.name}", daemon=True)
    try:
        thread.start()
    except RuntimeError:
        # Python 3.12+ starts no thread once the interpreter exits (the
        # development server's callbacks run then): run it here, bounded only
        # if it is async.
        target()
    # A phase end that can move is looked at more often than the heartbeat is due.
    interval = _HEARTBEAT_INTERVAL if cut_at is None else _CUT_CHECK_INTERVAL
    last_beat = started
    while not outcome.done.wait(min(interval, remaining())):
        if remaining() <= 0:
            break
        if time.monotonic() - last_beat >= _HEARTBEAT_INTERVAL:
            last_beat = time.monotonic()
            heartbeat()
    duration = time.monotonic() - started
    return _result(registration, outcome, duration, logger)


def _result(
    registration: Registration, outcome: _Outcome, duration: float, logger: Log
) -> CallbackResult:
    error = outcome.error
    status: Outcome
    if not outcome.done.is_set() or isinstance(error, _DeadlinePassed):
        status = "timeout"
        logger.error(
            "graceful_gunicorn: %s callback %s timed out after %.2fs and was abandoned",
            registration.phase,
            registration.name,
            duration,
        )
        return CallbackResult(registration.name, registration.phase, status, duration)
    if error is not None:
        # exc_info, not the text: handlers that report errors (Sentry) get the exception.
        logger.error(
            "graceful_gunicorn: %s callback %s failed after %.2fs:",
            registration.phase,
            registration.name,
            duration,
            exc_info=error,
        )
        return CallbackResult(
            registration.name,
            registration.phase,
            "error",
            duration,
            f"{type(error).__name__}: {error}",
        )
    return CallbackResult(registration.name, registration.phase, "ok", duration)
