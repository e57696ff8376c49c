"""The benchmark's reference: a plain aiokafka consume -> decode -> produce loop.

`python -m loadtests.baseline --group G --expect N` consumes the stack's `chat.intents` from the
beginning in its own consumer group, decodes every record with `schemas.codec.decode` (the same
validation the worker does), re-encodes it and produces it to `baseline.out` (key user_id),
until N records went through; then flushes, prints the count and its CPU seconds at the start and
end of consuming, and exits. No transactions, no auctions, no Redis:
what one process moves when it only does the Kafka and codec work.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from core.settings import Settings
from schemas.codec import RecordError, decode, encode

OUTPUT = "baseline.out"


def readable_intents(batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                     ) -> Iterator[tuple[ConsumerRecord[bytes, bytes], dict[str, Any]]]:
    """Every record of a fetched batch that decodes as a chat intent; the others are skipped."""
    for records in batch.values():
        for record in records:
            try:
                yield record, decode("chat.intents", record.value)
            except RecordError:
                continue


async def run(settings: Settings, group: str, expect: int, batch_max: int = 500) -> tuple[int, float, float]:
    """Records moved, and this process's CPU seconds when consuming began and when it ended."""
    consumer = AIOKafkaConsumer(
        settings.topic("chat.intents"),
        bootstrap_servers=settings.kafka,
        group_id=group,
        auto_offset_reset="earliest",
        max_poll_records=batch_max,
        fetch_max_wait_ms=5,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    await consumer.start()
    out = settings.topic(OUTPUT)
    done = 0
    cpu_start = time.process_time()
    try:
        while done < expect:
            batch = await consumer.getmany(timeout_ms=1000, max_records=batch_max)
            for record, intent in readable_intents(batch):
                await producer.send(out, encode(intent), key=record.key)
                done += 1
        await producer.flush()
        cpu_end = time.process_time()
    finally:
        await consumer.stop()
        await producer.stop()
    return done, cpu_start, cpu_end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.baseline", description=__doc__)
    parser.add_argument("--group", required=True, help="consumer group (use a new one per run)")
    parser.add_argument("--expect", type=int, required=True, help="stop after this many records")
    args = parser.parse_args(argv)
    done, cpu_start, cpu_end = asyncio.run(run(Settings.from_env(), args.group, args.expect))
    print(done, f"{cpu_start:.3f}", f"{cpu_end:.3f}")  # read by loadtests.bench_kafka
    return 0


if __name__ == "__main__":
    sys.exit(main())
