"""The Redis layout and transactions of `vickrey.campaign_store` (real Redis; Kafka where announced)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka.errors import KafkaConnectionError

from core.settings import Settings
from tests.vickrey.conftest import load_sample, stream_entries
from vickrey import campaign_store as store
from vickrey.policy_store import apply_policy, get_policy, get_policy_version

pytestmark = pytest.mark.integration


def variant(n: int) -> dict[str, Any]:
    base = load_sample("campaigns.json")[0]
    return dict(base, campaign_id=f"c-var-{n}", advertiser_id=f"adv-var-{n % 3}")


async def test_layout_keys(settings: Settings) -> None:
    ns = settings.namespace
    assert settings.keys.campaigns() == f"{ns}:{{campaigns}}"
    assert settings.keys.campaign_changes() == f"{ns}:{{campaigns}}:changes"
    assert settings.keys.budget("c-1") == f"{ns}:{{c:c-1}}:budget"
    assert settings.keys.spend_total("c-1") == f"{ns}:{{c:c-1}}:spend:total"
    assert settings.keys.spend_day("c-1", "20250102") == f"{ns}:{{c:c-1}}:spend:day:20250102"


async def test_concurrent_applies_get_unique_versions(
    settings: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    results = await asyncio.gather(
        *(
            store.apply_campaigns(settings, aredis, [variant(2 * i), variant(2 * i + 1)], announce=False)
            for i in range(8)
        )
    )
    versions = sorted(c.version for r in results for c in r.applied)
    assert versions == list(range(1, 17))
    stream_order = [int(e["version"]) for e in stream_entries(redis_client, settings.keys.campaign_changes())]
    assert stream_order == versions  # every version once, increasing in stream order
    assert int(redis_client.get(settings.keys.campaigns_version()) or 0) == 16
    assert len(await store.list_campaigns(settings, aredis)) == 16


async def test_duplicate_ids_in_one_input_are_refused(
    settings: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    result = await store.apply_campaigns(settings, aredis, [variant(1), variant(1)], announce=False)
    assert [c.campaign_id for c in result.applied] == ["c-var-1"]
    assert [(r.item, r.campaign_id) for r in result.refused] == [(2, "c-var-1")]
    assert "appears more than once" in result.refused[0].problems[0]


async def test_nothing_is_written_when_kafka_is_unreachable(
    settings: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    offline = settings.with_(kafka="127.0.0.1:1")
    with pytest.raises(KafkaConnectionError):
        await store.apply_campaigns(offline, aredis, [variant(1)])
    assert redis_client.hlen(settings.keys.campaigns()) == 0
    assert not redis_client.exists(settings.keys.campaign_changes())


async def test_delete_keeps_spend_and_status_is_checked(
    settings: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    await store.apply_campaigns(settings, aredis, [variant(1)], announce=False)
    redis_client.set(settings.keys.spend_total("c-var-1"), 42)
    with pytest.raises(ValueError):
        await store.set_status(settings, aredis, "c-var-1", "stopped", announce=False)
    change = await store.delete_campaign(settings, aredis, "c-var-1", announce=False)
    assert (change.op, change.version, change.campaign) == ("delete", 2, None)
    assert await store.get_campaign(settings, aredis, "c-var-1") is None
    assert await store.campaign_spend(settings, aredis, "c-var-1", 0) == {
        "today_micros": 0,
        "total_micros": 42,
    }
    with pytest.raises(store.UnknownCampaign):
        await store.delete_campaign(settings, aredis, "c-var-1", announce=False)


async def test_policy_store(settings: Settings, stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis) -> None:
    from schemas.campaign import DEFAULT_POLICY

    assert await get_policy(settings, aredis) == DEFAULT_POLICY
    assert await get_policy_version(settings, aredis) == 0
    policy = dict(DEFAULT_POLICY, restricted_verticals=["gambling"])
    stored, version = await apply_policy(settings, aredis, policy)
    assert version == 1 and stored["restricted_verticals"] == ["gambling"]
    assert orjson.loads(redis_client.get(settings.keys.policy()) or b"") == stored
    assert await get_policy(settings, aredis) == stored
    assert (await apply_policy(settings, aredis, stored))[1] == 2
