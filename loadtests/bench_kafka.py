"""Benchmarks on the real broker: the plain loop vs the auction worker, and end-to-end latency.

Throughput: one stack (own topic prefix) whose `chat.intents` (6 partitions) is filled once with
N workload intents. Each run, the baseline (loadtests.baseline, 1 process) and the worker
(`vickrey auction`, 1 process, 1,000 active campaigns, a fresh Redis namespace) consume that
topic from the beginning in their own consumer groups; throughput = records out / (last output
timestamp - first output timestamp), so process start-up and group joins are not counted.
Runs alternate baseline, worker, baseline, worker ... so machine noise hits both alike.

Latency: a fresh stack with one worker; a paced producer offers intents at a fixed rate and a
read_committed consumer in the same process notes when each decision becomes readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from loadtests import cpu, workload
from loadtests.baseline import OUTPUT
from loadtests.stack import (
    ROOT,
    apply,
    cleanup,
    committed,
    create_topics,
    delete_keys,
    end_offsets,
    env_for,
    isolated,
    new_tag,
    partitions_of,
    read_span,
    reset_group,
    start_vickrey,
    stop_process,
    wait_for_group,
)
from loadtests.summary import percentile
from vickrey.settings import Settings

Progress = Callable[[str], None]
ACTIVE_CAMPAIGNS = 1_000


async def produce_all(settings: Settings, records: list[tuple[bytes, bytes]], progress: Progress) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=20, max_batch_size=512 * 1024, acks=1)
    await producer.start()
    topic = settings.topic("chat.intents")
    try:
        for i, (key, value) in enumerate(records, 1):
            await producer.send(topic, value, key=key)
            if i % 25_000 == 0:
                progress(f"pre-fill {i:,}/{len(records):,}")
        await producer.flush()
    finally:
        await producer.stop()


def encoded(intents: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(intent["user_id"].encode(), orjson.dumps(intent)) for intent in intents]


async def _wait_baseline(settings: Settings, out: str, start: dict[TopicPartition, int], expect: int,
                         proc: subprocess.Popen[bytes], timeout: float, label: str, progress: Progress) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        ends = await end_offsets(settings, out)
        progress(f"{label}: {sum(ends[tp] - start.get(tp, 0) for tp in ends):,}/{expect:,} out")
        await asyncio.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
        raise RuntimeError(f"{label}: the baseline did not finish in {timeout:.0f} s")
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: the baseline failed (exit code {proc.returncode})")


async def _wait_consumed(settings: Settings, group: str, topic: str, proc: subprocess.Popen[bytes],
                         timeout: float, label: str, progress: Progress) -> None:
    """Until the group has committed the end offset of every partition of the input topic."""
    ends = await end_offsets(settings, topic)
    expect = sum(ends.values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{label}: the worker exited with code {proc.returncode}")
        done = await committed(settings, group)
        progress(f"{label}: {sum(min(done.get(tp, 0), end) for tp, end in ends.items()):,}/{expect:,} in")
        if all(done.get(tp, 0) >= end for tp, end in ends.items()):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{label}: the worker did not finish in {timeout:.0f} s")


def py_spy() -> str | None:
    """The py-spy executable (`pip install py-spy`), if installed."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    return spy if Path(spy).exists() else shutil.which("py-spy")


def _profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the worker (--nonblocking: samples without pausing it), when installed."""
    spy = py_spy()
    if spy is None:
        return None
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "--idle", "--nonblocking", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


async def throughput(base: Settings, events: int, runs: int, progress: Progress, reports: Path,
                     profile: bool = False) -> dict[str, Any]:
    stack = isolated(base, new_tag("benchT"), partitions=6)
    namespaces: list[Settings] = []
    baseline_rates: list[float] = []
    worker_rates: list[float] = []
    notes: list[str] = []
    per_event = 0.0
    baseline_cpu: list[dict[str, float | None]] = []
    worker_cpu: list[dict[str, float | None]] = []
    try:
        await create_topics(stack, extra=[OUTPUT])
        await produce_all(stack, encoded(workload.intents(events, tag="t")), progress)
        campaigns = workload.campaigns(n=ACTIVE_CAMPAIGNS, advertisers=300, tag="w")
        for run in range(runs):
            # -- the plain loop --
            out = stack.topic(OUTPUT)
            start = await end_offsets(stack, out)
            cpu_before = await cpu.snapshot(stack, None)
            proc = subprocess.Popen(
                [sys.executable, "-m", "loadtests.baseline", "--group", stack.group(f"baseline-{run}"), "--expect", str(events)],
                env=env_for(stack), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
            await _wait_baseline(stack, out, start, events, proc, 300, f"baseline run {run + 1}/{runs}", progress)
            cpu_after = await cpu.snapshot(stack, None)
            # The loop reports its own CPU seconds (start and end of consuming) on stdout.
            _, cpu_before["process"], cpu_after["process"] = (float(x) for x in proc.communicate()[0].split())
            count, first, last = await read_span(stack, out, start, timeout=120)
            baseline_cpu.append(cpu.per_event_us(cpu_before, cpu_after, count))
            baseline_rates.append(count / max(0.001, (last - first) / 1000))
            progress(f"baseline run {run + 1}/{runs}: {baseline_rates[-1]:,.0f} events/s")

            # -- the worker, fresh namespace (no kept outcomes) and its group reset to the start --
            ns = replace(stack, namespace=f"{stack.namespace}w{run}")
            namespaces.append(ns)
            await apply(ns, campaigns)
            await reset_group(ns, ns.group("auction"), ns.topic("chat.intents"))
            decisions, dlq = ns.topic("ad.decisions"), ns.topic("chat.intents.dlq")
            start = {**await end_offsets(ns, decisions), **await end_offsets(ns, dlq),
                     **await end_offsets(ns, ns.topic("ad.impressions"))}
            proc = start_vickrey(ns, "auction", log=reports / f"worker-run{run}.log")
            spy = None
            try:
                if not await wait_for_group(ns, ns.group("auction"), 60, proc):
                    raise RuntimeError(f"the worker did not start; see {reports / f'worker-run{run}.log'}")
                cpu_before = await cpu.snapshot(ns, proc.pid)
                if profile and run == runs - 1:
                    spy = _profile(proc.pid, 8, reports / "worker-profile.txt")
                await _wait_consumed(ns, ns.group("auction"), ns.topic("chat.intents"), proc, 600,
                                     f"worker run {run + 1}/{runs}", progress)
                cpu_after = await cpu.snapshot(ns, proc.pid)
            finally:
                if spy is not None:
                    spy.wait(30)
                stop_process(proc)
            dlq_count = (await read_span(ns, dlq, start, timeout=30))[0]
            count, first, last = await read_span(ns, decisions, start, timeout=120)
            if dlq_count:
                notes.append(f"worker run {run + 1}: {dlq_count} records went to the DLQ")
            worker_cpu.append(cpu.per_event_us(cpu_before, cpu_after, count))
            worker_rates.append(count / max(0.001, (last - first) / 1000))
            progress(f"worker run {run + 1}/{runs}: {worker_rates[-1]:,.0f} events/s ({count:,} decisions)")
            if run == runs - 1:
                impressions = (await read_span(ns, ns.topic("ad.impressions"), start, timeout=120))[0]
                per_event = impressions / max(1, count)
    finally:
        await cleanup(stack)
        for ns in namespaces:
            await delete_keys(ns)
    baseline, worker = statistics.median(baseline_rates), statistics.median(worker_rates)
    return {
        "worker_impressions_per_s": round(worker * per_event),
        "impressions_per_event": round(per_event, 3),
        "baseline_events_per_s": round(baseline),
        "worker_events_per_s": round(worker),
        "worker_ratio": round(worker / baseline, 3) if baseline else None,
        "baseline_runs": [round(r) for r in baseline_rates],
        "worker_runs": [round(r) for r in worker_rates],
        "throughput_events_per_run": events,
        # µs of CPU per event (median of the runs) of the measured process, Redis and the broker
        "cpu_us_per_event": {"baseline": _median_parts(baseline_cpu), "worker": _median_parts(worker_cpu)},
        "notes": notes,
    }


def _median_parts(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    parts = runs[0].keys() if runs else ()
    out: dict[str, float | None] = {}
    for part in parts:
        values = [run[part] for run in runs if run.get(part) is not None]
        out[part] = round(statistics.median([v for v in values if v is not None]), 1) if values else None
    return out


# -- latency ---------------------------------------------------------------------------------------


async def _offer(settings: Settings, records: list[tuple[bytes, bytes, str]], rate: float, settle_s: float,
                 fetch_max_wait_ms: int) -> dict[str, Any]:
    """Produce `records` at `rate`/s; return latency (send -> decision readable) and throughput."""
    topic = settings.topic("ad.decisions")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, isolation_level="read_committed",
                                enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=0, acks=1)
    await consumer.start()
    await producer.start()
    sent: dict[str, float] = {}
    latencies: list[float] = []
    last_seen = 0.0
    try:
        partitions = await partitions_of(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)

        async def read() -> None:
            nonlocal last_seen
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for recs in batch.values():
                    for record in recs:
                        started = sent.get(orjson.loads(record.value)["event_id"]) if record.value else None
                        if started is not None:
                            latencies.append(now - started)
                            last_seen = now
        reader = asyncio.create_task(read())
        intents = settings.topic("chat.intents")
        began = time.perf_counter()
        i = 0
        while i < len(records):
            due = min(len(records), int((time.perf_counter() - began) * rate) + 1)
            while i < due:
                key, value, event_id = records[i]
                sent[event_id] = time.perf_counter()
                await producer.send(intents, value, key=key)
                i += 1
            await asyncio.sleep(0.001)
        offered_s = time.perf_counter() - began
        deadline = time.perf_counter() + settle_s
        while len(latencies) < len(records) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        await producer.stop()
        await consumer.stop()
    latencies.sort()
    span = max(last_seen - began, offered_s, 1e-3)
    return {
        "offered_events_per_s": round(len(records) / offered_s),
        "throughput_events_per_s": round(len(latencies) / span),
        "decisions": len(latencies),
        "missing": len(records) - len(latencies),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p95_ms": _ms(percentile(latencies, 95)),
        "p99_ms": _ms(percentile(latencies, 99)),
    }


async def _cpu_of_latency(settings: Settings, worker_pid: int) -> cpu.CpuSeconds:
    """The worker's, Redis's and the broker's CPU seconds, and this process's (the load generator
    and the measuring reader, which share the cores with what they measure)."""
    parts = await cpu.snapshot(settings, worker_pid)
    parts["load_generator"] = cpu.process_cpu_s(os.getpid())
    return parts


def latency_cpu(before: cpu.CpuSeconds, after: cpu.CpuSeconds, events: int, wall_s: float) -> dict[str, Any]:
    """CPU per event of each process during one latency point, and how many cores were busy:
    near the machine's core count, queueing (not the worker) sets the tail."""
    measured = cpu.per_event_us(before, after, events)
    per_event = {"worker": measured.pop("process"), **measured}
    total = per_event.get("total")
    busy = None if total is None or wall_s <= 0 else round(total * events / 1e6 / wall_s, 2)
    return {"cpu_us_per_event": per_event, "cores_busy": busy}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def latency(base: Settings, max_rate: float, fractions: list[float], seconds: float, progress: Progress,
                  reports: Path, fetch_max_wait_ms: int = 100) -> list[dict[str, Any]]:
    """End-to-end latency at each fraction of `max_rate`, one worker, one fresh stack."""
    stack = isolated(base, new_tag("benchE"), partitions=6)
    points: list[dict[str, Any]] = []
    proc = None
    try:
        await create_topics(stack)
        await apply(stack, workload.campaigns(n=ACTIVE_CAMPAIGNS, advertisers=300, tag="w"))
        proc = start_vickrey(stack, "auction", log=reports / "worker-e2e.log")
        if not await wait_for_group(stack, stack.group("auction"), 60, proc):
            raise RuntimeError(f"the worker did not start; see {reports / 'worker-e2e.log'}")
        levels = [("warm-up", 0.1, 2.0), *((f"{f:.0%}", f, seconds) for f in fractions)]
        for n, (label, fraction, duration) in enumerate(levels):
            rate = max(1.0, fraction * max_rate)
            intents = workload.intents(int(rate * duration), seed=100 + n, tag=f"l{n}")
            records = [(i["user_id"].encode(), orjson.dumps(i), i["event_id"]) for i in intents]
            progress(f"latency at {label} of max: {rate:,.0f} events/s for {duration:g} s")
            cpu_before, began = await _cpu_of_latency(stack, proc.pid), time.perf_counter()
            point = await _offer(stack, records, rate, settle_s=10.0, fetch_max_wait_ms=fetch_max_wait_ms)
            point.update(latency_cpu(cpu_before, await _cpu_of_latency(stack, proc.pid), len(records),
                                     time.perf_counter() - began))
            if label != "warm-up":
                point["fraction_of_max"] = fraction
                points.append(point)
                progress(f"latency at {label}: p50 {point['p50_ms']} ms, p99 {point['p99_ms']} ms, "
                         f"{point['throughput_events_per_s']:,}/s")
            await asyncio.sleep(1.0)
    finally:
        if proc is not None:
            stop_process(proc)
        await cleanup(stack)
    return points
