"""Medians and spreads of alternated runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """The median of some figures, with their smallest and largest."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one)."""
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def format(self, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
        """``median (low to high)``, each value multiplied by ``scale``."""
        m, lo, hi = (fmt.format(v * scale) for v in (self.median, self.low, self.high))
        return m if self.n == 1 else f"{m} ({lo} to {hi})"


def ratios(graceful: Sequence[float], plain: Sequence[float]) -> Spread:
    """Spread of graceful/plain over paired (adjacent in time) runs."""
    return Spread.of([g / p for g, p in zip(graceful, plain, strict=True) if p])
