"""Reporting on a scripted ledger: exact window counts and spend, a late entry within the grace
counted, one past it not, each window emitted once across a restart, Redis and HTTP views."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
import redis

from core.metrics import Metrics
from core.settings import Settings
from core.topics import ensure_topics
from streams.reporting import Reporting
from streams.runner import running
from streams.windows import WINDOW_MS, report_record
from tests.streams.kit import ledger, now_ms, produce, read_topic

pytestmark = pytest.mark.integration
S = 1000


async def test_windows_hold_exact_counts_and_are_emitted_once(topics: Settings, redis_client: redis.Redis) -> None:
    settings = topics
    await ensure_topics(settings)
    now = now_ms()
    w0 = now - now % WINDOW_MS - 5 * WINDOW_MS
    w1, w2 = w0 + WINDOW_MS, w0 + 2 * WINDOW_MS
    first_part = [
        ledger("e-1:1", "impression", "c-1", w0 + 1 * S, 1_000),
        ledger("e-2:1", "impression", "c-1", w0 + 2 * S, 2_000),
        ledger("k-1", "click", "c-1", w0 + 30 * S, 50_000),
        ledger("e-4:1", "impression", "c-1", w1 + 5 * S, 4_000),
        ledger("e-5:1", "impression", "c-1", w0 + 50 * S, 3_000),  # late, within the 10 s grace
        ledger("e-6:1", "impression", "c-1", w1 + 11 * S, 1_000),  # closes w0
        ledger("e-7:1", "impression", "c-1", w0 + 59 * S, 7_000),  # past the grace: not counted
        ledger("k-2", "click", "c-1", w1 + 20 * S, 0, overdelivery=True),
    ]
    await produce(settings, "billing.ledger", [("c-1", e) for e in first_part])
    metrics = Metrics()
    first = Reporting(settings, metrics, port=None, idle_close_ms=None)
    async with running(settings, [first], metrics):
        reports = await read_topic(settings, "reports.campaign-minute", expect=1)
    assert metrics.value("vickrey_reporting_late_total") == 1

    # A new process (the first one's open window lived only in memory) rebuilds w1 from the commit.
    await produce(settings, "billing.ledger", [("c-1", ledger("e-9:1", "impression", "c-1", w2 + 15 * S, 500))])
    second = Reporting(settings, Metrics(), port=0, idle_close_ms=None)
    async with running(settings, [second]):
        reports = await read_topic(settings, "reports.campaign-minute", expect=2, settle_s=2.0)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{second.http_port}") as http:
            async with http.get("/reports/campaigns/c-1", params={"from": str(w0), "to": str(w2 + WINDOW_MS)}) as resp:
                assert resp.status == 200
                one = await resp.json()
            async with http.get("/reports/campaigns") as resp:
                assert resp.status == 200
                everything = await resp.text()
            async with http.get("/reports/campaigns/no such") as resp:
                assert resp.status == 400
            async with http.get("/reports/campaigns/c-unknown") as resp:
                assert resp.status == 404

    expected_w0 = report_record("c-1", w0, impressions=3, clicks=1, spend_micros=56_000)
    expected_w1 = report_record("c-1", w1, impressions=2, clicks=1, spend_micros=5_000)
    assert reports == [expected_w0, expected_w1]
    assert expected_w0["ecpm_micros"] == 18_666_667 and expected_w0["ctr"] == pytest.approx(1 / 3)
    assert expected_w1["ecpm_micros"] == 2_500_000 and expected_w1["ctr"] == 0.5

    stored = {int(k): orjson.loads(v) for k, v in redis_client.hgetall(settings.keys.minutes("c-1")).items()}
    assert stored[w0] == expected_w0 and stored[w1] == expected_w1
    assert stored[w2]["partial"] is True and stored[w2]["impressions"] == 1
    assert 0 < redis_client.ttl(settings.keys.minutes("c-1")) <= 7 * 86400

    assert [w["window_start"] for w in one["windows"]] == [w0, w1, w2]
    assert one["windows"][0] == expected_w0
    listed = orjson.loads(everything)
    assert [c["campaign_id"] for c in listed["campaigns"]] == ["c-1"]
    assert [w["window_start"] for w in listed["campaigns"][0]["windows"]] == [w0, w1, w2]
    assert "user_id" not in everything and "session_id" not in everything


@pytest.mark.parametrize("transactional", [False, True], ids=["plain", "transactional"])
async def test_idle_stream_windows_close_on_wall_time(topics: Settings, redis_client: redis.Redis,
                                                      transactional: bool) -> None:
    """No later records arrive to move event time: once caught up, wall time closes the window.
    Billing writes the ledger in transactions, so a commit marker follows the last entry: caught
    up must count it (the last entry's offset + 1 never reaches the partition's end)."""
    settings = topics
    await ensure_topics(settings)
    now = now_ms()
    w0 = now - now % WINDOW_MS - 2 * WINDOW_MS
    entries = [ledger(f"e-{n}:1", "impression", "c-idle", w0 + n * S, 2_000) for n in range(3)]
    await produce(settings, "billing.ledger", [("c-idle", e) for e in entries], transactional=transactional)
    async with running(settings, [Reporting(settings, Metrics(), port=None, idle_close_ms=0)]):
        reports = await read_topic(settings, "reports.campaign-minute", expect=1)
    assert reports == [report_record("c-idle", w0, impressions=3, clicks=0, spend_micros=6_000)]


def attributed(conversion_id: str, campaign_id: str, ts: int, value_micros: int) -> dict[str, object]:
    """A conversions.by-campaign record (an attributed conversion, keyed by campaign)."""
    return {"schema_version": 1, "conversion_id": conversion_id, "click_id": f"k-{conversion_id}", "ts": ts,
            "kind": "purchase", "value_micros": value_micros, "source": "in_chat", "campaign_id": campaign_id,
            "advertiser_id": f"adv-{campaign_id}", "impression_id": f"e-{conversion_id}:1", "click_ts": ts - 5 * S}


async def test_conversions_count_in_the_minute_of_their_ts(topics: Settings, redis_client: redis.Redis) -> None:
    """Ledger entries and conversions of one campaign meet in one window (co-partitioned inputs),
    and windows close on wall time once both inputs are caught up."""
    settings = topics
    now = now_ms()
    w0 = now - now % WINDOW_MS - 3 * WINDOW_MS
    w1 = w0 + WINDOW_MS
    await produce(settings, "billing.ledger", [
        ("c-conv", ledger("e-1:1", "impression", "c-conv", w0 + S, 2_000)),
        ("c-conv", ledger("k-1", "click", "c-conv", w0 + 2 * S, 300_000)),
        ("c-other", ledger("e-2:1", "impression", "c-other", w0 + S, 1_000)),
    ], transactional=True)
    await produce(settings, "conversions.by-campaign", [
        ("c-conv", attributed("o-1", "c-conv", w0 + 30 * S, 25_000_000)),
        ("c-conv", attributed("o-2", "c-conv", w0 + 40 * S, 5_000_000)),
        ("c-conv", attributed("o-3", "c-conv", w1 + S, 1_000_000)),  # a minute with conversions only
    ], transactional=True)
    async with running(settings, [Reporting(settings, Metrics(), port=None)]):
        reports = await read_topic(settings, "reports.campaign-minute", expect=3, timeout_s=60)
    assert sorted(reports, key=lambda r: (r["campaign_id"], r["window_start"])) == [
        report_record("c-conv", w0, impressions=1, clicks=1, spend_micros=302_000, conversions=2,
                      conversion_value_micros=30_000_000),
        report_record("c-conv", w1, impressions=0, clicks=0, spend_micros=0, conversions=1,
                      conversion_value_micros=1_000_000),
        report_record("c-other", w0, impressions=1, clicks=0, spend_micros=1_000),
    ]
    stored = orjson.loads(redis_client.hget(settings.keys.minutes("c-conv"), str(w0)) or b"{}")
    assert stored["conversions"] == 2 and stored["conversion_value_micros"] == 30_000_000
