"""The bid controller (auction/bidding.py) and learned targeting (autopilot/learning.py) on their
own: bounded steps, the max bid, a cold start that explores, no keyword dropped on thin evidence."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from auction.bidding import (
    DAY_S,
    MAX_CUT,
    MAX_STEP,
    MIN_BID_MICROS,
    PRIOR_CVR,
    VALUE_HEADROOM,
    BidController,
    BidState,
    Observation,
    learned_cvr,
    start_bid,
)
from autopilot.learning import KeywordCounts, impressions_to_judge, learn

BUDGET = 24_000_000


def seen(now_s: float, spend: int, impressions: int = 100, expected: float = 0.0) -> Observation:
    return Observation(now_s, spend, clicks_today=impressions // 30, impressions_today=impressions,
                       daily_budget_micros=BUDGET, price_sum_micros=300_000 * impressions,
                       priced_impressions=impressions, expected_spend_micros=expected)


def test_start_bids() -> None:
    budget = {"daily_micros": 50_000_000, "total_micros": 10**9}
    assert start_bid({"budget": budget, "goal": {"type": "max_clicks"}}) == 500_000
    assert start_bid({"budget": budget, "goal": {"type": "target_cpc", "target_micros": 300_000}}) == 300_000
    assert start_bid({"budget": budget, "goal": {"type": "max_clicks", "max_bid_micros": 200_000}}) == 200_000
    assert start_bid({"budget": budget, "bid": {"type": "cpc", "amount_micros": 70_000}}) == 70_000
    assert start_bid({"budget": {"daily_micros": 10, "total_micros": 10}}) == MIN_BID_MICROS


def test_a_cold_start_explores_upwards_and_stops_at_the_max_bid() -> None:
    controller = BidController("max_clicks", max_bid_micros=400_000)
    state = BidState(100_000)
    bids = [controller.decide(state, seen(300.0 * (i + 1), 0, impressions=0)).bid_micros for i in range(20)]
    assert bids == sorted(bids) and bids[0] > 100_000 and bids[-1] == 400_000


def test_behind_the_pace_the_bid_rises_and_ahead_it_falls() -> None:
    controller = BidController("max_clicks")
    behind = BidState(200_000, won_anything=True, seen_s=43_200 - 300, spent_micros=BUDGET // 4)
    ahead = BidState(200_000, won_anything=True, seen_s=43_200 - 300, spent_micros=BUDGET // 2 - 100_000)
    even_per_step = BUDGET * 300 / DAY_S
    up = controller.decide(behind, seen(43_200, BUDGET // 4, expected=even_per_step * 0.2))
    down = controller.decide(ahead, seen(43_200, BUDGET // 2, expected=even_per_step * 4))
    assert up.bid_micros > 200_000 and "bid +" in up.reason
    assert down.bid_micros < 200_000 and "bid -" in down.reason


@given(st.integers(MIN_BID_MICROS, 5_000_000), st.floats(1, DAY_S - 1), st.integers(0, BUDGET),
       st.floats(0, 1e8), st.integers(0, 10_000))
def test_every_step_is_bounded_and_respects_the_max_bid(bid: int, now: float, spend: int, expected: float,
                                                        impressions: int) -> None:
    controller = BidController("max_clicks", max_bid_micros=3_000_000)
    state = BidState(min(bid, 3_000_000), won_anything=True, seen_s=max(0.0, now - 300))
    before = state.bid_micros
    after = controller.decide(state, seen(now, spend, impressions, expected)).bid_micros
    assert MIN_BID_MICROS <= after <= 3_000_000
    # Bounded steps (to the micro: bids are whole micros).
    assert before * math.exp(-MAX_CUT) - 1 <= after <= before * math.exp(MAX_STEP) + 1 or after == MIN_BID_MICROS


def test_target_cpc_holds_the_average_at_the_target() -> None:
    controller = BidController("target_cpc", target_micros=200_000)
    state = BidState(400_000, won_anything=True)
    expensive = Observation(43_200, 6_000_000, clicks_today=20, impressions_today=800, daily_budget_micros=BUDGET,
                            expected_spend_micros=1.0)  # far behind, but paying 300,000 a click
    decision = controller.decide(state, expensive)
    assert decision.bid_micros < 400_000 and "target" in decision.reason


def test_the_conversion_rate_bid_on_starts_optimistic_and_converges() -> None:
    assert learned_cvr(0, 0) > PRIOR_CVR  # optimism while nothing is measured
    assert learned_cvr(0, 500) < PRIOR_CVR < learned_cvr(60, 500)
    rates = [learned_cvr(clicks // 10, clicks) for clicks in (0, 100, 1_000, 100_000)]
    assert all(abs(a - 0.1) > abs(b - 0.1) for a, b in itertools.pairwise(rates))  # towards the true 10 %
    assert abs(rates[-1] - 0.1) < 0.002


@given(st.integers(MIN_BID_MICROS, 5_000_000), st.floats(1, DAY_S - 1), st.integers(0, BUDGET),
       st.floats(0, 1e8), st.integers(0, 10_000), st.integers(0, 200))
def test_target_cpa_bids_at_most_a_clicks_value_unless_the_price_paid_is_below_it(
        bid: int, now: float, spend: int, expected: float, impressions: int, conversions: int) -> None:
    rate = learned_cvr(conversions, 1_000)
    value = 4_000_000 * rate
    controller = BidController("target_cpa", target_micros=4_000_000, conversion_rate=rate)
    state = BidState(bid, won_anything=impressions > 0, seen_s=max(0.0, now - 300))
    decision = controller.decide(state, seen(now, spend, impressions, expected))  # paying 300,000 a click
    paid = 300_000 if impressions else None
    ceiling = value if paid is None or paid >= value else value * min(VALUE_HEADROOM, value / paid)
    assert decision.bid_micros <= max(MIN_BID_MICROS, round(ceiling) + 1)


def test_target_cpa_behind_the_pace_bids_a_clicks_value() -> None:
    controller = BidController("target_cpa", target_micros=4_000_000, conversion_rate=0.08)
    behind = BidState(100_000, won_anything=True, seen_s=43_200 - 300, spent_micros=BUDGET // 4)
    decision = controller.decide(behind, seen(43_200, BUDGET // 4, expected=1.0))  # paying 300,000 a click
    # A click is worth 320,000; the price paid is below that, so the bid may rise by value / paid.
    assert decision.bid_micros == round(320_000 * 320_000 / 300_000) and "a click's value" in decision.reason
    cheap = BidState(100_000, won_anything=True, seen_s=43_200 - 300, spent_micros=BUDGET // 4)
    free = Observation(43_200, BUDGET // 4, clicks_today=3, impressions_today=100, daily_budget_micros=BUDGET,
                       price_sum_micros=1_000 * 100, priced_impressions=100, expected_spend_micros=1.0)
    assert controller.decide(cheap, free).bid_micros == round(320_000 * VALUE_HEADROOM)  # at most 2x
    assert start_bid({"budget": {"daily_micros": BUDGET, "total_micros": BUDGET},
                      "goal": {"type": "target_cpa", "target_micros": 4_000_000}}) == round(4_000_000 * PRIOR_CVR)


def test_learning_needs_evidence_before_dropping_and_never_drops_the_advertisers_words() -> None:
    counts = KeywordCounts()
    needed = impressions_to_judge(0.02)
    assert 140 <= needed <= 160  # ln(0.05) / ln(0.98)
    for _ in range(needed - 1):
        counts.impression(("dud",), frozenset({"dud"}))
        counts.impression(("mine",), frozenset({"mine"}))
    assert learn(("dud", "good", "mine"), frozenset({"mine"}), counts, 0.02, False) is None
    counts.impression(("dud",), frozenset({"dud"}))
    counts.impression(("mine",), frozenset({"mine"}))
    change = learn(("dud", "good", "mine"), frozenset({"mine"}), counts, 0.02, False)
    assert change is not None and change.removed == ("dud",) and "mine" in change.keywords
    assert "no click in" in change.reason


def test_learning_adds_what_clicks_through_a_category() -> None:
    counts = KeywordCounts()
    for _ in range(30):
        counts.impression((), frozenset({"travel adapter"}))
    counts.click((), frozenset({"travel adapter"}))
    counts.click((), frozenset({"travel adapter"}))
    change = learn(("power bank",), frozenset(), counts, 0.02, True)
    assert change is not None and change.added == ("travel adapter",)
    assert change.keywords == ("power bank", "travel adapter") and "category" in change.reason
