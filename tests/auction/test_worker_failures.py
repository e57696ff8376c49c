"""A worker whose Kafka commits fail now and then, in-process on the real Kafka and Redis: every
failed batch is consumed again from the committed offsets while the next batch is being gathered,
and still every event is decided once and charged once."""

from __future__ import annotations

import asyncio
import gc
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from auction.worker import AuctionWorker
from loadtests.stack import committed, end_offsets
from tests.auction.test_worker import apply, crash_campaigns, live_intent, spend_total
from tests.kafka_helpers import read_all, start_role, stop_role, wait_until
from vickrey.settings import Settings

pytestmark = pytest.mark.integration


async def test_failed_commits_are_consumed_again_and_lose_nothing(
    settings: Settings, topics: Settings, redis_client: redis.Redis
) -> None:
    rng = random.Random(7)
    campaigns = crash_campaigns()
    await apply(settings, campaigns)
    total = 3000
    events = [
        live_intent(f"flaky{i}", f"topic{rng.randrange(8)}", slots=rng.randint(1, 3), user_id=f"user{rng.randrange(200)}")
        for i in range(total)
    ]
    worker = AuctionWorker(settings, instance="flaky", batch_max=100)
    # The offsets step of these transactions fails, as a broker error would: aiokafka aborts the
    # transaction and the worker goes back to the committed offsets.
    fail_at, calls = {2, 3, 7, 12, 18}, Counter[str]()
    send_offsets = worker.producer.send_offsets_to_transaction

    async def flaky_send_offsets(offsets: Any, group_id: str) -> Any:
        calls["commits"] += 1
        if calls["commits"] in fail_at:
            calls["failed"] += 1
            raise KafkaError("injected: the offsets could not be added to the transaction")
        return await send_offsets(offsets, group_id)

    worker.producer.send_offsets_to_transaction = flaky_send_offsets  # type: ignore[method-assign]
    thresholds = gc.get_threshold()
    await worker.start()
    running = asyncio.create_task(worker.run())
    try:
        # A steady stream in bursts smaller than a part (PART_MIN): failures land while the next
        # batch is being gathered, with or without a part auctioned yet.
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=0)
        await producer.start()
        try:
            for start in range(0, total, 10):
                for event in events[start : start + 10]:
                    await producer.send(settings.topic("chat.intents"), orjson.dumps(event), key=event["user_id"].encode())
                await asyncio.sleep(0.005)
            await producer.flush()
        finally:
            await producer.stop()
        group, topic = settings.group("auction"), settings.topic("chat.intents")
        ends = await end_offsets(settings, topic)

        async def caught_up() -> bool:
            done = await committed(settings, group)
            return all(done.get(tp, 0) >= end for tp, end in ends.items())

        assert await wait_until(caught_up, timeout=120)
    finally:
        worker.stop_event.set()
        await running
        await worker.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)

    assert calls["failed"] == len(fail_at), calls
    decisions = await read_all(settings, "ad.decisions", total, timeout=60, settle=2)
    impressions = await read_all(settings, "ad.impressions", 0, timeout=10, settle=2)
    per_event = Counter(d["event_id"] for d in decisions)
    assert set(per_event) == {e["event_id"] for e in events}, "an event has no decision"
    assert max(per_event.values()) == 1, "an event was decided twice"
    assert max(Counter(i["impression_id"] for i in impressions).values()) == 1
    assert sum(len(d["ads"]) for d in decisions) == len(impressions)
    assert worker.metrics.replays.get() > 0  # failed batches came back from Redis's kept outcomes
    charged: Counter[str] = Counter()
    for impression in impressions:
        charged[impression["campaign_id"]] += impression["charge_micros"]
    for record in campaigns:
        assert spend_total(redis_client, settings, record["campaign_id"]) == charged[record["campaign_id"]], record["campaign_id"]


async def test_workers_joining_and_leaving_mid_stream_lose_and_double_nothing(
    settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Rebalances while a worker is busy (a commit in flight, the next batch being gathered):
    partitions move only between batches, and the busy worker goes on."""
    rng = random.Random(11)
    campaigns = crash_campaigns()
    await apply(settings, campaigns)
    total = 4000
    events = [
        live_intent(f"join{i}", f"topic{rng.randrange(8)}", slots=rng.randint(1, 3), user_id=f"user{rng.randrange(200)}")
        for i in range(total)
    ]
    worker = AuctionWorker(settings, instance="steady", batch_max=100)
    thresholds = gc.get_threshold()
    await worker.start()
    running = asyncio.create_task(worker.run())
    other = None
    try:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=0)
        await producer.start()
        try:
            for start in range(0, total, 10):
                if start == total // 4:
                    other = start_role(env, "auction", "--instance", "joiner", "--batch-max", "100", log=tmp_path / "joiner.log")
                if start == 3 * total // 4 and other is not None:
                    assert stop_role(other) == 0
                    other = None
                for event in events[start : start + 10]:
                    await producer.send(settings.topic("chat.intents"), orjson.dumps(event), key=event["user_id"].encode())
                await asyncio.sleep(0.005)
            await producer.flush()
        finally:
            await producer.stop()
        group, topic = settings.group("auction"), settings.topic("chat.intents")
        ends = await end_offsets(settings, topic)

        async def caught_up() -> bool:
            done = await committed(settings, group)
            return all(done.get(tp, 0) >= end for tp, end in ends.items())

        assert await wait_until(caught_up, timeout=120), "the worker stopped consuming"
    finally:
        if other is not None:
            stop_role(other)
        worker.stop_event.set()
        await asyncio.wait_for(running, 60)
        await worker.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)

    decisions = await read_all(settings, "ad.decisions", total, timeout=60, settle=2)
    per_event = Counter(d["event_id"] for d in decisions)
    assert set(per_event) == {e["event_id"] for e in events}, "an event has no decision"
    assert max(per_event.values()) == 1, "an event was decided twice"
    impressions = await read_all(settings, "ad.impressions", 0, timeout=10, settle=2)
    charged: Counter[str] = Counter()
    for impression in impressions:
        charged[impression["campaign_id"]] += impression["charge_micros"]
    for record in campaigns:
        assert spend_total(redis_client, settings, record["campaign_id"]) == charged[record["campaign_id"]], record["campaign_id"]
