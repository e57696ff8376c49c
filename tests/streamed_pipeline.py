"""A pipeline under a stream, for the tests that break a part of it mid-flow (a broker in
tests/test_broker_loss.py, Redis in tests/test_redis_loss.py): the auction worker, click
attribution and billing as `vickrey` processes; intents streamed in bursts; a click sent for every
other CPC impression, as people would; and the exactly-once checks both tests make afterwards."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from core.redis_client import sync_redis_from_url
from core.settings import Settings
from tests.auction.test_worker import live_intent
from tests.kafka_helpers import produce_json, read_all, start_role, stop_role, wait_until

BURST = 100
BURST_EVERY_S = 0.2


async def click_on_cpc_impressions(settings: Settings, stop: asyncio.Event, clicked: dict[str, str]) -> None:
    """Follow ad.impressions and send a raw click for every other CPC impression, as people would."""
    consumer = AIOKafkaConsumer(settings.topic("ad.impressions"), bootstrap_servers=settings.kafka,
                                isolation_level="read_committed", auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        n = 0
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300)
            raws = []
            for records in batch.values():
                for record in records:
                    impression = orjson.loads(record.value)
                    if impression["bid_type"] == "cpc":
                        n += 1
                        if n % 2 == 0:
                            click_id = f"k-{impression['impression_id']}"
                            clicked[click_id] = impression["campaign_id"]
                            raws.append({"schema_version": 1, "click_id": click_id,
                                         "impression_id": impression["impression_id"],
                                         "ts": impression["ts"] + 500, "user_id": impression["user_id"]})
            if raws:
                await produce_json(settings, "ad.clicks.raw", raws, "impression_id")
    finally:
        await consumer.stop()


@dataclass
class Published:
    """What the pipeline published, read back once the stream has drained."""

    decisions: list[dict[str, Any]]
    impressions: list[dict[str, Any]]
    billable_clicks: list[dict[str, Any]]
    ledger: list[dict[str, Any]]

    def billed(self) -> Counter[str]:
        """campaign_id → the sum of its ledger entries."""
        billed: Counter[str] = Counter()
        for entry in self.ledger:
            billed[entry["campaign_id"]] += entry["amount_micros"]
        return billed


@dataclass
class StreamedPipeline:
    """`total` intents on `topics` keywords from `people` people, streamed in bursts through the
    worker (instance `name`) and the attribution and billing roles, logs in `logs`."""

    settings: Settings
    logs: Path
    name: str
    topics: int
    people: int
    seed: int
    total: int = 3000
    events: list[dict[str, Any]] = field(init=False)
    clicked: dict[str, str] = field(default_factory=dict)  # click_id → campaign_id
    _stop_clicking: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _roles: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.events = [live_intent(f"{self.name}{i}", f"topic{rng.randrange(self.topics)}", slots=rng.randint(1, 2),
                                   user_id=f"p{rng.randrange(self.people)}")
                       for i in range(self.total)]

    @property
    def worker_log(self) -> Path:
        return self.logs / "worker.log"

    @property
    def streams_log(self) -> Path:
        return self.logs / "streams.log"

    async def start_roles(self) -> None:
        """Start the roles and the clicker; return once the namespace is reconciled (the roles do
        it at start in a new namespace), so that what breaks next lands on running roles."""
        env = self.settings.as_env()
        self._roles = [start_role(env, "auction", "--instance", self.name, log=self.worker_log),
                       start_role(env, "streams", "attribution", "billing", "--port", "0", log=self.streams_log)]
        self._tasks.append(asyncio.create_task(click_on_cpc_impressions(self.settings, self._stop_clicking,
                                                                        self.clicked)))
        client = sync_redis_from_url(self.settings.redis)
        try:
            reconciled = await wait_until(lambda: client.exists(self.settings.keys.reconciled()), timeout=120)
        finally:
            client.close()
        assert reconciled, f"the roles did not reconcile the namespace at start: {self.logs_tail()}"

    def start_stream(self) -> None:
        """The intents, in bursts: what breaks after this lands mid-flow."""
        self._tasks.append(asyncio.create_task(self._feed()))

    async def _feed(self) -> None:
        for start in range(0, self.total, BURST):
            await produce_json(self.settings, "chat.intents", self.events[start : start + BURST], "user_id")
            await asyncio.sleep(BURST_EVERY_S)

    async def drain(self) -> Published:
        """Wait for every intent's decision and every click's ledger entry; the clicker stops."""
        settings = self.settings
        await self._tasks[-1]  # the stream sent
        decisions = await read_all(settings, "ad.decisions", self.total, timeout=180, settle=3)
        await asyncio.sleep(3)  # the last impressions' clicks
        self._stop_clicking.set()
        await self._tasks[0]
        impressions = await read_all(settings, "ad.impressions", 0, timeout=30, settle=2)
        billable = await read_all(settings, "ad.clicks", len(self.clicked), timeout=120, settle=2)
        expected = {i["impression_id"] for i in impressions} | set(self.clicked)
        ledger = await read_all(settings, "billing.ledger", len(expected), timeout=180, settle=3)
        return Published(decisions, impressions, billable, ledger)

    async def stop(self) -> tuple[int, ...]:
        """Stop the clicker, the stream and the roles: the roles' exit codes."""
        self._stop_clicking.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return tuple(stop_role(role) for role in self._roles)

    def logs_tail(self) -> tuple[str, str]:
        return self.worker_log.read_text()[-3000:], self.streams_log.read_text()[-3000:]

    def assert_once_each(self, published: Published) -> None:
        """Every intent decided once, every impression published once, every click attributed
        once, every impression and billable click billed once."""
        per_event = Counter(d["event_id"] for d in published.decisions)
        assert set(per_event) == {e["event_id"] for e in self.events}, "an intent has no decision"
        assert max(per_event.values()) == 1, "an intent was decided twice"
        per_impression = Counter(i["impression_id"] for i in published.impressions)
        assert max(per_impression.values()) == 1, "an impression was published twice"
        assert sorted(c["click_id"] for c in published.billable_clicks) == sorted(self.clicked), \
            "a click was lost or attributed twice"
        entries = Counter(e["entry_id"] for e in published.ledger)
        assert {k: n for k, n in entries.items() if n > 1} == {}, "billed twice"
        expected = set(per_impression) | set(self.clicked)
        assert set(entries) == expected, f"not billed: {sorted(expected - set(entries))[:10]}"
