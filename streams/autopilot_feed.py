"""autopilot-feed: ad.impressions + ad.clicks → autopilot.feed, the autopilot's input.

The autopilot (streams/autopilot.py, on Faust) learns per campaign and keyword, but Faust reads a
few thousand records a second where the impressions come by the tens of thousands; so this role,
on the shared exactly-once loop, counts them first. For each autopilot campaign (a goal, or
`targeting.auto`: `pilots_campaign`) it keeps tumbling windows of event time per input partition
(streams/windows.py, as reporting does, with the watermark committed as offset metadata): the
impressions, billable clicks, spend and per-click prices, per matched keyword, and per intent
keyword of what came through a category only (`KeywordCounts`, the rule the simulator uses). A
closed window is one `autopilot.feed` record, published with the consumed offsets in one
transaction; a partition's committed offset never passes the first record of a window still open.

The autopilot decides on event time, so its clock must run when traffic does not: when the windows
of the first impressions partition close, that partition also sends an empty record for every
autopilot campaign it had nothing for (a tick; counts add up, so a repeated one changes nothing).

Which campaigns are autopilot campaigns is re-read from Redis every PILOTED_REFRESH_S.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition

from autopilot.learning import KeywordCounts, top_via_category
from autopilot.pilot import feed_window_ms, pilots_campaign
from core.loop import Batch, Loop, LoopOptions, Output, Step
from core.metrics import Metrics
from core.settings import Settings
from schemas.codec import RecordError, decode, encode
from schemas.records import FEED_VIA_CATEGORY_MAX
from streams.windows import GRACE_MS, IDLE_CLOSE_MS, Window, WindowedRole, Windows

log = logging.getLogger("vickrey.streams.autopilot_feed")
IMPRESSIONS = "ad.impressions"
CLICKS = "ad.clicks"
CONVERSIONS = "ad.conversions"
FEED = "autopilot.feed"
PILOTED_REFRESH_S = 2.0


@dataclass(slots=True)
class FeedWindow(Window):
    length_ms: int = 60_000
    price_sum_micros: int = 0
    priced_impressions: int = 0
    all_prices_micros: int = 0
    counts: KeywordCounts = field(default_factory=KeywordCounts)

    def impression(self, impression: dict[str, Any]) -> None:
        price, charge = impression["price_micros"], impression["charge_micros"]
        self.impressions += 1
        self.spend_micros += charge
        self.all_prices_micros += price
        if price > 0:  # an uncontested win says nothing about the market's price
            self.price_sum_micros += price
            self.priced_impressions += 1
        self.counts.impression(tuple(impression.get("matched_keywords", ())),
                               frozenset(impression.get("intent_keywords", ())), charge)

    def click(self, click: dict[str, Any]) -> None:
        self.clicks += 1
        self.spend_micros += click["charge_micros"]
        self.counts.click(tuple(click.get("matched_keywords", ())), frozenset(click.get("intent_keywords", ())),
                          click["charge_micros"])

    def record(self) -> dict[str, Any]:
        via = top_via_category(self.counts.via_category, FEED_VIA_CATEGORY_MAX)
        return {
            "schema_version": 1, "campaign_id": self.campaign_id,
            "window_start": self.start, "window_end": self.start + self.length_ms,
            "impressions": self.impressions, "clicks": self.clicks, "spend_micros": self.spend_micros,
            "conversions": self.conversions,
            "price_sum_micros": self.price_sum_micros, "priced_impressions": self.priced_impressions,
            "all_prices_micros": self.all_prices_micros,
            "keywords": [{"keyword": k, "impressions": c.impressions, "clicks": c.clicks, "spend_micros": c.spend_micros}
                         for k, c in sorted(self.counts.by_keyword.items())],
            "via_category": [{"keyword": k, "impressions": c.impressions, "clicks": c.clicks}
                             for k, c in sorted(via.items())],
        }


class AutopilotFeed(WindowedRole[FeedWindow]):
    name = "autopilot-feed"
    inputs = (IMPRESSIONS, CLICKS, CONVERSIONS)

    def __init__(self, settings: Settings, metrics: Metrics, batch_max: int = 2000) -> None:
        super().__init__()
        self.settings = settings
        self.options = LoopOptions(batch_max=batch_max, tick_s=0.2, fetch_max_wait_ms=20, session_timeout_ms=6_000,
                                   heartbeat_interval_ms=1_000)
        self.window_ms = feed_window_ms(settings.autopilot_decide_every_s)
        self.grace_ms = min(GRACE_MS, self.window_ms)
        self.idle_close_ms = min(IDLE_CLOSE_MS, 2 * self.window_ms)
        self.impressions_topic = settings.topic(IMPRESSIONS)
        self.logical = {settings.topic(name): name for name in self.inputs}
        self.feed_topic = settings.topic(FEED)
        self.piloted: frozenset[str] = frozenset()
        self._piloted_at = -PILOTED_REFRESH_S
        self.ticked_start: int | None = None  # the last window the first partition sent ticks for
        self.published = metrics.counter("vickrey_autopilot_feed_windows_total", "autopilot.feed records published")
        self.late = metrics.counter("vickrey_autopilot_feed_late_total", "Records after their window closed")
        self.unreadable = metrics.counter("vickrey_autopilot_feed_unreadable_total", "Records that could not be read")

    def new_windows(self, watermark: int = 0) -> Windows[FeedWindow]:
        length = self.window_ms
        return Windows(lambda cid, start: FeedWindow(cid, start, length_ms=length),
                       watermark, self.grace_ms, length)

    async def start(self, loop: Loop) -> None:
        await super().start(loop)
        await self._refresh_piloted()

    # -- rebalance -------------------------------------------------------------------------------

    def restored(self, tp: TopicPartition, watermark: int) -> None:
        if self._is_first(tp):
            self.ticked_start = self._last_closed_start(watermark)

    def due(self, group: Hashable, windows: Windows[FeedWindow]) -> list[FeedWindow]:
        tp = group  # each partition is its own group here
        assert isinstance(tp, TopicPartition)
        done = windows.close_due()
        return done + self._ticks(windows, done) if self._is_first(tp) else done

    # -- one batch -------------------------------------------------------------------------------

    async def process(self, batch: Batch, now_ms: int) -> Step:
        if time.monotonic() - self._piloted_at >= PILOTED_REFRESH_S:
            await self._refresh_piloted()
        touched = self._count(batch)
        closed = await self.close_due(now_ms, touched)
        return Step(self._outputs(closed), offsets=self.commit_offsets(touched))

    def _count(self, batch: Batch) -> set[TopicPartition]:
        """Each record of an autopilot campaign into its window; the partitions read."""
        touched: set[TopicPartition] = set()
        for tp, records in batch.items():
            windows = self.windows_of(tp)
            topic = self.logical[tp.topic]
            for record in records:
                try:
                    found = decode(topic, record.value)
                except RecordError:
                    self.unreadable.inc()  # billing sends unreadable impressions to the DLQ
                    continue
                if found["campaign_id"] not in self.piloted:
                    continue
                window = windows.window(found["campaign_id"], found["ts"], record.offset, tp.topic)
                if window is None:
                    self.late.inc()
                elif topic == IMPRESSIONS:
                    window.impression(found)
                elif topic == CLICKS:
                    window.click(found)
                else:  # an attributed conversion, in the window of its own ts
                    window.conversion(found["value_micros"])
            self.next_offset[tp] = records[-1].offset + 1
            touched.add(tp)
        return touched

    def _outputs(self, windows: list[FeedWindow]) -> list[Output]:
        self.published.inc(len(windows))
        return [(self.feed_topic, w.campaign_id.encode(), encode(w.record())) for w in windows]

    # -- the autopilot's clock ---------------------------------------------------------------------

    def _is_first(self, tp: TopicPartition) -> bool:
        return bool(tp.topic == self.impressions_topic and tp.partition == 0)

    def _last_closed_start(self, watermark: int) -> int:
        """The start of the latest window the watermark has closed."""
        edge = watermark - self.grace_ms - self.window_ms
        return edge - edge % self.window_ms

    def _ticks(self, windows: Windows[FeedWindow], closed: list[FeedWindow]) -> list[FeedWindow]:
        """Empty windows for the autopilot campaigns the latest closed window had nothing for."""
        start = self._last_closed_start(windows.watermark)
        if windows.watermark <= 0 or (self.ticked_start is not None and start <= self.ticked_start):
            return []
        self.ticked_start = start
        had = {w.campaign_id for w in closed if w.start == start}
        return [FeedWindow(cid, start, length_ms=self.window_ms) for cid in sorted(self.piloted - had)]

    async def _refresh_piloted(self) -> None:
        self._piloted_at = time.monotonic()
        raw = await self.redis.hgetall(self.settings.keys.campaigns())
        found = set()
        for campaign_id, value in raw.items():
            record = orjson.loads(value)
            if record.get("status", "active") == "active" and pilots_campaign(record):
                found.add(campaign_id.decode() if isinstance(campaign_id, bytes) else campaign_id)
        self.piloted = frozenset(found)
