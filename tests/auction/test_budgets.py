"""The reservation against the real Redis: atomic budgets, exact frequency caps, idempotent
replays. Each test runs with both reservers: `reserve.lua` in one call (one Redis) and the
reservation split by hash slot (auction/budgets_split.py, what a Redis Cluster gets; it runs on one
Redis too). On a cluster, the one-call reserver cannot run, and its cases say so as skips."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time

import pytest
import redis
import redis.asyncio

from auction.budgets import BudgetReserver, Claim, Reservation, entry_of
from auction.budgets_split import SplitReserver
from core.keys import Keys, parse_cap
from core.redis_client import is_cluster, redis_from_url
from core.settings import Settings
from tests.auction.factories import cap_count, kept_event, kept_event_ttl

pytestmark = pytest.mark.integration
DAY = "20261127"
Reserver = BudgetReserver | SplitReserver
KINDS = {"one_call": BudgetReserver, "split": SplitReserver}


def one_redis(client: redis.Redis) -> str:
    """The one-call reserver's kind, for its own layout's cases (skipped on a Redis Cluster)."""
    if is_cluster(client):
        pytest.skip("reserve.lua touches many slots in one call: a Redis Cluster gets the split reserver")
    return "one_call"


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest, redis_client: redis.Redis) -> str:
    return one_redis(redis_client) if request.param == "one_call" else str(request.param)


def make(kind: str, client: redis.asyncio.Redis, keys: Keys) -> Reserver:
    return KINDS[kind](client, keys, 3600)


def undecided(value: bytes | None) -> bool:
    """No outcome kept: nothing, or (split) an attempt in flight."""
    return value is None or b"\n?" in value


def set_budget(client: redis.Redis, settings: Settings, campaign_id: str, daily: int, total: int) -> None:
    client.hset(settings.keys.budget(campaign_id), mapping={"daily_micros": daily, "total_micros": total})


def spend(client: redis.Redis, settings: Settings, campaign_id: str) -> tuple[int, int]:
    today = client.get(settings.keys.spend_day(campaign_id, DAY))
    total = client.get(settings.keys.spend_total(campaign_id))
    return int(today or 0), int(total or 0)


def claim(event_id: str, campaign_id: str, charge: int, user: str = "u1", cap: tuple[int, int] = (0, 0), source: str = "") -> Claim:
    return Claim(
        event_id=event_id,
        source=source or f"0:{event_id}",
        user_id=user,
        outcome=f'{{"event_id":"{event_id}"}}'.encode(),
        reservations=[Reservation(campaign_id, charge, max(1, charge), cap[0], cap[1])],
    )


async def reserve(settings: Settings, claims: list[Claim], kind: str) -> list[str]:
    client = redis_from_url(settings.redis)
    try:
        answers, _, _ = await make(kind, client, settings.keys).reserve(claims, DAY)
    finally:
        await client.aclose()
    return [a.kind for a in answers]


def _reserver_process(settings: Settings, kind: str, worker: int, auctions: int, charges: list[int],
                      results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> None:
        client = redis_from_url(settings.redis)
        reserver = make(kind, client, settings.keys)
        admitted = 0
        for start in range(0, auctions, 50):
            batch = [claim(f"w{worker}-e{i}", "tight", charges[i % len(charges)]) for i in range(start, start + 50)]
            answers, _, _ = await reserver.reserve(batch, DAY)
            for answer, item in zip(answers, batch, strict=True):
                if answer.kind == "ok":
                    admitted += item.reservations[0].charge_micros
        results.put(admitted)
        await client.aclose()

    asyncio.run(run())


def test_concurrent_reservers_never_overspend(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    """Four processes, 4,000 auctions, one budget of 12,345 micros: spend stops exactly where the
    admitted charges say, never a micro above the budget."""
    budget = 12_345
    set_budget(redis_client, settings, "tight", daily=budget, total=budget * 10)
    charges = [random.Random(i).randint(1, 40) for i in range(97)]
    results: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_reserver_process, args=(settings, kind, w, 1000, charges, results)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    admitted = sum(results.get(timeout=5) for _ in procs)
    today, total = spend(redis_client, settings, "tight")
    assert today == total == admitted
    assert today <= budget
    assert budget - today < 40, "the budget should be used up to within one charge"


async def test_total_budget_binds_too(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    set_budget(redis_client, settings, "c", daily=1_000_000, total=100)
    kinds = await reserve(settings, [claim(f"e{i}", "c", 30) for i in range(5)], kind)
    assert kinds == ["ok", "ok", "ok", "refused", "refused"]
    assert spend(redis_client, settings, "c") == (90, 90)


async def test_frequency_cap_gives_exactly_n(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    set_budget(redis_client, settings, "capped", daily=10**9, total=10**9)
    claims = [claim(f"e{i}", "capped", 5, user=f"user{i % 3}", cap=(4, 3600)) for i in range(30)]
    kinds = await reserve(settings, claims, kind)
    per_user = {f"user{u}": sum(1 for c, k in zip(claims, kinds, strict=True) if k == "ok" and c.user_id == f"user{u}") for u in range(3)}
    assert per_user == {"user0": 4, "user1": 4, "user2": 4}
    assert {user: cap_count(redis_client, settings, user, "capped") for user in per_user} == per_user
    assert redis_client.ttl(settings.keys.caps("user0")) > 3500


async def test_a_cap_window_ends_and_the_next_starts(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    """At most 1 per second: the second impression is refused, and once the window has ended the
    next starts a new one; the write drops the ended window's field, and the person's hash lives
    as long as its longest window (a short window never shortens it)."""
    set_budget(redis_client, settings, "short", daily=10**9, total=10**9)
    set_budget(redis_client, settings, "long", daily=10**9, total=10**9)
    set_budget(redis_client, settings, "brief", daily=10**9, total=10**9)
    assert await reserve(settings, [claim("e0", "brief", 5, cap=(1, 1)), claim("e1", "short", 5, cap=(1, 1)), claim("e2", "long", 5, cap=(1, 3600)),
                                    claim("e3", "short", 5, cap=(1, 1))], kind) == ["ok", "ok", "ok", "refused"]
    caps = settings.keys.caps("u1")
    first_end = parse_cap(redis_client.hget(caps, "short"))[1]
    time.sleep(1.1)
    assert cap_count(redis_client, settings, "u1", "short") == 0  # its window has ended
    assert await reserve(settings, [claim("e4", "short", 5, cap=(1, 1))], kind) == ["ok"]
    count, ends_ms = parse_cap(redis_client.hget(caps, "short"))
    assert count == 1 and ends_ms >= first_end + 1000
    assert redis_client.hexists(caps, "brief") == 0  # an ended window, dropped by the write
    assert cap_count(redis_client, settings, "u1", "long") == 1
    assert redis_client.ttl(caps) > 3500
    assert await reserve(settings, [claim("e5", "short", 5, cap=(1, 1))], kind) == ["refused"]
    redis_client.delete(settings.keys.budget("long"))  # the next claim of "long" is refused: nothing counted
    time.sleep(1.1)
    assert await reserve(settings, [claim("e6", "short", 5, user="u1", cap=(1, 1)),
                                    claim("e7", "long", 5, cap=(5, 3600))], kind) == ["ok", "refused"]
    assert set(redis_client.hkeys(caps)) == {b"short", b"long"}
    assert parse_cap(redis_client.hget(caps, "long"))[0] == 1


async def test_a_person_with_thousands_of_ended_windows(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    """More ended windows than Lua's stack takes in one call (~8,000 values): the write drops them
    all, in chunks, and counts the new window."""
    set_budget(redis_client, settings, "capped", daily=10**9, total=10**9)
    caps = settings.keys.caps("u1")
    ended_ms = int(time.time() * 1000) - 1000
    redis_client.hset(caps, mapping={f"old-{n}": f"1 {ended_ms}" for n in range(9_000)})
    redis_client.expire(caps, 60)
    assert await reserve(settings, [claim("e1", "capped", 5, cap=(2, 3600))], kind) == ["ok"]
    assert redis_client.hkeys(caps) == [b"capped"]
    assert cap_count(redis_client, settings, "u1", "capped") == 1
    assert redis_client.ttl(caps) > 3500


async def test_replayed_batch_changes_nothing(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    batch = [claim(f"e{i}", "c", 7, cap=(100, 60), source=f"3:{i}") for i in range(20)]
    first = await reserve(settings, batch, kind)
    assert first == ["ok"] * 20
    before = spend(redis_client, settings, "c"), redis_client.hgetall(settings.keys.caps("u1"))
    again = await reserve(settings, batch, kind)
    assert again == ["replay"] * 20
    assert (spend(redis_client, settings, "c"), redis_client.hgetall(settings.keys.caps("u1"))) == before
    assert cap_count(redis_client, settings, "u1", "c") == 20
    assert before[0] == (140, 140)


async def test_same_event_from_another_record_is_a_duplicate(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    assert await reserve(settings, [claim("e1", "c", 7, source="0:1"), claim("e1", "c", 7, source="0:2")], kind) == ["ok", "dup"]
    assert spend(redis_client, settings, "c") == (7, 7)


async def test_refusal_is_all_or_nothing(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    """Two winners in one auction, the second over budget: neither is charged."""
    set_budget(redis_client, settings, "rich", daily=10**9, total=10**9)
    set_budget(redis_client, settings, "poor", daily=5, total=5)
    two = Claim("e1", "0:1", "u1", b"{}", [Reservation("rich", 50, 50), Reservation("poor", 6, 6)])
    client = redis_from_url(settings.redis)
    answers, spends, _ = await make(kind, client, settings.keys).reserve([two], DAY)
    await client.aclose()
    assert answers[0].kind == "refused" and answers[0].refused == {"poor": "budget"}
    assert spend(redis_client, settings, "rich") == (0, 0)
    assert undecided(kept_event(redis_client, settings, "e1"))
    assert sorted(spends) == [("poor", 0, 0), ("rich", 0, 0)]


async def test_replay_returns_the_kept_bytes(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    outcome = '{"a":"ünïcödé \\/ \\"quoted\\""}\n{"b":2}'.encode()
    first = Claim("e1", "0:1", "u1", outcome, [Reservation("c", 3, 3)])
    client = redis_from_url(settings.redis)
    reserver = make(kind, client, settings.keys)
    (answer,), spends, _ = await reserver.reserve([first], DAY)
    assert answer.kind == "ok" and spends == [("c", 3, 3)]
    changed = Claim("e1", "0:1", "u1", b"something else", [Reservation("c", 99, 99)])
    (again,), _, _ = await reserver.reserve([changed], DAY)
    await client.aclose()
    assert again.kind == "replay" and again.outcome == outcome
    assert spend(redis_client, settings, "c") == (3, 3)


async def test_keys_expire(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    await reserve(settings, [claim("e1", "c", 7, cap=(3, 120))], kind)
    assert 0 < redis_client.ttl(settings.keys.spend_day("c", DAY)) <= 3 * 86400
    # remembered for at least the event TTL: its own key's, or (one Redis) its period's hash's,
    # which goes when the last period that reads it ends (3600 s periods: the one after, + 60 s)
    assert 0 < kept_event_ttl(redis_client, settings, "e1") <= (3600 if kind == "split" else 2 * 3600 + 60)
    assert 0 < redis_client.ttl(settings.keys.caps("u1")) <= 120


def blob_keys(client: redis.Redis, settings: Settings) -> list[bytes]:
    return list(client.scan_iter(match=settings.keys.blob("*"), count=1000))


async def test_outcomes_are_kept_until_committed_then_only_the_source(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    """One blob per call keeps the outcomes; once the caller says they are committed the next
    call drops it. A record read again then gets "committed" (nothing to republish, no charge);
    a reused event_id is still a duplicate for the event TTL."""
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    client = redis_from_url(settings.redis)
    reserver = make(kind, client, settings.keys)
    first = [claim(f"e{i}", "c", 5, source=f"1:{i}") for i in range(10)]
    answers, _, blob_id = await reserver.reserve(first, DAY)
    assert [a.kind for a in answers] == ["ok"] * 10
    assert blob_keys(redis_client, settings) == [settings.keys.blob(blob_id).encode()]
    assert 3600 < redis_client.ttl(settings.keys.blob(blob_id)) <= 3660  # outlives the events pointing at it
    answers, _, _ = await reserver.reserve(first[:3], DAY)  # a failed commit: replayed from the blob
    assert [(a.kind, a.outcome) for a in answers] == [("replay", c.outcome) for c in first[:3]]

    reserver.committed([blob_id])
    answers, _, _ = await reserver.reserve([claim("e100", "c", 5, source="1:100")], DAY)
    assert [a.kind for a in answers] == ["ok"]
    assert settings.keys.blob(blob_id).encode() not in blob_keys(redis_client, settings)
    again, _, _ = await reserver.reserve(first[:2] + [claim("e5", "c", 5, source="2:77")], DAY)
    assert [a.kind for a in again] == ["committed", "committed", "dup"]
    assert again[2].first_source == "1:5"
    assert spend(redis_client, settings, "c") == (55, 55)
    await reserver.drop_committed()  # nothing pending: a no-op
    await client.aclose()


async def test_drop_committed_at_shutdown(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    client = redis_from_url(settings.redis)
    reserver = make(kind, client, settings.keys)
    _, _, blob_id = await reserver.reserve([claim("e1", "c", 5)], DAY)
    assert len(blob_keys(redis_client, settings)) == 1
    reserver.committed([blob_id])
    await reserver.drop_committed()
    await client.aclose()
    assert blob_keys(redis_client, settings) == []
    assert kept_event(redis_client, settings, "e1") is not None  # the event is still known


async def test_outcome_kept_whole_by_an_older_version_still_replays(settings: Settings, redis_client: redis.Redis, kind: str) -> None:
    """Keys written before outcomes moved to blobs ("<source>\n<outcome bytes>") replay as before."""
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    redis_client.set(settings.keys.outcome("old"), b'0:9\n{"event_id":"old"}', ex=3600)
    client = redis_from_url(settings.redis)
    answers, _, _ = await make(kind, client, settings.keys).reserve([claim("old", "c", 5, source="0:9")], DAY)
    await client.aclose()
    assert (answers[0].kind, answers[0].outcome) == ("replay", b'{"event_id":"old"}')
    assert spend(redis_client, settings, "c") == (0, 0)


async def test_each_kept_outcome_is_its_own_among_every_kind_of_answer(settings: Settings, redis_client: redis.Redis,
                                                                       kind: str) -> None:
    """One call with auctions of every answer and outcomes of different lengths, in mixed order:
    each auction's replay hands back exactly its own outcome (where it sits in the call's blob
    counts every auction before it, refused and duplicate ones too)."""
    set_budget(redis_client, settings, "rich", daily=10**9, total=10**9)
    set_budget(redis_client, settings, "poor", daily=5, total=5)

    def made(event_id: str, source: str, campaign_id: str, charge: int, size: int) -> Claim:
        return Claim(event_id, source, "u1", (event_id * size).encode()[:size], [Reservation(campaign_id, charge, charge)])

    client = redis_from_url(settings.redis)
    reserver = make(kind, client, settings.keys)
    (first,), _, _ = await reserver.reserve([made("e0", "0:0", "rich", 1, 11)], DAY)
    batch = [made("e0", "0:99", "rich", 1, 300),  # the same event from another record: dup
             made("e1", "0:1", "poor", 6, 7),  # over budget: refused
             made("e2", "0:2", "rich", 2, 123),
             made("e0", "0:0", "rich", 1, 45),  # the first record again: replay
             made("e3", "0:3", "rich", 3, 1),
             made("e4", "0:4", "poor", 9, 64),  # refused again
             made("e5", "0:5", "rich", 4, 77)]
    answers, _, _ = await reserver.reserve(batch, DAY)
    assert first.kind == "ok"
    assert [a.kind for a in answers] == ["dup", "refused", "ok", "replay", "ok", "refused", "ok"]
    assert answers[3].outcome == made("e0", "0:0", "rich", 1, 11).outcome
    again = [made(event_id, f"0:{event_id[1:]}", "rich", 1, 2) for event_id in ("e2", "e3", "e5", "e0")]
    replayed, _, _ = await reserver.reserve(again, DAY)
    await client.aclose()
    assert [(a.kind, a.outcome) for a in replayed] == [
        ("replay", batch[2].outcome), ("replay", batch[4].outcome), ("replay", batch[6].outcome),
        ("replay", made("e0", "0:0", "rich", 1, 11).outcome)]
    assert spend(redis_client, settings, "rich") == (10, 10)


async def test_a_claim_s_own_entry_and_entry_of_reserve_alike(settings: Settings, redis_client: redis.Redis) -> None:
    """`Claim.entry` (written by the compiled step) stands for `entry_of` the claim: the one-call
    reserver sends it as it is, and Redis ends in the same state either way."""
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    if is_cluster(redis_client):
        pytest.skip("reserve.lua touches many slots in one call: a Redis Cluster gets the split reserver")
    plain = [claim(f"e{n}", "c", 5, user="u1", cap=(2, 60)) for n in range(3)]
    with_entry = [claim(f"f{n}", "c", 5, user="u3", cap=(2, 60)) for n in range(3)]
    for made in with_entry:
        made.entry = entry_of(made)
    assert await reserve(settings, plain, "one_call") == ["ok", "ok", "refused"]  # the cap: 2 per person
    assert await reserve(settings, with_entry, "one_call") == ["ok", "ok", "refused"]
    assert spend(redis_client, settings, "c") == (20, 20)
    assert cap_count(redis_client, settings, "u3", "c") == cap_count(redis_client, settings, "u1", "c") == 2
    garbled = claim("g1", "c", 5, user="u2")
    garbled.entry = entry_of(claim("g1", "c", 7, user="u2"))  # the entry is what Redis reads
    assert await reserve(settings, [garbled], "one_call") == ["ok"]
    assert spend(redis_client, settings, "c") == (27, 27)


async def test_one_redis_knows_an_event_for_every_period_its_ttl_spans(settings: Settings, redis_client: redis.Redis) -> None:
    """One Redis keeps decided events in one hash per period: a call reads as many periods back
    as the event TTL spans, and no further. With 60 s periods and a 3600 s TTL a call reads 60
    periods back: an event kept 59 periods before the first call is still known (replayed, or a
    duplicate); one kept 62 before it is forgotten."""
    kind = one_redis(redis_client)
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    redis_client.set(settings.keys.seen_layout(), "60 0")
    client = redis_from_url(settings.redis)
    reserver = make(kind, client, settings.keys)

    def move_back(event_id: str, periods: int) -> None:
        now = int(redis_client.time()[0]) // 60
        for period in range(now - 2, now + 2):  # the call's period (a boundary may fall between)
            value = redis_client.hget(settings.keys.seen(period), event_id)
            if value is not None:
                redis_client.hdel(settings.keys.seen(period), event_id)
                redis_client.hset(settings.keys.seen(period - periods), event_id, value)
                return
        raise AssertionError(f"{event_id} not kept")

    first = [claim("e1", "c", 5, source="0:1"), claim("e2", "c", 5, source="0:2")]
    assert [a.kind for a in (await reserver.reserve(first, DAY))[0]] == ["ok", "ok"]
    move_back("e1", 59)  # 59 back from the call's period: 60 back or fewer when read
    move_back("e2", 62)
    again, _, _ = await reserver.reserve([*first, claim("e1", "c", 5, source="3:3")], DAY)
    await client.aclose()
    assert [a.kind for a in again] == ["replay", "ok", "dup"]
    assert again[0].outcome == first[0].outcome
    assert spend(redis_client, settings, "c") == (15, 15)


async def test_one_redis_reads_the_older_per_event_keys_only_while_they_may_be_left(
        settings: Settings, redis_client: redis.Redis) -> None:
    """The first call of a reserver writes the layout key: with a key of the older layout left,
    events are also looked up there for one TTL; with none, never. The script writes the same
    (for one TTL) if the layout key is gone."""
    kind = one_redis(redis_client)
    set_budget(redis_client, settings, "c", daily=10**9, total=10**9)
    client = redis_from_url(settings.redis)
    await make(kind, client, settings.keys).reserve([claim("new", "c", 5)], DAY)
    assert redis_client.get(settings.keys.seen_layout()) == b"3600 0"  # no older key: never read
    redis_client.set(settings.keys.outcome("old"), b'0:9\n{"event_id":"old"}', ex=3600)
    answers, _, _ = await make(kind, client, settings.keys).reserve([claim("old", "c", 5, source="0:9")], DAY)
    assert answers[0].kind == "ok"  # not looked up: the layout says none are left

    redis_client.delete(settings.keys.seen_layout())
    redis_client.set(settings.keys.outcome("older"), b'0:8\n{"event_id":"older"}', ex=3600)
    now_ms = int(redis_client.time()[0]) * 1000
    answers, _, _ = await make(kind, client, settings.keys).reserve([claim("older", "c", 5, source="0:8")], DAY)
    assert (answers[0].kind, answers[0].outcome) == ("replay", b'{"event_id":"older"}')
    period_s, legacy_until = map(int, redis_client.get(settings.keys.seen_layout()).split())
    assert period_s == 3600 and now_ms + 3600_000 <= legacy_until <= now_ms + 3602_000

    reserver = make(kind, client, settings.keys)
    await reserver.reserve([claim("x", "c", 5)], DAY)
    redis_client.delete(settings.keys.seen_layout())  # gone after the reserver checked it: the script writes it
    answers, _, _ = await reserver.reserve([claim("older", "c", 5, source="0:8")], DAY)
    await client.aclose()
    assert answers[0].kind == "replay"
    assert int(redis_client.get(settings.keys.seen_layout()).split()[1]) >= now_ms + 3600_000
    assert spend(redis_client, settings, "c") == (15, 15)
