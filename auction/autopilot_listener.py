"""Every auction worker follows `campaigns.autopilot` (docs/contract.md §7): each new version of a
campaign's bid and effective keywords is applied to the worker's index as soon as it is read.

No consumer group: every worker reads the whole compacted topic from the start (the latest
decision of every campaign), then follows it, committed records only (read_committed: a decision
whose transaction the autopilot aborted is never applied). A record is read within about
FETCH_WAIT_MS of its commit; the autopilot commits every half second (streams/autopilot.py).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer

from auction.live import LiveState
from core.metrics import Metrics
from core.settings import Settings
from schemas.codec import RecordError, decode

log = logging.getLogger("vickrey.auction.autopilot")
DECISIONS = "campaigns.autopilot"
FETCH_WAIT_MS = 100


class AutopilotListener:
    def __init__(self, settings: Settings, live: LiveState, metrics: Metrics) -> None:
        self.live = live
        self.consumer = AIOKafkaConsumer(
            settings.topic(DECISIONS),
            bootstrap_servers=settings.kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        self.applied = metrics.counter("vickrey_auction_autopilot_applied_total",
                                       "Autopilot decisions applied to this worker's campaigns")

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
                            decision = decode(DECISIONS, record.value)
                        except RecordError as error:
                            log.warning("unreadable autopilot decision skipped", extra={"error": str(error)})
                            continue
                        if self.live.apply_decision(decision):
                            self.applied.inc()
        finally:
            await self.consumer.stop()
