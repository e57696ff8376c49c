"""People's ad controls (DESIGN.md §4b): `user.controls` → Redis → `user.controls.applied`.

`ControlsProcessor` applies each control to the person's keys in Redis and confirms it on
`user.controls.applied`, in a Kafka transaction with the consumed offsets: every Redis step is
idempotent (a set add, a flag, an erase), so a batch replayed after a crash leaves the same
state and the confirmation is published once. `AppliedListener` runs in every auction worker
and drops what that worker remembers about a person as soon as a `forget` is confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from auction.budgets import user_key
from auction.people import PeopleCache
from schemas.codec import RecordError, applied_control, decode, dlq_record, encode
from vickrey.kafka import BatchSender, transactional_producer
from vickrey.settings import Settings

log = logging.getLogger("vickrey.auction.controls")

# Erase every per-person key: the ones listed in the person's key index (frequency caps,
# written by reserve.lua) and the fixed ones. One script, so nothing is added halfway.
FORGET_SCRIPT = """
local prefix = ARGV[1]
local listed = redis.call("SMEMBERS", prefix .. "keys")
local erased = 0
for _, key in ipairs(listed) do erased = erased + redis.call("DEL", key) end
erased = erased + redis.call("DEL", prefix .. "keys", prefix .. "hidden", prefix .. "prefs")
return erased
"""
Output = tuple[str, bytes | None, bytes | None]


class ControlsProcessor:
    def __init__(self, settings: Settings, redis: Redis, instance: str) -> None:
        self.settings = settings
        self.redis = redis
        self.group_id = settings.group("controls")
        self.consumer = AIOKafkaConsumer(
            settings.topic("user.controls"),
            bootstrap_servers=settings.kafka,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=500,
        )
        self.producer = transactional_producer(settings, f"{self.group_id}-{instance}")
        self.sender = BatchSender(self.producer)
        self._forget = redis.register_script(FORGET_SCRIPT)
        self.applied = 0

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=200)
            if not batch:
                continue
            try:
                async with self.producer.transaction():
                    await self.sender.send(await self.apply_batch(batch))
                    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    await self.producer.send_offsets_to_transaction(offsets, self.group_id)
            except Exception:
                log.exception("controls batch failed, retrying it")
                for tp, records in batch.items():
                    self.consumer.seek(tp, records[0].offset)
                await asyncio.sleep(0.5)

    async def apply_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> list[Output]:
        now_ms = int(time.time() * 1000)
        outputs: list[Output] = []
        for records in batch.values():
            for record in records:
                try:
                    control = decode("user.controls", record.value)
                except RecordError as error:
                    dead = dlq_record(
                        self.settings.topic("user.controls"), record.partition, record.offset, record.key,
                        record.value, str(error), now_ms,
                    )
                    outputs.append((self.settings.topic("user.controls.dlq"), record.key, encode(dead)))
                    continue
                await self.apply(control)
                confirmation = applied_control(control, record.partition, record.offset, int(time.time() * 1000))
                outputs.append((self.settings.topic("user.controls.applied"), control["user_id"].encode(), encode(confirmation)))
                self.applied += 1
        return outputs

    async def apply(self, control: dict[str, Any]) -> None:
        ns, user = self.settings.namespace, control["user_id"]
        action = control["action"]
        if action == "forget":
            await self._forget(keys=[], args=[user_key(ns, user, "")])
            return
        pipe = self.redis.pipeline(transaction=True)
        if action == "hide_advertiser":
            pipe.sadd(user_key(ns, user, "hidden"), control["advertiser_id"])
        else:  # personalization_off / personalization_on
            pipe.hset(user_key(ns, user, "prefs"), "personalization", "off" if action == "personalization_off" else "on")
        await pipe.execute()


class AppliedListener:
    """Every worker reads every confirmation (no consumer group), from the moment it starts:
    what it remembered about a forgotten person goes within milliseconds."""

    def __init__(self, settings: Settings, people: PeopleCache) -> None:
        self.settings = settings
        self.people = people
        self.consumer = AIOKafkaConsumer(
            settings.topic("user.controls.applied"),
            bootstrap_servers=settings.kafka,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            isolation_level="read_committed",
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self.consumer.start()
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        confirmation = decode("user.controls.applied", record.value)
                        if confirmation["action"] == "forget":
                            self.people.forget(confirmation["user_id"])
        finally:
            await self.consumer.stop()
