"""`GET /v1/campaigns/{id}/report` from reporting's minute windows, and the per-key rate limit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils

from core.settings import Settings
from tests.api.conftest import Adv, campaign, make_advertiser, minute_record, set_spend, write_windows
from vickrey import campaign_store as store
from vickrey.api import create_app
from vickrey.api.ratelimit import RateLimit

pytestmark = pytest.mark.integration
Client = test_utils.TestClient[Any, Any]
MINUTE = 60_000


async def get(client: Client, path: str, adv: Adv) -> tuple[int, Any]:
    async with client.get(path, headers=adv.headers) as resp:
        return resp.status, await resp.json()


async def test_report_has_windows_in_range_totals_and_live_spend(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv
) -> None:
    async with client.post(
        "/v1/campaigns", headers=alice.headers, data=orjson.dumps(campaign("c-r"))
    ) as resp:
        assert resp.status == 201
    now = int(time.time() * 1000)
    base = now // MINUTE * MINUTE - 10 * MINUTE
    records = [
        minute_record("c-r", base + i * MINUTE, 100 * (i + 1), i, 450_000 * (i + 1), i % 2, (i % 2) * 10_000_000)
        for i in range(10)
    ]
    await write_windows(stack, aredis, records)
    await set_spend(stack, aredis, "c-r", today=7_000_000, total=9_000_000, now_ms=now)

    status, report = await get(
        client, f"/v1/campaigns/c-r/report?from={base + 2 * MINUTE}&to={base + 5 * MINUTE}", alice
    )
    assert status == 200
    assert [w["window_start"] for w in report["windows"]] == [
        base + 2 * MINUTE,
        base + 3 * MINUTE,
        base + 4 * MINUTE,
    ]
    assert report["windows"][0] == {
        **{k: v for k, v in records[2].items() if k not in ("schema_version", "campaign_id")},
        "partial": False,
    }
    assert report["totals"] == {"impressions": 1200, "clicks": 9, "ctr": 9 / 1200, "spend_micros": 5_400_000,
                                "conversions": 1, "conversion_value_micros": 10_000_000,
                                "cost_per_conversion_micros": 5_400_000, "return_on_ad_spend": 10_000_000 / 5_400_000}
    assert report["spend"] == {"today_micros": 7_000_000, "total_micros": 9_000_000}
    assert report["budget"] == campaign("c-r")["budget"]
    assert (report["campaign_id"], report["from"], report["to"]) == (
        "c-r",
        base + 2 * MINUTE,
        base + 5 * MINUTE,
    )

    # An unaligned `from` starts at the next minute; the default range is the hour before now.
    status, report = await get(
        client, f"/v1/campaigns/c-r/report?from={base + 1}&to={base + 2 * MINUTE}", alice
    )
    assert [w["window_start"] for w in report["windows"]] == [base + MINUTE]
    status, report = await get(client, "/v1/campaigns/c-r/report", alice)
    assert status == 200 and len(report["windows"]) == 10 and report["to"] - report["from"] == 3_600_000
    assert report["totals"]["impressions"] == sum(r["impressions"] for r in records)


async def test_report_shows_aggregates_only_and_skips_unreadable_windows(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv
) -> None:
    async with client.post(
        "/v1/campaigns", headers=alice.headers, data=orjson.dumps(campaign("c-s"))
    ) as resp:
        assert resp.status == 201
    start = int(time.time() * 1000) // MINUTE * MINUTE - 5 * MINUTE
    leaky = dict(minute_record("c-s", start, 10, 1, 1000), user_id="u-1", session_id="s-1", chat="hi")
    key = stack.keys.minutes("c-s")
    await aredis.hset(key, str(start), orjson.dumps(leaky))
    await aredis.hset(key, str(start + MINUTE), b"{not json")
    await aredis.hset(key, str(start + 2 * MINUTE), orjson.dumps({"impressions": "many"}))
    open_minute = dict(minute_record("c-s", start + 3 * MINUTE, 20, 0, 2000), partial=True)  # still open
    await aredis.hset(key, str(start + 3 * MINUTE), orjson.dumps(open_minute))
    async with client.get("/v1/campaigns/c-s/report", headers=alice.headers) as resp:
        assert resp.status == 200
        text = await resp.text()
    for word in ("user_id", "session_id", "u-1", "s-1", "chat"):
        assert word not in text
    report = orjson.loads(text)
    assert [w["window_start"] for w in report["windows"]] == [start, start + 3 * MINUTE]
    assert [w["partial"] for w in report["windows"]] == [False, True]
    assert report["totals"]["impressions"] == 30


@pytest.mark.parametrize(
    ("query", "problems"),
    [
        ("from=abc", ["from: must be epoch milliseconds"]),
        ("from=-5&to=x", ["to: must be epoch milliseconds", "from: must be epoch milliseconds"]),
        ("from=2000&to=1000", ["from: must be before to"]),
        ("from=1000&to=1000", ["from: must be before to"]),
        ("from=0&to=604800001", ["to: at most 604800000 ms (7 days) after from"]),
        ("to=99999999999999999", ["to: must be epoch milliseconds"]),
        ("from=1&to=2&user=u-1", ["(query): unknown parameter 'user' (known: from, to)"]),
    ],
)
async def test_report_range_problems_answer_400(
    client: Client, stack: Settings, alice: Adv, query: str, problems: list[str]
) -> None:
    async with client.post(
        "/v1/campaigns", headers=alice.headers, data=orjson.dumps(campaign("c-q"))
    ) as resp:
        assert resp.status == 201
    status, body = await get(client, f"/v1/campaigns/c-q/report?{query}", alice)
    assert status == 400
    assert [e[: len(p)] for e, p in zip(body["errors"], problems, strict=True)] == problems


async def test_rate_limit_answers_429_per_key_and_refills(
    stack: Settings, aredis: aioredis.Redis, alice: Adv, bob: Adv
) -> None:
    app = create_app(stack, rate_limit=RateLimit(rate_per_s=1.0, burst=3))
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        for _ in range(3):
            assert (await get(client, "/v1/campaigns", alice))[0] == 200
        async with client.post(
            "/v1/campaigns", headers=alice.headers, data=orjson.dumps(campaign("c-l"))
        ) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            assert (await resp.json())["errors"][0].startswith("rate limit: too many requests")
        assert await store.get_campaign(stack, aredis, "c-l") is None  # refused before anything was applied
        assert (await get(client, "/v1/campaigns", bob))[0] == 200  # every key has its own bucket
        second_key = await make_advertiser(stack, aredis, "Alice Outdoor")  # another advertiser, another key
        assert (await get(client, "/v1/campaigns", second_key))[0] == 200
        await asyncio.sleep(1.05)  # one token per second: one is back
        assert (await get(client, "/v1/campaigns", alice))[0] == 200
        assert (await get(client, "/v1/campaigns", alice))[0] == 429


async def test_rate_limit_is_shared_by_api_processes(stack: Settings, alice: Adv) -> None:
    """Two app instances (as two `vickrey api` processes would be) draw from the same bucket in Redis."""
    limit = RateLimit(rate_per_s=0.5, burst=2)
    first = test_utils.TestClient(test_utils.TestServer(create_app(stack, rate_limit=limit)))
    second = test_utils.TestClient(test_utils.TestServer(create_app(stack, rate_limit=limit)))
    async with first, second:
        assert (await get(first, "/v1/campaigns", alice))[0] == 200
        assert (await get(second, "/v1/campaigns", alice))[0] == 200
        async with second.get("/v1/campaigns", headers=alice.headers) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) == 2
