"""A/B of the worker's compiled steps (fastpath/) against their Python references, in the worker.

`python -m loadtests.fastpath_ab [--rounds 4] [--events 200000]` runs the bench's throughput stage
(the plain loop, the transactional loop and the worker, each over the same pre-filled topic) once
per arm, the arms alternating round by round, and prints each run and the medians: the worker's
events/s, its ratio to the plain loop, and its process's CPU per event. Needs `make up`.

The reference arm turns the compiled intake and writer off in every process the stage starts,
through a `sitecustomize` module on PYTHONPATH: the worker has no setting for it (the compiled
steps are what ships). Each arm's worker says which it ran in its start line (`"intake"`), in
`reports/fastpath-ab/`.

`--switch CODE` puts other code in the reference arm's `sitecustomize`, to A/B any change that one
line of Python undoes in the worker (e.g. `import auction.worker as w; w.RESERVE_CHUNK = 256`): the
reference arm is then the worker with CODE run first, the compiled arm the worker as built.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("reference", "compiled")
# Imported first by every Python process started with it on PYTHONPATH.
SITECUSTOMIZE = "import auction.fastpath as _arm\n_arm._native = lambda: None  # the reference arm\n"
STAGE = (
    "import asyncio, json, sys; from pathlib import Path; from core.settings import Settings; "
    "from loadtests import bench_kafka; "
    "found = asyncio.run(bench_kafka.throughput(Settings.from_env(), int(sys.argv[1]), 1, lambda line: None, "
    "Path(sys.argv[2]))); print('RESULT ' + json.dumps(found))"
)


def arm_environment(arm: str, switch_dir: Path, switch: str = SITECUSTOMIZE) -> dict[str, str]:
    """The environment of one arm's processes: the reference arm's PYTHONPATH leads with the switch."""
    environment = dict(os.environ)
    if arm == "reference":
        (switch_dir / "sitecustomize.py").write_text(switch)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(switch_dir), environment.get("PYTHONPATH")]))
    return environment


def one_run(arm: str, events: int, switch_dir: Path, reports: Path, switch: str = SITECUSTOMIZE) -> dict[str, Any]:
    (reports / arm).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", STAGE, str(events), str(reports / arm)], cwd=ROOT, text=True,
                          env=arm_environment(arm, switch_dir, switch), capture_output=True, check=False)
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not found:
        raise SystemExit(f"the {arm} arm's run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(found[-1].removeprefix("RESULT "))
    return result


def summary(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for arm in ARMS:
        rates = [run["worker_events_per_s"] for run in runs[arm]]
        ratios = [run["worker_ratio"] for run in runs[arm]]
        cpu = [run["cpu_us_per_event"]["worker"]["process"] for run in runs[arm]]
        lines.append(f"{arm:9}  worker events/s {rates} (median {statistics.median(rates):,.0f}), ratio {ratios} "
                     f"(median {statistics.median(ratios):.3f}), process µs/event {cpu} "
                     f"(median {statistics.median(cpu):.1f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - minutes of Kafka runs; arm_environment is tested
    parser = argparse.ArgumentParser(prog="python -m loadtests.fastpath_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="rounds; each runs both arms, alternating (default 4)")
    parser.add_argument("--events", type=int, default=200_000, help="pre-filled intents per run (default 200000)")
    parser.add_argument("--switch", default=SITECUSTOMIZE,
                        help="Python run first in the reference arm's processes (default: the compiled steps off)")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as switch:
        for round_number in range(args.rounds):
            for arm in ARMS if round_number % 2 == 0 else ARMS[::-1]:
                found = one_run(arm, args.events, Path(switch), ROOT / "reports" / "fastpath-ab", args.switch)
                runs[arm].append(found)
                print(f"round {round_number + 1}/{args.rounds} {arm:9} worker {found['worker_events_per_s']:,} events/s, "
                      f"ratio {found['worker_ratio']}, µs/event: {_parts(found['cpu_us_per_event']['worker'])}",
                      flush=True)
    print(summary(runs))


def _parts(cpu: dict[str, Any]) -> str:
    """The worker run's CPU per event by process (worker process, Redis, broker, ...)."""
    return ", ".join(f"{part} {value}" for part, value in cpu.items() if value is not None)


if __name__ == "__main__":
    main()
