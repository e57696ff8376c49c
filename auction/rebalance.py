"""Rebalances happen between batches: partitions are given up only after the batch being
auctioned finished and the transaction in flight committed.

Interpreted on purpose: aiokafka wants a subclass of its ABC ConsumerRebalanceListener, which a
mypyc-compiled class cannot be (vickrey/native.py compiles the worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

log = logging.getLogger("vickrey.auction")


class BetweenBatches(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, batch_lock: asyncio.Lock, settle_commit: Callable[[], Awaitable[bool]]) -> None:
        self.batch_lock = batch_lock
        self.settle_commit = settle_commit

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.batch_lock:
            await self.settle_commit()
            log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in revoked)})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})
