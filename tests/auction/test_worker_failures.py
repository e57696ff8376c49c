"""Workers under failure and change, in-process on the real Kafka and Redis: commits that fail
mid-stream (the batch is consumed again from the committed offsets while the next is being
gathered) and workers joining and leaving while a commit is in flight. Every event is still
decided once and charged once."""

from __future__ import annotations

import asyncio
import gc
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from auction.worker import AuctionWorker
from core.settings import Settings
from loadtests.stack import committed, end_offsets
from tests.auction.test_worker import apply, assert_once_each, crash_campaigns, live_intent
from tests.kafka_helpers import read_all, start_role, stop_role, wait_until

pytestmark = pytest.mark.integration


def stream_events(prefix: str, total: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        live_intent(f"{prefix}{i}", f"topic{rng.randrange(8)}", slots=rng.randint(1, 3), user_id=f"user{rng.randrange(200)}")
        for i in range(total)
    ]


@asynccontextmanager
async def running(worker: AuctionWorker) -> AsyncIterator[None]:
    """The worker in this process, run until the block ends (its GC settings undone after)."""
    thresholds = gc.get_threshold()
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop_event.set()
        await asyncio.wait_for(task, 60)
        await worker.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def feed_and_catch_up(settings: Settings, events: list[dict[str, Any]],
                            at: Callable[[int], Awaitable[None]] | None = None) -> None:
    """A steady stream in bursts of 10, smaller than a part (PART_MIN), so that failures and
    rebalances land while a batch is being gathered; `at(i)` runs before event i's burst. Then
    until the group has committed every offset."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=0)
    await producer.start()
    try:
        for start in range(0, len(events), 10):
            if at is not None:
                await at(start)
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

    assert await wait_until(caught_up, timeout=120), "the workers stopped consuming"


async def read_outputs(settings: Settings, total: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    decisions = await read_all(settings, "ad.decisions", total, timeout=60, settle=2)
    return decisions, await read_all(settings, "ad.impressions", 0, timeout=10, settle=2)


async def test_failed_commits_are_consumed_again_and_lose_nothing(
    settings: Settings, topics: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaigns = crash_campaigns()
    await apply(settings, campaigns)
    events = stream_events("flaky", 3000, seed=7)
    worker = AuctionWorker(settings, instance="flaky", batch_max=100)
    # The offsets step of these transactions fails, as a broker error would: aiokafka aborts the
    # transaction and the worker goes back to the committed offsets.
    fail_at, calls = {2, 3, 7, 12, 18}, Counter[str]()
    send_offsets = AIOKafkaProducer.send_offsets_to_transaction

    async def flaky_send_offsets(producer: AIOKafkaProducer, offsets: Any, group_id: str) -> Any:
        calls["commits"] += 1
        if calls["commits"] in fail_at:
            calls["failed"] += 1
            raise KafkaError("injected: the offsets could not be added to the transaction")
        return await send_offsets(producer, offsets, group_id)

    # On the class: a failed commit replaces the loop's producer, and the new one fails too.
    monkeypatch.setattr(AIOKafkaProducer, "send_offsets_to_transaction", flaky_send_offsets)
    async with running(worker):
        await feed_and_catch_up(settings, events)

    assert calls["failed"] == len(fail_at), calls
    assert worker.metrics.value("vickrey_auction_replayed_total") > 0  # failed batches came back from Redis's kept outcomes
    assert_once_each(redis_client, settings, events, campaigns, *await read_outputs(settings, len(events)))


async def test_workers_joining_and_leaving_mid_stream_lose_and_double_nothing(
    settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Rebalances while a worker is busy (a commit in flight, the next batch being gathered):
    partitions move only between batches, and the busy worker goes on. (Before the batch lock
    stopped covering fetches that wait on a rebalance, this hung the busy worker.)"""
    campaigns = crash_campaigns()
    await apply(settings, campaigns)
    events = stream_events("join", 4000, seed=11)
    others: list[Any] = []

    async def join_then_leave(i: int) -> None:
        if i == len(events) // 4:
            others.append(start_role(env, "auction", "--instance", "joiner", "--batch-max", "100", log=tmp_path / "joiner.log"))
        if i == 3 * len(events) // 4:
            # The joiner must have joined (taken partitions) before it leaves, however slowly it started.
            joined = await wait_until(lambda: "partitions assigned" in (tmp_path / "joiner.log").read_text(), timeout=60)
            assert joined, "the joiner never took partitions: " + (tmp_path / "joiner.log").read_text()[-2000:]
            # In a thread: a blocking wait here would freeze the in-process worker's event loop
            # (no heartbeats) past its session timeout, and make it a zombie, not a leaver.
            assert await asyncio.to_thread(stop_role, others.pop()) == 0

    try:
        async with running(AuctionWorker(settings, instance="steady", batch_max=100)):
            await feed_and_catch_up(settings, events, at=join_then_leave)
    finally:
        for other in others:
            stop_role(other)
    assert_once_each(redis_client, settings, events, campaigns, *await read_outputs(settings, len(events)))
