"""Budget state as the engine sees it, and even pacing.

The Redis reservation script is the authority on budgets; this is the worker's recent view of
spend, used to keep exhausted or ahead-of-pace campaigns out of auctions before they cost a
refused reservation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from auction.model import Campaign, tie_hash
from core.clock import DAY_MS

# Even pacing may run ahead of the elapsed share of the day by this share of the daily budget
# before it sits out every auction; in between it sits out a proportional share.
PACING_TOLERANCE_BP = 200  # 2 % of the daily budget
BASIS_POINTS = 10_000


def pacing_allows(campaign: Campaign, spend_today_micros: int, now_ms: int, event_id: str) -> bool:
    """Even pacing: spend tracks the elapsed share of the UTC day. When ahead, the campaign sits
    out a share of auctions that grows with how far ahead it is, chosen by a stable hash of the
    event so that a replay decides the same way."""
    if not campaign.even_pacing or campaign.daily_budget_micros <= 0:
        return True
    elapsed_ms = now_ms % DAY_MS
    target_micros = campaign.daily_budget_micros * elapsed_ms // DAY_MS
    ahead_micros = spend_today_micros - target_micros
    if ahead_micros <= 0:
        return True
    tolerance_micros = max(1, campaign.daily_budget_micros * PACING_TOLERANCE_BP // BASIS_POINTS)
    sit_out_bp = min(BASIS_POINTS, ahead_micros * BASIS_POINTS // tolerance_micros)
    return tie_hash(event_id, campaign.campaign_id) % BASIS_POINTS >= sit_out_bp


@dataclass(slots=True)
class SpendView:
    """Spend per campaign for one UTC day, as last seen in Redis, and the campaigns known to
    have no budget left (kept as a set so the hot path asks one membership question)."""

    day: str = ""
    today_micros: dict[str, int] = field(default_factory=dict)
    total_micros: dict[str, int] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    # The compiled engine's copy of this view (auction/twin.py), told every change.
    mirror: Any = field(default=None, repr=False, compare=False)

    def roll_to(self, day: str) -> None:
        """A new UTC day: daily spend starts again (totals stay)."""
        if day != self.day:
            self.day = day
            self.today_micros.clear()
            self.blocked.clear()
            if self.mirror is not None:
                self.mirror.spend_clear()

    def record(self, campaign: Campaign, today_micros: int, total_micros: int) -> None:
        campaign_id = campaign.campaign_id
        self.today_micros[campaign_id] = today_micros
        self.total_micros[campaign_id] = total_micros
        # Blocked once less than one win's worth is left; the Redis script stays the authority.
        remaining = min(campaign.daily_budget_micros - today_micros, campaign.total_budget_micros - total_micros)
        blocked = remaining < max(1, campaign.min_charge_micros)
        if blocked:
            self.blocked.add(campaign_id)
        else:
            self.blocked.discard(campaign_id)
        if self.mirror is not None:
            self.mirror.spend_set(campaign_id, today_micros, blocked)

    def mark_exhausted(self, campaign_id: str) -> None:
        """Redis refused a reservation for budget: keep the campaign out until spend changes."""
        self.blocked.add(campaign_id)
        if self.mirror is not None:
            self.mirror.spend_block(campaign_id)

    def has_budget(self, campaign: Campaign) -> bool:
        return campaign.campaign_id not in self.blocked
