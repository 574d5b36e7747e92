"""What a shutdown did: one record per callback and per phase.

The report is plain data so that it can be logged, compared in tests and
turned into JSON with :meth:`ShutdownReport.as_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["ok", "error", "timeout", "skipped"]
"""How one callback ended."""


@dataclass(frozen=True)
class CallbackResult:
    """One callback's outcome: ``ok``, ``error``, ``timeout`` or ``skipped``."""

    name: str
    phase: str
    outcome: Outcome
    duration: float
    error: str | None = None


@dataclass(frozen=True)
class PhaseResult:
    """One step of the sequence (a callback phase or the drain) and its duration."""

    name: str
    duration: float
    skipped: bool = False


@dataclass
class ShutdownReport:
    """Everything one process's shutdown did, in order."""

    reason: str
    pid: int
    in_flight_at_start: int = 0
    #: Requests served to their end since the shutdown began (a sync worker's
    #: backlog too, and a request whose app raised: the server answered 500).
    requests_drained: int = 0
    #: Requests still in flight when the drain ended (a quick stop: when its
    #: callbacks ended), plus those cut on the way (gevent's kill, ``SystemExit``).
    requests_abandoned: int = 0
    duration: float = 0.0
    phases: list[PhaseResult] = field(default_factory=list)
    callbacks: list[CallbackResult] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        """How many callbacks ended with ``outcome``."""
        return sum(1 for result in self.callbacks if result.outcome == outcome)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready built-in types, durations in whole milliseconds."""
        data = asdict(self)
        data["duration"] = _milliseconds(self.duration)
        for item in (*data["phases"], *data["callbacks"]):
            item["duration"] = _milliseconds(item["duration"])
        return data


def _milliseconds(seconds: float) -> float:
    return round(seconds, 3)
