"""Helpers for the streams tests: build records, produce them, read topics back read_committed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from core.settings import Settings

Record = dict[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


def impression(
    impression_id: str,
    campaign_id: str,
    ts: int,
    user_id: str = "u-1",
    bid_type: str = "cpm",
    price_micros: int = 2_000_000,
) -> Record:
    """A valid ad.impressions record; charge_micros as the auction computes it."""
    charge = (price_micros + 500) // 1000 if bid_type == "cpm" else 0
    return {
        "schema_version": 1,
        "impression_id": impression_id,
        "event_id": impression_id.rsplit(":", 1)[0],
        "ts": ts,
        "user_id": user_id,
        "session_id": "s-1",
        "placement": "chat_inline",
        "slot": 1,
        "campaign_id": campaign_id,
        "advertiser_id": f"adv-{campaign_id}",
        "creative_id": f"{campaign_id}-1",
        "bid_type": bid_type,
        "bid_micros": price_micros + 1,
        "price_micros": price_micros,
        "charge_micros": charge,
        "ecpm_micros": price_micros,
        "runner_up_ecpm_micros": None,
        "reserve_cpm_micros": 0,
        "pctr": 0.01,
        "category": "IAB19-6",
    }


def raw_click(click_id: str, impression_id: str, ts: int, user_id: str = "u-1") -> Record:
    return {"schema_version": 1, "click_id": click_id, "impression_id": impression_id, "ts": ts, "user_id": user_id}


def click(click_id: str, impression_id: str, campaign_id: str, ts: int, charge_micros: int) -> Record:
    """A billable ad.clicks record (what attribution publishes)."""
    return {
        **raw_click(click_id, impression_id, ts),
        "campaign_id": campaign_id,
        "advertiser_id": f"adv-{campaign_id}",
        "charge_micros": charge_micros,
    }


def ledger(entry_id: str, kind: str, campaign_id: str, ts: int, amount: int, overdelivery: bool = False) -> Record:
    return {
        "schema_version": 1,
        "entry_id": entry_id,
        "kind": kind,
        "campaign_id": campaign_id,
        "advertiser_id": f"adv-{campaign_id}",
        "amount_micros": amount,
        "ts": ts,
        "overdelivery": overdelivery,
    }


async def produce(settings: Settings, topic: str, records: Iterable[tuple[str, Record | bytes]],
                  transactional: bool = False) -> None:
    """Send (key, record) pairs to the logical `topic` and wait until all are written; with
    `transactional`, in one committed transaction, as Vickrey's own roles write (a commit marker
    then follows the last record)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, enable_idempotence=True, linger_ms=5,
                                transactional_id=f"{settings.topic_prefix}test-producer" if transactional else None)
    await producer.start()
    try:
        async with producer.transaction() if transactional else contextlib.nullcontext():
            futures = [
                await producer.send(settings.topic(topic), value if isinstance(value, bytes) else orjson.dumps(value),
                                    key=key.encode())
                for key, value in records
            ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str, expect: int, timeout_s: float = 30.0, settle_s: float = 1.0) -> list[Record]:
    """Every record of the logical `topic`, read_committed from the beginning: waits until at least
    `expect` arrived, then `settle_s` longer so that extra (duplicate) records would show."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    found: list[Record] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        settled_at: float | None = None
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(orjson.loads(r.value) for r in records if r.value is not None)
            if len(found) >= expect:
                settled_at = settled_at or loop.time() + settle_s
                if loop.time() >= settled_at:
                    break
    finally:
        await consumer.stop()
    return found


async def wait_for(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def kill_repeatedly(start: Callable[[], subprocess.Popen[bytes]], log: Path, rng: random.Random, times: int,
                          after_s: tuple[float, float] = (0.1, 2.0)) -> None:
    """Start the role `times` times, each time SIGKILL it at a random moment once it has taken
    partitions (its log counts "partitions assigned")."""
    for kills in range(times):
        proc = start()
        await wait_for(lambda n=kills: log.read_text().count("partitions assigned") > n, timeout_s=60, what="assignment")
        await asyncio.sleep(rng.uniform(*after_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
