"""Click attribution (and billing behind it) on a scripted stream: every invalid reason, a duplicate
billed once, an out-of-order click held and billed, and a table restored from Kafka elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from core.metrics import Metrics
from core.settings import Settings
from core.topics import ensure_topics
from schemas.codec import applied_control
from streams.attribution import Attribution
from streams.billing import Billing
from streams.runner import running
from tests.streams.kit import impression, now_ms, produce, raw_click, read_topic, wait_for

pytestmark = pytest.mark.integration
CPC_PRICE = 300_000


def budget(client: redis.Redis, settings: Settings, campaign_id: str, micros: int) -> None:
    client.hset(settings.keys.budget(campaign_id), mapping={"daily_micros": micros, "total_micros": micros})


async def test_every_reason_duplicate_billed_once_and_out_of_order_billed(
    topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = topics
    await ensure_topics(settings)
    budget(redis_client, settings, "c-cpc", 10_000_000)
    t = now_ms() - 60_000
    day_ago = now_ms() - 25 * 3600 * 1000
    impressions = [
        impression("e-a:1", "c-cpc", t, bid_type="cpc", price_micros=CPC_PRICE),
        impression("e-b:1", "c-cpc", t, bid_type="cpc", price_micros=CPC_PRICE),
        impression("e-c:1", "c-cpc", day_ago, bid_type="cpc", price_micros=CPC_PRICE),
        impression("e-d:1", "c-cpc", t, bid_type="cpc", price_micros=CPC_PRICE),
        impression("e-f:1", "c-cpm", t),
    ]
    await produce(settings, "ad.impressions", [(i["impression_id"], i) for i in impressions])
    clicks = [
        raw_click("k-a1", "e-a:1", t + 5_000),
        raw_click("k-a2", "e-a:1", t + 6_000),  # a second click on the same impression
        raw_click("k-a1", "e-a:1", t + 5_000),  # the first click sent again
        raw_click("k-b1", "e-b:1", t + 5_000, user_id="u-other"),
        raw_click("k-c1", "e-c:1", now_ms() - 1_000),
        raw_click("k-d1", "e-d:1", t + 50),
        raw_click("k-x1", "e-nowhere:1", t + 5_000),
        raw_click("k-f1", "e-f:1", t + 5_000),
    ]
    await produce(settings, "ad.clicks.raw", [(c["impression_id"], c) for c in clicks])
    await produce(settings, "ad.clicks.raw", [("junk", b"{not json")])

    metrics = Metrics()
    attribution = Attribution(settings, metrics, state_dir=tmp_path / "a", grace_s=3.0)
    billing = Billing(settings, metrics)
    async with running(settings, [attribution, billing], metrics):
        # The out-of-order click: sent before its impression, which follows once the click is held.
        clicked_at = now_ms()
        await produce(settings, "ad.clicks.raw", [("e-late:1", raw_click("k-late", "e-late:1", clicked_at))])
        await wait_for(
            lambda: any(h.impression_id == "e-late:1" for h in attribution.held.values()), what="the early click to be held"
        )
        late = impression("e-late:1", "c-cpc", clicked_at - 2_000, bid_type="cpc", price_micros=CPC_PRICE)
        await produce(settings, "ad.impressions", [("e-late:1", late)])
        valid = await read_topic(settings, "ad.clicks", expect=3)
        invalid = await read_topic(settings, "ad.clicks.invalid", expect=6)
        entries = await read_topic(settings, "billing.ledger", expect=6 + 3)
        dead = await read_topic(settings, "ad.clicks.raw.dlq", expect=1)

    assert sorted(c["click_id"] for c in valid) == ["k-a1", "k-f1", "k-late"]
    charges = {c["click_id"]: (c["campaign_id"], c["charge_micros"]) for c in valid}
    assert charges == {"k-a1": ("c-cpc", CPC_PRICE), "k-f1": ("c-cpm", 0), "k-late": ("c-cpc", CPC_PRICE)}
    reasons = sorted((c["click_id"], c["reason"]) for c in invalid)
    assert reasons == [
        ("k-a1", "duplicate"),
        ("k-a2", "duplicate"),
        ("k-b1", "user_mismatch"),
        ("k-c1", "expired"),
        ("k-d1", "too_fast"),
        ("k-x1", "unknown_impression"),
    ]
    assert len(dead) == 1 and "malformed JSON" in dead[0]["error"]
    click_entries = sorted((e["entry_id"], e["amount_micros"]) for e in entries if e["kind"] == "click")
    assert click_entries == [("k-a1", CPC_PRICE), ("k-f1", 0), ("k-late", CPC_PRICE)]
    assert len([e for e in entries if e["kind"] == "impression"]) == 6
    spent = int(redis_client.get(settings.keys.spend_total("c-cpc")) or 0)
    assert spent == 2 * CPC_PRICE


async def test_table_restored_from_kafka_on_another_host(topics: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """A process with an empty store (another machine) takes the partitions over: it rebuilds the
    impressions and the already-clicked impressions from Kafka before attributing."""
    settings = topics
    await ensure_topics(settings)
    t = now_ms() - 60_000
    await produce(settings, "ad.impressions", [(f"e-{n}:1", impression(f"e-{n}:1", "c-1", t + n)) for n in range(20)])
    await produce(settings, "ad.clicks.raw", [("e-0:1", raw_click("k-0", "e-0:1", t + 5_000))])
    first = Attribution(settings, Metrics(), state_dir=tmp_path / "host-1", grace_s=0.5)
    async with running(settings, [first]):
        assert len(await read_topic(settings, "ad.clicks", expect=1, settle_s=0.2)) == 1

    await produce(
        settings,
        "ad.clicks.raw",
        [("e-0:1", raw_click("k-0b", "e-0:1", t + 7_000)), ("e-7:1", raw_click("k-7", "e-7:1", t + 7_000))],
    )
    metrics = Metrics()
    second = Attribution(settings, metrics, state_dir=tmp_path / "host-2", grace_s=0.5)
    async with running(settings, [second], metrics):
        valid = await read_topic(settings, "ad.clicks", expect=2)
        invalid = await read_topic(settings, "ad.clicks.invalid", expect=1)
    assert metrics.value("vickrey_attribution_restored_total") >= 21  # 20 impressions + the billable click
    assert sorted(c["click_id"] for c in valid) == ["k-0", "k-7"]
    assert [(c["click_id"], c["reason"]) for c in invalid] == [("k-0b", "duplicate")]


async def test_forget_erases_the_persons_impressions_here_and_after_a_restore(
    topics: Settings, tmp_path: Path
) -> None:
    """A confirmed `forget` erases the person's impressions from the table (a later click of theirs
    is `unknown_impression`), and a process that rebuilds its table from Kafka elsewhere does not
    take them back; another person's impressions stay."""
    settings = topics
    await ensure_topics(settings)
    t = now_ms() - 60_000
    await produce(settings, "ad.impressions", [
        ("e-gone:1", impression("e-gone:1", "c-1", t, user_id="u-forget")),
        ("e-gone:2", impression("e-gone:2", "c-1", t, user_id="u-forget")),
        ("e-kept:1", impression("e-kept:1", "c-1", t, user_id="u-stays")),
    ])
    control = {"schema_version": 1, "user_id": "u-forget", "action": "forget", "ts": t + 1_000}
    metrics = Metrics()
    first = Attribution(settings, metrics, state_dir=tmp_path / "host-1", grace_s=0.5)
    async with running(settings, [first], metrics):
        # All three, not one: a forget applied before an impression of theirs is stored keeps that
        # impression out (it never counts as erased), and the partitions arrive in any order.
        await wait_for(lambda: first.store is not None and all(
            first.store.has_impression(i) for i in ("e-gone:1", "e-gone:2", "e-kept:1")), what="the impressions stored")
        await produce(settings, "user.controls.applied", [("u-forget", applied_control(control, 0, 0, t + 1_100))])
        await wait_for(lambda: metrics.value("vickrey_attribution_forgotten_total") == 2, what="the forget applied")
        assert first.store is not None
        assert not first.store.has_impression("e-gone:1") and first.store.has_impression("e-kept:1")
        await produce(settings, "ad.clicks.raw", [("e-gone:1", raw_click("k-gone", "e-gone:1", t + 5_000, "u-forget")),
                                                  ("e-kept:1", raw_click("k-kept", "e-kept:1", t + 5_000, "u-stays"))])
        invalid = await read_topic(settings, "ad.clicks.invalid", expect=1)
        valid = await read_topic(settings, "ad.clicks", expect=1)
    assert [(c["click_id"], c["reason"]) for c in invalid] == [("k-gone", "unknown_impression")]
    assert [c["click_id"] for c in valid] == ["k-kept"]

    second = Attribution(settings, Metrics(), state_dir=tmp_path / "host-2", grace_s=0.5)
    await produce(settings, "ad.clicks.raw", [("e-gone:2", raw_click("k-gone-2", "e-gone:2", t + 6_000, "u-forget"))])
    async with running(settings, [second]):
        invalid = await read_topic(settings, "ad.clicks.invalid", expect=2)
        assert second.store is not None and not second.store.has_impression("e-gone:2")
    assert sorted((c["click_id"], c["reason"]) for c in invalid) == [
        ("k-gone", "unknown_impression"), ("k-gone-2", "unknown_impression")]
