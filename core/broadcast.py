"""A topic every process reads whole: no consumer group, nothing committed, committed records
only (read_committed: what an aborted transaction wrote is never seen).

Used by each auction worker to follow what other roles decided: confirmed user controls
(auction/controls.py) and the autopilot's decisions (auction/autopilot_listener.py). Records
were validated when produced; one that cannot be read is logged and skipped, since a reader
that owns no offsets has no DLQ to move it to and must not stop following the topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer

from core.settings import Settings
from schemas.codec import RecordError, decode

log = logging.getLogger("vickrey.broadcast")


class BroadcastReader:
    """`apply` gets every decoded record of `topic` from `start` ("earliest": the whole topic,
    e.g. a compacted one's latest value per key; "latest": from now on) until `stop` is set."""

    def __init__(self, settings: Settings, topic: str, apply: Callable[[dict[str, Any]], None], *,
                 start: Literal["earliest", "latest"], fetch_max_wait_ms: int = 500) -> None:
        self.topic = topic
        self.apply = apply
        self.consumer = AIOKafkaConsumer(
            settings.topic(topic),
            bootstrap_servers=settings.kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset=start,
            isolation_level="read_committed",
            fetch_max_wait_ms=fetch_max_wait_ms,
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.start()
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        if record.value is None:
                            continue  # a tombstone: compaction's business
                        try:
                            value = decode(self.topic, record.value)
                        except RecordError as error:
                            log.warning("unreadable record skipped", extra={"topic": self.topic, "error": str(error)})
                            continue
                        self.apply(value)
        finally:
            await self.consumer.stop()
