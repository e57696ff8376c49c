"""vickrey.client.ChatAdsClient on the real Kafka: decisions correlate by event_id (read_committed),
timeouts, the bounded waiter map, clicks. Decisions are produced here, standing in for the worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from core.settings import Settings
from loadtests.generator import IntentGenerator
from schemas.codec import RecordError
from tests.kafka_helpers import read_all
from vickrey.client import ChatAdsClient, DecisionTimeout

pytestmark = pytest.mark.integration


def decision_for(intent: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 1, "event_id": intent["event_id"], "session_id": intent["session_id"],
        "user_id": intent["user_id"], "placement": intent["placement"], "ts_event": intent["ts"],
        "ts_decided": int(time.time() * 1000), "ads": [], "no_fill_reason": "no_candidates",
    }


async def answer(settings: Settings, decisions: list[dict[str, Any]], transactional: bool = True) -> None:
    """Publish decisions the way the worker does: in a Kafka transaction."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, transactional_id=f"{settings.topic_prefix}fake-worker"
                                if transactional else None)
    await producer.start()
    try:
        async with producer.transaction():
            for d in decisions:
                await producer.send(settings.topic("ad.decisions"), orjson.dumps(d), key=d["session_id"].encode())
    finally:
        await producer.stop()


async def test_ask_gets_its_own_decision_and_ignores_others(topics: Settings) -> None:
    generator = IntentGenerator(seed=3)
    async with ChatAdsClient(topics) as client:
        mine, other = generator.next(), generator.next()
        task = asyncio.create_task(client.ask(mine, timeout_s=20))
        await asyncio.sleep(0.5)
        await answer(topics, [decision_for(other), decision_for(mine)])
        decision = await task
        assert decision["event_id"] == mine["event_id"]
        assert client.pending == 0


async def test_decision_arriving_before_the_await_is_kept(topics: Settings) -> None:
    async with ChatAdsClient(topics) as client:
        intent = IntentGenerator(seed=4).next()
        event_id = await client.publish_intent(intent)
        await answer(topics, [decision_for(intent)])
        await asyncio.sleep(1.0)  # the decision is read before anybody awaits it
        assert (await client.decision(event_id, timeout_s=10))["event_id"] == event_id


async def test_timeout_and_bounded_waiters(topics: Settings) -> None:
    async with ChatAdsClient(topics, max_pending=3) as client:
        generator = IntentGenerator(seed=5)
        started = time.monotonic()
        with pytest.raises(DecisionTimeout):
            await client.ask(generator.next(), timeout_s=0.3)
        assert time.monotonic() - started < 5
        assert client.pending == 0  # a timed-out waiter is dropped
        ids = [await client.publish_intent(generator.next()) for _ in range(3)]
        oldest = asyncio.create_task(client.decision(ids[0], timeout_s=30))
        await asyncio.sleep(0.1)
        for _ in range(2):
            await client.publish_intent(generator.next())
        assert client.pending == 3 and client.evicted == 2
        with pytest.raises(DecisionTimeout, match="evicted"):
            await asyncio.wait_for(oldest, 5)


async def test_invalid_intent_is_refused_before_publishing(topics: Settings) -> None:
    async with ChatAdsClient(topics) as client:
        intent = IntentGenerator(seed=6).next()
        intent["slots"] = 9
        with pytest.raises(RecordError, match="slots"):
            await client.publish_intent(intent)
        assert client.pending == 0


async def test_publish_click(topics: Settings) -> None:
    async with ChatAdsClient(topics) as client:
        click_id = await client.publish_click("e-1:1", "u-1")
    clicks = await read_all(topics, "ad.clicks.raw", expect=1, timeout=20, settle=0.2)
    assert [(c["click_id"], c["impression_id"], c["user_id"]) for c in clicks] == [(click_id, "e-1:1", "u-1")]
