"""From an auction result to the records the worker publishes (docs/contract.md §3).

The encoded records themselves are the *outcome* kept in Redis with the budget reservation: a
batch replayed after a crash gets those bytes back and publishes them as they are, so a replay
is identical to the first attempt down to the byte, whatever changed in between.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import orjson

from auction.model import AuctionResult
from schemas.checks import Record

LABEL = "Sponsored"
# Records in one outcome are joined by a newline: orjson never writes a raw one.
SEPARATOR = b"\n"


def pick_creative(creatives: list[Record], event_id: str, campaign_id: str) -> Record:
    """Deterministic rotation over a campaign's creatives."""
    if len(creatives) == 1:
        return creatives[0]  # what the hash would pick, without hashing
    return creatives[zlib.crc32(f"{event_id}\x1f{campaign_id}".encode()) % len(creatives)]


def build_records(
    intent: Record,
    result: AuctionResult,
    ts_decided: int,
    creatives_of: Mapping[str, list[Record]],
    personalized: bool,
    intent_keywords: list[str] | None = None,
) -> tuple[Record, list[Record]]:
    """The decision for the chat service and one impression per won slot. `intent_keywords`: the
    intent's keywords as the engine matched them (normalised), carried on each impression with
    the campaign keywords that matched, for keyword-level learning and reports (§7)."""
    event_id = intent["event_id"]
    user_id, session_id, placement = intent["user_id"], intent["session_id"], intent["placement"]
    category = intent["intent"]["category"]
    ads: list[Record] = []
    impressions: list[Record] = []
    for winner in result.winners:
        campaign = winner.campaign
        campaign_id = campaign.campaign_id
        creative = pick_creative(creatives_of[campaign_id], event_id, campaign_id)
        impression_id = f"{event_id}:{winner.slot}"
        ads.append(
            {
                "slot": winner.slot,
                "impression_id": impression_id,
                "campaign_id": campaign_id,
                "advertiser_id": campaign.advertiser_id,
                "creative": creative,
                "label": LABEL,
                "why": {
                    "matched_keywords": list(winner.matched_keywords),
                    "category": winner.matched_category,
                    "personalized": personalized,
                },
            }
        )
        impressions.append(
            {
                "schema_version": 1,
                "impression_id": impression_id,
                "event_id": event_id,
                "ts": ts_decided,
                "user_id": user_id,
                "session_id": session_id,
                "placement": placement,
                "slot": winner.slot,
                "campaign_id": campaign_id,
                "advertiser_id": campaign.advertiser_id,
                "creative_id": creative["creative_id"],
                "bid_type": campaign.bid_type,
                "bid_micros": campaign.bid_micros,
                "price_micros": winner.price_micros,
                "charge_micros": winner.charge_micros,
                "ecpm_micros": winner.ecpm_micros,
                "runner_up_ecpm_micros": winner.runner_up_ecpm_micros,
                "reserve_cpm_micros": result.reserve_cpm_micros,
                "pctr": campaign.pctr_num / campaign.pctr_den,  # reporting only, never money
                "category": category,
                "matched_keywords": list(winner.matched_keywords),
                "intent_keywords": intent_keywords if intent_keywords is not None else [],
            }
        )
    decision = {
        "schema_version": 1,
        "event_id": event_id,
        "session_id": session_id,
        "user_id": user_id,
        "placement": placement,
        "ts_event": intent["ts"],
        "ts_decided": ts_decided,
        "ads": ads,
        "no_fill_reason": None if ads else result.no_fill_reason,
    }
    return decision, impressions


def encode_outcome(decision: Record, impressions: list[Record]) -> list[bytes]:
    """The decision's bytes first, then each impression's: what is published and kept."""
    return [orjson.dumps(decision), *map(orjson.dumps, impressions)]


def split_outcome(outcome: bytes) -> list[bytes]:
    return outcome.split(SEPARATOR)
