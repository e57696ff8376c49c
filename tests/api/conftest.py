"""Fixtures of the API tests: the real app (aiohttp TestServer) on this test's Redis namespace and topic
prefix, advertisers with keys, and helpers that write reporting's minute windows and the autopilot's
decisions into Redis."""

from __future__ import annotations

import copy
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from core.clock import utc_day
from core.redis_client import redis_from_url
from core.settings import Settings
from core.topics import delete_topics
from tests.conftest import ROOT
from tests.vickrey.conftest import load_sample
from vickrey.advertisers import create_advertiser
from vickrey.api import create_app
from vickrey.api.ratelimit import RateLimit

MINUTE_SCHEMA = orjson.loads((ROOT / "schemas" / "reports.campaign-minute.json").read_bytes())
AUTOPILOT_SCHEMA = orjson.loads((ROOT / "schemas" / "campaigns.autopilot.json").read_bytes())
GENEROUS = RateLimit(rate_per_s=1000.0, burst=1000)


@dataclass(frozen=True)
class Adv:
    advertiser_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def campaign(campaign_id: str = "c-test-1", sample: int = 0, **changes: Any) -> dict[str, Any]:
    """A valid campaign body (a sample campaign) without advertiser_id, as an advertiser would send it."""
    body = copy.deepcopy(load_sample("campaigns.json")[sample])
    body.pop("advertiser_id", None)
    body["campaign_id"] = campaign_id
    for i, creative in enumerate(body["creatives"]):
        creative["creative_id"] = f"{campaign_id}-cr{i}"
    body.update(changes)
    return body


def minute_record(
    campaign_id: str, window_start: int, impressions: int, clicks: int, spend: int, conversions: int = 0,
    conversion_value: int = 0,
) -> dict[str, Any]:
    """A reports.campaign-minute record, checked against its JSON Schema."""
    record = {
        "schema_version": 1,
        "campaign_id": campaign_id,
        "window_start": window_start,
        "window_end": window_start + 60_000,
        "impressions": impressions,
        "clicks": clicks,
        "spend_micros": spend,
        "ctr": clicks / impressions if impressions else 0.0,
        "ecpm_micros": (spend * 1000 + impressions // 2) // impressions if impressions else 0,
        "conversions": conversions,
        "conversion_value_micros": conversion_value,
    }
    jsonschema.validate(record, MINUTE_SCHEMA)
    return record


async def write_windows(settings: Settings, r: aioredis.Redis, records: list[dict[str, Any]]) -> None:
    """What the reporting stream writes: `{ns}:{c:<id>}:minutes` field window_start → record JSON."""
    for rec in records:
        await r.hset(settings.keys.minutes(rec["campaign_id"]), str(rec["window_start"]), orjson.dumps(rec))


async def set_spend(
    settings: Settings, r: aioredis.Redis, campaign_id: str, today: int, total: int, now_ms: int
) -> None:
    """What billing writes: spend today (UTC) and in total, in micros."""
    await r.set(settings.keys.spend_day(campaign_id, utc_day(now_ms)), today)
    await r.set(settings.keys.spend_total(campaign_id), total)


def decision(
    campaign_id: str,
    version: int,
    ts: int,
    bid_micros: int | None,
    reason: str,
    keywords: list[str] | None = None,
    added: list[str] | None = None,
    removed: list[str] | None = None,
) -> dict[str, Any]:
    """A campaigns.autopilot record (one decision of the autopilot), checked against its JSON Schema."""
    record = {
        "schema_version": 1,
        "campaign_id": campaign_id,
        "version": version,
        "ts": ts,
        "bid": None if bid_micros is None else {"type": "cpc", "amount_micros": bid_micros},
        "keywords": keywords if keywords is not None else ["power bank", "usb-c charger"],
        "categories": ["IAB19-6"],
        "keywords_added": added or [],
        "keywords_removed": removed or [],
        "reason": reason,
    }
    jsonschema.validate(record, AUTOPILOT_SCHEMA)
    return record


async def write_decisions(settings: Settings, r: aioredis.Redis, records: list[dict[str, Any]]) -> None:
    """What the autopilot role writes: `{ns}:{c:<id>}:autopilot`, each decision's JSON scored by version."""
    for rec in records:
        await r.zadd(settings.keys.autopilot(rec["campaign_id"]), {orjson.dumps(rec): rec["version"]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def stack(settings: Settings, redis_client: redis.Redis) -> AsyncIterator[Settings]:
    """This test's settings; its Redis keys and Kafka topics (campaign_store creates `campaigns`) go afterwards."""
    yield settings
    await delete_topics(settings)


@pytest.fixture
async def aredis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = redis_from_url(settings.redis)
    yield client
    await client.aclose()


@pytest.fixture
async def client(stack: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The real app on this test's settings (a generous rate limit: the 429 test makes its own)."""
    async with TestClient(TestServer(create_app(stack, rate_limit=GENEROUS))) as test_client:
        yield test_client


async def make_advertiser(settings: Settings, r: aioredis.Redis, name: str) -> Adv:
    advertiser, key = await create_advertiser(settings, r, name)
    return Adv(advertiser.advertiser_id, key)


@pytest.fixture
async def alice(stack: Settings, aredis: aioredis.Redis) -> Adv:
    return await make_advertiser(stack, aredis, "Alice Outdoor")


@pytest.fixture
async def bob(stack: Settings, aredis: aioredis.Redis) -> Adv:
    return await make_advertiser(stack, aredis, "Bob Books")
