"""`forget` erases a person's keys in their own hash slot and the keys of other slots their index
lists (stored clicks), keeping each script to one slot (auction/controls.py: forget_person,
store_listed). Real Redis: the single one, or the Redis Cluster when VICKREY_REDIS names one
(`.ci/run` runs this file on both)."""

from __future__ import annotations

import time

import pytest
import redis
from redis.asyncio import Redis
from redis.crc import key_slot

from auction.controls import FORGET_SCRIPT, forget_person, store_listed
from core.redis_client import redis_from_url
from core.settings import Settings

pytestmark = pytest.mark.integration
TTL_S = 600


def person_state(client: redis.Redis, settings: Settings, user: str, clicks: list[str]) -> dict[str, int]:
    keys = settings.keys
    names = [keys.person_keys(user), keys.hidden(user), keys.prefs(user), keys.caps(user),
             *(keys.click(c) for c in clicks)]
    return {name: int(client.exists(name)) for name in names}


async def stored(settings: Settings, user: str, clicks: list[str]) -> None:
    keys = settings.keys
    client = redis_from_url(settings.redis)
    try:
        await store_listed(client, keys, [(keys.click(c), user, b'{"campaign_id":"c-1"}') for c in clicks], TTL_S)
    finally:
        await client.aclose()


async def forget(settings: Settings, user: str) -> None:
    client: Redis = redis_from_url(settings.redis)
    try:
        await forget_person(client, settings.keys, user)
    finally:
        await client.aclose()


async def test_forget_erases_own_and_listed_keys_of_other_slots(settings: Settings, redis_client: redis.Redis) -> None:
    keys = settings.keys
    mine, theirs = ["k-1", "k-2", "k-3"], ["k-9"]
    assert len({key_slot(keys.click(c).encode()) for c in mine} | {key_slot(keys.person("u-1").encode())}) > 1
    await stored(settings, "u-1", mine)
    await stored(settings, "u-2", theirs)
    # What reserve.lua and the controls role write in the person's own slot.
    redis_client.hset(keys.caps("u-1"), "c-1", f"1 {int(time.time() * 1000) + TTL_S * 1000}")
    redis_client.expire(keys.caps("u-1"), TTL_S)
    redis_client.sadd(keys.hidden("u-1"), "adv-1")
    redis_client.hset(keys.prefs("u-1"), "personalization", "off")
    assert set(person_state(redis_client, settings, "u-1", mine).values()) == {1}
    assert redis_client.ttl(keys.person_keys("u-1")) > TTL_S - 60  # the index lives as long as its keys

    await forget(settings, "u-1")
    assert set(person_state(redis_client, settings, "u-1", mine).values()) == {0}
    assert redis_client.exists(keys.click("k-9"), keys.person_keys("u-2")) == 2, "another person's keys were erased"
    await forget(settings, "u-1")  # replayed after a crash: nothing left, nothing fails


async def test_a_click_listed_after_the_forget_is_erased_by_the_next(settings: Settings,
                                                                    redis_client: redis.Redis) -> None:
    """The store writes a click, then lists it: a forget in between leaves the click, listed in a
    new index right after, and a later forget erases it."""
    keys = settings.keys
    await stored(settings, "u-1", ["k-1"])
    redis_client.set(keys.click("k-2"), b"{}", ex=TTL_S)  # written, not yet listed
    await forget(settings, "u-1")
    assert redis_client.exists(keys.click("k-1")) == 0
    await stored(settings, "u-1", ["k-2"])  # the store goes on: written again, then listed
    await forget(settings, "u-1")
    assert redis_client.exists(keys.click("k-2"), keys.person_keys("u-1")) == 0


async def test_forget_keeps_the_index_until_every_listed_key_is_gone(settings: Settings,
                                                                     redis_client: redis.Redis) -> None:
    """The script erases nothing while the index lists a key of another slot the caller has not
    deleted: a forget cut short keeps the index, and the replay finds every key again."""
    keys = settings.keys
    await stored(settings, "u-1", ["k-1", "k-2"])
    redis_client.sadd(keys.hidden("u-1"), "adv-1")
    client = redis_from_url(settings.redis)
    try:
        finish = client.register_script(FORGET_SCRIPT)
        fixed = [keys.person_keys("u-1"), keys.hidden("u-1"), keys.prefs("u-1")]
        left = await finish(keys=fixed, args=[keys.person("u-1"), keys.click("k-1")])
        assert [k.decode() for k in left] == [keys.click("k-2")]
        assert redis_client.exists(keys.person_keys("u-1"), keys.hidden("u-1")) == 2, "erased before the clicks"
    finally:
        await client.aclose()
    await forget(settings, "u-1")
    assert redis_client.exists(keys.click("k-1"), keys.click("k-2"), keys.person_keys("u-1"), keys.hidden("u-1")) == 0
