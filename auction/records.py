"""From an auction result to the records the worker publishes (DESIGN.md §3).

A result is first frozen into a compact *outcome* (the bytes kept in Redis with the budget
reservation); decisions and impressions are always rebuilt from an outcome. So a batch replayed
after a crash, which gets the kept outcome back from Redis, publishes the very same records.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from auction.model import AuctionResult

LABEL = "Sponsored"
Record = dict[str, Any]


def pick_creative(creatives: list[Record], event_id: str, campaign_id: str) -> Record:
    """Deterministic rotation over a campaign's creatives (a replay picks the same one)."""
    return creatives[zlib.crc32(f"{event_id}\x1f{campaign_id}".encode()) % len(creatives)]


def freeze_outcome(
    result: AuctionResult, ts_decided: int, creatives_of: Mapping[str, list[Record]], personalized: bool
) -> Record:
    """The outcome kept with the reservation (as JSON): everything the published records depend
    on, so a replay that gets it back from Redis publishes the same records."""
    winners = []
    for winner in result.winners:
        campaign = winner.campaign
        creative = pick_creative(creatives_of[campaign.campaign_id], result.event_id, campaign.campaign_id)
        winners.append(
            {
                "slot": winner.slot,
                "campaign_id": campaign.campaign_id,
                "advertiser_id": campaign.advertiser_id,
                "creative": creative,
                "bid_type": campaign.bid_type,
                "bid_micros": campaign.bid_micros,
                "price_micros": winner.price_micros,
                "charge_micros": winner.charge_micros,
                "ecpm_micros": winner.ecpm_micros,
                "runner_up_ecpm_micros": winner.runner_up_ecpm_micros,
                "pctr": campaign.pctr_num / campaign.pctr_den,  # reporting only, never money
                "why": {
                    "matched_keywords": list(winner.matched_keywords),
                    "category": winner.matched_category,
                    "personalized": personalized,
                },
            }
        )
    return {
        "ts_decided": ts_decided,
        "no_fill_reason": result.no_fill_reason,
        "reserve_cpm_micros": result.reserve_cpm_micros,
        "winners": winners,
    }


def build_records(intent: Record, outcome: Record) -> tuple[Record, list[Record]]:
    """The decision for the chat service and one impression per won slot."""
    event_id = intent["event_id"]
    ts_decided = outcome["ts_decided"]
    category = (intent.get("intent") or {}).get("category")
    ads: list[Record] = []
    impressions: list[Record] = []
    for won in outcome["winners"]:
        impression_id = f"{event_id}:{won['slot']}"
        creative = won["creative"]
        ads.append(
            {
                "slot": won["slot"],
                "impression_id": impression_id,
                "campaign_id": won["campaign_id"],
                "advertiser_id": won["advertiser_id"],
                "creative": creative,
                "label": LABEL,
                "why": won["why"],
            }
        )
        impressions.append(
            {
                "schema_version": 1,
                "impression_id": impression_id,
                "event_id": event_id,
                "ts": ts_decided,
                "user_id": intent["user_id"],
                "session_id": intent["session_id"],
                "placement": intent["placement"],
                "slot": won["slot"],
                "campaign_id": won["campaign_id"],
                "advertiser_id": won["advertiser_id"],
                "creative_id": creative["creative_id"],
                "bid_type": won["bid_type"],
                "bid_micros": won["bid_micros"],
                "price_micros": won["price_micros"],
                "charge_micros": won["charge_micros"],
                "ecpm_micros": won["ecpm_micros"],
                "runner_up_ecpm_micros": won["runner_up_ecpm_micros"],
                "reserve_cpm_micros": outcome["reserve_cpm_micros"],
                "pctr": won["pctr"],
                "category": category,
            }
        )
    decision = {
        "schema_version": 1,
        "event_id": event_id,
        "session_id": intent["session_id"],
        "user_id": intent["user_id"],
        "placement": intent["placement"],
        "ts_event": intent["ts"],
        "ts_decided": ts_decided,
        "ads": ads,
        "no_fill_reason": None if ads else outcome["no_fill_reason"],
    }
    return decision, impressions
