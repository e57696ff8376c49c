"""CTR feedback: ad.impressions + ad.clicks → per-campaign counts in Redis, where the auction worker
reads them to learn pCTR (`auction/live.py refresh_ctr`).

The campaign's `ctr` hash (core/keys.py), fields `impressions` and `clicks` (HINCRBY, one Lua call
per part). Exactly once by position: Redis keeps, next to the counts, the next offset counted per
input partition (`feedback_positions`, field `<topic>:<partition>`), and feedback.lua adds a part
only if those positions are what this process expects, all in one atomic step. Redis, not the
group's commit, is the authority: an assigned partition resumes where Redis says, a record
before that position is skipped, and the loop's commit of the offsets (with no outputs) only
keeps the group's lag honest.
"""

from __future__ import annotations

import logging
from importlib import resources

import orjson
from aiokafka import TopicPartition

from core.loop import Batch, Committed, Loop, LoopOptions, RoleBase, Step
from core.metrics import Metrics
from core.settings import Settings

log = logging.getLogger("vickrey.streams.feedback")
FEEDBACK_SCRIPT = resources.files("streams").joinpath("feedback.lua").read_text()
IMPRESSIONS = "ad.impressions"
CLICKS = "ad.clicks"


class PositionMoved(RuntimeError):
    """Redis holds other positions than this process expected: re-read them and resume there."""


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
        self._count = self.redis.register_script(FEEDBACK_SCRIPT)

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
        """Count the part into Redis with its positions, at once (Redis is the authority)."""
        increments: dict[str, list[int]] = {}
        moves: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            expected = self.counted_at.get(tp)
            slot = 1 if tp.topic == self.clicks_topic else 0
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
                increments.setdefault(campaign_id, [0, 0])[slot] += 1
            if expected is None or records[-1].offset + 1 > expected:
                moves[tp] = records[-1].offset + 1
        if moves:
            keys = self.settings.keys
            payload = orjson.dumps({
                "p": [[self._field(tp), _text(self.counted_at.get(tp)), str(nxt)] for tp, nxt in moves.items()],
                "c": [[keys.ctr(cid), imps, clicks] for cid, (imps, clicks) in increments.items()],
            })
            answer = await self._count(keys=[], args=[self.positions_key, payload])
            if answer != b"ok":
                raise PositionMoved(f"CTR positions in Redis moved under this process ({answer!r})")
            self.counted_at.update(moves)
            for imps, clicks in increments.values():
                self.counted.labels("impression").inc(imps)
                self.counted.labels("click").inc(clicks)
        return Step()


def _text(position: int | None) -> str:
    return "" if position is None else str(position)
