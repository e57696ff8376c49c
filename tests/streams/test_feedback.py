"""CTR feedback: per-campaign counts in Redis, counted once even when the group's Kafka offsets are
rewound (Redis keeps the positions it counted up to)."""

from __future__ import annotations

import asyncio

import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition

from core.metrics import Metrics
from core.settings import Settings
from core.topics import ensure_topics
from streams.feedback import Feedback
from streams.runner import running
from tests.streams.kit import click, impression, now_ms, produce, wait_for

pytestmark = pytest.mark.integration


def ctr(client: redis.Redis, settings: Settings, campaign_id: str) -> tuple[int, int]:
    imps, clicks = client.hmget(settings.keys.ctr(campaign_id), ["impressions", "clicks"])
    return int(imps or 0), int(clicks or 0)


async def rewind_group(settings: Settings) -> None:
    """Commit offset 0 for every input partition, as if the last commits had been lost."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=settings.group("feedback"), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(settings.topic(t), p) for t in ("ad.impressions", "ad.clicks") for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()


async def test_counts_once_across_restarts(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics
    await ensure_topics(settings)
    t = now_ms()
    imps = [impression(f"e-{n}:1", "c-1" if n < 5 else "c-2", t + n) for n in range(8)]
    await produce(settings, "ad.impressions", [(i["impression_id"], i) for i in imps])
    await produce(settings, "ad.clicks", [(f"e-{n}:1", click(f"k-{n}", f"e-{n}:1", "c-1", t + 500, 0)) for n in range(2)])

    async with running(settings, [Feedback(settings, Metrics())]):
        await wait_for(lambda: ctr(redis_client, settings, "c-1") == (5, 2) and ctr(redis_client, settings, "c-2") == (3, 0))

    await rewind_group(settings)
    await produce(settings, "ad.impressions", [("e-9:1", impression("e-9:1", "c-2", t + 9))])
    metrics = Metrics()
    second = Feedback(settings, metrics)
    async with running(settings, [second], metrics):
        await wait_for(lambda: ctr(redis_client, settings, "c-2") == (4, 0), what="the new impression counted")
        await asyncio.sleep(1.0)  # anything counted twice would show by now
    assert ctr(redis_client, settings, "c-1") == (5, 2)
    assert ctr(redis_client, settings, "c-2") == (4, 0)
    assert metrics.value("vickrey_feedback_counted_total", kind="impression") == 1


async def test_counts_once_when_the_resume_positions_are_lost(topics: Settings, redis_client: redis.Redis) -> None:
    """The counts moved but where to resume did not (a crash between the two writes, on a cluster
    two slots): everything is read again from offset 0, and each campaign skips what it counted."""
    settings = topics
    t = now_ms()
    imps = [impression(f"e-{n}:1", "c-1" if n % 2 else "c-2", t + n) for n in range(10)]
    await produce(settings, "ad.impressions", [(i["impression_id"], i) for i in imps])
    async with running(settings, [Feedback(settings, Metrics())]):
        await wait_for(lambda: ctr(redis_client, settings, "c-1") == (5, 0) and ctr(redis_client, settings, "c-2") == (5, 0))

    redis_client.delete(settings.keys.feedback_positions())
    await rewind_group(settings)
    await produce(settings, "ad.clicks", [("e-1:1", click("k-1", "e-1:1", "c-1", t + 500, 0))])
    metrics = Metrics()
    async with running(settings, [Feedback(settings, metrics)], metrics):
        await wait_for(lambda: ctr(redis_client, settings, "c-1") == (5, 1), what="the new click counted")
        await asyncio.sleep(1.0)
    assert ctr(redis_client, settings, "c-1") == (5, 1) and ctr(redis_client, settings, "c-2") == (5, 0)
    assert metrics.value("vickrey_feedback_counted_total", kind="impression") == 0
    assert metrics.value("vickrey_feedback_counted_total", kind="click") == 1
