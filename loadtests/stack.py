"""Helpers shared by the load test and the benchmark: isolated stacks (own topic prefix and
Redis namespace), campaigns, worker processes, consumer groups, offsets, and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from core.redis_client import parse_redis_url, redis_from_url
from core.settings import Settings
from core.topics import admin_client, delete_topics, ensure_topics
from vickrey.campaign_store import apply_campaigns

ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def new_tag(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def isolated(base: Settings, tag: str, partitions: int = 6) -> Settings:
    """Settings of a stack of its own: topics `<tag>.*`, Redis keys `<tag>:*`."""
    return base.with_(topic_prefix=f"{tag}.", namespace=tag, partitions=partitions, metrics_port=0)


def env_for(settings: Settings) -> dict[str, str]:
    """Environment for `vickrey …` child processes that must see exactly this stack."""
    return settings.as_env()


def require_local(settings: Settings) -> None:
    """Load goes to this machine only: refuse any other Kafka or Redis."""
    hosts = [part.rsplit(":", 1)[0] for part in settings.kafka.split(",")]
    seeds = parse_redis_url(settings.redis).seeds  # a Redis Cluster's seed nodes
    redis_hosts = [host for host, _ in seeds] or [
        settings.redis.split("://", 1)[-1].split("@")[-1].split("/")[0].rsplit(":", 1)[0]
    ]
    for host in [*hosts, *redis_hosts]:
        if host not in LOCAL_HOSTS and not host.startswith("127."):
            raise SystemExit(f"refusing to send load to {host}: load tests and benchmarks target 127.0.0.1 only")


async def apply(settings: Settings, records: Sequence[dict[str, Any]]) -> int:
    """Validate and store campaigns (announced on Kafka); returns how many were applied."""
    client = redis_from_url(settings.redis)
    try:
        result = await apply_campaigns(settings, client, list(records))
    finally:
        await client.aclose()
    if result.refused:
        first = result.refused[0]
        raise RuntimeError(f"{len(result.refused)} campaigns refused, e.g. {first.campaign_id}: {first.problems}")
    return len(result.applied)


async def campaign_count(settings: Settings) -> int:
    client = redis_from_url(settings.redis)
    try:
        return int(await client.hlen(settings.keys.campaigns()))
    finally:
        await client.aclose()


async def delete_keys(settings: Settings) -> int:
    """Delete every Redis key of the namespace (never the default one)."""
    if settings.namespace in ("", "vickrey"):
        raise ValueError("refusing to delete the keys of the default namespace")
    client = redis_from_url(settings.redis)
    deleted = 0
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{settings.namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(await client.delete(*batch))
                batch = []
        if batch:
            deleted += int(await client.delete(*batch))
    finally:
        await client.aclose()
    return deleted


async def cleanup(settings: Settings) -> None:
    """Remove the stack's topics and Redis keys."""
    await delete_topics(settings)
    await delete_keys(settings)


async def create_topics(settings: Settings, extra: Iterable[str] = ()) -> None:
    await ensure_topics(settings)
    extra = list(extra)
    if extra:
        await ensure_topics(settings, extra)


# -- processes ---------------------------------------------------------------------------------


def start_vickrey(settings: Settings, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `vickrey ARGS` for this stack in its own process group."""
    out: Any = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "vickrey", *args],
        env=env_for(settings),
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM its process group (graceful: workers finish their batch), SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(10)


# -- consumer groups and offsets ---------------------------------------------------------------


async def group_members(settings: Settings, group: str) -> int:
    """Members of a consumer group right now (0 when it does not exist or is empty)."""
    async with admin_client(settings) as admin:
        responses = await admin.describe_consumer_groups([group])
    members = 0
    for response in responses:
        for entry in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            state, group_members_ = entry[2], entry[5]
            if state in ("Stable", "PreparingRebalance", "CompletingRebalance"):
                members += len(group_members_)
    return members


async def wait_for_group(settings: Settings, group: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if await group_members(settings, group) > 0:
            return True
        await asyncio.sleep(0.5)
    return False


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of a physical topic (metadata fetched if this consumer has none yet)."""
    found = consumer.partitions_for_topic(topic)
    if not found:
        # aiokafka's public API has no "fetch this topic's metadata" on a consumer; tests use this too.
        await consumer._client._wait_on_metadata(topic)  # noqa: SLF001
        found = consumer.partitions_for_topic(topic)
    if not found:
        raise RuntimeError(f"topic {topic} has no partitions")
    return [TopicPartition(topic, p) for p in sorted(found)]


async def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """Committed (read_committed) end offsets of a physical topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        return dict(await consumer.end_offsets(partitions)) if partitions else {}
    finally:
        await consumer.stop()


async def reset_group(settings: Settings, group: str, topic: str) -> None:
    """Commit offset 0 on every partition of `topic` for an (empty) consumer group, so its next
    member starts from the beginning again."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        offsets = {tp: await consumer.position(tp) for tp in partitions}
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def committed(settings: Settings, group: str) -> dict[TopicPartition, int]:
    """The committed offsets of a consumer group."""
    async with admin_client(settings) as admin:
        offsets = await admin.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in offsets.items()}


async def read_span(settings: Settings, topic: str, start: dict[TopicPartition, int], timeout: float) -> tuple[int, int, int]:
    """Read `topic` from `start` offsets up to its current committed end: (records, first
    timestamp ms, last timestamp ms), by the records' Kafka timestamps."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka, isolation_level="read_committed", enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    count, first, last = 0, 2**63, 0
    try:
        partitions = await partitions_of(consumer, topic)
        ends = await consumer.end_offsets(partitions)
        todo = [tp for tp in partitions if ends[tp] > start.get(tp, 0)]
        if not todo:
            return 0, 0, 0
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, start.get(tp, 0))
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for record in records:
                    count += 1
                    first = min(first, record.timestamp)
                    last = max(last, record.timestamp)
            todo = [tp for tp in todo if await consumer.position(tp) < ends[tp]]
    finally:
        await consumer.stop()
    return count, first, last
