"""The auction worker end to end, on the real Kafka and Redis: vectors live, SIGKILL at random
points, two workers on one small budget, bad records mixed into good ones."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from core import native
from core.redis_client import redis_from_url
from core.settings import Settings
from loadtests.stack import committed, end_offsets, reset_group
from tests.auction.factories import campaign_record, intent, kept_event, load_vectors
from tests.kafka_helpers import produce, produce_json, read_all, start_role, stop_role, wait_until
from vickrey.campaign_store import apply_campaigns

pytestmark = pytest.mark.integration


async def apply(settings: Settings, records: list[dict[str, Any]]) -> None:
    client = redis_from_url(settings.redis)
    try:
        result = await apply_campaigns(settings, client, records)
    finally:
        await client.aclose()
    assert not result.refused, result.refused


def live_intent(event_id: str, keyword: str, **extra: Any) -> dict[str, Any]:
    record = intent(event_id, keywords=[keyword], **extra)
    record["ts"] = int(time.time() * 1000)
    record["user_id"] = extra.get("user_id", f"u-{event_id}")
    return record


def spend_total(client: redis.Redis, settings: Settings, campaign_id: str) -> int:
    return int(client.get(settings.keys.spend_total(campaign_id)) or 0)


def assert_once_each(client: redis.Redis, settings: Settings, events: list[dict[str, Any]], campaigns: list[dict[str, Any]],
                     decisions: list[dict[str, Any]], impressions: list[dict[str, Any]]) -> None:
    """Exactly once: one decision per event, each impression once and in its decision, and Redis
    spend equal to the impressions' charges for every campaign."""
    per_event = Counter(d["event_id"] for d in decisions)
    assert set(per_event) == {e["event_id"] for e in events}, "an event has no decision"
    assert max(per_event.values()) == 1, "an event was decided twice"
    assert max(Counter(i["impression_id"] for i in impressions).values()) == 1
    assert sum(len(d["ads"]) for d in decisions) == len(impressions)
    charged: Counter[str] = Counter()
    for impression in impressions:
        charged[impression["campaign_id"]] += impression["charge_micros"]
    for record in campaigns:
        assert spend_total(client, settings, record["campaign_id"]) == charged[record["campaign_id"]], record["campaign_id"]


@pytest.mark.parametrize("increment", [0, 10_000])
async def test_vectors_live(settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, increment: int, tmp_path: Path) -> None:
    """Every public vector as live campaigns: allocations and prices on the topics equal the
    engine's (which the vector tests check against the published answers)."""
    settings = settings.with_(price_increment_micros=increment)
    env = dict(env, VICKREY_PRICE_INCREMENT_MICROS=str(increment))
    cases = [c for c in load_vectors() if c.get("increment_micros", 10_000) == increment]
    campaigns = []
    for i, case in enumerate(cases):
        for cand in case["candidates"]:
            campaigns.append(
                campaign_record(
                    f"v{i}-{cand['campaign_id']}", advertiser_id=f"v{i}-{cand['advertiser_id']}",
                    bid_type=cand["bid"]["type"], amount_micros=cand["bid"]["amount_micros"],
                    pctr=cand.get("pctr", 0.01), keywords=[f"vector{i}"],
                )
            )
    await apply(settings, campaigns)
    worker = start_role(env, "auction", "--instance", "vec", log=tmp_path / "worker.log")
    try:
        events = [
            live_intent(f"vec{i}", f"vector{i}", slots=case.get("slots", 1), floor_cpm_micros=case.get("reserve_cpm_micros", 0))
            for i, case in enumerate(cases)
        ]
        await produce_json(settings, "chat.intents", events, "user_id")
        decisions = {d["event_id"]: d for d in await read_all(settings, "ad.decisions", len(events), timeout=60)}
        impressions = await read_all(settings, "ad.impressions", 0, timeout=5)
    finally:
        assert stop_role(worker) == 0
    assert len(decisions) == len(events)
    prices = {(i["event_id"], i["slot"]): (i["campaign_id"], i["price_micros"]) for i in impressions}
    for i, case in enumerate(cases):
        decision = decisions[f"vec{i}"]
        assert len(decision["ads"]) == len(case["expected"]), case["name"]
        for want in case["expected"]:
            campaign_id, price = prices[(f"vec{i}", want["slot"])]
            allowed = {f"v{i}-{c}" for c in case.get("expected_any_of", [])} or {f"v{i}-{want['campaign_id']}"}
            assert campaign_id in allowed and price == want["price_micros"], case["name"]
        if not case["expected"]:
            assert decision["no_fill_reason"] == "below_floor"
    for ad in (a for d in decisions.values() for a in d["ads"]):
        assert ad["label"] == "Sponsored" and ad["why"]["matched_keywords"]
    # The worker says what it runs on: uvloop (BENCHMARKS.md, "uvloop"), and whether compiled.
    starting = [orjson.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()
                if '"msg":"auction worker starting"' in line]
    assert [line["event_loop"] for line in starting] == ["uvloop"]
    states = native.check()
    compiled = all(states[source] == "compiled" for source in native.MODULES)
    assert starting[0]["hot_path"] == ("compiled" if compiled else "interpreted")
    assert starting[0]["intake"] == ("compiled" if states[native.CRATE + "/"] == "compiled" else "reference")
    # ... and which engine decided: every auction the compiled one, when it is built.
    assert starting[0]["engine"] == ("compiled" if states[native.CRATE + "/"] == "compiled" else "python")
    stopped = [orjson.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()
               if '"msg":"auction worker stopped"' in line]
    by_engine = (stopped[0]["engine_compiled"], stopped[0]["engine_python"])
    assert by_engine == ((len(cases), 0) if starting[0]["engine"] == "compiled" else (0, len(cases)))


def crash_campaigns() -> list[dict[str, Any]]:
    rng = random.Random(5)
    records = []
    for i in range(40):
        records.append(
            campaign_record(
                f"k{i}", advertiser_id=f"ka{i % 25}", amount_micros=rng.randint(500_000, 9_000_000),
                keywords=[f"topic{i % 8}", f"topic{(i + 3) % 8}"],
                budget={"daily_micros": rng.choice([20_000, 200_000, 10**9]), "total_micros": 10**10},
                **({"frequency_cap": {"max": 2, "window_s": 3600}} if i % 5 == 0 else {}),
            )
        )
    return records


@pytest.mark.slow
async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rng = random.Random(42)
    campaigns = crash_campaigns()
    await apply(settings, campaigns)
    total = 6000
    events = [
        live_intent(f"crash{i}", f"topic{rng.randrange(8)}", slots=rng.randint(1, 3), user_id=f"user{rng.randrange(300)}")
        for i in range(total)
    ]

    async def feed() -> None:  # a stream, not a preloaded backlog: kills land mid-flow
        for start in range(0, total, 150):
            await produce_json(settings, "chat.intents", events[start : start + 150], "user_id")
            await asyncio.sleep(0.25)

    feeder = asyncio.create_task(feed())
    log = tmp_path / "worker.log"
    worker = start_role(env, "auction", "--instance", "crashy", "--batch-max", "100", log=log)
    # The first worker reconciles the new namespace at start; the kills land on running workers.
    assert await wait_until(lambda: redis_client.exists(settings.keys.reconciled()), timeout=120), log.read_text()
    kills = 0
    for _ in range(4):
        await asyncio.sleep(rng.uniform(0.8, 2.5))
        stop_role(worker, signal.SIGKILL)
        kills += 1
        worker = start_role(env, "auction", "--instance", "crashy", "--batch-max", "100", log=log)
    await feeder
    try:
        decisions = await read_all(settings, "ad.decisions", total, timeout=120, settle=3)
    finally:
        assert stop_role(worker) == 0
    impressions = await read_all(settings, "ad.impressions", 0, timeout=10, settle=2)
    dlq = await read_all(settings, "chat.intents.dlq", 0, timeout=5)

    assert kills == 4
    assert dlq == []
    assert_once_each(redis_client, settings, events, campaigns, decisions, impressions)
    # Kept outcomes go once committed: a killed worker can leave those of its last batches
    # (committed but not yet let go, or never committed and replayed by its successor).
    assert len(list(redis_client.scan_iter(match=settings.keys.blob("*"), count=1000))) <= 6 * kills
    # The killed workers did part of the work and the last one the rest (none did it all).
    last = [orjson.loads(line) for line in log.read_text().splitlines() if '"auction worker stopped"' in line][-1]
    assert 0 < last["events_in"] < total


async def test_two_workers_share_one_small_budget(
    settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    budget = 30_000  # 30 impressions at a 1,000-micro charge
    rich = campaign_record("tight", amount_micros=5_000_000, budget={"daily_micros": budget, "total_micros": budget})
    floor = campaign_record("floor", advertiser_id="other", amount_micros=1_000_000)
    await apply(settings, [rich, floor])
    workers = [start_role(env, "auction", "--instance", f"w{n}", "--batch-max", "20", log=tmp_path / f"w{n}.log") for n in range(2)]
    try:
        events = [live_intent(f"two{i}", "laptop", user_id=f"p{i % 97}") for i in range(1500)]
        await produce_json(settings, "chat.intents", events, "user_id")
        decisions = await read_all(settings, "ad.decisions", len(events), timeout=90, settle=2)
    finally:
        for w in workers:
            assert stop_role(w) == 0
    impressions = await read_all(settings, "ad.impressions", 0, timeout=5)
    assert Counter(d["event_id"] for d in decisions) == Counter(e["event_id"] for e in events)
    tight = [i for i in impressions if i["campaign_id"] == "tight"]
    spent = sum(i["charge_micros"] for i in tight)
    assert spent <= budget and spent == spend_total(redis_client, settings, "tight")
    assert budget - spent < 5_000, "the budget should be used up (to within one charge)"
    # once the budget is gone the runner-up fills the slot, at its own price
    assert any(i["campaign_id"] == "floor" for i in impressions)
    logs = " ".join((tmp_path / f"w{n}.log").read_text() for n in range(2))
    assert logs.count("partitions assigned") >= 2


async def test_bad_records_go_to_the_dlq_and_counts_balance(
    settings: Settings, env: dict[str, str], topics: Settings, tmp_path: Path
) -> None:
    await apply(settings, [campaign_record("c1")])
    good = [live_intent(f"good{i}", "laptop") for i in range(200)]
    bad: list[tuple[bytes, str]] = [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe\x00", "UTF-8"),
        (orjson.dumps({**good[0], "event_id": "b1", "slots": "two"}), "slots"),
        (orjson.dumps({k: v for k, v in good[0].items() if k != "user_id"} | {"event_id": "b2"}), "user_id"),
        (orjson.dumps({**good[0], "event_id": "b3", "age_bracket": "ancient"}), "age_bracket"),
        (orjson.dumps({**good[0], "event_id": "b4", "floor_cpm_micros": -5}), "floor_cpm_micros"),
        (orjson.dumps({**good[0], "event_id": "b5", "intent": {**good[0]["intent"], "keywords": ["x" * 65]}}), "keywords"),
        (orjson.dumps({**good[0], "event_id": "b6", "pad": "y" * 70_000}), "64 KiB"),
        (orjson.dumps({**good[0], "event_id": "b7", "intent": {**good[0]["intent"], "category": "IAB99"}}), "category"),
        (orjson.dumps(good[5]), "already decided"),  # a repeated event_id
    ]
    worker = start_role(env, "auction", "--instance", "dlq", log=tmp_path / "worker.log")
    try:
        records: list[tuple[bytes | None, bytes]] = [(e["user_id"].encode(), orjson.dumps(e)) for e in good]
        await produce(settings, "chat.intents", records)
        await produce(settings, "chat.intents", [(b"bad", value) for value, _ in bad])
        decisions = await read_all(settings, "ad.decisions", len(good), timeout=60)
        dlq = await read_all(settings, "chat.intents.dlq", len(bad), timeout=30)
    finally:
        assert stop_role(worker) == 0
    assert len(decisions) + len(dlq) == len(good) + len(bad)
    assert {d["event_id"] for d in decisions} == {e["event_id"] for e in good}
    errors = sorted(d["error"] for d in dlq)
    for _, word in bad:
        assert any(word in error for error in errors), (word, errors)
    assert all(d["source_topic"] == settings.topic("chat.intents") and d["value_b64"] is not None for d in dlq)


async def test_kept_outcomes_go_once_committed_and_a_reread_republishes_nothing(
    settings: Settings, env: dict[str, str], topics: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Redis keeps a batch's outcomes only until its transaction commits. Reading the stream
    again after the group's offsets were moved back publishes nothing and charges nothing."""
    await apply(settings, [campaign_record("c1", amount_micros=2_000_000), campaign_record("c2", amount_micros=1_500_000),
                           campaign_record("c3")])  # runners-up: second prices above zero
    events = [live_intent(f"again{i}", "laptop", user_id=f"p{i % 41}") for i in range(300)]
    await produce_json(settings, "chat.intents", events, "user_id")
    log = tmp_path / "worker.log"
    worker = start_role(env, "auction", "--batch-max", "40", log=log)
    try:
        decisions = await read_all(settings, "ad.decisions", len(events), timeout=60)
    finally:
        assert stop_role(worker) == 0
    assert len(decisions) == len(events)
    assert list(redis_client.scan_iter(match=settings.keys.blob("*"), count=1000)) == [], "committed outcomes kept"
    assert kept_event(redis_client, settings, events[0]["event_id"]) is not None  # the event is still known
    impressions = await read_all(settings, "ad.impressions", 0, timeout=10)
    spent = sum(spend_total(redis_client, settings, c) for c in ("c1", "c2", "c3"))
    assert spent == sum(i["charge_micros"] for i in impressions) > 0

    group, topic = settings.group("auction"), settings.topic("chat.intents")
    await reset_group(settings, group, topic)
    worker = start_role(env, "auction", "--batch-max", "40", log=log)
    try:
        ends = await end_offsets(settings, topic)

        async def caught_up() -> bool:
            done = await committed(settings, group)
            return all(done.get(tp, 0) >= end for tp, end in ends.items())

        assert await wait_until(caught_up, timeout=60)
    finally:
        assert stop_role(worker) == 0
    last = [orjson.loads(line) for line in log.read_text().splitlines() if '"auction worker stopped"' in line][-1]
    assert (last["events_in"], last["decisions"], last["already_committed"]) == (len(events), 0, len(events))
    assert len(await read_all(settings, "ad.decisions", 0, timeout=10)) == len(events)
    assert len(await read_all(settings, "ad.impressions", 0, timeout=10)) == len(impressions)
    assert sum(spend_total(redis_client, settings, c) for c in ("c1", "c2", "c3")) == spent
