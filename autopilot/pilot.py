"""The autopilot of one campaign: its bid controller (auction/bidding.py) and its learned targeting
(autopilot/learning.py), deciding on a timer from the campaign's own counts. Pure, so the autopilot
role and the simulator call the same `decide`.

A decision that changes anything becomes a `campaigns.autopilot` record (`record()`): the
effective bid and targeting, what was added and removed, and why, with a version that only grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auction.bidding import DAY_S, BidController, BidState, Observation, start_bid
from autopilot.learning import Counts, KeywordCounts, learn

GOALS = ("max_clicks", "target_cpc")


def pilots_campaign(record: dict[str, Any]) -> bool:
    """Does the autopilot run this campaign (a goal it bids for, or derived targeting to learn)?"""
    goal = (record.get("goal") or {}).get("type", "manual")
    return goal in GOALS or bool((record.get("targeting") or {}).get("auto"))


@dataclass(slots=True)
class Decision:
    campaign_id: str
    version: int
    bid_micros: int | None
    keywords: tuple[str, ...]
    categories: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reason: str

    def record(self, ts_ms: int) -> dict[str, Any]:
        """The `campaigns.autopilot` record (schemas/campaigns.autopilot.json)."""
        return {
            "schema_version": 1,
            "campaign_id": self.campaign_id,
            "version": self.version,
            "ts": ts_ms,
            "bid": None if self.bid_micros is None else {"type": "cpc", "amount_micros": self.bid_micros},
            "keywords": list(self.keywords),
            "categories": list(self.categories),
            "keywords_added": list(self.added),
            "keywords_removed": list(self.removed),
            "reason": self.reason,
        }


@dataclass(slots=True)
class Pilot:
    campaign_id: str
    goal: str
    target_micros: int | None
    max_bid_micros: int | None
    daily_budget_micros: int
    fixed_keywords: frozenset[str]  # the advertiser's own: never dropped
    keywords: tuple[str, ...]  # effective
    categories: tuple[str, ...]
    prior_ctr: float
    bid: BidState | None
    version: int = 0
    day: int = -1
    today: Counts = field(default_factory=Counts)
    counts: KeywordCounts = field(default_factory=KeywordCounts)
    price_sum_micros: int = 0  # per-click prices of the contested impressions since the last decision
    priced_impressions: int = 0
    all_prices_micros: int = 0  # per-click prices of every impression since the last decision

    @classmethod
    def for_campaign(cls, record: dict[str, Any], keywords: tuple[str, ...], fixed: frozenset[str],
                     categories: tuple[str, ...]) -> Pilot:
        """A new pilot for a prepared campaign record (`keywords`: its effective list as the engine
        reads it, `fixed`: the advertiser's own among them)."""
        goal = record.get("goal") or {}
        kind = goal.get("type", "manual")
        bidding = kind in GOALS
        return cls(
            campaign_id=record["campaign_id"], goal=kind, target_micros=goal.get("target_micros"),
            max_bid_micros=goal.get("max_bid_micros"), daily_budget_micros=int(record["budget"]["daily_micros"]),
            fixed_keywords=fixed, keywords=keywords, categories=categories,
            prior_ctr=float(record.get("pctr", 0.01)),
            bid=BidState(start_bid(record)) if bidding else None,
        )

    # -- what the pilot is told ----------------------------------------------------------------

    def new_day(self, day: int) -> None:
        if day != self.day:
            self.day = day
            self.today = Counts()

    def impression(self, matched: tuple[str, ...], intent_keywords: frozenset[str], charge_micros: int,
                   price_micros: int) -> None:
        """One impression won: its charge now (CPM) and its price per click (what a click costs)."""
        self.today.add(impressions=1, spend_micros=charge_micros)
        self.counts.impression(matched, intent_keywords, charge_micros)
        self.all_prices_micros += price_micros
        if price_micros > 0:  # an uncontested win (price 0) says nothing about the market's price
            self.price_sum_micros += price_micros
            self.priced_impressions += 1

    def click(self, matched: tuple[str, ...], intent_keywords: frozenset[str], charge_micros: int) -> None:
        self.today.add(clicks=1, spend_micros=charge_micros)
        self.counts.click(matched, intent_keywords, charge_micros)

    # -- deciding -------------------------------------------------------------------------------

    def decide(self, now_s_of_day: float) -> Decision | None:
        """On the timer: the next bid (for a goal) and targeting (for learned keywords), or None when
        nothing changes."""
        reasons: list[str] = []
        bid_micros = None
        if self.bid is not None:
            before = self.bid.bid_micros
            seen = Observation(now_s_of_day, self.today.spend_micros, self.today.clicks, self.today.impressions,
                               self.daily_budget_micros, self.price_sum_micros, self.priced_impressions,
                               self.all_prices_micros * self._ctr())
            self.price_sum_micros = self.priced_impressions = self.all_prices_micros = 0
            decision = BidController(self.goal, self.target_micros, self.max_bid_micros).decide(self.bid, seen)
            bid_micros = decision.bid_micros
            if bid_micros != before:
                reasons.append(decision.reason)
        added: tuple[str, ...] = ()
        removed: tuple[str, ...] = ()
        change = learn(self.keywords, self.fixed_keywords, self.counts, self._ctr(), bool(self.categories))
        if change is not None:
            self.keywords, added, removed = change.keywords, change.added, change.removed
            reasons.append(change.reason)
        if not reasons:
            return None
        self.version += 1
        return Decision(self.campaign_id, self.version, bid_micros, self.keywords, self.categories, added, removed,
                        "; ".join(reasons))

    def _ctr(self) -> float:
        seen = sum(c.impressions for c in self.counts.by_keyword.values()) + \
            sum(c.impressions for c in self.counts.via_category.values())
        clicks = sum(c.clicks for c in self.counts.by_keyword.values()) + \
            sum(c.clicks for c in self.counts.via_category.values())
        # The prior as pseudo-impressions, like the engine's learned pCTR.
        return (clicks + self.prior_ctr * 1000) / (seen + 1000)


def seconds_of_day(now_ms: int) -> float:
    return (now_ms // 1000) % DAY_S + (now_ms % 1000) / 1000
