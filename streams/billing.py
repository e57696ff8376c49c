"""Billing: ad.impressions + ad.clicks → billing.ledger, exactly once.

One ledger entry per impression record and per billable click record (entry_id = impression_id or
click_id), published by the loop in the same Kafka transaction as the consumed offsets: a SIGKILL
anywhere aborts the batch, which is consumed again. CPM charges were already reserved in Redis
spend by the auction worker, so an impression only becomes a ledger entry (CPC impressions cost
nothing: amount 0). CPC clicks are charged to the campaign's budget by charge_clicks.lua in one
round trip per part (one script call per campaign, pipelined: each keeps to its campaign's hash slot); it keeps each click's first answer, so a replayed batch gets the same amounts
and never charges twice, and a click past the daily or total budget is an `overdelivery` entry
with amount 0. A click whose campaign has no budget in a namespace Redis lost (no `reconciled`
marker) waits: the batch fails and is consumed again until `vickrey reconcile` has run.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import orjson

from core.clock import utc_day
from core.loop import Batch, KafkaRecord, Loop, LoopOptions, Output, RoleBase, Step
from core.metrics import Metrics
from core.redis_client import PipelineScripts, is_cluster
from core.settings import Settings
from schemas.codec import RecordError, decode, encode

log = logging.getLogger("vickrey.streams.billing")
CHARGE_CLICKS = resources.files("streams").joinpath("charge_clicks.lua").read_text()
IMPRESSIONS = "ad.impressions"
CLICKS = "ad.clicks"
LEDGER = "billing.ledger"


class NotReconciled(RuntimeError):
    """A click's campaign has no budget in a namespace that was emptied and not yet reconciled."""


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


class Billing(RoleBase):
    name = "billing"
    inputs = (IMPRESSIONS, CLICKS)

    def __init__(self, settings: Settings, metrics: Metrics, batch_max: int = 2000) -> None:
        self.settings = settings
        self.options = LoopOptions(batch_max=batch_max, fetch_max_wait_ms=20, session_timeout_ms=6_000,
                                   heartbeat_interval_ms=1_000)
        self.entries = metrics.counter("vickrey_billing_ledger_entries_total", "Ledger entries made, by kind", ("kind",))
        self.overdelivery = metrics.counter("vickrey_billing_overdelivery_total", "Clicks billed 0 past the budget")
        self.billed_micros = metrics.counter("vickrey_billing_amount_micros_total", "Micros charged, by kind", ("kind",))
        self.duplicates = metrics.counter(
            "vickrey_billing_duplicate_clicks_total", "Clicks whose click_id was already billed from another record"
        )
        self.replays = metrics.counter("vickrey_billing_replayed_clicks_total", "Clicks whose kept answer was reused")
        self.ledger_topic = settings.topic(LEDGER)
        self.impressions_topic = settings.topic(IMPRESSIONS)
        self._templates = orjson.dumps(settings.keys.lua_templates())

    async def start(self, loop: Loop) -> None:
        await super().start(loop)
        self._scripts = PipelineScripts(self.redis, CHARGE_CLICKS)
        self._charge = self._scripts.scripts[0]

    async def process(self, batch: Batch, now_ms: int) -> Step:
        outputs: list[Output] = []
        clicks: list[tuple[KafkaRecord, dict[str, Any]]] = []
        impression_entries = impression_micros = 0
        for tp, records in batch.items():
            if tp.topic == self.impressions_topic:
                for record in records:
                    try:
                        impression = decode(IMPRESSIONS, record.value)
                    except RecordError as error:
                        outputs.append(self.loop.dlq(record, error, now_ms))
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
                        outputs.append(self.loop.dlq(record, error, now_ms))
        self.entries.labels("impression").inc(impression_entries)
        self.billed_micros.labels("impression").inc(impression_micros)
        if clicks:
            outputs.extend(await self._charge_clicks(clicks, now_ms))
        return Step(outputs)

    async def _charge_clicks(self, clicks: list[tuple[KafkaRecord, dict[str, Any]]], now_ms: int) -> list[Output]:
        """One charge_clicks.lua call per campaign (its clicks in batch order), pipelined: each
        keeps to the campaign's hash slot, and campaigns share nothing the order could change."""
        by_campaign: dict[str, list[int]] = {}  # campaign_id → positions in `clicks`
        for position, (_record, click) in enumerate(clicks):
            by_campaign.setdefault(click["campaign_id"], []).append(position)
        keys, day, ttl = self.settings.keys, utc_day(now_ms), self.settings.event_ttl_s
        marker = "check"
        if is_cluster(self.redis):
            marker = "1" if await self.redis.exists(keys.reconciled()) else "0"
        await self._scripts.ready()
        pipe: Any = self.redis.pipeline(transaction=False)
        for campaign_id, positions in by_campaign.items():
            payload = orjson.dumps([[clicks[p][1]["click_id"], f"{clicks[p][0].partition}:{clicks[p][0].offset}",
                                     campaign_id, clicks[p][1]["charge_micros"]] for p in positions])
            await self._charge(keys=[keys.budget(campaign_id)], args=[self._templates, day, ttl, payload, marker],
                               client=pipe)
        answers: list[Any] = [None] * len(clicks)
        for positions, raw in zip(by_campaign.values(), await self._scripts.execute(pipe), strict=True):
            for position, answer in zip(positions, orjson.loads(raw), strict=True):
                answers[position] = answer
        waiting = [click["campaign_id"] for (_record, click), answer in zip(clicks, answers, strict=True)
                   if answer[0] == "wait"]
        if waiting:
            # The loop consumes the batch again after a back-off; the clicks charged meanwhile
            # come back as replays. See charge_clicks.lua.
            raise NotReconciled(
                f"campaign {waiting[0]} has no budget in Redis namespace {self.settings.namespace!r}, which lacks "
                "its reconcile marker (Redis lost its state?): clicks wait for `vickrey reconcile`"
            )
        outputs: list[Output] = []
        for (_record, click), answer in zip(clicks, answers, strict=True):
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
            self.entries.labels("click").inc()
            self.billed_micros.labels("click").inc(amount)
            if over:
                self.overdelivery.inc()
        return outputs
