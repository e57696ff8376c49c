"""The autopilot role on Faust (streams/autopilot.py), as `vickrey streams autopilot` runs it, fed
synthetic `autopilot.feed` windows so event time moves as fast as the test needs: decisions on
`campaigns.autopilot` and in the Redis history, one per version; after a SIGKILL the table comes
back from its changelog and no version is published twice."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from core.redis_client import redis_from_url
from core.settings import Settings
from schemas.codec import validate
from tests.kafka_helpers import read_all, start_role, stop_role, wait_until
from tests.streams.kit import produce
from vickrey.campaign_store import apply_campaigns

pytestmark = pytest.mark.integration

DECIDE_EVERY_S = 2
WINDOW_MS = 1000  # feed_window_ms(2)
DAY_START = 1_790_000_000_000 - 1_790_000_000_000 % 86_400_000  # a UTC midnight


def auto_campaign(campaign_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id, "advertiser_id": "adv-volt", "goal": {"type": "max_clicks"},
        "budget": {"daily_micros": 40_000_000, "total_micros": 400_000_000}, "targeting": {"auto": True},
        "vertical": "retail",
        "brief": "Slim power banks and fast USB-C chargers that keep a phone and a laptop going on a long flight.",
        "creatives": [{"creative_id": f"{campaign_id}-1", "title": "A power bank for every trip",
                       "body": "20,000 mAh, USB-C fast charging for phone and laptop.",
                       "url": "https://volt.example/pb", "cta": "Shop"}],
        **extra,
    }


def window(campaign_id: str, start: int, impressions: int = 0, clicks: int = 0, dud: str | None = None) -> dict[str, Any]:
    """A feed window: `impressions` won on "power bank" at 0.30 a click, with `clicks`; `dud`: a keyword
    that took as many impressions without a click."""
    keywords = []
    if impressions:
        keywords.append({"keyword": "power bank", "impressions": impressions, "clicks": clicks, "spend_micros": 0})
    if dud:
        keywords.append({"keyword": dud, "impressions": impressions, "clicks": 0, "spend_micros": 0})
    record = {
        "schema_version": 1, "campaign_id": campaign_id, "window_start": start, "window_end": start + WINDOW_MS,
        "impressions": impressions, "clicks": clicks, "spend_micros": 0,
        "price_sum_micros": impressions * 300_000, "priced_impressions": impressions,
        "all_prices_micros": impressions * 300_000, "keywords": keywords, "via_category": [],
    }
    validate("autopilot.feed", record)
    return record


async def feed(settings: Settings, windows: list[dict[str, Any]]) -> None:
    await produce(settings, "autopilot.feed", [(w["campaign_id"], w) for w in windows])


async def store_campaigns(settings: Settings, campaigns: list[dict[str, Any]]) -> None:
    """Store campaigns as `vickrey campaigns apply` does (no announcement); none may be refused."""
    client = redis_from_url(settings.redis)
    try:
        result = await apply_campaigns(settings, client, campaigns, announce=False)
        assert not result.refused, result.refused
    finally:
        await client.aclose()


def log_tail(log: Path) -> str:
    """The role's log for a failure message, without its start-up lines about topics that exist
    (two starts' worth of them filled the whole tail once, hiding what the role did)."""
    lines = [line for line in log.read_text().splitlines() if "already exists; left alone" not in line]
    return "\n".join(lines)[-3000:]


def autopilot_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "VICKREY_AUTOPILOT_DECIDE_EVERY_S": str(DECIDE_EVERY_S)}


async def test_decisions_published_once_per_version_across_a_sigkill(
    topics: Settings, redis_client: redis.Redis, env: dict[str, str], tmp_path: Path
) -> None:
    settings = topics
    await store_campaigns(settings, [auto_campaign("volt-auto")])
    stored = orjson.loads(redis_client.hget(settings.keys.campaigns(), "volt-auto") or b"{}")
    derived = {item["term"] for item in stored["targeting_derived"]["keywords"]}
    # Two derived keywords the traffic will show to be duds: one before the kill, one after.
    before, after = sorted(derived - {"power bank"})[:2]
    history_key = settings.keys.autopilot("volt-auto")

    def decided_dropping(keyword: str) -> bool:
        return any(keyword in orjson.loads(member)["keywords_removed"] for member in redis_client.zrange(history_key, 0, -1))

    log = tmp_path / "autopilot.log"
    role = start_role(autopilot_env(env), "streams", "autopilot", log=log)
    try:
        # 40 s of event time, a window a second (a decision is due every 2 s); `before` takes
        # impressions without a click, so learning drops it once it has had enough.
        hour = DAY_START + 8 * 3_600_000
        await feed(settings, [window("volt-auto", hour + n * WINDOW_MS, impressions=40, clicks=2, dud=before)
                              for n in range(40)])
        assert await wait_until(lambda: decided_dropping(before), timeout=90), \
            f"{before!r} not dropped within 90 s; the role's log:\n{log_tail(log)}"
        stop_role(role, signal.SIGKILL)  # mid-stream: what it had not committed is void

        role = start_role(autopilot_env(env), "streams", "autopilot", log=log)
        await feed(settings, [window("volt-auto", hour + n * WINDOW_MS, impressions=40, clicks=2, dud=after)
                              for n in range(40, 80)])
        assert await wait_until(lambda: decided_dropping(after), timeout=90), \
            f"{after!r} not dropped within 90 s of the restart; the role's log:\n{log_tail(log)}"
        await asyncio.sleep(2)  # the last transaction commits
    finally:
        stop_role(role)

    records = await read_all(settings, "campaigns.autopilot", expect=1, timeout=20)
    for record in records:
        validate("campaigns.autopilot", record)
    versions = [r["version"] for r in records]
    # No version twice, none skipped: the restarted role went on from its table's last version
    # (a pilot lost with the process would start again from 1).
    assert versions == list(range(1, len(versions) + 1)), versions
    # Each dud dropped once, with its reason, and never back: the first one's drop survived the kill.
    for dud in (before, after):
        dropped = [r for r in records if dud in r["keywords_removed"]]
        assert len(dropped) == 1, [r["reason"] for r in records]
        assert "no click in" in dropped[0]["reason"]
        assert all(dud not in r["keywords"] for r in records if r["version"] >= dropped[0]["version"])
    # The Redis history holds the same records, scored by version.
    history = redis_client.zrange(history_key, 0, -1, withscores=True)
    assert [(orjson.loads(member), int(score)) for member, score in history] == [(r, r["version"]) for r in records]
