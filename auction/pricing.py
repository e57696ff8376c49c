"""Generalised second-price allocation and pricing (docs/contract.md §4, steps 5 and 6), exactly.

Every quantity is an int or a Fraction: floats are one micro off on some inputs (see the
`exact-arithmetic` vector), and one micro off is a billing dispute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from auction.model import Campaign, tie_hash


@dataclass(slots=True, init=False)  # __init__ written out: mypyc compiles it (dataclass's runs interpreted)
class SlotPrice:
    slot: int
    campaign: Campaign
    price_micros: int
    charge_micros: int
    runner_up: Campaign | None

    def __init__(self, slot: int, campaign: Campaign, price_micros: int, charge_micros: int,
                 runner_up: Campaign | None) -> None:
        self.slot = slot
        self.campaign = campaign
        self.price_micros = price_micros
        self.charge_micros = charge_micros
        self.runner_up = runner_up


def ceil_div(numerator: int, denominator: int) -> int:
    return -((-numerator) // denominator)


def cpm_charge_micros(price_cpm_micros: int) -> int:
    """round_half_up(price / 1000): what one CPM impression costs."""
    return (price_cpm_micros + 500) // 1000


def _rank_key(campaign: Campaign) -> int:
    return -campaign.rank_key


# An auction ranks the few campaigns its pruned walk accepted (a handful): an insertion sort in
# compiled code costs less there than `sorted` with a key function.
_INSERTION_MAX = 16


def _by_key(candidates: Sequence[Campaign]) -> list[Campaign]:
    """`sorted(candidates, key=_rank_key)`, by insertion: descending keys, equal ones in input order."""
    ranked: list[Campaign] = []
    for campaign in candidates:
        key = campaign.rank_key
        position = len(ranked)
        ranked.append(campaign)
        while position > 0 and ranked[position - 1].rank_key < key:
            ranked[position] = ranked[position - 1]
            position -= 1
        ranked[position] = campaign
    return ranked


def rank(candidates: Sequence[Campaign], event_id: str) -> list[Campaign]:
    """Descending eCPM; exact ties broken by a stable hash of (event_id, campaign_id)."""
    # rank_key orders by eCPM with integer compares; only runs of equal keys (rare) pay for the
    # exact Fraction compare and the tie hash.
    ranked = _by_key(candidates) if len(candidates) <= _INSERTION_MAX else sorted(candidates, key=_rank_key)
    start = 0
    while start < len(ranked):
        end = start + 1
        while end < len(ranked) and ranked[end].rank_key == ranked[start].rank_key:
            end += 1
        if end - start > 1:
            ranked[start:end] = sorted(
                ranked[start:end], key=lambda c: (-c.ecpm, tie_hash(event_id, c.campaign_id))
            )
        start = end
    return ranked


def best_per_advertiser(ranked: Sequence[Campaign]) -> list[Campaign]:
    """Keep each advertiser's best campaign only, so nobody is priced against itself."""
    seen: set[str] = set()
    kept: list[Campaign] = []
    for campaign in ranked:
        if campaign.advertiser_id not in seen:
            seen.add(campaign.advertiser_id)
            kept.append(campaign)
    return kept


def price_slots(
    ranked: Sequence[Campaign], slots: int, reserve_cpm_micros: int, increment_micros: int
) -> list[SlotPrice]:
    """Allocate the top `slots` of `ranked` (already ranked, one per advertiser, all at or
    above the reserve) and price each against the next-ranked candidate or the reserve.

    All integer arithmetic: a threshold eCPM is the ratio threshold_num / threshold_den."""
    prices: list[SlotPrice] = []
    for index, winner in enumerate(ranked[:slots]):
        runner_up = ranked[index + 1] if index + 1 < len(ranked) else None
        # The next bid sets the threshold only when strictly above the reserve; at a tie the
        # reserve is binding and no increment applies.
        if runner_up is not None and runner_up.ecpm_num > reserve_cpm_micros * runner_up.ecpm_den:
            threshold_num, threshold_den, increment = runner_up.ecpm_num, runner_up.ecpm_den, increment_micros
        else:
            threshold_num, threshold_den, increment = reserve_cpm_micros, 1, 0
        if winner.bid_type == "cpm":
            price = ceil_div(threshold_num, threshold_den)
        else:  # per click: threshold / (pCTR * 1000)
            price = ceil_div(threshold_num * winner.pctr_den, threshold_den * winner.pctr_num * 1000)
        price = min(price + increment, winner.bid_micros)
        charge = cpm_charge_micros(price) if winner.bid_type == "cpm" else 0
        prices.append(SlotPrice(index + 1, winner, price, charge, runner_up))
    return prices
