"""The worker's live view (auction/live.py) against real Redis: a policy Redis lost, the spend refresh."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from auction.engine import AuctionEngine
from auction.index import CampaignIndex
from auction.live import LiveState
from auction.model import Campaign
from auction.pacing import SpendView
from core.clock import utc_day
from core.redis_client import redis_from_url
from core.settings import Settings
from tests.auction.factories import campaign_record
from vickrey.policy_store import apply_policy

pytestmark = pytest.mark.integration
STRICT = {"sensitive_categories": ["IAB7", "IAB19"], "restricted_verticals": ["gambling"],
          "blocked_safety_labels": ["hate", "adult"]}


async def test_a_policy_redis_lost_stays_in_force_and_a_new_one_applies(settings: Settings,
                                                                        redis_client: redis.Redis) -> None:
    client = redis_from_url(settings.redis)
    try:
        engine = AuctionEngine(CampaignIndex(), SpendView())
        live = LiveState(settings, client, engine)
        for _ in range(3):  # version 3
            await apply_policy(settings, client, STRICT)
        await live.refresh_policy()
        assert engine.policy.sensitive_categories == frozenset({"IAB7", "IAB19"})

        redis_client.delete(settings.keys.policy(), settings.keys.policy_version())  # Redis lost it
        await live.refresh_policy()
        assert engine.policy.sensitive_categories == frozenset({"IAB7", "IAB19"}), "fell back to the default"

        # A policy applied after the loss starts again at version 1: it applies all the same.
        await apply_policy(settings, client, {**STRICT, "sensitive_categories": ["IAB7"]})
        await live.refresh_policy()
        assert engine.policy.sensitive_categories == frozenset({"IAB7"})
    finally:
        await client.aclose()


async def test_the_spend_refresh_records_what_changed_and_a_changed_campaign_always(
        settings: Settings, redis_client: redis.Redis) -> None:
    """The refresh skips figures the view already holds; it must still see every change in
    Redis, lift a refusal's block as a record of the same figures does, and re-judge a campaign
    whose budget changed although its spend did not."""
    client = redis_from_url(settings.redis)
    try:
        spend = SpendView()
        engine = AuctionEngine(CampaignIndex(), spend)
        live = LiveState(settings, client, engine)
        day = utc_day(int(time.time() * 1000))
        record = campaign_record("c-live", budget={"daily_micros": 5_000_000, "total_micros": 10**12})
        redis_client.hset(settings.keys.campaigns(), "c-live", orjson.dumps(record))
        engine.index.upsert(Campaign.from_record(record))

        def spent(micros: int) -> None:
            redis_client.set(settings.keys.spend_day("c-live", day), micros)
            redis_client.set(settings.keys.spend_total("c-live"), micros)

        spent(1_000_000)
        await live.refresh_spend()
        assert (spend.today_micros["c-live"], spend.total_micros["c-live"]) == (1_000_000, 1_000_000)
        spent(2_000_000)
        await live.refresh_spend()
        assert (spend.today_micros["c-live"], spend.total_micros["c-live"]) == (2_000_000, 2_000_000)
        assert "c-live" not in spend.blocked

        spend.mark_exhausted("c-live")  # Redis refused a reservation: blocked until the next refresh
        await live.refresh_spend()  # the same figures: the record lifts the block, as it always did
        assert "c-live" not in spend.blocked

        # The budget falls to what is spent; the spend does not change: blocked all the same.
        lowered = {**record, "budget": {"daily_micros": 2_000_000, "total_micros": 10**12}}
        redis_client.hset(settings.keys.campaigns(), "c-live", orjson.dumps(lowered))
        await live.apply_change("c-live")
        assert "c-live" in spend.blocked
        await live.refresh_spend()
        assert "c-live" in spend.blocked
    finally:
        await client.aclose()
