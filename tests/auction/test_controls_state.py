"""People's controls are never only in Redis (docs/contract.md §9): the controls role, fed through
`user.controls` on real Kafka, publishes each person's whole state on the compacted
`user.controls.state` (a forget: a tombstone) in the transaction of its confirmations, and
`restore_people` puts the topic's latest back into an emptied Redis exactly as it was."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from auction.controls import ControlsRole, restore_people
from core.compacted import read_latest
from core.loop import Loop, running
from core.metrics import Metrics
from core.redis_client import redis_from_url
from core.settings import Settings
from schemas.codec import decode, encode
from schemas.records import HIDDEN_MAX
from tests.kafka_helpers import produce_json, read_all
from tests.vickrey.test_kept_copies import emptied, namespace_dump

pytestmark = pytest.mark.integration


@asynccontextmanager
async def controls_role(settings: Settings) -> AsyncIterator[None]:
    """The controls role on its own loop in this process (as the auction worker runs it)."""
    client = redis_from_url(settings.redis)
    metrics, stop = Metrics(), asyncio.Event()
    try:
        async with running([Loop(settings, ControlsRole(settings, client, metrics), metrics, stop)], stop):
            yield
    finally:
        await client.aclose()


def control(user_id: str, action: str, advertiser_id: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"user_id": user_id, "action": action, "ts": int(time.time() * 1000)}
    if advertiser_id is not None:
        record["advertiser_id"] = advertiser_id
    return record


async def apply_controls(settings: Settings, controls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feed controls through Kafka to a running role; the confirmations, once all are there."""
    async with controls_role(settings):
        await produce_json(settings, "user.controls", controls, "user_id")
        applied = await read_all(settings, "user.controls.applied", len(controls), timeout=60, settle=0.3)
    assert len(applied) == len(controls)
    return applied


CONTROLS = [
    control("alice", "hide_advertiser", "adv-a"),
    control("alice", "hide_advertiser", "adv-b"),
    control("alice", "personalization_off"),
    control("bob", "personalization_on"),
    control("carol", "hide_advertiser", "adv-c"),
    control("carol", "personalization_off"),
    control("carol", "forget"),
    control("dave", "hide_advertiser", "adv-d"),
    control("dave", "hide_advertiser", "adv-d"),  # twice: one member
]


async def test_controls_come_back_exactly_and_a_forget_stays_forgotten(
    topics: Settings, redis_client: redis.Redis
) -> None:
    settings = topics
    await apply_controls(settings, CONTROLS)
    latest = await read_latest(settings, "user.controls.state")
    assert set(latest) == {b"alice", b"bob", b"carol", b"dave"}
    assert latest[b"carol"] is None  # forget: a tombstone, so compaction erases the person
    states = {key: decode("user.controls.state", value) for key, value in latest.items() if value is not None}
    assert {key: (s["hidden_advertisers"], s["personalization"]) for key, s in states.items()} == {
        b"alice": (["adv-a", "adv-b"], "off"), b"bob": ([], "on"), b"dave": (["adv-d"], None)}
    before = namespace_dump(redis_client, settings)
    assert before and not [key for key in before if b"carol" in key]

    emptied(redis_client, settings)
    client = redis_from_url(settings.redis)
    try:
        assert await restore_people(settings, client, latest) == 3  # alice, bob, dave; not carol
        assert namespace_dump(redis_client, settings) == before
        assert await restore_people(settings, client, latest) == 0  # twice changes nothing
        assert namespace_dump(redis_client, settings) == before
    finally:
        await client.aclose()


async def test_state_is_published_once_per_control_in_its_transaction(topics: Settings) -> None:
    """Confirmations and states commit together: one state (or tombstone) per confirmation."""
    settings = topics
    applied = await apply_controls(settings, CONTROLS[:4])
    states = await read_all(settings, "user.controls.state", len(applied), timeout=10, settle=0.5)
    assert len(states) == len(applied)
    alice = [s for s in states if s["user_id"] == "alice"]  # one partition: in the order applied
    assert [(s["hidden_advertisers"], s["personalization"]) for s in alice] == [
        (["adv-a"], None), (["adv-a", "adv-b"], None), (["adv-a", "adv-b"], "off")]


async def test_restore_never_undoes_a_newer_choice(settings: Settings, redis_client: redis.Redis) -> None:
    """Redis emptied, then the person turned personalization on before the restore ran: the
    topic's older "off" does not win; hidden advertisers are only ever added."""
    older = {"schema_version": 1, "user_id": "erin", "hidden_advertisers": ["adv-x"], "personalization": "off",
             "ts": 1}
    redis_client.hset(settings.keys.prefs("erin"), "personalization", "on")
    redis_client.sadd(settings.keys.hidden("erin"), "adv-y")
    client = redis_from_url(settings.redis)
    try:
        assert await restore_people(settings, client, {b"erin": encode(older), b"gone": None}) == 1
    finally:
        await client.aclose()
    assert redis_client.hget(settings.keys.prefs("erin"), "personalization") == b"on"
    assert redis_client.smembers(settings.keys.hidden("erin")) == {b"adv-x", b"adv-y"}
    assert not list(redis_client.scan_iter(match=settings.keys.person("gone") + "*"))


async def test_a_hide_past_the_limit_goes_to_the_dlq_and_changes_nothing(
    topics: Settings, redis_client: redis.Redis
) -> None:
    settings = topics
    full = {f"adv-{i}" for i in range(HIDDEN_MAX)}
    redis_client.sadd(settings.keys.hidden("frank"), *full)
    async with controls_role(settings):
        await produce_json(settings, "user.controls", [control("frank", "hide_advertiser", "adv-one-more")], "user_id")
        dead = await read_all(settings, "user.controls.dlq", 1, timeout=60, settle=0.3)
    assert len(dead) == 1 and f"hides {HIDDEN_MAX} advertisers already" in dead[0]["error"]
    members: Any = redis_client.smembers(settings.keys.hidden("frank"))
    assert {m.decode() for m in members} == full
    assert await read_latest(settings, "user.controls.state") == {}
