"""Billing: ad.impressions + ad.clicks → billing.ledger, exactly once, on plain aiokafka transactions.

One ledger entry per impression record and per billable click record (entry_id = impression_id or
click_id), published in the same Kafka transaction as the consumed offsets: a SIGKILL anywhere
aborts the batch, which is consumed again. CPM charges were already reserved in Redis spend by the
auction worker, so an impression only becomes a ledger entry (CPC impressions cost nothing: amount
0). CPC clicks are settled against the campaign's budget by settle.lua in one round trip per batch;
it keeps each click's first answer, so a replayed batch gets the same amounts and never charges
twice, and a click past the daily or total budget is an `overdelivery` entry with amount 0.

Why not Faust: billing must keep up with the auction worker (~20k impressions/s); a Faust agent
moves ~2-5k events/s here (DESIGN §1), a getmany()/BatchSender loop several times that.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from auction.pacing import utc_day
from schemas.codec import RecordError, decode, dlq_record, encode
from streams.common import Batch, Output, Record, Step, StreamRole, next_offsets
from vickrey.metrics import Metrics
from vickrey.settings import Settings

log = logging.getLogger("vickrey.streams.billing")
SETTLE_SCRIPT = Path(__file__).with_name("settle.lua").read_text()
IMPRESSIONS = "ad.impressions"
CLICKS = "ad.clicks"
LEDGER = "billing.ledger"
DLQ_TOPICS = (f"{IMPRESSIONS}.dlq", f"{CLICKS}.dlq")


def ledger_entry(entry_id: str, kind: str, record: dict[str, Any], amount: int, overdelivery: bool) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "entry_id": entry_id,
        "kind": kind,
        "campaign_id": record["campaign_id"],
        "advertiser_id": record["advertiser_id"],
        "amount_micros": amount,
        "ts": record["ts"],
        "overdelivery": overdelivery,
    }


class Billing(StreamRole):
    name = "billing"
    inputs = (IMPRESSIONS, CLICKS)

    def __init__(self, settings: Settings, registry: Metrics, stop: asyncio.Event, batch_max: int = 2000) -> None:
        super().__init__(settings, registry, stop, batch_max)
        m = registry
        self.entries = m.counter("vickrey_streams_billing_ledger_entries_total", "Ledger entries published, by kind")
        self.overdelivery = m.counter("vickrey_streams_billing_overdelivery_total", "Clicks billed 0 past the budget")
        self.billed_micros = m.counter("vickrey_streams_billing_amount_micros_total", "Micros charged, by kind")
        self.duplicates = m.counter(
            "vickrey_streams_billing_duplicate_clicks_total", "Clicks whose click_id was already billed from another record"
        )
        self.replays = m.counter("vickrey_streams_billing_replayed_clicks_total", "Clicks whose kept answer was reused")
        self.ledger_topic = self.topic(LEDGER)
        self.impressions_topic = self.topic(IMPRESSIONS)
        self.redis: Redis | None = None

    async def setup(self) -> None:
        self.redis = Redis.from_url(self.settings.redis)
        self._settle = self.redis.register_script(SETTLE_SCRIPT)

    async def teardown(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def process(self, batch: Batch, now_ms: int) -> Step:
        outputs: list[Output] = []
        clicks: list[tuple[Record, dict[str, Any]]] = []
        impression_entries = impression_micros = 0
        for tp, records in batch.items():
            if tp.topic == self.impressions_topic:
                for record in records:
                    try:
                        impression = decode(IMPRESSIONS, record.value)
                    except RecordError as error:
                        outputs.append(self._dlq(record, error, now_ms))
                        continue
                    amount = impression["charge_micros"] if impression["bid_type"] == "cpm" else 0
                    impression_entries += 1
                    impression_micros += amount
                    entry = ledger_entry(impression["impression_id"], "impression", impression, amount, False)
                    outputs.append((self.ledger_topic, impression["campaign_id"].encode(), encode(entry)))
            else:
                for record in records:
                    try:
                        clicks.append((record, decode(CLICKS, record.value)))
                    except RecordError as error:
                        outputs.append(self._dlq(record, error, now_ms))
        self.entries.inc(impression_entries, kind="impression")
        self.billed_micros.inc(impression_micros, kind="impression")
        if clicks:
            outputs.extend(await self._settle_clicks(clicks, now_ms))
        return Step(outputs, dict(next_offsets(batch)))

    async def _settle_clicks(self, clicks: list[tuple[Record, dict[str, Any]]], now_ms: int) -> list[Output]:
        payload = orjson.dumps(
            [
                [click["click_id"], f"{record.partition}:{record.offset}", click["campaign_id"], click["charge_micros"]]
                for record, click in clicks
            ]
        )
        ttl = self.settings.event_ttl_s
        raw = await self._settle(keys=[], args=[self.settings.namespace, utc_day(now_ms), ttl, payload])
        outputs: list[Output] = []
        for (_record, click), answer in zip(clicks, orjson.loads(raw), strict=True):
            kind = answer[0]
            if kind == "dup":
                # Another record already carried this click_id and got its ledger entry.
                self.duplicates.inc()
                log.warning("duplicate click not billed again", extra={"click_id": click["click_id"], "first": answer[1]})
                continue
            if kind == "replay":
                self.replays.inc()
            amount, over = int(answer[1]), answer[2] == "1"
            entry = ledger_entry(click["click_id"], "click", click, amount, over)
            outputs.append((self.ledger_topic, click["campaign_id"].encode(), encode(entry)))
            self.entries.inc(kind="click")
            self.billed_micros.inc(amount, kind="click")
            if over:
                self.overdelivery.inc()
        return outputs

    def _dlq(self, record: Record, error: RecordError, now_ms: int) -> Output:
        self.metrics.unreadable.inc(topic=record.topic)
        dead = dlq_record(record.topic, record.partition, record.offset, record.key, record.value, error, now_ms)
        logical = record.topic[len(self.settings.topic_prefix) :]
        return (self.topic(f"{logical}.dlq"), record.key, encode(dead))
