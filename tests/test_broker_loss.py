"""Losing a broker of the three-broker cluster under load (docs/contract.md §9), end to end: the
auction worker, click attribution and billing run as `vickrey` processes while intents and clicks
stream in; the broker that leads most of the stack's partitions is SIGKILLed, then started again
(`BROKERS=3 bash ops/up.sh` restarts the missing one). Every intent is decided once, every
impression and every billable click is billed once, and Redis spend equals the ledger.

Runs only against the cluster (`make up BROKERS=3`, VICKREY_KAFKA naming its three brokers):
`.ci/run` starts it for the `cluster` tests after the single-broker suite."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer

from core.settings import Settings
from loadtests.failover import busiest_broker, cluster_running, kill_broker, restart_missing_broker
from tests.auction.factories import campaign_record
from tests.auction.test_worker import apply, live_intent, spend_total
from tests.kafka_helpers import produce_json, read_all, start_role, stop_role

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(not cluster_running(), reason="needs the three-broker cluster (make up BROKERS=3)"),
]


def campaigns() -> list[dict[str, Any]]:
    rng = random.Random(9)
    return [
        campaign_record(
            f"b{i}", advertiser_id=f"ba{i % 12}", bid_type="cpc" if i % 3 == 0 else "cpm",
            amount_micros=rng.randint(300_000, 6_000_000), pctr=0.02, keywords=[f"topic{i % 6}"],
            budget={"daily_micros": 10**11, "total_micros": 10**12},
        )
        for i in range(24)
    ]


async def click_on_cpc_impressions(settings: Settings, stop: asyncio.Event, clicked: dict[str, str]) -> None:
    """Follow ad.impressions and send a raw click for every other CPC impression, as people would."""
    consumer = AIOKafkaConsumer(settings.topic("ad.impressions"), bootstrap_servers=settings.kafka,
                                isolation_level="read_committed", auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        n = 0
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300)
            raws = []
            for records in batch.values():
                for record in records:
                    impression = orjson.loads(record.value)
                    if impression["bid_type"] == "cpc":
                        n += 1
                        if n % 2 == 0:
                            click_id = f"k-{impression['impression_id']}"
                            clicked[click_id] = impression["campaign_id"]
                            raws.append({"schema_version": 1, "click_id": click_id,
                                         "impression_id": impression["impression_id"],
                                         "ts": impression["ts"] + 500, "user_id": impression["user_id"]})
            if raws:
                await produce_json(settings, "ad.clicks.raw", raws, "impression_id")
    finally:
        await consumer.stop()


@pytest.mark.slow
async def test_losing_the_busiest_broker_loses_and_doubles_nothing(
    settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    records = campaigns()
    await apply(settings, records)
    total = 3000
    rng = random.Random(3)
    events = [live_intent(f"bl{i}", f"topic{rng.randrange(6)}", slots=rng.randint(1, 2), user_id=f"p{rng.randrange(500)}")
              for i in range(total)]
    worker = start_role(env, "auction", "--instance", "bl", log=tmp_path / "worker.log")
    streams = start_role(env, "streams", "attribution", "billing", "--port", "0", log=tmp_path / "streams.log")
    stop_clicking = asyncio.Event()
    clicked: dict[str, str] = {}
    clicker = asyncio.create_task(click_on_cpc_impressions(settings, stop_clicking, clicked))

    async def feed() -> None:  # a stream, so the kill lands mid-flow
        for start in range(0, total, 100):
            await produce_json(settings, "chat.intents", events[start : start + 100], "user_id")
            await asyncio.sleep(0.2)

    feeder = asyncio.create_task(feed())
    try:
        await asyncio.sleep(2.5)
        busiest, led = await busiest_broker(settings)
        kill_broker(busiest)
        killed_at = time.monotonic()
        await asyncio.sleep(3)
        await asyncio.to_thread(restart_missing_broker)
        restarted_after = time.monotonic() - killed_at
        await feeder
        decisions = await read_all(settings, "ad.decisions", total, timeout=180, settle=3)
        await asyncio.sleep(3)  # the last impressions' clicks
        stop_clicking.set()
        await clicker
        impressions = await read_all(settings, "ad.impressions", 0, timeout=30, settle=2)
        billable = await read_all(settings, "ad.clicks", len(clicked), timeout=120, settle=2)
        expected = {i["impression_id"] for i in impressions} | set(clicked)
        ledger = await read_all(settings, "billing.ledger", len(expected), timeout=180, settle=3)
    finally:
        stop_clicking.set()
        await asyncio.gather(feeder, clicker, return_exceptions=True)
        codes = stop_role(worker), stop_role(streams)
    assert codes == (0, 0), ((tmp_path / "worker.log").read_text()[-2000:], (tmp_path / "streams.log").read_text()[-2000:])

    per_event = Counter(d["event_id"] for d in decisions)
    assert set(per_event) == {e["event_id"] for e in events}, "an intent has no decision"
    assert max(per_event.values()) == 1, "an intent was decided twice"
    assert max(Counter(i["impression_id"] for i in impressions).values()) == 1, "an impression was published twice"
    assert sorted(c["click_id"] for c in billable) == sorted(clicked), "a click was lost or attributed twice"
    entries = Counter(e["entry_id"] for e in ledger)
    assert {k: n for k, n in entries.items() if n > 1} == {}, "billed twice"
    assert set(entries) == expected, f"not billed: {sorted(expected - set(entries))[:10]}"
    billed: Counter[str] = Counter()
    for entry in ledger:
        billed[entry["campaign_id"]] += entry["amount_micros"]
    for record in records:
        campaign_id = record["campaign_id"]
        assert spend_total(redis_client, settings, campaign_id) == billed[campaign_id], campaign_id
    assert led > 0, "the killed broker led none of the stack's partitions"
    print(f"broker {busiest} (leader of {led} partitions) killed; the cluster answered again {restarted_after:.1f} s later")
