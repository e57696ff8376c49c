"""From an auction result to the records the worker publishes (docs/contract.md §3).

An auction's records are built in two steps: `outcome_of` takes from the result everything the
records say that the consumed intent does not (the *compact outcome*: winners, slots, prices,
charges, the creative shown, ts_decided, the no-fill reason...), and `records_of` builds the
decision and the impressions from the intent and that outcome. The compact outcome (~0.5 KB per
event, a quarter of the encoded records) is what the worker keeps in Redis with the budget
reservation: a batch replayed after a failed commit or a crash gets it back and `records_of`
builds the same records again, down to the byte (tests/auction/test_records.py), whatever
changed in between: the creative itself, the campaign's bid and learned pCTR, and the time of
the first decision are in the outcome, never looked up again.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

from auction.model import AuctionResult
from schemas.checks import Record

LABEL = "Sponsored"
# Records kept whole (by versions before compact outcomes) are joined by a newline: orjson never
# writes a raw one.
SEPARATOR = b"\n"

# A compact outcome is a JSON array (records kept whole start with "{"):
#   [ts_decided, no_fill_reason, reserve_cpm_micros, personalized, [winner, ...]]
# and each winner, in slot order:
#   [slot, campaign_id, advertiser_id, creative, bid_type, bid_micros, price_micros, charge_micros,
#    ecpm_micros, runner_up_ecpm_micros, pctr, matched_keywords, matched_category]
# Every value survives orjson's round trip unchanged (ints, strings, null, a float printed in its
# shortest exact form, the creative's string fields in their order), so the records built from
# the decoded array are byte for byte those built from the first.
Outcome = list[Any]
TS_DECIDED: Final = 0
NO_FILL_REASON: Final = 1
RESERVE_CPM: Final = 2
PERSONALIZED: Final = 3
WINNERS: Final = 4


def pick_creative(creatives: list[Record], event_id: str, campaign_id: str) -> Record:
    """Deterministic rotation over a campaign's creatives."""
    if len(creatives) == 1:
        return creatives[0]  # what the hash would pick, without hashing
    return creatives[zlib.crc32(f"{event_id}\x1f{campaign_id}".encode()) % len(creatives)]


def outcome_of(event_id: str, result: AuctionResult, ts_decided: int, creatives_of: Mapping[str, list[Record]],
               personalized: bool) -> Outcome:
    """What the records of this result depend on beyond the intent: the compact outcome."""
    winners: list[list[Any]] = []
    for winner in result.winners:
        campaign = winner.campaign
        campaign_id = campaign.campaign_id
        winners.append([
            winner.slot, campaign_id, campaign.advertiser_id,
            pick_creative(creatives_of[campaign_id], event_id, campaign_id),
            campaign.bid_type, campaign.bid_micros, winner.price_micros, winner.charge_micros, winner.ecpm_micros,
            winner.runner_up_ecpm_micros,
            campaign.pctr_num / campaign.pctr_den,  # reporting only, never money
            winner.matched_keywords, winner.matched_category,
        ])
    return [ts_decided, result.no_fill_reason, result.reserve_cpm_micros, personalized, winners]


def records_of(intent: Record, outcome: Outcome, intent_keywords: list[str] | None = None) -> tuple[Record, list[Record]]:
    """The decision for the chat service and one impression per won slot. `intent_keywords`: the
    intent's keywords as the engine matched them (normalised), carried on each impression with
    the campaign keywords that matched, for keyword-level learning and reports (§7)."""
    event_id = intent["event_id"]
    user_id, session_id, placement = intent["user_id"], intent["session_id"], intent["placement"]
    category = intent["intent"]["category"]
    ts_decided = outcome[TS_DECIDED]
    personalized = outcome[PERSONALIZED]
    reserve_cpm_micros = outcome[RESERVE_CPM]
    keywords = intent_keywords if intent_keywords is not None else []
    ads: list[Record] = []
    impressions: list[Record] = []
    for winner in outcome[WINNERS]:
        slot, campaign_id, advertiser_id, creative = winner[0], winner[1], winner[2], winner[3]
        matched = list(winner[11])
        impression_id = f"{event_id}:{slot}"
        ads.append(
            {
                "slot": slot,
                "impression_id": impression_id,
                "campaign_id": campaign_id,
                "advertiser_id": advertiser_id,
                "creative": creative,
                "label": LABEL,
                "why": {
                    "matched_keywords": matched,
                    "category": winner[12],
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
                "slot": slot,
                "campaign_id": campaign_id,
                "advertiser_id": advertiser_id,
                "creative_id": creative["creative_id"],
                "bid_type": winner[4],
                "bid_micros": winner[5],
                "price_micros": winner[6],
                "charge_micros": winner[7],
                "ecpm_micros": winner[8],
                "runner_up_ecpm_micros": winner[9],
                "reserve_cpm_micros": reserve_cpm_micros,
                "pctr": winner[10],
                "category": category,
                "matched_keywords": matched,
                "intent_keywords": keywords,
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
        "no_fill_reason": None if ads else outcome[NO_FILL_REASON],
    }
    return decision, impressions


def build_records(
    intent: Record,
    result: AuctionResult,
    ts_decided: int,
    creatives_of: Mapping[str, list[Record]],
    personalized: bool,
    intent_keywords: list[str] | None = None,
) -> tuple[Record, list[Record]]:
    """`records_of` the result's outcome, in one step."""
    return records_of(intent, outcome_of(intent["event_id"], result, ts_decided, creatives_of, personalized),
                      intent_keywords)


def encode_outcome(decision: Record, impressions: list[Record]) -> list[bytes]:
    """The decision's bytes first, then each impression's: what is published."""
    return [orjson.dumps(decision), *map(orjson.dumps, impressions)]


def encode_compact(outcome: Outcome) -> bytes:
    """The compact outcome as Redis keeps it."""
    return orjson.dumps(outcome)


def is_compact(kept: bytes) -> bool:
    """A compact outcome, not records kept whole by an earlier version (`split_outcome`)."""
    return kept[:1] == b"["


def decode_compact(kept: bytes) -> Outcome:
    outcome = orjson.loads(kept)
    if not isinstance(outcome, list) or len(outcome) != WINNERS + 1:
        raise ValueError(f"not a compact outcome: {kept[:80]!r}")
    return outcome


def split_outcome(outcome: bytes) -> list[bytes]:
    """Records kept whole (versions before compact outcomes): the decision, then the impressions."""
    return outcome.split(SEPARATOR)
