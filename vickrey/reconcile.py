"""`vickrey reconcile`: rebuild Redis from Kafka (docs/contract.md §9).

Redis holds three kinds of state, and only one of them may be lost for good:
- caches of compacted topics: campaigns (`campaigns`), the trust policy (`policy`), advertisers and
  their API key hashes (`advertisers`), people's ad controls (`user.controls.state`);
- counters rebuildable from the ledger: each campaign's spend today and in total;
- short-lived state (frequency-cap windows, pacing, CTR learning, kept auction outcomes), which
  starts again empty (README: "What Redis holds").

Reconcile restores the first two. It is idempotent and safe while workers run:
- caches are written only where Redis lacks them (a newer value in Redis is never overwritten);
- a spend counter is only ever raised, to what Kafka proves was charged: `max(Redis, rebuilt)`.
  Both are at most the true spend (Redis counts the charges reserved since it last started empty;
  the rebuild counts every committed charge), so the maximum never counts a charge twice;
- a campaign's budget limits are restored in the same atomic step as its spend (one hash slot:
  `{c:<id>}`), and nothing can spend without them (reserve.lua and charge_clicks.lua refuse or
  wait), so no charge slips in between.
What it cannot see: a batch whose reservation was made in the lost Redis but whose records reach
Kafka after this read ended. The ledger still gets those entries; the counter lacks them until the
next reconcile, so the campaign can overshoot its budget by at most that batch's reservations.

The rebuilt spend of a campaign = the amounts of its `billing.ledger` entries (today: entries whose
`ts` is in today's UTC day) + the CPM charges of the impressions committed on `ad.impressions` that
billing has not made ledger entries of yet (after billing's committed offsets, not in the ledger).

Workers (the CLI's role commands) run it at start when their namespace lacks the `reconciled`
marker: a new namespace, or a Redis that was emptied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.asyncio import Redis

from auction.controls import restore_people
from core.clock import utc_day
from core.compacted import read_latest, read_to_end
from core.redis_client import load_for_pipeline
from core.settings import Settings
from core.topics import ensure_topics
from schemas.codec import RecordError, decode
from vickrey.advertisers import restore_advertisers
from vickrey.campaign_store import restore_campaigns
from vickrey.policy_store import restore_policy

log = logging.getLogger("vickrey.reconcile")

DAY_TTL_S = 3 * 86_400  # as reserve.lua and charge_clicks.lua keep a day's spend
POLICY_SETTLE_S = 1.0  # workers reload the policy within 1 s (docs/contract.md §4b)
PIPELINE_CHUNK = 1000
COORDINATOR_WAIT_S = 60.0
UNREADABLE_LOGGED = 5
START_WAIT_S = 180.0  # how long a role starting up keeps trying to reconcile while Kafka fails
READS = ("policy", "advertisers", "user.controls.state", "campaigns", "ad.impressions", "billing.ledger")

# One campaign, one hash slot ({c:<id>}). KEYS: budget, spend total, spend of the day.
# ARGV: daily and total limits ("" when the campaign has no budget to restore), rebuilt total,
# rebuilt today, TTL of a new day key. Returns {budget restored 0|1, total raised by, today raised by}.
RESTORE_SPEND = """
local restored = 0
if ARGV[1] ~= "" and redis.call("EXISTS", KEYS[1]) == 0 then
  redis.call("HSET", KEYS[1], "daily_micros", ARGV[1], "total_micros", ARGV[2])
  restored = 1
end
local function raise(key, rebuilt, ttl)
  local current = redis.call("GET", key)
  local value = tonumber(current or "0")
  if rebuilt <= value then return "0" end
  if current then
    redis.call("SET", key, string.format("%d", rebuilt), "KEEPTTL")
  elseif ttl > 0 then
    redis.call("SET", key, string.format("%d", rebuilt), "EX", ttl)
  else
    redis.call("SET", key, string.format("%d", rebuilt))
  end
  return string.format("%d", rebuilt - value)
end
local total = raise(KEYS[2], tonumber(ARGV[3]), 0)
local today = raise(KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
return {restored, total, today}
"""
# A click billed before the loss: a record carrying the same click_id again is a duplicate. The
# kept answer names no record ("ledger"), so no record can replay it as its own.
LEDGER_SOURCE = "ledger"


@dataclass
class Spend:
    today: int = 0
    total: int = 0


@dataclass
class Report:
    """What one reconcile did (printed by the CLI, and logged)."""

    policy_restored: bool = False
    advertisers_restored: int = 0
    people_restored: int = 0
    campaigns_on_topic: int = 0
    campaigns_restored: int = 0
    budgets_restored: int = 0
    spend_raised: dict[str, dict[str, int]] = field(default_factory=dict)  # campaign → raised by
    ledger_entries: int = 0
    unbilled_impressions: int = 0
    clicks_remembered: int = 0
    unreadable: int = 0  # records of ad.impressions or billing.ledger that are not valid records
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "policy_restored": self.policy_restored,
            "advertisers_restored": self.advertisers_restored,
            "people_restored": self.people_restored,
            "campaigns_on_topic": self.campaigns_on_topic,
            "campaigns_restored": self.campaigns_restored,
            "budgets_restored": self.budgets_restored,
            "campaigns_spend_raised": len(self.spend_raised),
            "spend_raised_micros": {
                "today": sum(v["today"] for v in self.spend_raised.values()),
                "total": sum(v["total"] for v in self.spend_raised.values()),
            },
            "ledger_entries_read": self.ledger_entries,
            "unbilled_impressions": self.unbilled_impressions,
            "clicks_remembered": self.clicks_remembered,
            "unreadable_records": self.unreadable,
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


async def is_reconciled(settings: Settings, r: Redis) -> bool:
    """Whether the namespace carries the marker reconcile leaves (absent: new, or emptied)."""
    return bool(await r.exists(settings.keys.reconciled()))


async def reconcile(settings: Settings, r: Redis, *, now_ms: int | None = None,
                    progress: Progress = _quiet) -> Report:
    """Rebuild what Redis lost from Kafka: see the module docstring."""
    began = time.monotonic()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    report = Report()
    await ensure_topics(settings, READS)  # a topic read before it exists would be auto-created wrong
    # Trust first: people's controls and the policy are in force before any budget lets ads out.
    progress("policy")
    report.policy_restored = await restore_policy(settings, r, await read_latest(settings, "policy"))
    progress("advertisers")
    report.advertisers_restored = await restore_advertisers(settings, r, await read_latest(settings, "advertisers"))
    progress("people's controls")
    report.people_restored = await restore_people(settings, r, await read_latest(settings, "user.controls.state"))
    if report.policy_restored:
        await asyncio.sleep(POLICY_SETTLE_S)
    progress("campaigns")
    campaigns = _campaigns_of(await read_latest(settings, "campaigns"))
    report.campaigns_on_topic = len(campaigns)
    progress("spend: billing's position, unbilled impressions, the ledger")
    spend, clicks = await _rebuilt_spend(settings, now, report)
    progress("budgets and spend")
    await _restore_spend(settings, r, campaigns, spend, utc_day(now), report)
    # After budgets: a worker reloading a restored campaign finds its spend already right.
    report.campaigns_restored = await restore_campaigns(settings, r, campaigns)
    report.clicks_remembered = await _remember_clicks(settings, r, clicks, now)
    await r.set(settings.keys.reconciled(), orjson.dumps({"ts": now, "report": report.to_json()}))
    report.seconds = time.monotonic() - began
    log.info("reconciled", extra=report.to_json())
    return report


async def ensure_reconciled(settings: Settings, r: Redis, progress: Progress = _quiet,
                            wait_s: float = START_WAIT_S) -> Report | None:
    """Reconcile when the namespace lacks the marker (what workers do at start); None otherwise.
    A broker that goes away meanwhile (a restart, a lost broker of a cluster) does not stop the
    role: reconcile is idempotent, so it runs again from the start, for up to `wait_s`."""
    if await is_reconciled(settings, r):
        return None
    log.warning("namespace %s has no reconcile marker (new, or Redis was emptied): rebuilding it from Kafka",
                settings.namespace)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await reconcile(settings, r, progress=progress)
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise
            log.warning("reconcile at start failed (%s: %s); again in 1 s", type(error).__name__, error)
            await asyncio.sleep(1.0)


def _campaigns_of(latest: dict[bytes, bytes | None]) -> dict[str, dict[str, Any]]:
    """campaign_id → its latest JSON on the topic (deleted ones left out)."""
    campaigns: dict[str, dict[str, Any]] = {}
    for key, value in latest.items():
        if value is not None:
            campaigns[key.decode()] = orjson.loads(value)
    return campaigns


async def _billing_positions(settings: Settings) -> dict[int, int]:
    """partition of ad.impressions → billing's committed offset (what it has made entries of).
    A broker that has not served a group yet creates its offsets topic on this first request
    and answers "coordinator not available" meanwhile: asked again for up to COORDINATOR_WAIT_S."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka, request_timeout_ms=15_000)
    await admin.start()
    try:
        deadline = time.monotonic() + COORDINATOR_WAIT_S
        while True:
            try:
                offsets = await admin.list_consumer_group_offsets(settings.group("billing"))
                break
            except KafkaError as error:
                if not error.retriable or time.monotonic() > deadline:
                    raise
                log.info("billing's group coordinator not available yet (%s): asking again", error)
                await asyncio.sleep(0.5)
    finally:
        await admin.close()
    topic = settings.topic("ad.impressions")
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def _rebuilt_spend(settings: Settings, now_ms: int, report: Report
                         ) -> tuple[dict[str, Spend], list[dict[str, Any]]]:
    """Per campaign, the spend Kafka proves (see the module docstring), and the click entries
    young enough to be remembered as billed."""
    today = utc_day(now_ms)
    # Billing's position first: an impression before it is in the ledger read afterwards.
    positions = await _billing_positions(settings)
    unbilled: dict[str, tuple[str, int, int]] = {}  # impression_id → campaign, charge, ts
    async for records in read_to_end(settings, "ad.impressions", start=positions):
        for record in records:
            impression = _readable(report, "ad.impressions", record.value)
            if impression is not None and impression["bid_type"] == "cpm":
                unbilled[impression["impression_id"]] = (impression["campaign_id"], impression["charge_micros"],
                                                         impression["ts"])
    spend: dict[str, Spend] = {}
    clicks: list[dict[str, Any]] = []
    young = now_ms - settings.event_ttl_s * 1000
    async for records in read_to_end(settings, "billing.ledger"):
        for record in records:
            entry = _readable(report, "billing.ledger", record.value)
            if entry is None:
                continue
            report.ledger_entries += 1
            if entry["kind"] == "impression":
                unbilled.pop(entry["entry_id"], None)  # billed since billing's position was read
            elif entry["ts"] >= young:
                clicks.append(entry)
            _add(spend, entry["campaign_id"], entry["amount_micros"], entry["ts"], today)
    report.unbilled_impressions = len(unbilled)
    for campaign_id, charge, ts in unbilled.values():
        _add(spend, campaign_id, charge, ts, today)
    return spend, clicks


def _readable(report: Report, topic: str, value: bytes | None) -> dict[str, Any] | None:
    """The record, validated as the worker and billing write it; None (counted, the first few
    logged) for one that is not: billing sends such an impression to its DLQ and never bills it,
    so it is no charge, and a reconcile must not stop at it."""
    try:
        return decode(topic, value)
    except RecordError as error:
        report.unreadable += 1
        if report.unreadable <= UNREADABLE_LOGGED:
            log.error("unreadable %s record skipped: %s", topic, error)
        return None


def _add(spend: dict[str, Spend], campaign_id: str, amount: int, ts: int, today: str) -> None:
    if not amount:
        return
    rebuilt = spend.setdefault(campaign_id, Spend())
    rebuilt.total += amount
    if utc_day(ts) == today:
        rebuilt.today += amount


async def _restore_spend(settings: Settings, r: Redis, campaigns: dict[str, dict[str, Any]],
                         spend: dict[str, Spend], day: str, report: Report) -> None:
    keys = settings.keys
    script = r.register_script(RESTORE_SPEND)
    await load_for_pipeline(r, script)
    ids = sorted(set(campaigns) | set(spend))
    for start in range(0, len(ids), PIPELINE_CHUNK):
        chunk = ids[start : start + PIPELINE_CHUNK]
        pipe = r.pipeline(transaction=False)
        for cid in chunk:
            budget = (campaigns.get(cid) or {}).get("budget") or {}
            daily, total = budget.get("daily_micros"), budget.get("total_micros")
            limits = [str(daily), str(total)] if daily is not None and total is not None else ["", ""]
            rebuilt = spend.get(cid, Spend())
            await script(keys=[keys.budget(cid), keys.spend_total(cid), keys.spend_day(cid, day)],
                         args=[*limits, rebuilt.total, rebuilt.today, DAY_TTL_S], client=pipe)
        for cid, (restored, raised_total, raised_today) in zip(chunk, await pipe.execute(), strict=True):
            report.budgets_restored += int(restored)
            if int(raised_total) or int(raised_today):
                report.spend_raised[cid] = {"total": int(raised_total), "today": int(raised_today)}


async def _remember_clicks(settings: Settings, r: Redis, clicks: list[dict[str, Any]], now_ms: int) -> int:
    """Billed clicks of the last event TTL, kept as billed where Redis forgot them (SET NX)."""
    remembered = 0
    for start in range(0, len(clicks), PIPELINE_CHUNK):
        pipe = r.pipeline(transaction=False)
        chunk = clicks[start : start + PIPELINE_CHUNK]
        for entry in chunk:
            ttl_s = max(1, settings.event_ttl_s - (now_ms - entry["ts"]) // 1000)
            answer = f"{LEDGER_SOURCE}\n{entry['amount_micros']}\n{1 if entry['overdelivery'] else 0}"
            pipe.set(settings.keys.billed(entry["campaign_id"], entry["entry_id"]), answer, nx=True, ex=ttl_s)
        remembered += sum(1 for written in await pipe.execute() if written)
    return remembered

