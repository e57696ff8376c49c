"""The transactional reference loop of `make bench` (loadtests/txn_loop.py), on the real broker:
it moves every record once, in committed transactions, with its offsets."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest

from core.settings import Settings
from loadtests import workload
from loadtests.stack import committed, end_offsets
from tests.conftest import ROOT
from tests.kafka_helpers import produce, read_all

pytestmark = pytest.mark.integration


async def test_every_record_goes_through_once_with_its_offsets(topics: Settings, env: dict[str, str]) -> None:
    intents = workload.intents(300, tag="x")
    bad = [(b"u", b"not json"), (b"u", orjson.dumps({"event_id": "e-bad"}))]
    await produce(topics, "chat.intents", [*((i["user_id"].encode(), orjson.dumps(i)) for i in intents), *bad])
    group = topics.group("txn-loop-test")  # a consumer group, prefixed like every group
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "loadtests.txn_loop", "--group", group, "--expect", "302", "--impressions", "1.5"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    count, cpu_start, cpu_end = done.stdout.split()
    assert int(count) == 302 and 0 < float(cpu_start) <= float(cpu_end)

    decisions = await read_all(topics, "ad.decisions", expect=300)
    assert sorted(d["event_id"] for d in decisions) == sorted(i["event_id"] for i in intents)  # bad ones skipped
    impressions = await read_all(topics, "ad.impressions", expect=450)
    assert len(impressions) == 450  # 1.5 per valid event
    ends = await end_offsets(topics, topics.topic("chat.intents"))
    assert await committed(topics, group) == ends  # committed with the transactions
