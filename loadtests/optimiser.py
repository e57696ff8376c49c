"""How good the autopilot's bidding is: the same scenario with the autopilot campaign replaced by
manual CPC campaigns on a grid of fixed bids (each with pacing asap and even), against the best of
them in hindsight that stays within budget. The autopilot must not know the grid or the market:
it runs first, on the scenario as it is.

`python -m loadtests.optimiser SCENARIO.json [--campaign ID]` prints the comparison as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from autopilot.scenario import read_scenario
from autopilot.simulate import Market

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
GRID_POINTS = 16
GRID_LOW_MICROS = 20_000  # 2 cents a click
GRID_HIGH_MICROS = 3_000_000  # 3.00 a click


def grid(points: int = GRID_POINTS, low: int = GRID_LOW_MICROS, high: int = GRID_HIGH_MICROS) -> list[int]:
    """Fixed CPC bids, geometric from `low` to `high`."""
    ratio = (high / low) ** (1 / (points - 1))
    return [round(low * ratio**i) for i in range(points)]


def autopilot_ids(scenario: dict[str, Any]) -> list[str]:
    return [c["campaign_id"] for c in scenario["campaigns"]
            if (c.get("goal") or {}).get("type", "manual") in ("max_clicks", "target_cpc")]


def fixed(scenario: dict[str, Any], campaign_id: str, bid_micros: int, pacing: str) -> dict[str, Any]:
    """The scenario with the autopilot campaign made manual: the same campaign (text, targeting,
    budget), a fixed CPC bid and the given pacing."""
    changed = copy.deepcopy(scenario)
    for campaign in changed["campaigns"]:
        if campaign["campaign_id"] == campaign_id:
            campaign["goal"] = {"type": "manual"}
            campaign["bid"] = {"type": "cpc", "amount_micros": bid_micros}
            campaign["pacing"] = pacing
    return changed


def compare(scenario: dict[str, Any], campaign_id: str, bids: list[int] | None = None) -> dict[str, Any]:
    """The autopilot's clicks and spend against every fixed bid's, and the ratio to the best."""
    started = time.perf_counter()
    market = Market(read_scenario(scenario))
    mine = market.run()["campaigns"][campaign_id]
    mine_expected = market.tallies[campaign_id].expected_clicks
    seconds = time.perf_counter() - started
    intents = sum(read_scenario(scenario).intents_per_hour)
    runs = []
    for bid in bids or grid():
        for pacing in ("asap", "even"):
            other = Market(read_scenario(fixed(scenario, campaign_id, bid, pacing)), frozenset({campaign_id}))
            result = other.run()["campaigns"][campaign_id]
            runs.append({"bid_micros": bid, "pacing": pacing, "clicks": result["clicks"],
                         "expected_clicks": round(other.tallies[campaign_id].expected_clicks, 1),
                         "spend_micros": result["spend_micros"]})
    budget = mine["budget_micros"]
    within = [run for run in runs if run["spend_micros"] <= budget]
    # Judged on expected clicks (the sum of each impression's click probability): the same market
    # without the dice of who clicked, which would otherwise favour whichever of the runs (GRID_POINTS bids × 2 pacings) was lucky.
    best = max(within, key=lambda run: (run["expected_clicks"], -run["spend_micros"]))
    return {
        "campaign_id": campaign_id,
        "autopilot": {k: mine[k] for k in ("clicks", "spend_micros", "budget_micros", "avg_cpc_micros",
                                           "spend_by_hour")},
        "best_fixed": best,
        "expected_clicks": round(mine_expected, 1),
        "clicks_vs_best_fixed": round(mine_expected / best["expected_clicks"], 3) if best["expected_clicks"] else math.inf,
        "budget_used": round(mine["spend_micros"] / budget, 3),
        "simulate_intents_per_s": round(intents / seconds),
        "grid": runs,
    }


KEYWORDS = {
    "power bank": "IAB19-6", "portable charger": "IAB19-6", "usb-c cable": "IAB19-6", "laptop stand": "IAB19-18",
    "mechanical keyboard": "IAB19-18", "wireless mouse": "IAB19-18", "coffee beans": "IAB8-6", "espresso machine": "IAB8-6",
    "running shoes": "IAB17", "yoga mat": "IAB17", "hotel paris": "IAB20-18", "cheap flights": "IAB20",
}
BRIEFS = {
    "IAB19": ("Chargers and cables for every device", "Fast power banks, portable chargers and usb-c cables."),
    "IAB8": ("Coffee for the morning", "Fresh coffee beans and espresso machines delivered."),
    "IAB17": ("Gear for runners", "Running shoes and yoga mats for your training."),
}


def random_market(seed: int, goal: str = "max_clicks") -> dict[str, Any]:
    """A market the autopilot was not tuned on: random traffic curve, rivals, budgets and click rates."""
    rng = random.Random(seed)
    family = rng.choice(sorted(BRIEFS))
    title, body = BRIEFS[family]
    peak = rng.randint(800, 2500)
    curve = [max(50, round(peak * (0.25 + 0.75 * math.sin(math.pi * max(0, h - 5) / 19) ** 2))) for h in range(24)]
    keywords = {k: {"weight": rng.randint(1, 6), "category": c} for k, c in KEYWORDS.items()}
    mine = [k for k, c in KEYWORDS.items() if c.startswith(family)]
    campaigns: list[dict[str, Any]] = [{
        "campaign_id": "auto", "advertiser_id": "adv-auto", "vertical": "retail", "targeting": {"auto": True},
        "goal": {"type": goal, **({"target_micros": rng.randint(150_000, 600_000)} if goal == "target_cpc" else {})},
        "budget": {"daily_micros": rng.randint(10, 60) * 1_000_000, "total_micros": 10**9},
        "brief": body, "creatives": [{"creative_id": "a", "title": title, "body": body, "url": "https://a.example", "cta": "Shop"}],
    }]
    for i in range(rng.randint(3, 8)):
        cpc = rng.random() < 0.7
        targeting = ({"keywords": rng.sample(mine, rng.randint(1, len(mine)))} if rng.random() < 0.7
                     else {"categories": [family]})
        campaigns.append({
            "campaign_id": f"r{i}", "advertiser_id": f"adv-r{i}", "pctr": round(rng.uniform(0.01, 0.04), 3),
            "bid": {"type": "cpc", "amount_micros": rng.randint(80_000, 900_000)} if cpc
            else {"type": "cpm", "amount_micros": rng.randint(1_000_000, 9_000_000)},
            "budget": {"daily_micros": rng.randint(10, 80) * 1_000_000, "total_micros": 10**9},
            "pacing": rng.choice(["asap", "even"]), "targeting": targeting,
            "creatives": [{"creative_id": f"r{i}", "title": "Rival", "body": "Rival.", "url": "https://r.example",
                           "cta": "Shop"}],
        })
    true_ctr = {"auto": {**{k: round(rng.uniform(0.005, 0.08), 3) for k in mine}, "*": 0.005}}
    true_ctr.update({c["campaign_id"]: {"*": round(rng.uniform(0.005, 0.04), 3)} for c in campaigns[1:]})
    return {"seed": seed, "hours": 24, "intents_per_hour": curve, "keywords": keywords, "keywords_per_intent": [1, 2],
            "campaigns": campaigns, "true_ctr": true_ctr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.optimiser", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", type=Path, help="a scenario JSON file (see loadtests/scenarios/)")
    parser.add_argument("--campaign", help="the autopilot campaign to compare (default: every one)")
    parser.add_argument("--grid", action="store_true", help="print every fixed bid's result too")
    args = parser.parse_args(argv)
    scenario = json.loads(args.scenario.read_text())
    campaign_ids = [args.campaign] if args.campaign else autopilot_ids(scenario)
    if not campaign_ids:
        print(f"{args.scenario}: no autopilot campaign with a max_clicks or target_cpc goal to compare with fixed "
              "bids (a target_cpa campaign is judged by its cost per conversion: `make bench`, "
              "autopilot_cpa_vs_target)", file=sys.stderr)
        return 2
    for campaign_id in campaign_ids:
        found = compare(scenario, campaign_id)
        if not args.grid:
            found.pop("grid")
        print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
