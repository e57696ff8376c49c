"""`vickrey auction`: chat.intents → auctions → ad.decisions + ad.impressions, exactly once.

Per batch: getmany() → decode (bad records to the DLQ) → one engine pass → one Redis round trip
(reserve.lua: budgets, caps, idempotency) → re-run only the auctions Redis refused → publish
decisions, impressions and DLQ records in one Kafka transaction together with the consumed
offsets. A crash anywhere aborts the transaction; the batch is consumed again and Redis hands
back the outcomes it kept, so the same records are published once and nothing is charged twice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from auction.budgets import Answer, BudgetReserver, Claim, Reservation
from auction.controls import AppliedListener, ControlsProcessor
from auction.engine import AuctionEngine
from auction.index import CampaignIndex
from auction.live import LiveState
from auction.model import AuctionRequest, AuctionResult, NoFillReason
from auction.pacing import SpendView, utc_day
from auction.people import PeopleCache
from auction.rebalance import BetweenBatches
from auction.records import SEPARATOR, build_records, encode_outcome, split_outcome
from auction.worker_metrics import Tally, WorkerMetrics
from schemas.codec import RecordError, decode, dlq_record, encode
from vickrey import logs, native
from vickrey.kafka import BatchSender, transactional_consumer, transactional_producer
from vickrey.metrics import serve
from vickrey.settings import Settings

log = logging.getLogger("vickrey.auction")
Output = tuple[str, bytes | None, bytes | None]
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
INPUT = "chat.intents"
MAX_REFUSAL_ROUNDS = 8
# Auctions per reservation call: a batch's chunks are pipelined (Redis reserves one chunk while
# the next is auctioned). Each call also costs per campaign it touches (budget and spend read and
# written once per call) and per call in the client: measured in `make bench`, 64 per call cost
# ~120 µs of CPU per event in all, 256-1,024 ~95 µs, for the same overlap in practice.
RESERVE_CHUNK = 512
# Event-loop turns redis-py needs to put a call on the wire (2 with redis-py 5); fewer only loses
# the overlap, never correctness.
SEND_YIELDS = 3
# How long the broker may hold an empty fetch. It answers as soon as a record arrives, so a longer
# wait costs no latency; a short one only makes an idle worker poll (5 ms: ~10 % of a core in
# the broker).
FETCH_MAX_WAIT_MS = 100
# Events per batch, and so per Kafka transaction, at most. Each transaction costs the broker a
# few milliseconds of CPU (partitions added, offsets, commit markers on every partition written):
# at 500 events that was ~20 µs per event, at 2,000 about half. A quiet stream still commits
# small batches at once, so this bounds only how much a backlog takes per commit.
BATCH_MAX = 2000
# While a commit is in flight, records are fetched every TOP_UP_MS and auctioned once PART_MIN of
# them are in (one engine pass and one Redis call each); the rest right after the commit ends.
# Smaller parts cost more per event (a Redis call, a pass) than their head start saves.
TOP_UP_MS = 1
PART_MIN = 16


@dataclass(slots=True, init=False)  # __init__ written out: mypyc compiles it (dataclass's runs interpreted)
class Pending:
    record: ConsumerRecord[bytes, bytes]
    intent: dict[str, Any]
    request: AuctionRequest
    refused: dict[str, NoFillReason]
    encoded: list[bytes]  # decision, then impressions
    impression_ids: list[str]
    no_fill_reason: str | None

    def __init__(self, record: ConsumerRecord[bytes, bytes], intent: dict[str, Any], request: AuctionRequest) -> None:
        self.record = record
        self.intent = intent
        self.request = request
        self.refused = {}
        self.encoded = []
        self.impression_ids = []
        self.no_fill_reason = None


class AuctionWorker:
    def __init__(
        self,
        settings: Settings,
        instance: str | None = None,
        batch_max: int = BATCH_MAX,
        linger_ms: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        # A named instance is stable across restarts: its transactional id fences (and aborts)
        # what a killed predecessor left open, and as a static group member it gets its
        # partitions back without a rebalance. Unnamed instances are unique per process.
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_max = batch_max
        self.linger_ms = linger_ms
        self.clock = clock
        self.metrics = WorkerMetrics()
        self.engine = AuctionEngine(CampaignIndex(), SpendView(), increment_micros=settings.price_increment_micros)
        self.redis = Redis.from_url(settings.redis)
        self.live = LiveState(settings, self.redis, self.engine)
        self.reserver = BudgetReserver(self.redis, settings.namespace, settings.event_ttl_s)
        self.stop_event = asyncio.Event()
        self.batch_lock = asyncio.Lock()
        self._committing: asyncio.Task[bool] | None = None  # the transaction in flight
        self.generation = 0  # bumped by every rewind: batches fetched before it are void
        self.people = PeopleCache()
        self.group_id = settings.group("auction")
        self.topics = {name: settings.topic(name) for name in ("ad.decisions", "ad.impressions", "chat.intents.dlq")}
        self.consumer = transactional_consumer(
            settings,
            self.group_id,
            batch_max,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            group_instance_id=f"{settings.group('auction')}-{instance}" if instance else None,
        )
        self.producer = transactional_producer(settings, f"{settings.group('auction')}-{self.instance}", linger_ms)
        self.sender = BatchSender(self.producer)
        self.controls = ControlsProcessor(settings, self.redis, self.instance)
        self.applied_listener = AppliedListener(settings, self.people)
        self.ready = False
        self.last_batch_at = 0.0  # monotonic time of the last non-empty batch

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        compiled = native.check()  # refuses stale machine code
        interpreted = sorted(source for source, state in compiled.items() if state != "compiled")
        if interpreted:
            log.warning("hot path runs interpreted (about half the speed); `make native` compiles it",
                        extra={"modules": interpreted})
        await self.live.load()
        _tune_gc()
        await self.producer.start()
        await self.consumer.start()
        await self.controls.start()
        self.consumer.subscribe([self.settings.topic(INPUT)], listener=BetweenBatches(self.batch_lock, self._settle_commit))
        self._runner = await serve(self.metrics.registry, self.settings.metrics_port, lambda: self.ready)
        self._tasks = [
            asyncio.create_task(self.live.follow_changes(self.stop_event)),
            asyncio.create_task(self.live.refresh_forever(self.stop_event)),
            asyncio.create_task(self.controls.run(self.stop_event)),
            asyncio.create_task(self.applied_listener.run(self.stop_event)),
            asyncio.create_task(self._full_collections()),
        ]
        self.ready = True
        log.info(
            "auction worker started",
            extra={"instance": self.instance, "group": self.group_id, "campaigns": len(self.engine.index)},
        )

    async def close(self) -> None:
        self.ready = False
        self.stop_event.set()
        # Background tasks see the stop event and finish their batch (the controls processor
        # commits its transaction); cancel only what does not finish in time.
        _, late = await asyncio.wait(self._tasks, timeout=10)
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.controls.stop()
        await self.consumer.stop()
        await self.producer.stop()
        await self._runner.cleanup()
        await self.reserver.drop_committed()
        await self.redis.aclose()
        m = self.metrics
        log.info(
            "auction worker stopped",
            extra={
                "instance": self.instance,
                "events_in": m.events_in.get(),
                "decisions": m.decisions.get(),
                "replayed": m.replays.get(),
                "already_committed": m.already_committed.get(),
                "dlq": sum(m.dlq.values.values()),
            },
        )

    async def _full_collections(self) -> None:
        """The cyclic garbage of older generations, collected when it costs no decision a pause:
        after a second without batches, or every FULL_GC_EVERY_S at the latest."""
        last = time.monotonic()
        while not self.stop_event.is_set():
            await asyncio.sleep(FULL_GC_IDLE_S)
            now = time.monotonic()
            idle = now - self.last_batch_at >= FULL_GC_IDLE_S and self.last_batch_at > last
            if idle or now - last >= FULL_GC_EVERY_S:
                began = time.perf_counter()
                gc.collect()
                last = time.monotonic()
                self.metrics.full_gc.observe(time.perf_counter() - began)

    async def run(self) -> None:
        """Two batches in flight: while batch N's transaction commits (network round trips),
        batch N+1 is fetched and auctioned as it arrives, so it is ready to commit the moment N's
        commit ends. Only one transaction is open at a time, and a failed commit sends the
        consumer back to batch N's first offsets: N and N+1 are consumed again and Redis hands
        back their kept outcomes, so nothing is lost or doubled."""
        try:
            while not self.stop_event.is_set():
                await self._step()
        finally:
            await self._settle_commit()

    async def _step(self) -> None:
        """One batch: up to batch_max records, auctioned part by part as they arrive for as long
        as the previous transaction still commits (this batch could not commit before it
        anyway), then for at most linger_ms more; then committed. A quiet stream so commits an
        event at once, and a busy one commits whatever arrived during the last commit, already
        auctioned, one transaction per commit time."""
        generation = self.generation
        fetched = await self._fetch(generation, 100, self.batch_max)
        if not fetched:
            await self._settle_commit()
            return
        self.last_batch_at = time.monotonic()
        started = time.perf_counter()
        deadline = time.monotonic() + self.linger_ms / 1000
        batch: Batch = {}
        outputs: list[Output] = []
        blob_ids: list[str] = []
        count = 0
        async with self.batch_lock:
            fresh, fresh_count = fetched, sum(len(records) for records in fetched.values())
            while generation == self.generation:
                committing = self._committing is not None and not self._committing.done()
                if fresh and (not committing or fresh_count >= PART_MIN or count + fresh_count >= self.batch_max
                              or self.stop_event.is_set()):
                    # A rebalance may have taken partitions between getmany() and the lock.
                    assigned = self.consumer.assignment()
                    part = {tp: records for tp, records in fresh.items() if tp in assigned}
                    fresh, fresh_count = {}, 0
                    if part:
                        part_outputs, part_blobs = await self.process(part)
                        outputs += part_outputs
                        blob_ids += part_blobs
                        for tp, records in part.items():
                            batch.setdefault(tp, []).extend(records)
                            count += len(records)
                    continue  # the commit may have ended meanwhile
                if count >= self.batch_max or self.stop_event.is_set():
                    break
                left_ms = (deadline - time.monotonic()) * 1000
                if not committing and left_ms <= 0:
                    break
                more = await self._fetch(generation, TOP_UP_MS, self.batch_max - count - fresh_count, locked=True)
                for tp, records in more.items():
                    fresh.setdefault(tp, []).extend(records)
                    fresh_count += len(records)
            # Settled even when nothing was gathered: a failure left for the next batch would void it.
            settled = await self._settle_commit()
            if not batch or not settled or generation != self.generation:
                return  # the consumer was sent back before this batch: it comes again
            self._committing = asyncio.create_task(self._commit(batch, outputs, blob_ids, started))

    async def _fetch(self, generation: int, timeout_ms: int, max_records: int, locked: bool = False) -> Batch:
        """getmany(). Records that arrive after a rewind (a newer generation than the batch's) are
        handed back with a seek, so the next batch reads them again instead of the position
        passing them.

        `locked`: the batch lock is held. While a rebalance is under way aiokafka's getmany waits
        for the new assignment, which waits for that lock (the rebalance listener): so under the
        lock only what is already fetched is taken (timeout 0, no wait), nothing while a
        rebalance is under way, and the waiting is done here, in steps of at most timeout_ms."""
        if locked:
            fetched: Batch = {}
            if not self.consumer._subscription.reassignment_in_progress:  # what getmany would wait on
                fetched = await self.consumer.getmany(timeout_ms=0, max_records=max_records)
            if not fetched:
                await asyncio.sleep(timeout_ms / 1000)
                return {}
        else:
            fetched = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        if fetched and generation != self.generation:
            assigned = self.consumer.assignment()
            for tp, records in fetched.items():
                if tp in assigned:
                    self.consumer.seek(tp, records[0].offset)
            return {}
        return fetched

    async def _settle_commit(self) -> bool:
        """Wait for the transaction in flight; False when it failed (and the consumer was sent
        back to its first offsets)."""
        task, self._committing = self._committing, None
        return True if task is None else await task

    async def _rewind(self) -> None:
        """Back to the committed offsets on every partition: whatever was fetched or auctioned
        since is consumed again (and gets its kept outcome back from Redis). The offsets are read
        first; the generation bump and every seek then happen with no await between them, so a
        batch being gathered sees the rewind whole or not at all (see _fetch)."""
        targets: dict[TopicPartition, int | None] = {}
        for tp in self.consumer.assignment():
            targets[tp] = await self.consumer.committed(tp)
        never = [tp for tp, offset in targets.items() if offset is None]
        firsts = await self.consumer.beginning_offsets(never) if never else {}
        self.generation += 1
        assigned = self.consumer.assignment()
        for tp, offset in targets.items():
            if tp in assigned:
                self.consumer.seek(tp, offset if offset is not None else firsts[tp])
        await asyncio.sleep(0.5)

    async def _commit(self, batch: Batch, outputs: list[Output], blob_ids: list[str], started: float) -> bool:
        count = sum(len(records) for records in batch.values())
        try:
            async with self.producer.transaction():
                await self.sender.send(outputs)
                offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                await self.producer.send_offsets_to_transaction(offsets, self.group_id)
        except Exception:
            # Nothing of this batch was committed: consume it again. Redis kept every outcome
            # it reserved, so the retry republishes the same records without charging again.
            log.exception("batch failed, consuming again from the committed offsets", extra={"records": count})
            await self._rewind()
            return False
        self.reserver.committed(blob_ids)  # published for good: their kept outcomes can go
        self.metrics.batch_size.observe(count)
        self.metrics.latency.observe(time.perf_counter() - started)
        for tp, records in batch.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                self.metrics.lag.set(max(0, highwater - records[-1].offset - 1), partition=str(tp.partition))
        return True

    # -- one batch ---------------------------------------------------------------------------

    async def process(self, batch: Batch) -> tuple[list[Output], list[str]]:
        """Auction a batch; returns the records to publish as (topic, key, value), and the ids
        of the Redis blobs that keep their outcomes until they are committed."""
        now_ms = int(self.clock() * 1000)
        day = utc_day(now_ms)
        self.engine.spend.roll_to(day)
        outputs: list[Output] = []
        blob_ids: list[str] = []
        pending: list[Pending] = []
        tally = Tally()
        for records in batch.values():
            for record in records:
                tally.events_in += 1
                try:
                    intent = decode(INPUT, record.value)
                except RecordError as error:
                    outputs.append(self._dlq(record, str(error), now_ms, "invalid"))
                    continue
                pending.append(Pending(record, intent, AuctionRequest.from_intent(intent, now_ms)))

        engine_seconds = 0.0
        auctions = 0
        rounds = 0
        reserve = self.reserver.reserve
        while pending:
            rounds += 1
            again: list[Pending] = []
            # Chunks, pipelined: while Redis reserves chunk k, chunk k+1 is auctioned. Only one
            # reservation is in flight at a time, so Redis sees the chunks in batch order.
            in_flight: tuple[list[Pending], asyncio.Task[Any]] | None = None
            for start in range(0, len(pending), RESERVE_CHUNK):
                chunk = pending[start : start + RESERVE_CHUNK]
                began = time.perf_counter()
                claims = [self._claim(item, self._auction(item, now_ms, rounds), now_ms) for item in chunk]
                engine_seconds += time.perf_counter() - began
                auctions += len(chunk)
                if in_flight is not None:
                    self._settle_chunk(in_flight[0], await in_flight[1], outputs, blob_ids, now_ms, tally, again)
                in_flight = (chunk, asyncio.ensure_future(reserve(claims, day)))
                for _ in range(SEND_YIELDS):  # let the request go out before the next auctions
                    await asyncio.sleep(0)
            if in_flight is not None:
                self._settle_chunk(in_flight[0], await in_flight[1], outputs, blob_ids, now_ms, tally, again)
            pending = again
        if auctions:
            self.metrics.auction_latency.observe(engine_seconds / auctions, auctions)
        tally.publish(self.metrics)
        return outputs, blob_ids

    def _auction(self, item: Pending, now_ms: int, rounds: int) -> AuctionResult:
        result = self.engine.run(item.request, self.people.state_for(item.request.user_id, now_ms), item.refused)
        if rounds > MAX_REFUSAL_ROUNDS and result.winners:
            # Refused round after round (budgets draining under us): settle as a no-fill, which
            # needs no reservation and so cannot be refused again.
            reason: NoFillReason = next(iter(item.refused.values()), "budget")
            result = AuctionResult(result.event_id, (), reason, result.reserve_cpm_micros)
        return result

    def _claim(self, item: Pending, result: AuctionResult, now_ms: int) -> Claim:
        """Records for this result, encoded once: published as they are, and kept in Redis."""
        decision, impressions = build_records(item.intent, result, now_ms, self.live.creatives, personalized=False)
        item.encoded = encode_outcome(decision, impressions)
        item.impression_ids = [impression["impression_id"] for impression in impressions]
        item.no_fill_reason = decision["no_fill_reason"]
        reservations = []
        for winner in result.winners:
            campaign = winner.campaign
            cap_max, cap_window = campaign.frequency_cap or (0, 0)
            need = max(1, winner.charge_micros) if campaign.bid_type == "cpm" else winner.price_micros
            reservations.append(
                Reservation(campaign.campaign_id, winner.charge_micros, need, cap_max, cap_window, campaign.advertiser_id)
            )
        return Claim(
            event_id=item.request.event_id,
            source=f"{item.record.partition}:{item.record.offset}",
            user_id=item.request.user_id,
            outcome=SEPARATOR.join(item.encoded),
            reservations=reservations,
        )

    def _settle_chunk(
        self,
        chunk: list[Pending],
        reply: tuple[list[Answer], list[tuple[str, int, int]], str],
        outputs: list[Output],
        blob_ids: list[str],
        now_ms: int,
        tally: Tally,
        again: list[Pending],
    ) -> None:
        answers, spends, blob_id = reply
        blob_ids.append(blob_id)
        self._record_spends(spends)
        settle = self._settle
        for item, answer in zip(chunk, answers, strict=True):
            if settle(item, answer, outputs, now_ms, tally):
                again.append(item)

    def _record_spends(self, spends: list[tuple[str, int, int]]) -> None:
        index, view = self.engine.index, self.engine.spend
        for campaign_id, today, total in spends:
            campaign = index.get(campaign_id)
            if campaign is not None:
                view.record(campaign, today, total)

    def _settle(self, item: Pending, answer: Answer, outputs: list[Output], now_ms: int, tally: Tally) -> bool:
        """Turn Redis's answer into records; True when the auction must run again."""
        if answer.kind == "refused":
            for campaign_id, reason in answer.refused.items():
                self.metrics.refusals.inc(reason=reason)
                campaign = self.engine.index.get(campaign_id)
                if reason == "budget":
                    item.refused[campaign_id] = "budget"
                    self.engine.spend.mark_exhausted(campaign_id)
                elif reason == "user_hidden":
                    item.refused[campaign_id] = "user_hidden"
                    if campaign is not None:
                        self.people.remember_hidden(item.request.user_id, campaign.advertiser_id)
                else:
                    item.refused[campaign_id] = "frequency_cap"
                    window_s = campaign.frequency_cap[1] if campaign and campaign.frequency_cap else 60
                    self.people.remember_cap(item.request.user_id, campaign_id, window_s, now_ms)
            return True
        if answer.kind == "dup":
            partition, _, offset = answer.first_source.partition(":")
            error = (
                f"event_id: {item.request.event_id!r} was already decided (first seen at partition {partition} "
                f"offset {offset}); a repeated event gets no second decision or charge"
            )
            outputs.append(self._dlq(item.record, error, now_ms, "duplicate"))
            return False
        if answer.kind == "committed":
            # Its decision and impressions are already in Kafka, committed: the record is read
            # again only because the group's offsets were moved back. Publishing nothing keeps
            # billing exactly once.
            tally.already_committed += 1
            return False
        if answer.kind == "replay":
            # Publish exactly what the first attempt kept, whatever changed since.
            item.encoded = split_outcome(answer.outcome)
            item.impression_ids = [orjson.loads(raw)["impression_id"] for raw in item.encoded[1:]]
            item.no_fill_reason = orjson.loads(item.encoded[0])["no_fill_reason"]
            tally.replays += 1
        decision_topic, impression_topic = self.topics["ad.decisions"], self.topics["ad.impressions"]
        outputs.append((decision_topic, item.intent["session_id"].encode(), item.encoded[0]))
        for impression_id, raw in zip(item.impression_ids, item.encoded[1:], strict=True):
            outputs.append((impression_topic, impression_id.encode(), raw))
        tally.decisions += 1
        if item.impression_ids:
            tally.fills += 1
            tally.impressions += len(item.impression_ids)
        else:
            tally.no_fill[str(item.no_fill_reason)] += 1
        return False

    def _dlq(self, record: ConsumerRecord[bytes, bytes], error: str, now_ms: int, kind: str) -> Output:
        self.metrics.dlq.inc(kind=kind)
        dead = dlq_record(self.settings.topic(INPUT), record.partition, record.offset, record.key, record.value, error, now_ms)
        return (self.topics["chat.intents.dlq"], record.key, encode(dead))



# The hot path allocates tens of thousands of short-lived containers per batch and makes no
# reference cycles; with the default gen0 threshold (700) the cyclic collector ran every few
# dozen events and walked the campaign index each time (~10-15 % of the worker's CPU). A batch's
# records live until its commit, so each young collection also walked and promoted them, and gen1
# walked them again: at 10,000 that was still ~6 % of the worker's CPU; at 50,000 the worker spent
# 5-13 % less CPU per event (three in-process A/B pairs), pauses still a few ms.
GC_GEN0_THRESHOLD = 50_000
# Full (generation 2) collections walk every long-lived object: measured 80 ms, a pause on the
# path of every decision in flight (the e2e p99). Automatic ones are switched off; the worker
# runs one itself when it has been idle for a second, and at least every FULL_GC_EVERY_S.
FULL_GC_NEVER = 1_000_000_000
FULL_GC_EVERY_S = 300.0
FULL_GC_IDLE_S = 1.0


def _tune_gc() -> None:
    """Campaigns and clients loaded at start live as long as the process: freeze them out of the
    collector's walks, collect young objects less often, and old ones only when the worker says
    so (`_full_collections`). Reference counting still frees everything that is not in a cycle
    at once."""
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, FULL_GC_NEVER)


async def run_worker(settings: Settings, instance: str | None = None, batch_max: int = BATCH_MAX, linger_ms: int = 0) -> None:
    worker = AuctionWorker(settings, instance=instance, batch_max=batch_max, linger_ms=linger_ms)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop_event.set)
    await worker.start()
    try:
        await worker.run()
    finally:
        await worker.close()


def main(settings: Settings, args: Any) -> int:
    """Entry point for `vickrey auction`; `--workers N` runs N supervised processes."""
    if getattr(args, "workers", 1) > 1:
        from vickrey.supervisor import run_auction_workers

        return run_auction_workers(settings, args)
    logs.setup("auction")
    asyncio.run(
        run_worker(
            settings,
            instance=getattr(args, "instance", None),
            batch_max=getattr(args, "batch_max", BATCH_MAX),
            linger_ms=getattr(args, "linger_ms", 0),
        )
    )
    return 0
