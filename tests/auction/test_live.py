"""The worker's live view (auction/live.py) when Redis loses the policy, against real Redis."""

from __future__ import annotations

import pytest
import redis

from auction.engine import AuctionEngine
from auction.index import CampaignIndex
from auction.live import LiveState
from auction.pacing import SpendView
from core.redis_client import redis_from_url
from core.settings import Settings
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
