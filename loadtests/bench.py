"""`make bench` (`python -m loadtests.bench`): every performance figure, side by side, one run.

Stages: a broker warm-up first (not measured: traffic of every kind the stages make, so that a
cold JIT does not decide the figures; loadtests/warmup.py); the auction engine alone (auctions/s,
index build, bytes per campaign); the plain aiokafka loop, the transactional loop (no auction, no
Redis) and the auction worker on the same pre-filled topic; end-to-end latency at several
fractions of the worker's maximum (the 50% point gives the e2e keys), and of the transactional
loop at that 50% rate; billing and conversions (streams.bench); the autopilot in the simulator
(against fixed bids, and target_cpa); with --cluster (`make bench CLUSTER=1`), the worker on three
brokers (warmed up first too) and the pause when one dies, then the worker on a Redis Cluster (one
broker; the reservation split by hash slot).
Writes bench-results.json, docs/bench.png and the figures block of BENCHMARKS.md, prints a table.
Each Kafka stage runs on its own topic prefix and Redis namespace and removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import rich.progress
from rich.console import Console
from rich.text import Text

from autopilot.scenario import read_scenario
from autopilot.simulate import simulate
from core import native
from core.settings import Settings
from loadtests import bench_kafka, engine_bench, optimiser
from loadtests.bench_report import TARGETS, markdown_block, table, update_markdown
from loadtests.failover import failover_pause
from loadtests.plot import bench_plot
from loadtests.profile import summarise
from loadtests.stack import ROOT, cleanup, isolated, new_tag, require_local
from loadtests.warmup import cluster_broker_pids, warm_up
from loadtests.worker_stages import measure as measure_worker_stages

KEYS = (
    "engine_auctions_per_s", "index_build_s_100k", "index_bytes_per_campaign", "baseline_events_per_s",
    "worker_events_per_s", "worker_ratio", "e2e_p50_ms", "e2e_p99_ms", "e2e_rate_events_per_s", "billing_events_per_s",
    "autopilot_clicks_vs_best_fixed", "autopilot_budget_used", "simulate_intents_per_s", "conversions_events_per_s",
    "autopilot_cpa_vs_target", "e2e_p99_vs_txn_loop", "failover_pause_ms", "cluster_worker_events_per_s",
    "redis_cluster_worker_events_per_s",
)
CLUSTER_KEYS = ("failover_pause_ms", "cluster_worker_events_per_s", "redis_cluster_worker_events_per_s")
_SKIPPED = "run `make bench CLUSTER=1` (switches {} for this stage, then back to {}; needs nothing else running on it)"
CLUSTER_SKIPPED = {
    "failover_pause_ms": _SKIPPED.format("Kafka to three brokers", "one"),
    "cluster_worker_events_per_s": _SKIPPED.format("Kafka to three brokers", "one"),
    "redis_cluster_worker_events_per_s": _SKIPPED.format("Redis to a Redis Cluster", "one Redis"),
}
CLUSTER_KAFKA = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
CLUSTER_REDIS = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in range(7000, 7006))
HELD_OUT_SEEDS = (101, 102, 103, 104)  # random markets (loadtests/optimiser.py) the autopilot was not tuned on


class Progress:
    """Stage headers with the elapsed clock, and one progress line per stage: redrawn in place by
    rich on a terminal; elsewhere (CI logs, even with FORCE_COLOR) plain lines, a running count at
    most every `every_s`. The line is redrawn when a message comes, never from a thread of its own
    (nothing competes with what is being measured)."""

    def __init__(self, console: Console | None = None, every_s: float = 3.0) -> None:
        self.started = time.monotonic()
        self.console = console or Console(force_interactive=None if sys.stdout.isatty() else False)
        self.live = self.console.is_interactive
        self.every_s = every_s
        self.last_print = 0.0
        self.line = ""  # the stage's latest message, kept once the stage ends
        self.bar: rich.progress.Progress | None = None
        self.task = rich.progress.TaskID(0)

    def stage(self, name: str) -> None:
        self._end_line()
        self._print(f"[{self._clock()}] == {name}")

    def __call__(self, message: str) -> None:
        if self.live:
            if self.bar is None:
                self.bar = rich.progress.Progress(_Clock(self.started), rich.progress.SpinnerColumn(),
                                                  rich.progress.TextColumn("{task.description}", markup=False),
                                                  console=self.console, transient=True, auto_refresh=False)
                self.task = self.bar.add_task(message, total=None)
                self.bar.start()
            self.bar.update(self.task, description=message, refresh=True)
            self.line = f"[{self._clock()}]    {message}"
            return
        now = time.monotonic()
        # Running counts ("... in", "... out") every few seconds; results and other news always.
        if now - self.last_print >= self.every_s or not message.endswith((" in", " out")):
            self._print(f"[{self._clock()}]    {message}")
            self.last_print = now

    def _end_line(self) -> None:
        if self.bar is not None:
            self.bar.stop()  # transient: the live line goes, its last message stays
            self.bar = None
            self._print(self.line)

    def done(self) -> None:
        self._end_line()

    def _clock(self) -> str:
        return clock(self.started)

    def _print(self, line: str) -> None:
        """As it is: no markup, emoji codes or highlighting, and no wrapping at 80 columns in a log."""
        self.console.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)


def clock(since: float) -> str:
    elapsed = int(time.monotonic() - since)
    return f"{elapsed // 60:02d}:{elapsed % 60:02d}"


class _Clock(rich.progress.ProgressColumn):
    """The bench's elapsed clock on the live line (redrawn with each message)."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started

    def render(self, task: rich.progress.Task) -> Text:
        return Text(f"[{clock(self.started)}]")


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="pre-filled intents per throughput run (default 200000)")
    p.add_argument("--runs", type=int, default=3, help="throughput runs of each side (median; default 3)")
    p.add_argument("--engine-runs", type=int, default=5, help="timed engine runs (median; default 5)")
    p.add_argument("--latency-seconds", type=float, default=6.0, help="seconds of paced load per offered level")
    p.add_argument("--fractions", default="0.1,0.25,0.5,0.75,0.9", help="offered loads as fractions of the worker max")
    p.add_argument("--billing-events", type=int, default=50_000, help="impressions for the billing benchmark")
    p.add_argument("--cluster", action="store_true",
                   help="also switch Kafka to three brokers (make up BROKERS=3) for the worker's events/s there and "
                        "failover_pause_ms, then Redis to a Redis Cluster (make up REDIS=cluster) for the "
                        "worker's events/s there; then back to one broker and one Redis")
    p.add_argument("--warmup-seconds", type=float, default=45.0,
                   help="seconds of broker warm-up traffic before the measured stages (default 45)")
    p.add_argument("--warmup-rate", type=float, default=10_000.0, help="intents/s of the warm-up (default 10000)")
    p.add_argument("--skip", default="",
                   help="comma-separated stages to skip: warmup,engine,kafka,latency,billing,autopilot")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="py-spy --native an extra worker run, not counted (default: when py-spy is installed)")
    p.add_argument("--output", type=Path, default=ROOT / "bench-results.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--reports", type=Path, default=ROOT / "reports" / "bench", help="worker logs and the profile")
    return p.parse_args(argv)


def failed(missing: dict[str, str], keys: tuple[str, ...], error: BaseException) -> None:
    for key in keys:
        missing[key] = f"the stage failed: {type(error).__name__}: {error}"


def streams_rate(base: Settings, name: str, n: int) -> tuple[float | None, str | None]:
    """`streams.bench.<name>(settings, n)` under its own prefix: (value, None) or (None, why not)."""
    try:
        from streams import bench as streams_bench
    except ImportError as error:
        return None, f"streams.bench is not importable: {error}"
    measure = getattr(streams_bench, name, None)
    if measure is None:
        return None, f"streams.bench has no {name}(settings, n)"
    settings = isolated(base, new_tag("benchB"))
    try:
        result = measure(settings, n)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return float(result), None
    except Exception as error:  # report, don't crash the other stages
        traceback.print_exc()
        return None, f"streams.bench.{name} failed: {type(error).__name__}: {error}"
    finally:
        asyncio.run(cleanup(settings))


# Rounds of the worker and the transactional loop at 50% of the max; the e2e keys are medians.
E2E_ROUNDS = 3
E2E_KEYS = ("e2e_p50_ms", "e2e_p99_ms", "e2e_rate_events_per_s", "e2e_p99_vs_txn_loop")


@dataclass
class Bench:
    """One `make bench`: what every stage needs, and what the stages found."""

    args: argparse.Namespace
    command: str
    base: Settings
    progress: Progress
    results: dict[str, Any]
    fractions: list[float]  # of the worker's maximum rate, for the latency curve
    skip: set[str] = field(default_factory=set)
    missing: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def found(self, values: dict[str, Any]) -> dict[str, Any]:
        """Record a stage's headline keys; the rest is returned, for `details`."""
        self.results.update({k: v for k, v in values.items() if k in KEYS})
        return {k: v for k, v in values.items() if k not in KEYS}


def warmup_stage(bench: Bench) -> None:
    """The broker driven for a bounded time before anything is measured (`details.warmup`: what,
    how long, and the broker's CPU per event at its start and its end)."""
    warm_brokers(bench, "warmup", bench.base, bench.args.warmup_seconds, None)


def warm_brokers(bench: Bench, key: str, base: Settings, seconds: float, broker_pids: list[int] | None) -> None:
    bench.progress.stage(f"broker warm-up: {seconds:g} s at {bench.args.warmup_rate:,.0f} intents/s "
                         "(not measured; a cold broker JIT compiles for minutes)")
    try:
        found = asyncio.run(warm_up(base, seconds, bench.args.warmup_rate, bench.progress, broker_pids))
    except Exception as error:  # the figures are measured all the same, on a colder broker
        traceback.print_exc()
        bench.details[key] = {"error": f"{type(error).__name__}: {error}"}
        return
    bench.details[key] = found
    bench.progress(f"broker warm-up: {found['events']:,} intents in {found['traffic_s']} s; broker "
                   f"{found['broker_us_per_event_start']} µs per intent in the first {found['window_s']:g} s, "
                   f"{found['broker_us_per_event_end']} in the last")


def engine_stage(bench: Bench) -> None:
    progress = bench.progress
    progress.stage("engine alone: 10,000 campaigns, one core")
    found = engine_bench.engine_auctions_per_s(runs=bench.args.engine_runs, progress=progress)
    progress.stage("index build: 100,000 campaigns")
    found |= engine_bench.index_build(progress=progress)
    bench.details["engine"] = bench.found(found)


def kafka_stage(bench: Bench) -> None:
    args, results = bench.args, bench.results
    bench.progress.stage(f"baseline vs worker: {args.events:,} events, {args.runs} runs each, 6 partitions, 1,000 campaigns")
    try:
        found = asyncio.run(bench_kafka.throughput(bench.base, args.events, args.runs, bench.progress, args.reports,
                                                   args.profile))
    except Exception as error:  # report what failed and go on with the other stages
        traceback.print_exc()
        failed(bench.missing, ("baseline_events_per_s", "worker_events_per_s", "worker_ratio"), error)
    else:
        bench.details["throughput"] = bench.found(found)
        results["worker_impressions_per_s"] = found["worker_impressions_per_s"]
        results.update(txn_loop_events_per_s=found["txn_loop_events_per_s"], txn_loop_ratio=found["txn_loop_ratio"])
    profile_file = args.reports / "worker-profile.txt"
    if args.profile and profile_file.exists():
        bench.details["worker_profile"] = summarise(profile_file).splitlines()
    bench.progress.stage("the worker's steps, in process (µs per event each)")
    try:
        bench.details["worker_stages"] = measure_worker_stages(bench.base, progress=bench.progress)
    except Exception:
        traceback.print_exc()


def latency_stage(bench: Bench) -> None:
    """The latency curve of the worker (needs its maximum rate), its 50% point as the e2e keys, the
    transactional loop at that rate, and the plot."""
    args, results = bench.args, bench.results
    if not results["worker_events_per_s"]:
        for key in E2E_KEYS:
            bench.missing.setdefault(key, "needs the worker's maximum rate, which was not measured")
        return
    worker_max = float(results["worker_events_per_s"])
    bench.progress.stage("end-to-end latency at " + ", ".join(f"{f:.0%}" for f in bench.fractions) + " of the worker max")
    try:
        points = asyncio.run(bench_kafka.latency(bench.base, worker_max, bench.fractions, args.latency_seconds,
                                                 bench.progress, args.reports))
    except Exception as error:
        traceback.print_exc()
        failed(bench.missing, E2E_KEYS, error)
        return
    bench.details["latency_curve"] = points
    half = next(p for p in points if p["fraction_of_max"] == 0.5)
    e2e_rounds(bench, worker_max, half)
    caption = (f"{bench.command} - {os.cpu_count()} cores, Python {platform.python_version()} - "
               f"worker max {results['worker_events_per_s']:,} events/s")
    bench_plot(points, worker_max, float(TARGETS["e2e_p99_ms"][1] or 25), args.plot, caption)


def e2e_rounds(bench: Bench, worker_max: float, half: dict[str, Any]) -> None:
    """The e2e keys: E2E_ROUNDS rounds of the worker at 50% of its max (the curve's point is the
    first) alternating with the transactional loop at the same rate, each on a fresh stack; the
    medians. One round's tail swings 1.5-3x between runs on this shared machine."""
    rate = float(half["offered_events_per_s"])
    impressions = float(bench.details.get("throughput", {}).get("impressions_per_event") or 2.0)
    seconds = bench.args.latency_seconds
    worker_points: list[dict[str, Any]] = [half]
    loop_points: list[dict[str, Any]] = []
    for n in range(E2E_ROUNDS):
        bench.progress.stage(f"e2e round {n + 1}/{E2E_ROUNDS} at {rate:,.0f} events/s: worker, then the transactional loop")
        try:
            if n:
                worker_points += asyncio.run(bench_kafka.latency(bench.base, worker_max, [0.5], seconds,
                                                                 bench.progress, bench.args.reports))
            loop_points.append(asyncio.run(bench_kafka.txn_loop_latency(bench.base, rate, impressions, seconds,
                                                                       bench.progress)))
        except Exception as error:
            traceback.print_exc()
            failed(bench.missing, E2E_KEYS[:2] + E2E_KEYS[3:] + ("txn_loop_e2e_p50_ms", "txn_loop_e2e_p99_ms"), error)
            return
    worker_p99 = [float(p["p99_ms"]) for p in worker_points]
    loop_p99 = [float(p["p99_ms"]) for p in loop_points]
    bench.details["txn_loop_latency"] = loop_points
    bench.details["e2e_rounds"] = {
        "rate_events_per_s": rate,
        "worker_p50_ms": [p["p50_ms"] for p in worker_points], "worker_p99_ms": worker_p99,
        "txn_loop_p50_ms": [p["p50_ms"] for p in loop_points], "txn_loop_p99_ms": loop_p99,
        "p99_ratio_per_round": [round(w / x, 2) for w, x in zip(worker_p99, loop_p99, strict=True) if x],
    }
    median = statistics.median
    bench.results.update(
        e2e_p50_ms=median(float(p["p50_ms"]) for p in worker_points), e2e_p99_ms=median(worker_p99),
        e2e_rate_events_per_s=half["offered_events_per_s"],
        txn_loop_e2e_p50_ms=median(float(p["p50_ms"]) for p in loop_points), txn_loop_e2e_p99_ms=median(loop_p99),
    )
    if median(loop_p99):
        # The worker's tail against exactly-once on aiokafka alone, same rate, same run: medians.
        bench.results["e2e_p99_vs_txn_loop"] = round(median(worker_p99) / median(loop_p99), 2)


def billing_stage(bench: Bench) -> None:
    """Billing, then the conversions role (its clicks and as many conversions), on pre-filled topics."""
    n = bench.args.billing_events
    for key, what in (("billing_events_per_s", f"billing: {n:,} impressions"),
                      ("conversions_events_per_s", f"conversions: {n:,} clicks, then {n:,} conversions")):
        bench.progress.stage(f"{what} (streams.bench)")
        value, reason = streams_rate(bench.base, key, n)
        bench.results[key] = None if value is None else round(value)
        if reason:
            bench.missing[key] = reason


def autopilot_stage(bench: Bench) -> None:
    """The autopilot against the best fixed bid in hindsight (loadtests/optimiser.py): the shipped
    diurnal scenario for the headline keys, and held-out random markets for the details."""
    progress = bench.progress
    progress.stage(f"autopilot vs {2 * optimiser.GRID_POINTS} fixed-bid runs: the diurnal scenario, then held-out markets")
    scenario = orjson.loads((ROOT / "loadtests" / "scenarios" / "diurnal.json").read_bytes())
    found = optimiser.compare(scenario, "voltbook-auto")
    bench.results.update(autopilot_clicks_vs_best_fixed=found["clicks_vs_best_fixed"],
                         autopilot_budget_used=found["budget_used"],
                         simulate_intents_per_s=found["simulate_intents_per_s"])
    found.pop("grid")
    held_out = []
    for seed in HELD_OUT_SEEDS:
        progress(f"held-out market seed {seed}")
        result = optimiser.compare(optimiser.random_market(seed), "auto")
        held_out.append({"seed": seed, "clicks_vs_best_fixed": result["clicks_vs_best_fixed"],
                         "budget_used": result["budget_used"]})
    ratios = [market["clicks_vs_best_fixed"] for market in held_out]
    bench.details["autopilot"] = {"diurnal": found, "held_out": held_out,
                                  "held_out_mean": round(sum(ratios) / len(ratios), 3), "held_out_min": min(ratios)}
    progress("target_cpa on the cpa scenario")
    cpa = orjson.loads((ROOT / "loadtests" / "scenarios" / "cpa.json").read_bytes())
    campaign = next(c for c in cpa["campaigns"] if (c.get("goal") or {}).get("type") == "target_cpa")
    outcome = simulate(read_scenario(cpa))["campaigns"][campaign["campaign_id"]]
    target = campaign["goal"]["target_micros"]
    ratio = None if outcome["avg_cpa_micros"] is None else round(outcome["avg_cpa_micros"] / target, 3)
    bench.results["autopilot_cpa_vs_target"] = ratio
    bench.details["autopilot_cpa"] = {"target_micros": target, **{k: outcome[k] for k in (
        "clicks", "conversions", "spend_micros", "budget_micros", "avg_cpc_micros", "avg_cpa_micros")}}


def cluster_stage(bench: Bench) -> None:
    """With --cluster: Kafka as three brokers, the worker's events/s there (beside the single
    broker's of the kafka stage) and the longest pause in decisions when the busiest broker dies,
    at half the worker's maximum; then the worker on a Redis Cluster (`redis_cluster_throughput`);
    then one broker and one Redis again."""
    if not bench.args.cluster:
        for key in CLUSTER_KEYS:
            bench.missing[key] = CLUSTER_SKIPPED[key]
        return
    progress, env = bench.progress, dict(os.environ)
    progress.stage("three brokers: make down, make up BROKERS=3")
    base = bench.base.with_(kafka=CLUSTER_KAFKA)
    try:
        subprocess.run(["bash", "ops/down.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(["bash", "ops/up.sh"], cwd=ROOT, env=dict(env, BROKERS="3"), check=True, capture_output=True,
                       timeout=600)
        # Three new brokers, three cold JITs: warmed up as the single broker was, for at most 30 s.
        if "warmup" not in bench.skip:
            warm_brokers(bench, "cluster_warmup", base, min(30.0, bench.args.warmup_seconds), cluster_broker_pids())
        found = asyncio.run(bench_kafka.throughput(base, bench.args.events // 2, 1, progress, bench.args.reports, False))
        bench.results["cluster_worker_events_per_s"] = found["worker_events_per_s"]
        bench.details["cluster_throughput"] = found
        single_max = bench.results.get("worker_events_per_s") or found["worker_events_per_s"]
        progress.stage("three brokers: the busiest one killed under half the worker's maximum")
        failover = asyncio.run(failover_pause(base, 0.5 * float(single_max), progress=progress,
                                              log=bench.args.reports / "worker-failover.log"))
        bench.results["failover_pause_ms"] = failover["failover_pause_ms"]
        bench.details["failover"] = failover
    except Exception as error:
        traceback.print_exc()
        failed(bench.missing, CLUSTER_KEYS[:2], error)
    try:
        redis_cluster_throughput(bench, env)
    except Exception as error:
        traceback.print_exc()
        failed(bench.missing, CLUSTER_KEYS[2:], error)
    finally:
        progress.stage("one broker and one Redis again: make down, make up")
        subprocess.run(["bash", "ops/down.sh"], cwd=ROOT, env=env, capture_output=True, timeout=300)
        subprocess.run(["bash", "ops/up.sh"], cwd=ROOT, env=dict(env, BROKERS="1", REDIS="single"), capture_output=True,
                       timeout=600)


def redis_cluster_throughput(bench: Bench, env: dict[str, str]) -> None:
    """The worker's events/s on a Redis Cluster (three primaries, a replica each; one broker), beside
    the single Redis's of the kafka stage: what the reservation split by hash slot costs."""
    progress = bench.progress
    progress.stage("Redis Cluster: make down, make up REDIS=cluster (one broker)")
    subprocess.run(["bash", "ops/down.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    subprocess.run(["bash", "ops/up.sh"], cwd=ROOT, env=dict(env, BROKERS="1", REDIS="cluster"), check=True,
                   capture_output=True, timeout=600)
    base = bench.base.with_(redis=CLUSTER_REDIS)
    if "warmup" not in bench.skip:  # a new broker: warmed up as the first one was, for at most 30 s
        warm_brokers(bench, "redis_cluster_warmup", base, min(30.0, bench.args.warmup_seconds), None)
    found = asyncio.run(bench_kafka.throughput(base, bench.args.events // 2, 1, progress, bench.args.reports, False))
    bench.results["redis_cluster_worker_events_per_s"] = found["worker_events_per_s"]
    bench.details["redis_cluster_throughput"] = found


STAGES = {"warmup": warmup_stage, "engine": engine_stage, "kafka": kafka_stage, "latency": latency_stage,
          "billing": billing_stage, "autopilot": autopilot_stage, "cluster": cluster_stage}


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    base = Settings.from_env()
    require_local(base)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    fractions = sorted({float(f) for f in args.fractions.split(",")} | {0.5})
    progress = Progress()
    args.reports.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = dict.fromkeys(KEYS)
    results.update(machine=machine(), command=command, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # What ran: the compiled hot path (core/native.py) or the same source interpreted.
    results["hot_path"] = native.check()
    bench = Bench(args, command, base, progress, results, fractions, skip=skip)
    try:
        for name, stage in STAGES.items():
            if name not in skip:
                stage(bench)
    finally:
        progress.done()
    for key in KEYS:
        if results[key] is None and key not in bench.missing:
            bench.missing[key] = "stage skipped (--skip)" if skip else "not measured"
    results["missing"] = bench.missing
    results["details"] = bench.details
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["duration_s"] = round(time.monotonic() - progress.started)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile is None:
        args.profile = bench_kafka.py_spy() is not None
    raw = sys.argv[1:] if argv is None else argv
    command = " ".join(["make bench" if not raw and os.environ.get("MAKELEVEL") else "python -m loadtests.bench", *raw])
    results = run(args, command)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print()
    print(table(results))
    if "worker_profile" in results["details"]:
        print("\nWorker profile (py-spy --native, an extra worker run, not counted):")
        print("\n".join(results["details"]["worker_profile"][:30]))
    update_markdown(args.markdown, markdown_block(results, args.plot, args.markdown.parent))
    print(f"\nwrote {args.output}, {args.plot}, {args.markdown} ({results['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
