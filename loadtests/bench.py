"""`make bench` (`python -m loadtests.bench`): every performance figure, side by side, one run.

Stages: the auction engine alone (auctions/s, index build, bytes per campaign); the plain
aiokafka loop, the transactional loop (no auction, no Redis) and the auction worker on the same
pre-filled topic; end-to-end latency at several fractions of the worker's maximum (the 50% point
gives the e2e keys), and of the transactional loop at that 50% rate; billing (streams.bench).
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
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from core import native
from core.settings import Settings
from loadtests import bench_kafka, engine_bench
from loadtests.bench_report import TARGETS, markdown_block, table, update_markdown
from loadtests.plot import bench_plot
from loadtests.profile import summarise
from loadtests.stack import ROOT, cleanup, isolated, new_tag, require_local

KEYS = (
    "engine_auctions_per_s", "index_build_s_100k", "index_bytes_per_campaign", "baseline_events_per_s",
    "worker_events_per_s", "worker_ratio", "e2e_p50_ms", "e2e_p99_ms", "e2e_rate_events_per_s", "billing_events_per_s",
)


class Progress:
    """Stage headers, and one progress line per stage (rewritten in place on a terminal)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0
        self.pending = False

    def stage(self, name: str) -> None:
        self._end_line()
        print(f"[{self._clock()}] == {name}", flush=True)

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if self.tty:
            print(f"\r[{self._clock()}]    {message:<70}", end="", flush=True)
            self.pending = True
        elif now - self.last_print >= 3.0 or not message.endswith((" in", " out")):
            print(f"[{self._clock()}]    {message}", flush=True)
            self.last_print = now

    def _end_line(self) -> None:
        if self.pending:
            print()
            self.pending = False

    def done(self) -> None:
        self._end_line()

    def _clock(self) -> str:
        elapsed = int(time.monotonic() - self.started)
        return f"{elapsed // 60:02d}:{elapsed % 60:02d}"


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
    p.add_argument("--skip", default="", help="comma-separated stages to skip: engine,kafka,latency,billing")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="py-spy the worker during its last run (default: when py-spy is installed)")
    p.add_argument("--output", type=Path, default=ROOT / "bench-results.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--reports", type=Path, default=ROOT / "reports" / "bench", help="worker logs and the profile")
    return p.parse_args(argv)


def failed(missing: dict[str, str], keys: tuple[str, ...], error: BaseException) -> None:
    for key in keys:
        missing[key] = f"the stage failed: {type(error).__name__}: {error}"


def billing(base: Settings, n: int) -> tuple[float | None, str | None]:
    try:
        from streams import bench as streams_bench
    except ImportError as error:
        return None, f"streams.bench is not importable: {error}"
    measure = getattr(streams_bench, "billing_events_per_s", None)
    if measure is None:
        return None, "streams.bench has no billing_events_per_s(settings, n)"
    settings = isolated(base, new_tag("benchB"))
    try:
        result = measure(settings, n)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return float(result), None
    except Exception as error:  # the streams benchmark is another team's code: report, don't crash
        traceback.print_exc()
        return None, f"streams.bench.billing_events_per_s failed: {type(error).__name__}: {error}"
    finally:
        asyncio.run(cleanup(settings))


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
    missing: dict[str, str] = {}
    details: dict[str, Any] = {}

    if "engine" not in skip:
        progress.stage("engine alone: 10,000 campaigns, one core")
        found = engine_bench.engine_auctions_per_s(runs=args.engine_runs, progress=progress)
        progress.stage("index build: 100,000 campaigns")
        found |= engine_bench.index_build(progress=progress)
        details["engine"] = {k: v for k, v in found.items() if k not in KEYS}
        results.update({k: v for k, v in found.items() if k in KEYS})
    if "kafka" not in skip:
        progress.stage(f"baseline vs worker: {args.events:,} events, {args.runs} runs each, 6 partitions, 1,000 campaigns")
        try:
            found = asyncio.run(bench_kafka.throughput(base, args.events, args.runs, progress, args.reports, args.profile))
        except Exception as error:  # report what failed and go on with the other stages
            traceback.print_exc()
            failed(missing, ("baseline_events_per_s", "worker_events_per_s", "worker_ratio"), error)
        else:
            details["throughput"] = {k: v for k, v in found.items() if k not in KEYS}
            results.update({k: v for k, v in found.items() if k in KEYS})
            results["worker_impressions_per_s"] = found["worker_impressions_per_s"]
            results.update(txn_loop_events_per_s=found["txn_loop_events_per_s"], txn_loop_ratio=found["txn_loop_ratio"])
        profile_file = args.reports / "worker-profile.txt"
        if args.profile and profile_file.exists():
            details["worker_profile"] = summarise(profile_file).splitlines()
    e2e_keys = ("e2e_p50_ms", "e2e_p99_ms", "e2e_rate_events_per_s")
    if "latency" not in skip and results["worker_events_per_s"]:
        progress.stage("end-to-end latency at " + ", ".join(f"{f:.0%}" for f in fractions) + " of the worker max")
        try:
            points = asyncio.run(bench_kafka.latency(base, float(results["worker_events_per_s"]), fractions,
                                                     args.latency_seconds, progress, args.reports))
        except Exception as error:
            traceback.print_exc()
            failed(missing, e2e_keys, error)
        else:
            details["latency_curve"] = points
            half = next(p for p in points if p["fraction_of_max"] == 0.5)
            results.update(e2e_p50_ms=half["p50_ms"], e2e_p99_ms=half["p99_ms"],
                           e2e_rate_events_per_s=half["offered_events_per_s"])
            # The same load on the transactional loop: exactly-once on aiokafka alone, no auction.
            try:
                impressions = float(details.get("throughput", {}).get("impressions_per_event") or 2.0)
                reference = asyncio.run(bench_kafka.txn_loop_latency(base, float(half["offered_events_per_s"]),
                                                                     impressions, args.latency_seconds, progress))
            except Exception as error:
                traceback.print_exc()
                failed(missing, ("txn_loop_e2e_p50_ms", "txn_loop_e2e_p99_ms"), error)
            else:
                details["txn_loop_latency"] = reference
                results.update(txn_loop_e2e_p50_ms=reference["p50_ms"], txn_loop_e2e_p99_ms=reference["p99_ms"])
            caption = (f"{command} - {os.cpu_count()} cores, Python {platform.python_version()} - "
                       f"worker max {results['worker_events_per_s']:,} events/s")
            bench_plot(points, float(results["worker_events_per_s"]), float(TARGETS["e2e_p99_ms"][1] or 25), args.plot, caption)
    elif "latency" not in skip:
        for key in e2e_keys:
            missing.setdefault(key, "needs the worker's maximum rate, which was not measured")
    if "billing" not in skip:
        progress.stage(f"billing: {args.billing_events:,} impressions (streams.bench)")
        value, reason = billing(base, args.billing_events)
        results["billing_events_per_s"] = None if value is None else round(value)
        if reason:
            missing["billing_events_per_s"] = reason
    progress.done()
    for key in KEYS:
        if results[key] is None and key not in missing:
            missing[key] = "stage skipped (--skip)" if skip else "not measured"
    results["missing"] = missing
    results["details"] = details
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
        print("\nWorker profile (py-spy, last worker run):")
        print("\n".join(results["details"]["worker_profile"][:30]))
    update_markdown(args.markdown, markdown_block(results, args.plot, args.markdown.parent))
    print(f"\nwrote {args.output}, {args.plot}, {args.markdown} ({results['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
