"""Test helpers that talk to the real Kafka: produce records, read a topic back (read_committed),
and run CLI roles as subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from core.settings import Settings
from core.topics import topic_partitions

ROOT = Path(__file__).resolve().parent.parent
VICKREY = str(ROOT / ".venv" / "bin" / "vickrey")


async def produce(settings: Settings, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=5, acks="all")
    await producer.start()
    count = 0
    try:
        for key, value in records:
            await producer.send(settings.topic(topic), value=value, key=key)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def produce_json(settings: Settings, topic: str, records: Iterable[dict[str, Any]], key_field: str) -> int:
    return await produce(settings, topic, ((str(r[key_field]).encode(), orjson.dumps(r)) for r in records))


async def read_all(settings: Settings, topic: str, expect: int = 0, timeout: float = 30.0, settle: float = 1.0) -> list[dict[str, Any]]:
    """Every committed record of a topic, from the beginning. Waits until `expect` records are
    there (or `timeout`), then `settle` seconds more so that extra (duplicate) records show up."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka, isolation_level="read_committed", enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    name = settings.topic(topic)
    try:
        partitions = await topic_partitions(settings, name)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out += [orjson.loads(r.value) for r in records if r.value is not None]
            now = time.monotonic()
            if len(out) >= expect and settle_until is None:
                settle_until = now + settle
            if (settle_until is not None and now >= settle_until) or now >= deadline:
                return out
    finally:
        await consumer.stop()


def start_role(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([VICKREY, *args], env=env, stdout=out, stderr=out, start_new_session=True)


def stop_role(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)


async def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate() if asyncio.iscoroutinefunction(predicate) else predicate():
            return True
        await asyncio.sleep(interval)
    return False
