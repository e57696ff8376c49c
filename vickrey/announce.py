"""Announcing what the stores keep in Redis on their compacted Kafka topics: the one producer
helper of campaigns (`campaigns`), the trust policy (`policy`) and advertisers (`advertisers`).

Redis is never the only copy (docs/contract.md §9): a store writes Redis first, then publishes the
new state on its compacted topic, which `vickrey reconcile` restores an emptied Redis from. So that
an unreachable Kafka stores nothing, a store starts its producer (`start_producer`) before it writes
Redis; a send that fails after the write raises AnnounceError, which says what Redis holds and what
Kafka does not.

`announce_state` publishes a key's whole state and keeps the topic's latest record for that key
equal to Redis when writers race: it reads the state, publishes it, and reads it again, until
what it read after a publish is what it published (a writer that changed the state in between
publishes again itself, later). So the record a reader sees last is never older than Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaProducer

from core.settings import Settings
from core.topics import ensure_topics

log = logging.getLogger("vickrey.announce")

REQUEST_TIMEOUT_MS = 15_000
MAX_STATE_ROUNDS = 20  # publish-and-read-again rounds before giving up on a key that keeps changing


class AnnounceError(RuntimeError):
    """The change is stored in Redis (and in force), but announcing it on Kafka failed: until it is
    announced, an emptied Redis would lose it. The message says what was stored and what was not."""


async def start_producer(settings: Settings, logical_topics: Sequence[str]) -> AIOKafkaProducer:
    """A started idempotent producer (acks=all), the topics created if missing. Call it before
    writing Redis: it fails (KafkaConnectionError, TimeoutError) before anything is stored."""
    await ensure_topics(settings, logical_topics)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka, acks="all", enable_idempotence=True, request_timeout_ms=REQUEST_TIMEOUT_MS
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


def _failed(settings: Settings, topic: str, stored: str, exc: BaseException | str) -> AnnounceError:
    return AnnounceError(
        f"{stored} is stored in Redis and in force, but announcing it on Kafka topic {topic} "
        f"({settings.kafka}) failed, so Redis is its only copy until it is announced: {exc}"
    )


async def announce(
    settings: Settings,
    producer: AIOKafkaProducer,
    logical_topic: str,
    records: Iterable[tuple[bytes, bytes | None]],
    *,
    stored: str,
) -> None:
    """Send (key, value) records (value None: a tombstone) and wait until Kafka acknowledged each;
    AnnounceError naming `stored` (what Redis holds, in words) when that fails."""
    topic = settings.topic(logical_topic)
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in records]
        for future in futures:
            await future
    except Exception as exc:
        raise _failed(settings, topic, stored, exc) from exc


async def announce_state(
    settings: Settings,
    producer: AIOKafkaProducer,
    logical_topic: str,
    key: bytes,
    read_state: Callable[[], Awaitable[bytes | None]],
    *,
    stored: str,
) -> bytes | None:
    """Publish the state `read_state()` reads from Redis for `key` (None: a tombstone), then read it
    again, until the state read after a publish is the one published (see the module docstring;
    after MAX_STATE_ROUNDS it stops: the writer of the latest change announces that). Returns what
    was published last."""
    state = await read_state()
    for _round in range(MAX_STATE_ROUNDS):
        await announce(settings, producer, logical_topic, [(key, state)], stored=stored)
        again = await read_state()
        if again == state:
            break
        state = again
    else:  # each change came from a writer that announces it after us
        log.warning("%s %r kept changing while it was announced; its last writer announces it",
                    logical_topic, key)
    return state
