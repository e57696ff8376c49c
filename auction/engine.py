"""The auction engine (docs/contract.md §4 and §4b): gates, eligibility, ranking, allocation, pricing.

Pure: no I/O. The worker hands it the request, the index, a spend view and what Redis already
refused; the engine answers with winners and prices, or the reason nobody won.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from auction.index import CampaignIndex
from auction.keywords import phrase_terms, sub_phrases
from auction.model import RANK_SCALE, AuctionRequest, AuctionResult, Campaign, NoFillReason, Winner
from auction.pacing import SpendView, pacing_allows
from auction.pricing import best_per_advertiser, ceil_div, price_slots, rank
from schemas.campaign import DEFAULT_POLICY
from schemas.iab import lineage

# The trust policy in force until someone applies another (schemas/campaign.py holds the defaults).
DEFAULT_BLOCKED_LABELS = frozenset(DEFAULT_POLICY["blocked_safety_labels"])
DEFAULT_SENSITIVE = frozenset(DEFAULT_POLICY["sensitive_categories"])
DEFAULT_RESTRICTED = frozenset(DEFAULT_POLICY["restricted_verticals"])
# IAB25 (non-standard content) and IAB26 (illegal content) never get an auction (§4.1).
UNSAFE_CATEGORIES = frozenset({"IAB25", "IAB26"})
MINOR_BRACKETS = frozenset({"under_13", "13_17"})

# Filter stages in the order a candidate meets them. A no-fill reports the furthest stage any
# targeted candidate reached: "the reason that removed the last candidates".
_PASS = -1
STAGES: tuple[NoFillReason, ...] = (  # the compiled engine (auction/twin.py) is handed these names
    "no_candidates",
    "brand_safety",
    "user_hidden",
    "frequency_cap",
    "budget",
    "pacing",
    "below_floor",
)
_TARGETING, _SAFETY, _HIDDEN, _CAP, _BUDGET, _PACING, _FLOOR = range(len(STAGES))
_STAGE_OF: dict[NoFillReason, int] = {reason: stage for stage, reason in enumerate(STAGES)}


@dataclass(frozen=True, slots=True)
class Policy:
    blocked_safety_labels: frozenset[str] = DEFAULT_BLOCKED_LABELS
    sensitive_categories: frozenset[str] = DEFAULT_SENSITIVE
    restricted_verticals: frozenset[str] = DEFAULT_RESTRICTED


@dataclass(slots=True)
class UserState:
    """What the worker knows of one person for this auction (from Redis and user controls)."""

    hidden_advertisers: frozenset[str] = frozenset()
    capped_campaigns: frozenset[str] = frozenset()


_NOBODY = UserState()  # read only: what the engine assumes of a person it knows nothing about
_NONE_REFUSED: Mapping[str, NoFillReason] = MappingProxyType({})


class Twin(Protocol):
    """A compiled engine run beside this one (auction/twin.py): told every change of the index,
    the spend view and the policy, it decides the auctions it can, exactly as `run_python` would."""

    def attach(self, index: CampaignIndex, spend: SpendView) -> None: ...

    def set_policy(self, policy: Policy) -> None: ...

    def set_increment(self, increment_micros: int) -> None: ...

    def run(self, request: AuctionRequest, user: UserState | None,
            refused: Mapping[str, NoFillReason] | None) -> AuctionResult | None: ...


class AuctionEngine:
    def __init__(
        self,
        index: CampaignIndex,
        spend: SpendView | None = None,
        policy: Policy | None = None,
        increment_micros: int = 10_000,
        twin: Twin | None = None,
    ) -> None:
        self.twin = twin
        self._index = index
        self._spend = spend if spend is not None else SpendView()
        self.policy = policy if policy is not None else Policy()
        self.increment_micros = increment_micros
        self._attach_twin()

    def _attach_twin(self) -> None:
        """The twin copies the index and spend view this engine reads now, and follows them."""
        if self.twin is not None:
            self.twin.attach(self._index, self._spend)

    @property
    def index(self) -> CampaignIndex:
        return self._index

    @index.setter
    def index(self, index: CampaignIndex) -> None:
        self._index = index
        self._attach_twin()

    @property
    def spend(self) -> SpendView:
        return self._spend

    @spend.setter
    def spend(self, spend: SpendView) -> None:
        self._spend = spend
        self._attach_twin()

    @property
    def increment_micros(self) -> int:
        return self._increment_micros

    @increment_micros.setter
    def increment_micros(self, increment_micros: int) -> None:
        self._increment_micros = increment_micros
        if self.twin is not None:
            self.twin.set_increment(increment_micros)

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._policy = policy
        # Campaigns of the default vertical skip the slow filter path unless the policy
        # restricts that vertical too.
        self._check_all = "general" in policy.restricted_verticals
        if self.twin is not None:
            self.twin.set_policy(policy)

    def gate(self, request: AuctionRequest) -> NoFillReason | None:
        """Rules checked before any auction (§4.1, §4b)."""
        return self._gate(request, lineage(request.category))

    def _gate(self, request: AuctionRequest, ancestors: tuple[str, ...]) -> NoFillReason | None:
        if not request.consent_ads:
            return "no_consent"
        if request.age_bracket in MINOR_BRACKETS:
            return "minor"
        if request.safety_labels and not self.policy.blocked_safety_labels.isdisjoint(request.safety_labels):
            return "brand_safety"
        if not UNSAFE_CATEGORIES.isdisjoint(ancestors):
            return "brand_safety"
        if not self.policy.sensitive_categories.isdisjoint(ancestors):
            return "sensitive_topic"
        return None

    def run(
        self,
        request: AuctionRequest,
        user: UserState | None = None,
        refused: Mapping[str, NoFillReason] | None = None,
    ) -> AuctionResult:
        """One auction. `refused` holds campaigns the budget/cap reservation turned down for this
        event, with the reason: they are out, and the slots go to the next candidates. Decided by
        the compiled twin when there is one and it can, else by `run_python`."""
        if self.twin is not None:
            result = self.twin.run(request, user, refused)
            if result is not None:
                return result
        return self.run_python(request, user, refused)

    def run_python(
        self,
        request: AuctionRequest,
        user: UserState | None = None,
        refused: Mapping[str, NoFillReason] | None = None,
    ) -> AuctionResult:
        """`run` in Python: the reference the compiled twin is held to."""
        ancestors = lineage(request.category)
        blocked = self._gate(request, ancestors)
        if blocked is not None:
            return AuctionResult(request.event_id, (), blocked, request.reserve_cpm_micros)
        if user is None:
            user = _NOBODY
        if refused is None:
            refused = _NONE_REFUSED
        need = request.slots + 1  # the slots and the runner-up that prices the last one
        accepted: dict[str, Campaign] = {}
        best: dict[str, int] = {}  # each advertiser accepted so far: its best campaign's key
        rejected: set[str] = set()
        furthest = _TARGETING
        floor_key = -1  # the need-th accepted advertiser's key, once there are `need`
        advertisers: set[str] = set()  # one list's advertisers so far: emptied for each list, made once
        for postings in self._lists_for(request, ancestors):
            if postings[0].rank_key < floor_key:
                break
            advertisers.clear()
            before = len(accepted)
            stage = self._scan(postings, request, ancestors, user, refused, accepted, best, rejected, advertisers,
                               need, floor_key)
            if stage > furthest:
                furthest = stage
            if len(accepted) > before and len(best) >= need:
                floor_key = _needed_key(best, need)

        ranked = best_per_advertiser(rank(list(accepted.values()), request.event_id))
        if not ranked:
            return AuctionResult(request.event_id, (), STAGES[furthest], request.reserve_cpm_micros)
        winners = []
        terms: frozenset[str] | None = None  # the request's phrase terms, once a winner has phrases
        for slot in price_slots(ranked, request.slots, request.reserve_cpm_micros, self.increment_micros):
            winner, runner_up = slot.campaign, slot.runner_up
            if winner.phrases and terms is None:
                terms = sub_phrases(request.keywords)
            winners.append(
                Winner(
                    slot.slot,
                    winner,
                    slot.price_micros,
                    slot.charge_micros,
                    ceil_div(winner.ecpm_num, winner.ecpm_den),
                    None if runner_up is None else ceil_div(runner_up.ecpm_num, runner_up.ecpm_den),
                    _matched_keywords(winner, request.keywords, terms),
                    self._matched_category(winner, ancestors),
                )
            )
        return AuctionResult(request.event_id, tuple(winners), None, request.reserve_cpm_micros)

    def _lists_for(self, request: AuctionRequest, ancestors: tuple[str, ...]) -> list[list[Campaign]]:
        """The non-empty posting lists the request reaches, best first: once `need` advertisers
        are in, a campaign ranked below the need-th of them can neither win nor price a slot,
        so walking the best lists first lets the later ones stop early (or be skipped)."""
        index = self.index
        walk: list[list[Campaign]] = []
        by_keyword = index.by_keyword
        for keyword in request.keywords:
            _add(walk, by_keyword.get(keyword))
        by_phrase = index.by_phrase
        if by_phrase:
            # Each term of `sub_phrases(request.keywords)`, without building that set. Two
            # keywords may share a term: its list is then walked twice, the second time over
            # campaigns already accepted or rejected, which changes nothing.
            for keyword in request.keywords:
                if " " in keyword:
                    for term in phrase_terms(keyword):
                        _add(walk, by_phrase.get(term))
                else:
                    _add(walk, by_phrase.get(keyword))
        by_category = index.by_category
        for code in ancestors:
            _add(walk, by_category.get(code))
        _add(walk, index.untargeted)
        return walk

    @staticmethod
    def _matched_category(campaign: Campaign, ancestors: tuple[str, ...]) -> str | None:
        if campaign.categories is None:
            return ancestors[0] if ancestors else None
        return next((code for code in ancestors if code in campaign.categories), None)

    def _scan(  # noqa: C901 - the per-candidate hot path: the checks stay inlined, cheapest first
        self,
        postings: list[Campaign],
        request: AuctionRequest,
        ancestors: tuple[str, ...],
        user: UserState,
        refused: Mapping[str, NoFillReason],
        accepted: dict[str, Campaign],
        best: dict[str, int],
        rejected: set[str],
        advertisers: set[str],
        need: int,
        floor_key: int,
    ) -> int:
        """Walk one list in eCPM order until `need` advertisers (and anyone tied with the last)
        are in, or the rest is below the reserve or below `floor_key` (the need-th advertiser
        of the lists already walked). Returns the furthest filter stage reached by a rejected
        campaign. This loop is the engine's hot path: checks are inlined and ordered cheapest
        first."""
        reserve_key = request.reserve_cpm_micros * RANK_SCALE
        hidden, capped, blocked = user.hidden_advertisers, user.capped_campaigns, self.spend.blocked
        check_all = self._check_all
        found = 0  # len(advertisers) (empty on entry), kept by hand: this loop runs millions of times a second
        last_key = -1
        furthest = _TARGETING
        for campaign in postings:
            key = campaign.rank_key
            if key < floor_key or (found >= need and key < last_key):
                break
            campaign_id = campaign.campaign_id
            if campaign_id not in accepted:
                if campaign_id in rejected:
                    continue
                if campaign.has_filters or check_all:
                    stage = self._filter_stage(campaign, request, ancestors)
                else:
                    stage = _PASS
                if stage == _PASS:
                    if hidden and campaign.advertiser_id in hidden:
                        stage = _HIDDEN
                    elif refused and campaign_id in refused:
                        stage = _STAGE_OF[refused[campaign_id]]
                    elif capped and campaign_id in capped:
                        stage = _CAP
                    elif campaign_id in blocked:
                        stage = _BUDGET
                    elif campaign.even_pacing and not pacing_allows(
                        campaign, self.spend.today_micros.get(campaign_id, 0), request.now_ms, request.event_id
                    ):
                        stage = _PACING
                if stage != _PASS:
                    rejected.add(campaign_id)
                    if stage > furthest:
                        furthest = stage
                    continue
                if key < reserve_key:
                    # Everything from here on is below the floor; one eligible campaign there
                    # is enough to name the no-fill reason.
                    return _FLOOR
                accepted[campaign_id] = campaign
                if key > best.get(campaign.advertiser_id, -1):
                    best[campaign.advertiser_id] = key
            if campaign.advertiser_id not in advertisers:
                advertisers.add(campaign.advertiser_id)
                found += 1
            last_key = key
        return furthest

    def _filter_stage(self, campaign: Campaign, request: AuctionRequest, ancestors: tuple[str, ...]) -> int:
        """Targeting beyond the keyword, and the campaign's brand safety: _PASS or a stage."""
        category_filter = campaign.category_filter
        if category_filter is not None and not any(code in category_filter for code in ancestors):
            return _TARGETING
        filters = campaign.filters
        if filters is None:  # only the category, or a policy that restricts "general" itself
            return _TARGETING if "general" in self.policy.restricted_verticals else _PASS
        if (
            (filters.placements is not None and request.placement not in filters.placements)
            or (filters.devices is not None and request.device not in filters.devices)
            or (filters.countries is not None and request.country not in filters.countries)
            or (filters.locales is not None and not _locale_matches(filters.locales, request.locale))
            or (filters.negative_keywords is not None and not filters.negative_keywords.isdisjoint(request.keywords))
            or (filters.start_ms is not None and request.now_ms < filters.start_ms)
            or (filters.end_ms is not None and request.now_ms >= filters.end_ms)
            or filters.vertical in self.policy.restricted_verticals
        ):
            return _TARGETING
        if filters.excluded_safety_labels is not None and not filters.excluded_safety_labels.isdisjoint(
            request.safety_labels
        ):
            return _SAFETY
        return _PASS


def _add(walk: list[list[Campaign]], postings: list[Campaign] | None) -> None:
    """Insert a non-empty posting list into `walk`, kept best first by its top campaign's key
    (after the lists already there with the same key: the order `sorted` gives). An insertion
    sort: a request reaches a handful of lists, and `list.sort` with a key function cost more."""
    if not postings:
        return
    top = postings[0].rank_key
    position = len(walk)
    walk.append(postings)
    while position > 0 and walk[position - 1][0].rank_key < top:
        walk[position] = walk[position - 1]
        position -= 1
    walk[position] = postings


def _needed_key(best: dict[str, int], need: int) -> int:
    """The rank key of the need-th best advertiser accepted so far (`best`: each advertiser's
    best key; at least `need` of them). Anything strictly below it ranks after `need` others: it
    can neither win a slot nor be the runner-up that prices one (keys order eCPM: a smaller key
    is a strictly smaller eCPM; an equal key goes on to the exact compare, so it stays in)."""
    return sorted(best.values(), reverse=True)[need - 1]


def _matched_keywords(campaign: Campaign, keywords: frozenset[str], terms: frozenset[str] | None) -> tuple[str, ...]:
    """The campaign keywords that matched the request (for `why`): exact ones, then phrases
    (`terms`: the request's `sub_phrases`, given when the campaign has phrases)."""
    exact = [keyword for keyword in campaign.keywords if keyword in keywords]
    if terms is not None and campaign.phrases:
        exact += [phrase for phrase in campaign.phrases if phrase in terms]
    return tuple(exact)


def _locale_matches(locales: frozenset[str], locale: str) -> bool:
    """A campaign's `en` takes `en-us` and `en-gb`; `en-us` takes only itself."""
    return locale in locales or locale.partition("-")[0] in locales
