"""The loop every stream role runs: getmany() → process → one Kafka transaction with the outputs and
the consumed offsets (the auction worker's pattern, DESIGN §1).

A role implements `process(batch, now_ms) -> Step`; an empty batch still reaches it every
`tick_s` so that time-driven work (held clicks, closing report windows) happens on idle topics.
A failed step aborts its transaction and the role is rewound to its committed offsets, dropping
whatever in-memory state the step touched (`on_reset`), so nothing is emitted twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.structs import OffsetAndMetadata

from vickrey.kafka import BatchSender, transactional_consumer, transactional_producer
from vickrey.metrics import Histogram, Metrics
from vickrey.settings import Settings

Output: TypeAlias = tuple[str, bytes | None, bytes | None]
Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batch: TypeAlias = dict[TopicPartition, list[Record]]
# What to commit per partition: the next offset, or (next offset, metadata string).
Offsets: TypeAlias = dict[TopicPartition, int | tuple[int, str]]
MAX_CONSECUTIVE_FAILURES = 5

log = logging.getLogger("vickrey.streams")


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class Step:
    """The result of processing one batch: records to publish and offsets to commit with them."""

    outputs: list[Output] = field(default_factory=list)
    offsets: Offsets = field(default_factory=dict)


class RoleMetrics:
    """Counters every role has, named `vickrey_streams_<role>_*`."""

    def __init__(self, registry: Metrics, role: str) -> None:
        p = f"vickrey_streams_{role}"
        self.records_in = registry.counter(f"{p}_records_in_total", "Records consumed, by topic")
        self.records_done = registry.counter(f"{p}_records_done_total", "Input records whose batch committed")
        self.records_out = registry.counter(f"{p}_records_out_total", "Records published, by topic")
        self.unreadable = registry.counter(f"{p}_unreadable_total", "Input records that could not be read, by topic")
        self.failures = registry.counter(f"{p}_batch_failures_total", "Batches aborted and consumed again")
        self.lag = registry.gauge(f"{p}_consumer_lag", "Records behind the partition end, by topic and partition")
        self.batch_seconds: Histogram = registry.histogram(
            f"{p}_batch_seconds", "Time to process and commit one batch", (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
        )

    def count_out(self, outputs: Sequence[Output]) -> None:
        counts: dict[str, int] = {}
        for topic, _key, _value in outputs:
            counts[topic] = counts.get(topic, 0) + 1
        for topic, n in counts.items():
            self.records_out.inc(n, topic=topic)


def make_consumer(settings: Settings, group: str, batch_max: int) -> AIOKafkaConsumer:
    return transactional_consumer(
        settings,
        group,
        batch_max,
        fetch_max_wait_ms=20,
        # A SIGKILLed member's partitions come back after this long.
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        # Range keeps partition N of every input topic on the same member: the co-partitioned
        # joins (impressions with clicks) rely on it.
        partition_assignment_strategy=(RangePartitionAssignor,),
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions change hands only between batches: the batch in flight commits first."""

    def __init__(self, role: StreamRole) -> None:
        self.role = role

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.role.batch_lock:
            if revoked:
                await self.role.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.role.batch_lock:
            log.info(
                "partitions assigned",
                extra={"role": self.role.name, "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)},
            )
            if assigned:
                await self.role.on_assigned(list(assigned))


class StreamRole:
    """Base of the transactional roles. Subclasses set `name` and `inputs` and implement `process`."""

    name = "role"
    inputs: tuple[str, ...] = ()
    tick_s = 0.2  # how often `process` runs on an empty batch
    transactional = True  # False: the role commits its own way (override `commit`)

    def __init__(self, settings: Settings, registry: Metrics, stop: asyncio.Event, batch_max: int = 1000) -> None:
        self.settings = settings
        self.registry = registry
        self.stop = stop
        self.batch_max = batch_max
        self.metrics = RoleMetrics(registry, self.name)
        self.group_id = settings.group(self.name)
        self.instance = instance_id()
        self.batch_lock = asyncio.Lock()
        self.consumer = make_consumer(settings, self.group_id, batch_max)
        self.producer = transactional_producer(settings, f"{self.group_id}-{self.instance}") if self.transactional else None
        self.sender = BatchSender(self.producer) if self.producer is not None else None
        self.ready = False

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    # -- hooks -----------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Open stores and clients before consuming."""

    async def teardown(self) -> None:
        """Close what `setup` opened."""

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Partitions just assigned (restore their state here)."""

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Partitions taken away: forget their in-memory state."""

    async def on_reset(self) -> None:
        """A step failed: in-memory state of every partition must be rebuilt from the commit."""
        await self.on_revoked(list(self.consumer.assignment()))
        await self.on_assigned(list(self.consumer.assignment()))

    async def process(self, batch: Batch, now_ms: int) -> Step:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.setup()
        if self.producer is not None:
            await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.topic(name) for name in self.inputs], listener=_Listener(self))
        self.ready = True
        log.info("role started", extra={"role": self.name, "group": self.group_id, "instance": self.instance})

    async def close(self) -> None:
        self.ready = False
        await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.teardown()
        log.info("role stopped", extra={"role": self.name})

    async def run(self) -> None:
        failures = 0
        next_tick = 0.0
        while not self.stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=int(self.tick_s * 1000), max_records=self.batch_max)
            if not batch and time.monotonic() < next_tick:
                continue
            next_tick = time.monotonic() + self.tick_s
            async with self.batch_lock:
                # A rebalance may have taken partitions between getmany() and the lock.
                assigned = self.consumer.assignment()
                batch = {tp: records for tp, records in batch.items() if tp in assigned and records}
                try:
                    await self._step(batch)
                    failures = 0
                except Exception:
                    failures += 1
                    self.metrics.failures.inc()
                    log.exception("batch failed; rewinding to the committed offsets", extra={"role": self.name})
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        raise
                    await asyncio.sleep(0.5 * failures)
                    await self._rewind()

    async def _step(self, batch: Batch) -> None:
        started = time.perf_counter()
        for tp, records in batch.items():
            self.metrics.records_in.inc(len(records), topic=tp.topic)
        step = await self.process(batch, int(time.time() * 1000))
        if step.outputs or step.offsets:
            await self.commit(step)
        self.metrics.count_out(step.outputs)
        if batch:
            self.metrics.records_done.inc(sum(len(records) for records in batch.values()))
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self._record_lag(batch)

    async def commit(self, step: Step) -> None:
        """Outputs and offsets in one transaction: either both are visible or neither."""
        assert self.producer is not None and self.sender is not None
        async with self.producer.transaction():
            await self.sender.send(step.outputs)
            if step.offsets:
                await self.producer.send_offsets_to_transaction(dict(step.offsets), self.group_id)

    async def _rewind(self) -> None:
        assignment = list(self.consumer.assignment())
        committed = await committed_offsets(self.consumer, assignment)
        for tp in assignment:
            found = committed.get(tp)
            if found is not None and found.offset >= 0:
                self.consumer.seek(tp, found.offset)
            else:
                await self.consumer.seek_to_beginning(tp)
        await self.on_reset()

    def _record_lag(self, batch: Mapping[TopicPartition, list[Record]]) -> None:
        for tp, records in batch.items():
            end = self.consumer.last_stable_offset(tp) or self.consumer.highwater(tp)
            if end is not None:
                self.metrics.lag.set(max(0, end - records[-1].offset - 1), topic=tp.topic, partition=str(tp.partition))


async def committed_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Committed offsets WITH their metadata (`consumer.committed()` drops the metadata; the group
    coordinator has it)."""
    if not partitions:
        return {}
    found: dict[TopicPartition, OffsetAndMetadata] = await consumer._coordinator.fetch_committed_offsets(partitions)
    return found


def next_offsets(batch: Batch) -> Offsets:
    return {tp: records[-1].offset + 1 for tp, records in batch.items()}
