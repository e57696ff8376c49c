"""Summarise a py-spy `--format raw` profile (collapsed stacks) into where the time goes.

`python -m loadtests.profile reports/bench/worker-profile.txt` prints the functions with the
most samples on top of the stack (self) and in the stack (inclusive), and a breakdown by area.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LOCATION = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")

# Areas by path fragment, or by the name mypyc gives a compiled function (CPyDef_<module>___...):
# first match wins (an area per layer of the worker's batch).
AREAS: tuple[tuple[str, str], ...] = (
    ("selectors.py", "waiting for I/O (event loop idle: Redis, Kafka round trips)"),
    ("epoll_wait", "waiting for I/O (event loop idle: Redis, Kafka round trips)"),
    ("epoll_pwait", "waiting for I/O (event loop idle: Redis, Kafka round trips)"),  # uvloop's (libuv)
    ("gc_collect", "garbage collector"),
    # The compiled steps (fastpath/: Rust frames name their module path, e.g. _fastpath::records::write).
    ("_fastpath::intent", "intake (compiled: raw intent to request)"),
    ("_fastpath::Intake", "intake (compiled: raw intent to request)"),
    ("_fastpath::request_and_fields", "intake (compiled: raw intent to request)"),
    ("____read_intents", "intake (compiled: raw intent to request)"),
    ("Intake.read (auction/fastpath.py", "intake (compiled: raw intent to request)"),  # and PyO3 frames it calls
    ("_fastpath::engine", "auction engine"),  # the compiled twin: _fastpath::engine::Engine::run, ::engine_py
    ("CPyDef_twin___", "auction engine"),
    ("auction/twin.py", "auction engine"),
    ("_fastpath::", "output records (build/freeze)"),  # the writer: _fastpath::records, ::json, ::Writer
    ("Writer.write (auction/fastpath.py", "output records (build/freeze)"),  # not asyncio's StreamWriter
    ("AuctionRequest___from_intent", "request parsing (AuctionRequest)"),
    ("CPyDef_engine___", "auction engine"),
    ("CPyDef_index___", "auction engine"),
    ("CPyDef_pricing___", "auction engine"),
    ("CPyDef_pacing___", "auction engine"),
    ("CPyDef_people___", "auction engine"),
    ("CPyDef_keywords___", "request parsing (AuctionRequest)"),
    ("____claim", "output records (build/freeze)"),
    ("CPyDef_auction___records___", "output records (build/freeze)"),  # mypyc: two modules named records
    ("____read_answers", "Redis reservation (answers)"),
    ("____answer_to_records", "Redis reservation (answers)"),
    ("CPyDef_budgets___", "Redis reservation (client side)"),
    ("CPyDef_codec___", "decode + validate"),
    ("CPyDef_schemas___records___", "decode + validate"),
    ("CPyDef_checks___", "decode + validate"),
    ("CPyDef_kafka___", "Kafka produce (batches)"),
    ("CPyDef_partition___", "Kafka produce (batches)"),
    ("auction/engine.py", "auction engine"),
    ("auction/index.py", "auction engine"),
    ("auction/pricing.py", "auction engine"),
    ("auction/pacing.py", "auction engine"),
    ("auction/model.py", "request parsing (AuctionRequest)"),
    ("auction/keywords.py", "request parsing (AuctionRequest)"),
    ("auction/records.py", "output records (build/freeze)"),
    ("auction/budgets.py", "Redis reservation (client side)"),
    ("redis/", "Redis reservation (client side)"),
    ("schemas/", "decode + validate"),
    ("orjson", "JSON"),
    ("core/kafka.py", "Kafka produce (batches)"),
    ("aiokafka/producer", "Kafka produce (batches)"),
    ("aiokafka/record", "Kafka produce (batches)"),
    ("aiokafka/consumer", "Kafka consume"),
    ("aiokafka/", "Kafka client (other)"),
    ("core/metrics.py", "metrics"),
)
# Frames every stack passes through: an area only when nothing more specific is inside them.
GENERIC: tuple[tuple[str, str], ...] = (
    ("asyncio/", "asyncio event loop"),
    ("auction/worker.py", "worker loop (own code: batches, claims, dataclasses)"),
)


def _frame(frame: str) -> tuple[str, str]:
    match = _LOCATION.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def summarise(path: Path, top: int = 15) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        func, file = _frame(frames[-1])
        self_time[f"{func} ({_short(file)})"] += count
        for name in {f"{fn} ({_short(fl)})" for fn, fl in map(_frame, frames)}:
            inclusive[name] += count
        areas[_area(frames)] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"py-spy samples: {total}", "", "by area (innermost frame naming a specific area; asyncio / worker.py only when none does):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in areas.most_common()]
    lines += ["", f"top {top} functions by self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in self_time.most_common(top)]
    lines += ["", f"top {top} functions by inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _area(frames: list[str]) -> str:
    for table in (AREAS, GENERIC):
        for frame in reversed(frames):
            _, file = _frame(frame)
            for fragment, area in table:
                if fragment in file or fragment in frame:
                    return area
    return "other"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="a py-spy profile written with --format raw")
    print(summarise(parser.parse_args(argv).profile))


if __name__ == "__main__":
    main()
