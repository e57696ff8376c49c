"""`vickrey simulate SCENARIO.json`: a market day in simulated time (docs/contract.md §7).

The same code as live decides everything: campaigns are prepared as `campaigns apply` prepares
them (validation, derived targeting), indexed and auctioned by the engine (pricing, pacing, the
trust gates), learn their pCTR with the live blend, and the autopilot's pilots (bids, learned
targeting) decide on the same timer. Only Kafka, Redis and the clock are simulated: the clock by
the scenario's hours, Redis by `Ledger`, which keeps budgets, spend and frequency caps by the
rules of auction/reserve.lua and streams/charge_clicks.lua (tests/autopilot/test_ledger.py holds
it to the real scripts on the same inputs). Deterministic for a seed: one random source, drawn in
a fixed order.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from auction.bidding import DECISION_EVERY_S
from auction.engine import AuctionEngine
from auction.index import CampaignIndex
from auction.keywords import normalize_keyword
from auction.model import AuctionRequest, Campaign, NoFillReason, Winner, blended_pctr
from auction.pacing import SpendView
from autopilot.pilot import Pilot, pilots_campaign, seconds_of_day
from autopilot.scenario import Scenario
from core.clock import DAY_MS, utc_day

DAY_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the simulated clock starts here
HOUR_MS = 3_600_000
PEOPLE = 5_000  # distinct people in a day's intents (frequency caps count per person)
CTR_REFRESH_MS = 60_000  # the engine re-reads learned CTR this often (live: every few seconds)
MAX_ROUNDS = 8  # auctions re-run after refusals, as the worker does
DECIDE_EVERY_MS = DECISION_EVERY_S * 1000  # the autopilot's timer


@dataclass(slots=True)
class Ledger:
    """Simulated Redis: spend per campaign (per UTC day and in total) and frequency-cap counts,
    checked and charged by the reservation and click-charging rules."""

    today: dict[tuple[str, str], int] = field(default_factory=dict)  # (campaign, day) -> micros
    total: dict[str, int] = field(default_factory=dict)
    # (person, campaign) -> [window start (ms), impressions in it]: reserve.lua's counter, which
    # expires window_s after the impression that set it (a fixed window, not a sliding one).
    caps: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def spent(self, campaign_id: str, day: str) -> tuple[int, int]:
        return self.today.get((campaign_id, day), 0), self.total.get(campaign_id, 0)

    def reserve(self, winners: tuple[Winner, ...], user_id: str, day: str, now_ms: int) -> dict[str, NoFillReason]:
        """reserve.lua for one auction: every winner fits its budgets and cap, or nothing is written
        and the refused campaigns come back with their reason."""
        refused: dict[str, NoFillReason] = {}
        for winner in winners:
            campaign = winner.campaign
            need = max(1, winner.charge_micros) if campaign.bid_type == "cpm" else winner.price_micros
            today, total = self.spent(campaign.campaign_id, day)
            if today + need > campaign.daily_budget_micros or total + need > campaign.total_budget_micros:
                refused[campaign.campaign_id] = "budget"
            elif campaign.frequency_cap and self._capped(user_id, campaign, now_ms):
                refused[campaign.campaign_id] = "frequency_cap"
        if refused:
            return refused
        for winner in winners:
            campaign = winner.campaign
            self._charge(campaign.campaign_id, day, winner.charge_micros)
            if campaign.frequency_cap:
                self._count_cap(user_id, campaign, now_ms)
        return refused

    def charge_click(self, campaign: Campaign, charge_micros: int, day: str) -> bool:
        """charge_clicks.lua for one click: charged when the budgets cover it; False is an
        overdelivery (billed 0)."""
        today, total = self.spent(campaign.campaign_id, day)
        if charge_micros > 0 and (today + charge_micros > campaign.daily_budget_micros
                                  or total + charge_micros > campaign.total_budget_micros):
            return False
        self._charge(campaign.campaign_id, day, charge_micros)
        return True

    def _charge(self, campaign_id: str, day: str, micros: int) -> None:
        if micros:
            self.today[(campaign_id, day)] = self.today.get((campaign_id, day), 0) + micros
            self.total[campaign_id] = self.total.get(campaign_id, 0) + micros

    def _window(self, user_id: str, campaign: Campaign, now_ms: int) -> list[int]:
        assert campaign.frequency_cap is not None
        window = self.caps.get((user_id, campaign.campaign_id))
        if window is None or now_ms >= window[0] + campaign.frequency_cap[1] * 1000:
            return [now_ms, 0]  # expired (or never set): the next impression starts a window
        return window

    def _capped(self, user_id: str, campaign: Campaign, now_ms: int) -> bool:
        assert campaign.frequency_cap is not None
        return self._window(user_id, campaign, now_ms)[1] >= campaign.frequency_cap[0]

    def _count_cap(self, user_id: str, campaign: Campaign, now_ms: int) -> None:
        window = self._window(user_id, campaign, now_ms)
        window[1] += 1
        self.caps[(user_id, campaign.campaign_id)] = window


@dataclass(slots=True)
class Tally:
    impressions: int = 0
    clicks: int = 0
    overdelivery_clicks: int = 0
    conversions: int = 0
    spend_micros: int = 0
    spend_by_hour: list[int] = field(default_factory=list)
    expected_clicks: float = 0.0  # the click probabilities of its impressions, summed: clicks without the dice


class Market:
    """One simulated run of a scenario (`without_pilot`: campaign ids run as they are, for
    comparisons: no bids set for them, no targeting learned)."""

    def __init__(self, scenario: Scenario, without_pilot: frozenset[str] = frozenset()) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.records = {c["campaign_id"]: c for c in scenario.campaigns}
        campaigns = [Campaign.from_record(record) for record in scenario.campaigns]
        self.engine = AuctionEngine(CampaignIndex.build(campaigns), SpendView())
        self.ledger = Ledger()
        self.tallies = {c.campaign_id: Tally(spend_by_hour=[0] * scenario.hours) for c in campaigns}
        self.pilots = {c.campaign_id: Pilot.for_campaign(self.records[c.campaign_id]) for c in campaigns
                       if pilots_campaign(self.records[c.campaign_id]) and c.campaign_id not in without_pilot}
        self.decisions: list[dict[str, Any]] = []
        self.ctr_of = {cid: {_norm(k): p for k, p in rates.items()} for cid, rates in scenario.true_ctr.items()}
        words, weights, categories = zip(*scenario.keywords, strict=True)
        self.words, self.categories = words, dict(zip(words, categories, strict=True))
        self.cumulative = list(itertools.accumulate(weights))

    # -- the day ----------------------------------------------------------------------------------

    def run(self, on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        next_ctr, next_decision, event = DAY_START_MS, DAY_START_MS + DECIDE_EVERY_MS, 0
        for hour, count in enumerate(self.scenario.intents_per_hour):
            start = DAY_START_MS + hour * HOUR_MS
            for offset in sorted(self.rng.randrange(HOUR_MS) for _ in range(count)):
                now_ms = start + offset
                while next_decision <= now_ms:
                    self._decide(next_decision)
                    next_decision += DECIDE_EVERY_MS
                if now_ms >= next_ctr:
                    self._refresh_ctr()
                    next_ctr = now_ms + CTR_REFRESH_MS
                self._auction(event, now_ms, hour)
                event += 1
            if on_progress is not None:
                on_progress(hour + 1)
        return self.result()

    def _auction(self, event: int, now_ms: int, hour: int) -> None:
        day = utc_day(now_ms)
        self.engine.spend.roll_to(day)
        keywords = self._draw_keywords()
        intent = {
            "event_id": f"sim-{event}", "user_id": f"p-{self.rng.randrange(PEOPLE)}", "placement": "chat_inline",
            "intent": {"category": self.categories[keywords[0]], "keywords": keywords, "confidence": 0.9},
            "locale": "en-US", "country": "US", "device": "desktop",
            "consent": {"ads": True, "personalization": True}, "age_bracket": "18_plus",
        }
        request = AuctionRequest.from_intent(intent, now_ms)
        refused: dict[str, NoFillReason] = {}
        for _ in range(MAX_ROUNDS):
            result = self.engine.run(request, None, refused)
            if not result.winners:
                return
            refusals = self.ledger.reserve(result.winners, request.user_id, day, now_ms)
            if not refusals:
                break
            for campaign_id in refusals:
                campaign = self.engine.index.get(campaign_id)
                if campaign is not None and refusals[campaign_id] == "budget":
                    self.engine.spend.mark_exhausted(campaign_id)
            refused.update(refusals)
        else:
            return
        for winner in result.winners:
            self._served(winner, keywords, request, day, hour)

    def _served(self, winner: Winner, keywords: list[str], request: AuctionRequest, day: str, hour: int) -> None:
        campaign = winner.campaign
        cid = campaign.campaign_id
        tally = self.tallies[cid]
        tally.impressions += 1
        tally.spend_micros += winner.charge_micros
        tally.spend_by_hour[hour] += winner.charge_micros
        self._record_spend(campaign, day)
        pilot = self.pilots.get(cid)
        if pilot is not None:
            pilot.new_day(int(request.now_ms // DAY_MS))
            pilot.impression(winner.matched_keywords, request.keywords, winner.charge_micros, winner.price_micros)
        click_rate = self._true_ctr(campaign, keywords)
        tally.expected_clicks += click_rate
        if self.rng.random() >= click_rate:
            return
        charge = winner.price_micros if campaign.bid_type == "cpc" else 0
        if not self.ledger.charge_click(campaign, charge, day):
            tally.overdelivery_clicks += 1
            return
        tally.clicks += 1
        tally.spend_micros += charge
        tally.spend_by_hour[hour] += charge
        self._record_spend(campaign, day)
        if pilot is not None:
            pilot.click(winner.matched_keywords, request.keywords, charge)
        if self.rng.random() < self.scenario.true_cvr.get(cid, 0.0):
            tally.conversions += 1
            if pilot is not None:
                pilot.conversion()  # live, attributed within seconds of the click's: the same decision period

    def _record_spend(self, campaign: Campaign, day: str) -> None:
        today, total = self.ledger.spent(campaign.campaign_id, day)
        self.engine.spend.record(campaign, today, total)

    def _draw_keywords(self) -> list[str]:
        least, most = self.scenario.keywords_per_intent
        wanted = min(len(self.words), self.rng.randint(least, most))
        drawn: list[str] = []
        while len(drawn) < wanted:
            keyword = self.words[bisect.bisect_right(self.cumulative, self.rng.random() * self.cumulative[-1])]
            if keyword not in drawn:
                drawn.append(keyword)
        return drawn

    def _true_ctr(self, campaign: Campaign, keywords: list[str]) -> float:
        rates = self.ctr_of.get(campaign.campaign_id)
        if rates is None:
            return float(campaign.prior_pctr)
        for keyword in keywords:
            rate = rates.get(_norm(keyword))
            if rate is not None:
                return rate
        return rates.get("*", float(campaign.prior_pctr))

    def _refresh_ctr(self) -> None:
        """The feedback role's counts, read back as the engine's learned pCTR (CPC campaigns)."""
        index = self.engine.index
        for cid, tally in self.tallies.items():
            campaign = index.get(cid)
            if campaign is not None and campaign.bid_type == "cpc" and tally.impressions:
                clicks = tally.clicks + tally.overdelivery_clicks  # every valid click, as feedback counts them
                index.set_pctr(cid, blended_pctr(campaign.prior_pctr, tally.impressions, clicks))

    def _decide(self, now_ms: int) -> None:
        """The autopilot's timer: each pilot decides; a change is published and applied."""
        index = self.engine.index
        for cid, pilot in self.pilots.items():
            pilot.new_day(int(now_ms // DAY_MS))
            decision = pilot.decide(seconds_of_day(now_ms))
            campaign = index.get(cid)
            if decision is None or campaign is None:
                continue
            self.decisions.append(decision.record(now_ms))
            index.upsert(campaign.piloted(decision.bid_micros, decision.keywords))

    def result(self) -> dict[str, Any]:
        campaigns = {}
        days = -(-self.scenario.hours // 24)
        for cid, tally in self.tallies.items():
            budget = self.records[cid]["budget"]
            campaigns[cid] = {
                "impressions": tally.impressions,
                "clicks": tally.clicks,
                "overdelivery_clicks": tally.overdelivery_clicks,
                "conversions": tally.conversions,
                "spend_micros": tally.spend_micros,
                "budget_micros": min(budget["total_micros"], budget["daily_micros"] * days),
                "avg_cpc_micros": tally.spend_micros // tally.clicks if tally.clicks else None,
                "avg_cpa_micros": tally.spend_micros // tally.conversions if tally.conversions else None,
                "spend_by_hour": tally.spend_by_hour,
            }
        return {"seed": self.scenario.seed, "hours": self.scenario.hours, "campaigns": campaigns}


def simulate(scenario: Scenario, on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    return Market(scenario).run(on_progress)


def _norm(keyword: str) -> str:
    return keyword if keyword == "*" else normalize_keyword(keyword)
