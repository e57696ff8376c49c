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
from pathlib import Path
from typing import Any

import pytest
import redis

from core.settings import Settings
from loadtests.failover import busiest_broker, cluster_running, kill_broker, restart_missing_broker
from tests.auction.factories import campaign_record
from tests.auction.test_worker import apply, spend_total
from tests.streamed_pipeline import StreamedPipeline

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


@pytest.mark.slow
async def test_losing_the_busiest_broker_loses_and_doubles_nothing(
    settings: Settings, topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    records = campaigns()
    await apply(settings, records)
    pipeline = StreamedPipeline(settings, tmp_path, "bl", topics=6, people=500, seed=3)
    await pipeline.start_roles()
    pipeline.start_stream()
    try:
        await asyncio.sleep(2.5)
        busiest, led = await busiest_broker(settings)
        kill_broker(busiest)
        killed_at = time.monotonic()
        await asyncio.sleep(3)
        await asyncio.to_thread(restart_missing_broker)
        restarted_after = time.monotonic() - killed_at
        published = await pipeline.drain()
    finally:
        codes = await pipeline.stop()
    assert codes == (0, 0), pipeline.logs_tail()

    pipeline.assert_once_each(published)
    billed = published.billed()
    for record in records:
        campaign_id = record["campaign_id"]
        assert spend_total(redis_client, settings, campaign_id) == billed[campaign_id], campaign_id
    assert led > 0, "the killed broker led none of the stack's partitions"
    print(f"broker {busiest} (leader of {led} partitions) killed; the cluster answered again {restarted_after:.1f} s later")
