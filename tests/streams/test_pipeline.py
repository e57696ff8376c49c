"""All four roles in one process, as `vickrey streams` runs them: raw clicks and impressions in,
ledger, report windows and CTR counts out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from streams.runner import ROLES, build_roles, ensure_stream_topics, running
from streams.windows import WINDOW_MS
from tests.streams.kit import impression, now_ms, produce, raw_click, read_topic, wait_for
from vickrey.metrics import Metrics
from vickrey.settings import Settings

pytestmark = pytest.mark.integration


async def test_all_roles_together(topics: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = topics
    await ensure_stream_topics(settings)
    redis_client.hset(settings.key("{c:c-cpc}", "budget"), mapping={"daily_micros": 10**9, "total_micros": 10**9})
    now = now_ms()
    start = now - now % WINDOW_MS - 3 * WINDOW_MS
    imps = [impression(f"e-{n}:1", "c-cpc", start + 1000 + n, bid_type="cpc", price_micros=250_000) for n in range(10)]
    await produce(settings, "ad.impressions", [(i["impression_id"], i) for i in imps])
    await produce(settings, "ad.clicks.raw", [(f"e-{n}:1", raw_click(f"k-{n}", f"e-{n}:1", start + 5_000)) for n in range(4)])

    registry = Metrics()
    roles = build_roles(settings, ROLES, registry, asyncio.Event(), report_port=0, state_dir=tmp_path)
    async with running(roles):
        entries = await read_topic(settings, "billing.ledger", expect=10 + 4)
        ctr_key = settings.key("{c:c-cpc}", "ctr")
        await wait_for(lambda: redis_client.hmget(ctr_key, ["impressions", "clicks"]) == [b"10", b"4"], what="CTR counts")
        # A later impression of the campaign (same ledger partition) moves event time past the window.
        closer = impression("e-closer:1", "c-cpc", start + 2 * WINDOW_MS, bid_type="cpc", price_micros=250_000)
        await produce(settings, "ad.impressions", [("e-closer:1", closer)])
        reports = await read_topic(settings, "reports.campaign-minute", expect=1)

    assert sorted(e["entry_id"] for e in entries if e["kind"] == "click") == ["k-0", "k-1", "k-2", "k-3"]
    assert sum(e["amount_micros"] for e in entries) == 4 * 250_000
    assert [(r["window_start"], r["impressions"], r["clicks"], r["spend_micros"]) for r in reports] == [
        (start, 10, 4, 1_000_000)
    ]
    assert "vickrey_streams_billing_ledger_entries_total" in registry.render()
