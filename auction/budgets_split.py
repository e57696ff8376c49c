"""The reservation split by hash slot: what `reserve.lua` does in one call, for a Redis Cluster.

An auction's reservation touches three kinds of slot: its event (`{e:<bucket>}`: is it decided, and
where is its outcome), its person (`{u:<id>}`: hidden advertisers, frequency caps) and each
winning campaign (`{c:<id>}`: budget and spend). A cluster runs a script on one slot only, so here
each part is a script of its own (`reserve_events.lua`, `reserve_people.lua`,
`reserve_budgets.lua`), one call per slot touched, pipelined, in three round trips per chunk:

1. **claim** each event (event slots): decided already → replay, committed or duplicate, as
   `reserve.lua` answers; else the event is marked as in flight with an *attempt* number (1, or one
   more than the last attempt of the same record) and the campaigns this attempt will hold.
2. **hold** (campaign slots) and **count** (person slots), in one pipeline: each campaign checks
   its budget and holds the charge, each person checks hidden advertisers and caps and counts
   the windows; the chunk's outcomes go into their blob.
3. **final** (event slots): an auction every part accepted gets its outcome kept, as decided;
   an auction some part refused is released (holds and counts set to nothing) and goes back to
   the worker as refused, to run again without the refused campaigns.

Why it is still exact with no step atomic across slots:

- A hold or a count is *set*, not added: `hold(event, campaign) := charge` takes back what an
  earlier attempt of the event held before adding its own, so any step can be run again (a
  replay after a crash, a re-run after a refusal) and spend still counts each event once, at the
  charge of the attempt that was decided.
- Every attempt records in the event's slot, before it holds anything, the campaigns it will hold;
  the next attempt releases those it does not hold again. So a crash between any two steps leaves
  holds that the record's replay (the loop reads uncommitted records again) settles.
- Each hold, count and claim carries its attempt number, and a step of an older attempt than the
  one recorded is refused ("stale"): a zombie worker (one whose partitions were taken over while it
  ran) cannot undo or double a later attempt's holds, nor keep an outcome the later one did not
  decide. The worker raises on it; the loop rewinds.
- Kafka is still the commit point: a batch is published only once step 3 kept every outcome, so a
  committed record is always "decided" in Redis.

What differs from one Redis: within a chunk, an auction refused in one slot keeps its holds in
the other slots until step 3 releases them, so a later auction of the same chunk can be refused
budget that step 3 then gives back. That auction runs again without that campaign (never more
spend than the budget, sometimes a little less delivery in one batch). Each hold and count costs
a key for the event TTL (`core/keys.py`), which a zombie's late step needs to find.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.crc import key_slot

from auction.budgets import COMMITTED, OK, Answer, BudgetReserver, Claim, with_caps
from core.keys import Keys
from core.redis_client import PipelineScripts, is_cluster

_SCRIPTS = resources.files("auction")
EVENTS = _SCRIPTS.joinpath("reserve_events.lua").read_text()
BUDGETS = _SCRIPTS.joinpath("reserve_budgets.lua").read_text()
PEOPLE = with_caps("reserve_people.lua")


class StaleAttempt(RuntimeError):
    """A later attempt of the same record took over (this worker is a zombie): publish nothing."""


class Attempt:
    """One claim that Redis let go ahead: its attempt number and what earlier attempts held."""

    __slots__ = ("position", "claim", "attempt", "prior", "where", "refused", "held", "counted")

    def __init__(self, position: int, claim: Claim, attempt: int, prior: list[str]) -> None:
        self.position = position
        self.claim = claim
        self.attempt = attempt
        self.prior = prior
        self.where = ""
        self.refused: dict[str, str] = {}
        self.held: list[str] = []  # campaigns whose hold step 2 placed
        self.counted = False  # step 2 counted this attempt's caps


class SplitReserver(BudgetReserver):
    """`BudgetReserver`'s interface and answers, each step on one hash slot (module docstring);
    committed blobs are let go as there (`committed`, `drop_committed`)."""

    def __init__(self, redis: Redis, keys: Keys, outcome_ttl_s: int) -> None:
        super().__init__(redis, keys, outcome_ttl_s)
        self._scripts = PipelineScripts(redis, EVENTS, BUDGETS, PEOPLE)
        self._events, self._budgets, self._people = self._scripts.scripts

    async def reserve(self, claims: list[Claim], day: str) -> tuple[list[Answer], list[tuple[str, int, int]], str]:
        """As `BudgetReserver.reserve`. Raises StaleAttempt when a later attempt took over."""
        if not claims:
            return [], [], ""
        await self._scripts.ready()  # a cluster pipeline does not load a missing script by itself
        answers: list[Answer | None] = [None] * len(claims)
        going = await self.claim_events(claims, answers)
        spends: dict[str, tuple[int, int]] = {}
        blob_id = os.urandom(8).hex() if going else ""
        if going:
            await self.hold_and_count(going, day, blob_id, spends)
            await self.decide(going, day, spends)
            for item in going:
                answers[item.position] = Answer("refused", refused=item.refused) if item.refused else OK
        done = [answer for answer in answers if answer is not None]
        assert len(done) == len(claims)
        return done, [(cid, today, total) for cid, (today, total) in spends.items()], blob_id

    # -- the three steps --------------------------------------------------------------------------

    async def claim_events(self, claims: list[Claim], answers: list[Answer | None]) -> list[Attempt]:
        """Step 1: the events' answers; the claims that go ahead, in claim order."""
        keys = self.keys
        by_slot = _by_slot([keys.outcome(claim.event_id) for claim in claims])
        pipe: Any = self._redis.pipeline(transaction=False)
        for key_list, positions in by_slot:
            payload = [[claims[p].source, [r.campaign_id for r in claims[p].reservations]] for p in positions]
            await self._events(keys=key_list, args=["claim", self.outcome_ttl_s, orjson.dumps(payload)], client=pipe)
        drop = self.take_drops()
        for blob_id in drop:  # blobs whose outcomes are committed in Kafka
            pipe.execute_command("UNLINK", keys.blob(blob_id))  # the cluster pipeline's unlink() is a coroutine
        try:
            replies = await self._scripts.execute(pipe)
        except BaseException:
            self.put_back_drops(drop)
            raise
        going: list[Attempt] = []
        kept: list[tuple[int, str]] = []  # (position, where its outcome is)
        for (_keys, positions), raw in zip(by_slot, replies[: len(by_slot)], strict=True):
            for position, reply in zip(positions, orjson.loads(raw), strict=True):
                kind = reply[0]
                if kind == "go":
                    going.append(Attempt(position, claims[position], int(reply[1]), list(reply[2] or [])))
                elif kind == "dup":
                    answers[position] = Answer("dup", first_source=str(reply[1]))
                else:
                    kept.append((position, str(reply[1])))
        going.sort(key=lambda item: item.position)
        if kept:
            await self._read_kept(kept, answers)
        return going

    async def _read_kept(self, kept: list[tuple[int, str]], answers: list[Answer | None]) -> None:
        """Decided events of the same record: their kept outcome (a replay), or "committed" once
        its blob was dropped."""
        pipe: Any = self._redis.pipeline(transaction=False)
        reads: list[tuple[int, int]] = []  # (position, length)
        for position, where in kept:
            if not where.startswith("@"):  # kept whole by an older version
                answers[position] = Answer("replay", outcome=where.encode())
                continue
            blob_id, start, length = where[1:].split(" ")
            first, size = int(start), int(length)
            pipe.getrange(self.keys.blob(blob_id), first, first + size - 1)
            reads.append((position, size))
        if reads:
            for (position, size), outcome in zip(reads, await self._scripts.execute(pipe), strict=True):
                answers[position] = Answer("replay", outcome=bytes(outcome)) if len(outcome) == size else COMMITTED

    async def hold_and_count(self, going: list[Attempt], day: str, blob_id: str,
                              spends: dict[str, tuple[int, int]]) -> None:
        """Step 2: every campaign's holds and every person's counts, and the chunk's blob."""
        holds: dict[str, list[tuple[Attempt, list[Any]]]] = {}
        counts: dict[str, list[tuple[Attempt, list[Any]]]] = {}
        outcomes: list[bytes] = []
        start = 0
        for item in going:
            claim = item.claim
            length = len(claim.outcome)
            item.where = f"@{blob_id} {start} {length}"
            outcomes.append(claim.outcome)
            start += length
            now = {r.campaign_id for r in claim.reservations}
            for r in claim.reservations:
                holds.setdefault(r.campaign_id, []).append((item, [claim.event_id, item.attempt, r.charge_micros, r.need_micros]))
            for campaign_id in item.prior:
                if campaign_id not in now:
                    holds.setdefault(campaign_id, []).append((item, [claim.event_id, item.attempt]))
            if claim.reservations or item.attempt > 1:
                checks = [[r.campaign_id, r.cap_max, r.cap_window_s, r.advertiser_id] for r in claim.reservations]
                counts.setdefault(claim.user_id, []).append((item, [claim.event_id, item.attempt, checks]))
        pipe: Any = self._redis.pipeline(transaction=False)
        pipe.set(self.keys.blob(blob_id), b"".join(outcomes), ex=self.outcome_ttl_s + 60)
        await self._send(pipe, holds, counts, day)
        replies = await self._scripts.execute(pipe)
        self._read(replies[1:], holds, counts, spends, step=2)

    async def decide(self, going: list[Attempt], day: str, spends: dict[str, tuple[int, int]]) -> None:
        """Step 3: keep the accepted outcomes; release what the refused auctions hold."""
        accepted = [item for item in going if not item.refused]
        holds: dict[str, list[tuple[Attempt, list[Any]]]] = {}
        counts: dict[str, list[tuple[Attempt, list[Any]]]] = {}
        for item in going:
            if item.refused:
                event_id = item.claim.event_id
                for campaign_id in item.held:
                    holds.setdefault(campaign_id, []).append((item, [event_id, item.attempt]))
                if item.counted:
                    counts.setdefault(item.claim.user_id, []).append((item, [event_id, item.attempt]))
        by_slot = _by_slot([self.keys.outcome(item.claim.event_id) for item in accepted])
        pipe: Any = self._redis.pipeline(transaction=False)
        for key_list, positions in by_slot:
            payload = [[accepted[p].claim.source, accepted[p].attempt, accepted[p].where] for p in positions]
            await self._events(keys=key_list, args=["final", self.outcome_ttl_s, orjson.dumps(payload)], client=pipe)
        await self._send(pipe, holds, counts, day)
        replies = await self._scripts.execute(pipe)
        for raw in replies[: len(by_slot)]:
            if any(answer != "ok" for answer in orjson.loads(raw)):
                raise StaleAttempt("a later attempt of a record in this batch took over its reservation")
        self._read(replies[len(by_slot):], holds, counts, spends, step=3)

    async def _send(self, pipe: Any, holds: dict[str, list[tuple[Attempt, list[Any]]]],
                    counts: dict[str, list[tuple[Attempt, list[Any]]]], day: str) -> None:
        keys, ttl = self.keys, self.outcome_ttl_s
        for campaign_id, items in holds.items():
            await self._budgets(keys=[keys.budget(campaign_id)],
                                args=[self._templates, day, ttl, campaign_id, orjson.dumps([args for _, args in items])],
                                client=pipe)
        for user_id, items in counts.items():
            await self._people(keys=[keys.person_keys(user_id)],
                               args=[self._templates, ttl, user_id, orjson.dumps([args for _, args in items])],
                               client=pipe)

    @staticmethod
    def _read(replies: list[Any], holds: dict[str, list[tuple[Attempt, list[Any]]]],
              counts: dict[str, list[tuple[Attempt, list[Any]]]], spends: dict[str, tuple[int, int]],
              step: int) -> None:
        """The campaigns' and then the people's answers, in the order `_send` sent them. In step
        2 they say what each attempt holds, counted and was refused; step 3's releases answer "ok"."""
        for (campaign_id, items), raw in zip(holds.items(), replies[: len(holds)], strict=True):
            answers, today, total = orjson.loads(raw)
            spends[campaign_id] = (int(today), int(total))
            for (item, args), answer in zip(items, answers, strict=True):
                if answer == "stale":
                    raise StaleAttempt(f"a later attempt of event {item.claim.event_id!r} holds campaign {campaign_id!r}")
                if step == 2 and answer == "budget":
                    item.refused[campaign_id] = "budget"
                elif step == 2 and len(args) > 2:  # a hold, not a release of an earlier attempt's
                    item.held.append(campaign_id)
        for (_user_id, items), raw in zip(counts.items(), replies[len(holds):], strict=True):
            for (item, _args), answer in zip(items, orjson.loads(raw), strict=True):
                if answer == "stale":
                    raise StaleAttempt(f"a later attempt of event {item.claim.event_id!r} counted its caps")
                if step == 2 and answer == "ok":
                    item.counted = True
                elif step == 2:  # reasons in reserve.lua's order: user_hidden, budget, frequency_cap
                    for campaign_id, reason in answer[1]:
                        if reason == "user_hidden":
                            item.refused[str(campaign_id)] = "user_hidden"
                        else:
                            item.refused.setdefault(str(campaign_id), str(reason))


def reserver_for(redis: Redis, keys: Keys, outcome_ttl_s: int) -> BudgetReserver:
    """One call per chunk (`reserve.lua`) on a single Redis; split by slot on a cluster."""
    if is_cluster(redis):
        return SplitReserver(redis, keys, outcome_ttl_s)
    return BudgetReserver(redis, keys, outcome_ttl_s)


def _by_slot(keys: list[str]) -> list[tuple[list[str], list[int]]]:
    """`keys` grouped by hash slot, in first-seen order: (the slot's keys, their positions)."""
    groups: dict[int, tuple[list[str], list[int]]] = {}
    for position, key in enumerate(keys):
        group = groups.setdefault(key_slot(key.encode()), ([], []))
        group[0].append(key)
        group[1].append(position)
    return list(groups.values())
