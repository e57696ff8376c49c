"""The exactly-once loop (core/loop.py) on its own, on the real Kafka: a role that copies records
from one topic to another, under every failure the loop's policy names. Each test checks the
same thing at the end: every input record has exactly one output record, and the group has
committed every input offset.

The auction worker's own tests (tests/auction/test_worker*.py) run the same failures through
the real worker with Redis: SIGKILL at random points, failed commits, workers joining and
leaving."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, NodeNotReadyError

from core.loop import Batch, Committed, Loop, LoopOptions, RoleBase, Step
from core.metrics import Metrics
from core.settings import Settings
from loadtests import workload
from loadtests.stack import committed, end_offsets
from tests.conftest import ROOT
from tests.kafka_helpers import produce, read_all, wait_until

pytestmark = pytest.mark.integration
INPUT, OUTPUT = "ad.clicks.raw", "ad.clicks"


class Copy(RoleBase):
    """Copies every record to OUTPUT; `fail_on` process calls raise instead."""

    name = "copy"
    inputs = (INPUT,)

    def __init__(self, settings: Settings, fail_on: set[int] | None = None, batch_max: int = 50) -> None:
        self.options = LoopOptions(batch_max=batch_max, fetch_max_wait_ms=20, session_timeout_ms=6_000,
                                   heartbeat_interval_ms=1_000)
        self.output = settings.topic(OUTPUT)
        self.fail_on = fail_on or set()
        self.calls = 0

    async def process(self, batch: Batch, now_ms: int) -> Step:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError(f"injected failure in process call {self.calls}")
        return Step([(self.output, record.key, record.value) for records in batch.values() for record in records])


class CopyLater(Copy):
    """Copies like `Copy`, the second half of each part in the step's rest, which finishes after a
    random few milliseconds (so rests end out of part order); the rests of `fail_rest_on` process
    calls raise."""

    def __init__(self, settings: Settings, fail_rest_on: set[int] | None = None) -> None:
        super().__init__(settings)
        self.fail_rest_on = fail_rest_on or set()
        self.rng = random.Random(7)
        self.running = 0  # rests not yet ended
        self.hooks_beside_a_rest = 0

    async def process(self, batch: Batch, now_ms: int) -> Step:
        step = await super().process(batch, now_ms)
        await asyncio.sleep(0)  # a process that yields, as the auction's does between its chunks
        half = len(step.outputs) // 2
        later, delay, call = step.outputs[half:], self.rng.uniform(0, 0.02), self.calls
        self.running += 1

        async def rest() -> Step:
            try:
                await asyncio.sleep(delay)
                if call in self.fail_rest_on:
                    raise RuntimeError(f"injected failure in the rest of process call {call}")
                return Step(later)
            finally:
                self.running -= 1

        return Step(step.outputs[:half], rest=asyncio.ensure_future(rest()))

    async def on_revoked(self, partitions: list[TopicPartition]) -> None:
        self.hooks_beside_a_rest += self.running > 0

    async def on_assigned(self, committed: Committed) -> dict[TopicPartition, int]:
        self.hooks_beside_a_rest += self.running > 0
        return {}


def numbered(start: int, count: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{n % 17}".encode(), orjson.dumps({"n": n})) for n in range(start, start + count)]


async def caught_up(settings: Settings, group: str, topic: str, timeout: float = 90) -> None:
    ends = await end_offsets(settings, settings.topic(topic))

    async def done() -> bool:
        found = await committed(settings, group)
        return all(found.get(tp, 0) >= end for tp, end in ends.items())

    assert await wait_until(done, timeout=timeout), "the loop stopped consuming"


async def assert_once_each(settings: Settings, total: int) -> None:
    outputs = Counter(record["n"] for record in await read_all(settings, OUTPUT, total, timeout=60, settle=2))
    assert sorted(outputs) == list(range(total)), "a record has no output"
    assert max(outputs.values()) == 1, f"copied twice: {[n for n, c in outputs.items() if c > 1][:10]}"


@asynccontextmanager
async def running(loop: Loop) -> AsyncIterator[asyncio.Task[None]]:
    await loop.start()
    task = asyncio.create_task(loop.run())
    try:
        yield task
    finally:
        loop.stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await loop.close()


def copy_loop(settings: Settings, role: Copy | None = None, instance: str | None = None,
              metrics: Metrics | None = None) -> Loop:
    return Loop(settings, role or Copy(settings), metrics or Metrics(), asyncio.Event(), instance)


async def test_a_failed_process_is_consumed_again_and_copied_once(topics: Settings) -> None:
    await produce(topics, INPUT, numbered(0, 300))
    metrics = Metrics()
    async with running(copy_loop(topics, Copy(topics, fail_on={2, 5}), metrics=metrics)):
        await caught_up(topics, topics.group("copy"), INPUT)
    assert metrics.value("vickrey_batch_failures_total", role="copy", stage="process") == 2
    await assert_once_each(topics, 300)


async def test_a_failed_commit_is_consumed_again_and_copied_once(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = copy_loop(topics)
    send_offsets = AIOKafkaProducer.send_offsets_to_transaction
    calls = Counter[str]()

    async def flaky(producer: AIOKafkaProducer, offsets: Any, group_id: str) -> Any:
        calls["all"] += 1
        if calls["all"] in (2, 3, 6):
            raise KafkaError("injected: the offsets could not be added to the transaction")
        return await send_offsets(producer, offsets, group_id)

    # On the class: a failed commit replaces the loop's producer, and the new one fails too.
    monkeypatch.setattr(AIOKafkaProducer, "send_offsets_to_transaction", flaky)
    async with running(loop):
        for start in range(0, 400, 40):  # in bursts, so commits fail while the next batch gathers
            await produce(topics, INPUT, numbered(start, 40))
        await caught_up(topics, topics.group("copy"), INPUT)
    assert loop.metrics.value("vickrey_batch_failures_total", role="copy", stage="commit") == 3
    await assert_once_each(topics, 400)


async def test_rests_publish_in_part_order_and_copy_once(topics: Settings) -> None:
    """Rests that end out of order: each key's records still come out in input order."""
    async with running(copy_loop(topics, CopyLater(topics))):
        for start in range(0, 600, 30):  # in bursts, so parts gather while a commit is in flight
            await produce(topics, INPUT, numbered(start, 30))
        await caught_up(topics, topics.group("copy"), INPUT)
    await assert_once_each(topics, 600)
    by_key: dict[int, list[int]] = {}
    for record in await read_all(topics, OUTPUT, 600, timeout=60, settle=1):
        by_key.setdefault(record["n"] % 17, []).append(record["n"])
    assert all(ns == sorted(ns) for ns in by_key.values()), "a key's records came out of order"


async def test_a_failed_rest_is_consumed_again_and_copied_once(topics: Settings) -> None:
    await produce(topics, INPUT, numbered(0, 300))
    metrics = Metrics()
    role = CopyLater(topics, fail_rest_on={2, 5})
    async with running(copy_loop(topics, role, metrics=metrics)):
        await caught_up(topics, topics.group("copy"), INPUT)
    assert metrics.value("vickrey_batch_failures_total", role="copy", stage="process") == 2
    assert role.hooks_beside_a_rest == 0
    await assert_once_each(topics, 300)


async def test_members_with_rests_joining_and_leaving_copy_once(topics: Settings) -> None:
    roles = [CopyLater(topics), CopyLater(topics)]
    first, second = copy_loop(topics, roles[0]), copy_loop(topics, roles[1])
    async with running(first):
        await produce(topics, INPUT, numbered(0, 200))
        async with running(second):
            await produce(topics, INPUT, numbered(200, 200))
        await produce(topics, INPUT, numbered(400, 200))
        await caught_up(topics, topics.group("copy"), INPUT)
    await assert_once_each(topics, 600)
    assert [role.hooks_beside_a_rest for role in roles] == [0, 0], "a hook ran while a rest was running"


async def test_an_assignment_whose_offsets_cannot_be_read_is_retried(topics: Settings) -> None:
    """Seen with three brokers, one of them just killed: the admin asked the dead broker for the
    group's committed offsets while the new assignment was being restored. The listener's error
    left the loop rebalancing for good: it held its partitions and processed nothing."""
    await produce(topics, INPUT, numbered(0, 200))
    metrics = Metrics()
    loop = copy_loop(topics, metrics=metrics)
    read_offsets = loop.admin.list_consumer_group_offsets
    calls = Counter[str]()

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["all"] += 1
        if calls["all"] <= 2:
            raise NodeNotReadyError("injected: the coordinator's broker is down")
        return await read_offsets(*args, **kwargs)

    loop.admin.list_consumer_group_offsets = flaky  # type: ignore[method-assign]
    async with running(loop) as task:
        await caught_up(topics, topics.group("copy"), INPUT, timeout=60)
        assert not task.done()
    assert metrics.value("vickrey_batch_failures_total", role="copy", stage="assignment") == 1
    await assert_once_each(topics, 200)


async def test_a_producer_left_in_a_fatal_state_is_replaced(topics: Settings) -> None:
    """What a broker restart once did in CI: aiokafka's producer went to its fatal state (its
    sender task had died), in which no transaction can begin again. The loop replaces it at the
    failed commit and goes on at once, not after GIVE_UP_S of failing retries."""
    metrics = Metrics()
    loop = copy_loop(topics, metrics=metrics)
    async with running(loop) as task:
        await produce(topics, INPUT, numbered(0, 100))
        await caught_up(topics, topics.group("copy"), INPUT, timeout=30)
        broken = loop.producer
        # aiokafka's own path to this state (Sender._fail_all when its task dies), forced here.
        broken._txn_manager.fatal_error(KafkaError("injected: the sender task died"))  # noqa: SLF001
        await produce(topics, INPUT, numbered(100, 200))
        await caught_up(topics, topics.group("copy"), INPUT, timeout=30)
        assert not task.done()
        assert loop.producer is not broken
    assert metrics.value("vickrey_batch_failures_total", role="copy", stage="commit") >= 1
    await assert_once_each(topics, 300)


async def test_a_fenced_producer_stops_its_loop_and_the_newcomer_carries_on(topics: Settings) -> None:
    """Another process with the same instance name (so the same transactional id) fences this
    one: its loop stops for good, and nothing is lost or copied twice."""
    await produce(topics, INPUT, numbered(0, 200))
    first = copy_loop(topics, instance="same")
    async with running(first) as first_task:
        await caught_up(topics, topics.group("copy"), INPUT)
        second = copy_loop(topics, instance="same")
        async with running(second):
            await produce(topics, INPUT, numbered(200, 200))
            with pytest.raises(KafkaError):
                await asyncio.wait_for(first_task, 60)
            await caught_up(topics, topics.group("copy"), INPUT)
    await assert_once_each(topics, 400)


async def test_members_joining_and_leaving_mid_stream_copy_once(topics: Settings) -> None:
    first, second = copy_loop(topics), copy_loop(topics)
    async with running(first):
        await produce(topics, INPUT, numbered(0, 200))
        async with running(second):
            await produce(topics, INPUT, numbered(200, 200))
        await produce(topics, INPUT, numbered(400, 200))  # the second one has left
        await caught_up(topics, topics.group("copy"), INPUT)
    await assert_once_each(topics, 600)


async def test_stop_commits_what_was_taken_and_nothing_else(topics: Settings) -> None:
    """SIGTERM (the stop event) mid-stream: the batch in hand is committed with its outputs; what
    was not committed has no output, and a later run copies it once."""
    loop = copy_loop(topics)
    async with running(loop) as task:
        feeder = asyncio.create_task(produce(topics, INPUT, numbered(0, 1000)))
        await wait_until(lambda: loop.metrics.value("vickrey_records_committed_total", role="copy") > 100, timeout=30)
        loop.stop.set()
        await asyncio.wait_for(task, 30)
        await feeder
    done = sum((await committed(topics, topics.group("copy"))).values())
    assert done > 100 and len(await read_all(topics, OUTPUT, done, timeout=30, settle=2)) == done
    async with running(copy_loop(topics)):
        await caught_up(topics, topics.group("copy"), INPUT)
    await assert_once_each(topics, 1000)


async def test_sigkill_at_random_points_copies_once(topics: Settings, env: dict[str, str]) -> None:
    """The loop in a process of its own (loadtests.txn_loop: one decision per intent), SIGKILLed at
    random points and restarted under the same name: every intent decided exactly once."""
    intents = workload.intents(3000, tag="kill")
    await produce(topics, "chat.intents", [(i["user_id"].encode(), orjson.dumps(i)) for i in intents])
    group = topics.group("txn-kill")
    argv = [sys.executable, "-m", "loadtests.txn_loop", "--group", group, "--impressions", "0"]
    rng = random.Random(3)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    proc = start()
    try:
        for _ in range(4):
            await asyncio.sleep(rng.uniform(2.0, 5.0))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            proc = start()
        await caught_up(topics, group, "chat.intents", timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    decided = Counter(d["event_id"] for d in await read_all(topics, "ad.decisions", len(intents), timeout=60, settle=2))
    assert set(decided) == {i["event_id"] for i in intents}
    assert max(decided.values()) == 1


KAFKA_PIDFILE = ROOT / ".local" / "run" / "kafka.pid"


def restart_broker() -> None:
    """SIGTERM the broker `make up` started, wait for it to go, start it again (ops/up.sh)."""
    pid = int(KAFKA_PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not os.path.exists(f"/proc/{pid}"):
            break
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
        if stat.split(") ")[1].startswith("Z"):
            break
        time.sleep(0.1)
    subprocess.run(["bash", "ops/up.sh"], cwd=ROOT, check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(not KAFKA_PIDFILE.exists(), reason="the broker was not started by `make up`: the test restarts only its own")
async def test_a_broker_restart_mid_stream_loses_and_doubles_nothing(topics: Settings) -> None:
    metrics = Metrics()
    async with running(copy_loop(topics, metrics=metrics)) as task:
        for start in range(0, 500, 50):
            await produce(topics, INPUT, numbered(start, 50))
        await wait_until(lambda: metrics.value("vickrey_records_committed_total", role="copy") > 0, timeout=30)
        await asyncio.to_thread(restart_broker)
        for start in range(500, 1000, 50):
            await produce(topics, INPUT, numbered(start, 50))
        await caught_up(topics, topics.group("copy"), INPUT, timeout=150)
        assert not task.done(), "the loop gave up"
    await assert_once_each(topics, 1000)
