"""Keeps a worker's view of campaigns, spend, learned CTR and policy in step with Redis, and the
autopilot's decisions applied over the campaigns.

Campaign changes arrive on the `{ns}:campaigns:changes` stream (written by `vickrey campaigns`
and the API in the same transaction as the campaign itself) and are applied one campaign at a
time, usually within milliseconds; spend and CTR are re-read on a short period, and the
reservation script's answers update spend in between. The autopilot's latest decision per
campaign (`apply_decision`, fed by auction/autopilot_listener.py) sets its bid and effective
keywords, and stays over the campaign when the campaign itself changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from auction.creatives import Creatives
from auction.engine import AuctionEngine, Policy
from auction.index import BulkLoad, CampaignIndex
from auction.model import Campaign, blended_pctr
from core.clock import utc_day
from core.redis_client import get_many
from core.settings import Settings

log = logging.getLogger("vickrey.auction.live")
SPEND_REFRESH_S = 1.0
CTR_REFRESH_S = 5.0
POLICY_REFRESH_S = 0.5
CHUNK = 1000


class LiveState:
    def __init__(self, settings: Settings, redis: Redis, engine: AuctionEngine) -> None:
        self.settings = settings
        self.redis: Any = redis  # redis-py's asyncio stubs type replies loosely; we decode by hand
        self.engine = engine
        self.creatives = Creatives()
        self.last_change_id = "0-0"
        self.policy_version = -1
        self.applied_changes = 0
        # campaign id -> the autopilot's latest (version, CPC bid or None, effective keywords)
        self.autopilot: dict[str, tuple[int, int | None, tuple[str, ...]]] = {}
        # campaign id -> its spend keys (today's, the total), encoded, for `_keys_day`
        self._keys_day = ""
        self._keys_of_day: dict[str, tuple[bytes, bytes]] = {}

    @property
    def index(self) -> CampaignIndex:
        return self.engine.index

    async def load(self) -> None:
        """Initial snapshot. The stream position is taken first, so a change racing the
        snapshot is applied again afterwards (upserts are idempotent) rather than missed."""
        last = await self.redis.xrevrange(self.settings.keys.campaign_changes(), count=1)
        if last:
            self.last_change_id = last[0][0].decode()
        raw = await self.redis.hgetall(self.settings.keys.campaigns())
        campaigns = []
        with BulkLoad():
            for value in raw.values():
                record = orjson.loads(value)
                campaigns.append(self._piloted(Campaign.from_record(record)))
                self.creatives.set(record["campaign_id"], record["creatives"])
            self.engine.index = CampaignIndex.build(campaigns)
        await self.refresh_policy()
        await self.refresh_spend()
        await self.refresh_ctr()
        log.info("campaigns loaded", extra={"campaigns": len(self.engine.index)})

    async def apply_change(self, campaign_id: str) -> None:
        raw = await self.redis.hget(self.settings.keys.campaigns(), campaign_id)
        if raw is None:
            self.index.remove(campaign_id)
            self.creatives.remove(campaign_id)
        else:
            record = orjson.loads(raw)
            campaign = self._piloted(Campaign.from_record(record))
            self.creatives.set(campaign_id, record["creatives"])
            self.index.upsert(campaign)
            await self._refresh_spend_of([campaign], force=True)
        self.applied_changes += 1

    def apply_decision(self, decision: dict[str, Any]) -> bool:
        """A `campaigns.autopilot` record; False when it is not newer than the one applied."""
        campaign_id, version = decision["campaign_id"], decision["version"]
        known = self.autopilot.get(campaign_id)
        if known is not None and known[0] >= version:
            return False
        bid = decision["bid"]
        self.autopilot[campaign_id] = (version, None if bid is None else bid["amount_micros"], tuple(decision["keywords"]))
        campaign = self.index.get(campaign_id)
        if campaign is not None:
            self.index.upsert(self._piloted(campaign))
        return True

    def _piloted(self, campaign: Campaign) -> Campaign:
        found = self.autopilot.get(campaign.campaign_id)
        return campaign if found is None else campaign.piloted(found[1], found[2])

    async def follow_changes(self, stop: asyncio.Event) -> None:
        stream = self.settings.keys.campaign_changes()
        while not stop.is_set():
            try:
                entries = await self.redis.xread({stream: self.last_change_id}, block=250, count=500)
            except Exception as exc:  # keep serving with the last known campaigns
                log.warning("campaign stream read failed", extra={"error": str(exc)})
                await asyncio.sleep(0.5)
                continue
            for _, items in entries or []:
                for entry_id, fields in items:
                    self.last_change_id = entry_id.decode()
                    await self.apply_change(fields[b"campaign_id"].decode())

    async def refresh_spend(self) -> None:
        self.engine.spend.roll_to(utc_day(int(time.time() * 1000)))
        await self._refresh_spend_of(list(self.index.campaigns.values()))

    async def _refresh_spend_of(self, campaigns: list[Campaign], force: bool = False) -> None:
        """Read each campaign's spend today and in total, and record it in the spend view: only
        where it changes what the view holds, unless `force` (the campaign itself changed, so its
        budgets may have). Runs every second over every campaign, on the worker's event loop: at
        10,000 campaigns building the keys and recording unchanged figures were two thirds of
        its ~140 ms (BENCHMARKS.md)."""
        spend = self.engine.spend
        day = spend.day or utc_day(int(time.time() * 1000))
        for start in range(0, len(campaigns), CHUNK):
            chunk = campaigns[start : start + CHUNK]
            keys: list[bytes] = []
            for campaign in chunk:
                keys += self._spend_keys(campaign.campaign_id, day)
            values = await get_many(self.redis, keys)
            for position, campaign in enumerate(chunk):
                today, total = int(values[2 * position] or 0), int(values[2 * position + 1] or 0)
                campaign_id = campaign.campaign_id
                # `record` of the figures the view holds changes nothing, unless the campaign
                # is blocked: it may be blocked by a refusal (`mark_exhausted`), which a record
                # of the same figures lifts, as every refresh did.
                if (force or campaign_id in spend.blocked or spend.today_micros.get(campaign_id) != today
                        or spend.total_micros.get(campaign_id) != total):
                    spend.record(campaign, today, total)

    def _spend_keys(self, campaign_id: str, day: str) -> tuple[bytes, bytes]:
        """The campaign's spend keys for `day` (today's, then the total), encoded once a day."""
        if day != self._keys_day:
            self._keys_day, self._keys_of_day = day, {}
        found = self._keys_of_day.get(campaign_id)
        if found is None:
            keys = self.settings.keys
            found = (keys.spend_day(campaign_id, day).encode(), keys.spend_total(campaign_id).encode())
            self._keys_of_day[campaign_id] = found
        return found

    async def refresh_ctr(self) -> None:
        """Learned CTR for CPC campaigns (CPM eCPM does not depend on it), from streams' counts."""
        cpc = [c for c in self.index.campaigns.values() if c.bid_type == "cpc"]
        for start in range(0, len(cpc), CHUNK):
            chunk = cpc[start : start + CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for campaign in chunk:
                pipe.hmget(self.settings.keys.ctr(campaign.campaign_id), "impressions", "clicks")
            for campaign, (impressions, clicks) in zip(chunk, await pipe.execute(), strict=True):
                pctr = blended_pctr(campaign.prior_pctr, int(impressions or 0), int(clicks or 0))
                self.index.set_pctr(campaign.campaign_id, pctr)

    async def refresh_policy(self) -> None:
        version = int(await self.redis.get(self.settings.keys.policy_version()) or 0)
        if version == self.policy_version:
            return
        raw = await self.redis.get(self.settings.keys.policy())
        if raw is None and self.policy_version > 0:
            # A policy was applied, and Redis no longer has it: Redis lost its state. Keep the
            # one in force (the default may be laxer) until `vickrey reconcile` puts it back.
            return
        self.policy_version = version
        if raw is None:
            self.engine.policy = Policy()
            return
        doc = orjson.loads(raw)
        self.engine.policy = Policy(
            blocked_safety_labels=frozenset(doc["blocked_safety_labels"]),
            sensitive_categories=frozenset(doc["sensitive_categories"]),
            restricted_verticals=frozenset(doc["restricted_verticals"]),
        )
        log.info("policy applied", extra={"version": version})

    async def refresh_forever(self, stop: asyncio.Event) -> None:
        next_spend = next_ctr = 0.0
        while not stop.is_set():
            now = time.monotonic()
            try:
                await self.refresh_policy()
                if now >= next_spend:
                    await self.refresh_spend()
                    next_spend = now + SPEND_REFRESH_S
                if now >= next_ctr:
                    await self.refresh_ctr()
                    next_ctr = now + CTR_REFRESH_S
            except Exception as exc:
                log.warning("refresh failed", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLICY_REFRESH_S)
