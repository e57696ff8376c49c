"""Advertisers only ever see aggregates (docs/contract.md §4b, §8): run the whole pipeline on a chat
stream whose user and session ids are unique markers, with in-chat purchases and posted conversions
of some clicks, then scan everything advertiser-facing — the reports topic, the conversions topics,
the reporting HTTP endpoints, the advertiser API and the Redis report windows — for every one of
those ids."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from core.redis_client import redis_from_url
from core.settings import Settings
from tests.auction.factories import campaign_record, intent
from tests.auction.test_worker import apply
from tests.kafka_helpers import produce_json, read_all, start_role, stop_role
from vickrey.advertisers import create_advertiser
from vickrey.api import create_app
from vickrey.api.ratelimit import RateLimit
from vickrey.client import ChatAdsClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_nothing_advertiser_facing_carries_a_person(
    settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex[:8]
    users = [f"person-{marker}-{i}" for i in range(30)]
    sessions = [f"chat-{marker}-{i}" for i in range(30)]
    client = redis_from_url(settings.redis)
    advertiser, key = await create_advertiser(settings, client, "Aggregates Co")
    advertiser_id = advertiser.advertiser_id
    await apply(settings, [campaign_record("agg-1", advertiser_id=advertiser_id, amount_micros=3_000_000)])

    report_port = 18000 + int(marker[:3], 16) % 1000
    pipeline = start_role(env, "run", log=tmp_path / "run.log")
    streams_http = start_role(env, "streams", "reporting", "--port", str(report_port), log=tmp_path / "http.log")
    try:
        now = int(time.time() * 1000)
        events = []
        for i in range(120):
            record = intent(f"agg-{marker}-{i}", keywords=["laptop"])
            record.update(ts=now, user_id=users[i % 30], session_id=sessions[i % 30])
            events.append(record)
        await produce_json(settings, "chat.intents", events, "user_id")
        impressions = await read_all(settings, "ad.impressions", len(events), timeout=60)
        clicks = [
            {"click_id": f"clk-{marker}-{n}", "impression_id": imp["impression_id"], "ts": imp["ts"] + 1000, "user_id": imp["user_id"]}
            for n, imp in enumerate(impressions[:20])
        ]
        await produce_json(settings, "ad.clicks.raw", clicks, "impression_id")
        ledger = await read_all(settings, "billing.ledger", len(impressions) + len(clicks), timeout=60)
        assert len(ledger) == len(impressions) + len(clicks)
        billable = await read_all(settings, "ad.clicks", len(clicks), timeout=30)
        async with ChatAdsClient(settings) as chat:
            for n, click in enumerate(billable[:10]):
                await chat.report_purchase(click["click_id"], f"order-{marker}-{n}", value_micros=12_000_000)

        # Advertiser-facing outputs, gathered while the current minute's window is still open.
        facing: list[bytes] = []
        async with ClientSession() as http:
            for path in ("/reports/campaigns", "/reports/campaigns/agg-1"):
                async with http.get(f"http://127.0.0.1:{report_port}{path}") as response:
                    assert response.status == 200
                    facing.append(await response.read())
        api = TestClient(TestServer(create_app(settings, rate_limit=RateLimit(rate_per_s=1000.0, burst=1000))))
        await api.start_server()
        try:
            headers = {"Authorization": f"Bearer {key}"}
            posted = [{"conversion_id": f"signup-{marker}-{n}", "click_id": click["click_id"], "kind": "signup"}
                      for n, click in enumerate(billable[10:12])]
            for _ in range(100):  # the conversions role stores the clicks as it reads them
                if await client.exists(*(settings.keys.click(c["click_id"]) for c in billable[10:12])) == 2:
                    break
                await asyncio.sleep(0.1)
            response = await api.post("/v1/conversions", headers=headers, data=orjson.dumps(posted))
            assert response.status == 202, await response.text()
            facing.append(await response.read())
            conversions = await read_all(settings, "ad.conversions", 12, timeout=30)
            assert len(conversions) == 12
            facing += [orjson.dumps(r) for r in conversions]
            facing += [orjson.dumps(r) for r in await read_all(settings, "ad.conversions.invalid", 0, timeout=2)]
            await asyncio.sleep(2)  # reporting rewrites the open minute about every second
            for path in ("/v1/campaigns", "/v1/campaigns/agg-1", "/v1/campaigns/agg-1/report"):
                response = await api.get(path, headers=headers)
                assert response.status == 200, path
                facing.append(await response.read())
        finally:
            await api.close()
        windows = redis_client.hgetall(settings.keys.minutes("agg-1"))
        assert windows, "reporting wrote no minute windows"
        facing += list(windows.values())
        facing += [orjson.dumps(r) for r in await read_all(settings, "reports.campaign-minute", 0, timeout=3)]
    finally:
        stop_role(streams_http)
        assert stop_role(pipeline) == 0
        await client.aclose()

    blob = b"\n".join(facing)
    assert b"agg-1" in blob and b'"impressions"' in blob  # we did scan real report data
    assert b'"conversions":12' in blob  # ... and the conversions, counted in the report
    for person_id in users + sessions:
        assert person_id.encode() not in blob, f"{person_id} leaked into advertiser-facing output"
    assert b"user_id" not in blob and b"session_id" not in blob
