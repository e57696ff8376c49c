"""`vickrey reconcile` (vickrey/reconcile.py): Redis rebuilt from Kafka, against real Kafka and Redis.

The records are produced here by hand, as billing and the worker would have written them, so
that each rule is checked on its own: spend = ledger + impressions billing has not reached,
today apart from the total, a counter only ever raised, budgets and campaigns put back, and a
click that waits for reconcile instead of being billed as an overdelivery of 0."""

from __future__ import annotations

import subprocess
from typing import Any

import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from core.clock import utc_day
from core.compacted import read_to_end
from core.metrics import Metrics
from core.redis_client import redis_from_url
from core.settings import Settings
from streams.billing import Billing
from streams.runner import running
from tests.auction.factories import campaign_record
from tests.auction.test_worker import apply
from tests.conftest import ROOT, _drop_namespace
from tests.streams.kit import click, impression, ledger, now_ms, produce, read_topic
from vickrey.reconcile import LEDGER_SOURCE, reconcile

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000
VICKREY = ROOT / ".venv" / "bin" / "vickrey"


async def run_reconcile(settings: Settings) -> dict[str, Any]:
    client = redis_from_url(settings.redis)
    try:
        return (await reconcile(settings, client)).to_json()
    finally:
        await client.aclose()


def spend(client: redis.Redis, settings: Settings, campaign_id: str, day: str) -> tuple[int, int]:
    return (int(client.get(settings.keys.spend_day(campaign_id, day)) or 0),
            int(client.get(settings.keys.spend_total(campaign_id)) or 0))


async def commit_billing_position(settings: Settings, partition_offsets: dict[int, int]) -> None:
    """Billing's committed offsets on ad.impressions, as its loop would have left them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=settings.group("billing"),
                                enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic("ad.impressions")
        consumer.assign([TopicPartition(topic, p) for p in partition_offsets])
        await consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in partition_offsets.items()})
    finally:
        await consumer.stop()


async def test_spend_is_the_ledger_plus_what_billing_has_not_reached(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics
    await apply(settings, [campaign_record("c1", budget={"daily_micros": 10**9, "total_micros": 10**10}),
                           campaign_record("c2", bid_type="cpc")])
    t = now_ms()
    today = utc_day(t)
    await produce(settings, "billing.ledger", [
        ("c1", ledger("e1:1", "impression", "c1", t, 1_500)),
        ("c1", ledger("e0:1", "impression", "c1", t - 2 * DAY_MS, 700)),  # not today: total only
        ("c2", ledger("k1", "click", "c2", t, 250_000)),
        ("c2", ledger("k2", "click", "c2", t, 0, overdelivery=True)),
    ])
    # Impressions: e1:1 is billed (in the ledger), e2:1 and e3:1 come after billing's position,
    # and e3:1 is billed all the same (billing moved on after the position was read).
    await produce(settings, "ad.impressions", [  # one key: one partition, in this order
        ("c1", impression("e1:1", "c1", t, price_micros=1_500_000)),
        ("c1", impression("e2:1", "c1", t, price_micros=2_000_000)),
        ("c1", impression("e3:1", "c1", t, price_micros=3_000_000)),
    ])
    await produce(settings, "billing.ledger", [("c1", ledger("e3:1", "impression", "c1", t, 3_000))])
    landed = [record async for records in read_to_end(settings, "ad.impressions") for record in records]
    # billing has made entries of the first impression only
    await commit_billing_position(settings, {landed[0].partition: landed[0].offset + 1})
    _drop_namespace(settings)  # Redis loses everything

    report = await run_reconcile(settings)

    assert spend(redis_client, settings, "c1", today) == (1_500 + 3_000 + 2_000, 700 + 1_500 + 3_000 + 2_000)
    assert spend(redis_client, settings, "c2", today) == (250_000, 250_000)
    assert redis_client.hgetall(settings.keys.budget("c1")) == {b"daily_micros": b"1000000000",
                                                               b"total_micros": b"10000000000"}
    assert set(redis_client.hkeys(settings.keys.campaigns())) == {b"c1", b"c2"}
    changes = redis_client.xrange(settings.keys.campaign_changes())
    assert sorted(fields[b"campaign_id"] for _, fields in changes) == [b"c1", b"c2"]
    assert report["budgets_restored"] == 2 and report["campaigns_restored"] == 2
    assert report["ledger_entries_read"] == 5 and report["unbilled_impressions"] == 1
    assert report["spend_raised_micros"] == {"today": 1_500 + 3_000 + 2_000 + 250_000,
                                             "total": 700 + 1_500 + 3_000 + 2_000 + 250_000}
    # The billed clicks are remembered: the same click_id from another record is a duplicate.
    kept = redis_client.get(settings.keys.billed("c2", "k1"))
    assert kept == f"{LEDGER_SOURCE}\n250000\n0".encode()
    assert redis_client.exists(settings.keys.reconciled())

    again = await run_reconcile(settings)  # idempotent
    assert spend(redis_client, settings, "c1", today) == (6_500, 7_200)
    assert again["budgets_restored"] == 0 and again["campaigns_restored"] == 0
    assert again["spend_raised_micros"] == {"today": 0, "total": 0} and again["clicks_remembered"] == 0


async def test_a_counter_is_only_ever_raised(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics
    await apply(settings, [campaign_record("hi"), campaign_record("lo")])
    t = now_ms()
    today = utc_day(t)
    await produce(settings, "billing.ledger", [("hi", ledger("a:1", "impression", "hi", t, 1_000)),
                                               ("lo", ledger("b:1", "impression", "lo", t, 1_000))])
    await commit_billing_position(settings, dict.fromkeys(range(settings.partitions), 0))
    # Workers reserved more than the ledger shows for `hi` (a batch in flight); `lo` lost some.
    redis_client.set(settings.keys.spend_total("hi"), 5_000)
    redis_client.set(settings.keys.spend_day("hi", today), 5_000)
    redis_client.set(settings.keys.spend_total("lo"), 400)

    report = await run_reconcile(settings)

    assert spend(redis_client, settings, "hi", today) == (5_000, 5_000)
    assert spend(redis_client, settings, "lo", today) == (1_000, 1_000)
    assert report["spend_raised_micros"] == {"today": 1_000, "total": 600}
    assert redis_client.ttl(settings.keys.spend_day("lo", today)) > 0, "a new day key must expire"


async def test_a_click_waits_for_reconcile_instead_of_billing_zero(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics
    await apply(settings, [campaign_record("cpc", bid_type="cpc", budget={"daily_micros": 10**9, "total_micros": 10**9})])
    _drop_namespace(settings)  # Redis lost everything, and nobody reconciled yet
    t = now_ms()
    async with running(settings, [Billing(settings, Metrics())]):
        await produce(settings, "ad.clicks", [("e:1", click("k-wait", "e:1", "cpc", t, 400_000))])
        assert await read_topic(settings, "billing.ledger", expect=1, timeout_s=4, settle_s=0) == [], \
            "billed before the budget was back"
        report = await run_reconcile(settings)
        assert report["budgets_restored"] == 1
        entries = await read_topic(settings, "billing.ledger", expect=1, timeout_s=60)
        # The same click_id from another record: billed once all the same.
        await produce(settings, "ad.clicks", [("e:1", click("k-wait", "e:1", "cpc", t, 400_000))])
        entries = await read_topic(settings, "billing.ledger", expect=1, timeout_s=5, settle_s=2)
    assert [(e["entry_id"], e["amount_micros"], e["overdelivery"]) for e in entries] == [("k-wait", 400_000, False)]
    assert int(redis_client.get(settings.keys.spend_total("cpc")) or 0) == 400_000


async def test_reconcile_command_prints_what_it_rebuilt(topics: Settings, env: dict[str, str]) -> None:
    await apply(topics, [campaign_record("shown")])
    _drop_namespace(topics)
    done = subprocess.run([str(VICKREY), "reconcile"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "campaigns: 1 on the topic, 1 put back, 1 budgets put back" in done.stdout
    as_json = subprocess.run([str(VICKREY), "reconcile", "--json"], env=env, capture_output=True, timeout=120,
                             check=False)
    assert as_json.returncode == 0 and orjson.loads(as_json.stdout)["campaigns_restored"] == 0


async def test_unreadable_records_are_skipped_and_counted(topics: Settings, redis_client: redis.Redis) -> None:
    """A record of ad.impressions or billing.ledger that is not a valid record (billing never bills
    such an impression) is no charge: reconcile counts it and goes on, rather than stop every
    role's start at it."""
    settings = topics
    await apply(settings, [campaign_record("c1", budget={"daily_micros": 10**9, "total_micros": 10**10})])
    t = now_ms()
    await produce(settings, "ad.impressions", [
        ("c1", impression("e1:1", "c1", t, price_micros=2_000_000)),
        ("c1", {"impression_id": "e2:1", "campaign_id": "c1", "charge_micros": 5}),  # no bid_type, ts, ...
        ("c1", b"{not json"),
    ])
    await produce(settings, "billing.ledger", [("c1", ledger("e0:1", "impression", "c1", t, 700)),
                                               ("c1", {"entry_id": "x", "amount_micros": "lots"})])
    _drop_namespace(settings)

    report = await run_reconcile(settings)

    assert report["unreadable_records"] == 3
    assert report["ledger_entries_read"] == 1 and report["unbilled_impressions"] == 1
    assert spend(redis_client, settings, "c1", utc_day(t)) == (700 + 2_000, 700 + 2_000)
