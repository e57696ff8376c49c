"""Bidding for a goal (docs/contract.md §7): the CPC bid the autopilot sets for `max_clicks` and
`target_cpc` campaigns. Pure: the autopilot role (streams/autopilot.py) and the simulator
(autopilot/simulate.py) call the same `BidController.decide` on the same observations.

**The algorithm: a multiplicative PI controller on the pacing error, with a CPC ceiling.**
Budget-constrained bidding in repeated second-price auctions has a simple optimal form when every
click is worth the same: one bid for the whole day, the highest whose day's spend stays within the
daily budget (the dual, or Lagrangian, bid of Balseiro & Gur 2019: bid = value / (1 + λ), with λ
the price of a unit of budget). That bid depends on the competition, which nobody knows in
advance, so the controller finds it by feedback, every `DECISION_EVERY_S`:

- error e = (the budget's even share so far - spend so far) / daily budget; positive when behind;
- log(bid) moves by KP·e + KI·Σe, at most ±MAX_STEP per decision (bounded steps), so a bid moves
  smoothly towards the one that spends the budget over the whole day: behind the even-pacing
  curve the bid rises, ahead of it the bid falls;
- cold start: with no win yet the bid rises by COLD_STEP per decision from a modest start instead
  of sitting at a bid that buys nothing;
- `target_cpc`: the bid is also held so that the average CPC stays at the target or below (in a
  second-price auction the price paid is below the bid, so the ceiling moves with the measured
  average: bid·target/avg, bounded the same way);
- never above `max_bid_micros`, never below MIN_BID_MICROS.

Why not a finer optimiser: the controller must work from a cold start on a day it has not seen,
from minute aggregates alone, and must never make a campaign overspend. The reservation in Redis
keeps budgets atomic whatever the bid; the controller only decides how fast the budget goes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DAY_S = 86_400
DECISION_EVERY_S = 600  # ten minutes: several minute windows per decision, 144 decisions a day
MIN_BID_MICROS = 10_000  # one cent a click
MAX_STEP = 0.25  # log-bid change per decision, at most (×1.28 or ×0.78)
COLD_STEP = 0.25  # log-bid rise per decision while nothing is won
KP = 2.0
KI = 0.15
INTEGRAL_LIMIT = 2.0
START_SHARE = 100  # max_clicks starts at the daily budget / 100 a click


def start_bid(record: dict[str, Any]) -> int:
    """Where an autopilot campaign's CPC bid starts: the advertiser's bid if any, else the target CPC
    (`target_cpc`), else a modest share of the daily budget; within [MIN_BID_MICROS, max bid]."""
    goal = record.get("goal") or {}
    bid = record.get("bid")
    if bid:
        start = int(bid["amount_micros"])
    elif goal.get("target_micros"):
        start = int(goal["target_micros"])
    else:
        start = int(record["budget"]["daily_micros"]) // START_SHARE
    return clamp(start, goal.get("max_bid_micros"))


def clamp(bid_micros: int, max_bid_micros: int | None) -> int:
    top = max_bid_micros if max_bid_micros else 2**53 - 1
    return max(MIN_BID_MICROS, min(bid_micros, top))


@dataclass(slots=True)
class Observation:
    """What the controller sees of one campaign at a decision: today's totals so far."""

    now_s: float  # seconds into the UTC day
    spend_today_micros: int
    clicks_today: int
    impressions_today: int
    daily_budget_micros: int


@dataclass(slots=True)
class BidState:
    bid_micros: int
    integral: float = 0.0
    won_anything: bool = False
    history: list[tuple[float, int, str]] = field(default_factory=list)  # (now_s, bid, reason)


@dataclass(slots=True)
class BidDecision:
    bid_micros: int
    reason: str


class BidController:
    """One campaign's goal: `max_clicks` or `target_cpc` (target in micros), max bid optional."""

    def __init__(self, goal: str, target_micros: int | None = None, max_bid_micros: int | None = None) -> None:
        if goal not in ("max_clicks", "target_cpc"):
            raise ValueError(f"no bidding for the goal {goal!r}")
        self.goal = goal
        self.target_micros = target_micros
        self.max_bid_micros = max_bid_micros

    def decide(self, state: BidState, seen: Observation) -> BidDecision:
        """The next bid, and why, in words an advertiser understands. Updates `state`."""
        budget = max(1, seen.daily_budget_micros)
        due = budget * min(1.0, seen.now_s / DAY_S)
        error = (due - seen.spend_today_micros) / budget
        state.won_anything = state.won_anything or seen.impressions_today > 0
        if not state.won_anything:
            step, why = COLD_STEP, "no impression won yet: bid up to find the market"
        else:
            state.integral = max(-INTEGRAL_LIMIT, min(INTEGRAL_LIMIT, state.integral + error))
            step = max(-MAX_STEP, min(MAX_STEP, KP * error + KI * state.integral))
            behind = 100 * error
            why = (f"spend {abs(behind):.0f}% {'behind' if behind >= 0 else 'ahead of'} the even-pacing curve: "
                   f"bid {'+' if step >= 0 else ''}{100 * (math.exp(step) - 1):.0f}%")
        bid = state.bid_micros * math.exp(step)
        if self.goal == "target_cpc" and self.target_micros:
            bid, why = self._hold_cpc(bid, state.bid_micros, seen, why)
        new_bid = clamp(round(bid), self.max_bid_micros)
        if new_bid == self.max_bid_micros and new_bid < round(bid):
            why += f" (held at the max bid {self.max_bid_micros})"
        state.bid_micros = new_bid
        state.history.append((seen.now_s, new_bid, why))
        return BidDecision(new_bid, why)

    def _hold_cpc(self, bid: float, current: int, seen: Observation, why: str) -> tuple[float, str]:
        """The target CPC as a ceiling on the average: at most the bid that would bring the
        measured average CPC to the target (bounded like any step)."""
        assert self.target_micros is not None
        if seen.clicks_today == 0:
            ceiling = float(max(self.target_micros, current))
        else:
            average = seen.spend_today_micros / seen.clicks_today
            ratio = max(math.exp(-MAX_STEP), min(math.exp(MAX_STEP), self.target_micros / max(1.0, average)))
            ceiling = current * ratio
        if bid > ceiling:
            return ceiling, (f"average CPC {_money(seen.spend_today_micros / max(1, seen.clicks_today))} against a "
                             f"target of {_money(self.target_micros)}: bid {_money(ceiling)}")
        return bid, why


def _money(micros: float) -> str:
    return f"{micros / 1_000_000:.2f}"
