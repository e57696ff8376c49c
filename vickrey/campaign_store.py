"""Campaigns in Redis, announced on Kafka. The Redis layout below is relied on by the auction worker,
billing and the API: change it only together with them.

Redis layout (`{ns}` = `VICKREY_NAMESPACE`, default `vickrey`; `<id>` = campaign_id; braces are Redis
Cluster hash tags, part of the key):

- `{ns}:{campaigns}` — hash: campaign_id → canonical campaign JSON (orjson, exactly as normalised by
  `schemas.campaign.validate_campaign`: defaults filled, the contract's field order).
- `{ns}:{campaigns}:changes` — stream, one entry per change, fields `campaign_id`, `op` (`upsert` |
  `delete`) and `version`; trimmed approximately (MAXLEN ~ 100000). Workers XREAD it and apply each
  change within 1 s (re-reading `{ns}:{campaigns}` for upserts).
- `{ns}:{campaigns}:version` — integer, the version of the latest change. Every change takes the next
  version, so versions are unique and increase in stream order.
- `{ns}:{c:<id>}:budget` — hash `daily_micros`, `total_micros`: the limits the budget reservation
  scripts read.
- `{ns}:{c:<id>}:spend:total` — integer micros spent in total; `{ns}:{c:<id>}:spend:day:<YYYYMMDD>` —
  integer micros spent that UTC day. Written by the auction worker and billing, read here.
- `{ns}:{c:<id>}:autopilot` — sorted set of the autopilot's decisions (`campaigns.autopilot` JSON),
  scored by version. Written by the autopilot role, read here (`autopilot_history`).

One apply (or pause, resume, delete) is one MULTI/EXEC transaction on the `{campaigns}` slot, under
WATCH of the campaigns hash and the version key: the campaigns, their change entries and the version
are written whole or not at all. Each changed campaign's budget limits live in the campaign's own
slot, so they are written right after that transaction commits (pipelined; on a Redis Cluster no
transaction may span both). Until they are, a new campaign has no limits, which the reservation
refuses ("budget"): it is never auctioned against limits it does not have; an apply cut between the
two steps (the process killed) is completed by applying again, and `vickrey reconcile` puts back
limits that are missing. Afterwards every changed campaign is announced on the compacted Kafka
topic `campaigns` (key campaign_id, value the campaign JSON; a deleted campaign is a tombstone,
value null).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import WatchError

from autopilot.campaigns import prepare_campaign
from core.clock import utc_day
from core.keys import AUTOPILOT_HISTORY_MAX
from core.settings import Settings
from schemas.checks import RecordError
from schemas.records import check_autopilot_decision
from vickrey.announce import AnnounceError, announce, start_producer
from vickrey.policy_store import get_policy

log = logging.getLogger("vickrey.campaign_store")

__all__ = ["AnnounceError"]  # raised here, defined with the producer helper (vickrey/announce.py)

CHANGES_MAXLEN = 100_000
MAX_WATCH_RETRIES = 50
CAMPAIGNS_TOPIC = "campaigns"


class UnknownCampaign(LookupError):
    """No campaign with this id is stored."""

    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"no campaign with id {campaign_id!r}")
        self.campaign_id = campaign_id


def encode_campaign(campaign: dict[str, Any]) -> bytes:
    """The canonical JSON of a normalised campaign (the bytes stored in Redis and sent on Kafka).

    Keys stay in the order `validate_campaign` gives them (the contract's field order).
    """
    return orjson.dumps(campaign)


# ---- results --------------------------------------------------------------------------------------


@dataclass
class Refusal:
    """An input item that was not stored, with every problem as `field: problem`."""

    item: int  # 1-based position in the input
    campaign_id: str | None
    problems: list[str]


@dataclass
class Change:
    campaign_id: str
    op: str  # "upsert" | "delete"
    version: int
    campaign: dict[str, Any] | None  # None for a delete


@dataclass
class ApplyResult:
    applied: list[Change] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # ids that did not exist before


# ---- reading --------------------------------------------------------------------------------------


def _decode(raw: bytes | str) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"stored campaign is not a JSON object: {raw!r:.80}")
    return value


async def get_campaign(settings: Settings, r: Redis, campaign_id: str) -> dict[str, Any] | None:
    """The stored campaign, or None."""
    raw = await r.hget(settings.keys.campaigns(), campaign_id)
    return None if raw is None else _decode(raw)


async def list_campaigns(settings: Settings, r: Redis) -> list[dict[str, Any]]:
    """Every stored campaign, sorted by campaign_id."""
    stored: dict[Any, Any] = await r.hgetall(settings.keys.campaigns())
    campaigns = [_decode(raw) for raw in stored.values()]
    return sorted(campaigns, key=lambda c: str(c.get("campaign_id", "")))


async def campaign_spend(settings: Settings, r: Redis, campaign_id: str, now_ms: int) -> dict[str, int]:
    """Live spend from Redis: `{"today_micros", "total_micros"}` (today = the UTC day of `now_ms`)."""
    return (await campaigns_spend(settings, r, [campaign_id], now_ms))[campaign_id]


async def campaigns_spend(
    settings: Settings, r: Redis, campaign_ids: Sequence[str], now_ms: int
) -> dict[str, dict[str, int]]:
    """`campaign_spend` for many campaigns in one round trip."""
    if not campaign_ids:
        return {}
    day = utc_day(now_ms)
    pipe = r.pipeline(transaction=False)
    for cid in campaign_ids:
        pipe.get(settings.keys.spend_day(cid, day))
        pipe.get(settings.keys.spend_total(cid))
    values = await pipe.execute()
    return {
        cid: {"today_micros": int(values[2 * i] or 0), "total_micros": int(values[2 * i + 1] or 0)}
        for i, cid in enumerate(campaign_ids)
    }


async def autopilot_history(
    settings: Settings, r: Redis, campaign_id: str, limit: int = AUTOPILOT_HISTORY_MAX
) -> list[dict[str, Any]]:
    """The autopilot's decisions for one campaign (`campaigns.autopilot` records), oldest first (by
    version): at most the latest `limit` (>= 1). A member that is not a valid decision record is
    skipped (and logged), so callers get only records that match schemas/campaigns.autopilot.json."""
    if limit < 1:
        raise ValueError(f"limit: must be at least 1, got {limit}")
    members: list[Any] = await r.zrange(settings.keys.autopilot(campaign_id), -limit, -1)  # by score
    decisions: list[dict[str, Any]] = []
    for raw in members:
        try:
            record = orjson.loads(raw)
            if not isinstance(record, dict):
                raise RecordError("", "must be a JSON object")
            check_autopilot_decision(record)
        except (orjson.JSONDecodeError, RecordError) as exc:
            log.warning(
                "skipping unreadable autopilot decision of campaign %s: %s: %.200r", campaign_id, exc, raw
            )
            continue
        decisions.append(record)
    return decisions


# ---- writing --------------------------------------------------------------------------------------


def _validate(
    items: Sequence[Any], policy: dict[str, Any]
) -> tuple[list[tuple[int, dict[str, Any]]], list[Refusal]]:
    """Validate every item; the first of each campaign_id wins, later duplicates are refused."""
    good: list[tuple[int, dict[str, Any]]] = []
    refused: list[Refusal] = []
    first_item: dict[str, int] = {}
    for item_no, obj in enumerate(items, start=1):
        raw_id = obj.get("campaign_id") if isinstance(obj, dict) else None
        cid = raw_id if isinstance(raw_id, str) else None
        campaign, problems = prepare_campaign(obj, policy)
        if cid is not None and cid in first_item:
            problems.append(
                f"campaign_id: {cid!r} appears more than once in this input (first as item {first_item[cid]})"
            )
        elif cid is not None:
            first_item[cid] = item_no
        if campaign is None or problems:
            refused.append(Refusal(item_no, cid, problems or ["(campaign): invalid"]))
        else:
            good.append((item_no, campaign))
    return good, refused


async def preview_campaigns(settings: Settings, r: Redis, items: Sequence[Any]) -> tuple[list[dict[str, Any]], list[Refusal]]:
    """What `apply_campaigns` would store (the policy read from Redis), storing nothing."""
    good, refused = _validate(items, await get_policy(settings, r))
    return [campaign for _, campaign in good], refused


async def apply_campaigns(
    settings: Settings, r: Redis, items: Sequence[Any], *, announce: bool = True
) -> ApplyResult:
    """Validate `items` (raw campaign objects) and upsert the valid ones in one Redis transaction.

    An invalid item is refused whole, with every problem named; so is a campaign whose vertical the
    policy restricts, and one whose stored advertiser_id differs. The rest are stored and, unless
    `announce` is False, announced on the Kafka `campaigns` topic (AnnounceError if that fails).
    """
    good, refused = _validate(items, await get_policy(settings, r))
    result = ApplyResult(refused=refused)
    if good:
        hkey = settings.keys.campaigns()

        async def plan(pipe: Any) -> list[Change]:
            stored = await pipe.hmget(hkey, [c["campaign_id"] for _, c in good])
            version = int(await pipe.get(settings.keys.campaigns_version()) or 0)
            changes: list[Change] = []
            result.created, conflicts = [], []
            for (item_no, campaign), old_raw in zip(good, stored, strict=True):
                cid = campaign["campaign_id"]
                owner = None if old_raw is None else _decode(old_raw).get("advertiser_id")
                if old_raw is not None and owner != campaign["advertiser_id"]:
                    conflicts.append(
                        Refusal(
                            item_no, cid, [f"advertiser_id: campaign {cid} belongs to advertiser {owner}"]
                        )
                    )
                    continue
                if old_raw is None:
                    result.created.append(cid)
                version += 1
                changes.append(Change(cid, "upsert", version, campaign))
            result.refused = sorted(refused + conflicts, key=lambda ref: ref.item)
            if changes:
                pipe.multi()
                for change in changes:
                    pipe.hset(hkey, change.campaign_id, encode_campaign(_campaign_of(change)))
                    _queue_change(settings, pipe, change)
            return changes

        result.applied = await _write(settings, r, plan, announce=announce)
    return result


def _campaign_of(change: Change) -> dict[str, Any]:
    if change.campaign is None:
        raise ValueError(f"change {change.version} deletes campaign {change.campaign_id}")
    return change.campaign


async def _write(
    settings: Settings, r: Redis, plan: Callable[[Any], Awaitable[list[Change]]], *, announce: bool
) -> list[Change]:
    """One optimistic transaction: `plan(pipe)` reads under WATCH of the campaigns hash and the version
    key, then (if it has changes) calls `pipe.multi()` and queues its writes; on a concurrent change
    it runs again. The version key is set to the last change's version in the same transaction.

    With `announce`, Kafka is connected first (so an unreachable Kafka writes nothing) and the changes
    are announced after the commit.
    """
    producer = await start_producer(settings, [CAMPAIGNS_TOPIC]) if announce else None
    try:
        changes = await _transact(settings, r, plan)
        await _write_budgets(settings, r, changes)
        if producer is not None and changes:
            await _announce(settings, producer, changes)
        return changes
    finally:
        if producer is not None:
            await producer.stop()


async def _transact(
    settings: Settings, r: Redis, plan: Callable[[Any], Awaitable[list[Change]]]
) -> list[Change]:
    keys = (settings.keys.campaigns(), settings.keys.campaigns_version())
    async with r.pipeline(transaction=True) as raw_pipe:
        pipe: Any = raw_pipe  # redis-py leaves multi()/reset() untyped
        for _attempt in range(MAX_WATCH_RETRIES):
            try:
                await pipe.watch(*keys)
                changes = await plan(pipe)
                if not changes:
                    await pipe.reset()
                    return changes
                pipe.set(keys[1], changes[-1].version)
                await pipe.execute()
                return changes
            except WatchError:
                continue
    raise RuntimeError(f"campaigns changed concurrently {MAX_WATCH_RETRIES} times in a row; try again")


BUDGET_FIELDS = ("daily_micros", "total_micros")


async def _write_budgets(settings: Settings, r: Redis, changes: Sequence[Change]) -> None:
    """Each changed campaign's limits, in its own slot, after the campaigns' transaction (the
    module docstring says why). Every command is whole by itself: a reservation reads the old
    limits or the new ones, never none in between."""
    if not changes:
        return
    pipe: Any = r.pipeline(transaction=False)
    for change in changes:
        key = settings.keys.budget(change.campaign_id)
        budget = (change.campaign or {}).get("budget") or {}
        limits = {f: budget[f] for f in BUDGET_FIELDS if budget.get(f) is not None}
        if limits:
            pipe.hset(key, mapping=limits)
        missing = [f for f in BUDGET_FIELDS if f not in limits]
        if len(missing) == len(BUDGET_FIELDS):
            pipe.delete(key)
        elif missing:
            pipe.hdel(key, *missing)
    await pipe.execute()


def _queue_change(settings: Settings, pipe: Any, change: Change) -> None:
    fields = {"campaign_id": change.campaign_id, "op": change.op, "version": change.version}
    pipe.xadd(settings.keys.campaign_changes(), fields, maxlen=CHANGES_MAXLEN, approximate=True)


async def _change_one(
    settings: Settings, r: Redis, campaign_id: str, status: str | None, *, announce: bool
) -> Change | None:
    """Set the status of (or, with status None, delete) one campaign; None when nothing changed."""
    hkey = settings.keys.campaigns()

    async def plan(pipe: Any) -> list[Change]:
        raw = await pipe.hget(hkey, campaign_id)
        if raw is None:
            raise UnknownCampaign(campaign_id)
        campaign = _decode(raw)
        if status is not None and campaign.get("status") == status:
            return []
        version = int(await pipe.get(settings.keys.campaigns_version()) or 0) + 1
        pipe.multi()
        if status is None:
            change = Change(campaign_id, "delete", version, None)
            pipe.hdel(hkey, campaign_id)
        else:
            change = Change(campaign_id, "upsert", version, dict(campaign, status=status))
            pipe.hset(hkey, campaign_id, encode_campaign(_campaign_of(change)))
        _queue_change(settings, pipe, change)
        return [change]

    changes = await _write(settings, r, plan, announce=announce)
    return changes[0] if changes else None


async def set_status(
    settings: Settings, r: Redis, campaign_id: str, status: str, *, announce: bool = True
) -> Change | None:
    """Pause (`paused`) or resume (`active`) a campaign; None if it already had that status.

    Raises UnknownCampaign for an unknown id.
    """
    if status not in ("active", "paused"):
        raise ValueError(f"status: must be 'active' or 'paused', not {status!r}")
    return await _change_one(settings, r, campaign_id, status, announce=announce)


async def delete_campaign(settings: Settings, r: Redis, campaign_id: str, *, announce: bool = True) -> Change:
    """Delete a campaign and its budget limits (its spend history stays); raises UnknownCampaign."""
    change = await _change_one(settings, r, campaign_id, None, announce=announce)
    if change is None:  # a delete always changes something or raises UnknownCampaign
        raise UnknownCampaign(campaign_id)
    return change


# ---- Kafka announcement ---------------------------------------------------------------------------


async def _announce(settings: Settings, producer: AIOKafkaProducer, changes: Sequence[Change]) -> None:
    ids = ", ".join(c.campaign_id for c in changes)
    records = [(c.campaign_id.encode(), None if c.campaign is None else encode_campaign(c.campaign)) for c in changes]
    await announce(settings, producer, CAMPAIGNS_TOPIC, records, stored=f"the change of campaign(s) {ids}")


# ---- restore (vickrey reconcile) ------------------------------------------------------------------


async def restore_campaigns(settings: Settings, r: Redis, campaigns: dict[str, dict[str, Any]]) -> int:
    """Put back the campaigns (campaign_id → JSON, as on the `campaigns` topic) that the campaigns
    hash lacks, each with a change entry so running workers load it; a campaign Redis has is left
    as it is (it is as new as the topic's or newer). Budget limits are reconcile's, with spend.
    Returns how many were put back."""
    hkey, restored = settings.keys.campaigns(), 0
    ids = sorted(campaigns)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        pipe = r.pipeline(transaction=False)
        for cid in chunk:
            pipe.hsetnx(hkey, cid, encode_campaign(campaigns[cid]))
        written = [cid for cid, done in zip(chunk, await pipe.execute(), strict=True) if done]
        if not written:
            continue
        last = int(await r.incrby(settings.keys.campaigns_version(), len(written)))
        pipe = r.pipeline(transaction=False)
        for version, cid in enumerate(written, start=last - len(written) + 1):
            _queue_change(settings, pipe, Change(cid, "upsert", version, campaigns[cid]))
        await pipe.execute()
        restored += len(written)
    return restored
