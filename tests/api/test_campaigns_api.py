"""Every campaign endpoint against the real app, real Redis and real Kafka (campaign_store announces)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils

from core.settings import Settings
from tests.api.conftest import Adv, campaign
from tests.vickrey.conftest import read_topic
from vickrey import campaign_store as store
from vickrey.api import create_app

pytestmark = pytest.mark.integration
Client = test_utils.TestClient[Any, Any]


async def call(
    client: Client, method: str, path: str, adv: Adv | None, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    headers = adv.headers if adv else {}
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    async with client.request(method, path, headers=headers, data=data) as resp:
        text = await resp.read()
        assert resp.content_type == "application/json", (resp.status, text[:200])
        assert b"user_id" not in text and b"session_id" not in text  # aggregates only (docs/contract.md §4b)
        return resp.status, orjson.loads(text)


async def stored_ids(settings: Settings, r: aioredis.Redis) -> list[str]:
    return [c["campaign_id"] for c in await store.list_campaigns(settings, r)]


async def change_count(settings: Settings, r: aioredis.Redis) -> int:
    return int(await r.xlen(settings.keys.campaign_changes()))


async def test_create_show_list_replace_pause_resume(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv
) -> None:
    async with client.post(
        "/v1/campaigns", headers=alice.headers, data=orjson.dumps(campaign("c-a1"))
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Location"] == "/v1/campaigns/c-a1"
        created = await resp.json()
    assert created["advertiser_id"] == alice.advertiser_id  # taken from the key
    assert created["spend"] == {"today_micros": 0, "total_micros": 0}
    assert created["pctr"] == 0.012 and created["frequency_cap"] is None  # normalised like `campaigns apply`

    status, shown = await call(client, "GET", "/v1/campaigns/c-a1", alice)
    assert status == 200 and shown == created

    bid = {"type": "cpc", "amount_micros": 250_000}
    status, replaced = await call(client, "PUT", "/v1/campaigns/c-a1", alice, campaign("c-a1", bid=bid))
    assert status == 200 and replaced["bid"] == bid
    without_id = campaign("c-a1", bid=bid)
    del without_id["campaign_id"]  # the path names it
    assert (await call(client, "PUT", "/v1/campaigns/c-a1", alice, without_id))[0] == 200

    assert (await call(client, "POST", "/v1/campaigns", alice, campaign("c-a2", sample=1)))[0] == 201
    status, listed = await call(client, "GET", "/v1/campaigns", alice)
    assert status == 200 and [c["campaign_id"] for c in listed["campaigns"]] == ["c-a1", "c-a2"]
    assert all("spend" in c for c in listed["campaigns"])

    status, paused = await call(client, "POST", "/v1/campaigns/c-a1/pause", alice)
    assert status == 200 and paused["status"] == "paused"
    assert (await store.get_campaign(stack, aredis, "c-a1") or {})["status"] == "paused"
    before = await change_count(stack, aredis)
    status, again = await call(client, "POST", "/v1/campaigns/c-a1/pause", alice)  # idempotent
    assert status == 200 and again["status"] == "paused" and await change_count(stack, aredis) == before
    status, resumed = await call(client, "POST", "/v1/campaigns/c-a1/resume", alice)
    assert status == 200 and resumed["status"] == "active"

    # The workers' change stream has every change, and Kafka's compacted `campaigns` topic the latest.
    entries: Any = await aredis.xrange(stack.keys.campaign_changes())
    assert [e[1][b"campaign_id"] for e in entries].count(b"c-a1") == 5  # create, 2 replaces, pause, resume
    seen = await read_topic(stack, "campaigns", {"c-a1", "c-a2"})
    latest = orjson.loads(seen["c-a1"] or b"null")
    assert latest["status"] == "active" and latest["advertiser_id"] == alice.advertiser_id


async def test_advertiser_id_in_the_body_is_never_trusted(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv, bob: Adv
) -> None:
    own = campaign("c-own", advertiser_id=alice.advertiser_id)
    assert (await call(client, "POST", "/v1/campaigns", alice, own))[0] == 201  # one's own id is fine

    forged = campaign("c-forged", advertiser_id=bob.advertiser_id, pctr=2)
    status, body = await call(client, "POST", "/v1/campaigns", alice, forged)
    assert status == 400
    assert body["errors"][0].startswith("advertiser_id: is taken from your API key")
    assert any(e.startswith("pctr:") for e in body["errors"])  # the body's other problems are named too
    assert await stored_ids(stack, aredis) == ["c-own"]

    status, body = await call(
        client, "PUT", "/v1/campaigns/c-own", alice, dict(own, advertiser_id=bob.advertiser_id)
    )
    assert status == 400 and body["errors"][0].startswith("advertiser_id:")
    stored = await store.get_campaign(stack, aredis, "c-own")
    assert stored is not None and stored["advertiser_id"] == alice.advertiser_id
    assert (await call(client, "GET", "/v1/campaigns", bob))[1] == {"campaigns": []}


async def test_another_advertisers_campaign_answers_404_like_a_missing_one(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv, bob: Adv
) -> None:
    assert (await call(client, "POST", "/v1/campaigns", bob, campaign("c-bob")))[0] == 201
    versions = await change_count(stack, aredis)
    for method, suffix, body in [
        ("GET", "", None),
        ("PUT", "", campaign("c-bob")),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
        ("GET", "/report", None),
    ]:
        theirs = await call(client, method, f"/v1/campaigns/c-bob{suffix}", alice, body)
        missing = await call(
            client, method, f"/v1/campaigns/c-nobody{suffix}", alice, body and campaign("c-nobody")
        )
        assert theirs[0] == missing[0] == 404, (method, suffix)
        assert theirs[1]["errors"] == [e.replace("c-nobody", "c-bob") for e in missing[1]["errors"]]
        assert bob.advertiser_id not in str(theirs[1])
    assert await change_count(stack, aredis) == versions  # nothing changed
    assert (await store.get_campaign(stack, aredis, "c-bob") or {})["status"] == "active"
    assert (await call(client, "GET", "/v1/campaigns", alice))[1] == {"campaigns": []}

    # Campaign ids are global: creating a taken id answers 409 and names no owner.
    status, body = await call(client, "POST", "/v1/campaigns", alice, campaign("c-bob"))
    assert status == 409 and bob.advertiser_id not in str(body)
    assert (await store.get_campaign(stack, aredis, "c-bob") or {})["advertiser_id"] == bob.advertiser_id
    # POST creates only, even one's own.
    assert (await call(client, "POST", "/v1/campaigns", bob, campaign("c-bob")))[0] == 409


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", ["(body): not valid JSON"]),
        (b"", ["(body): a JSON object is required"]),
        (b"\xff\xfe{}", ["(body): not valid JSON"]),
        (b"[]", ["(record): a campaign must be a JSON object"]),
        (b'"campaign"', ["(record): a campaign must be a JSON object"]),
    ],
)
async def test_unreadable_bodies_answer_400(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv, raw: bytes, expected: list[str]
) -> None:
    status, body = await call(client, "POST", "/v1/campaigns", alice, raw=raw)
    assert status == 400
    assert [e[: len(x)] for e, x in zip(body["errors"], expected, strict=True)] == expected
    assert await stored_ids(stack, aredis) == []


async def test_invalid_campaigns_name_every_problem_and_store_nothing(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv
) -> None:
    bad = campaign("c-bad", colour="red", pctr=0, bid={"type": "cpx", "amount_micros": -1})
    bad["budget"] = {"daily_micros": 5, "total_micros": 1}
    bad["creatives"][0]["url"] = "http://insecure.example"
    status, body = await call(client, "POST", "/v1/campaigns", alice, bad)
    assert status == 400
    fields = {e.split(":")[0] for e in body["errors"]}
    assert {
        "colour",
        "pctr",
        "bid.type",
        "bid.amount_micros",
        "budget.daily_micros",
        "creatives[0].url",
    } <= fields
    assert any("unknown field" in e for e in body["errors"])

    status, body = await call(client, "POST", "/v1/campaigns", alice, campaign("c-dating", vertical="dating"))
    assert status == 400 and body["errors"][0].startswith("vertical: 'dating' is restricted by the policy")
    assert await stored_ids(stack, aredis) == [] and await change_count(stack, aredis) == 0

    assert (await call(client, "POST", "/v1/campaigns", alice, campaign("c-ok")))[0] == 201
    status, body = await call(client, "PUT", "/v1/campaigns/c-ok", alice, dict(campaign("c-ok"), extra=1))
    assert status == 400 and body["errors"][0].startswith("extra: unknown field")
    status, body = await call(client, "PUT", "/v1/campaigns/c-ok", alice, campaign("c-other"))
    assert status == 400 and body["errors"][0].startswith("campaign_id: must be left out or equal")
    assert await stored_ids(stack, aredis) == ["c-ok"] and await change_count(stack, aredis) == 1


async def test_bodies_over_64_kib_answer_413(
    client: Client, stack: Settings, aredis: aioredis.Redis, alice: Adv
) -> None:
    exact = orjson.dumps(campaign("c-exact"))
    exact += b" " * (64 * 1024 - len(exact))  # exactly 64 KiB is still accepted
    assert (await call(client, "POST", "/v1/campaigns", alice, raw=exact))[0] == 201

    status, body = await call(
        client, "POST", "/v1/campaigns", alice, raw=exact.replace(b"c-exact", b"c-large") + b" "
    )
    assert status == 413 and body["errors"][0].startswith("(body): larger than the 65536-byte")

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(80):
            yield b" " * 1024

    async with client.put("/v1/campaigns/c-exact", headers=alice.headers, data=chunks()) as resp:
        assert resp.status == 413 and (await resp.json())["errors"][0].startswith("(body): larger than")
    assert await stored_ids(stack, aredis) == ["c-exact"] and await change_count(stack, aredis) == 1


async def test_missing_or_unknown_key_answers_401(client: Client, alice: Adv) -> None:
    wrong = Adv("x", "vk_" + "A" * 32)
    for headers in [
        {},
        {"Authorization": alice.key},  # no scheme
        {"Authorization": f"Basic {alice.key}"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer vk_short"},
        wrong.headers,
    ]:
        for method, path in [("GET", "/v1/campaigns"), ("POST", "/v1/campaigns"), ("GET", "/v1/campaigns/c-1/report"),
                             ("GET", "/v1/no-such-route")]:  # fmt: skip
            async with client.request(method, path, headers=headers, data=b"{}") as resp:
                assert resp.status == 401, (headers, path)
                assert resp.headers["WWW-Authenticate"] == 'Bearer realm="vickrey"'
                assert (await resp.json())["errors"][0].startswith("authorization:")
    async with client.get("/v1/campaigns", headers={"Authorization": f"bearer  {alice.key} "}) as resp:
        assert resp.status == 200  # the scheme is case-insensitive
    for path in ("/", "/openapi.json", "/healthz"):
        async with client.get(path) as resp:
            assert resp.status == 200, path


async def test_unknown_routes_and_methods_answer_json(client: Client, alice: Adv) -> None:
    assert (await call(client, "GET", "/nothing", None)) == (404, {"errors": ["(path): not found"]})
    assert (await call(client, "GET", "/v1/campaigns/c-1/nothing", alice))[0] == 404
    status, body = await call(client, "GET", "/v1/campaigns?status=active", alice)
    assert status == 400 and body["errors"] == [
        "(query): unknown parameter 'status' (this operation takes none)"
    ]
    async with client.delete("/v1/campaigns/c-1", headers=alice.headers) as resp:
        assert resp.status == 405 and "PUT" in resp.headers["Allow"]
        assert (await resp.json())["errors"] == ["(method): not allowed here"]


async def test_redis_down_answers_503(settings: Settings) -> None:
    down = settings.with_(redis="redis://127.0.0.1:1/0")
    async with test_utils.TestClient(test_utils.TestServer(create_app(down))) as client:
        for path in ("/healthz", "/v1/campaigns"):
            async with client.get(path, headers={"Authorization": "Bearer vk_" + "B" * 32}) as resp:
                assert resp.status == 503, path
                assert (await resp.json())["errors"][0].startswith("service: storage (Redis) unavailable")
