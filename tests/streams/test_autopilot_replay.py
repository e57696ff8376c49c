"""The autopilot's idempotence under at-least-once (streams/autopilot.py), step by step on a real
Redis: the crash windows a SIGKILL hits only by luck, made on purpose. The Faust table and the
output topic are stood in for by a dict and a list (what Faust would keep and send); everything
the autopilot reads and writes in Redis is real."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
import redis

from core.settings import Settings
from schemas.codec import validate
from streams.autopilot import Autopilot
from tests.streams.test_autopilot import DAY_START, WINDOW_MS, auto_campaign, store_campaigns, window

pytestmark = pytest.mark.integration
HOUR = DAY_START + 8 * 3_600_000


class Sent:
    """What the autopilot sends to campaigns.autopilot, in order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def send(self, key: bytes, value: bytes) -> None:
        record = orjson.loads(value)
        validate("campaigns.autopilot", record)
        assert key == record["campaign_id"].encode()
        self.records.append(record)


async def run_windows(autopilot: Autopilot, dud: str, first: int, last: int) -> None:
    for n in range(first, last):
        await autopilot.absorb("volt-auto", window("volt-auto", HOUR + n * WINDOW_MS, 40, 2, dud=dud), offset=n)


@pytest.fixture
async def dud(settings: Settings, redis_client: redis.Redis) -> str:
    await store_campaigns(settings, [auto_campaign("volt-auto")])
    stored = orjson.loads(redis_client.hget(settings.keys.campaigns(), "volt-auto") or b"{}")
    return str(sorted({item["term"] for item in stored["targeting_derived"]["keywords"]} - {"power bank"})[0])


def autopilot_for(settings: Settings, table: dict[str, Any], sent: Sent, published: dict[str, int]) -> Autopilot:
    return Autopilot(settings.with_(autopilot_decide_every_s=2), table, sent, published)


async def test_a_replayed_window_is_counted_once(settings: Settings, dud: str) -> None:
    table: dict[str, Any] = {}
    autopilot = autopilot_for(settings, table, Sent(), {})
    try:
        await run_windows(autopilot, dud, 0, 3)
        counted = copy.deepcopy(table["volt-auto"])
        await run_windows(autopilot, dud, 0, 3)  # the same offsets again: a replay after a restart
    finally:
        await autopilot.close()
    assert table["volt-auto"] == counted
    assert counted["pilot"]["today"][0] == 3 * 40


async def test_a_decision_the_table_lost_is_adopted_not_made_again(settings: Settings, dud: str,
                                                                    redis_client: redis.Redis) -> None:
    """The process recorded and published decisions, then died before its table kept them: the
    restarted pilot (older state, same windows replayed) adopts them and publishes nothing again."""
    table: dict[str, Any] = {}
    sent = Sent()
    published: dict[str, int] = {}
    autopilot = autopilot_for(settings, table, sent, published)
    try:
        await run_windows(autopilot, dud, 0, 2)
        before = copy.deepcopy(table)  # what the changelog held when the process died
        await run_windows(autopilot, dud, 2, 12)
        assert any(dud in r["keywords_removed"] for r in sent.records), [r["reason"] for r in sent.records]
        latest = sent.records[-1]
    finally:
        await autopilot.close()

    restarted_sent = Sent()
    restarted = autopilot_for(settings, before, restarted_sent, dict(published))
    try:
        await run_windows(restarted, dud, 2, 12)  # the windows after the lost state, read again
        assert restarted_sent.records == [] or restarted_sent.records[0]["version"] > latest["version"]
        pilot = before["volt-auto"]["pilot"]
        assert pilot["version"] >= latest["version"] and dud not in pilot["keywords"]
        await run_windows(restarted, dud, 12, 20)  # and life goes on from there
    finally:
        await restarted.close()
    versions = [r["version"] for r in sent.records + restarted_sent.records]
    assert versions == list(range(1, len(versions) + 1)), versions
    assert sum(dud in r["keywords_removed"] for r in sent.records + restarted_sent.records) == 1
    history = [orjson.loads(m)["version"] for m in redis_client.zrange(settings.keys.autopilot("volt-auto"), 0, -1)]
    assert history == versions


async def crash_losing_sends(settings: Settings, dud: str, windows: int, lost_count: int
                             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Decide on `windows` windows, then lose the last `lost_count` sends (recorded in Redis, never
    on the topic: the process died in between); a restarted process, which read the topic at
    start, takes as many windows again. (What reached the topic, what was lost, what the restarted
    one sent.)"""
    table: dict[str, Any] = {}
    sent = Sent()
    autopilot = autopilot_for(settings, table, sent, {})
    try:
        await run_windows(autopilot, dud, 0, windows)
    finally:
        await autopilot.close()
    assert len(sent.records) > lost_count
    lost = sent.records[-lost_count:]  # never written
    del sent.records[-lost_count:]
    on_topic = {"volt-auto": sent.records[-1]["version"]}
    restarted_sent = Sent()
    restarted = autopilot_for(settings, table, restarted_sent, on_topic)
    try:
        await run_windows(restarted, dud, windows, windows + 6)
    finally:
        await restarted.close()
    return sent.records, lost, restarted_sent.records


async def test_a_decision_the_topic_lost_is_published_once_on_restart(settings: Settings, dud: str) -> None:
    """Recorded in Redis, never reached campaigns.autopilot (the process died in between): the next
    process, which read the topic at start, publishes it once, then goes on."""
    on_topic, lost, restarted = await crash_losing_sends(settings, dud, windows=6, lost_count=1)
    assert restarted[0] == lost[0]
    versions = [r["version"] for r in on_topic + restarted]
    assert versions == list(range(1, len(versions) + 1)), versions


async def test_several_decisions_the_topic_lost_are_all_published_in_order(settings: Settings, dud: str) -> None:
    """A burst of windows makes several decisions in a row; the process recorded them all and died
    before its producer sent the last two: the next process publishes both, in order, once."""
    on_topic, lost, restarted = await crash_losing_sends(settings, dud, windows=8, lost_count=2)
    assert restarted[:2] == lost
    versions = [r["version"] for r in on_topic + restarted]
    assert versions == list(range(1, len(versions) + 1)), versions
