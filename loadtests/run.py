"""`python -m loadtests.run --duration 20s` (`make loadtest DURATION=20s`): Locust, headless.

Runs loadtests/locustfile.py against the stack of the VICKREY_* settings (by default the one
`make up` started): creates missing topics, loads the sample and synthetic campaigns when the
namespace has none, and, when nothing consumes `chat.intents` (or with --start-pipeline), starts
`vickrey run` for the run and stops it afterwards. Writes Locust's CSV and HTML reports and a
JSON summary into reports/loadtest/ (ignored by git) and prints end-to-end latency percentiles
(intent produced -> decision readable) and the fill rate. Exit code 0 when decisions came back.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from core.settings import Settings
from core.topics import ensure_topics
from loadtests import generator
from loadtests.shapes import SHAPES, parse_duration
from loadtests.stack import (
    ROOT,
    apply,
    campaign_count,
    env_for,
    require_local,
    start_vickrey,
    stop_process,
    wait_for_group,
)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SAMPLES = ROOT / "vickrey" / "samples" / "campaigns.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", default="60s", help="how long the load runs, e.g. 20s, 2m (default 60s)")
    p.add_argument("--shape", choices=SHAPES, default=os.environ.get("VICKREY_LOAD_SHAPE", "steady"),
                   help="steady load, stepup toward saturation, or spike (default steady)")
    p.add_argument("--rate", type=float, default=200.0, help="base intents/s (default 200)")
    p.add_argument("--user-rate", type=float, default=10.0, help="intents/s per Locust user (default 10)")
    p.add_argument("--peak-factor", type=float, default=5.0, help="spike / last step as a multiple of --rate")
    p.add_argument("--max-events", type=int, default=1_000_000, help="stop after this many intents")
    p.add_argument("--click-rate", type=float, default=0.05, help="share of impressions clicked (default 0.05)")
    p.add_argument("--decision-timeout", type=float, default=5.0, help="seconds before a decision counts as timed out")
    p.add_argument("--start-pipeline", action="store_true", help="start `vickrey run` for the run even if one runs")
    p.add_argument("--no-streams", action="store_true", help="a started pipeline runs the auction worker only")
    p.add_argument("--reports", type=Path, default=ROOT / "reports" / "loadtest", help="report folder")
    p.add_argument("--seed", type=int, default=None, help="seed of the intent generator")
    return p.parse_args(argv)


async def prepare(settings: Settings) -> int:
    """Topics exist; campaigns exist (samples + synthetic ones when the namespace has none)."""
    await ensure_topics(settings)
    if await campaign_count(settings) == 0:
        samples = orjson.loads(SAMPLES.read_bytes())
        applied = await apply(settings, samples + generator.campaigns())
        print(f"  no campaigns in namespace {settings.namespace!r}: loaded {applied} (samples + synthetic)")
    return await campaign_count(settings)


def locust_env(settings: Settings, args: argparse.Namespace, duration_s: float, summary: Path) -> dict[str, str]:
    env = env_for(settings)
    env.update(
        VICKREY_LOAD_SHAPE=args.shape,
        VICKREY_LOAD_RATE=str(args.rate),
        VICKREY_LOAD_USER_RATE=str(args.user_rate),
        VICKREY_LOAD_PEAK_FACTOR=str(args.peak_factor),
        VICKREY_LOAD_DURATION_S=str(duration_s),
        VICKREY_LOAD_MAX_EVENTS=str(args.max_events),
        VICKREY_LOAD_CLICK_RATE=str(args.click_rate),
        VICKREY_DECISION_TIMEOUT_S=str(args.decision_timeout),
        VICKREY_LOADTEST_SUMMARY=str(summary),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    if args.seed is not None:
        env["VICKREY_LOAD_SEED"] = str(args.seed)
    return env


def run_locust(env: dict[str, str], reports: Path, duration_s: float, timeout_s: float) -> int:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--csv", str(reports / "vickrey"), "--html", str(reports / "report.html"),
        "--loglevel", "WARNING", "--stop-timeout", "5",
    ]
    with open(reports / "locust.log", "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        started = time.monotonic()
        tty = sys.stdout.isatty()
        shown = -1
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed > duration_s + timeout_s:
                print("\n  locust overran its time bound: stopping it", file=sys.stderr)
                stop_process(proc, timeout=10)
                break
            done = min(elapsed, duration_s)
            if tty:
                bar = "#" * int(30 * done / duration_s)
                print(f"\r  load [{bar:<30}] {done:5.1f} / {duration_s:g} s", end="", flush=True)
            elif int(done // 5) != shown:
                shown = int(done // 5)
                print(f"  load running: {done:5.1f} / {duration_s:g} s", flush=True)
            time.sleep(0.25)
        if tty:
            print()
        return proc.wait()


def publish_rate(reports: Path) -> float | None:
    """Requests/s of the "publish" row of Locust's stats CSV."""
    try:
        with open(reports / "vickrey_stats.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("Type") == "publish":
                    return float(row["Requests/s"])
    except (OSError, KeyError, ValueError):
        return None
    return None


def print_summary(summary: dict[str, Any], reports: Path, duration_s: float) -> None:
    lat = summary.get("latency_ms") or {}
    fill = summary.get("fill_rate")
    rate = publish_rate(reports)

    def ms(value: Any) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    print("\nLoad test summary")
    print(f"  shape            {summary.get('shape')} (base {summary.get('base_rate_per_s'):g} intents/s), {duration_s:g} s")
    print(f"  published        {summary.get('published')} intents" + (f" ({rate:.0f}/s)" if rate else "")
          + (f", {summary['publish_failures']} failed" if summary.get("publish_failures") else ""))
    print(f"  decisions        {summary.get('decisions')} (timeouts {summary.get('timeouts')}, unanswered {summary.get('unanswered_at_end')})")
    print(f"  end-to-end       p50 {ms(lat.get('p50'))}   p95 {ms(lat.get('p95'))}   p99 {ms(lat.get('p99'))}")
    print(f"  fill rate        {'-' if fill is None else f'{fill:.1%}'}")
    reasons = summary.get("no_fill_reasons") or {}
    if reasons:
        print("  no-fill reasons  " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
    print(f"  clicks           {summary.get('clicks')}")
    print(f"  reports          {reports}/report.html, {reports}/vickrey_stats.csv, summary.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    duration_s = parse_duration(args.duration)
    if not 0 < duration_s <= 3600:
        raise SystemExit("--duration must be between 1 s and 1 h")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader elections of new topics are noise here
    settings = Settings.from_env()
    require_local(settings)
    reports: Path = args.reports
    reports.mkdir(parents=True, exist_ok=True)
    summary_path = reports / "summary.json"
    summary_path.unlink(missing_ok=True)
    print(f"Load test: {args.shape}, {duration_s:g} s, topics {settings.topic_prefix or '(no prefix)'}*, namespace {settings.namespace}")
    campaigns = asyncio.run(prepare(settings))
    print(f"  {campaigns} campaigns in the store")
    pipeline = None
    group = settings.group("auction")
    if args.start_pipeline or not asyncio.run(wait_for_group(settings, group, timeout=1.0)):
        print("  starting the pipeline (`vickrey run`) for this run; log: " + str(reports / "pipeline.log"))
        run_args = ["run", "--no-streams"] if args.no_streams else ["run"]
        # metrics on a free port: a demo or another stack may hold the default one
        pipeline = start_vickrey(settings.with_(metrics_port=0), *run_args, log=reports / "pipeline.log")
        if not asyncio.run(wait_for_group(settings, group, timeout=90, proc=pipeline)):
            stop_process(pipeline)
            print("  the auction worker did not join its consumer group; see pipeline.log", file=sys.stderr)
            return 1
    else:
        print(f"  a pipeline is consuming chat.intents (group {group}): using it")
    try:
        code = run_locust(locust_env(settings, args, duration_s, summary_path), reports, duration_s,
                          timeout_s=args.decision_timeout + 60)
    finally:
        if pipeline is not None:
            print("  stopping the pipeline")
            stop_process(pipeline)
    if not summary_path.exists():
        print(f"locust wrote no summary (exit code {code}); see {reports / 'locust.log'}", file=sys.stderr)
        return 1
    summary = orjson.loads(summary_path.read_bytes())
    print_summary(summary, reports, duration_s)
    return 0 if summary.get("decisions") else 1


if __name__ == "__main__":
    sys.exit(main())
