"""The conversions role (streams/conversions.py): every outcome of §8 on real Kafka and Redis,
a conversion that arrives before its click, duplicates across a restart, and exactly once under
SIGKILL of the real `vickrey streams conversions`."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from auction.controls import ControlsRole
from core.metrics import Metrics
from core.redis_client import redis_from_url
from core.settings import Settings
from schemas.codec import validate
from streams.conversions import Conversions
from streams.reporting import Reporting
from streams.runner import running
from tests.conftest import ROOT
from tests.streams.kit import click, kill_repeatedly, now_ms, produce, read_topic, wait_for

pytestmark = pytest.mark.integration
VICKREY = ROOT / ".venv" / "bin" / "vickrey"
WINDOW_S = 3600


def conversion(conversion_id: str, click_id: str, ts: int, source: str = "in_chat", **extra: Any) -> dict[str, Any]:
    return {"conversion_id": conversion_id, "click_id": click_id, "ts": ts, "kind": "purchase",
            "value_micros": 25_000_000, "source": source, **extra}


def outcomes(attributed: list[dict[str, Any]], invalid: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(conversion_id, click_id) → "attributed" or the reason; every record valid, none twice."""
    found: dict[tuple[str, str], str] = {}
    for record in attributed + invalid:
        validate("ad.conversions.invalid" if "reason" in record else "ad.conversions", record)
        assert "user_id" not in record and "session_id" not in record
        key = (record["conversion_id"], record["click_id"])
        assert key not in found, f"twice: {record}"
        found[key] = record.get("reason", "attributed")
    return found


async def test_every_outcome_once(topics: Settings) -> None:
    settings = topics.with_(conversion_window_s=WINDOW_S)
    base = now_ms() - 600_000
    await produce(settings, "ad.clicks", [
        ("e-1:1", click("k-1", "e-1:1", "c-1", base, 300_000)),
        ("e-2:1", click("k-2", "e-2:1", "c-1", base + 10, 300_000)),
        ("e-3:1", click("k-3", "e-3:1", "c-other", base + 20, 300_000)),
    ])
    raws = [
        conversion("ok-in-chat", "k-1", base + 60_000),
        conversion("ok-posted", "k-2", base + 1_000, source="advertiser", advertiser_id="adv-c-1", shop="ignored"),
        conversion("ok-in-chat", "k-3", base + 5_000),  # another advertiser: its own ids
        conversion("foreign", "k-3", base + 5_000, source="advertiser", advertiser_id="adv-c-1"),
        conversion("early", "k-1", base - 1),
        conversion("late", "k-2", base + 10 + WINDOW_S * 1000 + 1),
        conversion("nobody", "k-none", base),
        conversion("waits", "k-4", base + 90_000),  # its click arrives after it
    ]
    await produce(settings, "ad.conversions.raw", [(r["click_id"], r) for r in raws])
    await produce(settings, "ad.conversions.raw", [("k-1", b"{not json")])
    metrics = Metrics()
    async with running(settings, [Conversions(settings, metrics, wait_ms=4_000)], metrics):
        await asyncio.sleep(1.5)
        await produce(settings, "ad.clicks", [("e-4:1", click("k-4", "e-4:1", "c-1", base + 80_000, 300_000))])
        attributed = await read_topic(settings, "ad.conversions", expect=4, timeout_s=30)
        # The same order reported again once the first is attributed, for another click of the advertiser.
        again = conversion("ok-posted", "k-1", base + 2_000, source="advertiser", advertiser_id="adv-c-1")
        await produce(settings, "ad.conversions.raw", [("k-1", again)])
        invalid = await read_topic(settings, "ad.conversions.invalid", expect=5, timeout_s=30, settle_s=1.0)
        dlq = await read_topic(settings, "ad.conversions.raw.dlq", expect=1, timeout_s=10)
    assert outcomes(attributed, invalid) == {
        ("ok-in-chat", "k-1"): "attributed", ("ok-posted", "k-2"): "attributed", ("ok-in-chat", "k-3"): "attributed",
        ("waits", "k-4"): "attributed", ("ok-posted", "k-1"): "duplicate", ("foreign", "k-3"): "unknown_click",
        ("early", "k-1"): "before_click", ("late", "k-2"): "expired", ("nobody", "k-none"): "unknown_click",
    }
    waited = next(r for r in attributed if r["conversion_id"] == "waits")
    assert waited == {
        "schema_version": 1, "conversion_id": "waits", "click_id": "k-4", "ts": base + 90_000, "kind": "purchase",
        "value_micros": 25_000_000, "source": "in_chat", "campaign_id": "c-1", "advertiser_id": "adv-c-1",
        "impression_id": "e-4:1", "click_ts": base + 80_000,
    }
    assert all("shop" not in r for r in attributed)  # unknown input fields are not passed on
    assert len(dlq) == 1 and dlq[0]["source_topic"].endswith("ad.conversions.raw")


async def test_a_duplicate_is_told_across_a_restart(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics.with_(conversion_window_s=WINDOW_S)
    base = now_ms() - 60_000
    await produce(settings, "ad.clicks", [("e-1:1", click("k-1", "e-1:1", "c-1", base, 0)),
                                          ("e-2:1", click("k-2", "e-2:1", "c-1", base, 0))])
    await produce(settings, "ad.conversions.raw", [("k-1", conversion("order-1", "k-1", base + 1))])
    metrics = Metrics()
    async with running(settings, [Conversions(settings, metrics)], metrics):
        assert len(await read_topic(settings, "ad.conversions", expect=1, timeout_s=30)) == 1
    await produce(settings, "ad.conversions.raw", [("k-2", conversion("order-1", "k-2", base + 2))])
    metrics = Metrics()
    async with running(settings, [Conversions(settings, metrics)], metrics):
        invalid = await read_topic(settings, "ad.conversions.invalid", expect=1, timeout_s=30)
    attributed = await read_topic(settings, "ad.conversions", expect=1, timeout_s=5)
    assert [(r["click_id"], r["reason"]) for r in invalid] == [("k-2", "duplicate")]
    assert [r["click_id"] for r in attributed] == ["k-1"]  # the first, once: not judged again


async def test_forget_erases_the_persons_stored_clicks(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics
    base = now_ms() - 60_000
    mine = click("k-mine", "e-1:1", "c-1", base, 0) | {"user_id": "u-forget"}
    other = click("k-other", "e-2:1", "c-1", base, 0) | {"user_id": "u-stays"}
    await produce(settings, "ad.clicks", [("e-1:1", mine), ("e-2:1", other)])
    metrics = Metrics()
    async with running(settings, [Conversions(settings, metrics)], metrics):
        await wait_for(lambda: redis_client.exists(settings.keys.click("k-mine"), settings.keys.click("k-other")) == 2,
                       what="the clicks stored")
    client = redis_from_url(settings.redis)
    try:
        await ControlsRole(settings, client, Metrics()).apply({"action": "forget", "user_id": "u-forget"}, now_ms())
    finally:
        await client.aclose()
    assert redis_client.exists(settings.keys.click("k-mine")) == 0
    assert redis_client.exists(settings.keys.click("k-other")) == 1


def start_conversions(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - the child writes it
    return subprocess.Popen([str(VICKREY), "streams", "conversions"], env=env, stdout=out, stderr=out,
                            start_new_session=True)


async def test_sigkill_keeps_every_conversion_exactly_once(
    topics: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """Clicks and conversions (some before their clicks, some duplicates, some unknown) while the
    real role is killed at random moments: every raw conversion ends once, on one of the two topics,
    with the outcome its records call for."""
    settings = topics
    rng = random.Random(os.environ.get("VICKREY_TEST_SEED", "16"))
    expected: dict[str, str] = {}  # conversion_id → outcome
    killing = True

    async def feed() -> None:
        base = now_ms() - 120_000
        chunk = 0
        while killing or chunk < 10:
            chunk += 1
            clicks, raws, late_clicks = [], [], []
            for n in range(60):
                cid, kid, iid = f"c-{n % 3}", f"k-{chunk}-{n}", f"e-{chunk}-{n}:1"
                record = click(kid, iid, cid, base + chunk * 100 + n, 100_000)
                roll = rng.random()
                if roll < 0.1:  # the conversion comes first, its click a moment later
                    late_clicks.append((iid, record))
                elif roll < 0.15:  # no click at all: unknown after the wait
                    kid = f"k-none-{chunk}-{n}"
                else:
                    clicks.append((iid, record))
                conv_id = f"o-{chunk}-{n}"
                raws.append((kid, conversion(conv_id, kid, record["ts"] + 5_000)))
                expected[conv_id] = "unknown_click" if kid.startswith("k-none") else "attributed"
                if roll > 0.9:  # the same order reported again, for another click of the campaign
                    raws.append((kid, conversion(conv_id, kid, record["ts"] + 6_000, source="advertiser",
                                                 advertiser_id=f"adv-{cid}")))
                    expected[f"{conv_id}#2"] = "duplicate"
            await produce(settings, "ad.clicks", clicks)
            await produce(settings, "ad.conversions.raw", raws)
            await asyncio.sleep(0.3)
            await produce(settings, "ad.clicks", late_clicks)

    log = tmp_path / "conversions.log"
    log.touch()
    feeder = asyncio.create_task(feed())
    await kill_repeatedly(lambda: start_conversions(env, log), log, rng, times=4, after_s=(0.2, 2.5))
    killing = False
    await feeder
    proc = start_conversions(env, log)
    try:
        total = len(expected)
        unknown = sum(1 for v in expected.values() if v == "unknown_click")
        attributed = await read_topic(settings, "ad.conversions", expect=total - unknown - sum(
            1 for v in expected.values() if v == "duplicate"), timeout_s=120, settle_s=2)
        invalid = await read_topic(settings, "ad.conversions.invalid", expect=total - len(attributed),
                                   timeout_s=120, settle_s=3)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    seen = Counter(r["conversion_id"] for r in attributed + invalid)
    firsts = {r["conversion_id"]: "attributed" for r in attributed}
    dupes = Counter(r["conversion_id"] for r in invalid if r["reason"] == "duplicate")
    unknowns = {r["conversion_id"] for r in invalid if r["reason"] == "unknown_click"}
    for conv_id, outcome in expected.items():
        if conv_id.endswith("#2"):
            assert dupes[conv_id[:-2]] == 1, conv_id
        elif outcome == "attributed":
            assert firsts.get(conv_id) == "attributed", conv_id
        else:
            assert conv_id in unknowns, conv_id
    assert sum(seen.values()) == total, f"{sum(seen.values())} outcomes for {total} raw conversions"
    assert {r["reason"] for r in invalid} <= {"duplicate", "unknown_click"}

    # What reporting counts (conversions.by-campaign): each attributed conversion once.
    by_campaign = await read_topic(settings, "conversions.by-campaign", expect=len(attributed), timeout_s=30)
    assert Counter(r["conversion_id"] for r in by_campaign) == Counter(r["conversion_id"] for r in attributed)
    metrics = Metrics()
    async with running(settings, [Reporting(settings, metrics, port=None)], metrics):
        reports = await read_topic(settings, "reports.campaign-minute", expect=1, timeout_s=60, settle_s=3)
    assert sum(r["conversions"] for r in reports) == len(attributed)
