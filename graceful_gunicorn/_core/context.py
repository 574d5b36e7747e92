"""Why a shutdown happens, which phase runs, and how long it has.

A callback registered with one parameter receives a :class:`ShutdownContext`::

    @app.on_shutdown
    def flush(ctx: ShutdownContext) -> None:
        if ctx.reason == "terminate":
            deregister_from_service_discovery()
        buffer.flush(timeout=ctx.remaining())
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

Reason = Literal["terminate", "reload", "recycle", "quick", "abort"]
"""Why a worker stops.

``terminate``: the server stops (``SIGTERM`` to the master).
``reload``: ``SIGHUP`` replaced the worker with a new one.
``recycle``: ``max_requests``, ``SIGTTOU`` or any other stop of this worker alone.
``quick``: ``SIGINT`` or ``SIGQUIT`` (Ctrl+C); no drain.
``abort``: the master's worker timeout (``SIGABRT``).
"""

Phase = Literal["before_shutdown", "on_shutdown", "after_shutdown"]
"""The three callback phases, in the order they run."""

REASONS: frozenset[str] = frozenset(get_args(Reason))
PHASES: tuple[Phase, ...] = get_args(Phase)

#: Reasons that skip ``before_shutdown`` and the drain.
QUICK_REASONS: frozenset[str] = frozenset({"quick", "abort"})


@dataclass(frozen=True)
class ShutdownContext:
    """What a callback knows about the shutdown it runs in.

    ``deadline`` is a :func:`time.monotonic` timestamp: the end of this
    callback's own time, never later than the end of the whole shutdown.
    """

    reason: Reason
    phase: Phase
    deadline: float
    _in_flight: Callable[[], int] = field(repr=False, compare=False)

    @property
    def in_flight(self) -> int:
        """Requests still being served by this process right now."""
        return self._in_flight()

    def remaining(self) -> float:
        """Seconds left before this callback is abandoned (never negative)."""
        return max(0.0, self.deadline - time.monotonic())
