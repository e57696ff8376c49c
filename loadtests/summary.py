"""Latency and fill tallies for the load test and the benchmark (bounded memory)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

RESERVOIR = 200_000


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100.0 * len(sorted_values))))
    return float(sorted_values[rank - 1])


class LatencyStats:
    """Decisions, fills, no-fill reasons and a latency reservoir (uniform sample, bounded)."""

    def __init__(self, reservoir: int = RESERVOIR, seed: int = 5) -> None:
        self.reservoir = reservoir
        self.samples: list[float] = []
        self.rng = random.Random(seed)
        self.published = 0
        self.publish_failures = 0
        self.decisions = 0
        self.filled = 0
        self.timeouts = 0
        self.clicks = 0
        self.no_fill: Counter[str] = Counter()

    def decision(self, seconds: float, filled: bool, reason: str | None) -> None:
        self.decisions += 1
        if filled:
            self.filled += 1
        else:
            self.no_fill[str(reason)] += 1
        self.add(seconds)

    def add(self, seconds: float) -> None:
        if len(self.samples) < self.reservoir:
            self.samples.append(seconds)
            return
        slot = self.rng.randrange(self.decisions or len(self.samples) + 1)
        if slot < self.reservoir:
            self.samples[slot] = seconds

    def percentiles_ms(self) -> dict[str, float | None]:
        ordered = sorted(self.samples)
        return {f"p{q:g}": None if (v := percentile(ordered, q)) is None else round(v * 1000, 3) for q in (50, 95, 99)}

    def summary(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "filled": self.filled,
            "fill_rate": round(self.filled / self.decisions, 4) if self.decisions else None,
            "timeouts": self.timeouts,
            "clicks": self.clicks,
            "no_fill_reasons": dict(self.no_fill.most_common()),
            "latency_ms": self.percentiles_ms(),
        }
