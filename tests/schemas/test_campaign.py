"""schemas.campaign: campaigns and the policy are refused whole, with every problem named."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from schemas import (
    DEFAULT_POLICY,
    iso_to_ms,
    json_schema,
    restricted_vertical_problem,
    validate_campaign,
    validate_policy,
)

SHARED = Path(os.environ.get("VICKREY_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def campaign(**changes: Any) -> dict[str, Any]:
    """A valid minimal campaign with top-level changes (None deletes)."""
    record: dict[str, Any] = {
        "campaign_id": "c-1", "advertiser_id": "adv-1", "bid": {"type": "cpm", "amount_micros": 2_000_000},
        "budget": {"daily_micros": 10_000_000, "total_micros": 100_000_000},
        "creatives": [{"creative_id": "c-1-a", "title": "An offer", "body": "Worth a look.",
                       "url": "https://example.com/c-1", "cta": "Open"}],
    }
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    return record


def problems_of(obj: object) -> list[str]:
    normalised, problems = validate_campaign(obj)
    assert (normalised is None) == bool(problems)
    return problems


def test_minimal_campaign_gets_every_default_in_contract_order() -> None:
    normalised, problems = validate_campaign(campaign())
    assert problems == [] and normalised is not None
    assert normalised == {
        "schema_version": 1, "campaign_id": "c-1", "advertiser_id": "adv-1", "status": "active",
        "bid": {"type": "cpm", "amount_micros": 2_000_000}, "goal": {"type": "manual"}, "pctr": 0.01,
        "budget": {"daily_micros": 10_000_000, "total_micros": 100_000_000}, "pacing": "asap",
        "targeting": {"auto": False, "match": "exact"},
        "frequency_cap": None, "excluded_safety_labels": [], "vertical": "general",
        "creatives": campaign()["creatives"], "start": None, "end": None,
    }
    optional = {"brief", "targeting_derived"}  # no default: absent until given (or derived)
    assert list(normalised) == [key for key in json_schema("campaign")["properties"] if key not in optional]


@pytest.mark.parametrize("index", [0, 1])
def test_schema_examples_pass_and_normalising_is_idempotent(index: int) -> None:
    example = json_schema("campaign")["examples"][index]
    normalised, problems = validate_campaign(example)
    assert problems == [] and normalised is not None
    assert validate_campaign(normalised) == (normalised, [])


def test_the_auction_vector_campaigns_pass() -> None:
    """The contract smoke test applies every candidate of the auction vectors (tests/data/)."""
    vectors = Path(__file__).resolve().parents[1] / "data" / "auction_vectors.json"
    for case in json.loads(vectors.read_text())["cases"]:
        for candidate in case["candidates"]:
            obj = campaign(campaign_id=f"t-{candidate['campaign_id']}", bid=candidate["bid"],
                           pctr=candidate.get("pctr", 0.01), pacing="asap", status="active",
                           targeting={"keywords": ["smokek0"]})
            assert problems_of(obj) == [], (case["name"], candidate)


def test_the_caller_object_is_not_changed() -> None:
    obj = campaign()
    before = copy.deepcopy(obj)
    validate_campaign(obj)
    assert obj == before


def test_five_problems_are_all_reported() -> None:
    obj = campaign(
        campaign_id="has space",
        bid={"type": "cpm", "amount_micros": 0},
        budget={"daily_micros": 50, "total_micros": 10},
        creatives=[{"creative_id": "a", "title": "t", "body": "", "url": "http://x", "cta": "Go"}],
        colour="red",
    )
    assert problems_of(obj) == [
        "colour: unknown field (known: advertiser_id, bid, brief, budget, campaign_id, creatives, end, "
        "excluded_safety_labels, frequency_cap, goal, pacing, pctr, schema_version, start, status, targeting, "
        "targeting_derived, vertical)",
        "campaign_id: must use only A-Z a-z 0-9 . _ : - (ids go into Redis and Kafka keys), got 'has space'",
        "bid.amount_micros: must be a positive integer, got 0",
        "budget.daily_micros: must not exceed budget.total_micros (50 > 10)",
        "creatives[0].url: must be an https URL, got 'http://x'",
    ]


CREATIVE = {"creative_id": "k", "title": "t", "body": "b", "url": "https://example.com", "cta": "Go"}

# (changes, expected field, a word the problem must contain)
ONE_PROBLEM: list[tuple[dict[str, Any], str, str]] = [
    ({"campaign_id": None}, "campaign_id", "missing"),
    ({"campaign_id": "c" * 129}, "campaign_id", "over the 128-character limit"),
    ({"advertiser_id": "a{b}"}, "advertiser_id", "A-Z a-z 0-9"),
    ({"status": "running"}, "status", "must be one of active, paused"),
    ({"bid": {"type": "cpa", "amount_micros": 1}}, "bid.type", "cpm, cpc"),
    ({"bid": {"type": "cpm", "amount_micros": -5}}, "bid.amount_micros", "positive integer"),
    ({"bid": {"type": "cpm", "amount_micros": 1.5}}, "bid.amount_micros", "positive integer"),
    ({"bid": {"type": "cpm", "amount_micros": 1, "currency": "EUR"}}, "bid.currency", "unknown field"),
    ({"pctr": 0.0123456789}, "pctr", "at most 6 decimal places"),
    ({"pctr": 1e-7}, "pctr", "at most 6 decimal places"),
    ({"pctr": 0}, "pctr", "above 0"),
    ({"pctr": 1.5}, "pctr", "at most 1"),
    ({"pctr": "0.01"}, "pctr", "number"),
    ({"pctr": True}, "pctr", "number"),
    ({"budget": {"daily_micros": 0, "total_micros": 5}}, "budget.daily_micros", "positive integer"),
    ({"budget": {"daily_micros": 5}}, "budget.total_micros", "missing"),
    ({"budget": None}, "budget", "missing"),
    ({"pacing": "fast"}, "pacing", "asap, even"),
    ({"targeting": {"keywords": []}}, "targeting.keywords", "must not be empty"),
    ({"targeting": {"keywords": ["  "]}}, "targeting.keywords[0]", "blank"),
    ({"targeting": {"keywords": ["k" * 65]}}, "targeting.keywords[0]", "64-character"),
    ({"targeting": {"keywords": ["k"] * 33}}, "targeting.keywords", "32-item"),
    ({"targeting": {"categories": ["IAB19", "IAB99"]}}, "targeting.categories[1]", "unknown IAB category 'IAB99'"),
    ({"targeting": {"countries": []}}, "targeting.countries", "must not be empty"),
    ({"targeting": {"keyword": ["x"]}}, "targeting.keyword", "unknown field"),
    ({"targeting": ["x"]}, "targeting", "must be an object"),
    ({"frequency_cap": {"max": 0, "window_s": 60}}, "frequency_cap.max", "positive integer"),
    ({"frequency_cap": {"max": 1, "window_s": 0}}, "frequency_cap.window_s", "positive integer"),
    ({"frequency_cap": {"max": 1, "window_s": 60, "per": "user"}}, "frequency_cap.per", "unknown field"),
    ({"frequency_cap": 3}, "frequency_cap", "or null"),
    ({"excluded_safety_labels": "adult"}, "excluded_safety_labels", "must be an array"),
    ({"vertical": "Retail"}, "vertical", "lowercase"),
    ({"vertical": ""}, "vertical", "must not be empty"),
    ({"creatives": []}, "creatives", "must not be empty"),
    ({"creatives": [CREATIVE] * 21}, "creatives", "21 items, over the 20-item limit"),
    ({"creatives": [CREATIVE, CREATIVE]}, "creatives[1].creative_id", "duplicate of creatives[0].creative_id ('k')"),
    ({"creatives": [{**CREATIVE, "title": "t" * 91}]}, "creatives[0].title", "over the 90-character limit"),
    ({"creatives": [{**CREATIVE, "body": "b" * 301}]}, "creatives[0].body", "over the 300-character limit"),
    ({"creatives": [{**CREATIVE, "url": "https:// x"}]}, "creatives[0].url", "https URL"),
    ({"creatives": [{**CREATIVE, "url": "ftp://example.com"}]}, "creatives[0].url", "https URL"),
    ({"creatives": [{**CREATIVE, "cta": None}]}, "creatives[0].cta", "must be a string"),
    ({"creatives": [{k: v for k, v in CREATIVE.items() if k != "title"}]}, "creatives[0].title", "missing"),
    ({"creatives": ["not an object"]}, "creatives[0]", "must be an object"),
    ({"start": "2025-11-01"}, "start", "with a timezone"),
    ({"start": "2025-11-01T00:00:00"}, "start", "with a timezone"),
    ({"start": "next monday"}, "start", "ISO-8601"),
    ({"end": 1764250000000}, "end", "ISO-8601"),
    ({"start": "2025-12-01T00:00:00Z", "end": "2025-11-01T00:00:00Z"}, "end", "must be after start"),
    ({"schema_version": 2}, "schema_version", "must be 1"),
]


@pytest.mark.parametrize(("changes", "field", "words"), ONE_PROBLEM,
                         ids=[f"{field}:{words[:24]}" for _, field, words in ONE_PROBLEM])
def test_each_rule_names_its_field(changes: dict[str, Any], field: str, words: str) -> None:
    problems = problems_of(campaign(**changes))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: ") and words in problems[0], problems[0]


def test_times_are_exact_epoch_ms() -> None:
    assert iso_to_ms("2025-11-01T00:00:00.123Z") == 1761955200123
    assert iso_to_ms("2025-11-01T01:00:00+01:00") == 1761955200000
    with pytest.raises(ValueError):
        iso_to_ms("2025-11-01T00:00:00")


def test_an_oversized_campaign_is_refused() -> None:
    creatives = [{**CREATIVE, "creative_id": f"k{i}", "url": "https://example.com/" + "p" * 2000} for i in range(20)]
    obj = campaign(creatives=creatives, excluded_safety_labels=["l" * 128] * 300)
    problems = problems_of(obj)
    assert len(problems) == 1 and problems[0].startswith("(record): ") and "64 KiB" in problems[0]


@pytest.mark.parametrize("obj", [None, [], "campaign", 5])
def test_a_campaign_must_be_an_object(obj: object) -> None:
    assert problems_of(obj)[0].startswith("(record): a campaign must be a JSON object")


def test_restricted_vertical_names_the_policy() -> None:
    normalised, _ = validate_campaign(campaign(vertical="gambling"))
    assert normalised is not None  # restriction is a policy question, not a format one
    assert restricted_vertical_problem(normalised, DEFAULT_POLICY) == (
        "vertical: 'gambling' is restricted by the policy "
        "(restricted_verticals: dating, health, financial_services, politics, gambling)")
    assert restricted_vertical_problem(campaign(), DEFAULT_POLICY) is None
    assert restricted_vertical_problem(campaign(vertical="gambling"), {**DEFAULT_POLICY, "restricted_verticals": []}) is None


def test_default_policy_is_the_designs_and_the_schema_example() -> None:
    assert DEFAULT_POLICY == {
        "schema_version": 1,
        "sensitive_categories": ["IAB7", "IAB11", "IAB23"],
        "restricted_verticals": ["dating", "health", "financial_services", "politics", "gambling"],
        "blocked_safety_labels": ["hate", "extremism", "self_harm", "adult", "violence_graphic"],
    }
    policy_schema = json_schema("policy")  # the `policy` topic's record; the policy object is $defs.policy
    assert policy_schema["$defs"]["policy"]["examples"][0] == DEFAULT_POLICY
    assert policy_schema["examples"][0]["policy"] == DEFAULT_POLICY
    assert validate_policy(DEFAULT_POLICY) == (DEFAULT_POLICY, [])


def test_policy_lists_are_required_and_checked() -> None:
    assert validate_policy({}) == (None, ["sensitive_categories: missing (required)",
                                          "restricted_verticals: missing (required)",
                                          "blocked_safety_labels: missing (required)"])
    _, problems = validate_policy({"sensitive_categories": ["IAB7", "IAB77"], "restricted_verticals": ["Dating"],
                                   "blocked_safety_labels": [""], "extra": 1})
    assert [p.split(":")[0] for p in problems] == ["extra", "sensitive_categories[1]", "restricted_verticals[0]",
                                                   "blocked_safety_labels[0]"]


def test_an_empty_policy_is_allowed_and_gets_its_version() -> None:
    empty: dict[str, list[str]] = {"sensitive_categories": [], "restricted_verticals": [], "blocked_safety_labels": []}
    assert validate_policy(empty) == ({"schema_version": 1, **empty}, [])
