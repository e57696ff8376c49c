"""How long decisions stop when a broker dies (`make bench CLUSTER=1`, key `failover_pause_ms`).

On the three-broker cluster (`make up BROKERS=3`): one auction worker on a fresh stack, intents
offered at a steady rate (half the worker's maximum in `make bench`) by an idempotent producer
(acks=all, so the generator itself loses nothing), the broker leading most of the stack's
partitions SIGKILLed a few seconds in and started again a few seconds later (`BROKERS=3 bash
ops/up.sh`). The pause is the longest gap between consecutive decisions (their `ts_decided`)
from the kill on; every intent must still be decided exactly once.

    python -m loadtests.failover --rate 5000     (with VICKREY_KAFKA naming the three brokers)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from core.settings import Settings
from core.topics import admin_client
from loadtests import workload
from loadtests.stack import (
    ROOT,
    apply,
    cleanup,
    create_topics,
    isolated,
    new_tag,
    partitions_of,
    start_vickrey,
    stop_process,
    wait_for_group,
)

RUN = ROOT / ".local" / "run"
NODES = (1, 2, 3)
ACTIVE_CAMPAIGNS = 1_000  # the throughput stage's
LED_TOPICS = ("chat.intents", "ad.decisions", "ad.impressions")


def cluster_running() -> bool:
    """The three brokers of `make up BROKERS=3` are up (their pid files are there)."""
    return all((RUN / f"kafka-{node}.pid").exists() for node in NODES)


async def busiest_broker(settings: Settings) -> tuple[int, int]:
    """(node id, partitions it leads) among the stack's busiest topics."""
    async with admin_client(settings) as admin:
        described = await admin.describe_topics([settings.topic(name) for name in LED_TOPICS])
    led = Counter(partition["leader"] for topic in described for partition in topic["partitions"])
    return led.most_common(1)[0]


def kill_broker(node: int) -> None:
    os.kill(int((RUN / f"kafka-{node}.pid").read_text().strip()), signal.SIGKILL)


def restart_missing_broker() -> None:
    subprocess.run(["bash", "ops/up.sh"], cwd=ROOT, env=dict(os.environ, BROKERS="3"), check=True,
                   capture_output=True, timeout=180)


async def _offer(settings: Settings, records: list[tuple[bytes, bytes]], rate: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, acks="all", enable_idempotence=True, linger_ms=2)
    await producer.start()
    try:
        topic, began, i = settings.topic("chat.intents"), time.perf_counter(), 0
        while i < len(records):
            due = min(len(records), int((time.perf_counter() - began) * rate) + 1)
            while i < due:
                key, value = records[i]
                await producer.send(topic, value, key=key)
                i += 1
            await asyncio.sleep(0.002)
        await producer.flush()
    finally:
        await producer.stop()


async def _decided_at(settings: Settings, expect: int, timeout: float) -> list[tuple[str, int]]:
    """(event_id, ts_decided) of every decision, once `expect` are there (or at the timeout)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, isolation_level="read_committed",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[str, int]] = []
    try:
        consumer.assign(await partitions_of(consumer, settings.topic("ad.decisions")))
        deadline = time.monotonic() + timeout
        while len(found) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    decision = orjson.loads(record.value or b"{}")
                    found.append((decision["event_id"], int(decision["ts_decided"])))
    finally:
        await consumer.stop()
    return found


async def failover_pause(base: Settings, rate: float, seconds: float = 20.0, kill_after_s: float = 5.0,
                         down_s: float = 5.0, progress: Callable[[str], None] | None = None,
                         log: Path | None = None) -> dict[str, Any]:
    """Offer `rate` intents/s for `seconds`, kill the busiest broker after `kill_after_s`, start it
    again `down_s` later; the longest gap in decisions from the kill on, and the exactly-once count."""
    if not cluster_running():
        raise RuntimeError("needs the three-broker cluster: make up BROKERS=3")
    say = progress or (lambda _message: None)
    stack = isolated(base, new_tag("benchF"), partitions=6)
    proc = None
    try:
        await create_topics(stack)
        await apply(stack, workload.campaigns(n=ACTIVE_CAMPAIGNS, advertisers=300, tag="w"))
        proc = start_vickrey(stack, "auction", "--instance", "failover", log=log)
        if not await wait_for_group(stack, stack.group("auction"), 90, proc):
            raise RuntimeError(f"the worker did not start; see {log}")
        intents = workload.intents(int(rate * seconds), seed=77, tag="f")
        records = [(i["user_id"].encode(), orjson.dumps(i)) for i in intents]
        say(f"failover: {rate:,.0f} intents/s for {seconds:g} s; the busiest broker killed after {kill_after_s:g} s")
        offering = asyncio.create_task(_offer(stack, records, rate))
        await asyncio.sleep(kill_after_s)
        node, led = await busiest_broker(stack)
        killed_ms = int(time.time() * 1000)
        kill_broker(node)
        say(f"failover: broker {node} (leader of {led} partitions) killed")
        await asyncio.sleep(down_s)
        began = time.monotonic()
        await asyncio.to_thread(restart_missing_broker)
        restart_s = time.monotonic() - began
        say(f"failover: broker {node} answering again after {restart_s:.1f} s")
        await offering
        decided = await _decided_at(stack, len(records), timeout=180)
    finally:
        if proc is not None:
            stop_process(proc)
        await cleanup(stack)
    per_event = Counter(event_id for event_id, _ in decided)
    after = sorted(ts for _, ts in decided if ts >= killed_ms - 1000)
    gaps = [later - earlier for earlier, later in zip(after, after[1:], strict=False)]
    first_after_kill = next((ts for ts in after if ts >= killed_ms), None)
    pause = max([*gaps, (first_after_kill - killed_ms) if first_after_kill is not None else 0])
    return {
        "failover_pause_ms": pause,
        "rate_events_per_s": round(rate),
        "killed_broker": node,
        "partitions_it_led": led,
        "broker_restart_s": round(restart_s, 1),
        "intents": len(records),
        "decided": len(per_event),
        "decided_twice": sum(1 for count in per_event.values() if count > 1),
        "missing": len(records) - len(per_event),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.failover", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000.0, help="intents per second offered (default 5000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load (default 20)")
    args = parser.parse_args(argv)
    found = asyncio.run(failover_pause(Settings.from_env(), args.rate, args.seconds, progress=print))
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    return 0 if found["missing"] == 0 and found["decided_twice"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
