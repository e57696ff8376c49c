"""The autopilot (docs/contract.md §7) on faust-streaming: autopilot.feed → per-campaign pilots in a
Faust table → campaigns.autopilot (and the decision history in Redis).

`vickrey streams autopilot` runs it as a process of its own (Faust owns its event loop); `vickrey
run` starts it with the other roles. The app id, its consumer group and the table's changelog
topic all carry the topic prefix (`settings.group("autopilot")`).

- **Input**: `autopilot.feed`, the windows the autopilot-feed role counts from impressions and clicks
  (streams/autopilot_feed.py), keyed by campaign: each campaign lives on one partition.
- **State**: the table `pilots`, campaign id → the pilot (autopilot/pilot.py: bid controller state,
  keyword counts, effective targeting, last version), when it decides next and the last feed
  offset it counted. Faust keeps it in memory and in its changelog topic; after a restart or a
  rebalance it is read back from there.
- **The timer runs on event time**: a campaign decides when a window ending at or after its next
  decision time arrives (every VICKREY_AUTOPILOT_DECIDE_EVERY_S; the feed sends empty windows when
  there is no traffic, so the clock runs on). Before deciding, the campaign is read again from Redis
  (its budget or goal may have changed) with today's spend.
- **Output**: the decision goes to the campaign's history in Redis (`Keys.autopilot`, scored by
  version) and then to `campaigns.autopilot`, which the workers apply (auction/live.py).

**Exactly once, by idempotence.** Faust's `exactly_once` guarantee does not restore tables here:
with faust-streaming 0.15.3, aiokafka 0.14 and Kafka 4.1 a restarted worker reads the changelog
to its end but applies none of it (faust-streaming issue #47), while `at_least_once` restores
them. So the app runs at least once (the changelog is flushed before offsets are committed, so the
table is never behind the committed position) and makes replays harmless itself:
- a feed record at or below the offset a pilot has counted is skipped (counted once);
- the Redis history is the authority on versions: a pilot whose table entry is behind it (the
  process died between recording a decision and keeping its state) adopts the recorded decision
  (version, bid, keywords, next decision time) instead of deciding again;
- at start the app reads `campaigns.autopilot` to its end; recorded decisions missing from it
  (the process died between recording and publishing: several, after a burst) are published
  then, in order. A version is never published twice, and none is lost.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from autopilot.pilot import Pilot, pilots_campaign, seconds_of_day
from core import logs
from core.clock import DAY_MS, utc_day
from core.keys import AUTOPILOT_HISTORY_MAX
from core.redis_client import redis_from_url
from core.settings import Settings
from core.topics import ensure_topics, topic_partitions
from schemas.checks import Record
from schemas.codec import RecordError, decode, encode

log = logging.getLogger("vickrey.streams.autopilot")
APP = "autopilot"
FEED = "autopilot.feed"
DECISIONS = "campaigns.autopilot"
ROOT = Path(__file__).resolve().parent.parent


class Autopilot:
    """What the agent does with each feed window; `build_app` wires it to Faust."""

    def __init__(self, settings: Settings, table: Any, decisions: Any, published: dict[str, int]) -> None:
        self.settings = settings
        self.keys = settings.keys
        # faust Table: campaign_id -> {"pilot": Pilot.to_state(), "next_decision_ms": int, "offset": int}
        self.table = table
        self.decisions = decisions  # faust Topic: campaigns.autopilot
        self.published = published  # campaign_id -> the latest version on campaigns.autopilot
        self.checked: set[str] = set()  # campaigns whose history this process has held against the topic
        self.every_ms = settings.autopilot_decide_every_s * 1000
        self._redis: Redis | None = None
        self.decided = 0

    @property
    def redis(self) -> Redis:
        if self._redis is None:  # opened on the app's event loop, on first use
            self._redis = redis_from_url(self.settings.redis)
        return self._redis

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def absorb(self, campaign_id: str, feed: Record, offset: int) -> None:
        """One window of the campaign's traffic (at `offset` of its feed partition): counted once,
        then a decision if one is due."""
        state = self.table.get(campaign_id)
        if state is None:
            record = await self._campaign(campaign_id)
            if record is None or not pilots_campaign(record):
                return
            state = {"pilot": Pilot.for_campaign(record).to_state(), "next_decision_ms": self._next(feed["window_end"]),
                     "offset": -1}
        elif offset <= state["offset"]:
            return  # counted before the restart that replays it
        pilot = Pilot.from_state(state["pilot"])
        due = await self._catch_up(pilot, state["next_decision_ms"])
        pilot.new_day(feed["window_start"] // DAY_MS)
        pilot.absorb(feed)
        if feed["window_end"] >= due:
            if not await self._decide(pilot, feed["window_end"]):
                del self.table[campaign_id]  # the campaign is gone
                return
            due = self._next(feed["window_end"])
        self.table[campaign_id] = {"pilot": pilot.to_state(), "next_decision_ms": due, "offset": offset}

    async def _catch_up(self, pilot: Pilot, due: int) -> int:
        """Hold the pilot against its recorded history: adopt a decision its state lost, publish one
        the topic lost. Returns when it decides next."""
        latest = await self._latest(pilot.campaign_id)
        if latest is None:
            return due
        if latest["version"] > pilot.version:
            log.warning("adopting a recorded decision the table lost",
                        extra={"campaign_id": pilot.campaign_id, "version": latest["version"]})
            pilot.adopt(latest)
            due = self._next(latest["ts"])
        if pilot.campaign_id not in self.checked:
            self.checked.add(pilot.campaign_id)
            published = self.published.get(pilot.campaign_id, 0)
            if published < latest["version"]:
                # Every recorded decision the topic lost, in order: a burst of windows can make
                # several decisions that the process recorded but died before its producer sent.
                lost: list[Any] = await self.redis.zrangebyscore(
                    self.keys.autopilot(pilot.campaign_id), f"({published}", "+inf")
                for raw in lost:
                    decision = orjson.loads(raw)
                    log.warning("publishing a recorded decision the topic lost",
                                extra={"campaign_id": pilot.campaign_id, "version": decision["version"]})
                    await self._publish(pilot.campaign_id, int(decision["version"]), encode(decision))
        return due

    async def _latest(self, campaign_id: str) -> dict[str, Any] | None:
        found: list[Any] = await self.redis.zrevrange(self.keys.autopilot(campaign_id), 0, 0)
        return dict(orjson.loads(found[0])) if found else None

    async def _publish(self, campaign_id: str, version: int, encoded: bytes) -> None:
        await self.decisions.send(key=campaign_id.encode(), value=encoded)
        self.published[campaign_id] = version

    def _next(self, now_ms: int) -> int:
        return now_ms - now_ms % self.every_ms + self.every_ms

    async def _campaign(self, campaign_id: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.keys.campaigns(), campaign_id)
        return None if raw is None else dict(orjson.loads(raw))

    async def _decide(self, pilot: Pilot, at_ms: int) -> bool:
        """Decide at event time `at_ms`; False when the campaign no longer exists."""
        record = await self._campaign(pilot.campaign_id)
        if record is None:
            return False
        pilot.refresh(record)
        pilot.new_day(at_ms // DAY_MS)
        spent = int(await self.redis.get(self.keys.spend_day(pilot.campaign_id, utc_day(at_ms))) or 0)
        decision = pilot.decide(seconds_of_day(at_ms), spent)
        if decision is None:
            return True
        encoded = encode(decision.record(at_ms))
        history = self.keys.autopilot(pilot.campaign_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # recorded first: see the module's docstring
            pipe.zadd(history, {encoded: decision.version})
            pipe.zremrangebyrank(history, 0, -AUTOPILOT_HISTORY_MAX - 1)
            await pipe.execute()
        await self._publish(pilot.campaign_id, decision.version, encoded)
        self.decided += 1
        log.info("decided", extra={"campaign_id": pilot.campaign_id, "version": decision.version,
                                   "reason": decision.reason})
        return True


async def published_versions(settings: Settings) -> dict[str, int]:
    """The latest version of every campaign on campaigns.autopilot, read to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    latest: dict[str, int] = {}
    try:
        partitions = await topic_partitions(settings, settings.topic(DECISIONS))
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.key is not None and record.value is not None:
                        version = int(orjson.loads(record.value)["version"])
                        campaign_id = record.key.decode()
                        latest[campaign_id] = max(version, latest.get(campaign_id, 0))
    finally:
        await consumer.stop()
    return latest


def state_dir(topic_prefix: str) -> Path:
    """`.local/streams/<prefix>/autopilot`: Faust's data directory, one per stack."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", topic_prefix.rstrip(".")) or "_default"
    return ROOT / ".local" / "streams" / safe / "autopilot"


def build_app(settings: Settings, partitions: int, published: dict[str, int]) -> tuple[faust.App, Autopilot]:
    """The Faust app; `partitions`: those of autopilot.feed (the table's changelog gets as many);
    `published`: the latest version of each campaign on campaigns.autopilot."""
    app = faust.App(
        settings.group(APP),
        broker=[f"kafka://{host.strip()}" for host in settings.kafka.split(",")],
        store="memory://",  # the changelog topic is the table's durable copy
        processing_guarantee="at_least_once",  # and idempotent: see the module's docstring
        topic_partitions=partitions,
        topic_replication_factor=1,
        web_enabled=False,
        autodiscover=False,
        datadir=str(state_dir(settings.topic_prefix)),
        broker_commit_interval=0.5,
        broker_session_timeout=10.0,  # a killed member's partitions move on after this
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
    )
    feed = app.topic(settings.topic(FEED), key_serializer="raw", value_serializer="raw")
    decisions = app.topic(settings.topic(DECISIONS), key_serializer="raw", value_serializer="raw")
    table = app.Table("pilots", default=None, partitions=partitions,  # keys and values: JSON (the app default)
                      help="campaign id -> its pilot's state and next decision time")
    autopilot = Autopilot(settings, table, decisions, published)

    @app.agent(feed, name="learn")
    async def learn(stream: Any) -> None:
        async for event in stream.events():
            try:
                window = decode(FEED, event.value)
            except RecordError as error:  # our own topic: a bad record is a bug, not input
                log.error("unreadable autopilot.feed record skipped", extra={"error": str(error)})
                continue
            await autopilot.absorb(window["campaign_id"], window, event.message.offset)

    async def closing(_app: Any, *_args: Any, signal: Any, **_kwargs: Any) -> None:
        await autopilot.close()

    app.on_before_shutdown.connect(closing)  # type: ignore[arg-type]  # mode types an async receiver loosely

    return app, autopilot


def main(settings: Settings) -> int:
    """`vickrey streams autopilot`: until SIGTERM or SIGINT."""
    logs.setup("autopilot")
    logging.getLogger("faust").setLevel(logging.WARNING)
    logging.getLogger("mode").setLevel(logging.WARNING)

    async def prepare() -> tuple[int, dict[str, int]]:
        await ensure_topics(settings)
        return len(await topic_partitions(settings, settings.topic(FEED))), await published_versions(settings)

    partitions, published = asyncio.run(prepare())
    state_dir(settings.topic_prefix).mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Faust binds to the current loop
    app, _ = build_app(settings, partitions, published)
    worker = faust.Worker(app, quiet=True, loglevel="warn", override_logging=False, redirect_stdouts=False, loop=loop)
    worker.spinner = None  # no terminal spinner in logs
    try:
        worker.execute_from_commandline()
    except SystemExit as done:
        return int(done.code or 0)
    return 0
