"""`make bench`'s first stage: the broker warmed up, so that a cold JIT does not decide the figures.

A freshly started broker's JIT compilers keep compiling for minutes: issue 4 measured 2-4.5 s of
C2 CPU per 10 s and, at 10 % of the worker's load, 1,059 µs of broker CPU per event after a
restart against 543-722 warm. Before any measured stage the bench therefore drives the broker,
for a bounded time (`--warmup-seconds`, 45 by default), with the kinds of traffic the stages
make, on a stack of its own (6 partitions):

- plain produce: a load generator in this process, paced at `--warmup-rate` intents/s (10,000),
  as the end-to-end stage offers them (aiokafka, acks=1, linger 0);
- a plain consume -> produce loop on them (`loadtests.baseline`: fetches, produce, group offsets);
- the transactional loop (`loadtests.txn_loop`: read_committed fetches, one transaction per
  batch with its offsets, two impressions per event as the worker writes them).

The rate is the same throughout, so the broker's CPU per event in each 5 s window shows the JIT
settling: `details.warmup` has every window, and the first and the last side by side. Run alone:
`python -m loadtests.warmup [--seconds S] [--rate R] [--broker-pid PID]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from core.settings import Settings
from loadtests import cpu, workload
from loadtests.baseline import OUTPUT
from loadtests.stack import (
    ROOT,
    cleanup,
    committed,
    create_topics,
    end_offsets,
    env_for,
    isolated,
    new_tag,
    stop_process,
    wait_for_group,
)

Progress = Callable[[str], None]
SECONDS = 45.0
RATE = 10_000.0
WINDOW_S = 5.0
CATCH_UP_S = 10.0  # at most, after the traffic, for the loops to read what is left (not counted)
DISTINCT_INTENTS = 20_000  # encoded once, sent round and round
LOOP_IMPRESSIONS = 2.0


def _loop(stack: Settings, module: str, group: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module, "--group", group, *extra], env=env_for(stack), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def cluster_broker_pids() -> list[int]:
    """The brokers `make up BROKERS=3` started (their pid files beside the single broker's)."""
    pids = []
    for pidfile in sorted(cpu.BROKER_PIDFILE.parent.glob("kafka-*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pidfile.read_text().strip()))
    return pids


def _cpu_of(pids: list[int]) -> float | None:
    """CPU seconds of the brokers together (None when one is not known)."""
    found = [cpu.process_cpu_s(pid) for pid in pids]
    return None if not found or None in found else sum(f for f in found if f is not None)


def summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The first and the last window's broker CPU per event, and the ratio of the two."""
    known = [w for w in windows if w.get("broker_us_per_event") is not None]
    if not known:
        return {"broker_us_per_event_start": None, "broker_us_per_event_end": None, "end_vs_start": None}
    start, end = known[0]["broker_us_per_event"], known[-1]["broker_us_per_event"]
    return {"broker_us_per_event_start": start, "broker_us_per_event_end": end,
            "end_vs_start": round(end / start, 2) if start else None}


async def _joined(stack: Settings, group: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """The loop's consumer group has a member. On a broker with new storage the group coordinator
    (the offsets topic) is created by the first group: asked too early, it is not available yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return await wait_for_group(stack, group, deadline - time.monotonic(), proc)
        except KafkaError:
            await asyncio.sleep(0.5)
    return False


async def _lag(stack: Settings, groups: list[str]) -> dict[str, int]:
    """Records of chat.intents each group has not committed yet."""
    ends = await end_offsets(stack, stack.topic("chat.intents"))
    out = {}
    for group in groups:
        done = await committed(stack, group)
        out[group] = sum(max(0, end - done.get(tp, 0)) for tp, end in ends.items())
    return out


async def warm_up(base: Settings, seconds: float = SECONDS, rate: float = RATE, progress: Progress | None = None,
                  broker_pids: list[int] | None = None) -> dict[str, Any]:
    """Drive the broker for `seconds` at `rate` intents/s through the plain and the transactional
    loop; the broker's CPU per intent in every window of WINDOW_S. `broker_pids`: the brokers to
    measure, together (default: the one `make up` started)."""
    say = progress or (lambda _: None)
    began = time.monotonic()
    single = cpu.broker_pid()
    pids = broker_pids if broker_pids is not None else [] if single is None else [single]
    stack = isolated(base, new_tag("benchW"), partitions=6)
    groups = {"plain loop": stack.group("warm-plain"), "transactional loop": stack.group("warm-txn")}
    procs: list[subprocess.Popen[bytes]] = []
    windows: list[dict[str, Any]] = []
    sent = 0
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka, linger_ms=0, acks=1)
    try:
        await create_topics(stack, extra=[OUTPUT])
        procs.append(_loop(stack, "loadtests.txn_loop", groups["transactional loop"],
                           "--impressions", str(LOOP_IMPRESSIONS)))
        procs.append(_loop(stack, "loadtests.baseline", groups["plain loop"], "--expect", str(10**12)))
        for (name, group), proc in zip(groups.items(), procs, strict=True):
            if not await _joined(stack, group, proc):
                raise RuntimeError(f"broker warm-up: the {name} did not start")
        records = [(i["user_id"].encode(), orjson.dumps(i))
                   for i in workload.intents(DISTINCT_INTENTS, seed=900, tag="wu")]
        topic = stack.topic("chat.intents")
        await producer.start()
        say(f"broker warm-up: {rate:,.0f} intents/s for {seconds:g} s through the plain and the transactional loop")
        traffic_began = time.perf_counter()
        window_began, window_sent = traffic_began, 0
        broker_before = _cpu_of(pids)
        while True:
            now = time.perf_counter()
            elapsed = now - traffic_began
            if now - window_began >= WINDOW_S or elapsed >= seconds:
                broker_now = _cpu_of(pids)
                span = now - window_began
                used = None if broker_now is None or broker_before is None else broker_now - broker_before
                windows.append({
                    "t_s": round(elapsed, 1), "events": window_sent, "events_per_s": round(window_sent / span),
                    "broker_us_per_event": None if used is None or not window_sent else round(used / window_sent * 1e6, 1),
                    "broker_cores": None if used is None else round(used / span, 2),
                })
                say(f"broker warm-up {elapsed:.0f}/{seconds:g} s: {sent:,} intents, broker "
                    f"{windows[-1]['broker_us_per_event']} µs per intent ({windows[-1]['broker_cores']} cores)")
                window_began, window_sent, broker_before = now, 0, broker_now
                if elapsed >= seconds:
                    break
            due = int(elapsed * rate) + 1
            while sent < due:
                key, value = records[sent % len(records)]
                await producer.send(topic, value, key=key)
                sent += 1
                window_sent += 1
            await asyncio.sleep(0.001)
        await producer.flush()
        traffic_s = time.perf_counter() - traffic_began
        deadline = time.monotonic() + CATCH_UP_S
        lag = await _lag(stack, list(groups.values()))
        while any(lag.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            lag = await _lag(stack, list(groups.values()))
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        for proc in procs:
            stop_process(proc, timeout=10)
        await cleanup(stack)
    rates = [w["events_per_s"] for w in windows]
    return {
        "what": "plain produce (this process), the plain loop (loadtests.baseline) and the transactional loop "
                "(loadtests.txn_loop) on a stack of its own, 6 partitions",
        "seconds": seconds, "rate_events_per_s": rate, "events": sent, "traffic_s": round(traffic_s, 1),
        "duration_s": round(time.monotonic() - began, 1), "window_s": WINDOW_S,
        "offered_events_per_s_median": round(statistics.median(rates)) if rates else None,
        "brokers_measured": len(pids), **summary(windows),
        "lag_at_end": {name: lag[group] for name, group in groups.items()},
        "windows": windows,
    }


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a manual entry point
    parser = argparse.ArgumentParser(prog="python -m loadtests.warmup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"seconds of traffic (default {SECONDS:g})")
    parser.add_argument("--rate", type=float, default=RATE, help=f"intents/s (default {RATE:,.0f})")
    parser.add_argument("--broker-pid", type=int, action="append",
                        help="a broker to measure, repeatable (default: the one `make up` started)")
    args = parser.parse_args(argv)
    found = asyncio.run(warm_up(Settings.from_env(), args.seconds, args.rate, print, args.broker_pid))
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
