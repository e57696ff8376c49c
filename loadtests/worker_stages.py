"""Where the auction worker's CPU goes, step by step (`make bench`, `details.worker_stages`).

The auction role's own steps, in process on the bench's workload (1,000 active campaigns, the
worker's batch size), against the real Redis and without Kafka: the intake (decoding and
validating each intent and making its auction request, as the worker does: compiled where the
Rust intake is built, `fastpath` says which), the auction (the engine, the records built and
encoded, and the Redis claim: one compiled step where the engine's twin is built,
`auction_compiled_share` says for how many), the reservation call (the client's side, and Redis's own CPU from `INFO cpu`), and turning the
answers into the records to publish. The worker's garbage-collection policy and its event loop
(uvloop) are in force. What Kafka costs the same process is the transactional loop's figure in the
throughput stage.

These are the floors the issue of the worker's speed asks for: each step's µs per event, so a
target can be checked against the sum before anything is rewritten. Beside them, what the kept
outcomes cost Redis in bytes: the outcomes one reservation call keeps (its blob, held until the
batch commits) and what the calls add to the append-only file, per event. And, on the same
intents in the same rounds, the auction taken as two steps, the engine then the records, as the
worker takes it where the compiled step leaves an event (`separate`): what joining them saves.

`python -m loadtests.worker_stages [--events N] [--rounds R]` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import ConsumerRecord
from redis.asyncio import Redis

from auction.batching import BATCH_MAX, run_on_worker_loop
from auction.budgets import Claim
from auction.fastpath import INPUT, hot_path
from auction.people import PeopleCache
from auction.worker import (
    FULL_GC_NEVER,
    GC_GEN0_THRESHOLD,
    RESERVE_CHUNK,
    AuctionRole,
    Pending,
)
from auction.worker_metrics import Tally, WorkerMetrics
from core.clock import utc_day
from core.loop import Output
from core.metrics import Metrics
from core.redis_client import redis_from_url
from core.settings import Settings
from loadtests import workload
from loadtests.stack import apply, cleanup, create_topics, isolated, new_tag

ACTIVE_CAMPAIGNS = 1_000  # the throughput stage's
STEPS = ("intake", "auction", "reserve_client", "redis_server", "answers")
SEPARATE = ("engine", "records")  # the auction as two steps


class _NoLoop:
    """The role asks its loop for DLQ records only; the bench's intents are all valid."""

    def dlq(self, record: Any, error: Any, now_ms: int) -> Output:
        raise AssertionError(f"a bench intent was refused: {error}")


async def _redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _aof_size(redis: Redis) -> tuple[int, int] | None:
    """The append-only file's size and rewrites so far (None when Redis keeps no AOF)."""
    info = await redis.info("persistence")
    if not int(info.get("aof_enabled", 0)):
        return None
    return int(info["aof_current_size"]), int(info.get("aof_rewrites", 0))


async def _one_round(role: AuctionRole, redis: Redis, raws: list[bytes]) -> tuple[dict[str, float], dict[str, int | None]]:
    """Every step over `raws`, batch by batch as the worker takes them: CPU seconds per step, and
    the bytes of kept outcomes and of the AOF (None when unknown: no AOF, or it was rewritten)."""
    spent = dict.fromkeys(STEPS + SEPARATE, 0.0)
    kept = 0
    aof_before = await _aof_size(redis)
    now_ms = int(time.time() * 1000)
    day = utc_day(now_ms)
    role.engine.spend.roll_to(day)

    clock = time.process_time
    for first in range(0, len(raws), BATCH_MAX):
        records = [ConsumerRecord(INPUT, 0, first + n, now_ms, 0, None, raw, None, 0, len(raw), [])
                   for n, raw in enumerate(raws[first : first + BATCH_MAX])]
        pending: list[Pending] = []
        began = clock()
        role._read_intents(records, now_ms, pending, [], Tally())  # noqa: SLF001
        spent["intake"] += clock() - began
        claims: list[Claim] = []
        # The two ways of one auction on the same intents, in turns first and second (the second
        # finds the caches warm): the step the worker runs, and the auction as two steps.
        for way in ("auction", "separate") if (first // BATCH_MAX) % 2 == 0 else ("separate", "auction"):
            began = clock()
            if way == "auction":
                claims = [role._decide(item, now_ms, 1) for item in pending]  # noqa: SLF001 - what the worker runs
                spent["auction"] += clock() - began
            else:
                results = [role._auction(item, now_ms, 1) for item in pending]  # noqa: SLF001
                auctioned = clock()
                for item, result in zip(pending, results, strict=True):
                    role._claim(item, result, now_ms)  # noqa: SLF001
                spent["engine"] += auctioned - began
                spent["records"] += clock() - auctioned
        outputs: list[Output] = []
        blob_ids: list[str] = []
        tally, again = Tally(), list[Pending]()
        for start in range(0, len(claims), RESERVE_CHUNK):
            redis_before, began = await _redis_cpu(redis), clock()
            reply = await role.reserver.reserve(claims[start : start + RESERVE_CHUNK], day)
            answered = clock()
            spent["redis_server"] += await _redis_cpu(redis) - redis_before
            read_began = clock()
            role._read_answers(pending[start : start + RESERVE_CHUNK], reply, outputs, blob_ids, day, now_ms, tally, again)  # noqa: SLF001
            spent["reserve_client"] += answered - began
            spent["answers"] += clock() - read_began
            kept += int(await redis.strlen(role.settings.keys.blob(reply[2])))
        role.reserver.committed(blob_ids)
    await role.reserver.drop_committed()
    aof_after = await _aof_size(redis)
    aof = None
    if aof_before is not None and aof_after is not None and aof_after[1] == aof_before[1]:
        aof = aof_after[0] - aof_before[0]
    return spent, {"kept_bytes": kept, "aof_bytes": aof}


async def worker_stages(base: Settings, events: int = 20_000, rounds: int = 3,
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """µs per event of each step (median of `rounds`, each on fresh intents), and their sum."""
    stack = isolated(base, new_tag("benchS"))
    redis = redis_from_url(stack.redis)
    try:
        await create_topics(stack)
        await apply(stack, workload.campaigns(n=ACTIVE_CAMPAIGNS, advertisers=300, tag="w"))
        role = AuctionRole(stack, WorkerMetrics(Metrics()), redis, PeopleCache())
        await role.start(_NoLoop())  # type: ignore[arg-type]
        per_round: list[dict[str, float]] = []
        bytes_per_round: list[dict[str, float | None]] = []
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, thresholds[1], FULL_GC_NEVER)  # the worker's (`_tune_gc`)
        try:
            for n in range(rounds + 1):  # the first round warms up and is not counted
                raws = [orjson.dumps(intent) for intent in workload.intents(events, seed=500 + n, tag=f"s{n}")]
                spent, sizes = await _one_round(role, redis, raws)
                if n:
                    per_round.append({step: seconds / events * 1e6 for step, seconds in spent.items()})
                    bytes_per_round.append({what: None if size is None else size / events for what, size in sizes.items()})
                    if progress:
                        last = per_round[-1]
                        progress(f"worker steps, round {n}/{rounds}: "
                                 + ", ".join(f"{step} {last[step]:.1f}" for step in STEPS) + " µs/event (the auction "
                                 + f"as two steps: engine {last['engine']:.1f}, records {last['records']:.1f})")
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
        await role.close()
        median = {step: round(statistics.median(r[step] for r in per_round), 1) for step in STEPS}
        process = sum(us for step, us in median.items() if step != "redis_server")
        twin = role.twin
        share = None if twin is None else round(twin.claimed / (events * (rounds + 1)), 3)
        return {"us_per_event": median, "process_us_per_event": round(process, 1), "events_per_round": events,
                "fastpath": hot_path(role.intake, role.writer),
                # the share of auctions the compiled step took whole (None: no twin built)
                "auction_compiled_share": share,
                "separate": {step: round(statistics.median(r[step] for r in per_round), 1) for step in SEPARATE},
                "rounds": [{step: round(r[step], 1) for step in STEPS} for r in per_round],
                # Redis bytes per event: outcomes kept until the batch commits, and AOF written
                "kept_bytes_per_event": _median_of(bytes_per_round, "kept_bytes"),
                "aof_bytes_per_event": _median_of(bytes_per_round, "aof_bytes")}
    finally:
        await redis.aclose()
        await cleanup(stack)


def measure(base: Settings, events: int = 20_000, rounds: int = 3,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`worker_stages` on the worker's own event loop (uvloop: its Redis client runs there)."""
    return run_on_worker_loop(worker_stages(base, events, rounds, progress))


def _median_of(rounds: list[dict[str, float | None]], what: str) -> float | None:
    values = [r[what] for r in rounds if r[what] is not None]
    return round(statistics.median([v for v in values if v is not None])) if values else None


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a manual entry point
    parser = argparse.ArgumentParser(prog="python -m loadtests.worker_stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="intents per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up (median; default 3)")
    args = parser.parse_args(argv)
    print(orjson.dumps(measure(Settings.from_env(), args.events, args.rounds, progress=print),
                       option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
