"""People's ad controls (docs/contract.md §4b): `user.controls` → Redis → `user.controls.applied`.

`ControlsRole` applies each control to the person's keys in Redis and confirms it on
`user.controls.applied`; the loop publishes the confirmations with the consumed offsets. Every
Redis step is idempotent (a set add, a flag, an erase), so a batch replayed after a crash leaves
the same state and the confirmation is published once. `AppliedListener` runs in every auction
worker and drops what that worker remembers about a person as soon as a `forget` is confirmed.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from auction.people import PeopleCache
from core.broadcast import BroadcastReader
from core.loop import Batch, LoopOptions, Output, RoleBase, Step
from core.metrics import Metrics
from core.settings import Settings
from schemas.codec import RecordError, applied_control, decode, encode

CONTROLS = "user.controls"
APPLIED = "user.controls.applied"
# Erase every per-person key: the ones listed in the person's key index (frequency caps,
# written by reserve.lua) and the fixed ones. One script, so nothing is added halfway.
FORGET_SCRIPT = """
local listed = redis.call("SMEMBERS", KEYS[1])
local erased = 0
for _, key in ipairs(listed) do erased = erased + redis.call("DEL", key) end
erased = erased + redis.call("DEL", KEYS[1], KEYS[2], KEYS[3])
return erased
"""


class ControlsRole(RoleBase):
    name = "controls"
    inputs = (CONTROLS,)
    options = LoopOptions(batch_max=500, fetch_max_wait_ms=100)

    def __init__(self, settings: Settings, redis: Redis, metrics: Metrics) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.client = redis  # the worker's client, shared with the auction role (closed by the worker)
        self.applied_topic = settings.topic(APPLIED)
        self._forget = redis.register_script(FORGET_SCRIPT)
        self.applied = metrics.counter("vickrey_controls_applied_total", "User controls applied, by action", ("action",))

    async def process(self, batch: Batch, now_ms: int) -> Step:
        outputs: list[Output] = []
        for records in batch.values():
            for record in records:
                try:
                    control = decode(CONTROLS, record.value)
                except RecordError as error:
                    outputs.append(self.loop.dlq(record, error, now_ms))
                    continue
                await self.apply(control)
                confirmation = applied_control(control, record.partition, record.offset, now_ms)
                outputs.append((self.applied_topic, control["user_id"].encode(), encode(confirmation)))
                self.applied.labels(control["action"]).inc()
        return Step(outputs)

    async def apply(self, control: dict[str, Any]) -> None:
        keys, user, action = self.keys, control["user_id"], control["action"]
        if action == "forget":
            await self._forget(keys=[keys.person_keys(user), keys.hidden(user), keys.prefs(user)])
        elif action == "hide_advertiser":
            await self.client.sadd(keys.hidden(user), control["advertiser_id"])
        else:  # personalization_off / personalization_on
            await self.client.hset(keys.prefs(user), "personalization", "off" if action == "personalization_off" else "on")


class AppliedListener(BroadcastReader):
    """Every worker reads every confirmation (no consumer group), from the moment it starts:
    what it remembered about a forgotten person goes within milliseconds."""

    def __init__(self, settings: Settings, people: PeopleCache) -> None:
        super().__init__(settings, APPLIED, self._apply, start="latest")
        self.people = people

    def _apply(self, confirmation: dict[str, Any]) -> None:
        if confirmation["action"] == "forget":
            self.people.forget(confirmation["user_id"])
