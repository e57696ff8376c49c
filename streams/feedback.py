"""CTR feedback: ad.impressions + ad.clicks → per-campaign counts in Redis, where the auction worker
reads them to learn pCTR (`auction/live.py refresh_ctr`).

The campaign's `ctr` hash (core/keys.py), fields `impressions` and `clicks`. Exactly once by
position, per campaign: next to its counts each campaign keeps, per input partition, the next
offset counted into it (`ctr_positions`), and feedback.lua counts a campaign's records of a batch
only from there, in one atomic step on the campaign's hash slot (one call per campaign, pipelined:
it runs on a Redis Cluster as on one Redis). A batch read again (a crash, a rewind, another process
that had the partition) therefore counts nothing twice. Where the role resumes is kept apart
(`feedback_positions`, written after the counts): behind at worst, which only re-reads records the
campaigns skip. The loop's commit of the offsets (with no outputs) only keeps the group's lag honest.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import orjson
from aiokafka import TopicPartition

from core.loop import Batch, Committed, Loop, LoopOptions, RoleBase, Step
from core.metrics import Metrics
from core.redis_client import PipelineScripts
from core.settings import Settings

log = logging.getLogger("vickrey.streams.feedback")
FEEDBACK_SCRIPT = resources.files("streams").joinpath("feedback.lua").read_text()
IMPRESSIONS = "ad.impressions"
CLICKS = "ad.clicks"


class Feedback(RoleBase):
    name = "feedback"
    inputs = (IMPRESSIONS, CLICKS)

    def __init__(self, settings: Settings, metrics: Metrics, batch_max: int = 2000) -> None:
        self.settings = settings
        self.options = LoopOptions(batch_max=batch_max, fetch_max_wait_ms=20, session_timeout_ms=6_000,
                                   heartbeat_interval_ms=1_000)
        self.clicks_topic = settings.topic(CLICKS)
        self.positions_key = settings.keys.feedback_positions()
        self.counted_at: dict[TopicPartition, int | None] = {}  # next offset counted, as Redis has it
        self.counted = metrics.counter("vickrey_feedback_counted_total", "Records counted into CTR, by kind", ("kind",))
        self.unreadable = metrics.counter("vickrey_feedback_unreadable_total", "Records without a readable campaign_id")

    async def start(self, loop: Loop) -> None:
        await super().start(loop)
        self._scripts = PipelineScripts(self.redis, FEEDBACK_SCRIPT)
        self._count = self._scripts.scripts[0]

    async def _count_in(self, offsets: dict[str, dict[tuple[str, str], list[int]]]) -> None:
        """One feedback.lua call per campaign, pipelined; counts what was not counted before."""
        keys = self.settings.keys
        await self._scripts.ready()
        pipe: Any = self.redis.pipeline(transaction=False)
        for campaign_id, parts in offsets.items():
            payload = orjson.dumps([[field, kind, part_offsets] for (field, kind), part_offsets in parts.items()])
            await self._count(keys=[keys.ctr(campaign_id), keys.ctr_positions(campaign_id)], args=[payload], client=pipe)
        for raw in await self._scripts.execute(pipe):
            impressions, clicks = orjson.loads(raw)
            self.counted.labels("impression").inc(impressions)
            self.counted.labels("click").inc(clicks)

    @staticmethod
    def _field(tp: TopicPartition) -> str:
        return f"{tp.topic}:{tp.partition}"

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        """Resume where Redis says the counts are."""
        partitions = list(committed)
        stored = await self.redis.hmget(self.positions_key, [self._field(tp) for tp in partitions]) if partitions else []
        resume: dict[TopicPartition, int] = {}
        for tp, value in zip(partitions, stored, strict=True):
            self.counted_at[tp] = None if value is None else int(value)
            if value is not None:
                resume[tp] = int(value)
        return resume

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.counted_at.pop(tp, None)

    async def process(self, batch: Batch, now_ms: int) -> Step:
        """Count the part into each campaign (exactly once by offset), then move where to resume."""
        offsets: dict[str, dict[tuple[str, str], list[int]]] = {}  # campaign → (partition, kind) → offsets
        moves: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            expected = self.counted_at.get(tp)
            part = (self._field(tp), "clicks" if tp.topic == self.clicks_topic else "impressions")
            for record in records:
                if expected is not None and record.offset < expected:
                    continue  # counted before
                try:
                    campaign_id = orjson.loads(record.value or b"")["campaign_id"]
                    if not isinstance(campaign_id, str):
                        raise TypeError(campaign_id)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.unreadable.inc()
                    continue
                offsets.setdefault(campaign_id, {}).setdefault(part, []).append(record.offset)
            if expected is None or records[-1].offset + 1 > expected:
                moves[tp] = records[-1].offset + 1
        if moves:
            await self._count_in(offsets)
            await self.redis.hset(self.positions_key, mapping={self._field(tp): nxt for tp, nxt in moves.items()})
            self.counted_at.update(moves)
        return Step()


