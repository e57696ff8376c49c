"""The engine's compiled twin: the auction engine in Rust (fastpath/src/engine.rs), run beside the
Python engine (`AuctionEngine(..., twin=engine_twin(...))`).

It holds its own copy of the campaign index, the spend view and the policy. The Python objects
tell it every change (`CampaignIndex.mirror`, `SpendView.mirror`, the engine's `index` and `policy`
setters), so the copy is always theirs. It decides an auction the way `AuctionEngine.run_python`
does, and answers None where it cannot (a number past 128 bits, a campaign it could not copy):
the Python engine then decides. tests/auction run the engine's tests through both engines and hold
them equal on generated campaigns and requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from auction.creatives import Creatives, encoded
from auction.engine import MINOR_BRACKETS, STAGES, UNSAFE_CATEGORIES, Policy, UserState
from auction.fastpath import Fields, Parsed, _native
from auction.index import CampaignIndex
from auction.model import AuctionRequest, AuctionResult, NoFillReason, Winner
from auction.pacing import SpendView
from auction.records import LABEL
from core.keys import EVENT_BUCKETS
from core.loop import Output
from schemas.iab import IAB_CATEGORIES, lineage

# `EngineTwin.claim`: the records to publish as (topic, key, value), how many are impressions, the
# decision's no-fill reason, the compact outcome and the claim's entry in the reservation call
# (`entry_of`; it lists the Redis reservations).
Claimed = tuple[list[Output], int, str | None, bytes, bytes]


class EngineTwin:
    def __init__(self, native: Any) -> None:
        self.native = native
        self._index = CampaignIndex()
        self._spend = SpendView()
        # Auctions decided here, and left to the Python engine (the worker's metric reads both);
        # of those decided, the ones `claim` also wrote.
        self.decided = 0
        self.left = 0
        self.claimed = 0

    def attach(self, index: CampaignIndex, spend: SpendView) -> None:
        """Copy this index and spend view, and be told their changes from now on. An index or
        spend view tells one twin: another engine's twin may not take it over (it would stop
        hearing of changes and answer from a stale copy)."""
        native = self.native
        for told in (index, spend):
            if told.mirror is not None and told.mirror is not native:
                raise ValueError(f"{type(told).__name__}: it already keeps another compiled engine in step")
        if self._index is not index and self._index.mirror is native:
            self._index.mirror = None
        if self._spend is not spend and self._spend.mirror is native:
            self._spend.mirror = None
        self._index, self._spend = index, spend
        index.mirror = native
        native.build(list(index.campaigns.values()))
        spend.mirror = native
        native.spend_clear()
        for campaign_id, today_micros in spend.today_micros.items():
            native.spend_set(campaign_id, today_micros, campaign_id in spend.blocked)
        for campaign_id in spend.blocked - spend.today_micros.keys():  # refused for budget, no spend seen
            native.spend_block(campaign_id)

    def attach_creatives(self, creatives: Creatives) -> None:
        """Copy these creatives, and be told their changes from now on (`claim` writes the
        records of a campaign it holds no creatives for no more: it answers None)."""
        if creatives.mirror is not None and creatives.mirror is not self.native:
            raise ValueError("Creatives: they already keep another compiled engine in step")
        creatives.mirror = self.native
        self.native.creatives_clear()
        for campaign_id, listed in creatives.items():
            self.native.creatives_set(campaign_id, encoded(listed))

    def set_policy(self, policy: Policy) -> None:
        self.native.set_policy(set(policy.blocked_safety_labels), set(policy.sensitive_categories),
                               set(policy.restricted_verticals))

    def set_topics(self, decisions: str, impressions: str) -> None:
        """Where `claim`'s records go (until set, `claim` answers None)."""
        self.native.set_topics(decisions, impressions)

    def set_increment(self, increment_micros: int) -> None:
        self.native.set_increment(increment_micros)

    def held(self) -> tuple[int, int]:
        """(campaigns the copy holds, campaigns it could not copy: while any, Python decides)."""
        held: tuple[int, int] = self.native.sizes()
        return held

    def claim(self, request: AuctionRequest, user: UserState | None, refused: Mapping[str, NoFillReason] | None,
              fields: Fields, source: str, ts_decided: int) -> Claimed | None:
        """`run`, then its records and reservations, in one compiled step: what the worker's
        `outcome_of` (with the creatives attached: `attach_creatives`), `Writer.write`,
        `reservations_of` and `entry_of` make of the result (personalized false), equal to the
        byte (tests/auction/test_claim.py). None: the worker takes those steps."""
        return self._counted(self.native.claim(fields, source, request.user_id, ts_decided,
                                               *_asked(request, user, refused)))

    def claim_parsed(self, parsed: Parsed, user: UserState | None, refused: Mapping[str, NoFillReason] | None,
                     source: str, ts_decided: int) -> Claimed | None:
        """`claim` of an intent the compiled intake kept: what `claim` gives for
        `parsed.expand()`'s request and fields, with no Python object made of them."""
        return self._counted(self.native.claim_parsed(parsed, source, ts_decided, *_person(user, refused)))

    def _counted(self, claimed: Claimed | None) -> Claimed | None:
        """A claim's answer, counted as decided and claimed when the compiled step took it."""
        if claimed is not None:
            self.decided += 1
            self.claimed += 1
        return claimed

    def run(self, request: AuctionRequest, user: UserState | None,
            refused: Mapping[str, NoFillReason] | None) -> AuctionResult | None:
        answer = self.native.run(*_asked(request, user, refused))
        if answer is None:
            self.left += 1
            return None
        self.decided += 1
        reason, found = answer
        if found is None:
            return AuctionResult(request.event_id, (), reason, request.reserve_cpm_micros)
        campaigns = self._index.campaigns
        winners = tuple(
            Winner(slot, campaigns[campaign_id], price, charge, ecpm, runner_up, matched, category)
            for slot, campaign_id, price, charge, ecpm, runner_up, matched, category in found
        )
        return AuctionResult(request.event_id, winners, None, request.reserve_cpm_micros)


def _asked(request: AuctionRequest, user: UserState | None,
           refused: Mapping[str, NoFillReason] | None) -> tuple[Any, ...]:
    """One auction's arguments as the compiled engine's `run` and `claim` take them."""
    return (request.event_id, request.placement, request.slots, request.reserve_cpm_micros, request.category,
            request.keywords, request.locale, request.country, request.device, request.safety_labels,
            request.consent_ads, request.age_bracket, request.now_ms, *_person(user, refused))


def _person(user: UserState | None, refused: Mapping[str, NoFillReason] | None) -> tuple[Any, Any, Any]:
    """The person's hidden advertisers and capped campaigns, and the auction's refusals, as the
    compiled engine takes them (None for none)."""
    if user is None:
        return None, None, dict(refused) if refused else None
    return user.hidden_advertisers, user.capped_campaigns, dict(refused) if refused else None


def engine_twin(increment_micros: int) -> EngineTwin | None:
    """A compiled twin for an engine with this price increment, or None when fastpath/ is not built."""
    native = _native()
    if native is None or not hasattr(native, "Engine"):
        return None
    table = {code: list(lineage(code)) for code in IAB_CATEGORIES}
    return EngineTwin(native.Engine(set(UNSAFE_CATEGORIES), set(MINOR_BRACKETS), table, increment_micros, list(STAGES),
                                    LABEL, EVENT_BUCKETS))
