"""Read a topic whole, from its beginning to where it ended when the read began.

What `vickrey reconcile` rebuilds Redis from (docs/contract.md §9): the latest value of every key
of a compacted topic (`read_latest`), and every record of a log such as `billing.ledger`
(`read_to_end`). Only committed records are read (read_committed), and the read goes on until
the end offsets taken at its start, those of open transactions included: a transaction still
open then (a batch a worker is publishing) is waited for, so what it commits is read, and what
it aborts is skipped. No consumer group, nothing committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from core.settings import Settings
from core.topics import describe_topics

READ_TIMEOUT_S = 120.0
POLL_MS = 500


class ReadTimeout(TimeoutError):
    """The topic did not reach the end offsets taken at the start within the time allowed."""


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """partition → the offset after its last record (the high watermark, open transactions
    included) of the physical `topic`; {} when the topic does not exist."""
    infos = await describe_topics(settings, [settings.logical(topic)])
    if not infos or not infos[0].exists:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(infos[0].partitions)]
        consumer.assign(partitions)  # so that the consumer tracks the topic's metadata
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_to_end(
    settings: Settings, logical_topic: str, *, start: Mapping[int, int] | None = None,
    timeout_s: float = READ_TIMEOUT_S,
) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Committed records of `logical_topic` in batches, from `start` (partition → offset; the
    beginning for partitions it does not name) to the end offsets of the moment the read began.
    Raises ReadTimeout when that end is not reached within `timeout_s`."""
    topic = settings.topic(logical_topic)
    ends = await end_offsets(settings, topic)
    first = dict(start or {})
    todo = {p: end for p, end in ends.items() if end > first.get(p, 0)}
    if not todo:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in sorted(todo)]
        consumer.assign(assigned)
        for tp in assigned:
            if tp.partition in first:
                consumer.seek(tp, first[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise ReadTimeout(f"{topic}: partitions {sorted(todo)} did not reach their end offsets "
                                  f"{todo} within {timeout_s:.0f} s (a transaction left open?)")
            batch = await consumer.getmany(*[TopicPartition(topic, p) for p in todo], timeout_ms=POLL_MS)
            for tp, records in batch.items():
                end = todo.get(tp.partition)
                if end is None:
                    continue
                wanted = [record for record in records if record.offset < end]
                if wanted:
                    yield wanted
            for partition in list(todo):
                # The position moves past transaction markers, which no record stands for.
                if await consumer.position(TopicPartition(topic, partition)) >= todo[partition]:
                    del todo[partition]
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


async def read_latest(
    settings: Settings, logical_topic: str, *, timeout_s: float = READ_TIMEOUT_S
) -> dict[bytes, bytes | None]:
    """key → latest value (None: a tombstone) of every keyed record of `logical_topic`."""
    latest: dict[bytes, bytes | None] = {}
    async for records in read_to_end(settings, logical_topic, timeout_s=timeout_s):
        for record in records:
            if record.key is not None:
                latest[record.key] = record.value
    return latest
