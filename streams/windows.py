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

from collections.abc import Callable, Hashable
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


def report_record(campaign_id: str, start: int, impressions: int, clicks: int, spend_micros: int,
                  conversions: int = 0, conversion_value_micros: int = 0) -> dict[str, Any]:
    """A `reports.campaign-minute` record (docs/contract.md §3, §8): aggregates only, no user or session ids."""
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
        "conversions": conversions,
        "conversion_value_micros": conversion_value_micros,
    }


@dataclass(slots=True)
class Window:
    campaign_id: str
    start: int
    # input topic → offset of its earliest record in this window: that partition may not be committed past it
    first_offsets: dict[str, int] = field(default_factory=dict)
    impressions: int = 0
    clicks: int = 0
    spend_micros: int = 0
    conversions: int = 0
    conversion_value_micros: int = 0

    def record(self) -> dict[str, Any]:
        return report_record(self.campaign_id, self.start, self.impressions, self.clicks, self.spend_micros,
                             self.conversions, self.conversion_value_micros)

    def conversion(self, value_micros: int) -> None:
        """One attributed conversion, counted in the minute of its own ts (docs/contract.md §8)."""
        self.conversions += 1
        self.conversion_value_micros += value_micros

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
    """The open windows of one partition (or of co-partitioned partitions of several topics);
    `make(campaign_id, start)` opens one."""

    make: Callable[[str, int], W]
    watermark: int = 0
    grace_ms: int = GRACE_MS
    window_ms: int = WINDOW_MS
    open: dict[tuple[str, int], W] = field(default_factory=dict)
    changed: set[tuple[str, int]] = field(default_factory=set)  # since the last take_changed()

    def closes_at(self, start: int) -> int:
        return start + self.window_ms + self.grace_ms

    def window(self, campaign_id: str, ts: int, offset: int, source: str = "") -> W | None:
        """The open window for an event at `ts` read at `offset` of input `source` (opened if need
        be), marked changed; None when it has already closed (the event is too late)."""
        start = ts - ts % self.window_ms
        if self.closes_at(start) <= self.watermark:
            return None
        key = (campaign_id, start)
        found = self.open.get(key)
        if found is None:
            found = self.open[key] = self.make(campaign_id, start)
        found.first_offsets.setdefault(source, offset)
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

    def commit_offset(self, next_offset: int, source: str = "") -> int:
        """Where a restart must resume reading `source`: its first record in a window still open."""
        return min((w.first_offsets[source] for w in self.open.values() if source in w.first_offsets),
                   default=next_offset)

    def take_changed(self) -> list[W]:
        changed = [self.open[key] for key in self.changed if key in self.open]
        self.changed.clear()
        return changed


class PartitionWindows(Windows[Window]):
    """Reporting's minutes: impressions, clicks and spend from ledger entries."""

    def __init__(self, watermark: int = 0, grace_ms: int = GRACE_MS) -> None:
        super().__init__(Window, watermark, grace_ms)

    def add(self, campaign_id: str, ts: int, kind: str, amount_micros: int, offset: int, source: str = "") -> bool:
        """Count one ledger entry; False when its window has already closed (too late)."""
        window = self.window(campaign_id, ts, offset, source)
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
    """A role that keeps open windows per group of its input partitions (by default each partition
    is its own group; co-partitioned inputs may share one): restored from the committed positions and
    watermark on assignment, dropped on revocation, closed by the watermark (which follows wall time
    `idle_close_ms` behind once every partition of the group is caught up), and each partition
    committed at its first record in a window still open, with the watermark as the offset's metadata."""

    idle_close_ms: int | None = None

    def __init__(self) -> None:
        self.partitions: dict[Hashable, Windows[W]] = {}
        self.members: dict[Hashable, set[TopicPartition]] = {}
        self.next_offset: dict[TopicPartition, int] = {}

    def new_windows(self, watermark: int = 0) -> Windows[W]:
        raise NotImplementedError

    def group_of(self, tp: TopicPartition) -> Hashable:
        """The windows `tp`'s records count into."""
        group: Hashable = tp
        return group

    def restored(self, tp: TopicPartition, watermark: int) -> None:
        """A partition assigned, its watermark as committed (0 when never committed)."""

    def due(self, group: Hashable, windows: Windows[W]) -> list[W]:
        """What closes in `group` now (a role may add to it)."""
        return windows.close_due()

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        for tp in committed:  # rebuilt from the committed positions (co-partitioned members come together)
            self.partitions.pop(self.group_of(tp), None)
        for tp, found in committed.items():
            watermark = 0
            if found is not None:
                self.next_offset[tp] = found.offset
                watermark = committed_watermark(found.metadata)
            windows = self.windows_of(tp)
            windows.watermark = max(windows.watermark, watermark)
            self.restored(tp, watermark)
        return {}

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            group = self.group_of(tp)
            self.partitions.pop(group, None)
            for member in self.members.pop(group, set()) | {tp}:
                self.next_offset.pop(member, None)

    def windows_of(self, tp: TopicPartition) -> Windows[W]:
        group = self.group_of(tp)
        self.members.setdefault(group, set()).add(tp)
        found = self.partitions.get(group)
        if found is None:
            found = self.partitions[group] = self.new_windows()
        return found

    async def close_due(self, now_ms: int, touched: set[TopicPartition]) -> list[W]:
        """The windows due in every group; adds the partitions whose position moves to `touched`."""
        closed: list[W] = []
        for group, windows in self.partitions.items():
            members = self.members.get(group, set())
            if self.idle_close_ms is not None and members and all([await self.loop.caught_up(tp) for tp in members]):
                windows.advance(now_ms - self.idle_close_ms)
            done = self.due(group, windows)
            if done:
                closed.extend(done)
                touched.update(members)
        return closed

    def commit_offsets(self, touched: set[TopicPartition]) -> dict[TopicPartition, Position]:
        """Each touched partition's resume position with its group's watermark."""
        offsets: dict[TopicPartition, Position] = {}
        for tp in touched:
            if tp in self.next_offset:
                windows = self.partitions[self.group_of(tp)]
                metadata = orjson.dumps({"wm": windows.watermark}).decode()
                offsets[tp] = (windows.commit_offset(self.next_offset[tp], tp.topic), metadata)
        return offsets
