"""Even pacing over a simulated UTC day, with an injected clock."""

from __future__ import annotations

import pytest

from auction.index import CampaignIndex
from auction.model import AuctionRequest
from auction.pacing import DAY_MS, PACING_TOLERANCE_BP, SpendView
from tests.auction.factories import campaign, intent, make_engine

# Each test runs with the Python engine and with its compiled twin (tests/auction/conftest.py).
pytestmark = pytest.mark.usefixtures("both_engines")

MIDNIGHT = 1_795_737_600_000  # 2026-11-27 00:00 UTC


def simulate(pacing: str, events: int = 17_280) -> list[tuple[int, int]]:
    """One day of evenly spread events against one campaign; returns (ms into day, spend)."""
    daily = 2_000_000
    paced = campaign("p", amount_micros=5_000_000, pacing=pacing, budget={"daily_micros": daily, "total_micros": daily * 10})
    spend = SpendView(day="20261127")
    engine = make_engine(CampaignIndex.build([paced]), spend)
    spent = 0
    trace = []
    for i in range(events):
        now = MIDNIGHT + i * DAY_MS // events
        result = engine.run(AuctionRequest.from_intent(intent(f"e{i}", floor_cpm_micros=1_000_000), now))
        if result.winners:
            charge = result.winners[0].charge_micros  # the floor binds: 1,000 micros per win
            if spent + charge <= daily:  # what reserve.lua enforces
                spent += charge
            spend.record(paced, spent, spent)
        trace.append((now - MIDNIGHT, spent))
    return trace


def test_even_pacing_tracks_the_elapsed_share_of_the_day() -> None:
    daily = 2_000_000
    tolerance = daily * PACING_TOLERANCE_BP // 10_000
    trace = simulate("even")
    for elapsed, spent in trace[:: len(trace) // 48]:  # every half hour
        target = daily * elapsed // DAY_MS
        assert spent <= target + tolerance + 500, (elapsed, spent, target)
        assert spent >= target - tolerance - 500, (elapsed, spent, target)
    assert trace[-1][1] >= daily * 97 // 100, "even pacing should still deliver the day's budget"


def test_asap_spends_early() -> None:
    trace = simulate("asap")
    by_4am = [spent for elapsed, spent in trace if elapsed < 4 * 3_600_000]
    assert by_4am[-1] == 2_000_000  # every event wins until the day's budget is gone, by ~2:47
