"""A/B of the auction engine between two checkouts, paired run by run (BENCHMARKS.md).

On a shared machine whose speed swings by ±30 % from minute to minute, two `make bench` runs
cannot tell a few per cent apart. This keeps one process per checkout alive, each with the engine
stage's workload (10,000 campaigns, 20,000 intents), and asks them in turn for one timed run over
fresh requests; the ratio of each adjacent pair cancels most of the swing. Each checkout runs its
own build (`make native` there first: its compiled modules are imported from its folder).

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

NOW_MS = 1_790_000_000_000  # a fixed clock: both sides see the same requests


def serve() -> None:
    """One side: build the workload, then answer each line on stdin with one run's auctions/s."""
    from auction.engine import AuctionEngine  # noqa: PLC0415 - imported from the side's own checkout
    from loadtests import engine_bench, workload  # noqa: PLC0415

    engine = AuctionEngine(engine_bench.build_index(engine_bench.validated(workload.campaigns(n=10_000))))
    intents = workload.intents(20_000)
    for request in engine_bench.fresh_requests(intents[:4000], NOW_MS):  # warm-up
        engine.run(request)
    print("ready", flush=True)
    for _ in sys.stdin:
        requests = engine_bench.fresh_requests(intents, NOW_MS)
        gc.collect()
        started = time.perf_counter()
        for request in requests:
            engine.run(request)
        print(len(requests) / (time.perf_counter() - started), flush=True)


def compare(checkouts: list[Path], pairs: int) -> dict[str, float]:
    sides = [subprocess.Popen([sys.executable, "-m", "loadtests.engine_ab", "--serve"], cwd=folder,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for folder in checkouts]
    try:
        for side, folder in zip(sides, checkouts, strict=True):
            assert side.stdin is not None and side.stdout is not None
            if side.stdout.readline().strip() != "ready":
                raise SystemExit(f"the side in {folder} did not start: is that a checkout, built?")
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
    return {"a_median": round(statistics.median(rates[0])), "b_median": round(statistics.median(rates[1])),
            "b_over_a_paired_median": round(statistics.median(ratios), 3),
            "b_over_a_min": round(min(ratios), 2), "b_over_a_max": round(max(ratios), 2)}


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
