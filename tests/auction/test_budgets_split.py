"""The reservation split by hash slot, cut between its steps: a crash after any step is settled by
the record's replay, a zombie's late step changes nothing, and a refusal releases what the other
slots held. Runs on one Redis and (in `.ci/run`'s cluster stage) on a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio

from auction.budgets import Claim, Reservation
from auction.budgets_split import SplitReserver, StaleAttempt
from core.redis_client import redis_from_url
from core.settings import Settings
from tests.auction.factories import cap_count

pytestmark = pytest.mark.integration
DAY = "20261206"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis_from_url(settings.redis)
    yield client
    await client.aclose()


def reserver(client: redis.asyncio.Redis, settings: Settings) -> SplitReserver:
    return SplitReserver(client, settings.keys, 3600)


def budget(redis_client: redis.Redis, settings: Settings, campaign_id: str, micros: int = 10**9) -> None:
    redis_client.hset(settings.keys.budget(campaign_id), mapping={"daily_micros": micros, "total_micros": micros})


def spend(redis_client: redis.Redis, settings: Settings, campaign_id: str) -> tuple[int, int]:
    today = redis_client.get(settings.keys.spend_day(campaign_id, DAY))
    total = redis_client.get(settings.keys.spend_total(campaign_id))
    return int(today or 0), int(total or 0)


def auction(event_id: str, *winners: tuple[str, int], source: str = "0:1", user: str = "u1", cap: int = 0,
            outcome: bytes = b"") -> Claim:
    return Claim(event_id, source, user, outcome or event_id.encode(),
                 [Reservation(cid, charge, max(1, charge), cap, 3600 if cap else 0, f"adv-{cid}") for cid, charge in winners])


async def crash_after_step(one: SplitReserver, claims: list[Claim], step: int) -> None:
    """Run the first `step` steps of a reservation, then stop as a SIGKILL would."""
    answers: list[object] = [None] * len(claims)
    going = await one.claim_events(claims, answers)  # type: ignore[arg-type]
    if step >= 2:
        await one.hold_and_count(going, DAY, "crashed", {})


@pytest.mark.parametrize("step", [1, 2])
async def test_a_replay_settles_what_a_crashed_attempt_held(settings: Settings, redis_client: redis.Redis,
                                                            client: redis.asyncio.Redis, step: int) -> None:
    """The first attempt holds campaigns a and b (and counts a's cap), then dies; its replay wins
    only b at another price: a is released and spend counts the replay's charge alone."""
    budget(redis_client, settings, "a")
    budget(redis_client, settings, "b")
    first = auction("e1", ("a", 40), ("b", 30), cap=5)
    await crash_after_step(reserver(client, settings), [first], step)
    if step == 2:
        assert spend(redis_client, settings, "a") == (40, 40) and cap_count(redis_client, settings, "u1", "a") == 1

    replay = auction("e1", ("b", 25), cap=5, outcome=b"the replay's")
    answers, spends, _ = await reserver(client, settings).reserve([replay], DAY)
    assert [a.kind for a in answers] == ["ok"]
    assert spend(redis_client, settings, "a") == (0, 0)
    assert spend(redis_client, settings, "b") == (25, 25)
    assert cap_count(redis_client, settings, "u1", "a") == 0 and cap_count(redis_client, settings, "u1", "b") == 1
    assert dict((cid, (t, s)) for cid, t, s in spends) == {"a": (0, 0), "b": (25, 25)}
    (again,), _, _ = await reserver(client, settings).reserve([replay], DAY)
    assert (again.kind, again.outcome) == ("replay", b"the replay's")
    assert spend(redis_client, settings, "b") == (25, 25) and cap_count(redis_client, settings, "u1", "b") == 1


async def test_a_zombies_late_step_changes_nothing(settings: Settings, redis_client: redis.Redis,
                                                   client: redis.asyncio.Redis) -> None:
    """A worker claims the event and stalls; another takes the partition over and decides it. The
    stalled one's holds and counts then answer "stale": nothing doubled, nothing undone."""
    budget(redis_client, settings, "a")
    zombie, live = reserver(client, settings), reserver(client, settings)
    claim = auction("e1", ("a", 50), cap=3)
    answers: list[object] = [None]
    going = await zombie.claim_events([claim], answers)  # type: ignore[arg-type]
    assert [item.attempt for item in going] == [1]

    (decided,), _, _ = await live.reserve([auction("e1", ("a", 20), cap=3, outcome=b"live")], DAY)
    assert decided.kind == "ok"
    with pytest.raises(StaleAttempt):
        await zombie.hold_and_count(going, DAY, "zombie", {})
    with pytest.raises(StaleAttempt):
        await zombie.decide(going, DAY, {})
    assert spend(redis_client, settings, "a") == (20, 20)
    assert cap_count(redis_client, settings, "u1", "a") == 1
    (again,), _, _ = await live.reserve([claim], DAY)
    assert (again.kind, again.outcome) == ("replay", b"live")


async def test_a_person_refusal_releases_the_budget_holds(settings: Settings, redis_client: redis.Redis,
                                                          client: redis.asyncio.Redis) -> None:
    """The person hid campaign b's advertiser: the auction is refused, and a's hold (another slot)
    is given back in the same call; the re-run without b is charged once."""
    budget(redis_client, settings, "a")
    budget(redis_client, settings, "b")
    redis_client.sadd(settings.keys.hidden("u1"), "adv-b")
    one = reserver(client, settings)
    (refused,), spends, _ = await one.reserve([auction("e1", ("a", 40), ("b", 30))], DAY)
    assert refused.kind == "refused" and refused.refused == {"b": "user_hidden"}
    assert spend(redis_client, settings, "a") == (0, 0) and ("a", 0, 0) in spends
    (rerun,), _, _ = await one.reserve([auction("e1", ("a", 40))], DAY)
    assert rerun.kind == "ok" and spend(redis_client, settings, "a") == (40, 40)
    assert spend(redis_client, settings, "b") == (0, 0)


async def test_a_cap_refusal_gives_back_the_other_counts(settings: Settings, redis_client: redis.Redis,
                                                         client: redis.asyncio.Redis) -> None:
    """a's cap is full and b's is not: neither is counted for the refused auction."""
    budget(redis_client, settings, "a")
    budget(redis_client, settings, "b")
    one = reserver(client, settings)
    assert [a.kind for a in (await one.reserve([auction("e0", ("a", 1), cap=1)], DAY))[0]] == ["ok"]
    (refused,), _, _ = await one.reserve([auction("e1", ("b", 1), ("a", 1), cap=1)], DAY)
    assert refused.refused == {"a": "frequency_cap"}
    assert cap_count(redis_client, settings, "u1", "b") == 0 and cap_count(redis_client, settings, "u1", "a") == 1
    assert spend(redis_client, settings, "b") == (0, 0)


async def test_a_no_fill_after_refusals_releases_everything(settings: Settings, redis_client: redis.Redis,
                                                            client: redis.asyncio.Redis) -> None:
    """An attempt that crashed holding a, then a re-run that wins nothing (the worker's no-fill
    after refusal rounds): a is released and the event is decided."""
    budget(redis_client, settings, "a")
    await crash_after_step(reserver(client, settings), [auction("e1", ("a", 40), cap=2)], 2)
    (answer,), _, _ = await reserver(client, settings).reserve([auction("e1")], DAY)
    assert answer.kind == "ok"
    assert spend(redis_client, settings, "a") == (0, 0) and cap_count(redis_client, settings, "u1", "a") == 0


async def test_forget_erases_the_counts_kept_per_event(settings: Settings, redis_client: redis.Redis,
                                                       client: redis.asyncio.Redis) -> None:
    from auction.controls import forget_person

    budget(redis_client, settings, "a")
    await reserver(client, settings).reserve([auction("e1", ("a", 1), cap=2)], DAY)
    assert redis_client.hexists(settings.keys.held("u1"), "e1")
    await forget_person(client, settings.keys, "u1")
    assert not redis_client.exists(settings.keys.held("u1"), settings.keys.held_due("u1"))
    assert cap_count(redis_client, settings, "u1", "a") == 0


async def test_every_earlier_attempts_holds_are_released(settings: Settings, redis_client: redis.Redis,
                                                         client: redis.asyncio.Redis) -> None:
    """Attempt 1 holds a and dies; attempt 2 (winning b) dies right after its claim, before it
    released a; attempt 3 wins c: what attempts 1 and 2 may hold is all released."""
    for cid in "abc":
        budget(redis_client, settings, cid)
    await crash_after_step(reserver(client, settings), [auction("e1", ("a", 40))], 2)
    await crash_after_step(reserver(client, settings), [auction("e1", ("b", 30))], 1)
    (answer,), _, _ = await reserver(client, settings).reserve([auction("e1", ("c", 20))], DAY)
    assert answer.kind == "ok"
    assert [spend(redis_client, settings, cid) for cid in "abc"] == [(0, 0), (0, 0), (20, 20)]


async def test_a_zombies_late_hold_finds_a_later_attempt_that_charged_nothing(
        settings: Settings, redis_client: redis.Redis, client: redis.asyncio.Redis) -> None:
    """The later attempt wins the campaign at no charge (CPC): it still leaves its attempt number,
    so the zombie's late hold of 50 is refused instead of staying in spend for good."""
    budget(redis_client, settings, "a")
    zombie = reserver(client, settings)
    going = await zombie.claim_events([auction("e1", ("a", 50))], [None])  # type: ignore[list-item]
    (decided,), _, _ = await reserver(client, settings).reserve([auction("e1", ("a", 0))], DAY)
    assert decided.kind == "ok"
    with pytest.raises(StaleAttempt):
        await zombie.hold_and_count(going, DAY, "zombie", {})
    assert spend(redis_client, settings, "a") == (0, 0)


async def test_a_take_back_never_crosses_into_a_new_cap_window(
        settings: Settings, redis_client: redis.Redis, client: redis.asyncio.Redis) -> None:
    """Cap 1 per second. e1's first attempt counts and dies; the window ends; e2 counts in the new
    one; e1's replay must not take e2's count back: it is refused, one impression per window."""
    budget(redis_client, settings, "a")
    capped = [Reservation("a", 1, 1, 1, 1, "adv-a")]
    await crash_after_step(reserver(client, settings), [Claim("e1", "0:1", "u1", b"e1", capped)], 2)
    await asyncio.sleep(1.2)
    (second,), _, _ = await reserver(client, settings).reserve([Claim("e2", "0:2", "u1", b"e2", capped)], DAY)
    assert second.kind == "ok" and cap_count(redis_client, settings, "u1", "a") == 1
    (replay,), _, _ = await reserver(client, settings).reserve([Claim("e1", "0:1", "u1", b"e1", capped)], DAY)
    assert replay.kind == "refused" and replay.refused == {"a": "frequency_cap"}
    assert cap_count(redis_client, settings, "u1", "a") == 1


async def test_what_events_counted_is_pruned_after_its_ttl(
        settings: Settings, redis_client: redis.Redis, client: redis.asyncio.Redis) -> None:
    """A person's `held` hash keeps the entries of the last TTL only (here 1 s), however many
    capped impressions came before."""
    budget(redis_client, settings, "a")
    short = SplitReserver(client, settings.keys, 1)
    await short.reserve([auction(f"e{i}", ("a", 1), cap=100, source=f"0:{i}") for i in range(20)], DAY)
    assert redis_client.hlen(settings.keys.held("u1")) == 20
    await asyncio.sleep(1.1)
    await short.reserve([auction("e99", ("a", 1), cap=100, source="0:99")], DAY)
    assert redis_client.hkeys(settings.keys.held("u1")) == [b"e99"]
    assert redis_client.zcard(settings.keys.held_due("u1")) == 1
