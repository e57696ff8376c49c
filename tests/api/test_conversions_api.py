"""`POST /v1/conversions` and the chat client's in-chat purchase, through the conversions role on
real Kafka and Redis: accepted whole or refused whole, a foreign click answered like an unknown
one with nothing recorded, every bad field named with its index, a retry counted once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from core.metrics import Metrics
from core.settings import Settings
from streams.conversions import Conversions
from streams.runner import running
from tests.api.conftest import Adv
from tests.api.test_campaigns_api import call
from tests.streams.kit import click, now_ms, produce, read_topic
from vickrey.client import ChatAdsClient

pytestmark = pytest.mark.integration
Client = TestClient[Any, Any]


def posted(conversion_id: str, click_id: str, **extra: Any) -> dict[str, Any]:
    return {"conversion_id": conversion_id, "click_id": click_id, "kind": "purchase", "value_micros": 30_000_000, **extra}


async def test_posted_and_in_chat_conversions(
    client: Client, topics: Settings, aredis: aioredis.Redis, alice: Adv, bob: Adv
) -> None:
    settings = topics
    clicked = now_ms() - 10_000
    alice_click = click("k-a", "e-a:1", "c-alice", clicked, 200_000) | {"advertiser_id": alice.advertiser_id}
    bob_click = click("k-b", "e-b:1", "c-bob", clicked, 200_000) | {"advertiser_id": bob.advertiser_id}
    await produce(settings, "ad.clicks", [("e-a:1", alice_click), ("e-b:1", bob_click)])
    metrics = Metrics()
    async with running(settings, [Conversions(settings, metrics)], metrics):
        for _ in range(300):  # the role stores the clicks it reads (the API looks them up there)
            if await aredis.exists(settings.keys.click("k-a"), settings.keys.click("k-b")) == 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the conversions role did not store the clicks")

        status, body = await call(client, "POST", "/v1/conversions", alice, posted("order-1", "k-a"))
        assert (status, body) == (202, {"accepted": 1, "conversion_ids": ["order-1"]})

        # Bob's click, or no click at all: the same 404, and the whole list refused.
        for click_id in ("k-b", "k-none"):
            status, body = await call(client, "POST", "/v1/conversions", alice,
                                      [posted("order-2", "k-a"), posted("order-3", click_id)])
            assert status == 404 and body["errors"] == [f"[1].click_id: no such click of yours ('{click_id}')"]

        status, body = await call(client, "POST", "/v1/conversions", alice, [
            posted("order-4", "k-a", value_micros=-1), posted("order-5", "k-a", kind="refund", coupon="x"), "nope"])
        assert status == 400
        assert body["errors"][0].startswith("[0].value_micros: ")
        assert any(e.startswith("[1].coupon: unknown field") for e in body["errors"])
        assert any(e.startswith("[1].kind: must be one of purchase, signup, lead, other") for e in body["errors"])
        assert "[2]: must be an object" in body["errors"]
        status, body = await call(client, "POST", "/v1/conversions", alice, [])
        assert status == 400 and body["errors"][0].startswith("(body): a list of 1 to 1000")

        # A retry of order-1 (with a new one): accepted, and counted once downstream.
        status, body = await call(client, "POST", "/v1/conversions", alice,
                                  [posted("order-1", "k-a"), posted("order-6", "k-a", kind="signup", value_micros=0)])
        assert status == 202 and body["accepted"] == 2

        async with ChatAdsClient(settings) as chat:
            await chat.report_purchase("k-b", "bob-order-1", value_micros=5_000_000)

        attributed = await read_topic(settings, "ad.conversions", expect=3, timeout_s=30)
        invalid = await read_topic(settings, "ad.conversions.invalid", expect=1, timeout_s=30)
    raw = await read_topic(settings, "ad.conversions.raw", expect=4, timeout_s=10)
    assert sorted((r["conversion_id"], r["source"], r.get("advertiser_id")) for r in raw) == [
        ("bob-order-1", "in_chat", None), ("order-1", "advertiser", alice.advertiser_id),
        ("order-1", "advertiser", alice.advertiser_id), ("order-6", "advertiser", alice.advertiser_id)]
    assert sorted((r["conversion_id"], r["advertiser_id"], r["campaign_id"]) for r in attributed) == [
        ("bob-order-1", bob.advertiser_id, "c-bob"), ("order-1", alice.advertiser_id, "c-alice"),
        ("order-6", alice.advertiser_id, "c-alice")]
    assert [(r["conversion_id"], r["reason"]) for r in invalid] == [("order-1", "duplicate")]
