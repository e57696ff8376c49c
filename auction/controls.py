"""People's ad controls (docs/contract.md §4b): `user.controls` → Redis → `user.controls.applied`
and `user.controls.state`.

`ControlsRole` applies each control to the person's keys in Redis, confirms it on
`user.controls.applied` and publishes the person's whole state after it on the compacted topic
`user.controls.state` (key user_id; a `forget` publishes a tombstone, so compaction erases the
person): the loop publishes both with the consumed offsets, in one transaction. Every Redis step is
idempotent (a set add, a flag, an erase), so a batch replayed after a crash leaves the same state
and each record is published once. Redis is never the only copy of a person's controls
(docs/contract.md §9): `restore_people` puts the topic's latest back into an emptied Redis.
`AppliedListener` runs in every auction worker and drops what that worker remembers about a person
as soon as a `forget` is confirmed.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis

from auction.people import PeopleCache
from core.broadcast import BroadcastReader
from core.keys import Keys
from core.loop import Batch, LoopOptions, Output, RoleBase, Step
from core.metrics import Metrics
from core.redis_client import is_cluster, load_for_pipeline
from core.settings import Settings
from schemas.codec import RecordError, applied_control, decode, encode
from schemas.records import HIDDEN_MAX

log = logging.getLogger("auction.controls")

CONTROLS = "user.controls"
APPLIED = "user.controls.applied"
STATE = "user.controls.state"
RESTORE_CHUNK = 500
# Erasing a person (`forget_person`). Their keys of fixed names (KEYS: the key index, hidden
# advertisers, preferences, frequency caps) are erased by name. The key index `{u:<id>}:keys`
# lists their other expiring keys: what the split reservation kept per event (their own slot) and
# stored clicks (the conversions role, `{k:<click_id>}`: other slots). A script keeps to one slot
# on a Redis Cluster, so the clicks are deleted by the caller, and this script erases the
# person's own keys and the index
# only once every key of another slot that the index lists has been deleted (ARGV[2...]: the
# ones the caller deleted); otherwise it erases nothing and returns those not deleted yet. The
# index thus outlives every key it lists, and a click stored meanwhile (the store writes the
# click, then lists it) is either listed in time to be returned, or listed afterwards in a new
# index, for a later forget. ARGV[1] is the prefix of the person's own keys.
FORGET_SCRIPT = """
local listed = redis.call("SMEMBERS", KEYS[1])
local prefix = ARGV[1]
local deleted, own, elsewhere = {}, {}, {}
for i = 2, #ARGV do deleted[ARGV[i]] = true end
for _, key in ipairs(listed) do
  if string.sub(key, 1, #prefix) == prefix then
    own[#own + 1] = key
  elseif not deleted[key] then
    elsewhere[#elsewhere + 1] = key
  end
end
if #elsewhere > 0 then return elsewhere end
for _, key in ipairs(own) do redis.call("DEL", key) end
redis.call("DEL", unpack(KEYS))
return elsewhere
"""
FORGET_ROUNDS = 20  # clicks stored while a person is forgotten, each round; past this, the batch is retried
# List a key of another slot (a stored click) in the person's key index; the index lives as long
# as its longest-lived key. KEYS[1] the index, ARGV[1] the key, ARGV[2] its TTL (s).
LIST_KEY_SCRIPT = """
redis.call("SADD", KEYS[1], ARGV[1])
if redis.call("TTL", KEYS[1]) < tonumber(ARGV[2]) then redis.call("EXPIRE", KEYS[1], ARGV[2]) end
return 1
"""


async def forget_person(client: Redis, keys: Keys, user_id: str) -> None:
    """Erase every key of the person, in their slot and elsewhere (see FORGET_SCRIPT). Idempotent:
    a forget replayed after a crash finds what is left and erases it."""
    finish = client.register_script(FORGET_SCRIPT)
    fixed = [keys.person_keys(user_id), keys.hidden(user_id), keys.prefs(user_id), keys.caps(user_id)]
    deleted: list[str] = []
    for _ in range(FORGET_ROUNDS):
        elsewhere = [_text(key) for key in await finish(keys=fixed, args=[keys.person(user_id), *deleted])]
        if not elsewhere:
            return
        pipe: Any = client.pipeline(transaction=False)
        for key in elsewhere:
            pipe.delete(key)  # one key per DEL: each goes to its own slot's node on a cluster
        await pipe.execute()
        deleted += elsewhere
    raise RuntimeError(f"forget of {user_id!r}: keys kept being stored for {FORGET_ROUNDS} rounds")


async def store_listed(client: Redis, keys: Keys, entries: list[tuple[str, str, bytes]], ttl_s: int) -> None:
    """Store keys of other slots that belong to a person: (key, user_id, value) each, for `ttl_s`.
    Each key is written first, then listed in the person's key index (see FORGET_SCRIPT for why
    this order); a crash in between is mended when the batch is stored again."""
    if not entries:
        return
    list_key = client.register_script(LIST_KEY_SCRIPT)
    await load_for_pipeline(client, list_key)
    # One Redis runs a pipeline's commands in order: writes then listings in one round trip. A
    # cluster's pipeline runs per node, in no order across nodes: the writes go first, alone.
    pipe: Any = client.pipeline(transaction=False)
    for key, _, value in entries:
        pipe.set(key, value, ex=ttl_s)
    if is_cluster(client):
        await pipe.execute()
        pipe = client.pipeline(transaction=False)
    for key, user_id, _ in entries:
        await list_key(keys=[keys.person_keys(user_id)], args=[key, ttl_s], client=pipe)
    await pipe.execute()


class ControlsRole(RoleBase):
    name = "controls"
    inputs = (CONTROLS,)
    options = LoopOptions(batch_max=500, fetch_max_wait_ms=100)

    def __init__(self, settings: Settings, redis: Redis, metrics: Metrics) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.client = redis  # the worker's client, shared with the auction role (closed by the worker)
        self.applied_topic = settings.topic(APPLIED)
        self.state_topic = settings.topic(STATE)
        self.applied = metrics.counter("vickrey_controls_applied_total", "User controls applied, by action", ("action",))

    async def process(self, batch: Batch, now_ms: int) -> Step:
        outputs: list[Output] = []
        for records in batch.values():
            for record in records:
                try:
                    control = decode(CONTROLS, record.value)
                    state = await self.apply(control, now_ms)
                except RecordError as error:
                    outputs.append(self.loop.dlq(record, error, now_ms))
                    continue
                user = control["user_id"].encode()
                confirmation = applied_control(control, record.partition, record.offset, now_ms)
                outputs.append((self.applied_topic, user, encode(confirmation)))
                outputs.append((self.state_topic, user, None if state is None else encode(state)))
                self.applied.labels(control["action"]).inc()
        return Step(outputs)

    async def apply(self, control: dict[str, Any], now_ms: int) -> dict[str, Any] | None:
        """Apply one control; the person's whole state afterwards (a `user.controls.state` record),
        None after a forget. One round trip: the change and the read of the state in one pipeline.
        RecordError for a hide past HIDDEN_MAX hidden advertisers (undone: it goes to the DLQ)."""
        keys, user, action = self.keys, control["user_id"], control["action"]
        if action == "forget":
            await forget_person(self.client, keys, user)
            return None
        pipe: Any = self.client.pipeline(transaction=True)
        if action == "hide_advertiser":
            pipe.sadd(keys.hidden(user), control["advertiser_id"])
        else:  # personalization_off / personalization_on
            pipe.hset(keys.prefs(user), "personalization", "off" if action == "personalization_off" else "on")
        pipe.smembers(keys.hidden(user))
        pipe.hget(keys.prefs(user), "personalization")
        changed, hidden, personalization = await pipe.execute()
        if action == "hide_advertiser" and changed and len(hidden) > HIDDEN_MAX:
            await self.client.srem(keys.hidden(user), control["advertiser_id"])
            raise RecordError("advertiser_id", f"the person hides {HIDDEN_MAX} advertisers already, the most kept")
        return controls_state(user, hidden, personalization, now_ms)


class AppliedListener(BroadcastReader):
    """Every worker reads every confirmation (no consumer group), from the moment it starts:
    what it remembered about a forgotten person goes within milliseconds."""

    def __init__(self, settings: Settings, people: PeopleCache) -> None:
        super().__init__(settings, APPLIED, self._apply, start="latest")
        self.people = people

    def _apply(self, confirmation: dict[str, Any]) -> None:
        if confirmation["action"] == "forget":
            self.people.forget(confirmation["user_id"])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def controls_state(user_id: str, hidden: Any, personalization: bytes | str | None, now_ms: int) -> dict[str, Any]:
    """A `user.controls.state` record from what Redis holds for the person."""
    return {"schema_version": 1, "user_id": user_id, "hidden_advertisers": sorted(_text(a) for a in hidden),
            "personalization": None if personalization is None else _text(personalization), "ts": now_ms}


async def restore_people(settings: Settings, r: Redis, latest: dict[bytes, bytes | None]) -> int:
    """Put back people's controls from the `user.controls.state` topic's latest records (`latest`:
    key → latest value, as core.compacted.read_latest gives it): each hidden advertiser (SADD) and
    the personalization choice where Redis has none (HSETNX), so nothing Redis holds is undone.
    A tombstone (a forgotten person) restores nothing. Returns how many people it restored
    something for; an unreadable record is logged and skipped."""
    keys = settings.keys
    people: list[dict[str, Any]] = []
    for key, value in sorted(latest.items()):
        if value is None:
            continue
        try:
            people.append(decode(STATE, value))
        except RecordError as error:
            log.error("user.controls.state record of %r is unreadable, not restored: %s", key, error)
    restored = 0
    for start in range(0, len(people), RESTORE_CHUNK):
        chunk = people[start : start + RESTORE_CHUNK]
        pipe: Any = r.pipeline(transaction=False)
        writes: list[int] = []  # commands queued per person
        for person in chunk:
            user, queued = person["user_id"], 0
            if person["hidden_advertisers"]:
                pipe.sadd(keys.hidden(user), *person["hidden_advertisers"])
                queued += 1
            if person["personalization"] is not None:
                pipe.hsetnx(keys.prefs(user), "personalization", person["personalization"])
                queued += 1
            writes.append(queued)
        results = iter(await pipe.execute())
        for queued in writes:
            restored += any([bool(next(results)) for _ in range(queued)])
    return restored
