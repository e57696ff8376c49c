"""The autopilot end to end, as `vickrey run` runs it: the auction worker, the stream roles (with
the autopilot's feed) and the autopilot, each its own process, real Kafka and Redis. An autopilot
campaign created from creatives and a brief wins intents through its derived keywords (phrase
match), its decisions appear on campaigns.autopilot as traffic flows, and the worker bids what
each decision says within 1 s of it."""

from __future__ import annotations

import asyncio
import bisect
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer

from core.settings import Settings
from tests.auction.factories import intent
from tests.kafka_helpers import start_role, stop_role
from tests.streams.kit import produce
from tests.streams.test_autopilot import auto_campaign, store_campaigns

pytestmark = pytest.mark.integration

RIVAL = {
    "campaign_id": "rival", "advertiser_id": "adv-rival", "bid": {"type": "cpc", "amount_micros": 150_000},
    "budget": {"daily_micros": 10**9, "total_micros": 10**10}, "targeting": {"keywords": ["power bank"]},
    "creatives": [{"creative_id": "rival-1", "title": "Chargers", "body": "Cheap chargers.",
                   "url": "https://rival.example/c", "cta": "Buy"}],
}
TRAFFIC_S = 30
RATE = 40  # intents a second


async def read_with_times(settings: Settings, topic: str) -> list[tuple[int, dict[str, Any]]]:
    """(Kafka timestamp ms, record) of every committed record of the logical `topic`."""
    consumer = AIOKafkaConsumer(settings.topic(topic), bootstrap_servers=settings.kafka, auto_offset_reset="earliest",
                                enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    found: list[tuple[int, dict[str, Any]]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                return sorted(found, key=lambda item: item[0])
            for records in batch.values():
                found += [(r.timestamp, orjson.loads(r.value)) for r in records if r.value is not None]
    finally:
        await consumer.stop()


async def test_the_worker_bids_what_the_autopilot_decides_within_a_second(
    topics: Settings, redis_client: redis.Redis, env: dict[str, str], tmp_path: Path
) -> None:
    settings = topics
    await store_campaigns(settings, [auto_campaign("volt-auto"), RIVAL])
    env = {**env, "VICKREY_AUTOPILOT_DECIDE_EVERY_S": "2"}
    roles = [start_role(env, *args, log=tmp_path / f"{'-'.join(args)}.log")
             for args in (("auction",), ("streams",), ("streams", "autopilot"))]
    try:
        # Intents whose keywords hold a derived keyword in a longer phrase ("slim power bank"), and
        # some of another product (no ad).
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < TRAFFIC_S:
            batch = []
            for _ in range(RATE // 10):
                sent += 1
                words, category = (["slim power bank"], "IAB19-6") if sent % 4 else (["espresso grinder"], "IAB8-6")
                batch.append((f"u-{sent % 50}", intent(f"e-{sent}", words, user_id=f"u-{sent % 50}",
                                                       ts=int(time.time() * 1000),
                                                       intent={"category": category, "keywords": words,
                                                               "confidence": 0.9})))
            await produce(settings, "chat.intents", batch)
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)
    finally:
        for role in roles:
            stop_role(role)
    logs = {path.name: path.read_text()[-2000:] for path in tmp_path.glob("*.log")}

    decisions = [record for _, record in await read_with_times(settings, "ad.decisions")]
    won = [d for d in decisions if d["ads"] and d["ads"][0]["campaign_id"] == "volt-auto"]
    assert won, f"the autopilot campaign won nothing; logs: {logs}"
    assert all("power bank" in d["ads"][0]["why"]["matched_keywords"] for d in won), \
        {tuple(d["ads"][0]["why"]["matched_keywords"]) for d in won}
    assert not [d for d in won if int(d["event_id"][2:]) % 4 == 0]  # the espresso grinder intents

    autopilot = await read_with_times(settings, "campaigns.autopilot")
    assert len(autopilot) >= 2, f"decisions: {autopilot}; logs: {logs}"
    versions = [record["version"] for _, record in autopilot]
    assert versions == sorted(set(versions)), versions
    bids = [(ts, record["bid"]["amount_micros"]) for ts, record in autopilot if record["bid"] is not None]
    assert len({bid for _, bid in bids}) >= 2, "the bid never changed"

    # Every impression of the campaign from 1 s after a decision until the next one carries its bid.
    impressions = [record for _, record in await read_with_times(settings, "ad.impressions")
                   if record["campaign_id"] == "volt-auto"]
    times = [ts for ts, _ in bids]
    checked = 0
    for impression in impressions:
        at = bisect.bisect_right(times, impression["ts"]) - 1
        if at < 0 or impression["ts"] < times[at] + 1000:
            continue  # before the first decision, or within a second of one
        assert impression["bid_micros"] == bids[at][1], (impression, bids)
        checked += 1
    assert checked >= 10, f"only {checked} impressions to check"
