"""Redis is never the only copy (docs/contract.md §9): the trust policy and advertisers' API key
hashes are announced on their compacted topics (`policy`, `advertisers`) by the public functions,
and `restore_policy` / `restore_advertisers` put the topic's latest back into an emptied Redis,
exactly as it was, idempotently, never over newer data. Real Kafka and Redis; each test has its
own topic prefix and namespace."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka.errors import KafkaConnectionError

from core.compacted import read_latest
from core.settings import Settings
from schemas.campaign import DEFAULT_POLICY
from schemas.codec import decode
from tests.conftest import _drop_namespace
from vickrey import advertisers as adv
from vickrey.announce import AnnounceError, announce, start_producer
from vickrey.policy_store import apply_policy, get_policy, get_policy_version, restore_policy

pytestmark = pytest.mark.integration

STRICT_POLICY = {"sensitive_categories": ["IAB7", "IAB19"], "restricted_verticals": ["gambling"],
                 "blocked_safety_labels": ["hate"]}
LAX_POLICY: dict[str, list[str]] = {"sensitive_categories": [], "restricted_verticals": [], "blocked_safety_labels": []}
UNREACHABLE_KAFKA = "127.0.0.1:1"


def namespace_dump(client: redis.Redis, settings: Settings) -> dict[bytes, Any]:
    """Every key of the test's namespace with its value (strings, hashes, sets) and its TTL state."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(match=settings.keys.everything(), count=1000):
        kind: Any = client.type(key)
        value: Any = kind
        if kind == b"string":
            value = client.get(key)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"set":
            value = client.smembers(key)
        out[key] = (kind, value, client.ttl(key) == -1)
    return out


def emptied(client: redis.Redis, settings: Settings) -> None:
    """The namespace emptied, as a Redis loss leaves it."""
    _drop_namespace(settings)
    assert namespace_dump(client, settings) == {}


# ---- the policy -------------------------------------------------------------------------------------


async def test_the_policy_comes_back_exactly_and_once(
    stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    settings = stack
    await apply_policy(settings, aredis, LAX_POLICY)
    stored, version = await apply_policy(settings, aredis, STRICT_POLICY)
    assert version == 2
    latest = await read_latest(settings, "policy")
    assert set(latest) == {b"policy"}
    assert decode("policy", latest[b"policy"]) == {"schema_version": 1, "version": 2, "policy": stored}
    before = namespace_dump(redis_client, settings)
    assert set(before) == {settings.keys.policy().encode(), settings.keys.policy_version().encode()}

    emptied(redis_client, settings)
    assert await get_policy(settings, aredis) == DEFAULT_POLICY  # what a loss would put in force
    assert await restore_policy(settings, aredis, latest) is True
    assert namespace_dump(redis_client, settings) == before
    assert await restore_policy(settings, aredis, latest) is False  # twice changes nothing
    assert namespace_dump(redis_client, settings) == before
    assert await restore_policy(settings, aredis, {}) is False  # an empty topic restores nothing


async def test_restore_never_overwrites_a_newer_policy(stack: Settings, aredis: aioredis.Redis) -> None:
    settings = stack
    await apply_policy(settings, aredis, LAX_POLICY)
    old = await read_latest(settings, "policy")
    newer, version = await apply_policy(settings, aredis, STRICT_POLICY)
    assert await restore_policy(settings, aredis, old) is False
    assert (await get_policy(settings, aredis), await get_policy_version(settings, aredis)) == (newer, version)


async def test_after_a_loss_versions_continue_from_the_topic(
    stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    """A policy applied to an emptied Redis (before any restore) is version 3, not 1: the older
    copy on the topic can then never pass for newer than it."""
    settings = stack
    await apply_policy(settings, aredis, LAX_POLICY)
    await apply_policy(settings, aredis, LAX_POLICY)
    before_loss = await read_latest(settings, "policy")
    emptied(redis_client, settings)
    stored, version = await apply_policy(settings, aredis, STRICT_POLICY)
    assert version == 3
    assert decode("policy", (await read_latest(settings, "policy"))[b"policy"])["version"] == 3
    assert await restore_policy(settings, aredis, before_loss) is False  # a restore that read before it
    assert await get_policy(settings, aredis) == stored


async def test_an_unreachable_kafka_stores_no_policy(settings: Settings, aredis: aioredis.Redis,
                                                     redis_client: redis.Redis) -> None:
    with pytest.raises(KafkaConnectionError):
        await apply_policy(settings.with_(kafka=UNREACHABLE_KAFKA), aredis, STRICT_POLICY)
    assert namespace_dump(redis_client, settings) == {}


async def test_a_failed_announcement_says_what_is_stored_and_what_is_not(stack: Settings) -> None:
    producer = await start_producer(stack, ["policy"])
    try:
        with pytest.raises(AnnounceError) as failed:  # a record Kafka refuses (over max.request.size)
            await announce(stack, producer, "policy", [(b"policy", b"x" * (2 << 20))], stored="policy version 9")
    finally:
        await producer.stop()
    words = str(failed.value)
    assert "policy version 9 is stored in Redis and in force" in words
    assert f"announcing it on Kafka topic {stack.topic('policy')}" in words and "only copy" in words


# ---- advertisers and their API key hashes ---------------------------------------------------------------


async def test_advertisers_and_key_hashes_come_back_exactly_and_once(
    stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    settings = stack
    first, key1 = await adv.create_advertiser(settings, aredis, "Kept Copy Co")
    second, key2 = await adv.create_advertiser(settings, aredis, "Other Copy Co")
    key3 = await adv.add_key(settings, aredis, first.advertiser_id)

    latest = await read_latest(settings, "advertisers")
    assert set(latest) == {first.advertiser_id.encode(), second.advertiser_id.encode()}
    for raw in latest.values():
        assert raw is not None
        for key in (key1, key2, key3):
            assert key.encode() not in raw  # only hashes go to Kafka
    assert decode("advertisers", latest[first.advertiser_id.encode()]) == {
        "schema_version": 1, "advertiser": orjson.loads(first.to_json()),
        "key_hashes": sorted([adv.hash_key(key1), adv.hash_key(key3)]),
    }
    assert decode("advertisers", latest[second.advertiser_id.encode()])["key_hashes"] == [adv.hash_key(key2)]
    before = namespace_dump(redis_client, settings)

    emptied(redis_client, settings)
    assert await adv.authenticate(settings, aredis, key1) is None
    assert await adv.restore_advertisers(settings, aredis, latest) == 2
    assert namespace_dump(redis_client, settings) == before
    for key, owner in ((key1, first), (key2, second), (key3, first)):
        assert await adv.authenticate(settings, aredis, key) == owner
    assert await adv.restore_advertisers(settings, aredis, latest) == 0  # twice changes nothing
    assert namespace_dump(redis_client, settings) == before


async def test_restore_fills_in_only_what_redis_lacks(
    stack: Settings, aredis: aioredis.Redis, redis_client: redis.Redis
) -> None:
    settings = stack
    advertiser, key1 = await adv.create_advertiser(settings, aredis, "Partial Co")
    key2 = await adv.add_key(settings, aredis, advertiser.advertiser_id)
    latest = await read_latest(settings, "advertisers")
    before = namespace_dump(redis_client, settings)
    redis_client.hdel(settings.keys.advertisers(), adv.hash_key(key2))  # one key hash lost
    assert await adv.restore_advertisers(settings, aredis, latest) == 1
    assert namespace_dump(redis_client, settings) == before


async def test_every_key_change_publishes_the_full_list(stack: Settings, aredis: aioredis.Redis) -> None:
    settings = stack
    advertiser, key = await adv.create_advertiser(settings, aredis, "Many Keys Co")
    keys = [key, *[await adv.add_key(settings, aredis, advertiser.advertiser_id) for _ in range(3)]]
    latest = await read_latest(settings, "advertisers")
    record = decode("advertisers", latest[advertiser.advertiser_id.encode()])
    assert record["key_hashes"] == sorted(adv.hash_key(k) for k in keys)
    assert record["key_hashes"] == await adv.key_hashes(settings, aredis, advertiser.advertiser_id)


async def test_an_unreachable_kafka_creates_no_advertiser(settings: Settings, aredis: aioredis.Redis,
                                                          redis_client: redis.Redis) -> None:
    with pytest.raises(KafkaConnectionError):
        await adv.create_advertiser(settings.with_(kafka=UNREACHABLE_KAFKA), aredis, "Nowhere Co")
    assert namespace_dump(redis_client, settings) == {}
