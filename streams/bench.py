"""Stream roles' throughput on pre-filled topics: `python -m streams.bench [N]` prints JSON, and the
bench harness calls `billing_events_per_s(settings, n)` and `conversions_events_per_s(settings, n)`
(keys `billing_events_per_s`, `conversions_events_per_s` in bench-results.json).

The measurement runs under its own topic prefix and Redis namespace, derived from `settings`, and
removes both afterwards: it never writes into the stack it was given.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from core.kafka import BatchSender
from core.loop import Role
from core.metrics import Metrics
from core.redis_client import redis_from_url
from core.settings import Settings
from core.topics import delete_topics, ensure_topics
from streams.attribution import Attribution
from streams.billing import Billing
from streams.conversions import Conversions
from streams.runner import running

CAMPAIGNS = 1000


def isolated(settings: Settings) -> Settings:
    tag = f"bench{uuid.uuid4().hex[:8]}"
    return settings.with_(topic_prefix=f"{settings.topic_prefix}{tag}.", namespace=f"{settings.namespace}-{tag}", metrics_port=0)


def _impression(n: int, ts: int) -> bytes:
    campaign = f"c-{n % CAMPAIGNS}"
    return orjson.dumps(
        {
            "schema_version": 1, "impression_id": f"e-{n}:1", "event_id": f"e-{n}", "ts": ts + n // 10,
            "user_id": f"u-{n % 9973}", "session_id": f"s-{n % 9973}", "placement": "chat_inline", "slot": 1,
            "campaign_id": campaign, "advertiser_id": f"adv-{n % CAMPAIGNS}", "creative_id": f"{campaign}-1",
            "bid_type": "cpm", "bid_micros": 5_000_000, "price_micros": 4_010_000, "charge_micros": 4_010,
            "ecpm_micros": 5_000_000, "runner_up_ecpm_micros": 4_000_000, "reserve_cpm_micros": 0, "pctr": 0.01,
            "category": "IAB19-6",
        }
    )


async def prefill_impressions(settings: Settings, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, enable_idempotence=True, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        sender = BatchSender(producer)
        topic = settings.topic("ad.impressions")
        ts = int(time.time() * 1000)
        for start in range(0, n, 10_000):
            await sender.send((topic, f"e-{i}:1".encode(), _impression(i, ts)) for i in range(start, min(n, start + 10_000)))
        await producer.flush()
        # A fresh topic may refuse acks=all writes for a moment (NotEnoughReplicas, then retries):
        # let that happen here, not inside the measurement.
        ledger = settings.topic("billing.ledger")
        for partition in sorted(await producer.partitions_for(ledger)):
            await producer.send_and_wait(ledger, b"warm-up", partition=partition)
    finally:
        await producer.stop()


async def measure_billing(settings: Settings, n: int = 50_000, timeout_s: float = 300.0) -> float:
    """Events/s of one billing process over `n` pre-filled CPM impressions, from its first batch
    to the commit of its last (group join and prefill excluded)."""
    return await _measure(settings, n, "billing", timeout_s)


async def measure_attribution_ingest(settings: Settings, n: int = 50_000, timeout_s: float = 300.0) -> float:
    """Impressions/s one attribution process writes into its table (the join's steady cost)."""
    return await _measure(settings, n, "attribution", timeout_s)


def _click(n: int, ts: int) -> bytes:
    campaign = f"c-{n % CAMPAIGNS}"
    return orjson.dumps({"schema_version": 1, "click_id": f"k-{n}", "impression_id": f"e-{n}:1", "ts": ts + n // 10,
                         "user_id": f"u-{n % 9973}", "campaign_id": campaign, "advertiser_id": f"adv-{n % CAMPAIGNS}",
                         "charge_micros": 250_000})


def _conversion(n: int, ts: int) -> bytes:
    return orjson.dumps({"schema_version": 1, "conversion_id": f"o-{n}", "click_id": f"k-{n}", "ts": ts + n // 10 + 60_000,
                         "kind": "purchase", "value_micros": 20_000_000, "source": "in_chat"})


async def _fill(settings: Settings, topic: str, n: int, record: Callable[[int, int], bytes],
                key: Callable[[int], str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, enable_idempotence=True, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        sender = BatchSender(producer)
        physical = settings.topic(topic)
        ts = int(time.time() * 1000) - 3_600_000
        for start in range(0, n, 10_000):
            await sender.send((physical, key(i).encode(), record(i, ts)) for i in range(start, min(n, start + 10_000)))
        await producer.flush()
    finally:
        await producer.stop()


async def _until(metrics: Metrics, role: str, topic: str, count: int, timeout_s: float) -> float:
    """Seconds from the first record of `topic` in to `count` records committed by `role`."""
    first: float | None = None
    deadline = time.monotonic() + timeout_s
    while metrics.value("vickrey_records_committed_total", role=role) < count:
        if first is None and metrics.value("vickrey_records_in_total", role=role, topic=topic) > 0:
            first = time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{role} did not commit {count} records in {timeout_s} s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - (first or time.perf_counter() - 1e-9)


async def measure_conversions(settings: Settings, n: int = 50_000, timeout_s: float = 300.0) -> float:
    """Records/s of one conversions process: `n` pre-filled billable clicks (stored for lookup),
    then `n` conversions, one per click, produced once the clicks are in (so none waits for its
    click), each phase timed from its first record in to the commit of its last."""
    bench = isolated(settings)
    await ensure_topics(bench)
    try:
        await _fill(bench, "ad.clicks", n, _click, lambda i: f"e-{i}:1")
        metrics = Metrics()
        async with running(bench, [Conversions(bench, metrics)], metrics):
            clicks_s = await _until(metrics, "conversions", bench.topic("ad.clicks"), n, timeout_s)
            await _fill(bench, "ad.conversions.raw", n, _conversion, lambda i: f"k-{i}")
            conversions_s = await _until(metrics, "conversions", bench.topic("ad.conversions.raw"), 2 * n, timeout_s)
        return 2 * n / (clicks_s + conversions_s)
    finally:
        await _cleanup(bench)


async def _cleanup(bench: Settings) -> None:
    await delete_topics(bench)
    client = redis_from_url(bench.redis)
    keys = [key async for key in client.scan_iter(match=bench.keys.everything(), count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _measure(settings: Settings, n: int, role_name: str, timeout_s: float) -> float:
    bench = isolated(settings)
    await ensure_topics(bench)
    try:
        await prefill_impressions(bench, n)
        with tempfile.TemporaryDirectory() as state_dir:
            metrics = Metrics()
            role: Role
            if role_name == "billing":
                role = Billing(bench, metrics)
            else:
                role = Attribution(bench, metrics, state_dir=Path(state_dir))
            async with running(bench, [role], metrics):
                elapsed = await _until(metrics, role_name, bench.topic("ad.impressions"), n, timeout_s)
        return n / elapsed
    finally:
        await _cleanup(bench)


def billing_events_per_s(settings: Settings, n: int = 50_000) -> float:
    """Sync entry for the bench harness (runs its own event loop)."""
    return asyncio.run(measure_billing(settings, n))


def conversions_events_per_s(settings: Settings, n: int = 50_000) -> float:
    """Sync entry for the bench harness (runs its own event loop)."""
    return asyncio.run(measure_conversions(settings, n))


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    base = Settings.from_env()
    billing = billing_events_per_s(base, count)
    attribution = asyncio.run(measure_attribution_ingest(base, count))
    conversions = conversions_events_per_s(base, count)
    print(orjson.dumps({"billing_events_per_s": round(billing), "attribution_impressions_per_s": round(attribution),
                        "conversions_events_per_s": round(conversions), "n": count}).decode())
