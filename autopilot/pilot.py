"""The autopilot of one campaign: its bid controller (auction/bidding.py) and its learned targeting
(autopilot/learning.py), deciding on a timer from the campaign's own counts. Pure, so the autopilot
role and the simulator call the same `decide`.

A decision that changes anything becomes a `campaigns.autopilot` record (`record()`): the
effective bid and targeting, what was added and removed, and why, with a version that only grows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from auction.bidding import BID_GOALS, DAY_S, BidController, BidState, Observation, learned_cvr, start_bid
from auction.model import Campaign
from autopilot.learning import Counts, KeywordCounts, learn

GOALS = BID_GOALS


def feed_window_ms(decide_every_s: int) -> int:
    """The autopilot's input windows (streams/autopilot_feed.py): a fifth of its decision period,
    1 to 60 s, so a decision sees several of them and a window never outlasts a decision."""
    return max(1000, min(60_000, decide_every_s * 1000 // 5))


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
    base: tuple[str, ...] = ()  # the keywords the campaign itself gives (before anything learned)
    pending: str | None = None  # a change to announce at the next decision (the campaign was edited)
    day: int = -1
    today: Counts = field(default_factory=Counts)
    counts: KeywordCounts = field(default_factory=KeywordCounts)
    price_sum_micros: int = 0  # per-click prices of the contested impressions since the last decision
    priced_impressions: int = 0
    all_prices_micros: int = 0  # per-click prices of every impression since the last decision
    clicks_total: int = 0  # since the pilot began: the conversion rate's denominator
    conversions_total: int = 0  # attributed conversions since the pilot began

    @classmethod
    def for_campaign(cls, record: dict[str, Any]) -> Pilot:
        """A new pilot for a prepared campaign record (validated, its targeting derived), with the
        keywords as the engine reads them: the advertiser's exact ones are `fixed`."""
        campaign = Campaign.from_record(record)
        keywords = tuple(sorted(set(campaign.keywords) | set(campaign.phrases)))
        goal = record.get("goal") or {}
        kind = goal.get("type", "manual")
        return cls(
            campaign_id=record["campaign_id"], goal=kind, target_micros=goal.get("target_micros"),
            max_bid_micros=goal.get("max_bid_micros"), daily_budget_micros=int(record["budget"]["daily_micros"]),
            fixed_keywords=frozenset(campaign.keywords), keywords=keywords,
            categories=tuple(sorted(campaign.categories or ())), prior_ctr=float(record.get("pctr", 0.01)),
            bid=BidState(start_bid(record)) if kind in GOALS else None, base=keywords,
        )

    def refresh(self, record: dict[str, Any]) -> None:
        """The campaign as it is stored now: its goal, budget and prior follow; its bid state and
        what was learned stay unless the goal or the campaign's own targeting changed."""
        fresh = Pilot.for_campaign(record)
        self.goal, self.target_micros, self.max_bid_micros = fresh.goal, fresh.target_micros, fresh.max_bid_micros
        self.daily_budget_micros, self.prior_ctr = fresh.daily_budget_micros, fresh.prior_ctr
        if (fresh.bid is None) != (self.bid is None):
            self.bid = fresh.bid
            self.pending = "the goal changed: bidding starts again" if fresh.bid else "the goal changed to manual"
        if (fresh.base, fresh.fixed_keywords, fresh.categories) != (self.base, self.fixed_keywords, self.categories):
            self.base, self.keywords, self.fixed_keywords = fresh.base, fresh.keywords, fresh.fixed_keywords
            self.categories, self.counts = fresh.categories, KeywordCounts()
            self.pending = "the campaign's targeting changed: learning starts again from it"

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
        self.clicks_total += 1

    def conversion(self) -> None:
        """One conversion attributed to one of the campaign's clicks (ad.conversions)."""
        self.conversions_total += 1

    def absorb(self, feed: dict[str, Any]) -> None:
        """One `autopilot.feed` window: the same counts as its impressions and clicks one by one."""
        self.today.add(feed["impressions"], feed["clicks"], feed["spend_micros"])
        self.counts.merge(KeywordCounts(
            {item["keyword"]: Counts(item["impressions"], item["clicks"], item["spend_micros"])
             for item in feed["keywords"]},
            {item["keyword"]: Counts(item["impressions"], item["clicks"]) for item in feed["via_category"]},
        ))
        self.price_sum_micros += feed["price_sum_micros"]
        self.priced_impressions += feed["priced_impressions"]
        self.all_prices_micros += feed["all_prices_micros"]
        self.clicks_total += feed["clicks"]
        self.conversions_total += feed.get("conversions", 0)

    # -- deciding -------------------------------------------------------------------------------

    def decide(self, now_s_of_day: float, spend_today_micros: int | None = None) -> Decision | None:
        """On the timer: the next bid (for a goal) and targeting (for learned keywords), or None when
        nothing changes. `spend_today_micros`: what the budget keys say was spent today, when known
        (live: Redis; the simulator counts it itself)."""
        if spend_today_micros is not None:
            self.today.spend_micros = spend_today_micros
        reasons: list[str] = [self.pending] if self.pending else []
        self.pending = None
        bid_micros = None
        if self.bid is not None:
            before = self.bid.bid_micros
            seen = Observation(now_s_of_day, self.today.spend_micros, self.today.clicks, self.today.impressions,
                               self.daily_budget_micros, self.price_sum_micros, self.priced_impressions,
                               self.all_prices_micros * self._ctr())
            self.price_sum_micros = self.priced_impressions = self.all_prices_micros = 0
            controller = BidController(self.goal, self.target_micros, self.max_bid_micros,
                                       learned_cvr(self.conversions_total, self.clicks_total))
            decision = controller.decide(self.bid, seen)
            bid_micros = decision.bid_micros
            if bid_micros != before or reasons:
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

    def adopt(self, decision: dict[str, Any]) -> None:
        """A decision this pilot made but lost (a crash between recording it and keeping its own
        state): its version, bid and targeting become the pilot's again."""
        self.version = decision["version"]
        self.keywords = tuple(decision["keywords"])
        if self.bid is not None and decision["bid"] is not None:
            self.bid.bid_micros = decision["bid"]["amount_micros"]

    # -- kept in a table (streams/autopilot.py) ---------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything the pilot knows, as JSON-ready values (from_state gives the same pilot back)."""
        return {
            "campaign_id": self.campaign_id, "goal": self.goal, "target_micros": self.target_micros,
            "max_bid_micros": self.max_bid_micros, "daily_budget_micros": self.daily_budget_micros,
            "fixed_keywords": sorted(self.fixed_keywords), "keywords": list(self.keywords),
            "categories": list(self.categories), "prior_ctr": self.prior_ctr,
            "bid": None if self.bid is None else asdict(self.bid), "version": self.version, "base": list(self.base),
            "pending": self.pending, "day": self.day,
            "today": [self.today.impressions, self.today.clicks, self.today.spend_micros],
            "counts": self.counts.to_state(), "price_sum_micros": self.price_sum_micros,
            "priced_impressions": self.priced_impressions, "all_prices_micros": self.all_prices_micros,
            "clicks_total": self.clicks_total, "conversions_total": self.conversions_total,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Pilot:
        bid = state["bid"]
        if bid is not None:
            bid = BidState(**{**bid, "spent": [tuple(item) for item in bid["spent"]],
                              "prices": [tuple(item) for item in bid["prices"]]})
        return cls(
            campaign_id=state["campaign_id"], goal=state["goal"], target_micros=state["target_micros"],
            max_bid_micros=state["max_bid_micros"], daily_budget_micros=state["daily_budget_micros"],
            fixed_keywords=frozenset(state["fixed_keywords"]), keywords=tuple(state["keywords"]),
            categories=tuple(state["categories"]), prior_ctr=state["prior_ctr"], bid=bid, version=state["version"],
            base=tuple(state["base"]), pending=state["pending"], day=state["day"], today=Counts(*state["today"]),
            counts=KeywordCounts.from_state(state["counts"]), price_sum_micros=state["price_sum_micros"],
            priced_impressions=state["priced_impressions"], all_prices_micros=state["all_prices_micros"],
            clicks_total=state.get("clicks_total", 0), conversions_total=state.get("conversions_total", 0),
        )

    def _ctr(self) -> float:
        seen = sum(c.impressions for c in self.counts.by_keyword.values()) + \
            sum(c.impressions for c in self.counts.via_category.values())
        clicks = sum(c.clicks for c in self.counts.by_keyword.values()) + \
            sum(c.clicks for c in self.counts.via_category.values())
        # The prior as pseudo-impressions, like the engine's learned pCTR.
        return (clicks + self.prior_ctr * 1000) / (seen + 1000)


def seconds_of_day(now_ms: int) -> float:
    return (now_ms // 1000) % DAY_S + (now_ms % 1000) / 1000
