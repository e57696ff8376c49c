"""The exactly-once loop every consume→produce role runs on (the auction worker, attribution,
billing, reporting, CTR feedback, user controls).

A role says what to do with records; the loop does everything Kafka:

    class Billing:
        name = "billing"                           # consumer group, transactional id, metric label
        inputs = ("ad.impressions", "ad.clicks")   # logical topics
        options = LoopOptions(batch_max=2000)
        async def process(self, batch, now_ms) -> Step: ...   # records in, records out

**Batches.** The loop fetches records and hands them to `process` in parts; the parts of one
batch are published in one Kafka transaction together with the consumed offsets, so a batch's
outputs and its input positions become visible together or not at all (consumers of the outputs
read `read_committed`). While one transaction commits (network round trips), the next batch is
fetched and processed as it arrives, in parts of at least `part_min` records, so it is ready to
commit the moment the first one has; one transaction is in flight at a time, and at most
`batch_max` records go into one. A quiet input commits each record at once. `tick_s` makes
`process` run on an empty batch too, for time-driven work (closing report windows).

**Rests.** A part's step may leave its last piece to a future (`Step.rest`): the auction sends
its Redis reservations and returns, and the loop fetches and processes the next part while Redis
answers. The commit awaits the batch's rests, in part order, before its transaction begins (the
next batch is gathered meanwhile); their outputs follow their part's. A failed rest fails the
commit that awaits it, like a failed `process` (the batch gathered meanwhile is void too). A
rewind or a rebalance takes the lock, then waits for every rest still running, so a role's hooks
never run beside one.

**Offsets.** By default a part consumes every record handed to it. A role that holds records
back (attribution waiting for an impression) or resumes elsewhere (reporting, at the first record
of a window still open) returns the exact positions in `Step.offsets`, optionally with metadata.

**Generations.** Every rewind and every assignment bumps `generation` and seeks the consumer; a
batch gathered in an older generation is void (never committed), and records fetched after the
bump start the next batch. Records belong to the generation current when `getmany` returned them
(nothing awaits between the drain and the return).

**Failure policy** (one for every role):
- A failed `process` or a failed commit voids the batch in gathering too. The loop waits for the
  transaction in flight, then *rewinds*: reads the committed offsets, lets the role rebuild its
  state from them (`on_revoked` then `on_assigned`), and seeks every assigned partition there. So
  everything after the last commit is consumed again; roles make their side effects replay-safe
  (the auction's Redis reservation hands back its kept outcome; billing's charged clicks keep
  their first answer; feedback's counts carry their input positions).
- Retries back off (0.5 s doubling to 5 s). When failures have gone on for `GIVE_UP_S` without a
  single commit, the loop raises `LoopGaveUp`: the process exits non-zero and its supervisor
  restarts it with fresh clients (a broker restart of a few seconds is ridden through).
- A failed commit also replaces the producer (stopped, then a new one with the same
  transactional id, whose `init_transactions` aborts whatever the old one left open): a broker
  restart can leave aiokafka's producer in a fatal state (its sender task died) in which it can
  never begin a transaction again, and retrying with it only ran out GIVE_UP_S.
- A fenced producer (another process took over this transactional id) is final at once:
  `ProducerFenced` stops the loop; the process that fenced it carries on.
- Rebalance: `on_partitions_revoked` voids the batch in gathering and waits for the transaction
  in flight before the partitions go (so a new owner reads committed offsets that include it),
  then the role forgets those partitions' state. `on_partitions_assigned` rewinds the assigned
  partitions (the role restores their state from the committed offsets); when that fails (a
  broker is down), it is retried like a failed rewind, since nothing is processed until it
  succeeds. `getmany` is never
  called under the loop's lock: aiokafka's getmany waits for an assignment that waits for the
  rebalance listener.
- SIGTERM (the stop event): no more fetching; the batch in gathering is committed, the
  transaction in flight ends, then the role closes.

Everything `process` returns between two commits (outputs, offsets, `on_commit` callbacks) is
buffered here; a role's in-memory state is the only other thing a failure has to undo, and the
rewind's `on_revoked`/`on_assigned` is where it does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import ProducerFenced
from aiokafka.structs import OffsetAndMetadata
from redis.asyncio import Redis

from core.kafka import BatchSender, transactional_consumer, transactional_producer
from core.metrics import Metrics
from core.redis_client import redis_from_url
from core.settings import Settings
from schemas.codec import dlq_record, encode

log = logging.getLogger("vickrey.loop")

Output: TypeAlias = tuple[str, bytes | None, bytes | None]  # (physical topic, key, value)
KafkaRecord: TypeAlias = ConsumerRecord[bytes, bytes]
Batch: TypeAlias = dict[TopicPartition, list[KafkaRecord]]
# Where a partition resumes: the next offset, or (next offset, metadata committed with it).
Position: TypeAlias = int | tuple[int, str]
Committed: TypeAlias = dict[TopicPartition, OffsetAndMetadata | None]

GIVE_UP_S = 120.0
PRODUCER_STOP_S = 5.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0
# While a transaction commits, records are fetched this often (a getmany that returns at once
# when records are buffered).
TOP_UP_MS = 1


class LoopGaveUp(RuntimeError):
    """Batches kept failing for GIVE_UP_S: the process should exit and be restarted."""


@dataclass(slots=True)
class Step:
    """What `process` made of a part: records to publish, positions to commit (None: every record
    of the part is consumed), and what to do once they are committed."""

    outputs: list[Output] = field(default_factory=list)
    offsets: dict[TopicPartition, Position] | None = None
    on_commit: Callable[[], None] | None = None
    # The rest of this part's step, still being worked out (the auction waiting for Redis's
    # answer): the loop goes on to the next part meanwhile and awaits it before the commit; its
    # outputs follow this step's. A rest that fails voids the batch like a failed `process`. A
    # rest brings outputs and on_commit only (its part's offsets are this step's).
    rest: asyncio.Future[Step] | None = None

    async def whole(self) -> Step:
        """This step with its rest awaited and folded in: for a caller outside the loop."""
        if self.rest is None:
            return self
        rest = await _rest_of(self.rest)
        callbacks = [callback for callback in (self.on_commit, rest.on_commit) if callback is not None]

        def on_commit() -> None:
            for callback in callbacks:
                callback()

        return Step(self.outputs + rest.outputs, self.offsets, on_commit if callbacks else None)


async def _rest_of(future: asyncio.Future[Step]) -> Step:
    """A step's rest, awaited; it brings outputs and on_commit only."""
    rest = await future
    if rest.rest is not None or rest.offsets is not None:
        raise ValueError("a rest has outputs and on_commit only: no rest or offsets of its own")
    return rest


async def drain(futures: Iterable[Awaitable[Any]]) -> None:
    """Wait until every one has ended, whatever it ended with (their errors are retrieved)."""
    await asyncio.gather(*futures, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class LoopOptions:
    batch_max: int = 2000
    part_min: int = 16
    linger_ms: int = 0  # extra wait for a fuller batch when no commit is in flight
    tick_s: float | None = None  # `process` runs on an empty batch this often
    fetch_max_wait_ms: int = 100  # how long the broker may hold a fetch short of fetch_min_bytes
    # More than 1 byte: at moderate rates each fetch then brings many producers' sends, not one
    # (every fetch round and every small transaction costs the client and the broker CPU).
    fetch_min_bytes: int = 1
    session_timeout_ms: int = 10_000  # a SIGKILLed member's partitions come back after this long
    heartbeat_interval_ms: int = 3_000
    # "range" keeps partition N of every input on one member: co-partitioned joins rely on it.
    assignor: Literal["range", "default"] = "default"
    start_at: Literal["earliest", "latest"] = "earliest"  # a partition the group never committed


class Role(Protocol):
    """What a role gives the loop. Hooks run under the loop's lock, never during `process` or
    beside a step's rest."""

    @property
    def name(self) -> str:
        """The consumer group, transactional id and metric label (prefixed like the topics)."""
        ...

    @property
    def inputs(self) -> tuple[str, ...]:
        """Logical topics consumed."""
        ...

    @property
    def options(self) -> LoopOptions: ...

    async def start(self, loop: Loop) -> None:
        """Open clients and stores before consuming (`loop.consumer` is not started yet)."""

    async def close(self) -> None:
        """Close what `start` opened."""

    async def process(self, batch: Batch, now_ms: int) -> Step:
        """Records of assigned partitions (maybe none, on a tick) → what to publish and commit."""
        ...

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        """Partitions (re)assigned, with their committed offsets and metadata: restore their
        state; return positions to resume from where they differ from the committed ones."""
        ...

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Partitions taken away (or about to be rewound): forget their in-memory state."""


class RoleBase:
    """Defaults for the hooks of a role without per-partition state, and a Redis client for the
    roles that need one (a plain class, so roles compiled with mypyc write the hooks out)."""

    _loop: Loop | None = None
    _redis: Redis | None = None

    @property
    def loop(self) -> Loop:
        assert self._loop is not None, "the loop calls start() first"
        return self._loop

    @property
    def redis(self) -> Redis:
        """This role's Redis client, opened on first use after `start`, closed by `close`."""
        if self._redis is None:
            self._redis = redis_from_url(self.loop.settings.redis)
        return self._redis

    async def start(self, loop: Loop) -> None:
        self._loop = loop

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        return {}

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        return None


_LOOPS_MADE = itertools.count(1)


def instance_id() -> str:
    """Unique per loop: a transactional id nobody else uses (two loops of one role in one
    process must not fence each other)."""
    return f"{socket.gethostname()}-{os.getpid()}-{next(_LOOPS_MADE)}"


@dataclass(slots=True)
class _Gathering:
    generation: int
    started: float
    count: int = 0
    outputs: list[Output] = field(default_factory=list)
    offsets: dict[TopicPartition, Position] = field(default_factory=dict)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    rests: list[tuple[int, asyncio.Future[Step]]] = field(default_factory=list)  # (where its outputs go, rest)

    def add(self, part: Batch, step: Step) -> None:
        for tp, records in part.items():
            self.count += len(records)
            if step.offsets is None:
                self.offsets[tp] = records[-1].offset + 1
        self._take(step)
        if step.rest is not None:
            self.rests.append((len(self.outputs), step.rest))

    def _take(self, step: Step) -> None:
        if step.offsets is not None:
            self.offsets.update(step.offsets)
        self.outputs += step.outputs
        if step.on_commit is not None:
            self.callbacks.append(step.on_commit)

    async def settle(self) -> None:
        """Await the parts' rests, in part order; each one's outputs go where its part's ended, so
        the batch's outputs are in the order a loop without rests would have them. Raises the
        first failure, once every rest has ended."""
        rests, self.rests = self.rests, []
        if not rests:
            return
        outputs, self.outputs = self.outputs, []
        taken = 0
        try:
            for position, future in rests:
                rest = await _rest_of(future)
                self.outputs += outputs[taken:position]
                taken = position
                self._take(rest)
        except BaseException:
            await drain(future for _, future in rests)
            raise
        self.outputs += outputs[taken:]

    @property
    def empty(self) -> bool:
        return not self.outputs and not self.offsets and not self.rests


class Loop:
    def __init__(self, settings: Settings, role: Role, metrics: Metrics, stop: asyncio.Event,
                 instance: str | None = None) -> None:
        """`instance`: a stable name makes the transactional id and the group member id stable,
        so a restarted process fences (and aborts) what its killed predecessor left open at once
        and gets its partitions back without waiting for the session timeout."""
        self.settings = settings
        self.role = role
        self.name = role.name
        self.options = options = role.options
        self.stop = stop
        self.metrics = metrics
        self.group_id = settings.group(role.name)
        self.transactional_id = f"{self.group_id}-{instance or instance_id()}"
        self.topics = [settings.topic(name) for name in role.inputs]
        self.consumer = transactional_consumer(
            settings, self.group_id, options.batch_max,
            fetch_max_wait_ms=options.fetch_max_wait_ms,
            fetch_min_bytes=options.fetch_min_bytes,
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
            auto_offset_reset=options.start_at,
            group_instance_id=f"{self.group_id}-{instance}" if instance else None,
            **({"partition_assignment_strategy": (RangePartitionAssignor,)} if options.assignor == "range" else {}),
        )
        self.producer: AIOKafkaProducer = transactional_producer(settings, self.transactional_id, options.linger_ms)
        self.sender = BatchSender(self.producer)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka, request_timeout_ms=15_000)
        self.generation = 0
        self.ready = False
        self._lock = asyncio.Lock()  # role state: `process` on one side, rebalance and rewind hooks on the other
        self._committing: asyncio.Task[bool] | None = None
        self._rests: set[asyncio.Future[Step]] = set()  # the steps' rests still running
        # Records fetched after a generation change, with that generation: the next batch's start.
        self._carry: tuple[Batch, int] | None = None
        self._rebalancing = True  # until the first assignment is restored: nothing is processed
        self._failing_since: float | None = None
        self._producer_suspect = False  # a commit failed: renew the producer before the next batch
        self._backoff_s = BACKOFF_FIRST_S
        self._fatal: BaseException | None = None
        self._next_tick = 0.0
        self._families = metrics.loop

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.role.start(self)
        await self.admin.start()
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=_Rebalance(self))
        self.ready = True
        log.info("role started", extra={"role": self.name, "group": self.group_id, "transactional_id": self.transactional_id})

    async def run(self) -> None:
        """Until the stop event (the batch in gathering is committed first) or a final failure."""
        try:
            while not self.stop.is_set():
                await self._gather()
                if self._fatal is not None:
                    raise self._fatal
        finally:
            await self._wait_for_commit()
            await self._quiesce()

    async def close(self) -> None:
        self.ready = False
        for stop in (self.consumer.stop, self.producer.stop, self.admin.close, self.role.close):
            try:
                await stop()
            except Exception:
                log.exception("closing failed", extra={"role": self.name, "step": getattr(stop, "__qualname__", "")})
        log.info("role stopped", extra={"role": self.name})

    # -- what roles use ----------------------------------------------------------------------------

    def dlq(self, record: KafkaRecord, error: str | BaseException, now_ms: int) -> Output:
        """The DLQ record for an input that cannot be read: to `<its logical topic>.dlq`."""
        self._families.dlq.labels(self.name, record.topic).inc()
        dead = dlq_record(record.topic, record.partition, record.offset, record.key, record.value, error, now_ms)
        return (self.settings.topic(f"{self.settings.logical(record.topic)}.dlq"), record.key, encode(dead))

    async def caught_up(self, tp: TopicPartition) -> bool:
        """Everything committed on `tp` has been handed to `process`. Compared by the consumer's
        position, which moves past transaction markers: the last record's offset + 1 never
        reaches the last stable offset when a commit marker follows it."""
        end = self.consumer.last_stable_offset(tp)
        return end is not None and await self.consumer.position(tp) >= end

    async def committed(self, partitions: Sequence[TopicPartition]) -> Committed:
        """The group's committed offsets with their metadata (None: never committed)."""
        if not partitions:
            return {}
        found = await self.admin.list_consumer_group_offsets(self.group_id, partitions=list(partitions))
        return {tp: (found[tp] if tp in found and found[tp].offset >= 0 else None) for tp in partitions}

    # -- one batch ---------------------------------------------------------------------------------

    async def _fetch(self, timeout_ms: int, max_records: int) -> tuple[Batch, int]:
        if self._carry is not None:
            carried, self._carry = self._carry, None
            return carried  # void if yet another rewind came since: the gathering loop checks
        fetched: Batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return fetched, self.generation  # no await between the drain and this read

    async def _gather(self) -> None:
        options = self.options
        idle_ms = 100 if options.tick_s is None else max(1, int(options.tick_s * 1000))
        fresh, generation = await self._fetch(idle_ms, options.batch_max)
        now = time.monotonic()
        tick = options.tick_s is not None and now >= self._next_tick
        if not fresh and not tick:
            await self._wait_for_commit()
            return
        if tick:
            self._next_tick = now + (options.tick_s or 0.0)
        batch = _Gathering(generation, time.perf_counter())
        deadline = now + options.linger_ms / 1000
        fresh_count = _count(fresh)
        processed = False
        while generation == self.generation:
            committing = self._committing is not None and not self._committing.done()
            stopping = self.stop.is_set()
            if (fresh or (tick and not processed)) and (
                not committing or fresh_count >= options.part_min
                or batch.count + fresh_count >= options.batch_max or stopping
            ):
                part, fresh, fresh_count = fresh, {}, 0
                processed = True
                if not await self._process(batch, part):
                    return
                continue  # the commit may have ended meanwhile
            if batch.count >= options.batch_max or stopping:
                break
            if not committing and (deadline - time.monotonic()) <= 0:
                break
            wait_ms = TOP_UP_MS if committing else max(1, int((deadline - time.monotonic()) * 1000))
            more, more_generation = await self._fetch(wait_ms, options.batch_max - batch.count - fresh_count)
            if more_generation != generation:
                self._carry = (more, more_generation)  # fetched after a rewind: they start the next batch
                break
            for tp, records in more.items():
                fresh.setdefault(tp, []).extend(records)
                fresh_count += len(records)
        # Waited for even when nothing was gathered: a failure left for the next batch would void it.
        committed = await self._wait_for_commit()
        if not committed or generation != self.generation or batch.empty:
            return  # void: the consumer was sent back before this batch, which comes again
        self._committing = asyncio.create_task(self._commit(batch))

    async def _process(self, batch: _Gathering, part: Batch) -> bool:
        """One part through the role, under the lock; False when the batch became void."""
        async with self._lock:
            if batch.generation != self.generation or self._rebalancing:
                return False  # void; a rebalance's rewind sends the consumer back to these records
            assigned = self.consumer.assignment()  # a rebalance may have taken partitions since
            part = {tp: records for tp, records in part.items() if tp in assigned and records}
            for tp, records in part.items():
                self._families.records_in.labels(self.name, tp.topic).inc(len(records))
            try:
                step = await self.role.process(part, int(time.time() * 1000))
            except Exception as exc:
                failed: Exception | None = exc
            else:
                failed = None
                if step.rest is not None:
                    self._rests.add(step.rest)
                    step.rest.add_done_callback(self._rest_done)
                if batch.generation == self.generation:
                    batch.add(part, step)
        if failed is not None:
            await self._wait_for_commit()
            await self._failed("process", failed, batch.count)
            return False
        return batch.generation == self.generation

    async def _commit(self, batch: _Gathering) -> bool:
        """One transaction: the batch's outputs and its offsets. False when it failed (and the
        consumer was sent back to the committed offsets). The parts' rests are awaited first,
        here, so the next batch is gathered and processed while they end."""
        try:
            await batch.settle()
        except Exception as exc:
            await self._failed("process", exc, batch.count)
            return False
        try:
            async with self.producer.transaction():
                await self.sender.send(batch.outputs)
                offsets = {tp: _offset_and_metadata(position) for tp, position in batch.offsets.items()}
                if offsets:
                    await self.producer.send_offsets_to_transaction(offsets, self.group_id)
        except Exception as exc:
            self._producer_suspect = True
            await self._failed("commit", exc, batch.count)
            return False
        self._failing_since, self._backoff_s = None, BACKOFF_FIRST_S
        for callback in batch.callbacks:
            callback()
        self._record(batch)
        return True

    def _rest_done(self, rest: asyncio.Future[Step]) -> None:
        self._rests.discard(rest)
        if not rest.cancelled():
            rest.exception()  # a void batch's failed rest is not awaited: not "never retrieved"

    async def _quiesce(self) -> None:
        """Wait for the rests still running (a void batch's, or one whose batch failed): the
        role's hooks never run beside them."""
        while rests := [rest for rest in self._rests if not rest.done()]:
            await drain(rests)

    async def _wait_for_commit(self) -> bool:
        """Wait for the transaction in flight; False when it failed. Every caller waits for the
        same task (the batch loop and a rebalance may both be waiting for it)."""
        task = self._committing
        if task is None:
            return True
        ok = await task
        if self._committing is task:
            self._committing = None
        return ok

    # -- failures, rewinds, rebalances -------------------------------------------------------------

    async def _failed(self, stage: str, exc: BaseException, records: int, *, assignment: bool = False) -> None:
        """Count and log a failure, back off, and rewind; a rewind that fails (the broker is away)
        is itself a failure, retried the same way until GIVE_UP_S. `assignment`: the failure was
        restoring a new assignment, which the rewind completes (ending the rebalance)."""
        while True:
            self._families.failures.labels(self.name, stage).inc()
            if isinstance(exc, ProducerFenced):
                log.error("producer fenced: another process took over this transactional id; stopping",
                          extra={"role": self.name, "transactional_id": self.transactional_id})
                self._fatal = exc
                self.stop.set()
                return
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            log.error("batch failed; consuming again from the committed offsets", exc_info=exc,
                      extra={"role": self.name, "stage": stage, "records": records})
            if now - self._failing_since >= GIVE_UP_S:
                self._fatal = LoopGaveUp(f"{self.name}: batches kept failing for {GIVE_UP_S:.0f} s (last: {exc!r})")
                self.stop.set()
                return
            if self.stop.is_set():
                return  # stopping: nothing more is committed, and the next start reads the committed offsets
            await asyncio.sleep(self._backoff_s)
            self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)
            try:
                if self._producer_suspect:
                    stage = "producer"
                    await self._renew_producer()
                stage = "rewind"
                await self._rewind(list(self.consumer.assignment()), assignment=assignment)
                return
            except Exception as retry_failed:
                exc = retry_failed

    async def _renew_producer(self) -> None:
        """Stop the producer and start a new one with the same transactional id. Called between
        batches only (the failed transaction has ended), so nothing else is using it."""
        old = self.producer
        try:
            await asyncio.wait_for(old.stop(), PRODUCER_STOP_S)
        except Exception as exc:  # a producer the broker dropped may not stop cleanly: it is discarded anyway
            log.warning("old producer did not stop cleanly", exc_info=exc, extra={"role": self.name})
        self.producer = transactional_producer(self.settings, self.transactional_id, self.options.linger_ms)
        self.sender = BatchSender(self.producer)
        await self.producer.start()  # init_transactions: aborts what the old producer left open
        self._producer_suspect = False
        log.info("producer renewed", extra={"role": self.name, "transactional_id": self.transactional_id})

    async def _rewind(self, partitions: list[TopicPartition], *, assignment: bool = False) -> None:
        """Back to the committed offsets: the role rebuilds its state from them (after forgetting
        it, unless the partitions are newly assigned), then, with no await in between, the
        generation moves on and every partition is sought. Everything fetched before is void."""
        async with self._lock:
            await self._quiesce()  # under the lock: no part can start a new rest meanwhile
            if self._rebalancing and not assignment:
                self.generation += 1  # the assignment that ends the rebalance rewinds
                return
            committed = await self.committed(partitions)
            if not assignment:
                await self.role.on_revoked(partitions)
            targets = {tp: found.offset for tp, found in committed.items() if found is not None}
            targets.update(await self.role.on_assigned(committed))
            missing = [tp for tp in partitions if tp not in targets]
            if missing:
                edges = await (self.consumer.end_offsets(missing) if self.options.start_at == "latest"
                               else self.consumer.beginning_offsets(missing))
                targets.update(edges)
            self.generation += 1
            self._rebalancing = False
            assigned = self.consumer.assignment()
            self.consumer.resume(*[tp for tp in self.consumer.paused() if tp in assigned])
            for tp, offset in targets.items():
                if tp in assigned:
                    self.consumer.seek(tp, offset)

    async def revoked(self, partitions: list[TopicPartition]) -> None:
        began = time.monotonic()
        self._rebalancing = True
        self.generation += 1  # the batch in gathering is void
        committed = await self._wait_for_commit()  # the transaction in flight lands before the partitions go
        async with self._lock:
            await self._quiesce()  # under the lock: no part can start a new rest meanwhile
            await self.role.on_revoked(partitions)
        log.info("partitions revoked", extra={
            "role": self.name, "partitions": len(partitions), "commit_in_flight_ok": committed,
            "seconds": round(time.monotonic() - began, 3),
        })
        for tp in partitions:
            self._families.lag.remove(self.name, tp.topic, str(tp.partition)) if self._has_lag(tp) else None

    async def assigned(self, partitions: list[TopicPartition]) -> None:
        self._families.rebalances.labels(self.name).inc()
        log.info("partitions assigned",
                 extra={"role": self.name, "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)})
        try:
            await self._rewind(partitions, assignment=True)
        except Exception as exc:
            # Restoring the assignment failed (the admin asked a broker that is down for the
            # committed offsets): retried like any rewind. Left alone, nothing would be processed
            # until the next rebalance, which a steady group never has.
            await self._failed("assignment", exc, 0, assignment=True)

    # -- metrics -----------------------------------------------------------------------------------

    def _record(self, batch: _Gathering) -> None:
        families, name = self._families, self.name
        out: dict[str, int] = {}
        for topic, _key, _value in batch.outputs:
            out[topic] = out.get(topic, 0) + 1
        for topic, count in out.items():
            families.records_out.labels(name, topic).inc(count)
        if batch.count:
            families.records_committed.labels(name).inc(batch.count)
            families.batch_records.labels(name).observe(batch.count)
            families.batch_seconds.labels(name).observe(time.perf_counter() - batch.started)
        for tp, position in batch.offsets.items():
            end = self.consumer.last_stable_offset(tp)
            if end is not None:
                offset = position if isinstance(position, int) else position[0]
                families.lag.labels(name, tp.topic, str(tp.partition)).set(max(0, end - offset))

    def _has_lag(self, tp: TopicPartition) -> bool:
        return self.metrics.registry.get_sample_value(
            "vickrey_consumer_lag", {"role": self.name, "topic": tp.topic, "partition": str(tp.partition)}
        ) is not None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions change hands only between transactions (see the module docstring)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.loop.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.loop.assigned(list(assigned))


def _count(batch: Batch) -> int:
    return sum(len(records) for records in batch.values())


def _offset_and_metadata(position: Position) -> OffsetAndMetadata:
    if isinstance(position, int):
        return OffsetAndMetadata(position, "")
    return OffsetAndMetadata(position[0], position[1])


@asynccontextmanager
async def running(loops: Sequence[Loop], stop: asyncio.Event) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Start the loops and run each as a task; on exit stop them (each commits the batch it has)
    and close them. A loop that failed is logged here; its task holds the exception."""
    started: list[Loop] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for loop in loops:
            await loop.start()
            started.append(loop)
        tasks = [asyncio.create_task(loop.run(), name=loop.name) for loop in loops]
        yield tasks
    finally:
        stop.set()
        for task, result in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
            if isinstance(result, BaseException):
                log.error("role failed", extra={"role": task.get_name()}, exc_info=result)
        for loop in started:
            await loop.close()


async def run_loops(loops: Sequence[Loop], stop: asyncio.Event) -> bool:
    """Run the loops until `stop` or until one ends by itself (a final failure), which stops the
    others. True when every loop ended cleanly."""
    async with running(loops, stop) as tasks:
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    return all(not task.cancelled() and task.exception() is None for task in tasks)
