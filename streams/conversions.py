"""Conversion attribution (docs/contract.md §8): ad.conversions.raw → ad.conversions (attributed to
its billable click) or ad.conversions.invalid (with the reason), exactly once, on the shared loop.

**The click lookup.** Clicks are keyed by impression_id and conversions by click_id, so the two
topics are not co-partitioned. Instead of repartitioning clicks by click_id through another topic,
this role also reads ad.clicks and keeps each billable click in Redis under its click_id
(`Keys.click`, for the conversion window plus a day); any member of the group looks any click up.
The write is idempotent (the same click, the same value), so a replayed batch changes nothing.
A batch's clicks are stored before its conversions are judged. The click's key is listed among
the person's keys, so `forget` (user controls) erases it.

**Judging** a conversion, in order: no such click → it waits (below), then `unknown_click`; an
advertiser's report for another advertiser's click → `unknown_click`; `ts` before the click →
`before_click`; later than the window after it → `expired` (both on the records' own times);
its `conversion_id` attributed before for that advertiser → `duplicate`; else attributed.

**Duplicates across restarts.** The first record to attribute a conversion_id claims it in Redis
(`Keys.conversion_claim`) with its origin, the raw record's `partition:offset`. A batch replayed
after a crash finds its own claim and attributes again (the aborted transaction's output never
became visible); a different record with the same id finds another's claim: `duplicate`.

**Waiting for the click without holding anything up.** A conversion whose click is not stored yet
goes, in the batch's transaction, to the internal topic conversions.pending with a due time; the
raw partition moves on. Pending records are read back in order; one not yet due holds its pending
partition (and only it: every record behind it is due later), and its position is committed
there, so a crash re-reads exactly the waits not yet resolved. When due, the click is looked for
again; after WAIT_MS from the first read, the conversion is `unknown_click`. Every outcome is
published in the transaction that consumes the record it came from: once each. An attributed
conversion is also written to the internal conversions.by-campaign, keyed by campaign_id like
billing.ledger, so that reporting counts it in the campaign's minute on the ledger's partition.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import orjson
from aiokafka import TopicPartition

from auction.controls import store_listed
from core.loop import Batch, KafkaRecord, Loop, LoopOptions, Output, Position, RoleBase, Step
from core.metrics import Metrics
from core.redis_client import PipelineScripts, get_many
from core.settings import Settings
from schemas.codec import RecordError, decode, encode
from schemas.conversions import RAW_FIELDS

log = logging.getLogger("vickrey.streams.conversions")
RAW = "ad.conversions.raw"
CLICKS = "ad.clicks"
PENDING = "conversions.pending"
ATTRIBUTED = "ad.conversions"
BY_CAMPAIGN = "conversions.by-campaign"  # the same records keyed by campaign: reporting's input
INVALID = "ad.conversions.invalid"
WAIT_MS = 60_000  # a conversion waits this long (from when it was read) for its click
RETRY_DELAYS_MS = (250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000)  # then every 32 s, up to WAIT_MS
CLICK_MARGIN_S = 86_400  # clicks are kept this long past the window, to tell `expired` from `unknown_click`

# 1 when the conversion_id is this origin's (claimed now or by this very record before), else 0.
CLAIM = """
local found = redis.call("GET", KEYS[1])
if not found then
  redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[2])
  return 1
end
if found == ARGV[1] then return 1 end
return 0
"""


def retry_delay_ms(attempt: int) -> int:
    return RETRY_DELAYS_MS[min(attempt, len(RETRY_DELAYS_MS)) - 1]


class Conversions(RoleBase):
    name = "conversions"
    inputs = (CLICKS, RAW, PENDING)

    def __init__(self, settings: Settings, metrics: Metrics, batch_max: int = 2000, wait_ms: int = WAIT_MS) -> None:
        self.settings = settings
        self.options = LoopOptions(batch_max=batch_max, tick_s=0.1, fetch_max_wait_ms=20, session_timeout_ms=6_000,
                                   heartbeat_interval_ms=1_000)
        self.window_ms = settings.conversion_window_s * 1000
        self.ttl_s = settings.conversion_window_s + CLICK_MARGIN_S
        self.wait_ms = wait_ms
        self.topics = {name: settings.topic(name) for name in (CLICKS, RAW, PENDING, ATTRIBUTED, INVALID, BY_CAMPAIGN)}
        # pending partition → records read but not yet due, in offset order (the first is the position)
        self.held: dict[TopicPartition, deque[tuple[int, dict[str, Any]]]] = {}
        self.pending_next: dict[TopicPartition, int] = {}  # pending partition → next offset to read
        self.outcomes = metrics.counter("vickrey_conversions_total", "Conversions judged, by outcome",
                                        ("outcome",))
        self.waits = metrics.counter("vickrey_conversions_waits_total", "Conversions sent to wait for their click")
        self.clicks_stored = metrics.counter("vickrey_conversions_clicks_stored_total", "Billable clicks stored")
        self.unreadable = metrics.counter("vickrey_conversions_unreadable_clicks_total",
                                          "Clicks that could not be read")

    async def start(self, loop: Loop) -> None:
        await super().start(loop)
        self._scripts = PipelineScripts(self.redis, CLAIM)
        self._claim = self._scripts.scripts[0]

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.held.pop(tp, None)  # re-read from the committed position by whoever gets it
            self.pending_next.pop(tp, None)

    # -- one batch -------------------------------------------------------------------------------

    async def process(self, batch: Batch, now_ms: int) -> Step:
        offsets: dict[TopicPartition, Position] = {}
        outputs: list[Output] = []
        for tp, records in batch.items():
            if tp.topic == self.topics[CLICKS]:
                await self._store_clicks(records)
                offsets[tp] = records[-1].offset + 1
        judging: list[tuple[dict[str, Any], str, int]] = []  # (conversion, origin, read_at)
        for tp, records in batch.items():
            if tp.topic == self.topics[RAW]:
                for record in records:
                    try:
                        raw = decode(RAW, record.value)
                    except RecordError as error:
                        outputs.append(self.loop.dlq(record, error, now_ms))
                        continue
                    judging.append((reported(raw), f"{record.partition}:{record.offset}", now_ms))
                offsets[tp] = records[-1].offset + 1
            elif tp.topic == self.topics[PENDING]:
                self._hold(tp, records)
        waits: list[dict[str, Any]] = []
        for tp, held in self.held.items():
            due = 0
            while held and held[0][1]["due_at"] <= now_ms:
                waits.append(held.popleft()[1])
                due += 1
            if due or tp in batch:  # the position moved
                offsets[tp] = held[0][0] if held else self.pending_next[tp]
        judging.extend((pending_conversion(w), w["origin"], w["read_at"]) for w in waits)
        attempts = {w["origin"]: w["attempt"] for w in waits}
        outputs.extend(await self._judge(judging, attempts, now_ms))
        return Step(outputs, offsets=offsets)

    def _hold(self, tp: TopicPartition, records: list[KafkaRecord]) -> None:
        held = self.held.setdefault(tp, deque())
        for record in records:
            try:
                held.append((record.offset, decode(PENDING, record.value)))
            except RecordError as error:  # we wrote it: a bug, not input to keep
                log.error("unreadable pending conversion skipped", extra={"offset": record.offset, "error": str(error)})
        self.pending_next[tp] = records[-1].offset + 1

    async def _store_clicks(self, records: list[KafkaRecord]) -> None:
        """Each billable click under its click_id, listed among the person's keys (so `forget`
        erases it: auction/controls.py)."""
        keys = self.settings.keys
        entries: list[tuple[str, str, bytes]] = []
        for record in records:
            try:
                click = decode(CLICKS, record.value)
            except RecordError:
                self.unreadable.inc()  # billing sends unreadable clicks to the DLQ
                continue
            value = orjson.dumps({"campaign_id": click["campaign_id"], "advertiser_id": click["advertiser_id"],
                                  "impression_id": click["impression_id"], "ts": click["ts"]})
            entries.append((keys.click(click["click_id"]), click["user_id"], value))
        await store_listed(self.redis, keys, entries, self.ttl_s)
        self.clicks_stored.inc(len(entries))

    async def _judge(self, judging: list[tuple[dict[str, Any], str, int]], attempts: dict[str, int],
                     now_ms: int) -> list[Output]:
        if not judging:
            return []
        keys = self.settings.keys
        found = await get_many(self.redis, [keys.click(conversion["click_id"]) for conversion, _, _ in judging])
        outputs: list[Output] = []
        claims: list[tuple[dict[str, Any], dict[str, Any], str]] = []
        for (conversion, origin, read_at), stored in zip(judging, found, strict=True):
            click = orjson.loads(stored) if stored is not None else None
            if click is None and now_ms - read_at < self.wait_ms:
                outputs.append(self._wait(conversion, origin, read_at, attempts.get(origin, 0) + 1, now_ms))
                continue
            reason = verdict(conversion, click, self.window_ms)
            if reason is not None or click is None:
                outputs.append(self._invalid(conversion, reason or "unknown_click"))
            else:
                claims.append((conversion, click, origin))
        if claims:
            await self._scripts.ready()
            async with self.redis.pipeline(transaction=False) as pipe:
                for conversion, click, origin in claims:
                    claim_key = keys.conversion_claim(click["advertiser_id"], conversion["conversion_id"])
                    await self._claim(keys=[claim_key], args=[origin, self.ttl_s], client=pipe)
                owned = await self._scripts.execute(pipe)
            for (conversion, click, _), mine in zip(claims, owned, strict=True):
                if mine:
                    outputs.extend(self._attributed(conversion, click))
                else:
                    outputs.append(self._invalid(conversion, "duplicate"))
        return outputs

    def _wait(self, conversion: dict[str, Any], origin: str, read_at: int, attempt: int, now_ms: int) -> Output:
        due_at = min(now_ms + retry_delay_ms(attempt), read_at + self.wait_ms)
        pending = {"schema_version": 1, **conversion, "origin": origin, "read_at": read_at, "due_at": due_at,
                   "attempt": attempt}
        if attempt == 1:
            self.waits.inc()
        return (self.topics[PENDING], conversion["click_id"].encode(), encode(pending))

    def _invalid(self, conversion: dict[str, Any], reason: str) -> Output:
        self.outcomes.labels(reason).inc()
        record = {"schema_version": 1, **conversion, "reason": reason}
        return (self.topics[INVALID], conversion["click_id"].encode(), encode(record))

    def _attributed(self, conversion: dict[str, Any], click: dict[str, Any]) -> list[Output]:
        """On ad.conversions by click, and on conversions.by-campaign by campaign (for reporting)."""
        self.outcomes.labels("attributed").inc()
        record = encode({"schema_version": 1, **conversion, "campaign_id": click["campaign_id"],
                         "advertiser_id": click["advertiser_id"], "impression_id": click["impression_id"],
                         "click_ts": click["ts"]})
        return [(self.topics[ATTRIBUTED], conversion["click_id"].encode(), record),
                (self.topics[BY_CAMPAIGN], click["campaign_id"].encode(), record)]


def reported(raw: dict[str, Any]) -> dict[str, Any]:
    """The reported fields of a raw conversion (unknown fields are not passed on)."""
    return {key: raw[key] for key in RAW_FIELDS if key in raw}


def pending_conversion(pending: dict[str, Any]) -> dict[str, Any]:
    return {key: pending[key] for key in RAW_FIELDS if key in pending}


def verdict(conversion: dict[str, Any], click: dict[str, Any] | None, window_ms: int) -> str | None:
    """Why a conversion is not attributed to `click` (None: it is, unless a duplicate)."""
    if click is None:
        return "unknown_click"
    if conversion.get("advertiser_id", click["advertiser_id"]) != click["advertiser_id"]:
        return "unknown_click"  # another advertiser's click: the same answer as none, so nothing leaks
    if conversion["ts"] < click["ts"]:
        return "before_click"
    if conversion["ts"] > click["ts"] + window_ms:
        return "expired"
    return None
