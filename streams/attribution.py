"""Click attribution: ad.clicks.raw ⋈ ad.impressions (both keyed by impression_id, co-partitioned)
→ ad.clicks (billable, with the CPC charge) or ad.clicks.invalid (with the reason).

On the shared exactly-once loop, like billing: each batch's clicks and invalid clicks are
published with the consumed offsets of both inputs in one transaction. The impression table lives in a local
RocksDB (attribution_store.py); its writes are replay-safe (the same impression, the same bytes),
and every click's first verdict is kept with the position of the record that earned it, so a
batch replayed after a crash republishes the same verdicts, while the same click_id from another
record is a `duplicate`.

A click whose impression is not known yet is *held*: its partition is paused at that click (the
committed offset stops before it) until the impression arrives or the grace period has passed —
judged on the impressions' event time, or on wall time once the impressions partition is caught
up — and only then is it called `unknown_impression`. Holding by position rather than in memory
keeps exactly-once without any extra topic: a crash simply re-reads the held click.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from core.broadcast import BroadcastReader
from core.loop import Batch, Committed, KafkaRecord, Loop, LoopOptions, Output, Position, RoleBase, Step
from core.metrics import Metrics
from core.settings import Settings
from schemas.codec import RecordError, decode, encode
from streams.attribution_store import AttributionStore, StoredImpression, default_state_dir

log = logging.getLogger("vickrey.streams.attribution")
IMPRESSIONS = "ad.impressions"
APPLIED = "user.controls.applied"  # `forget` confirmations: the person's impressions leave the table
RAW_CLICKS = "ad.clicks.raw"
CLICKS = "ad.clicks"
INVALID = "ad.clicks.invalid"
ATTRIBUTION_WINDOW_MS = 24 * 3600 * 1000
TOO_FAST_MS = 100
# How long a click may wait for an impression that has not arrived yet (out of order).
HOLD_GRACE_S = 3.0
MAX_HOLD_S = 30.0  # even when the impressions partition lags: a bound on a click's latency
STORE_MARGIN_S = 3600  # the table keeps impressions this much past the window, to tell `expired`
RESTORE_MAX_S = 600.0
HOLD = "hold"
VALID = "valid"


@dataclass(slots=True)
class HeldClick:
    partition: int
    offset: int
    impression_id: str
    ts: int
    since: float  # monotonic time first held


class Attribution(RoleBase):
    name = "attribution"
    inputs = (IMPRESSIONS, RAW_CLICKS)

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        batch_max: int = 2000,
        state_dir: Path | None = None,
        window_ms: int = ATTRIBUTION_WINDOW_MS,
        grace_s: float = HOLD_GRACE_S,
    ) -> None:
        self.settings = settings
        # Range assignment keeps partition N of both inputs on one member: the join relies on it.
        self.options = LoopOptions(batch_max=batch_max, tick_s=0.1, fetch_max_wait_ms=20, session_timeout_ms=6_000,
                                   heartbeat_interval_ms=1_000, assignor="range")
        self.state_dir = state_dir or default_state_dir(settings.topic_prefix)
        self.window_ms = window_ms
        self.grace_s = grace_s
        self.impressions_topic = settings.topic(IMPRESSIONS)
        self.raw_topic = settings.topic(RAW_CLICKS)
        self.watermark: dict[int, int] = {}  # partition → latest impression ts applied
        self.impressions_next: dict[int, int] = {}  # partition → next impression offset to apply
        self.held: dict[TopicPartition, HeldClick] = {}
        self.impressions_caught_up: set[int] = set()  # partitions with nothing left to read, as of this part
        self.valid = metrics.counter("vickrey_attribution_valid_total", "Clicks published as billable")
        self.invalid = metrics.counter("vickrey_attribution_invalid_total", "Invalid clicks, by reason", ("reason",))
        self.held_total = metrics.counter("vickrey_attribution_held_total", "Clicks held for their impression")
        self.restored = metrics.counter("vickrey_attribution_restored_total", "Records replayed into the table")
        self.unreadable = metrics.counter(
            "vickrey_attribution_unreadable_impressions_total", "Impressions that could not be read (billing DLQs them)"
        )
        self.store: AttributionStore | None = None
        self.forgotten = metrics.counter("vickrey_attribution_forgotten_total",
                                         "Impressions erased from the table because their person asked to be forgotten")
        self._stop_forgets = asyncio.Event()
        self._forgetting: asyncio.Task[None] | None = None

    async def start(self, loop: Loop) -> None:
        await super().start(loop)
        self.store = AttributionStore(self.state_dir, self.window_ms // 1000 + STORE_MARGIN_S)
        log.info("attribution store open", extra={"path": str(self.store.path)})
        # Every forget ever confirmed (from the start: one confirmed while this process was down
        # counts too), applied to this process's table; idempotent.
        self._forgets = BroadcastReader(self.settings, APPLIED, self._forget, start="earliest")
        self._forgetting = asyncio.create_task(self._forgets.run(self._stop_forgets))

    async def close(self) -> None:
        if self._forgetting is not None:
            self._stop_forgets.set()
            await self._forgetting
        if self.store is not None:
            self.store.close()
        await super().close()

    def _forget(self, confirmation: dict[str, Any]) -> None:
        if confirmation["action"] == "forget" and self.store is not None:
            erased = self.store.forget(confirmation["user_id"])
            self.forgotten.inc(erased)

    @property
    def db(self) -> AttributionStore:
        assert self.store is not None, "setup() opens the store"
        return self.store

    # -- one batch -------------------------------------------------------------------------------

    async def process(self, batch: Batch, now_ms: int) -> Step:
        step = Step(offsets={})  # exact positions only: a held or paused partition stays where it is
        self.impressions_caught_up = {
            tp.partition for tp in self.loop.consumer.assignment()
            if tp.topic == self.impressions_topic and await self.loop.caught_up(tp)
        }
        for tp, records in batch.items():
            if tp.topic == self.impressions_topic:
                self._apply_impressions(tp, records, step)
        for tp, records in batch.items():
            if tp.topic == self.raw_topic and tp not in self.loop.consumer.paused():
                self._attribute_clicks(tp, records, step, now_ms)
        self._release_due_holds()
        return step

    def _apply_impressions(self, tp: TopicPartition, records: list[KafkaRecord], step: Step) -> None:
        rows: list[tuple[str, str, bytes]] = []
        latest = self.watermark.get(tp.partition, 0)
        for record in records:
            try:
                impression = decode(IMPRESSIONS, record.value)
            except RecordError:
                self.unreadable.inc()  # billing sends it to the DLQ
                continue
            rows.append((impression["impression_id"], impression["user_id"], StoredImpression.of(impression)))
            latest = max(latest, impression["ts"])
        following = records[-1].offset + 1
        self.db.put_impressions(rows, {(tp.topic, tp.partition): following})
        self.watermark[tp.partition] = latest
        self.impressions_next[tp.partition] = following
        _offsets(step)[tp] = following

    def _attribute_clicks(self, tp: TopicPartition, records: list[KafkaRecord], step: Step, now_ms: int) -> None:
        following: int | None = None  # next offset of this partition once the batch commits
        for record in records:
            try:
                click = decode(RAW_CLICKS, record.value)
            except RecordError as error:
                step.outputs.append(self.loop.dlq(record, error, now_ms))
                following = record.offset + 1
                continue
            held = self.held.get(tp)
            if held is None or held.offset != record.offset:
                held = HeldClick(tp.partition, record.offset, click["impression_id"], click["ts"], time.monotonic())
            verdict, impression = self._verdict(click, f"{tp.partition}:{record.offset}", held)
            if verdict == HOLD:
                # Stop this partition at the click: commit up to it, read it again when released.
                if tp not in self.held:
                    self.held_total.inc()
                self.held[tp] = held
                following = record.offset
                self.loop.consumer.seek(tp, record.offset)
                self.loop.consumer.pause(tp)
                break
            self.held.pop(tp, None)
            step.outputs.append(self._output(click, verdict, impression))
            following = record.offset + 1
        if following is not None:
            _offsets(step)[tp] = following
            self.db.set_checkpoint(tp.topic, tp.partition, following)

    def _verdict(self, click: dict[str, Any], src: str, held: HeldClick) -> tuple[str, StoredImpression | None]:
        click_id, impression_id = click["click_id"], click["impression_id"]
        impression = self.db.impression(impression_id)
        kept = self.db.verdict(click_id)
        if kept is not None:
            first_src, reason = kept
            # The same record again (a replayed batch) gets its first answer; another record
            # with this click_id is a resend.
            return (reason if first_src == src else "duplicate"), impression
        if impression is None:
            if not self._due(held):
                return HOLD, None
            reason = "unknown_impression"
        elif click["user_id"] != impression.user_id:
            reason = "user_mismatch"
        elif click["ts"] - impression.ts > self.window_ms:
            reason = "expired"
        elif click["ts"] - impression.ts < TOO_FAST_MS:
            reason = "too_fast"
        elif self.db.clicked_by(impression_id) not in (None, click_id):
            reason = "duplicate"  # one billable click per impression
        else:
            reason = VALID
            self.db.set_clicked(impression_id, click_id)
        self.db.set_verdict(click_id, src, reason)
        return reason, impression

    def _output(self, click: dict[str, Any], verdict: str, impression: StoredImpression | None) -> Output:
        base = {
            "schema_version": 1,
            "click_id": click["click_id"],
            "impression_id": click["impression_id"],
            "ts": click["ts"],
            "user_id": click["user_id"],
        }
        key = click["impression_id"].encode()
        if verdict == VALID and impression is not None:
            self.valid.inc()
            base.update(
                campaign_id=impression.campaign_id,
                advertiser_id=impression.advertiser_id,
                charge_micros=impression.click_charge_micros,
                matched_keywords=impression.matched_keywords,
                intent_keywords=impression.intent_keywords,
            )
            return (self.settings.topic(CLICKS), key, encode(base))
        reason = verdict if verdict != VALID else "unknown_impression"  # kept valid, table expired under it
        self.invalid.labels(reason).inc()
        return (self.settings.topic(INVALID), key, encode({**base, "reason": reason}))

    # -- holding ---------------------------------------------------------------------------------

    def _due(self, held: HeldClick) -> bool:
        """Has the click waited long enough for its impression?"""
        if self.watermark.get(held.partition, -1) >= held.ts + self.grace_s * 1000:
            return True  # impressions well past the click's time have been applied
        waited = time.monotonic() - held.since
        if waited >= MAX_HOLD_S:
            return True
        return waited >= self.grace_s and held.partition in self.impressions_caught_up

    def _release_due_holds(self) -> None:
        consumer = self.loop.consumer
        paused = consumer.paused()
        for tp, held in list(self.held.items()):
            if tp in paused and (self.db.has_impression(held.impression_id) or self._due(held)):
                consumer.resume(tp)  # the held click is read again from its offset

    # -- rebalance and restore -------------------------------------------------------------------

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.held.pop(tp, None)
            if tp.topic == self.impressions_topic:
                self.watermark.pop(tp.partition, None)
                self.impressions_next.pop(tp.partition, None)

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        plan: dict[TopicPartition, tuple[int | None, int]] = {}  # what to replay: (from, to)
        raw_done: dict[TopicPartition, int] = {}
        for tp, found in committed.items():
            done = found.offset if found is not None else None
            if tp.topic == self.impressions_topic and done is not None:
                self.impressions_next[tp.partition] = done
            checkpoint = self.db.checkpoint(tp.topic, tp.partition)
            if done is None or (checkpoint is not None and checkpoint >= done):
                continue  # nothing processed yet, or this store already saw it all
            if tp.topic == self.impressions_topic:
                plan[tp] = (checkpoint, done)
            else:  # billable clicks of these raw clicks: the one-click-per-impression state
                plan[TopicPartition(self.settings.topic(CLICKS), tp.partition)] = (None, -1)
                raw_done[tp] = done
        if plan:
            await self._restore(plan)
        for tp, done in raw_done.items():
            self.db.set_checkpoint(tp.topic, tp.partition, done)
        return {}

    async def _restore(self, plan: dict[TopicPartition, tuple[int | None, int]]) -> None:
        """Replay the window's impressions (and billable clicks) of partitions this store missed."""
        started = time.monotonic()
        reader = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka, enable_auto_commit=False, isolation_level="read_committed")
        await reader.start()
        try:
            since = int(time.time() * 1000) - self.window_ms - STORE_MARGIN_S * 1000
            by_time = await reader.offsets_for_times(dict.fromkeys(plan, since))
            ends = await reader.end_offsets(list(plan))
            starts: dict[TopicPartition, int] = {}
            targets: dict[TopicPartition, int] = {}
            for tp, (checkpoint, until) in plan.items():
                found = by_time.get(tp)
                start = max(checkpoint or 0, found.offset if found is not None else ends[tp])
                target = ends[tp] if until < 0 else until
                if start < target:
                    starts[tp], targets[tp] = start, target
                elif tp.topic == self.impressions_topic:
                    self.db.set_checkpoint(tp.topic, tp.partition, target)
            reader.assign(list(starts))
            for tp, start in starts.items():
                reader.seek(tp, start)
            pending = set(starts)
            count = 0
            deadline = time.monotonic() + RESTORE_MAX_S
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"restoring the attribution table took over {RESTORE_MAX_S} s: {sorted(map(str, pending))}")
                fetched = await reader.getmany(*pending, timeout_ms=500, max_records=5000)
                for tp, records in fetched.items():
                    records = [r for r in records if r.offset < targets[tp]]
                    count += len(records)
                    self._restore_records(tp, records)
                for tp in list(pending):
                    if await reader.position(tp) >= targets[tp]:
                        pending.discard(tp)
                        if tp.topic == self.impressions_topic:
                            self.db.set_checkpoint(tp.topic, tp.partition, targets[tp])
            self.restored.inc(count)
            log.info("attribution table restored", extra={"records": count, "seconds": round(time.monotonic() - started, 3)})
        finally:
            await reader.stop()

    def _restore_records(self, tp: TopicPartition, records: list[KafkaRecord]) -> None:
        if tp.topic == self.impressions_topic:
            rows = []
            for record in records:
                try:
                    impression = decode(IMPRESSIONS, record.value)
                except RecordError:
                    continue
                rows.append((impression["impression_id"], impression["user_id"], StoredImpression.of(impression)))
            self.db.put_impressions(rows, {})
            return
        for record in records:
            try:
                click = decode(CLICKS, record.value)
            except RecordError:
                continue
            self.db.set_clicked(click["impression_id"], click["click_id"])
            self.db.set_verdict(click["click_id"], "", VALID)  # "" never equals a live record's position


def _offsets(step: Step) -> dict[TopicPartition, Position]:
    assert step.offsets is not None, "process() makes its step with exact offsets"
    return step.offsets
