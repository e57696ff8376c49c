"""CTR feedback: ad.impressions + ad.clicks → per-campaign counts in Redis, where the auction worker
reads them to learn pCTR (`auction/live.py refresh_ctr`).

`{ns}:{c:<campaign_id>}:ctr` hash, fields `impressions` and `clicks` (HINCRBY, one Lua call per
batch). Exactly once without Kafka transactions: Redis keeps, next to the counts, the next offset
counted per input partition (`{ns}:streams:feedback:offsets`, field `<topic>:<partition>`), and
feedback.lua adds a batch only if those positions are what this process expects, all in one atomic
step. A restarted or newly assigned process seeks to the positions Redis holds, so a record is
counted once whatever crashes where; Kafka commits are only for lag monitoring.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from redis.asyncio import Redis

from streams.common import Batch, Step, StreamRole
from vickrey.metrics import Metrics
from vickrey.settings import Settings

log = logging.getLogger("vickrey.streams.feedback")
FEEDBACK_SCRIPT = Path(__file__).with_name("feedback.lua").read_text()
IMPRESSIONS = "ad.impressions"
CLICKS = "ad.clicks"


class PositionMoved(RuntimeError):
    """Redis holds other positions than this process expected: re-read them and resume there."""


class Feedback(StreamRole):
    name = "feedback"
    inputs = (IMPRESSIONS, CLICKS)
    transactional = False

    def __init__(self, settings: Settings, registry: Metrics, stop: asyncio.Event, batch_max: int = 2000) -> None:
        super().__init__(settings, registry, stop, batch_max)
        self.clicks_topic = self.topic(CLICKS)
        self.positions_key = settings.key("streams", "feedback", "offsets")
        self.applied: dict[TopicPartition, int | None] = {}  # next offset counted, as Redis has it
        self.pending: dict[TopicPartition, int] = {}  # positions after the batch being committed
        self.counted = registry.counter("vickrey_streams_feedback_counted_total", "Records counted into CTR, by kind")
        self.redis: Redis | None = None
        self._increments: dict[str, list[int]] = {}

    async def setup(self) -> None:
        self.redis = Redis.from_url(self.settings.redis)
        self._apply = self.redis.register_script(FEEDBACK_SCRIPT)

    async def teardown(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    @staticmethod
    def _field(tp: TopicPartition) -> str:
        return f"{tp.topic}:{tp.partition}"

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.redis is not None
        stored = await self.redis.hmget(self.positions_key, [self._field(tp) for tp in assigned])
        for tp, value in zip(assigned, stored, strict=True):
            self.applied[tp] = None if value is None else int(value)
            if value is not None:
                self.consumer.seek(tp, int(value))  # Redis, not the group commit, says what was counted

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.applied.pop(tp, None)

    async def process(self, batch: Batch, now_ms: int) -> Step:
        increments: dict[str, list[int]] = {}
        self.pending = {}
        for tp, records in batch.items():
            expected = self.applied.get(tp)
            slot = 1 if tp.topic == self.clicks_topic else 0
            for record in records:
                if expected is not None and record.offset < expected:
                    continue  # counted before
                try:
                    campaign_id = orjson.loads(record.value or b"")["campaign_id"]
                    if not isinstance(campaign_id, str):
                        raise TypeError(campaign_id)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.metrics.unreadable.inc(topic=tp.topic)
                    continue
                increments.setdefault(campaign_id, [0, 0])[slot] += 1
            if expected is None or records[-1].offset + 1 > expected:
                self.pending[tp] = records[-1].offset + 1
        self._increments = increments
        return Step(offsets=dict(self.pending))

    async def commit(self, step: Step) -> None:
        """Counts and positions in one Lua call; then the group commit, for lag only."""
        payload = orjson.dumps(
            {
                "p": [[self._field(tp), _text(self.applied.get(tp)), str(nxt)] for tp, nxt in self.pending.items()],
                "c": [[self.settings.key(f"{{c:{cid}}}", "ctr"), imps, clicks] for cid, (imps, clicks) in self._increments.items()],
            }
        )
        answer = await self._apply(keys=[], args=[self.positions_key, payload])
        if answer != b"ok":
            raise PositionMoved(f"CTR positions in Redis moved under this process ({answer!r})")
        for tp, nxt in self.pending.items():
            self.applied[tp] = nxt
        for imps, clicks in self._increments.values():
            self.counted.inc(imps, kind="impression")
            self.counted.inc(clicks, kind="click")
        try:
            await self.consumer.commit({tp: nxt for tp, nxt in self.pending.items()})
        except Exception as exc:  # only monitoring depends on it
            log.warning("group commit failed", extra={"error": str(exc)})


def _text(position: int | None) -> str:
    return "" if position is None else str(position)
