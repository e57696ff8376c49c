"""A/B of the auction engine between two checkouts, paired run by run (BENCHMARKS.md).

On a shared machine whose speed swings by ±30 % from minute to minute, two `make bench` runs
cannot tell a few per cent apart. This keeps one process per checkout alive, each with the engine
stage's workload (10,000 campaigns, 20,000 intents), and asks them in turn for one timed run over
fresh requests; the ratio of each adjacent pair cancels most of the swing. Each checkout runs its
own build, imported from its folder: build the other one with this virtualenv's Python from inside
it (loadtests/README.md). A side whose compiled modules are older than their source refuses to run;
each side's hot path (compiled, or what runs interpreted) is in the result.

`python -m loadtests.engine_ab A B [--pairs N]` prints both medians and the median of B/A.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

NOW_MS = 1_790_000_000_000  # a fixed clock: both sides see the same requests


class Comparison(TypedDict):
    a_hot_path: str
    b_hot_path: str
    a_median: int
    b_median: int
    b_over_a_paired_median: float
    b_over_a_min: float
    b_over_a_max: float


def serve() -> None:
    """One side: build the workload, then answer each line on stdin with one run's auctions/s."""
    from auction.engine import AuctionEngine  # noqa: PLC0415 - imported from the side's own checkout
    from core import native  # noqa: PLC0415
    from loadtests import engine_bench, workload  # noqa: PLC0415

    try:
        states = native.check()  # refuses machine code older than its source
    except RuntimeError as error:
        print(error, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    interpreted = [source for source, state in states.items() if state != "compiled"]
    hot_path = f"interpreted: {', '.join(interpreted)}" if interpreted else "compiled"

    engine = AuctionEngine(engine_bench.build_index(engine_bench.validated(workload.campaigns(n=10_000))))
    intents = workload.intents(20_000)
    for request in engine_bench.fresh_requests(intents[:4000], NOW_MS):  # warm-up
        engine.run(request)
    print(f"ready {hot_path}", flush=True)
    for _ in sys.stdin:
        requests = engine_bench.fresh_requests(intents, NOW_MS)
        gc.collect()
        started = time.perf_counter()
        for request in requests:
            engine.run(request)
        print(len(requests) / (time.perf_counter() - started), flush=True)


def compare(checkouts: list[Path], pairs: int) -> Comparison:
    sides = [subprocess.Popen([sys.executable, "-m", "loadtests.engine_ab", "--serve"], cwd=folder,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for folder in checkouts]
    try:
        hot_paths = []
        for side, folder in zip(sides, checkouts, strict=True):
            assert side.stdin is not None and side.stdout is not None
            ready, _, hot_path = side.stdout.readline().strip().partition(" ")
            if ready != "ready":
                raise SystemExit(f"the side in {folder} did not start (a checkout with loadtests/engine_ab.py, "
                                 "its compiled modules current?)")
            hot_paths.append(hot_path)
        rates: list[list[float]] = [[], []]
        for pair in range(pairs):
            for which in ((0, 1) if pair % 2 == 0 else (1, 0)):  # who goes first alternates
                side = sides[which]
                assert side.stdin is not None and side.stdout is not None
                side.stdin.write("run\n")
                side.stdin.flush()
                rates[which].append(float(side.stdout.readline()))
            print(f"pair {pair + 1}/{pairs}: A {rates[0][-1]:,.0f}, B {rates[1][-1]:,.0f} auctions/s", file=sys.stderr)
    finally:
        for side in sides:
            if side.stdin is not None:
                side.stdin.close()
            side.wait()
    ratios = [b / a for a, b in zip(*rates, strict=True)]
    return {"a_hot_path": hot_paths[0], "b_hot_path": hot_paths[1],
            "a_median": round(statistics.median(rates[0])), "b_median": round(statistics.median(rates[1])),
            "b_over_a_paired_median": round(statistics.median(ratios), 3),
            # One rounding for all three, so the median always lies between the min and max as printed.
            "b_over_a_min": round(min(ratios), 3), "b_over_a_max": round(max(ratios), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.engine_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="*", type=Path, help="A and B: two checkouts, each built (`make native`)")
    parser.add_argument("--pairs", type=int, default=20, help="timed runs per side, in alternating pairs")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if len(args.checkouts) != 2:
        parser.error("give two checkouts, A and B")
    print(compare(args.checkouts, args.pairs))


if __name__ == "__main__":
    main()
