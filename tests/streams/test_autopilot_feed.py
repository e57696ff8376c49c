"""The autopilot-feed role (streams/autopilot_feed.py) on its loop: impressions and billable clicks of
autopilot campaigns counted per window and keyword onto autopilot.feed, nothing for manual
campaigns, and empty windows (ticks) for an autopilot campaign without traffic."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import redis

from core.metrics import Metrics
from core.settings import Settings
from schemas.codec import validate
from streams.autopilot_feed import AutopilotFeed
from streams.runner import running
from tests.streams.kit import click, impression, now_ms, produce, read_topic
from tests.streams.test_autopilot import auto_campaign, store_campaigns
from tests.streams.test_autopilot_live import RIVAL

pytestmark = pytest.mark.integration


def keyworded(record: dict[str, Any], matched: list[str], intent: list[str]) -> dict[str, Any]:
    record.update(matched_keywords=matched, intent_keywords=intent)
    return record


async def test_windows_per_campaign_and_keyword(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics.with_(autopilot_decide_every_s=2)  # windows of 1 s
    await store_campaigns(settings, [auto_campaign("volt-auto"), auto_campaign("quiet-auto"), RIVAL])
    start = now_ms() - 20_000
    start -= start % 1000
    imps = [
        keyworded(impression("e-1:1", "volt-auto", start + 100, bid_type="cpc", price_micros=300_000),
                  ["power bank"], ["slim power bank"]),
        keyworded(impression("e-2:1", "volt-auto", start + 200, bid_type="cpc", price_micros=0),
                  ["power bank", "slim power bank"], ["slim power bank"]),
        keyworded(impression("e-3:1", "volt-auto", start + 300, bid_type="cpc", price_micros=200_000),
                  [], ["travel adapter", "plug"]),  # reached through a category
        keyworded(impression("e-4:1", "rival", start + 400, bid_type="cpc", price_micros=100_000),
                  ["power bank"], ["power bank"]),  # a manual campaign: not the autopilot's business
        keyworded(impression("e-5:1", "volt-auto", start + 1500, bid_type="cpc", price_micros=250_000),
                  ["power bank"], ["power bank"]),  # the next window
    ]
    clicks = [keyworded(click("k-1", "e-1:1", "volt-auto", start + 900, 300_000), ["power bank"], ["slim power bank"]),
              keyworded(click("k-3", "e-3:1", "volt-auto", start + 950, 200_000), [], ["travel adapter", "plug"])]
    for record in imps:
        validate("ad.impressions", record)
    for record in clicks:
        validate("ad.clicks", record)
    await produce(settings, "ad.impressions", [(i["impression_id"], i) for i in imps])
    await produce(settings, "ad.clicks", [(c["impression_id"], c) for c in clicks])

    metrics = Metrics()
    async with running(settings, [AutopilotFeed(settings, metrics)], metrics):
        found = await read_topic(settings, "autopilot.feed", expect=8, timeout_s=60, settle_s=2)
    for record in found:
        validate("autopilot.feed", record)
    assert {r["campaign_id"] for r in found} == {"volt-auto", "quiet-auto"}

    # Summed over the input partitions (each counts its own records), per window.
    totals: dict[tuple[str, int], dict[str, Any]] = defaultdict(lambda: {
        "impressions": 0, "clicks": 0, "spend_micros": 0, "price_sum_micros": 0, "priced_impressions": 0,
        "all_prices_micros": 0, "keywords": defaultdict(lambda: [0, 0, 0]), "via": defaultdict(lambda: [0, 0])})
    for record in found:
        total = totals[(record["campaign_id"], record["window_start"])]
        for key in ("impressions", "clicks", "spend_micros", "price_sum_micros", "priced_impressions",
                    "all_prices_micros"):
            total[key] += record[key]
        for item in record["keywords"]:
            total["keywords"][item["keyword"]][0] += item["impressions"]
            total["keywords"][item["keyword"]][1] += item["clicks"]
            total["keywords"][item["keyword"]][2] += item["spend_micros"]
        for item in record["via_category"]:
            total["via"][item["keyword"]][0] += item["impressions"]
            total["via"][item["keyword"]][1] += item["clicks"]
    first = totals[("volt-auto", start)]
    assert (first["impressions"], first["clicks"], first["spend_micros"]) == (3, 2, 500_000)
    assert (first["price_sum_micros"], first["priced_impressions"], first["all_prices_micros"]) == (500_000, 2, 500_000)
    assert dict(first["keywords"]) == {"power bank": [2, 1, 300_000], "slim power bank": [1, 0, 0]}
    assert dict(first["via"]) == {"travel adapter": [1, 1], "plug": [1, 1]}
    second = totals[("volt-auto", start + 1000)]
    assert (second["impressions"], dict(second["keywords"])) == (1, {"power bank": [1, 0, 0]})
    # The quiet campaign still hears the clock: empty windows, from the first partition only.
    quiet = [r for r in found if r["campaign_id"] == "quiet-auto"]
    assert quiet and all(r["impressions"] == r["clicks"] == 0 and not r["keywords"] for r in quiet)
    assert len({r["window_start"] for r in quiet}) == len(quiet)
