"""Tumbling one-minute windows per campaign, in event time, for one input partition.

A window [start, start + 1 min) closes once the partition's watermark (the latest event time seen,
or wall time when the partition is idle) passes its end plus the grace period; records for a
closed window are too late and are counted, not aggregated. The partition's committed position is
the first record of a window still open, and the watermark is committed with it (as offset
metadata): after a crash the open windows are rebuilt from there, and records of windows already
emitted are recognised by the watermark and skipped, so every window is emitted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WINDOW_MS = 60_000
GRACE_MS = 10_000


def round_half_up_div(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def report_record(campaign_id: str, start: int, impressions: int, clicks: int, spend_micros: int) -> dict[str, Any]:
    """A `reports.campaign-minute` record (docs/contract.md §3): aggregates only, no user or session ids."""
    return {
        "schema_version": 1,
        "campaign_id": campaign_id,
        "window_start": start,
        "window_end": start + WINDOW_MS,
        "impressions": impressions,
        "clicks": clicks,
        "spend_micros": spend_micros,
        "ctr": clicks / impressions if impressions else 0.0,
        "ecpm_micros": round_half_up_div(spend_micros * 1000, impressions) if impressions else 0,
    }


@dataclass(slots=True)
class Window:
    campaign_id: str
    start: int
    first_offset: int  # of the earliest record in it: the partition may not be committed past it
    impressions: int = 0
    clicks: int = 0
    spend_micros: int = 0

    def record(self) -> dict[str, Any]:
        return report_record(self.campaign_id, self.start, self.impressions, self.clicks, self.spend_micros)


@dataclass
class PartitionWindows:
    watermark: int = 0
    grace_ms: int = GRACE_MS
    open: dict[tuple[str, int], Window] = field(default_factory=dict)
    changed: set[tuple[str, int]] = field(default_factory=set)  # since the last take_changed()

    def closes_at(self, start: int) -> int:
        return start + WINDOW_MS + self.grace_ms

    def add(self, campaign_id: str, ts: int, kind: str, amount_micros: int, offset: int) -> bool:
        """Count one ledger entry; False when its window has already closed (too late)."""
        start = ts - ts % WINDOW_MS
        if self.closes_at(start) <= self.watermark:
            return False
        key = (campaign_id, start)
        window = self.open.get(key)
        if window is None:
            window = self.open[key] = Window(campaign_id, start, offset)
        if kind == "impression":
            window.impressions += 1
        else:
            window.clicks += 1
        window.spend_micros += amount_micros
        self.changed.add(key)
        self.watermark = max(self.watermark, ts)
        return True

    def advance(self, to_ms: int) -> None:
        self.watermark = max(self.watermark, to_ms)

    def close_due(self) -> list[Window]:
        """Windows whose end plus grace the watermark has passed, oldest first; removed from `open`."""
        due = sorted((key for key in self.open if self.closes_at(key[1]) <= self.watermark), key=lambda k: (k[1], k[0]))
        closed = [self.open.pop(key) for key in due]
        self.changed.difference_update(due)
        return closed

    def commit_offset(self, next_offset: int) -> int:
        """Where a restart must resume: the first record of a window still open."""
        return min((w.first_offset for w in self.open.values()), default=next_offset)

    def take_changed(self) -> list[Window]:
        changed = [self.open[key] for key in self.changed if key in self.open]
        self.changed.clear()
        return changed
