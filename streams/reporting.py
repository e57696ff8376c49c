"""Reporting: billing.ledger + conversions.by-campaign → one-minute campaign windows →
reports.campaign-minute, plus Redis for the HTTP endpoints (report_api.py).

Impressions, clicks and spend come from the ledger: it has one entry per impression and per
billable click, with the event's ts, its kind and the amount charged, keyed by campaign, so counts
and spend agree with billing by construction. Conversions come from conversions.by-campaign (the
conversions role's attributed conversions, keyed by campaign too), counted in the minute of their
own ts. Both topics are co-partitioned and assigned by range, so partition N of both feeds one set
of windows and a campaign's windows live on one member. Windows and exactly-once emission: see
windows.py; the loop publishes the output in a Kafka transaction with the consumed offsets and the
watermark (as offset metadata). Once both partitions are caught up, wall time moves the watermark
(`idle_close_ms` behind: 0), so a window closes one grace period after its end even when no more
traffic arrives (docs/contract.md §8); an entry for a closed window is counted in
`vickrey_reporting_late_total`, not in a report.

Redis (`{ns}` = namespace): `{ns}:{c:<campaign_id>}:minutes` hash, field window_start (ms) → the
report record JSON; a window still open carries `"partial": true` and is rewritten at most every
`PARTIAL_FLUSH_S`; the key expires 7 days after its last write and keeps the latest
`MINUTES_KEPT` fields. `{ns}:reports:campaigns` set: the campaigns with reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import Any

import orjson
from aiohttp import web
from aiokafka import TopicPartition

from core.loop import Batch, Loop, LoopOptions, Output, Step
from core.metrics import Metrics
from core.settings import Settings
from schemas.codec import RecordError, decode, encode
from streams.report_api import serve_reports
from streams.windows import GRACE_MS, PartitionWindows, Window, WindowedRole, Windows

log = logging.getLogger("vickrey.streams.reporting")
LEDGER = "billing.ledger"
CONVERSIONS = "conversions.by-campaign"  # attributed conversions, keyed by campaign like the ledger
REPORTS = "reports.campaign-minute"
MINUTES_TTL_S = 7 * 86400
MINUTES_KEPT = 7 * 1440
PARTIAL_FLUSH_S = 1.0


class Reporting(WindowedRole[Window]):
    name = "reporting"
    inputs = (LEDGER, CONVERSIONS)

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        batch_max: int = 2000,
        port: int | None = 8081,
        grace_ms: int = GRACE_MS,
        idle_close_ms: int | None = 0,  # None: event time only (tests)
    ) -> None:
        super().__init__()
        self.settings = settings
        # Range assignment keeps partition N of both inputs on one member: their windows are one.
        self.options = LoopOptions(batch_max=batch_max, tick_s=0.2, fetch_max_wait_ms=20, session_timeout_ms=6_000,
                                   heartbeat_interval_ms=1_000, assignor="range")
        self.port = port
        self.port_fallback = False  # True when the port is the default, not asked for
        self.grace_ms = grace_ms
        self.idle_close_ms = idle_close_ms
        self.reports_topic = settings.topic(REPORTS)
        self.ledger_topic = settings.topic(LEDGER)
        self.windows_closed = metrics.counter("vickrey_reporting_windows_total", "Windows emitted")
        self.late = metrics.counter("vickrey_reporting_late_total", "Ledger entries after their window closed")
        self.unreadable = metrics.counter("vickrey_reporting_unreadable_total", "Ledger entries that could not be read")
        self.http: web.AppRunner | None = None
        self.http_port: int | None = None
        self._last_flush = 0.0

    async def start(self, loop: Loop) -> None:
        await super().start(loop)
        if self.port is not None:
            try:
                self.http, self.http_port = await serve_reports(self.settings, self.redis, self.port)
            except OSError as exc:
                if not self.port_fallback:
                    raise RuntimeError(f"reporting cannot serve HTTP on port {self.port}: {exc}") from exc
                # The default port is taken (another stack on this host): serve on a free one.
                self.http, self.http_port = await serve_reports(self.settings, self.redis, 0)
                log.warning("default reports port taken, using another", extra={"port": self.http_port})

    async def close(self) -> None:
        if self.http is not None:
            await self.http.cleanup()
        await super().close()

    def new_windows(self, watermark: int = 0) -> Windows[Window]:
        return PartitionWindows(watermark=watermark, grace_ms=self.grace_ms)

    def group_of(self, tp: TopicPartition) -> Hashable:
        partition: int = tp.partition  # the ledger's and the conversions' partition N: one campaign's windows
        return partition

    # -- one batch -------------------------------------------------------------------------------

    async def process(self, batch: Batch, now_ms: int) -> Step:
        touched: set[TopicPartition] = set()
        for tp, records in batch.items():
            windows = self.windows_of(tp)
            ledger = tp.topic == self.ledger_topic
            for record in records:
                try:
                    entry = decode(LEDGER if ledger else CONVERSIONS, record.value)
                except RecordError:
                    self.unreadable.inc()
                    continue
                window = windows.window(entry["campaign_id"], entry["ts"], record.offset, tp.topic)
                if window is None:
                    self.late.inc()
                elif ledger:
                    window.count(entry["kind"], entry["amount_micros"])
                else:
                    window.conversion(entry["value_micros"])
            self.next_offset[tp] = records[-1].offset + 1
            touched.add(tp)
        closed = await self.close_due(now_ms, touched)
        step = Step(window_outputs(self.reports_topic, closed), offsets=self.commit_offsets(touched))
        self.windows_closed.inc(len(closed))
        # Final windows go to Redis before the commit: a replay rebuilds the very same records.
        await self._store(closed, partial=False)
        if time.monotonic() - self._last_flush >= PARTIAL_FLUSH_S:
            self._last_flush = time.monotonic()
            await self._store([w for pw in self.partitions.values() for w in pw.take_changed()], partial=True)
        return step

    async def _store(self, windows: list[Window], partial: bool) -> None:
        if not windows:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            keys: list[str] = []
            for window in windows:
                key = self.settings.keys.minutes(window.campaign_id)
                record: dict[str, Any] = window.record()
                if partial:
                    record["partial"] = True
                pipe.hset(key, str(window.start), orjson.dumps(record))
                pipe.expire(key, MINUTES_TTL_S)
                pipe.hlen(key)
                keys.append(key)
            pipe.sadd(self.settings.keys.reported_campaigns(), *{w.campaign_id for w in windows})
            results = await pipe.execute()
        lengths = dict(zip(keys, results[2::3], strict=False))
        for key, length in lengths.items():
            if int(length) > MINUTES_KEPT + 60:
                await self._trim(key)

    async def _trim(self, key: str) -> None:
        fields = sorted(await self.redis.hkeys(key), key=int)
        if len(fields) > MINUTES_KEPT:
            await self.redis.hdel(key, *fields[: len(fields) - MINUTES_KEPT])


def window_outputs(topic: str, windows: list[Window]) -> list[Output]:
    return [(topic, w.campaign_id.encode(), encode(w.record())) for w in windows]
