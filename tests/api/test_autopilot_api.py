"""`GET /v1/campaigns/{id}/autopilot` against the real app and Redis: the autopilot's decisions, as the
autopilot role writes them (a sorted set scored by version), oldest first, and the effective bid and
targeting (the latest decision)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils

from core.settings import Settings
from tests.api.conftest import Adv, campaign, decision, write_decisions

pytestmark = pytest.mark.integration
Client = test_utils.TestClient[Any, Any]


def auto_campaign(campaign_id: str) -> dict[str, Any]:
    """A campaign the autopilot bids for (max_clicks, so no bid of its own)."""
    body = campaign(campaign_id, goal={"type": "max_clicks", "max_bid_micros": 900_000})
    del body["bid"]
    return body


async def get(client: Client, path: str, adv: Adv | None) -> tuple[int, Any]:
    async with client.get(path, headers=adv.headers if adv else {}) as resp:
        text = await resp.read()
        assert resp.content_type == "application/json", (resp.status, text[:200])
        assert b"user_id" not in text and b"session_id" not in text  # aggregates only
        return resp.status, orjson.loads(text)


async def create(client: Client, adv: Adv, body: dict[str, Any]) -> None:
    async with client.post("/v1/campaigns", headers=adv.headers, data=orjson.dumps(body)) as resp:
        assert resp.status == 201, await resp.text()


async def test_history_in_version_order_and_effective_is_the_latest(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv
) -> None:
    await create(client, alice, auto_campaign("c-auto"))
    now = int(time.time() * 1000)
    first = decision("c-auto", 1, now - 600_000, 300_000, "cold start: bid 0.30 from the category's CTR")
    second = decision(
        "c-auto",
        2,
        now - 300_000,
        327_000,
        "spending 0.71x the even pace: bid +9%",
        keywords=["power bank", "usb-c charger", "long flight"],
        added=["long flight"],
    )
    third = decision(
        "c-auto",
        3,
        now,
        310_000,
        "dropped usb-c charger: no click in 160+ impressions; bid -5%",
        keywords=["power bank", "long flight"],
        removed=["usb-c charger"],
    )
    await write_decisions(stack, aredis, [third, first, second])  # written out of order: ordered by version
    await aredis.zadd(stack.keys.autopilot("c-auto"), {b"{not json": 0.5})  # unreadable: skipped

    status, body = await get(client, "/v1/campaigns/c-auto/autopilot", alice)
    assert status == 200, body
    assert list(body) == ["campaign_id", "goal", "effective", "history"]
    assert body["campaign_id"] == "c-auto"
    assert body["goal"] == {"type": "max_clicks", "max_bid_micros": 900_000}
    assert body["history"] == [first, second, third]
    assert body["effective"] == {
        "bid": {"type": "cpc", "amount_micros": 310_000},
        "keywords": ["power bank", "long flight"],
        "categories": ["IAB19-6"],
        "reason": third["reason"],
        "version": 3,
        "ts": now,
    }

    # `limit`: the latest decisions, still oldest first; the effective ones stay the latest.
    status, body = await get(client, "/v1/campaigns/c-auto/autopilot?limit=2", alice)
    assert status == 200 and [d["version"] for d in body["history"]] == [2, 3]
    assert body["effective"]["version"] == 3
    status, body = await get(client, "/v1/campaigns/c-auto/autopilot?limit=1", alice)
    assert status == 200 and body["history"] == [third]
    status, body = await get(client, "/v1/campaigns/c-auto/autopilot?limit=500", alice)
    assert status == 200 and len(body["history"]) == 3


async def test_no_decisions_yet_answers_null_and_an_empty_history(
    client: Client, stack: Settings, alice: Adv
) -> None:
    await create(client, alice, auto_campaign("c-fresh"))
    await create(client, alice, campaign("c-manual"))
    assert await get(client, "/v1/campaigns/c-fresh/autopilot", alice) == (200, {
        "campaign_id": "c-fresh", "goal": {"type": "max_clicks", "max_bid_micros": 900_000},
        "effective": None, "history": [],
    })  # fmt: skip
    assert await get(client, "/v1/campaigns/c-manual/autopilot", alice) == (200, {
        "campaign_id": "c-manual", "goal": {"type": "manual"}, "effective": None, "history": [],
    })  # fmt: skip


async def test_another_advertisers_campaign_answers_404_like_an_unknown_one(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv, bob: Adv
) -> None:
    await create(client, bob, auto_campaign("c-bob-auto"))
    secret = decision("c-bob-auto", 1, int(time.time() * 1000), 450_000, "bob's secret reason")
    await write_decisions(stack, aredis, [secret])
    assert (await get(client, "/v1/campaigns/c-bob-auto/autopilot", bob))[0] == 200  # the owner sees it

    for query in ("", "?limit=3", "?limit=0"):  # a bad limit does not tell either: 404 first
        theirs = await get(client, f"/v1/campaigns/c-bob-auto/autopilot{query}", alice)
        missing = await get(client, f"/v1/campaigns/c-nobody/autopilot{query}", alice)
        assert theirs[0] == missing[0] == 404, query
        assert theirs[1] == {"errors": [e.replace("c-nobody", "c-bob-auto") for e in missing[1]["errors"]]}
        assert "secret" not in str(theirs[1]) and bob.advertiser_id not in str(theirs[1])

    status, body = await get(client, "/v1/campaigns/c-bob-auto/autopilot", None)
    assert status == 401 and body["errors"][0].startswith("authorization:")


@pytest.mark.parametrize("value", ["0", "501", "-1", "1.5", "abc", "", "10000", "1e2"])
async def test_a_bad_limit_answers_400_naming_it(
    client: Client, stack: Settings, alice: Adv, value: str
) -> None:
    await create(client, alice, auto_campaign("c-limits"))
    status, body = await get(client, f"/v1/campaigns/c-limits/autopilot?limit={value}", alice)
    assert status == 400, body
    assert body == {"errors": [f"limit: must be an integer 1 to 500, got {value!r}"]}


async def test_unknown_query_parameters_answer_400(client: Client, stack: Settings, alice: Adv) -> None:
    await create(client, alice, auto_campaign("c-query"))
    status, body = await get(client, "/v1/campaigns/c-query/autopilot?since=1", alice)
    assert status == 400 and body["errors"] == ["(query): unknown parameter 'since' (known: limit)"]
