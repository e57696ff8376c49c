"""`vickrey simulate` (docs/contract.md §7): deterministic, every scenario problem named, budgets
never passed, and the autopilot's goals kept over a simulated day on the shipped scenarios."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autopilot.scenario import ScenarioError, read_scenario
from autopilot.simulate import Market, simulate
from loadtests.optimiser import SCENARIOS
from tests.vickrey.conftest import run_cli

TINY: dict[str, Any] = {
    "seed": 1, "hours": 2, "intents_per_hour": 300,
    "keywords": {"power bank": {"weight": 3, "category": "IAB19-6"}, "phone charger": {"weight": 1, "category": "IAB19-6"}},
    "keywords_per_intent": [1, 2],
    "campaigns": [
        {"campaign_id": "rival", "advertiser_id": "a-rival", "bid": {"type": "cpc", "amount_micros": 300000},
         "budget": {"daily_micros": 50000000, "total_micros": 50000000}, "targeting": {"keywords": ["power bank"]},
         "creatives": [{"creative_id": "r1", "title": "Rival power banks", "body": "Charge anywhere.",
                        "url": "https://example.com/r", "cta": "Shop"}]},
        {"campaign_id": "auto", "advertiser_id": "a-auto", "goal": {"type": "max_clicks"},
         "budget": {"daily_micros": 5000000, "total_micros": 50000000}, "targeting": {"auto": True},
         "brief": "Slim 10,000 mAh power bank that charges a phone twice.",
         "creatives": [{"creative_id": "a1", "title": "A power bank for your pocket", "body": "Two full phone charges.",
                        "url": "https://example.com/a", "cta": "Shop"}]},
    ],
    "true_ctr": {"rival": {"*": 0.02}, "auto": {"power bank": 0.04, "*": 0.01}},
}
FIELDS = {"impressions", "clicks", "overdelivery_clicks", "conversions", "spend_micros", "budget_micros",
          "avg_cpc_micros", "avg_cpa_micros", "spend_by_hour"}


def shipped(name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((SCENARIOS / f"{name}.json").read_text())
    return found


def test_the_result_has_every_campaign_and_field_and_is_deterministic() -> None:
    first, second = simulate(read_scenario(TINY)), simulate(read_scenario(TINY))
    assert first == second
    assert set(first) == {"seed", "hours", "campaigns"} and set(first["campaigns"]) == {"rival", "auto"}
    for result in first["campaigns"].values():
        assert set(result) == FIELDS and len(result["spend_by_hour"]) == 2
        assert sum(result["spend_by_hour"]) == result["spend_micros"]
    other = simulate(read_scenario(dict(TINY, seed=2)))
    assert other != first  # the seed matters


def test_every_problem_of_a_scenario_is_named() -> None:
    bad = dict(TINY, hours=0, colour="blue", keywords_per_intent=[3, 1],
               keywords={"power bank": {"weight": -1, "category": "IAB99"}},
               campaigns=[dict(TINY["campaigns"][0], budget={"daily_micros": 5})],
               true_ctr={"nobody": {"*": 2}})
    with pytest.raises(ScenarioError) as refused:
        read_scenario(bad)
    text = "\n".join(refused.value.problems)
    for words in ("colour: unknown key", "hours: must be an integer", "keywords_per_intent:", "keywords.power bank.weight",
                  "campaigns[0].budget.total_micros: missing", "true_ctr.nobody.*: must be a probability"):
        assert words in text, words
    with pytest.raises(ScenarioError, match="true_ctr.nobody: no campaign has this id"):
        read_scenario(dict(TINY, true_ctr={"nobody": {"*": 0.1}}))


def test_the_command_prints_one_json_object_and_refuses_bad_scenarios(tmp_path: Any, env: dict[str, str]) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(TINY))
    bad.write_text(json.dumps(dict(TINY, hours=0, colour="blue")))
    result = run_cli(env, "simulate", str(good))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == simulate(read_scenario(TINY))
    refused = run_cli(env, "simulate", str(bad))
    assert refused.returncode == 2 and "hours" in refused.stderr and "colour" in refused.stderr


@pytest.mark.parametrize("name", ["diurnal", "crowded", "dud", "cpa"])
def test_no_campaign_passes_its_budget(name: str) -> None:
    result = simulate(read_scenario(shipped(name)))
    for campaign_id, found in result["campaigns"].items():
        assert found["spend_micros"] <= found["budget_micros"], campaign_id


@pytest.mark.parametrize("name", ["diurnal", "dud"])
def test_max_clicks_spends_its_budget_across_the_day(name: str) -> None:
    scenario = shipped(name)
    campaign = next(c for c in scenario["campaigns"] if (c.get("goal") or {}).get("type") == "max_clicks")
    found = simulate(read_scenario(scenario))["campaigns"][campaign["campaign_id"]]
    budget = campaign["budget"]["daily_micros"]
    assert 0.9 * budget <= found["spend_micros"] <= budget
    even_share = budget / scenario["hours"]
    assert max(found["spend_by_hour"]) <= 3 * even_share, found["spend_by_hour"]


def test_target_cpc_keeps_its_average_at_or_below_the_target() -> None:
    scenario = shipped("crowded")
    campaign = next(c for c in scenario["campaigns"] if (c.get("goal") or {}).get("type") == "target_cpc")
    found = simulate(read_scenario(scenario))["campaigns"][campaign["campaign_id"]]
    assert found["clicks"] > 0 and found["avg_cpc_micros"] <= 1.1 * campaign["goal"]["target_micros"]


def test_target_cpa_keeps_its_cost_per_conversion_at_or_below_the_target() -> None:
    scenario = shipped("cpa")
    campaign = next(c for c in scenario["campaigns"] if (c.get("goal") or {}).get("type") == "target_cpa")
    found = simulate(read_scenario(scenario))["campaigns"][campaign["campaign_id"]]
    assert found["conversions"] >= 5, found  # enough to judge
    assert found["avg_cpa_micros"] <= 1.15 * campaign["goal"]["target_micros"], found
    assert found["spend_micros"] <= found["budget_micros"]


def test_the_autopilot_drops_a_dud_keyword_with_its_reason() -> None:
    market = Market(read_scenario(shipped("dud")))
    market.run()
    removed = [(d["keywords_removed"], d["reason"]) for d in market.decisions if d["keywords_removed"]]
    dropped = {k for keywords, _ in removed for k in keywords}
    assert dropped & {"hotel", "hotel delivery", "free hotel delivery", "free hotel"}, removed
    assert all("no click in" in reason for _, reason in removed)
    versions = [d["version"] for d in market.decisions if d["campaign_id"] == "packlight-auto"]
    assert versions == list(range(1, len(versions) + 1))  # one version after another, never twice
