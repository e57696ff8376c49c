"""Trust and user controls through the running worker (docs/contract.md §4b), on real Kafka and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from core.redis_client import redis_from_url
from core.settings import Settings
from tests.auction.factories import campaign_record, intent
from tests.auction.test_worker import apply
from tests.kafka_helpers import produce_json, read_all, start_role, stop_role
from vickrey.policy_store import apply_policy

pytestmark = pytest.mark.integration


@pytest.fixture
async def worker(settings: Settings, env: dict[str, str], topics: Settings, tmp_path: Path) -> AsyncIterator[None]:
    await apply(
        settings,
        [
            campaign_record("top", advertiser_id="A", amount_micros=5_000_000),
            campaign_record("second", advertiser_id="B", amount_micros=4_000_000),
            campaign_record("third", advertiser_id="C", amount_micros=3_000_000),
            campaign_record("capped", advertiser_id="D", amount_micros=1_000_000, keywords=["tokyo"],
                            frequency_cap={"max": 1, "window_s": 3600}),
        ],
    )
    process = start_role(env, "auction", "--instance", "trust", log=tmp_path / "worker.log")
    yield
    assert stop_role(process) == 0


class Chat:
    """Sends intents one at a time and waits for each decision (a chat service's view)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent = 0

    async def decide(self, user_id: str, keywords: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        self.sent += 1
        event_id = f"trust-{self.sent}-{uuid.uuid4().hex[:6]}"
        record = intent(event_id, keywords=keywords or ["laptop"], **extra)
        record.update(ts=int(time.time() * 1000), user_id=user_id)
        await produce_json(self.settings, "chat.intents", [record], "user_id")
        decisions = await read_all(self.settings, "ad.decisions", self.sent, timeout=30, settle=0.2)
        return next(d for d in decisions if d["event_id"] == event_id)

    async def control(self, user_id: str, action: str, advertiser_id: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"user_id": user_id, "action": action, "ts": int(time.time() * 1000)}
        if advertiser_id:
            record["advertiser_id"] = advertiser_id
        before = len(await read_all(self.settings, "user.controls.applied", 0, timeout=0.5, settle=0))
        await produce_json(self.settings, "user.controls", [record], "user_id")
        applied = await read_all(self.settings, "user.controls.applied", before + 1, timeout=30, settle=0.2)
        return applied[-1]


async def price_of(settings: Settings, event_id: str) -> list[tuple[str, int]]:
    impressions = await read_all(settings, "ad.impressions", 0, timeout=1, settle=0.3)
    return [(i["campaign_id"], i["price_micros"]) for i in impressions if i["event_id"] == event_id]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"age_bracket": "under_13"}, "minor"),
        ({"age_bracket": "13_17"}, "minor"),
        ({"intent": {"category": "IAB7-2", "keywords": ["laptop"], "confidence": 0.9}}, "sensitive_topic"),
        ({"safety": {"labels": ["self_harm"]}}, "brand_safety"),
        ({"consent": {"ads": False, "personalization": True}}, "no_consent"),
    ],
)
async def test_gates(settings: Settings, worker: None, change: dict[str, Any], reason: str) -> None:
    decision = await Chat(settings).decide("gate-person", **change)
    assert decision["ads"] == [] and decision["no_fill_reason"] == reason


async def test_policy_change_is_live(settings: Settings, worker: None) -> None:
    chat = Chat(settings)
    assert (await chat.decide("p1"))["ads"]
    client = redis_from_url(settings.redis)
    policy = {"sensitive_categories": ["IAB19"], "restricted_verticals": ["gambling"], "blocked_safety_labels": ["hate"]}
    await apply_policy(settings, client, policy)
    await client.aclose()
    await asyncio.sleep(1.0)  # workers pick policy changes up within 1 s
    assert (await chat.decide("p1"))["no_fill_reason"] == "sensitive_topic"
    travel = {"category": "IAB20-1", "keywords": ["laptop"], "confidence": 0.9}
    assert (await chat.decide("p1", intent=travel, safety={"labels": ["self_harm"]}))["ads"], "self_harm is no longer blocked"


async def test_hide_advertiser_gives_the_runner_up_at_its_price(settings: Settings, worker: None) -> None:
    chat = Chat(settings)
    first = await chat.decide("hider")
    assert [a["advertiser_id"] for a in first["ads"]] == ["A"]
    applied = await chat.control("hider", "hide_advertiser", "A")
    assert applied["action"] == "hide_advertiser" and applied["advertiser_id"] == "A"
    hidden = await chat.decide("hider")
    assert [a["campaign_id"] for a in hidden["ads"]] == ["second"]
    assert await price_of(settings, hidden["event_id"]) == [("second", 3_010_000)]  # priced against C
    other = await chat.decide("someone-else")
    assert [a["advertiser_id"] for a in other["ads"]] == ["A"]
    again = await chat.decide("hider", slots=3)
    assert "A" not in {a["advertiser_id"] for a in again["ads"]}


async def test_forget_erases_caps_hidden_list_and_every_key(settings: Settings, worker: None, redis_client: redis.Redis) -> None:
    chat = Chat(settings)
    person = f"person-{uuid.uuid4().hex[:8]}"
    assert [a["campaign_id"] for a in (await chat.decide(person, ["tokyo"]))["ads"]] == ["capped"]
    assert (await chat.decide(person, ["tokyo"]))["no_fill_reason"] == "frequency_cap"
    await chat.control(person, "hide_advertiser", "B")
    await chat.control(person, "personalization_off")
    assert [k for k in redis_client.scan_iter(match=f"{settings.namespace}:*") if person.encode() in k]

    applied = await chat.control(person, "forget")
    assert applied["action"] == "forget" and applied["user_id"] == person
    assert [k for k in redis_client.scan_iter(match=f"{settings.namespace}:*") if person.encode() in k] == []
    # the capped campaign can show again, and the hidden advertiser is back
    assert [a["campaign_id"] for a in (await chat.decide(person, ["tokyo"]))["ads"]] == ["capped"]
    assert [a["campaign_id"] for a in (await chat.decide(person, slots=2))["ads"]] == ["top", "second"]


async def test_decisions_are_labelled_and_explained(settings: Settings, worker: None) -> None:
    decision = await Chat(settings).decide("reader", ["Laptops", "tokyo"], slots=3)
    assert decision["ads"]
    for ad in decision["ads"]:
        assert ad["label"] == "Sponsored"
        assert ad["why"]["personalized"] is False
        assert ad["why"]["matched_keywords"] and set(ad["why"]["matched_keywords"]) <= {"laptop", "tokyo"}
    assert orjson.dumps(decision)
