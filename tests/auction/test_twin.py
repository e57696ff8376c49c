"""The engine's compiled twin (auction/twin.py, fastpath/src/engine.rs) decides every auction as the
Python engine does: on the bench's workload, on generated campaigns and requests (targeting filters,
phrases, autopilot targeting, learned CTRs, pacing, people, refusals, policies), and while the index,
the spend view and the policy change under it. The engine's own tests also run through it
(tests/auction/conftest.py `both_engines`)."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auction.engine import AuctionEngine, Policy, UserState
from auction.fastpath import _native
from auction.index import CampaignIndex
from auction.model import AuctionRequest, AuctionResult, Campaign, blended_pctr
from auction.pacing import SpendView
from auction.twin import engine_twin
from loadtests import workload
from loadtests.engine_bench import validated
from tests.auction.factories import NOW_MS, campaign_record, intent

pytestmark = pytest.mark.skipif(_native() is None, reason="the compiled engine is not built (make native)")

Decided = tuple[Any, ...]


def decided(result: AuctionResult) -> Decided:
    return (result.no_fill_reason, result.reserve_cpm_micros, [
        (w.slot, w.campaign.campaign_id, w.price_micros, w.charge_micros, w.ecpm_micros, w.runner_up_ecpm_micros,
         w.matched_keywords, w.matched_category) for w in result.winners])


def pair(campaigns: list[Campaign], spend: SpendView | None = None, increment_micros: int = 10_000
         ) -> tuple[AuctionEngine, AuctionEngine]:
    """The Python engine alone, and the same index and spend view with the twin beside them."""
    index = CampaignIndex.build(campaigns)
    spend = spend if spend is not None else SpendView(day="20260921")
    twin = engine_twin(increment_micros)
    assert twin is not None
    return (AuctionEngine(index, spend, increment_micros=increment_micros),
            AuctionEngine(index, spend, increment_micros=increment_micros, twin=twin))


def compare(python: AuctionEngine, compiled: AuctionEngine, request: AuctionRequest, user: UserState | None = None,
            refused: dict[str, Any] | None = None) -> bool:
    """Both engines decide alike; True when the twin decided (False: it left it to Python)."""
    assert compiled.twin is not None
    by_twin = compiled.twin.run(request, user, refused)
    assert decided(python.run(request, user, refused)) == decided(compiled.run(request, user, refused))
    if by_twin is not None:
        assert decided(by_twin) == decided(python.run_python(request, user, refused))
    return by_twin is not None


def test_the_twin_decides_the_bench_workload_as_python_does() -> None:
    records = validated(workload.campaigns(n=2_000, advertisers=500))
    campaigns = [Campaign.from_record(record) for record in records]
    spend = SpendView(day="20260921")
    rng = random.Random(5)
    for campaign in rng.sample(campaigns, 600):  # spent some, paced ahead, or out of budget
        today = rng.choice([0, campaign.daily_budget_micros // 3, campaign.daily_budget_micros])
        spend.record(campaign, today, today)
    python, compiled = pair(campaigns, spend)
    ids = [campaign.campaign_id for campaign in campaigns]
    advertisers = sorted({campaign.advertiser_id for campaign in campaigns})
    by_twin = filled = 0
    for n, event in enumerate(workload.intents(3_000)):
        request = AuctionRequest.from_intent(event, NOW_MS + n * 7_000)
        user = None
        if n % 5 == 0:
            user = UserState(frozenset(rng.sample(advertisers, 30)), frozenset(rng.sample(ids, 100)))
        refused = {campaign_id: rng.choice(["budget", "frequency_cap", "user_hidden"])
                   for campaign_id in rng.sample(ids, 50)} if n % 7 == 0 else None
        by_twin += compare(python, compiled, request, user, refused)
        filled += bool(python.run(request, user, refused).winners)
    assert by_twin == 3_000  # no fallback on the bench's numbers
    assert filled > 1_000


WORDS = ["laptop", "battery", "charger", "usb c", "power bank", "slim power bank", "tokyo", "flight", "cheap flight"]
CATEGORIES = ["IAB19-6", "IAB19", "IAB20", "IAB20-1", "IAB7", "IAB7-1", "IAB25"]
LABELS = ["news_violence", "adult", "gambling"]


@st.composite
def campaign_records(draw: st.DrawFn, number: int) -> dict[str, Any]:
    targeting: dict[str, Any] = {}
    if draw(st.booleans()):
        targeting["keywords"] = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            targeting["match"] = "phrase"
    if draw(st.integers(0, 3)) == 0:
        targeting["categories"] = draw(st.lists(st.sampled_from(CATEGORIES[:-1]), min_size=1, max_size=2, unique=True))
    for field, values in (("countries", ["US", "JP", "DE"]), ("devices", ["mobile", "desktop"]),
                          ("locales", ["en", "en-US", "ja"]), ("placements", ["chat_inline", "sidebar"]),
                          ("negative_keywords", ["refurbished", "tokyo"])):
        if draw(st.integers(0, 4)) == 0:
            targeting[field] = draw(st.lists(st.sampled_from(values), min_size=1, max_size=2, unique=True))
    extra: dict[str, Any] = {"targeting": targeting}
    if draw(st.integers(0, 5)) == 0:
        extra["excluded_safety_labels"] = [draw(st.sampled_from(LABELS))]
    if draw(st.integers(0, 5)) == 0:
        extra["vertical"] = draw(st.sampled_from(["general", "finance", "alcohol"]))
    if draw(st.integers(0, 6)) == 0:
        extra["start"] = "2026-09-21T12:00:00Z"
    if draw(st.integers(0, 6)) == 0:
        extra["end"] = "2026-09-21T00:00:00Z"
    if draw(st.integers(0, 3)) == 0:
        extra["pacing"] = "even"
        extra["budget"] = {"daily_micros": 1_000_000, "total_micros": 10**9}
    if draw(st.integers(0, 4)) == 0:
        targeting["auto"] = True
        extra["targeting_derived"] = {
            "keywords": [{"term": term} for term in draw(st.lists(st.sampled_from(WORDS), max_size=2, unique=True))],
            "categories": [{"category": code} for code in draw(st.lists(st.sampled_from(CATEGORIES[:-1]), max_size=2))],
        }
    bid_type = draw(st.sampled_from(["cpm", "cpc"]))
    amount = draw(st.one_of(st.integers(1, 5_000_000), st.sampled_from([1_000_000, 2_000_000, 10**15])))
    return campaign_record(f"c{number}", advertiser_id=f"a{draw(st.integers(0, 5))}", bid_type=bid_type,
                           amount_micros=amount, pctr=draw(st.sampled_from([0.000001, 0.01, 0.017, 0.5, 1.0])), **extra)


@st.composite
def intent_events(draw: st.DrawFn) -> dict[str, Any]:
    """Intents whose auctions the generated campaigns meet in many ways (keywords may repeat)."""
    event = intent(
        f"e{draw(st.integers(0, 10**6))}",
        keywords=draw(st.lists(st.sampled_from([*WORDS, "refurbished", "usb c slim power bank",
                                                "cheap usb c slim power bank for travel"]), min_size=1, max_size=4)),
        slots=draw(st.integers(1, 3)),
        floor_cpm_micros=draw(st.sampled_from([0, 500_000, 1_000_000, 3_000_000])),
        country=draw(st.sampled_from(["US", "JP"])),
        device=draw(st.sampled_from(["mobile", "desktop"])),
        locale=draw(st.sampled_from(["en-US", "en-GB", "ja-JP"])),
        placement=draw(st.sampled_from(["chat_inline", "sidebar"])),
        safety={"labels": draw(st.lists(st.sampled_from(LABELS), max_size=1))},
        age_bracket=draw(st.sampled_from(["18_plus", "13_17", "unknown"])),
        consent={"ads": draw(st.integers(0, 9)) > 0, "personalization": True},
    )
    event["intent"]["category"] = draw(st.sampled_from(CATEGORIES))
    return event


@st.composite
def requests(draw: st.DrawFn) -> AuctionRequest:
    return AuctionRequest.from_intent(draw(intent_events()), NOW_MS + draw(st.integers(-(10**8), 10**8)))


POLICIES = st.builds(Policy, blocked_safety_labels=st.frozensets(st.sampled_from(LABELS)),
                     sensitive_categories=st.frozensets(st.sampled_from(["IAB7", "IAB20-1"])),
                     restricted_verticals=st.frozensets(st.sampled_from(["general", "finance", "alcohol"])))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_twin_decides_generated_auctions_as_python_does(data: st.DataObject) -> None:
    records = [data.draw(campaign_records(n)) for n in range(data.draw(st.integers(0, 12)))]
    campaigns = [Campaign.from_record(record) for record in records]
    for campaign in campaigns:
        if campaign.bid_type == "cpc" and data.draw(st.booleans()):  # a learned CTR
            impressions = data.draw(st.integers(1, 10**6))
            campaign.set_pctr(blended_pctr(campaign.prior_pctr, impressions, data.draw(st.integers(0, impressions))))
    spend = SpendView(day="20260921")
    for campaign in campaigns:
        if data.draw(st.integers(0, 3)) == 0:
            spend.record(campaign, data.draw(st.sampled_from([0, 500_000, 1_000_000, 10**12])), 0)
    python, compiled = pair(campaigns, spend, data.draw(st.sampled_from([0, 1, 10_000])))
    policy = data.draw(POLICIES)
    python.policy = compiled.policy = policy
    ids = [campaign.campaign_id for campaign in campaigns] or ["none"]
    for _ in range(5):
        user = None
        if data.draw(st.booleans()):
            user = UserState(data.draw(st.frozensets(st.sampled_from([f"a{n}" for n in range(6)]))),
                             data.draw(st.frozensets(st.sampled_from(ids))))
        refused = data.draw(st.one_of(st.none(), st.dictionaries(
            st.sampled_from(ids), st.sampled_from(["budget", "frequency_cap", "user_hidden"]))))
        # Nothing here passes 64 bits: the twin must decide every one (a twin that left them all
        # to Python would pass otherwise).
        assert compare(python, compiled, data.draw(requests()), user, refused)


def test_numbers_past_its_bits_are_left_to_python() -> None:
    """A learned CTR over 10^30 impressions has a denominator past 64 bits: while that campaign
    is in the index the twin answers None and the Python engine decides; once it is gone, the
    twin decides again. A spend figure past 64 bits does the same."""
    big = Campaign.from_record(campaign_record("big", bid_type="cpc"))
    big.set_pctr(blended_pctr(big.prior_pctr, 10**30 + 7, 3 * 10**27 + 1))
    assert big.pctr_den > 2**64
    small = Campaign.from_record(campaign_record("small", amount_micros=2_000_000))
    python, compiled = pair([big, small])
    request = AuctionRequest.from_intent(intent(), NOW_MS)
    assert not compare(python, compiled, request)
    compiled.index.remove("big")
    assert compare(python, compiled, request)
    compiled.spend.record(small, 2**70, 0)
    assert not compare(python, compiled, request)
    compiled.spend.record(small, 0, 0)
    assert compare(python, compiled, request)


def test_equal_rank_keys_are_ordered_by_the_exact_ecpm() -> None:
    """Two eCPMs 10^-9 micros apart share a rank key (2^-20 resolution): the exact compare, in
    256 bits in Rust, puts the higher first whatever the posting order."""
    flat = Campaign.from_record(campaign_record("flat", advertiser_id="a1", amount_micros=1))
    rate = Campaign.from_record(campaign_record("rate", advertiser_id="a2", bid_type="cpc", amount_micros=1))
    rate.set_pctr(Fraction(10**9 + 1, 10**12))
    assert flat.rank_key == rate.rank_key and rate.ecpm > flat.ecpm
    for order in ([flat, rate], [rate, flat]):
        python, compiled = pair(order)
        request = AuctionRequest.from_intent(intent(slots=2), NOW_MS)
        assert compare(python, compiled, request)
        assert [w.campaign.campaign_id for w in compiled.run(request).winners] == ["rate", "flat"]


def test_the_copy_stays_the_index_s_own() -> None:
    """Duplicate ids in a build keep the last (in both), a paused campaign the twin cannot copy
    does not hold it back, and an index another twin keeps is refused, not taken over."""
    first = Campaign.from_record(campaign_record("dup", amount_micros=5_000_000))
    last = Campaign.from_record(campaign_record("dup", amount_micros=1_000_000))
    other = Campaign.from_record(campaign_record("other", amount_micros=2_000_000))
    python, compiled = pair([first, last, other])
    request = AuctionRequest.from_intent(intent(), NOW_MS)
    assert compare(python, compiled, request)
    assert [w.campaign.campaign_id for w in python.run(request).winners] == ["other"]
    paused = Campaign.from_record(campaign_record("paused", bid_type="cpc", status="paused"))
    paused.set_pctr(Fraction(1, 10**30))  # past 64 bits, but paused: not in the index
    compiled.index.upsert(paused)
    assert compare(python, compiled, request)
    with pytest.raises(ValueError, match="already keeps another compiled engine"):
        AuctionEngine(compiled.index, compiled.spend, twin=engine_twin(10_000))


def test_the_twin_follows_the_index_the_spend_and_the_policy() -> None:
    rng = random.Random(3)
    records = validated(workload.campaigns(n=400, advertisers=80, vocab_size=300))
    campaigns = {record["campaign_id"]: Campaign.from_record(record) for record in records}
    spend = SpendView(day="20260921")
    python, compiled = pair(list(campaigns.values()), spend)
    events = workload.intents(400, vocab_size=300)
    index = python.index
    for step in range(400):
        change = rng.randrange(6)
        campaign_id = rng.choice(list(campaigns))
        if change == 0:  # upsert: a new bid, or paused
            record = dict(rng.choice(records), campaign_id=campaign_id)
            record["status"] = rng.choice(["active", "active", "paused"])
            campaigns[campaign_id] = Campaign.from_record(record)
            index.upsert(campaigns[campaign_id])
        elif change == 1:
            index.remove(campaign_id)
        elif change == 2 and campaign_id in index:
            index.set_pctr(campaign_id, Fraction(rng.randrange(1, 1000), rng.randrange(1000, 10**6)))
        elif change == 3 and campaign_id in index:
            today = rng.choice([0, 10**6, 10**12])
            spend.record(index.campaigns[campaign_id], today, today)
        elif change == 4:
            spend.mark_exhausted(campaign_id)
        elif step % 50 == 0:
            spend.roll_to(f"202609{22 + step // 50}")
        if step == 200:  # a new index, as LiveState.load makes one
            python.index = compiled.index = CampaignIndex.build(list(campaigns.values()))
            index = python.index
            python.policy = compiled.policy = Policy(restricted_verticals=frozenset({"finance"}))
        request = AuctionRequest.from_intent(events[step], NOW_MS + step * 60_000)
        assert compare(python, compiled, request)
    assert compiled.twin is not None
    held, unsupported = compiled.twin.held()  # type: ignore[attr-defined]
    assert (held, unsupported) == (len(index), 0)
