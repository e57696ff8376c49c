"""Tumbling windows per campaign (one minute unless asked otherwise), in event time, for one input
partition: reporting's minutes, and the autopilot feed's (streams/autopilot_feed.py).

A window [start, start + length) closes once the partition's watermark (the latest event time seen,
or wall time when the partition is idle) passes its end plus the grace period; records for a
closed window are too late and are counted, not aggregated. The partition's committed position is
the first record of a window still open, and the watermark is committed with it (as offset
metadata): after a crash the open windows are rebuilt from there, and records of windows already
emitted are recognised by the watermark and skipped, so every window is emitted exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from aiokafka import TopicPartition

from core.loop import Committed, Position, RoleBase

WINDOW_MS = 60_000
GRACE_MS = 10_000
# With nothing left to read, the watermark follows wall time this far behind (records can trail
# their events while upstream roles catch up); so windows of an idle stream still close.
IDLE_CLOSE_MS = 30_000


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

    def count(self, kind: str, amount_micros: int) -> None:
        """One ledger entry (an impression or a billable click) and what it charged."""
        if kind == "impression":
            self.impressions += 1
        else:
            self.clicks += 1
        self.spend_micros += amount_micros


W = TypeVar("W", bound=Window)


@dataclass
class Windows(Generic[W]):
    """The open windows of one partition; `make(campaign_id, start, first_offset)` opens one."""

    make: Callable[[str, int, int], W]
    watermark: int = 0
    grace_ms: int = GRACE_MS
    window_ms: int = WINDOW_MS
    open: dict[tuple[str, int], W] = field(default_factory=dict)
    changed: set[tuple[str, int]] = field(default_factory=set)  # since the last take_changed()

    def closes_at(self, start: int) -> int:
        return start + self.window_ms + self.grace_ms

    def window(self, campaign_id: str, ts: int, offset: int) -> W | None:
        """The open window for an event at `ts` (opened if need be), marked changed; None when it
        has already closed (the event is too late)."""
        start = ts - ts % self.window_ms
        if self.closes_at(start) <= self.watermark:
            return None
        key = (campaign_id, start)
        found = self.open.get(key)
        if found is None:
            found = self.open[key] = self.make(campaign_id, start, offset)
        self.changed.add(key)
        self.watermark = max(self.watermark, ts)
        return found

    def advance(self, to_ms: int) -> None:
        self.watermark = max(self.watermark, to_ms)

    def close_due(self) -> list[W]:
        """Windows whose end plus grace the watermark has passed, oldest first; removed from `open`."""
        due = sorted((key for key in self.open if self.closes_at(key[1]) <= self.watermark), key=lambda k: (k[1], k[0]))
        closed = [self.open.pop(key) for key in due]
        self.changed.difference_update(due)
        return closed

    def commit_offset(self, next_offset: int) -> int:
        """Where a restart must resume: the first record of a window still open."""
        return min((w.first_offset for w in self.open.values()), default=next_offset)

    def take_changed(self) -> list[W]:
        changed = [self.open[key] for key in self.changed if key in self.open]
        self.changed.clear()
        return changed


class PartitionWindows(Windows[Window]):
    """Reporting's minutes: impressions, clicks and spend from ledger entries."""

    def __init__(self, watermark: int = 0, grace_ms: int = GRACE_MS) -> None:
        super().__init__(Window, watermark, grace_ms)

    def add(self, campaign_id: str, ts: int, kind: str, amount_micros: int, offset: int) -> bool:
        """Count one ledger entry; False when its window has already closed (too late)."""
        window = self.window(campaign_id, ts, offset)
        if window is None:
            return False
        window.count(kind, amount_micros)
        return True


def committed_watermark(metadata: str | None) -> int:
    """The watermark committed with the offset ({"wm": ms}); 0 when there is none (or not ours)."""
    try:
        found = orjson.loads(metadata or "{}")
        return int(found.get("wm", 0)) if isinstance(found, dict) else 0
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return 0


class WindowedRole(RoleBase, Generic[W]):
    """A role that keeps each assigned input partition's open windows: restored from the committed
    position and watermark on assignment, dropped on revocation, closed by the watermark (which
    follows wall time `idle_close_ms` behind once the partition is caught up), and committed as
    the first record of a window still open, with the watermark as the offset's metadata."""

    idle_close_ms: int | None = None

    def __init__(self) -> None:
        self.partitions: dict[TopicPartition, Windows[W]] = {}
        self.next_offset: dict[TopicPartition, int] = {}

    def new_windows(self, watermark: int = 0) -> Windows[W]:
        raise NotImplementedError

    def restored(self, tp: TopicPartition, watermark: int) -> None:
        """A partition assigned, its watermark as committed (0 when never committed)."""

    def due(self, tp: TopicPartition, windows: Windows[W]) -> list[W]:
        """What closes on `tp` now (a role may add to it)."""
        return windows.close_due()

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        for tp, found in committed.items():
            watermark = 0
            if found is not None:
                self.next_offset[tp] = found.offset
                watermark = committed_watermark(found.metadata)
            self.partitions[tp] = self.new_windows(watermark)
            self.restored(tp, watermark)
        return {}

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.partitions.pop(tp, None)
            self.next_offset.pop(tp, None)

    def windows_of(self, tp: TopicPartition) -> Windows[W]:
        found = self.partitions.get(tp)
        if found is None:
            found = self.partitions[tp] = self.new_windows()
        return found

    async def close_due(self, now_ms: int, touched: set[TopicPartition]) -> list[W]:
        """The windows due on every partition; adds the partitions whose position moves to `touched`."""
        closed: list[W] = []
        for tp, windows in self.partitions.items():
            if self.idle_close_ms is not None and await self.loop.caught_up(tp):
                windows.advance(now_ms - self.idle_close_ms)
            done = self.due(tp, windows)
            if done:
                closed.extend(done)
                touched.add(tp)
        return closed

    def commit_offsets(self, touched: set[TopicPartition]) -> dict[TopicPartition, Position]:
        """Each touched partition's resume position with its watermark."""
        offsets: dict[TopicPartition, Position] = {}
        for tp in touched:
            if tp in self.next_offset:
                windows = self.partitions[tp]
                metadata = orjson.dumps({"wm": windows.watermark}).decode()
                offsets[tp] = (windows.commit_offset(self.next_offset[tp]), metadata)
        return offsets
