"""Benchmarks on the real broker: the plain loop, the transactional loop and the auction worker,
and end-to-end latency.

Throughput: one stack (own topic prefix) whose `chat.intents` (6 partitions) is filled once with
N workload intents. Each run, the baseline (loadtests.baseline, 1 process), the transactional
loop (loadtests.txn_loop, 1 process: exactly-once without auctions or Redis) and the worker
(`vickrey auction`, 1 process, 1,000 active campaigns, a fresh Redis namespace) consume that
topic from the beginning in their own consumer groups; throughput = records out / (last output
timestamp - first output timestamp), so process start-up and group joins are not counted.
Runs alternate baseline, loop, worker, baseline, ... so machine noise hits all alike.

Latency: a fresh stack with one worker; a paced producer offers intents at a fixed rate and a
read_committed consumer in the same process notes when each decision becomes readable. The
transactional loop gets the worker's 50 % rate the same way, in a stack of its own.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from core.kafka import MAX_BATCH_BYTES, BatchSender
from core.settings import Settings
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


async def _wait_reference(settings: Settings, out: str, start: dict[TopicPartition, int], expect: int,
                         proc: subprocess.Popen[bytes], timeout: float, label: str, progress: Progress) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        ends = await end_offsets(settings, out)
        progress(f"{label}: {sum(ends[tp] - start.get(tp, 0) for tp in ends):,}/{expect:,} out")
        await asyncio.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
        raise RuntimeError(f"{label}: the loop did not finish in {timeout:.0f} s")
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: the loop failed (exit code {proc.returncode})")


async def _reference_run(stack: Settings, module: str, args: list[str], out: str, events: int, label: str,
                         progress: Progress) -> tuple[float, dict[str, float | None]]:
    """One run of a reference loop (`python -m MODULE ARGS`, which prints its count and CPU seconds
    at the start and end of consuming): its events/s from the output timestamps, and CPU per event."""
    start = await end_offsets(stack, out)
    cpu_before = await cpu.snapshot(stack, None)
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env_for(stack), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    await _wait_reference(stack, out, start, events, proc, 300, label, progress)
    cpu_after = await cpu.snapshot(stack, None)
    _, cpu_before["process"], cpu_after["process"] = (float(x) for x in proc.communicate()[0].split())
    count, first, last = await read_span(stack, out, start, timeout=120)
    rate = count / max(0.001, (last - first) / 1000)
    progress(f"{label}: {rate:,.0f} events/s")
    return rate, cpu.per_event_us(cpu_before, cpu_after, count)


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
    """py-spy on the worker, when installed, with native frames: the hot path is compiled (mypyc),
    and without them its time shows as the event loop that calls it. Native sampling pauses the
    process at each sample, so the profiled run is an extra one, never counted."""
    spy = py_spy()
    if spy is None:
        return None
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "100", "--idle", "--native",
                             "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


async def throughput(base: Settings, events: int, runs: int, progress: Progress, reports: Path,
                     profile: bool = False) -> dict[str, Any]:
    stack = isolated(base, new_tag("benchT"), partitions=6)
    namespaces: list[Settings] = []
    reference_rates: dict[str, list[float]] = {"baseline": [], "txn_loop": []}
    reference_cpu: dict[str, list[dict[str, float | None]]] = {"baseline": [], "txn_loop": []}
    worker_rates: list[float] = []
    notes: list[str] = []
    per_event = 0.0
    worker_cpu: list[dict[str, float | None]] = []
    warmup = 0.0
    try:
        await create_topics(stack, extra=[OUTPUT])
        await produce_all(stack, encoded(workload.intents(events, tag="t")), progress)
        campaigns = workload.campaigns(n=ACTIVE_CAMPAIGNS, advertisers=300, tag="w")
        # Broker warm-up: one plain-loop pass over the topic, not counted, so that the broker's JIT
        # and page cache are warm for every measured run alike (the first run was the slowest).
        warmup, _ = await _reference_run(stack, "loadtests.baseline", ["--group", stack.group("warm-up"),
                                                                       "--expect", str(events)],
                                         stack.topic(OUTPUT), events, "broker warm-up (not counted)", progress)
        for run in range(runs + (1 if profile else 0)):
            profiled = run == runs  # an extra worker run under py-spy, not counted
            # -- the plain loop, then the transactional loop (the least an exactly-once worker does) --
            for side, module, extra in () if profiled else (
                ("baseline", "loadtests.baseline", []),
                ("txn_loop", "loadtests.txn_loop", ["--impressions", str(round(per_event or 2.0, 3))]),
            ):
                out = stack.topic(OUTPUT if side == "baseline" else "ad.decisions")
                rate, parts = await _reference_run(stack, module, [*extra, "--group", stack.group(f"{side}-{run}"),
                                                                   "--expect", str(events)], out, events,
                                                   f"{side} run {run + 1}/{runs}", progress)
                reference_rates[side].append(rate)
                reference_cpu[side].append(parts)

            # -- the worker, fresh namespace (no kept outcomes) and its group reset to the start --
            ns = stack.with_(namespace=f"{stack.namespace}w{run}")
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
                if profiled:
                    spy = _profile(proc.pid, 8, reports / "worker-profile.txt")
                await _wait_consumed(ns, ns.group("auction"), ns.topic("chat.intents"), proc, 600,
                                     "worker under py-spy (not counted)" if profiled else f"worker run {run + 1}/{runs}",
                                     progress)
                cpu_after = await cpu.snapshot(ns, proc.pid)
            finally:
                if spy is not None:
                    spy.wait(30)
                stop_process(proc)
            if profiled:
                break
            dlq_count = (await read_span(ns, dlq, start, timeout=30))[0]
            count, first, last = await read_span(ns, decisions, start, timeout=120)
            if dlq_count:
                notes.append(f"worker run {run + 1}: {dlq_count} records went to the DLQ")
            worker_cpu.append(cpu.per_event_us(cpu_before, cpu_after, count))
            worker_rates.append(count / max(0.001, (last - first) / 1000))
            progress(f"worker run {run + 1}/{runs}: {worker_rates[-1]:,.0f} events/s ({count:,} decisions)")
            # The transactional loop's next run publishes as many impressions per event as this.
            impressions = (await read_span(ns, ns.topic("ad.impressions"), start, timeout=120))[0]
            per_event = impressions / max(1, count)
    finally:
        await cleanup(stack)
        for ns in namespaces:
            await delete_keys(ns)
    baseline, worker = statistics.median(reference_rates["baseline"]), statistics.median(worker_rates)
    txn_loop = statistics.median(reference_rates["txn_loop"])
    return {
        "worker_impressions_per_s": round(worker * per_event),
        "impressions_per_event": round(per_event, 3),
        "baseline_events_per_s": round(baseline),
        "worker_events_per_s": round(worker),
        "worker_ratio": round(worker / baseline, 3) if baseline else None,
        "txn_loop_events_per_s": round(txn_loop),
        "txn_loop_ratio": round(txn_loop / baseline, 3) if baseline else None,
        "baseline_runs": [round(r) for r in reference_rates["baseline"]],
        "txn_loop_runs": [round(r) for r in reference_rates["txn_loop"]],
        "worker_runs": [round(r) for r in worker_rates],
        "throughput_events_per_run": events,
        "broker_warmup_events_per_s": round(warmup),
        # µs of CPU per event (median of the runs) of the measured process, Redis and the broker
        "cpu_us_per_event": {"baseline": _median_parts(reference_cpu["baseline"]),
                             "txn_loop": _median_parts(reference_cpu["txn_loop"]), "worker": _median_parts(worker_cpu)},
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


# The load generator sends what is due every OFFER_TICK_S, one batch per partition (not a produce
# request per record, nor a tick per millisecond): it shares the two cores with what it measures,
# and at 6,000 events/s this cut its CPU per event from ~78 to ~48 µs and the broker's by a sixth.
# Each event's latency counts from the moment it was due, so the wait for its tick is counted too.
OFFER_TICK_S = 0.005


async def _offer(settings: Settings, records: list[tuple[bytes, bytes, str]], rate: float, settle_s: float,
                 fetch_max_wait_ms: int) -> dict[str, Any]:
    """Produce `records` at `rate`/s; return latency (due -> decision readable) and throughput."""
    topic = settings.topic("ad.decisions")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka, isolation_level="read_committed",
                                enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka, linger_ms=0, acks=1, max_batch_size=MAX_BATCH_BYTES)
    await consumer.start()
    await producer.start()
    sender = BatchSender(producer)
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
            for n in range(i, due):
                sent[records[n][2]] = began + n / rate  # when it was due, not when its tick came
            await sender.send([(intents, key, value) for key, value, _ in records[i:due]])
            i = due
            await asyncio.sleep(OFFER_TICK_S)
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
    proc = None
    try:
        await create_topics(stack)
        await apply(stack, workload.campaigns(n=ACTIVE_CAMPAIGNS, advertisers=300, tag="w"))
        proc = start_vickrey(stack, "auction", log=reports / "worker-e2e.log")
        if not await wait_for_group(stack, stack.group("auction"), 60, proc):
            raise RuntimeError(f"the worker did not start; see {reports / 'worker-e2e.log'}")
        levels = [(f"{f:.0%} of max", f, f * max_rate) for f in fractions]
        return await _latency_points(stack, proc, levels, 0.1 * max_rate, seconds, progress, fetch_max_wait_ms)
    finally:
        if proc is not None:
            stop_process(proc)
        await cleanup(stack)


async def txn_loop_latency(base: Settings, rate: float, impressions: float, seconds: float, progress: Progress,
                           fetch_max_wait_ms: int = 100) -> dict[str, Any]:
    """End-to-end latency of the transactional loop (loadtests.txn_loop) at `rate`, measured as the
    worker's: what exactly-once on aiokafka alone costs on this machine at that load."""
    stack = isolated(base, new_tag("benchX"), partitions=6)
    proc = None
    try:
        await create_topics(stack)
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.txn_loop", "--group", stack.group("auction"), "--from-end",
             "--impressions", str(round(impressions, 3))],
            env=env_for(stack), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        if not await wait_for_group(stack, stack.group("auction"), 60, proc):
            raise RuntimeError("the transactional loop did not start")
        points = await _latency_points(stack, proc, [("transactional loop", None, rate)], 0.2 * rate, seconds,
                                       progress, fetch_max_wait_ms)
        return points[0]
    finally:
        if proc is not None:
            stop_process(proc)
        await cleanup(stack)


async def _latency_points(stack: Settings, proc: subprocess.Popen[bytes],
                          levels: Sequence[tuple[str, float | None, float]], warm_up_rate: float, seconds: float,
                          progress: Progress, fetch_max_wait_ms: int) -> list[dict[str, Any]]:
    """Offer each (label, fraction of max, events/s) level to the running process `proc`, after a
    2 s warm-up at `warm_up_rate`; one latency point per level."""
    points: list[dict[str, Any]] = []
    warm_up = ("warm-up", None, warm_up_rate)
    for n, (label, fraction, rate) in enumerate([warm_up, *levels]):
        rate = max(1.0, rate)
        duration = 2.0 if label == "warm-up" else seconds
        intents = workload.intents(int(rate * duration), seed=100 + n, tag=f"l{n}")
        records = [(i["user_id"].encode(), orjson.dumps(i), i["event_id"]) for i in intents]
        progress(f"latency, {label}: {rate:,.0f} events/s for {duration:g} s")
        cpu_before, began = await _cpu_of_latency(stack, proc.pid), time.perf_counter()
        point = await _offer(stack, records, rate, settle_s=10.0, fetch_max_wait_ms=fetch_max_wait_ms)
        point.update(latency_cpu(cpu_before, await _cpu_of_latency(stack, proc.pid), len(records),
                                 time.perf_counter() - began))
        if label != "warm-up":
            point["fraction_of_max"] = fraction
            points.append(point)
            progress(f"latency, {label}: p50 {point['p50_ms']} ms, p99 {point['p99_ms']} ms, "
                     f"{point['throughput_events_per_s']:,}/s")
        await asyncio.sleep(1.0)
    return points
