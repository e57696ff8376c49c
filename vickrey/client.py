"""A small client for chat services: publish intents, await their ad decisions, publish clicks.

    async with ChatAdsClient(Settings.from_env()) as ads:
        decision = await ads.ask(intent, timeout_s=0.2)     # publish + await, or DecisionTimeout
        for ad in decision["ads"]:
            render(ad)                                      # ... and when the person clicks:
            await ads.publish_click(ad["impression_id"], intent["user_id"])

The intent is a `chat.intents` record (docs/contract.md §3); `event_id` and `ts` are filled in when
absent. Decisions are correlated by `event_id`: the client reads `ad.decisions` with
`read_committed` from the end offsets it finds when it starts, and hands each decision to
whoever awaits that event. A decision that arrives after the caller's deadline is still billed
correctly by the pipeline; the caller just gets `DecisionTimeout`. At most `max_pending`
events are awaited at once: past that the oldest waiter fails with `DecisionTimeout` (memory
stays bounded however many decisions never come).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from core.settings import Settings
from schemas.codec import validate

__all__ = ["ChatAdsClient", "DecisionTimeout"]

log = logging.getLogger("vickrey.client")
DECISIONS = "ad.decisions"
INTENTS = "chat.intents"
CLICKS = "ad.clicks.raw"
CONVERSIONS_RAW = "ad.conversions.raw"


class DecisionTimeout(TimeoutError):
    """No decision for `event_id` within the deadline (or its waiter was evicted)."""

    def __init__(self, event_id: str, timeout_s: float, why: str = "") -> None:
        super().__init__(f"no decision for event {event_id!r} within {timeout_s:g} s{why}")
        self.event_id = event_id
        self.timeout_s = timeout_s


class ChatAdsClient:
    """Publishes intents and clicks, and correlates decisions by `event_id`.

    Use as an async context manager (or call `start()` / `close()`). One instance serves any
    number of concurrent callers on its event loop.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_pending: int = 100_000,
        linger_ms: int = 1,
        fetch_max_wait_ms: int = 100,
        validate_intents: bool = True,
    ) -> None:
        self.settings = settings
        self.max_pending = max_pending
        self.validate_intents = validate_intents
        self._intents = settings.topic(INTENTS)
        self._clicks = settings.topic(CLICKS)
        self._conversions = settings.topic(CONVERSIONS_RAW)
        self._decisions = settings.topic(DECISIONS)
        self._linger_ms = linger_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # event_id -> future of its decision, oldest first (bounded by max_pending).
        self._waiters: OrderedDict[str, asyncio.Future[dict[str, Any]]] = OrderedDict()
        self._reader: asyncio.Task[None] | None = None
        self.decisions_seen = 0  # every decision read, ours or not
        self.evicted = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> ChatAdsClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, and position the decision reader at the current end of `ad.decisions`."""
        # aiokafka clients bind to the running loop: create them here, not in __init__.
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka, linger_ms=self._linger_ms, acks="all", enable_idempotence=True
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            auto_offset_reset="latest",
        )
        await producer.start()
        try:
            await consumer.start()
            partitions = await self._partitions(producer, self._decisions)
            consumer.assign(partitions)
            await consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve the lazy reset now, before any intent is published
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        self._producer, self._consumer = producer, consumer
        self._reader = asyncio.create_task(self._read_decisions(), name="chat-ads-decisions")

    async def close(self) -> None:
        """Stop reading; callers still waiting get `DecisionTimeout`."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        for event_id, future in self._waiters.items():
            if not future.done():
                future.set_exception(DecisionTimeout(event_id, 0, " (client closed)"))
                future.exception()  # retrieved: no "exception never retrieved" noise if nobody waits
        self._waiters.clear()
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self._producer = self._consumer = None

    @staticmethod
    async def _partitions(producer: AIOKafkaProducer, topic: str) -> list[TopicPartition]:
        deadline = time.monotonic() + 15
        while True:
            found = await producer.partitions_for(topic)
            if found:
                return [TopicPartition(topic, p) for p in sorted(found)]
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no partitions (run `vickrey topics create`)")
            await asyncio.sleep(0.2)

    # -- intents and decisions ---------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events awaited right now."""
        return len(self._waiters)

    async def publish_intent(self, intent: dict[str, Any]) -> str:
        """Publish one `chat.intents` record (key `user_id`) and return its `event_id`.

        Fills `event_id` (a UUID) and `ts` (now) when absent; with `validate_intents` the record
        is checked against the contract first (`schemas.codec.RecordError` names the problem).
        Returns once the broker has the record. Its decision can be awaited with `decision()`
        from now on, even if it arrives before `decision()` is called.
        """
        intent.setdefault("event_id", uuid.uuid4().hex)
        intent.setdefault("ts", int(time.time() * 1000))
        if self.validate_intents:
            validate(INTENTS, intent)
        event_id = str(intent["event_id"])
        self._watch(event_id)
        try:
            await self._started_producer().send_and_wait(
                self._intents, orjson.dumps(intent), key=str(intent["user_id"]).encode()
            )
        except BaseException:
            self._forget(event_id)
            raise
        return event_id

    async def decision(self, event_id: str, timeout_s: float) -> dict[str, Any]:
        """The `ad.decisions` record of `event_id`, or `DecisionTimeout` after `timeout_s`."""
        future = self._watch(event_id)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except DecisionTimeout:  # evicted or closed: keep its reason
            raise
        except TimeoutError:
            raise DecisionTimeout(event_id, timeout_s) from None
        finally:
            self._forget(event_id)

    async def ask(self, intent: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """`publish_intent` then `decision`: the decision, or `DecisionTimeout`. The deadline
        counts from the moment the intent is handed to the producer."""
        started = time.monotonic()
        event_id = await self.publish_intent(intent)
        return await self.decision(event_id, max(0.0, timeout_s - (time.monotonic() - started)))

    def forget(self, event_id: str) -> None:
        """Stop waiting for `event_id` (e.g. after a timeout the caller gave up on)."""
        self._forget(event_id)

    # -- clicks ------------------------------------------------------------------------------

    async def publish_click(self, impression_id: str, user_id: str) -> str:
        """Publish a raw click (`ad.clicks.raw`, key `impression_id`); returns its `click_id`."""
        click_id = uuid.uuid4().hex
        record = {
            "schema_version": 1,
            "click_id": click_id,
            "impression_id": impression_id,
            "ts": int(time.time() * 1000),
            "user_id": user_id,
        }
        await self._started_producer().send_and_wait(self._clicks, orjson.dumps(record), key=impression_id.encode())
        return click_id

    # -- conversions -------------------------------------------------------------------------

    async def report_purchase(self, click_id: str, order_id: str, value_micros: int = 0,
                              kind: str = "purchase", ts: int | None = None) -> None:
        """Report what a click led to inside the chat (an in-chat checkout): `ad.conversions.raw`,
        key `click_id`, `source: in_chat`. `order_id` is the conversion_id: reporting the same
        order again is recognised as a duplicate, so a retry is safe."""
        record = {
            "schema_version": 1,
            "conversion_id": order_id,
            "click_id": click_id,
            "ts": int(time.time() * 1000) if ts is None else ts,
            "kind": kind,
            "value_micros": value_micros,
            "source": "in_chat",
        }
        validate(CONVERSIONS_RAW, record)  # a bad field is the caller's error (RecordError names it), not a DLQ record
        await self._started_producer().send_and_wait(self._conversions, orjson.dumps(record), key=click_id.encode())

    # -- internals ---------------------------------------------------------------------------

    def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("ChatAdsClient is not started: use `async with ChatAdsClient(...)` or await start()")
        return self._producer

    def _watch(self, event_id: str) -> asyncio.Future[dict[str, Any]]:
        future = self._waiters.get(event_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiters[event_id] = future
            while len(self._waiters) > self.max_pending:
                old_id, old = self._waiters.popitem(last=False)
                self.evicted += 1
                if not old.done():
                    old.set_exception(DecisionTimeout(old_id, 0, f" (evicted: over {self.max_pending} pending)"))
                    old.exception()  # retrieved: no "exception never retrieved" noise if nobody waits
        return future

    def _forget(self, event_id: str) -> None:
        future = self._waiters.pop(event_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def _read_decisions(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # a broker hiccup: keep reading
                log.exception("reading %s failed; retrying", self._decisions)
                await asyncio.sleep(0.5)
                continue
            for records in batch.values():
                for record in records:
                    self.decisions_seen += 1
                    if record.value is None:
                        continue
                    decision = orjson.loads(record.value)
                    future = self._waiters.get(decision.get("event_id"))
                    if future is not None and not future.done():
                        future.set_result(decision)
