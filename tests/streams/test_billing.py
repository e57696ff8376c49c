"""Billing: budgets running out, and exactly-once under SIGKILL of the real `vickrey streams billing`."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import redis

from core.metrics import Metrics
from core.settings import Settings
from core.topics import ensure_topics
from streams.billing import Billing
from streams.runner import running
from tests.conftest import ROOT
from tests.streams.kit import click, impression, kill_repeatedly, now_ms, produce, read_topic

pytestmark = pytest.mark.integration
VICKREY = ROOT / ".venv" / "bin" / "vickrey"


def set_budget(client: redis.Redis, settings: Settings, campaign_id: str, daily: int, total: int) -> None:
    client.hset(settings.keys.budget(campaign_id), mapping={"daily_micros": daily, "total_micros": total})


def spend_total(client: redis.Redis, settings: Settings, campaign_id: str) -> int:
    return int(client.get(settings.keys.spend_total(campaign_id)) or 0)


async def test_cpc_budget_runs_out_then_overdelivery(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics
    await ensure_topics(settings)
    set_budget(redis_client, settings, "c-cpc", daily=1_000_000, total=5_000_000)
    t = now_ms()
    # One partition key, so the clicks settle in this order.
    clicks = [click(f"k-{n}", "e-1:1", "c-cpc", t + n, 300_000) for n in range(6)]
    await produce(settings, "ad.clicks", [("e-1:1", c) for c in clicks])
    await produce(settings, "ad.impressions", [("e-bad:1", {**impression("e-bad:1", "c-cpc", t), "bid_type": "cpx"})])
    async with running(settings, [Billing(settings, Metrics())]):
        entries = await read_topic(settings, "billing.ledger", expect=6)
        dead = await read_topic(settings, "ad.impressions.dlq", expect=1, settle_s=0.2)
        # The same click_id again from another record: already billed, no second entry.
        await produce(settings, "ad.clicks", [("e-1:1", clicks[0])])
        entries = await read_topic(settings, "billing.ledger", expect=6, settle_s=2.0)
    billed = [(e["entry_id"], e["amount_micros"], e["overdelivery"]) for e in entries]
    assert billed == [
        ("k-0", 300_000, False),
        ("k-1", 300_000, False),
        ("k-2", 300_000, False),  # 900,000 of the 1,000,000 daily budget
        ("k-3", 0, True),
        ("k-4", 0, True),
        ("k-5", 0, True),
    ]
    assert spend_total(redis_client, settings, "c-cpc") == 900_000
    assert len(dead) == 1 and "bid_type" in dead[0]["error"]
    day_keys = list(redis_client.scan_iter(match=settings.keys.spend_day("c-cpc", "*")))
    assert len(day_keys) == 1 and int(redis_client.get(day_keys[0]) or 0) == 900_000


def start_billing(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([str(VICKREY), "streams", "billing"], env=env, cwd=ROOT, stdout=out, stderr=out)


@pytest.mark.slow
async def test_sigkill_billing_keeps_every_charge_exactly_once(
    topics: Settings, redis_client: redis.Redis, env: dict[str, str], tmp_path: Path
) -> None:
    settings = topics
    await ensure_topics(settings)
    rng = random.Random(os.environ.get("VICKREY_TEST_SEED", "5"))
    campaigns = ["c-m0", "c-m1", "c-m2", "c-k0", "c-k1"]  # CPM, and CPC (c-k1's budget runs out)
    for cid in campaigns:
        set_budget(redis_client, settings, cid, daily=10**12, total=10**12)
    set_budget(redis_client, settings, "c-k1", daily=2_000_000, total=2_000_000)
    expected: dict[str, str] = {}  # entry_id -> campaign
    cpm_spend: Counter[str] = Counter()

    killing = True

    async def feed() -> None:
        base = now_ms()
        chunk = 0
        while killing or chunk < 20:
            chunk += 1
            imps, clks = [], []
            for n in range(150):
                cid = rng.choice(campaigns)
                iid = f"e-{chunk}-{n}:1"
                imp = impression(iid, cid, base + chunk * 200 + n, bid_type="cpc" if cid.startswith("c-k") else "cpm",
                                 price_micros=rng.randrange(500_000, 5_000_000))
                # The auction worker reserves a CPM charge in spend when it publishes the impression.
                if imp["charge_micros"]:
                    redis_client.incrby(settings.keys.spend_total(cid), imp["charge_micros"])
                    cpm_spend[cid] += imp["charge_micros"]
                imps.append((iid, imp))
                expected[iid] = cid
                if imp["bid_type"] == "cpc" and rng.random() < 0.5:
                    kid = f"k-{chunk}-{n}"
                    clks.append((iid, click(kid, iid, cid, imp["ts"] + 1_000, imp["price_micros"] // 10)))
                    expected[kid] = cid
            await produce(settings, "ad.impressions", imps)
            await produce(settings, "ad.clicks", clks)
            await asyncio.sleep(0.1)

    log = tmp_path / "billing.log"
    log.touch()
    feeder = asyncio.create_task(feed())
    # Kill it while it bills: once it has partitions, at a random moment.
    await kill_repeatedly(lambda: start_billing(env, log), log, rng, times=4)
    killing = False
    await feeder
    proc = start_billing(env, log)
    try:
        entries = await read_topic(settings, "billing.ledger", expect=len(expected), timeout_s=90, settle_s=3.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]

    counts = Counter(e["entry_id"] for e in entries)
    assert {k: n for k, n in counts.items() if n > 1} == {}, "ledger entries written twice"
    assert set(counts) == set(expected), f"missing: {sorted(set(expected) - set(counts))[:10]}"
    ledger_sum: Counter[str] = Counter()
    for e in entries:
        assert e["campaign_id"] == expected[e["entry_id"]]
        ledger_sum[e["campaign_id"]] += e["amount_micros"]
    for cid in campaigns:
        assert spend_total(redis_client, settings, cid) == ledger_sum[cid], cid
    overdelivered = [e for e in entries if e["overdelivery"]]
    assert overdelivered and all(e["campaign_id"] == "c-k1" and e["amount_micros"] == 0 for e in overdelivered)
    assert ledger_sum["c-k1"] <= 2_000_000
