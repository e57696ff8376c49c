"""`vickrey campaigns …` and `vickrey policy …` end to end: the real CLI, Redis and Kafka."""

from __future__ import annotations

import copy
import time
from typing import Any

import orjson
import pytest
import redis

from core.clock import utc_day
from core.settings import Settings
from schemas.records import check_autopilot_decision
from tests.vickrey.conftest import hash_items, load_sample, read_topic, run_cli, sample_path, stream_entries

pytestmark = pytest.mark.integration


def changes(client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    return stream_entries(client, settings.keys.campaign_changes())


def stored(client: redis.Redis, settings: Settings) -> dict[str, dict[str, Any]]:
    return {k: orjson.loads(v) for k, v in hash_items(client, settings.keys.campaigns()).items()}


async def test_apply_with_one_bad_campaign(
    stack: Settings, env: dict[str, str], redis_client: redis.Redis
) -> None:
    settings = stack
    items = load_sample("bad_campaigns.json")
    good_ids = [c["campaign_id"] for c in items if c["campaign_id"] != "c-quickcash-loans"]

    result = run_cli(env, "campaigns", "apply", str(sample_path("bad_campaigns.json")))

    assert result.returncode == 1, result.stdout + result.stderr
    refusals = [line for line in result.stderr.splitlines() if line.startswith("refused")]
    assert len(refusals) == 1, result.stderr
    line = refusals[0]
    assert line.startswith("refused campaign 'c-quickcash-loans' (item 2): "), line
    # every problem of the bad campaign is named, by field
    for field in ("status", "bid.amount_micros", "creatives[0].url", "budget.daily_micros", "vertical"):
        assert field in line, (field, line)
    assert "applied 2, refused 1" in result.stdout

    campaigns = stored(redis_client, settings)
    assert sorted(campaigns) == sorted(good_ids)
    for cid in good_ids:
        shown = run_cli(env, "campaigns", "show", cid)
        assert shown.returncode == 0, shown.stderr
        doc = orjson.loads(shown.stdout)
        assert doc["campaign_id"] == cid
        assert doc["spend"] == {"today_micros": 0, "total_micros": 0}
        budget = {k: int(v) for k, v in hash_items(redis_client, settings.keys.budget(cid)).items()}
        assert budget == {
            "daily_micros": doc["budget"]["daily_micros"],
            "total_micros": doc["budget"]["total_micros"],
        }
    assert [e["op"] for e in changes(redis_client, settings)] == ["upsert", "upsert"]

    announced = await read_topic(settings, "campaigns", set(good_ids))
    assert set(announced) == set(good_ids)
    for cid in good_ids:
        value = announced[cid]
        assert value is not None and orjson.loads(value) == campaigns[cid]


async def test_apply_samples_list_show_spend(
    stack: Settings, env: dict[str, str], redis_client: redis.Redis
) -> None:
    settings = stack
    samples = load_sample("campaigns.json")
    result = run_cli(env, "campaigns", "apply", "--json", "-", stdin=orjson.dumps(samples).decode())
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["refused"] == [] and len(report["applied"]) == len(samples)
    assert all(a["created"] for a in report["applied"])
    versions = [e["version"] for e in changes(redis_client, settings)]
    assert versions == [str(v) for v in range(1, len(samples) + 1)]

    # spend written by the worker/billing under the documented keys is what `show` and `list` report
    cid = samples[0]["campaign_id"]
    now_ms = int(time.time() * 1000)
    redis_client.set(settings.keys.spend_day(cid, utc_day(now_ms)), 1_234_567)
    redis_client.set(settings.keys.spend_total(cid), 9_876_543)
    doc = orjson.loads(run_cli(env, "campaigns", "show", cid).stdout)
    assert doc["spend"] == {"today_micros": 1_234_567, "total_micros": 9_876_543}

    listed = run_cli(env, "campaigns", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split()[:3] == ["CAMPAIGN", "ADVERTISER", "STATUS"]
    for c in samples:
        assert c["campaign_id"] in listed.stdout
    row = next(r for r in listed.stdout.splitlines() if r.startswith(cid + " "))
    assert row.rstrip().endswith("1.234567"), row

    # re-applying the same file updates in place (new versions, nothing created)
    again = orjson.loads(
        run_cli(env, "campaigns", "apply", "--json", str(sample_path("campaigns.json"))).stdout
    )
    assert not any(a["created"] for a in again["applied"])


async def test_pause_resume_delete(stack: Settings, env: dict[str, str], redis_client: redis.Redis) -> None:
    settings = stack
    camp = load_sample("campaigns.json")[0]
    cid = camp["campaign_id"]
    assert run_cli(env, "campaigns", "apply", "-", stdin=orjson.dumps(camp).decode()).returncode == 0

    paused = run_cli(env, "campaigns", "pause", cid)
    assert paused.returncode == 0, paused.stderr
    assert stored(redis_client, settings)[cid]["status"] == "paused"
    entries = changes(redis_client, settings)
    assert entries[-1] == {"campaign_id": cid, "op": "upsert", "version": "2"}

    again = run_cli(env, "campaigns", "pause", cid)
    assert again.returncode == 0 and "already paused" in again.stdout
    assert len(changes(redis_client, settings)) == 2  # no change, no entry

    assert run_cli(env, "campaigns", "resume", cid).returncode == 0
    assert stored(redis_client, settings)[cid]["status"] == "active"

    deleted = run_cli(env, "campaigns", "delete", cid)
    assert deleted.returncode == 0, deleted.stderr
    assert cid not in stored(redis_client, settings)
    assert not redis_client.exists(settings.keys.budget(cid))
    assert changes(redis_client, settings)[-1] == {"campaign_id": cid, "op": "delete", "version": "4"}
    announced = await read_topic(settings, "campaigns", {cid})
    assert announced[cid] is None  # the last record is the tombstone

    for action in ("show", "pause", "resume", "delete"):
        unknown = run_cli(env, "campaigns", action, "c-nope")
        assert unknown.returncode == 1
        assert "no campaign with id 'c-nope'" in unknown.stderr
        assert "Traceback" not in unknown.stderr


async def test_advertiser_cannot_take_over_a_campaign(
    stack: Settings, env: dict[str, str], redis_client: redis.Redis
) -> None:
    camp = load_sample("campaigns.json")[0]
    assert run_cli(env, "campaigns", "apply", "-", stdin=orjson.dumps(camp).decode()).returncode == 0
    other = dict(camp, advertiser_id="adv-someone-else")
    result = run_cli(env, "campaigns", "apply", "-", stdin=orjson.dumps(other).decode())
    assert result.returncode == 1
    cid, owner = camp["campaign_id"], camp["advertiser_id"]
    assert f"advertiser_id: campaign {cid} belongs to advertiser {owner}" in result.stderr
    assert stored(redis_client, stack)[cid]["advertiser_id"] == owner


def restricted_list_key(policy: dict[str, Any]) -> str:
    return next(k for k, v in policy.items() if isinstance(v, list) and "financial_services" in v)


async def test_restricted_vertical_refused_naming_the_policy(
    stack: Settings, env: dict[str, str], redis_client: redis.Redis
) -> None:
    camp = dict(load_sample("campaigns.json")[0], campaign_id="c-fin-1", vertical="financial_services")
    result = run_cli(env, "campaigns", "apply", "-", stdin=orjson.dumps([camp]).decode())
    assert result.returncode == 1
    assert "refused campaign 'c-fin-1' (item 1): " in result.stderr
    assert "financial_services" in result.stderr and "polic" in result.stderr
    assert "c-fin-1" not in stored(redis_client, stack)

    # the policy can lift the restriction: show → edit → apply, then the same campaign is accepted
    policy = orjson.loads(run_cli(env, "policy", "show").stdout)
    key = restricted_list_key(policy)
    policy[key] = [v for v in policy[key] if v != "financial_services"]
    applied = run_cli(env, "policy", "apply", "-", stdin=orjson.dumps(policy).decode())
    assert applied.returncode == 0, applied.stderr
    assert "version 1" in applied.stdout
    assert orjson.loads(run_cli(env, "policy", "show").stdout)[key] == policy[key]
    assert int(redis_client.get(stack.keys.policy_version()) or 0) == 1
    assert run_cli(env, "campaigns", "apply", "-", stdin=orjson.dumps(camp).decode()).returncode == 0


async def test_bad_policy_names_every_problem(
    stack: Settings, env: dict[str, str], redis_client: redis.Redis
) -> None:
    policy = orjson.loads(run_cli(env, "policy", "show").stdout)
    assert policy, "the default policy is shown when none was applied"
    bad = copy.deepcopy(policy)
    for key in bad:
        bad[key] = 7  # a wrong type for every field
    result = run_cli(env, "policy", "apply", "-", stdin=orjson.dumps(bad).decode())
    assert result.returncode == 1
    assert result.stderr.startswith("vickrey: error: refused policy: ")
    for key in policy:
        assert key in result.stderr, (key, result.stderr)
    assert redis_client.get(stack.keys.policy()) is None


async def test_unreadable_input_exits_2(stack: Settings, env: dict[str, str], tmp_path: Any) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"campaign_id": "c-1",\n   oops}\n]\n')
    result = run_cli(env, "campaigns", "apply", str(broken))
    assert result.returncode == 2
    assert "line 3, column 4" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli(env, "campaigns", "apply", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    scalar = run_cli(env, "campaigns", "apply", "-", stdin="42")
    assert scalar.returncode == 2 and "JSON object" in scalar.stderr


AUTO = {
    "campaign_id": "c-auto-1", "advertiser_id": "adv-auto", "goal": {"type": "max_clicks"},
    "budget": {"daily_micros": 50_000_000, "total_micros": 500_000_000}, "targeting": {"auto": True},
    "brief": "Fast USB-C chargers and power banks for laptops and phones, for travel and long flights.",
    "creatives": [{"creative_id": "a1", "title": "VoltBook 20,000 mAh power bank",
                   "body": "Charge your laptop twice on a long flight.", "url": "https://example.com/v", "cta": "Shop"}],
}


def test_dry_run_prints_the_derived_targeting_and_stores_nothing(env: dict[str, str], stack: Settings,
                                                                  redis_client: redis.Redis) -> None:
    result = run_cli(env, "campaigns", "apply", "--dry-run", "-", stdin=orjson.dumps([AUTO]).decode())
    assert result.returncode == 0, result.stderr
    (shown,) = orjson.loads(result.stdout)
    derived = shown["targeting_derived"]
    assert "power bank" in [k["term"] for k in derived["keywords"]]
    assert all(k["from"] in ("title", "body", "brief") and k["matched"] for k in derived["keywords"])
    assert any(c["category"].startswith("IAB19") for c in derived["categories"])
    assert "bid" not in shown  # the autopilot bids
    assert not redis_client.hexists(stack.keys.campaigns(), "c-auto-1")
    assert run_cli(env, "campaigns", "show", "c-auto-1").returncode == 1


def test_apply_prints_and_stores_what_it_derived(env: dict[str, str], stack: Settings) -> None:
    result = run_cli(env, "campaigns", "apply", "-", stdin=orjson.dumps(AUTO).decode())
    assert result.returncode == 0, result.stderr
    assert "derived keywords (phrase match): " in result.stdout and "power bank (title)" in result.stdout
    shown = orjson.loads(run_cli(env, "campaigns", "show", "c-auto-1").stdout)
    assert shown["targeting_derived"]["keywords"][0]["term"]


def test_autopilot_campaigns_that_cannot_work_are_refused_with_the_reason(env: dict[str, str], stack: Settings) -> None:
    empty = dict(AUTO, campaign_id="c-auto-2", brief="!!! 123",
                 creatives=[dict(AUTO["creatives"][0], title="!!!", body="123 456")])
    cpa = dict(AUTO, campaign_id="c-auto-3", goal={"type": "target_cpa", "target_micros": 5_000_000})
    cpm = dict(AUTO, campaign_id="c-auto-4", bid={"type": "cpm", "amount_micros": 1_000_000})
    result = run_cli(env, "campaigns", "apply", "--dry-run", "-", stdin=orjson.dumps([empty, cpa, cpm]).decode())
    assert result.returncode == 1
    assert "targeting.auto: the creatives' titles and bodies and the brief yield no keyword" in result.stderr
    assert "bid.type: must be 'cpc' with the goal 'max_clicks'" in result.stderr
    assert [c["campaign_id"] for c in orjson.loads(result.stdout)] == ["c-auto-3"]  # target_cpa: bid for now


def autopilot_decision(campaign_id: str, version: int, ts: int, bid_micros: int | None, reason: str,
                       keywords: list[str], added: list[str], removed: list[str]) -> dict[str, Any]:
    """A campaigns.autopilot record, checked by the codec's own validator."""
    record = {"schema_version": 1, "campaign_id": campaign_id, "version": version, "ts": ts,
              "bid": None if bid_micros is None else {"type": "cpc", "amount_micros": bid_micros},
              "keywords": keywords, "categories": ["IAB19-6"], "keywords_added": added,
              "keywords_removed": removed, "reason": reason}  # fmt: skip
    check_autopilot_decision(record)
    return record


def test_show_includes_the_autopilots_latest_decision(env: dict[str, str], stack: Settings,
                                                      redis_client: redis.Redis) -> None:
    assert run_cli(env, "campaigns", "apply", "-", stdin=orjson.dumps(AUTO).decode()).returncode == 0
    before = orjson.loads(run_cli(env, "campaigns", "show", "c-auto-1").stdout)
    assert "autopilot" not in before  # no decision yet
    assert before["targeting_derived"]["keywords"]

    first = autopilot_decision("c-auto-1", 1, 1_790_000_000_000, 300_000, "cold start: bid 0.30",
                               ["power bank", "usb-c charger"], ["power bank", "usb-c charger"], [])
    second = autopilot_decision("c-auto-1", 2, 1_790_000_300_000, 331_000,
                                "spending 0.62x the rate that ends the day on budget: bid +9%; dropped "
                                "usb-c charger: no click in 151+ impressions", ["power bank", "long flight"],
                                ["long flight"], ["usb-c charger"])
    key = stack.keys.autopilot("c-auto-1")
    redis_client.zadd(key, {orjson.dumps(second): 2})  # the latest by version, whatever the write order
    redis_client.zadd(key, {orjson.dumps(first): 1})

    shown = run_cli(env, "campaigns", "show", "c-auto-1")
    assert shown.returncode == 0, shown.stderr
    doc = orjson.loads(shown.stdout)
    assert doc["autopilot"] == {
        "effective_bid": {"type": "cpc", "amount_micros": 331_000},
        "keywords": ["power bank", "long flight"],
        "categories": ["IAB19-6"],
        "last_reason": second["reason"],
        "version": 2,
        "decided_at": 1_790_000_300_000,
    }
    assert doc["targeting_derived"] == before["targeting_derived"]  # the stored campaign, unchanged
    assert doc["spend"] == {"today_micros": 0, "total_micros": 0}
