"""Kafka plumbing: client factories, whole-batch sends, topic metadata, and the one place where
Vickrey reaches into aiokafka beyond its documented API.

`producer.send()` costs tens of microseconds of Python per record; appending to one
BatchBuilder per partition and handing each over with `send_batch` costs a fraction of that,
and works inside transactions the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.producer import sender as aiokafka_sender

from core.partition import partition_for
from core.settings import Settings

MAX_BATCH_BYTES = 512 * 1024
# A worker that dies mid-transaction blocks read_committed readers until the broker aborts its
# transaction: keep that window short. A restarted worker with the same id aborts it at once.
TRANSACTION_TIMEOUT_MS = 10_000
RETRY_BACKOFF_MS = 5
# A transaction begun right after the previous commit meets CONCURRENT_TRANSACTIONS on its first
# AddPartitionsToTxn while the broker still writes the commit markers (about a millisecond).
# aiokafka then waits a hard-coded 20 ms (`sender.BACKOFF_OVERRIDE`), not retry_backoff_ms: that
# was 20-25 ms on nearly every transaction of a busy worker, so on the path of every decision.
CONCURRENT_TRANSACTIONS_BACKOFF_S = 0.0005


def tune_aiokafka() -> None:
    """The one change Vickrey makes to aiokafka beyond its API: ask again after 0.5 ms, not 20,
    when a new transaction meets the previous one's markers still being written. aiokafka reads
    the module constant at every such retry; tests/core/test_kafka.py fails if an upgrade drops
    or renames it. Called when a transactional producer is made, never at import."""
    if not hasattr(aiokafka_sender, "BACKOFF_OVERRIDE"):
        raise RuntimeError("aiokafka.producer.sender.BACKOFF_OVERRIDE is gone: see core/kafka.py tune_aiokafka")
    aiokafka_sender.BACKOFF_OVERRIDE = CONCURRENT_TRANSACTIONS_BACKOFF_S


def transactional_producer(settings: Settings, transactional_id: str, linger_ms: int = 2) -> AIOKafkaProducer:
    tune_aiokafka()
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka,
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=4 * 1024 * 1024,
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        # A new transaction right after a commit often meets CONCURRENT_TRANSACTIONS while the
        # broker writes the previous markers; aiokafka then waits retry_backoff (100 ms by
        # default) before asking again: the p99 of every decision. Ask again sooner.
        retry_backoff_ms=RETRY_BACKOFF_MS,
    )
def transactional_consumer(settings: Settings, group: str, batch_max: int, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer for consume → produce in transactions: offsets are committed only inside the
    producer's transaction, and only committed input is read."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": batch_max,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


class BatchSender:
    """Collects (topic, key, value) records and sends one batch per topic-partition, keyed the
    same way `producer.send` would partition them (murmur2, Java-compatible)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.partitions: dict[str, list[int]] = {}

    async def _partitions_of(self, topic: str) -> list[int]:
        partitions = self.partitions.get(topic)
        if partitions is None:
            partitions = sorted(await self.producer.partitions_for(topic))
            self.partitions[topic] = partitions
        return partitions

    async def send(self, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> int:
        """Queue every record; returns how many. Delivery completes with the transaction commit
        (or an explicit flush)."""
        grouped: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        count = 0
        known = self.partitions
        for topic, key, value in records:
            partitions = known.get(topic)
            if partitions is None:
                partitions = await self._partitions_of(topic)
            if key is None:
                partition = partitions[count % len(partitions)]
            else:
                partition = partitions[partition_for(key, len(partitions))]
            group = grouped.get((topic, partition))
            if group is None:
                group = grouped[(topic, partition)] = []
            group.append((key, value))
            count += 1
        for (topic, partition), items in grouped.items():
            batch = self.producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    await self._hand_over(batch, topic, partition)
                    batch = self.producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record for {topic} is larger than {MAX_BATCH_BYTES} bytes")
            await self._hand_over(batch, topic, partition)
        return count

    async def _hand_over(self, batch: Any, topic: str, partition: int) -> None:
        # Closed, the batch is ready to send at once: an open one waits out the producer's
        # linger_ms in aiokafka's accumulator first (measured: +5 ms on every transaction).
        batch.close()
        await self.producer.send_batch(batch, topic, partition=partition)
