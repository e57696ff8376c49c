"""The benchmark's second reference: the least an exactly-once worker on aiokafka does.

`python -m loadtests.txn_loop --group G` consumes the stack's `chat.intents` (read_committed),
decodes every record with `schemas.codec.decode`, and for each one produces one record to
`ad.decisions` (the intent's own bytes, so the latency reader finds its event_id) and
`--impressions` records per event on average to `ad.impressions`, in one Kafka transaction per
batch together with the consumed offsets, with the worker's own producer, consumer and batching
(a batch fills while the previous one commits). No auctions, no Redis, no metrics.

What it measures: the cost of exactly-once on aiokafka on this machine (transactions, their
round trips and commit markers, the broker's work for them), apart from the auction. The worker
cannot be faster or quicker than this loop; `make bench` runs it beside the plain loop and the
worker, on the same topics and offered loads. It runs until SIGTERM (or `--expect` records).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from aiokafka import ConsumerRecord, TopicPartition

from schemas.codec import RecordError, decode
from vickrey.kafka import BatchSender, transactional_consumer, transactional_producer
from vickrey.settings import Settings

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
BATCH_MAX = 2000  # the worker's


async def run(settings: Settings, group: str, impressions: float, expect: int | None,
              from_end: bool) -> tuple[int, float, float]:
    """Records consumed (and committed) until stopped or `expect` were, and this process's CPU
    seconds when the first batch came and when the last one was committed."""
    consumer = transactional_consumer(settings, group, BATCH_MAX, fetch_max_wait_ms=100,
                                      auto_offset_reset="latest" if from_end else "earliest")
    producer = transactional_producer(settings, f"{group}-txn-loop", linger_ms=0)
    sender = BatchSender(producer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    decisions, impression_topic = settings.topic("ad.decisions"), settings.topic("ad.impressions")
    committing: asyncio.Task[None] | None = None
    owed = 0.0  # impressions owed so far: `impressions` per event on average
    done = 0
    cpu_start = cpu_end = time.process_time()

    async def commit(batch: Batch, outputs: list[tuple[str, bytes | None, bytes | None]]) -> None:
        async with producer.transaction():
            await sender.send(outputs)
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            await producer.send_offsets_to_transaction(offsets, group)

    await producer.start()
    await consumer.start()
    consumer.subscribe([settings.topic("chat.intents")])
    try:
        while not stop.is_set() and (expect is None or done < expect):
            batch: Batch = await consumer.getmany(timeout_ms=100, max_records=BATCH_MAX)
            count = sum(len(records) for records in batch.values())
            while batch and count < BATCH_MAX and committing is not None and not committing.done():
                more = await consumer.getmany(timeout_ms=1, max_records=BATCH_MAX - count)
                for tp, records in more.items():
                    batch.setdefault(tp, []).extend(records)
                    count += len(records)
            if not batch:
                continue
            if not done:
                cpu_start = time.process_time()
            outputs: list[tuple[str, bytes | None, bytes | None]] = []
            for records in batch.values():
                for record in records:
                    try:
                        intent = decode("chat.intents", record.value)
                    except RecordError:
                        continue
                    outputs.append((decisions, intent["session_id"].encode(), record.value))
                    owed += impressions
                    for slot in range(int(owed)):
                        outputs.append((impression_topic, f"{intent['event_id']}:{slot}".encode(), record.value))
                    owed -= int(owed)
            if committing is not None:
                await committing
            committing = asyncio.create_task(commit(batch, outputs))
            done += count
        if committing is not None:
            await committing
        cpu_end = time.process_time()
    finally:
        await consumer.stop()
        await producer.stop()
    return done, cpu_start, cpu_end


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.txn_loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", required=True, help="consumer group (a new one starts at --from-end or the beginning)")
    parser.add_argument("--impressions", type=float, default=2.0, help="impression records per event, on average (default 2)")
    parser.add_argument("--expect", type=int, help="stop after this many records (default: run until SIGTERM)")
    parser.add_argument("--from-end", action="store_true", help="a new group starts at the end of chat.intents")
    args = parser.parse_args(argv)
    done, cpu_start, cpu_end = asyncio.run(run(Settings.from_env(), args.group, args.impressions, args.expect, args.from_end))
    print(done, f"{cpu_start:.3f}", f"{cpu_end:.3f}")  # read by loadtests.bench_kafka
    return 0


if __name__ == "__main__":
    sys.exit(main())
