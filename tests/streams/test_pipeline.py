"""All the roles in one process, as `vickrey streams` runs them: raw clicks and impressions in,
ledger, report windows and CTR counts out."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from core.metrics import Metrics
from core.settings import Settings
from core.topics import ensure_topics
from streams.runner import ROLES, build_roles, running
from streams.windows import WINDOW_MS
from tests.streams.kit import impression, now_ms, produce, raw_click, read_topic, wait_for

pytestmark = pytest.mark.integration


async def test_all_roles_together(topics: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = topics
    await ensure_topics(settings)
    redis_client.hset(settings.keys.budget("c-cpc"), mapping={"daily_micros": 10**9, "total_micros": 10**9})
    now = now_ms()
    # This minute: reporting closes a window on wall time only past its end + the grace (10 s) when
    # idle, so the clicks (billed after attribution, within a second or two) land in it before it closes.
    start = now - now % WINDOW_MS
    imps = [impression(f"e-{n}:1", "c-cpc", start + 1000 + n, bid_type="cpc", price_micros=250_000) for n in range(10)]
    await produce(settings, "ad.impressions", [(i["impression_id"], i) for i in imps])
    await produce(settings, "ad.clicks.raw", [(f"e-{n}:1", raw_click(f"k-{n}", f"e-{n}:1", start + 5_000)) for n in range(4)])

    metrics = Metrics()
    roles = build_roles(settings, ROLES, metrics, report_port=0, state_dir=tmp_path)
    async with running(settings, roles, metrics):
        entries = await read_topic(settings, "billing.ledger", expect=10 + 4)
        ctr_key = settings.keys.ctr("c-cpc")
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
    assert metrics.value("vickrey_billing_ledger_entries_total", kind="impression") > 0
