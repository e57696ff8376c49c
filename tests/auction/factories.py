"""Small builders for engine tests: campaign records as `vickrey campaigns apply` takes them."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from auction.engine import AuctionEngine, Policy, UserState
from auction.index import CampaignIndex
from auction.model import AuctionRequest, AuctionResult, Campaign, NoFillReason
from auction.pacing import SpendView
from auction.twin import EngineTwin, engine_twin
from core.keys import parse_cap
from core.settings import Settings
from tests.conftest import ROOT

NOW_MS = 1_790_000_000_000  # a fixed clock: 2026-09-21 UTC


def load_vectors() -> list[dict[str, Any]]:
    return list(json.loads((ROOT / "tests" / "data" / "auction_vectors.json").read_text())["cases"])


def campaign_record(
    campaign_id: str,
    advertiser_id: str | None = None,
    bid_type: str = "cpm",
    amount_micros: int = 1_000_000,
    pctr: float = 0.01,
    keywords: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "campaign_id": campaign_id,
        "advertiser_id": advertiser_id or f"adv-{campaign_id}",
        "status": "active",
        "bid": {"type": bid_type, "amount_micros": amount_micros},
        "pctr": pctr,
        "budget": {"daily_micros": 10**12, "total_micros": 10**12},
        "pacing": "asap",
        "targeting": {"keywords": keywords if keywords is not None else ["laptop"]},
        "creatives": [
            {
                "creative_id": f"{campaign_id}-1",
                "title": "An offer",
                "body": "Worth a look.",
                "url": f"https://example.com/{campaign_id}",
                "cta": "Open",
            }
        ],
    }
    record.update(extra)
    return record


def campaign(campaign_id: str, **kwargs: Any) -> Campaign:
    return Campaign.from_record(campaign_record(campaign_id, **kwargs))


def intent(event_id: str = "e-1", keywords: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema_version": 1,
        "event_id": event_id,
        "ts": NOW_MS,
        "user_id": "u-1",
        "session_id": "s-1",
        "placement": "chat_inline",
        "slots": 1,
        "intent": {"category": "IAB19-6", "keywords": keywords or ["laptop"], "confidence": 0.9},
        "locale": "en-US",
        "country": "US",
        "device": "desktop",
        "safety": {"labels": []},
        "consent": {"ads": True, "personalization": True},
        "age_bracket": "18_plus",
    }
    record.update(extra)
    return record


def request(event_id: str = "e-1", **extra: Any) -> AuctionRequest:
    return AuctionRequest.from_intent(intent(event_id, **extra), NOW_MS)


class StrictTwin:
    """The compiled twin, required to decide: a test of the compiled engine cannot pass by
    leaving its auctions to the Python engine."""

    def __init__(self, twin: EngineTwin) -> None:
        self.twin = twin

    def attach(self, index: CampaignIndex, spend: SpendView) -> None:
        self.twin.attach(index, spend)

    def set_policy(self, policy: Policy) -> None:
        self.twin.set_policy(policy)

    def set_increment(self, increment_micros: int) -> None:
        self.twin.set_increment(increment_micros)

    def run(self, request: AuctionRequest, user: UserState | None,
            refused: Mapping[str, NoFillReason] | None) -> AuctionResult | None:
        result = self.twin.run(request, user, refused)
        assert result is not None, f"the compiled engine left {request.event_id!r} to the Python engine"
        return result


# Which engine `make_engine` builds: "python", or "compiled" (the Python engine with its compiled
# twin deciding every auction). tests/auction/conftest.py's `both_engines` runs a test with each.
ENGINE_KIND = "python"


def make_engine(index: CampaignIndex, spend: SpendView | None = None, increment_micros: int = 10_000) -> AuctionEngine:
    twin = None
    if ENGINE_KIND == "compiled":
        found = engine_twin(increment_micros)
        assert found is not None, "the compiled engine is not built (make native)"
        twin = StrictTwin(found)
    return AuctionEngine(index, spend, increment_micros=increment_micros, twin=twin)


def engine_for(campaigns: list[Campaign], increment_micros: int = 10_000) -> AuctionEngine:
    return make_engine(CampaignIndex.build(campaigns), increment_micros=increment_micros)


def vector_campaigns(case: dict[str, Any], keyword: str = "laptop") -> list[Campaign]:
    return [
        campaign(
            c["campaign_id"],
            advertiser_id=c["advertiser_id"],
            bid_type=c["bid"]["type"],
            amount_micros=c["bid"]["amount_micros"],
            pctr=c.get("pctr", 0.01),
            keywords=[keyword],
        )
        for c in case["candidates"]
    ]


def cap_count(client: redis.Redis, settings: Settings, user_id: str, campaign_id: str) -> int:
    """Impressions counted in the person's open cap window of the campaign, as Redis holds them
    (0: none open)."""
    value = client.hget(settings.keys.caps(user_id), campaign_id)
    if value is None:
        return 0
    count, ends_ms = parse_cap(value)
    return count if ends_ms > time.time() * 1000 else 0


def _kept_event_key(client: redis.Redis, settings: Settings, event_id: str) -> tuple[str, bool]:
    """Where Redis keeps a decided event: (its period's hash, True) on one Redis, else (its own
    key, False: a Redis Cluster, and the older layout)."""
    for key in client.scan_iter(match=settings.keys.seen("*"), count=1000):
        if client.hexists(key, event_id):
            return key.decode(), True
    return settings.keys.outcome(event_id), False


def kept_event(client: redis.Redis, settings: Settings, event_id: str) -> bytes | None:
    """What Redis keeps for a decided event (where it came from, where its outcome is): a field of
    a period's hash (one Redis), or its own key (a Redis Cluster, and the older layout)."""
    key, in_hash = _kept_event_key(client, settings, event_id)
    value = client.hget(key, event_id) if in_hash else client.get(key)
    return None if value is None else bytes(value)


def kept_event_ttl(client: redis.Redis, settings: Settings, event_id: str) -> int:
    """The TTL (s) of what keeps a decided event: its period's hash, or its own key."""
    return int(client.ttl(_kept_event_key(client, settings, event_id)[0]))
