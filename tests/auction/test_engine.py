"""Eligibility, gates, no-fill reasons and live index updates."""

from __future__ import annotations

from fractions import Fraction

import pytest

from auction.engine import AuctionEngine, Policy, UserState
from auction.index import CampaignIndex
from auction.keywords import normalize_keyword
from auction.model import AuctionRequest, blended_pctr
from auction.pacing import SpendView
from tests.auction.factories import NOW_MS, campaign, engine_for, intent, make_engine, request

# Each test runs with the Python engine and with its compiled twin (tests/auction/conftest.py).
pytestmark = pytest.mark.usefixtures("both_engines")


def winners(engine: AuctionEngine, req: AuctionRequest, **kwargs: object) -> list[str]:
    return [w.campaign.campaign_id for w in engine.run(req, **kwargs).winners]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("Laptops", "laptop"), ("BATTERIES", "battery"), ("ＬＡＰＴＯＰ", "laptop"), ("  cheap   Flights ", "cheap flight"),
     ("boxes", "box"), ("bus", "bus"), ("glass", "glass"), ("news", "new")],
)
def test_keyword_normalisation(raw: str, normalized: str) -> None:
    assert normalize_keyword(raw) == normalized


def test_keywords_match_after_normalisation_and_why_says_which() -> None:
    engine = engine_for([campaign("c1", keywords=["Laptop Batteries", "charger"])])
    result = engine.run(request(keywords=["laptop battery", "tokyo"]))
    assert [w.campaign.campaign_id for w in result.winners] == ["c1"]
    assert result.winners[0].matched_keywords == ("laptop battery",)


def test_negative_keywords_exclude() -> None:
    engine = engine_for([campaign("c1", keywords=["laptop"], targeting={"keywords": ["laptop"], "negative_keywords": ["Refurbished"]})])
    assert winners(engine, request(keywords=["laptop", "refurbished"])) == []
    assert winners(engine, request(keywords=["laptop"])) == ["c1"]


def test_category_hierarchy() -> None:
    parent = campaign("parent", targeting={"categories": ["IAB19"]})
    child = campaign("child", targeting={"categories": ["IAB19-6"]})
    other = campaign("other", targeting={"categories": ["IAB20"]})
    engine = engine_for([parent, child, other])
    result = engine.run(request(slots=3))
    assert {w.campaign.campaign_id for w in result.winners} == {"parent", "child"}
    assert {w.campaign.campaign_id: w.matched_category for w in result.winners} == {"parent": "IAB19", "child": "IAB19-6"}
    assert winners(engine, request(intent={"category": "IAB19", "keywords": ["x"], "confidence": 1})) == ["parent"]


@pytest.mark.parametrize(
    ("targeting", "matches"),
    [
        ({"locales": ["en"]}, True),
        ({"locales": ["en-GB"]}, False),
        ({"countries": ["US", "CA"]}, True),
        ({"countries": ["DE"]}, False),
        ({"devices": ["mobile"]}, False),
        ({"placements": ["chat_inline"]}, True),
        ({"placements": ["sidebar"]}, False),
    ],
)
def test_contextual_targeting(targeting: dict[str, list[str]], matches: bool) -> None:
    engine = engine_for([campaign("c1", targeting={"keywords": ["laptop"], **targeting})])
    result = engine.run(request())
    assert bool(result.winners) is matches
    if not matches:
        assert result.no_fill_reason == "no_candidates"


def test_flight_dates() -> None:
    future = campaign("c1", start="2030-01-01T00:00:00Z")
    past = campaign("c2", end="2020-01-01T00:00:00Z")
    running = campaign("c3", start="2020-01-01T00:00:00Z", end="2030-01-01T00:00:00Z")
    assert winners(engine_for([future, past, running]), request(slots=3)) == ["c3"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"consent": {"ads": False}}, "no_consent"),
        ({"age_bracket": "under_13"}, "minor"),
        ({"age_bracket": "13_17"}, "minor"),
        ({"safety": {"labels": ["hate"]}}, "brand_safety"),
        ({"intent": {"category": "IAB25-3", "keywords": ["laptop"], "confidence": 1}}, "brand_safety"),
        ({"intent": {"category": "IAB26", "keywords": ["laptop"], "confidence": 1}}, "brand_safety"),
        ({"intent": {"category": "IAB7-1", "keywords": ["laptop"], "confidence": 1}}, "sensitive_topic"),
        ({"intent": {"category": "IAB11", "keywords": ["laptop"], "confidence": 1}}, "sensitive_topic"),
    ],
)
def test_gates_before_the_auction(change: dict[str, object], reason: str) -> None:
    engine = engine_for([campaign("c1", targeting={})])  # untargeted: would match anything
    result = engine.run(AuctionRequest.from_intent({**intent(), **change}, NOW_MS))
    assert result.winners == () and result.no_fill_reason == reason


def test_policy_is_live() -> None:
    engine = engine_for([campaign("c1")])
    req = AuctionRequest.from_intent({**intent(), "intent": {"category": "IAB20-1", "keywords": ["laptop"], "confidence": 1}}, NOW_MS)
    assert winners(engine, req) == ["c1"]
    engine.policy = Policy(sensitive_categories=frozenset({"IAB20"}))
    assert engine.run(req).no_fill_reason == "sensitive_topic"
    engine.policy = Policy(restricted_verticals=frozenset({"general"}))
    assert engine.run(request()).no_fill_reason == "no_candidates"


def test_no_fill_reasons_name_the_last_filter() -> None:
    excluded = campaign("c1", excluded_safety_labels=["news_violence"])
    req = AuctionRequest.from_intent({**intent(), "safety": {"labels": ["news_violence"]}}, NOW_MS)
    assert engine_for([excluded]).run(req).no_fill_reason == "brand_safety"

    spend = SpendView(day="20260921")
    broke = campaign("c2", budget={"daily_micros": 1000, "total_micros": 5000})
    spend.record(broke, 1000, 1000)
    assert make_engine(CampaignIndex.build([broke]), spend).run(request()).no_fill_reason == "budget"

    capped = campaign("c3")
    engine = engine_for([capped])
    assert engine.run(request(), UserState(capped_campaigns=frozenset({"c3"}))).no_fill_reason == "frequency_cap"
    assert engine.run(request(), refused={"c3": "budget"}).no_fill_reason == "budget"

    cheap = campaign("c4", amount_micros=100)
    assert engine_for([cheap, excluded]).run(
        AuctionRequest.from_intent({**intent(), "floor_cpm_micros": 1000, "safety": {"labels": ["news_violence"]}}, NOW_MS)
    ).no_fill_reason == "below_floor"


def test_pacing_reason() -> None:
    paced = campaign("p", pacing="even", budget={"daily_micros": 1_000_000, "total_micros": 10**9})
    spend = SpendView(day="20260921")
    spend.record(paced, 999_000, 999_000)  # far ahead of a day that is ~half over
    assert make_engine(CampaignIndex.build([paced]), spend).run(request()).no_fill_reason == "pacing"


def test_hidden_advertiser_gives_the_slot_to_the_runner_up_at_its_price() -> None:
    top = campaign("top", advertiser_id="A", amount_micros=5_000_000)
    second = campaign("second", advertiser_id="B", amount_micros=4_000_000)
    third = campaign("third", advertiser_id="C", amount_micros=3_000_000)
    engine = engine_for([top, second, third])
    normal = engine.run(request())
    assert [(w.campaign.campaign_id, w.price_micros) for w in normal.winners] == [("top", 4_010_000)]
    hidden = engine.run(request(), UserState(hidden_advertisers=frozenset({"A"})))
    assert [(w.campaign.campaign_id, w.price_micros) for w in hidden.winners] == [("second", 3_010_000)]
    only = engine_for([top]).run(request(), UserState(hidden_advertisers=frozenset({"A"})))
    assert only.no_fill_reason == "user_hidden"


def test_index_updates_one_campaign_at_a_time() -> None:
    index = CampaignIndex.build([campaign("a", amount_micros=1_000_000), campaign("b", amount_micros=2_000_000)])
    engine = make_engine(index)
    assert winners(engine, request()) == ["b"]
    index.upsert(campaign("a", amount_micros=3_000_000))  # raise a's bid
    assert winners(engine, request()) == ["a"]
    index.upsert(campaign("a", amount_micros=3_000_000, status="paused"))
    assert winners(engine, request()) == ["b"] and "a" not in index
    index.upsert(campaign("c", keywords=["tokyo"]))
    assert winners(engine, request(keywords=["tokyo"])) == ["c"]
    assert index.remove("c") and "tokyo" not in index.by_keyword
    assert winners(engine, request(keywords=["tokyo"])) == []
    assert index.by_keyword["laptop"] == [index.campaigns["b"]]


def test_learned_pctr_reorders() -> None:
    index = CampaignIndex.build([campaign("cpc", bid_type="cpc", amount_micros=1_000_000, pctr=0.01), campaign("cpm", amount_micros=9_000_000)])
    engine = make_engine(index)
    assert winners(engine, request()) == ["cpc"]  # eCPM 1,000,000 x 0.01 x 1000 = 10,000,000 > 9,000,000
    prior = Fraction(1, 100)
    assert blended_pctr(prior, 0, 0) == prior
    index.set_pctr("cpc", blended_pctr(prior, 9000, 9))  # a poor learned CTR drags it down
    assert index.campaigns["cpc"].ecpm < 9_000_000
    assert winners(engine, request()) == ["cpm"]
