"""The benchmark's second reference: the least an exactly-once worker on aiokafka does.

`python -m loadtests.txn_loop --group G` consumes the stack's `chat.intents` (read_committed),
decodes every record with `schemas.codec.decode`, and for each one produces one record to
`ad.decisions` (the intent's own bytes, so the latency reader finds its event_id) and
`--impressions` records per event on average to `ad.impressions`, on the very loop the worker
runs on (core/loop.py: its producer, consumer, batching and one transaction per batch with the
consumed offsets). No auctions, no Redis.

What it measures: the cost of exactly-once on aiokafka on this machine (transactions, their
round trips and commit markers, the broker's work for them), apart from the auction. The worker
cannot be faster or quicker than this loop; `make bench` runs it beside the plain loop and the
worker, on the same topics and offered loads. It runs until SIGTERM (or `--expect` records).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from auction.batching import loop_options
from core.loop import Batch, Loop, Output, RoleBase, Step, running
from core.metrics import Metrics
from core.settings import Settings
from loadtests.baseline import readable_intents


class TxnLoopRole(RoleBase):
    """The worker's Kafka work without the auction: a decision-sized and `impressions` impression
    records per event."""

    def __init__(self, settings: Settings, group: str, impressions: float, from_end: bool,
                 linger_ms: int = 0) -> None:
        self.name = group
        self.inputs = ("chat.intents",)
        self.options = loop_options(linger_ms=linger_ms, start_at="latest" if from_end else "earliest")
        self.impressions = impressions
        self.decisions_topic, self.impressions_topic = settings.topic("ad.decisions"), settings.topic("ad.impressions")
        self.owed = 0.0  # impressions owed so far: `impressions` per event on average
        self.first_cpu: float | None = None

    async def process(self, batch: Batch, now_ms: int) -> Step:
        if batch and self.first_cpu is None:
            self.first_cpu = time.process_time()
        outputs: list[Output] = []
        for record, intent in readable_intents(batch):
            outputs.append((self.decisions_topic, intent["session_id"].encode(), record.value))
            self.owed += self.impressions
            for slot in range(int(self.owed)):
                outputs.append((self.impressions_topic, f"{intent['event_id']}:{slot}".encode(), record.value))
            self.owed -= int(self.owed)
        return Step(outputs)


async def run(settings: Settings, group: str, impressions: float, expect: int | None,
              from_end: bool, linger_ms: int = 0) -> tuple[int, float, float]:
    """Records consumed (and committed) until stopped or `expect` were, and this process's CPU
    seconds when the first batch came and when the last one was committed."""
    stop = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    name = settings.logical(group)  # the loop's consumer group is settings.group(name) == group
    role = TxnLoopRole(settings, name, impressions, from_end, linger_ms)
    async with running([Loop(settings, role, metrics, stop, instance="txn-loop")], stop):
        while not stop.is_set() and (expect is None or done(metrics, name) < expect):
            await asyncio.sleep(0.01)
    cpu_end = time.process_time()
    return int(done(metrics, name)), role.first_cpu or cpu_end, cpu_end


def done(metrics: Metrics, name: str) -> float:
    return metrics.value("vickrey_records_committed_total", role=name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.txn_loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", required=True, help="consumer group (a new one starts at --from-end or the beginning)")
    parser.add_argument("--impressions", type=float, default=2.0, help="impression records per event, on average (default 2)")
    parser.add_argument("--expect", type=int, help="stop after this many records (default: run until SIGTERM)")
    parser.add_argument("--from-end", action="store_true", help="a new group starts at the end of chat.intents")
    parser.add_argument("--linger-ms", type=int, default=0, metavar="MS",
                        help="extra wait for a fuller batch when no commit is in flight (the worker's --linger-ms)")
    args = parser.parse_args(argv)
    count, cpu_start, cpu_end = asyncio.run(run(Settings.from_env(), args.group, args.impressions, args.expect,
                                                args.from_end, args.linger_ms))
    print(count, f"{cpu_start:.3f}", f"{cpu_end:.3f}")  # read by loadtests.bench_kafka
    return 0


if __name__ == "__main__":
    sys.exit(main())
