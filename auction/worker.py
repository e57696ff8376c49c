"""`vickrey auction`: chat.intents → auctions → ad.decisions + ad.impressions, exactly once.

`AuctionRole.process` is the per-event work, on the shared exactly-once loop (core/loop.py):
the intake (auction/fastpath.py: raw intents kept in Rust for the compiled claim, or read into
auction requests by the reference; bad records to the DLQ) → one engine pass → one Redis round trip per chunk (reserve.lua:
budgets, caps, idempotency) → re-run only the auctions Redis refused → the records to publish.
Redis's answers (and the rounds for auctions it refused) are read in the step's rest
(`Step.rest`, awaited by the commit), so the next parts are auctioned while Redis reserves.
The loop publishes them in one Kafka transaction with the consumed offsets. A crash anywhere
aborts the transaction; the batch is consumed again and Redis hands back the compact outcomes
it kept (auction/records.py), from which the same records are built again, byte for byte: they
are published once and nothing is charged twice.

`AuctionWorker` is the process: the auction role and the user-controls role on their loops,
the live campaign state, the forget listener and the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from auction.autopilot_listener import AutopilotListener
from auction.batching import BATCH_MAX, loop_options, run_on_worker_loop
from auction.budgets import Answer, Claim, Reservation
from auction.budgets_split import reserver_for
from auction.controls import AppliedListener, ControlsRole
from auction.engine import AuctionEngine
from auction.fastpath import INPUT, Intake, Parsed, Writer, hot_path, read_intent
from auction.index import CampaignIndex
from auction.live import LiveState
from auction.model import AuctionRequest, AuctionResult, NoFillReason
from auction.pacing import SpendView
from auction.people import PeopleCache
from auction.records import (
    decode_compact,
    is_compact,
    outcome_of,
    split_outcome,
)
from auction.twin import engine_twin
from auction.worker_metrics import Tally, WorkerMetrics
from core import logs, native
from core.clock import utc_day
from core.loop import Batch, Committed, Loop, Output, Step, drain, run_loops
from core.metrics import Metrics, serve
from core.redis_client import redis_from_url
from core.settings import Settings
from schemas.codec import RecordError

log = logging.getLogger("vickrey.auction")
MAX_REFUSAL_ROUNDS = 8
# Auctions per reservation call: a part's chunks are pipelined (Redis reserves one chunk while
# the next is auctioned; the calls overlap). Each call also costs per campaign it touches (budget
# and spend read and written once per call) and per call in the client: 64 per call cost ~120 µs
# of CPU per event in all, 256-1,024 ~95 µs, and calls of 24 were much worse (BENCHMARKS.md;
# measured while one call was in flight at a time).
RESERVE_CHUNK = 512
# Event-loop turns redis-py needs to put a call on the wire (2 with redis-py 5); fewer only loses
# the overlap, never correctness.
SEND_YIELDS = 3


class Pending:
    """One intent of a part, from its intake to its records. An intent the compiled intake read
    stays in Rust (`parsed`) for the compiled claim; its request and fields are made only when
    Python needs them (the Python engine, a replay, a duplicate's DLQ record)."""

    record: ConsumerRecord[bytes, bytes]
    parsed: Parsed | None
    refused: dict[str, NoFillReason]
    published: list[Output]  # the decision, then the impressions: (topic, key, value)
    impressions: int
    no_fill_reason: str | None
    _request: AuctionRequest | None
    _intent: dict[str, Any] | None

    def __init__(self, record: ConsumerRecord[bytes, bytes], parsed: Parsed | None,
                 read: tuple[AuctionRequest, dict[str, Any]] | None = None) -> None:
        self.record = record
        self.parsed = parsed
        self._request, self._intent = (None, None) if read is None else read
        self.refused = {}
        self.published = []
        self.impressions = 0
        self.no_fill_reason = None

    @property
    def request(self) -> AuctionRequest:
        if self._request is None:
            self._expand()
        assert self._request is not None
        return self._request

    @property
    def intent(self) -> dict[str, Any]:
        if self._intent is None:
            self._expand()
        assert self._intent is not None
        return self._intent

    def _expand(self) -> None:
        assert self.parsed is not None, "a Pending holds its parsed intent or its request and fields"
        self._request, self._intent = self.parsed.expand()

    def source(self) -> str:
        """The record's "<partition>:<offset>": tells a replay from a duplicate (auction/budgets.py)."""
        return f"{self.record.partition}:{self.record.offset}"


def reservations_of(result: AuctionResult) -> list[Reservation]:
    """What Redis must reserve for each winner: a CPM winner's charge (at least a micro must be
    left in the budget), a CPC winner one click at its price; its frequency cap and advertiser."""
    reservations = []
    for winner in result.winners:
        campaign = winner.campaign
        cap_max, cap_window = campaign.frequency_cap or (0, 0)
        need = max(1, winner.charge_micros) if campaign.bid_type == "cpm" else winner.price_micros
        reservations.append(
            Reservation(campaign.campaign_id, winner.charge_micros, need, cap_max, cap_window, campaign.advertiser_id)
        )
    return reservations


# A reservation call on its way: the chunk's auctions and Redis's answer to come.
InFlight: TypeAlias = tuple[list[Pending], "asyncio.Future[tuple[list[Answer], list[tuple[str, int, int]], str]]"]


class AuctionRole:
    """Auctions a batch of intents: the loop's `process` for chat.intents."""

    name = "auction"
    inputs = (INPUT,)

    def __init__(self, settings: Settings, metrics: WorkerMetrics, redis: Redis, people: PeopleCache,
                 batch_max: int = BATCH_MAX, linger_ms: int = 0, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.options = loop_options(batch_max, linger_ms)
        self.metrics = metrics
        self.clock = clock
        increment = settings.price_increment_micros
        self.twin = engine_twin(increment)  # None without a Rust build: the Python engine decides
        self.engine = AuctionEngine(CampaignIndex(), SpendView(), increment_micros=increment, twin=self.twin)
        self.live = LiveState(settings, redis, self.engine)
        self.intake = Intake()
        self.writer = Writer()
        self.reserver = reserver_for(redis, settings.keys, settings.event_ttl_s)
        self.people = people
        self.topics = (settings.topic("ad.decisions"), settings.topic("ad.impressions"))
        if self.twin is not None:
            self.twin.set_topics(*self.topics)
            self.twin.attach_creatives(self.live.creatives)
        self._loop: Loop | None = None

    async def start(self, loop: Loop) -> None:
        self._loop = loop
        await self.live.load()

    async def close(self) -> None:
        await self.reserver.drop_committed()

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        return {}  # no per-partition state: Redis keeps what a replay needs

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """The loop calls this once the transaction in flight has landed. The outcomes kept for
        committed batches go now, not at the next reservation: the next owner of these partitions
        may read offsets from before that transaction (aiokafka cannot ask the broker to wait for
        pending transactional offsets, KIP-447's require_stable), and must then be told
        "committed", not handed the outcomes to publish a second time."""
        await self.reserver.drop_committed()

    @property
    def loop(self) -> Loop:
        assert self._loop is not None, "start() first"
        return self._loop

    # -- one part of a batch ---------------------------------------------------------------------

    async def process(self, batch: Batch, now_ms: int) -> Step:
        """Auction a part of a batch. Returns once the part's last reservation call is on its
        way: the step's rest reads Redis's answers (re-running the auctions it refused) while the
        loop fetches and auctions the next part. Once the records are committed, the Redis blobs
        that kept their outcomes can go."""
        if self.clock is not None:
            now_ms = int(self.clock() * 1000)
        day = utc_day(now_ms)
        self.engine.spend.roll_to(day)
        outputs: list[Output] = []
        pending: list[Pending] = []
        tally = Tally()
        for records in batch.values():
            self._read_intents(records, now_ms, pending, outputs, tally)
        if not pending:
            tally.publish(self.metrics)
            return Step(outputs)
        calls = await self._round(pending, 1, now_ms, day, tally)
        return Step(outputs, rest=asyncio.ensure_future(self._rest(calls, now_ms, day, tally)))

    async def _round(self, pending: list[Pending], rounds: int, now_ms: int, day: str, tally: Tally) -> list[InFlight]:
        """One round of auctions in chunks, each chunk's reservation call sent as soon as it is
        auctioned: Redis reserves chunk k while chunk k+1 is auctioned. Returns the calls, sent
        and not yet answered."""
        calls: list[InFlight] = []
        try:
            await self._send_chunks(pending, rounds, now_ms, day, tally, calls)
        except BaseException:
            await drain(answer for _, answer in calls)  # none left running
            raise
        return calls

    async def _send_chunks(self, pending: list[Pending], rounds: int, now_ms: int, day: str, tally: Tally,
                           calls: list[InFlight]) -> None:
        twin = self.twin
        reserve = self.reserver.reserve
        for start in range(0, len(pending), RESERVE_CHUNK):
            chunk = pending[start : start + RESERVE_CHUNK]
            decided, left = (twin.decided, twin.left) if twin is not None else (0, 0)
            began = time.perf_counter()
            claims = [self._decide(item, now_ms, rounds) for item in chunk]
            tally.engine_seconds += time.perf_counter() - began
            tally.auctions += len(chunk)
            if twin is None:
                tally.engine_python += len(chunk)
            else:
                tally.engine_compiled += twin.decided - decided
                tally.engine_python += twin.left - left
            calls.append((chunk, asyncio.ensure_future(reserve(claims, day))))
            for _ in range(SEND_YIELDS):  # let the request go out before the next auctions
                await asyncio.sleep(0)

    async def _rest(self, calls: list[InFlight], now_ms: int, day: str, tally: Tally) -> Step:
        """The rest of a part's step: Redis's answers, in chunk order, then rounds for the
        auctions it refused until none is (after MAX_REFUSAL_ROUNDS they are no-fills)."""
        outputs: list[Output] = []
        blob_ids: list[str] = []
        rounds = 1
        while True:
            again: list[Pending] = []
            try:
                for chunk, answer in calls:
                    self._read_answers(chunk, await answer, outputs, blob_ids, day, now_ms, tally, again)
            except BaseException:
                await drain(answer for _, answer in calls)
                raise
            if not again:
                break
            rounds += 1
            calls = await self._round(again, rounds, now_ms, day, tally)
        tally.publish(self.metrics)
        reserver = self.reserver
        return Step(outputs, on_commit=lambda: reserver.committed(blob_ids))

    def _read_intents(self, records: list[ConsumerRecord[bytes, bytes]], now_ms: int, pending: list[Pending],
                      outputs: list[Output], tally: Tally) -> None:
        """One partition's records to auction: each plainly valid intent read by the compiled
        intake, any other by the reference (a bad one goes to the DLQ, its field named)."""
        parsed = self.intake.parse([record.value for record in records], now_ms)
        for record, found in zip(records, parsed, strict=True):
            tally.events_in += 1
            if found is None:
                try:
                    pending.append(Pending(record, None, read_intent(record.value, now_ms)))
                except RecordError as error:
                    tally.invalid += 1
                    outputs.append(self.loop.dlq(record, error, now_ms))
                    continue
                tally.intake_reference += 1
            else:
                tally.intake_compiled += 1
                pending.append(Pending(record, found))

    def _decide(self, item: Pending, now_ms: int, rounds: int) -> Claim:
        """The auction and its claim: in one compiled step where the twin can take both, else
        the engine, then `_claim`."""
        twin = self.twin
        if twin is not None and rounds <= MAX_REFUSAL_ROUNDS:
            source = item.source()
            parsed = item.parsed
            if parsed is not None:
                event_id, user_id = parsed.event_id, parsed.user_id
                claimed = twin.claim_parsed(parsed, self.people.state_for(user_id, now_ms), item.refused, source,
                                            now_ms)
            else:
                request = item.request
                event_id, user_id = request.event_id, request.user_id
                claimed = twin.claim(request, self.people.state_for(user_id, now_ms), item.refused, item.intent,
                                     source, now_ms)
            if claimed is not None:
                item.published, item.impressions, item.no_fill_reason, compact, entry = claimed
                return Claim(event_id=event_id, source=source, user_id=user_id, outcome=compact, entry=entry)
        return self._claim(item, self._auction(item, now_ms, rounds), now_ms)

    def _auction(self, item: Pending, now_ms: int, rounds: int) -> AuctionResult:
        result = self.engine.run(item.request, self.people.state_for(item.request.user_id, now_ms), item.refused)
        if rounds > MAX_REFUSAL_ROUNDS and result.winners:
            # Refused round after round (budgets draining under us): a no-fill, which needs no
            # reservation and so cannot be refused again.
            reason: NoFillReason = next(iter(item.refused.values()), "budget")
            result = AuctionResult(result.event_id, (), reason, result.reserve_cpm_micros)
        return result

    def _claim(self, item: Pending, result: AuctionResult, now_ms: int) -> Claim:
        """Records for this result, encoded once to be published; Redis keeps the compact outcome
        they were built from, to build the same bytes again on a replay."""
        outcome = outcome_of(item.request.event_id, result, now_ms, self.live.creatives, personalized=False)
        compact = self._set_records(self.writer, self.topics, item, outcome)
        return Claim(
            event_id=item.request.event_id,
            source=item.source(),
            user_id=item.request.user_id,
            outcome=compact,
            reservations=reservations_of(result),
        )

    @staticmethod
    def _set_records(writer: Writer, topics: tuple[str, str], item: Pending, outcome: list[Any]) -> bytes:
        """The records of `outcome` for this intent, encoded: the first attempt's and a replay's
        alike (written compiled where the writer is built). Returns the compact outcome's bytes."""
        encoded, impression_ids, item.no_fill_reason, compact = writer.write(item.intent, outcome, item.request.keywords)
        AuctionRole._publish(topics, item, encoded, impression_ids)
        return compact

    @staticmethod
    def _publish(topics: tuple[str, str], item: Pending, encoded: list[bytes], impression_ids: list[str]) -> None:
        """The records to publish (`topics`: of decisions and of impressions): the decision, keyed
        by session, then each impression, by id."""
        item.published = [(topics[0], item.intent["session_id"].encode(), encoded[0])]
        item.published += [(topics[1], impression_id.encode(), raw)
                           for impression_id, raw in zip(impression_ids, encoded[1:], strict=True)]
        item.impressions = len(impression_ids)

    def _read_answers(
        self,
        chunk: list[Pending],
        reply: tuple[list[Answer], list[tuple[str, int, int]], str],
        outputs: list[Output],
        blob_ids: list[str],
        day: str,
        now_ms: int,
        tally: Tally,
        again: list[Pending],
    ) -> None:
        """Redis's answers for one chunk: records for the decided events, `again` for the refused."""
        answers, spends, blob_id = reply
        blob_ids.append(blob_id)
        index, view = self.engine.index, self.engine.spend
        # Calls overlap and answers arrive out of order: an older figure than the view has (a
        # lower total), or one of a day the view has left, is not recorded.
        if day == view.day:
            known = view.total_micros
            for campaign_id, today, total in spends:
                campaign = index.get(campaign_id)
                if campaign is not None and total >= known.get(campaign_id, 0):
                    view.record(campaign, today, total)
        to_records = self._answer_to_records
        for item, answer in zip(chunk, answers, strict=True):
            if to_records(item, answer, outputs, now_ms, tally):
                again.append(item)

    def _answer_to_records(self, item: Pending, answer: Answer, outputs: list[Output], now_ms: int,
                           tally: Tally) -> bool:
        """Turn Redis's answer into records; True when the auction must run again."""
        if answer.kind == "refused":
            self._remember_refusals(item, answer, now_ms)
            return True
        if answer.kind == "dup":
            partition, _, offset = answer.first_source.partition(":")
            error = (
                f"event_id: {item.request.event_id!r} was already decided (first seen at partition {partition} "
                f"offset {offset}); a repeated event gets no second decision or charge"
            )
            tally.duplicates += 1
            outputs.append(self.loop.dlq(item.record, error, now_ms))
            return False
        if answer.kind == "committed":
            # Its decision and impressions are already in Kafka, committed: the record is read
            # again only because the group's offsets were moved back. Publishing nothing keeps
            # billing exactly once.
            tally.already_committed += 1
            return False
        if answer.kind == "replay":
            # Publish what the first attempt published, whatever changed since: its records built
            # again from the outcome it kept (or, kept whole by an earlier version, as they are).
            if is_compact(answer.outcome):
                self._set_records(self.writer, self.topics, item, decode_compact(answer.outcome))
            else:
                encoded = split_outcome(answer.outcome)
                self._publish(self.topics, item, encoded, [orjson.loads(raw)["impression_id"] for raw in encoded[1:]])
                item.no_fill_reason = orjson.loads(encoded[0])["no_fill_reason"]
            tally.replays += 1
        outputs += item.published
        tally.decisions += 1
        if item.impressions:
            tally.fills += 1
            tally.impressions += item.impressions
        else:
            tally.no_fill[str(item.no_fill_reason)] += 1
        return False

    def _remember_refusals(self, item: Pending, answer: Answer, now_ms: int) -> None:
        """Campaigns Redis refused are out of this auction's next round, and remembered."""
        for campaign_id, reason in answer.refused.items():
            self.metrics.refusals.labels(reason).inc()
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


# The hot path allocates tens of thousands of short-lived containers per batch and makes no
# reference cycles: the cyclic collector runs once per 50,000 allocations (a few ms), not every
# few dozen events as with the default 700 (BENCHMARKS.md has the CPU it saves).
GC_GEN0_THRESHOLD = 50_000
# Full (generation 2) collections walk every long-lived object (~80 ms), a pause on the path of
# every decision in flight: automatic ones are off; the worker runs one when it has been idle
# for a second, and at least every FULL_GC_EVERY_S.
FULL_GC_NEVER = 1_000_000_000
FULL_GC_EVERY_S = 300.0
FULL_GC_IDLE_S = 1.0


class AuctionWorker:
    """One `vickrey auction` process: the auction and the user-controls loops, live campaign
    state, the forget and autopilot listeners and /metrics."""

    def __init__(self, settings: Settings, instance: str | None = None, batch_max: int = BATCH_MAX,
                 linger_ms: int = 0, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.metrics = Metrics()
        self.redis = redis_from_url(settings.redis)
        self.people = PeopleCache()
        self.role = AuctionRole(settings, WorkerMetrics(self.metrics), self.redis, self.people, batch_max, linger_ms, clock)
        self.loop = Loop(settings, self.role, self.metrics, self.stop_event, instance)
        self.controls = Loop(settings, ControlsRole(settings, self.redis, self.metrics), self.metrics,
                             self.stop_event, instance)
        self.applied_listener = AppliedListener(settings, self.people)
        self.autopilot_listener = AutopilotListener(settings, self.role.live, self.metrics)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def engine(self) -> AuctionEngine:
        return self.role.engine

    async def start(self) -> None:
        compiled = native.check()  # refuses stale machine code
        interpreted = sorted(source for source, state in compiled.items() if state == "interpreted")
        if interpreted:
            log.warning("hot path runs interpreted (about half the speed); `make native` compiles it",
                        extra={"modules": interpreted})
        intake = hot_path(self.role.intake, self.role.writer)
        if intake != "compiled":
            log.warning("the intake, the engine and the record writer run their Python reference (slower); "
                        "`make native` with a Rust toolchain builds the compiled ones")
        log.info("auction worker starting", extra={"event_loop": type(asyncio.get_running_loop()).__module__,
                                                   "hot_path": "interpreted" if interpreted else "compiled",
                                                   "intake": intake,
                                                   "engine": "python" if self.role.twin is None else "compiled"})
        self._runner = await serve(self.metrics, self.settings.metrics_port, lambda: self.loop.ready)
        live = self.role.live
        self._tasks = [
            asyncio.create_task(live.follow_changes(self.stop_event)),
            asyncio.create_task(live.refresh_forever(self.stop_event)),
            asyncio.create_task(self.applied_listener.run(self.stop_event)),
            asyncio.create_task(self.autopilot_listener.run(self.stop_event)),
            asyncio.create_task(self._full_collections()),
        ]

    async def run(self) -> bool:
        """Until SIGTERM (the stop event) or a loop's final failure; True when it ended cleanly."""
        _tune_gc()
        try:
            return await run_loops([self.loop, self.controls], self.stop_event)
        finally:
            self.stop_event.set()

    async def close(self) -> None:
        self.stop_event.set()
        _, late = await asyncio.wait(self._tasks, timeout=10) if self._tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._runner.cleanup()
        await self.redis.aclose()
        value = self.metrics.value
        log.info("auction worker stopped", extra={
            "events_in": value("vickrey_auction_events_in_total"),
            "decisions": value("vickrey_auction_decisions_total"),
            "replayed": value("vickrey_auction_replayed_total"),
            "already_committed": value("vickrey_auction_already_committed_total"),
            "engine_compiled": value("vickrey_auction_engine_path_total", path="compiled"),
            "engine_python": value("vickrey_auction_engine_path_total", path="python"),
        })

    async def _full_collections(self) -> None:
        """The cyclic garbage of older generations, collected when it costs no decision a pause:
        after a second without batches, or every FULL_GC_EVERY_S at the latest."""
        last = busy_at = time.monotonic()
        committed = 0.0
        while not self.stop_event.is_set():
            await asyncio.sleep(FULL_GC_IDLE_S)
            now = time.monotonic()
            current = self.metrics.value("vickrey_records_committed_total", role=self.role.name)
            if current != committed:
                committed, busy_at = current, now
            idle = now - busy_at >= FULL_GC_IDLE_S and busy_at > last
            if idle or now - last >= FULL_GC_EVERY_S:
                began = time.perf_counter()
                gc.collect()
                last = time.monotonic()
                self.role.metrics.full_gc.observe(time.perf_counter() - began)


def _tune_gc() -> None:
    """Campaigns and clients loaded at start live as long as the process: freeze them out of the
    collector's walks, collect young objects less often, and old ones only when the worker says
    so (`_full_collections`). Reference counting still frees everything not in a cycle at once."""
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, FULL_GC_NEVER)


async def run_worker(settings: Settings, instance: str | None = None, batch_max: int = BATCH_MAX,
                     linger_ms: int = 0) -> bool:
    worker = AuctionWorker(settings, instance=instance, batch_max=batch_max, linger_ms=linger_ms)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop_event.set)
    await worker.start()
    try:
        return await worker.run()
    finally:
        await worker.close()


def main(settings: Settings, instance: str | None, batch_max: int, linger_ms: int) -> int:
    """`vickrey auction` (one process; the CLI's `--workers N` supervises N of them), on the
    worker's event loop (`run_on_worker_loop`)."""
    logs.setup("auction")
    return 0 if run_on_worker_loop(run_worker(settings, instance, batch_max, linger_ms)) else 1
