"""Bidding for a goal (docs/contract.md §7): the CPC bid the autopilot sets for `max_clicks` and
`target_cpc` campaigns. Pure: the autopilot role (streams/autopilot.py) and the simulator
(autopilot/simulate.py) call the same `BidController.decide` on the same observations.

**The algorithm: spend-rate tracking with bounded multiplicative steps, held near the market.**
Budget-constrained bidding in repeated second-price auctions has a simple optimal form when every
click is worth the same: one bid for the whole day, the highest whose day's spend stays within the
daily budget (the dual, or Lagrangian, bid of Balseiro & Gur 2019: bid = value / (1 + λ), with λ
the price of a unit of budget). Nobody knows that bid in advance, so the controller finds it by
feedback, every DECISION_EVERY_S:

- the rate it needs: what is left of today's budget over what is left of the day (on the even
  curve that is the even rate; behind it, a little more; ahead, less);
- the rate it has: the *expected* spend of the impressions won in the last RATE_MEMORY decisions
  (each impression's price per click × the campaign's learned click-through rate), averaged.
  Clicks come one at a time, a few an hour for a small campaign: their spend is too lumpy to
  steer by, while impressions come by the hundred;
- within a factor TOLERANCE of each other the bid stays (traffic is not flat over a day: a bid
  that fits the day spends faster at noon than at night, and chasing that would pay noon prices
  for night clicks); beyond it, log(bid) moves by K·ln(needed / has), at most MAX_STEP up and
  MAX_CUT down per decision (bounded steps: a proportional controller on the log of the rate, the
  velocity form of a PI controller on spend);
- no hour may run away: when what was really spent over the last SURGE_MEMORY decisions runs
  over SURGE × the even rate, the bid is cut at once;
- **held when bidding more buys nothing**: after SATURATION_RAISES raises in a row that did not
  lift the spend rate by a tenth, the bid stops rising for SATURATION_HOLD_S (the deficit is a
  lack of traffic, the night, and bidding more would only buy dearer clicks when traffic comes
  back); and it never rises above PRICE_HEADROOM × the average price paid per contested click;
- cold start: until something is won the bid rises by COLD_STEP per decision from a modest start;
- `target_cpc`: also at most the bid that brings the average CPC to the target;
- `target_cpa`: never above the value of a click, target CPA × the campaign's learned conversion
  rate per click (PRIOR_CVR as PRIOR_CLICKS pseudo-clicks, updated from its attributed
  conversions; `learned_cvr` bids on its estimate plus one standard deviation). In a second-price auction bidding a click's value is the dominant choice when the
  budget does not bind, and the price paid is at most the bid, so the cost per conversion stays at
  or below the target as far as the rate is right: behind the pace it bids that value (no
  saturation or price headroom to guess), and pacing lowers it when the budget binds. While the
  second price actually paid per click stays below the value, the ceiling rises with the gap (up to
  VALUE_HEADROOM × the value), so that the average paid, not the bid, approaches the value: a
  capped bid alone left CPA at half the target and most of the budget unspent.
  (A ceiling on the *average* CPC, as for target_cpc, winds up: early dear clicks keep the day's
  average high and press the bid to the floor long after the market changed.)
- never above `max_bid_micros`, never below MIN_BID_MICROS.

The reservation in Redis keeps budgets atomic whatever the bid: the controller decides how the
budget is spent, never whether it can be overspent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from core.settings import Settings

DAY_S = 86_400
BID_GOALS = ("max_clicks", "target_cpc", "target_cpa")  # the goals the autopilot bids for
# Five minutes (VICKREY_AUTOPILOT_DECIDE_EVERY_S's default): several feed windows per decision,
# 288 decisions a day. The constants below that count decisions assume it.
DECISION_EVERY_S: int = Settings.model_fields["autopilot_decide_every_s"].default
MIN_BID_MICROS = 10_000  # one cent a click
MAX_STEP = 0.1  # log-bid rise per decision, at most (×1.105)
MAX_CUT = 0.2  # log-bid fall per decision, at most (×0.82)
COLD_STEP = 0.2  # log-bid rise per decision while nothing is won
K_UP = 0.3
K_DOWN = 0.5
TOLERANCE = 1.3
SURGE = 2.5  # real spend above this × the even rate cuts the bid whatever the day's pace
SURGE_MEMORY = 3  # decisions of real spend the surge is judged on
RATE_MEMORY = 6  # decisions averaged into the rate it has
PRICE_HEADROOM = 4.0  # a bid rises no higher than this × the average price paid per click
SATURATION_RAISES = 4  # raises in a row without a higher spend rate: bidding more buys nothing now
SATURATION_HOLD_S = 3600
PRICE_MEMORY = 6  # decisions whose prices make the average
START_SHARE = 100  # max_clicks starts at the daily budget / 100 a click
VALUE_HEADROOM = 2.0  # target_cpa bids up to this × a click's value while the price paid stays below it
PRIOR_CVR = 0.05  # target_cpa: the conversion rate per click assumed before any is measured
PRIOR_CLICKS = 40  # ... weighing as much as this many clicks


def learned_cvr(conversions: int, clicks: int) -> float:
    """Conversions per click to bid on: the estimate (the prior counted as PRIOR_CLICKS pseudo-clicks)
    plus one standard deviation of it. Optimism while clicks are few: a prior below the market's
    price would otherwise never win the clicks that could correct it; the margin shrinks as
    clicks come in."""
    weight = clicks + PRIOR_CLICKS
    rate = (conversions + PRIOR_CVR * PRIOR_CLICKS) / weight
    return min(1.0, rate + math.sqrt(rate * (1 - rate) / (weight + 1)))


def start_bid(record: dict[str, Any]) -> int:
    """Where an autopilot campaign's CPC bid starts: the advertiser's bid if any, else the target CPC
    (`target_cpc`), else a modest share of the daily budget; within [MIN_BID_MICROS, max bid]."""
    goal = record.get("goal") or {}
    bid = record.get("bid")
    if bid:
        start = int(bid["amount_micros"])
    elif goal.get("target_micros"):
        start = int(goal["target_micros"] * (PRIOR_CVR if goal.get("type") == "target_cpa" else 1))
    else:
        start = int(record["budget"]["daily_micros"]) // START_SHARE
    return clamp(start, goal.get("max_bid_micros"))


def clamp(bid_micros: int, max_bid_micros: int | None) -> int:
    top = max_bid_micros if max_bid_micros else 2**53 - 1
    return max(MIN_BID_MICROS, min(bid_micros, top))


@dataclass(slots=True)
class Observation:
    """What the controller sees of one campaign at a decision: today's totals so far, and the
    prices (per click) of the impressions won since the last decision."""

    now_s: float  # seconds into the UTC day
    spend_today_micros: int
    clicks_today: int
    impressions_today: int
    daily_budget_micros: int
    price_sum_micros: int = 0  # per-click prices of the contested impressions since the last decision
    priced_impressions: int = 0
    expected_spend_micros: float = 0.0  # of every impression since then: price per click × click rate


@dataclass(slots=True)
class BidState:
    bid_micros: int
    spent_micros: int = 0  # today's spend at the last decision
    seen_s: float = 0.0  # when that was
    won_anything: bool = False
    rates: list[float] = field(default_factory=list)  # expected spend per second of the last decisions
    spent: list[tuple[float, int]] = field(default_factory=list)  # (seconds, real spend) of the last decisions
    raises: int = 0  # raises in a row
    rate_before_raises: float = 0.0
    held_until_s: float = -1.0
    prices: list[tuple[int, int]] = field(default_factory=list)  # (price sum, impressions) per decision


@dataclass(slots=True)
class BidDecision:
    bid_micros: int
    reason: str


class BidController:
    """One campaign's goal: `max_clicks`, `target_cpc` or `target_cpa` (target in micros; for
    target_cpa with the learned `conversion_rate` per click), max bid optional."""

    def __init__(self, goal: str, target_micros: int | None = None, max_bid_micros: int | None = None,
                 conversion_rate: float = PRIOR_CVR) -> None:
        if goal not in BID_GOALS:
            raise ValueError(f"no bidding for the goal {goal!r}")
        self.goal = goal
        self.target_micros = target_micros
        self.max_bid_micros = max_bid_micros
        # the CPC the goal allows on average: target CPC, or target CPA × conversions per click
        self.cpc_target: float | None = None
        if target_micros:
            self.cpc_target = target_micros * conversion_rate if goal == "target_cpa" else float(target_micros)

    def decide(self, state: BidState, seen: Observation) -> BidDecision:
        """The next bid, and why, in words an advertiser understands. Updates `state`."""
        state.won_anything = state.won_anything or seen.impressions_today > 0
        state.prices = [*state.prices, (seen.price_sum_micros, seen.priced_impressions)][-PRICE_MEMORY:]
        if not state.won_anything:
            bid = state.bid_micros * math.exp(COLD_STEP)
            why = "no impression won yet: bid up to find the market"
        else:
            bid, why = self._pace(state, seen)
        state.spent_micros, state.seen_s = seen.spend_today_micros, seen.now_s
        if self.goal == "target_cpa":
            bid, why = self._hold_value(bid, why, state)
        elif self.goal == "target_cpc":
            bid, why = self._hold_cpc(bid, state.bid_micros, seen, why)
        new_bid = clamp(round(bid), self.max_bid_micros)
        if new_bid == self.max_bid_micros and new_bid < round(bid):
            why += f" (held at the max bid {self.max_bid_micros})"
        state.bid_micros = new_bid
        return BidDecision(new_bid, why)

    def _pace(self, state: BidState, seen: Observation) -> tuple[float, str]:
        """One step of the rate tracking (see the module docstring)."""
        new_day = seen.now_s < state.seen_s
        elapsed = max(1.0, seen.now_s if new_day else seen.now_s - state.seen_s)
        really = seen.spend_today_micros if new_day else max(0, seen.spend_today_micros - state.spent_micros)
        state.rates = [*state.rates, seen.expected_spend_micros / elapsed][-RATE_MEMORY:]
        state.spent = [*state.spent, (elapsed, really)][-SURGE_MEMORY:]
        budget = max(1, seen.daily_budget_micros)
        even = budget / DAY_S
        needed = max(0.0, budget - seen.spend_today_micros) / max(1.0, DAY_S - seen.now_s)
        has = sum(state.rates) / len(state.rates)
        bid = float(state.bid_micros)
        surge = sum(micros for _, micros in state.spent) / sum(seconds for seconds, _ in state.spent) / even
        if surge > SURGE:
            step = -min(MAX_CUT, K_DOWN * math.log(surge / SURGE) + 0.05)
            state.spent = []  # judged once
            return bid * math.exp(step), f"spending {surge:.1f}× the even rate: bid {100 * (math.exp(step) - 1):+.0f}%"
        if needed <= 0:
            return bid, "today's budget is spent: bid kept for tomorrow"
        ratio = has / needed
        pace = f"spending {ratio:.2f}× the rate that ends the day on budget"
        if ratio >= 1 / TOLERANCE:
            state.raises = 0
        if 1 / TOLERANCE <= ratio <= TOLERANCE:
            return bid, f"{pace}: bid kept"
        if ratio > TOLERANCE:
            step = -min(MAX_CUT, K_DOWN * math.log(ratio / TOLERANCE))
            return bid * math.exp(step), f"{pace}: bid {100 * (math.exp(step) - 1):+.0f}%"
        if self.goal == "target_cpa" and self.cpc_target is not None:
            # The value of a click is known: behind the pace, bid it (the ceiling below holds it there).
            return max(bid, self._value_ceiling(state)), f"{pace}: bid a click's value"
        return self._raise(state, seen, bid, ratio, has, pace)

    def _raise(self, state: BidState, seen: Observation, bid: float, ratio: float, has: float,
               pace: str) -> tuple[float, str]:
        """Behind the pace: a bounded rise, unless rising has stopped buying more (saturation)."""
        if seen.now_s < state.held_until_s:
            return bid, f"{pace}, but bidding more bought nothing an hour ago: held"
        if state.raises >= SATURATION_RAISES and has <= 1.1 * state.rate_before_raises:
            state.raises, state.held_until_s = 0, seen.now_s + SATURATION_HOLD_S
            return bid, f"{pace}, but {SATURATION_RAISES} raises bought nothing more: held for an hour"
        priced = sum(count for _, count in state.prices)
        ceiling = PRICE_HEADROOM * sum(total for total, _ in state.prices) / priced if priced else math.inf
        if bid >= ceiling:
            return bid, f"{pace}, but the bid is already {PRICE_HEADROOM:g}× the price paid: held"
        if state.raises == 0:
            state.rate_before_raises = has
        state.raises += 1
        step = min(MAX_STEP, K_UP * math.log(TOLERANCE / max(ratio, 1e-3)))
        raised = min(bid * math.exp(step), max(bid, ceiling))
        return raised, f"{pace}: bid {100 * (raised / bid - 1):+.0f}%"

    def _value_ceiling(self, state: BidState) -> float:
        """target_cpa's highest bid: a click's value, raised while the second price paid per click
        stays below it (up to VALUE_HEADROOM ×), so that the *average* price, not the bid, meets it."""
        assert self.cpc_target is not None
        priced = sum(count for _, count in state.prices)
        if not priced:
            return self.cpc_target
        paid = sum(total for total, _ in state.prices) / priced
        return self.cpc_target * max(1.0, min(VALUE_HEADROOM, self.cpc_target / max(1.0, paid)))

    def _hold_value(self, bid: float, why: str, state: BidState) -> tuple[float, str]:
        """target_cpa: never above a click's value (target CPA × conversions per click)."""
        if self.cpc_target is None or self.target_micros is None:
            return bid, why
        ceiling = self._value_ceiling(state)
        if bid <= ceiling:
            return bid, why
        rate = self.cpc_target / self.target_micros
        return ceiling, (f"a click is worth {_money(self.cpc_target)} (CPA target {_money(self.target_micros)}"
                         f" × {rate:.1%} conversions per click): bid {_money(ceiling)}")

    def _hold_cpc(self, bid: float, current: int, seen: Observation, why: str) -> tuple[float, str]:
        """The target CPC as a ceiling on the average: at most the bid that would bring the
        measured average CPC to the target (bounded like any step)."""
        if self.cpc_target is None:
            return bid, why
        if seen.clicks_today == 0:
            ceiling = max(self.cpc_target, float(current))
        else:
            average = seen.spend_today_micros / seen.clicks_today
            ratio = max(math.exp(-MAX_STEP), min(math.exp(MAX_STEP), self.cpc_target / max(1.0, average)))
            ceiling = current * ratio
        if bid > ceiling:
            return ceiling, (f"average CPC {_money(seen.spend_today_micros / max(1, seen.clicks_today))} against a "
                             f"target of {_money(self.cpc_target)}: bid {_money(ceiling)}")
        return bid, why


def _money(micros: float) -> str:
    return f"{micros / 1_000_000:.2f}"
