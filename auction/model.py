"""Typed values the engine works on. Money is integer micros; rates are exact Fractions."""

from __future__ import annotations

import dataclasses
import sys
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any, Final, Literal, cast

from mypy_extensions import i32, u8

from auction.bidding import start_bid
from auction.interning import remember
from auction.keywords import normalize_keyword, normalize_keywords, sorted_keywords

BidType = Literal["cpm", "cpc"]
NoFillReason = Literal[
    "no_candidates",
    "below_floor",
    "budget",
    "frequency_cap",
    "pacing",
    "brand_safety",
    "no_consent",
    "minor",
    "sensitive_topic",
    "user_hidden",
]

# Pseudo-impressions given to the prior when blending learned CTR (docs/contract.md §4.2): with no data
# the blend is the prior exactly; after ~PRIOR_WEIGHT impressions data and prior weigh equally.
PRIOR_WEIGHT = 1000
# eCPM ordering key resolution: rank_key = floor(ecpm * RANK_SCALE). Equal keys fall back to
# the exact Fraction, so the float-free order is exact while the common case compares ints.
RANK_SCALE = 1 << 20


PCTR_DENOMINATOR = 1_000_000  # campaign pCTR priors have at most 6 decimals (validated)


def blended_pctr(prior: Fraction, impressions: int, clicks: int) -> Fraction:
    """The campaign's learned rate with its prior as pseudo-counts (exactly the prior at 0/0)."""
    if impressions <= 0:
        return prior
    clicks = min(max(clicks, 0), impressions)
    return (clicks + prior * PRIOR_WEIGHT) / (impressions + PRIOR_WEIGHT)


def tie_hash(event_id: str, campaign_id: str) -> int:
    """Stable across processes (unlike hash()), so a replay ranks ties the same way."""
    return zlib.crc32(f"{event_id}\x1f{campaign_id}".encode())


def _iso_ms(value: Any) -> int | None:
    if not value:
        return None
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


_PRIORS: dict[int, Fraction] = {}


def _prior(pctr_micros: int) -> Fraction:
    """Priors repeat across campaigns (at most a million values): share one Fraction per value,
    which keeps the index near 1 KiB per campaign at 100,000 campaigns."""
    prior = _PRIORS.get(pctr_micros)
    if prior is None:
        prior = _PRIORS[pctr_micros] = Fraction(pctr_micros, PCTR_DENOMINATOR)
    return prior


# Campaigns repeat the same small sets (countries, devices, placements, categories) and the same
# advertiser ids: one shared instance each instead of one per campaign keeps the index small.
_SHARED_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(values: frozenset[str]) -> frozenset[str]:
    found = _SHARED_SETS.get(values)
    if found is None:
        found = remember(_SHARED_SETS, values, frozenset(sys.intern(value) for value in values))
    return found


_SHARED_LISTS: dict[tuple[bool, tuple[str, ...]], frozenset[str]] = {}


def _optional_set(values: Any, lower: bool = False) -> frozenset[str] | None:
    if not values:
        return None
    # Keyed by the list as given: most campaigns repeat a few lists, and hashing a tuple of
    # strings is cheaper than building and hashing the set each time.
    key = (lower, tuple(values))
    found = _SHARED_LISTS.get(key)
    if found is None:
        found = remember(_SHARED_LISTS, key, _shared(frozenset(str(v).lower() if lower else str(v) for v in values)))
    return found


@dataclass(frozen=True, slots=True)
class Filters:
    """A campaign's targeting beyond its keywords and categories, checked per request. Shared:
    campaigns with the same filters hold one instance (`shared_filters`), and a campaign
    without any holds None, so the index pays a pointer per campaign, not ten fields."""

    negative_keywords: frozenset[str] | None = None
    locales: frozenset[str] | None = None
    countries: frozenset[str] | None = None
    devices: frozenset[str] | None = None
    placements: frozenset[str] | None = None
    excluded_safety_labels: frozenset[str] | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    vertical: str = "general"


_FilterValues = tuple[frozenset[str] | None, frozenset[str] | None, frozenset[str] | None, frozenset[str] | None,
                      frozenset[str] | None, frozenset[str] | None, int | None, int | None, str]
_NO_FILTERS = cast(_FilterValues, dataclasses.astuple(Filters()))  # the defaults: nothing to filter
_SHARED_FILTERS: dict[_FilterValues, Filters] = {}
_SHARED_CAPS: dict[tuple[int, int], Any] = {}  # Any: see _shared_cap


def shared_filters(values: _FilterValues) -> Filters | None:
    """The one instance of these filters (the `Filters` fields in order), None when they filter
    nothing. Keyed by the plain tuple: building a frozen dataclass per campaign costs more."""
    if values == _NO_FILTERS:
        return None
    found = _SHARED_FILTERS.get(values)
    if found is None:
        found = remember(_SHARED_FILTERS, values, Filters(*values))
    return found


def _shared_cap(cap: tuple[int, int]) -> tuple[int, int] | None:
    # The cache's values are Any and the result a union so that mypyc keeps the shared tuple
    # itself: typed `tuple[int, int]` it is unboxed and boxed again, a new tuple per campaign.
    found = _SHARED_CAPS.get(cap)
    if found is None:
        found = remember(_SHARED_CAPS, cap, cap)
    return cast("tuple[int, int] | None", found)


# Bits of `Campaign.flags`.
_CPC: Final = 1
_EVEN_PACING: Final = 2
_ACTIVE: Final = 4
_ANY_OF: Final = 8
_HAS_FILTERS: Final = 16


@dataclass(slots=True, eq=False, init=False)  # __init__ written out: mypyc compiles it (dataclass's runs interpreted)
class Campaign:
    """What the engine needs of a campaign: targeting, bid, budget, pacing. Creatives stay in the
    worker's catalogue so the index stays small. Rates are kept as integer numerator/denominator
    pairs: exact, compact, and fast to compare by cross-multiplication."""

    campaign_id: str
    advertiser_id: str
    bid_micros: int
    keywords: tuple[str, ...]  # exact match
    phrases: tuple[str, ...]  # phrase match: also inside a longer intent keyword
    categories: frozenset[str] | None
    filters: Filters | None  # shared; None: nothing beyond keywords and categories
    daily_budget_micros: int
    total_budget_micros: int
    frequency_cap: tuple[int, int] | None  # (max impressions, window seconds); shared
    # Derived: the learned pCTR as an exact ratio and the integer ordering key; the exact eCPM
    # is computed from them where a price needs it (two fewer words per campaign in the index).
    pctr_num: int = field(init=False)
    pctr_den: int = field(init=False)
    rank_key: int = field(init=False)
    # The prior pCTR in millionths and the flags, side by side: the compiled class keeps them
    # as a 32-bit and an 8-bit native int in one word (the prior as a pointer to a shared
    # Fraction, the bid type as a pointer to a literal and four bools took three).
    prior_pctr_micros: i32 = field(init=False)
    flags: u8 = field(init=False)

    def __init__(self, campaign_id: str, advertiser_id: str, bid_type: BidType, bid_micros: int,
                 prior_pctr: Fraction, keywords: tuple[str, ...], phrases: tuple[str, ...] = (),
                 categories: frozenset[str] | None = None, filters: Filters | None = None,
                 daily_budget_micros: int = 0, total_budget_micros: int = 0,
                 frequency_cap: tuple[int, int] | None = None, even_pacing: bool = False, active: bool = True,
                 any_of: bool = False) -> None:
        self.campaign_id = campaign_id
        self.advertiser_id = advertiser_id
        self.bid_micros = bid_micros
        self.keywords = keywords
        self.phrases = phrases
        self.categories = categories
        self.filters = filters
        self.daily_budget_micros = daily_budget_micros
        self.total_budget_micros = total_budget_micros
        self.frequency_cap = frequency_cap
        prior_num, prior_den = prior_pctr.numerator, prior_pctr.denominator  # ints: Fraction math is slow
        if PCTR_DENOMINATOR % prior_den or not 0 <= prior_num <= prior_den:
            raise ValueError(f"prior_pctr: {prior_pctr} is not a multiple of 1/{PCTR_DENOMINATOR} in [0, 1]")
        self.prior_pctr_micros = i32(prior_num * (PCTR_DENOMINATOR // prior_den))
        flags = 0
        if bid_type == "cpc":
            flags |= _CPC
        if even_pacing:
            flags |= _EVEN_PACING
        if active:
            flags |= _ACTIVE
        if any_of:
            flags |= _ANY_OF
        if filters is not None or ((keywords or phrases) and not any_of and categories is not None):
            flags |= _HAS_FILTERS  # the same rule as `category_filter`, before `flags` is set
        self.flags = u8(flags)
        self.set_pctr(prior_pctr)

    @property
    def bid_type(self) -> BidType:
        return "cpc" if self.flags & _CPC else "cpm"

    @property
    def even_pacing(self) -> bool:
        return bool(self.flags & _EVEN_PACING)

    @property
    def active(self) -> bool:
        return bool(self.flags & _ACTIVE)

    @property
    def any_of(self) -> bool:
        """Autopilot targeting (`targeting.auto`): reached through any of its keywords, phrases
        or categories; a manual campaign with keywords needs its categories to match too."""
        return bool(self.flags & _ANY_OF)

    @property
    def has_filters(self) -> bool:
        """True when anything beyond the keyword match must be checked per request."""
        return bool(self.flags & _HAS_FILTERS)

    @property
    def prior_pctr(self) -> Fraction:
        return _prior(self.prior_pctr_micros)

    def set_pctr(self, pctr: Fraction) -> None:
        self.pctr_num, self.pctr_den = pctr.numerator, pctr.denominator
        self.rank_key = self.ecpm_num * RANK_SCALE // self.ecpm_den

    @property
    def ecpm_num(self) -> int:
        """The exact eCPM is ecpm_num / ecpm_den (micros per mille)."""
        return self.bid_micros if self.bid_type == "cpm" else self.bid_micros * self.pctr_num * 1000

    @property
    def ecpm_den(self) -> int:
        return 1 if self.bid_type == "cpm" else self.pctr_den

    @property
    def pctr(self) -> Fraction:
        return Fraction(self.pctr_num, self.pctr_den)

    def changed(self, bid_type: BidType | None = None, bid_micros: int | None = None,
                phrases: tuple[str, ...] | None = None) -> Campaign:
        """A copy of this campaign with the given fields changed and its learned pCTR kept."""
        copy = Campaign(
            self.campaign_id, self.advertiser_id, self.bid_type if bid_type is None else bid_type,
            self.bid_micros if bid_micros is None else bid_micros, self.prior_pctr, self.keywords,
            self.phrases if phrases is None else phrases, self.categories, self.filters, self.daily_budget_micros,
            self.total_budget_micros, self.frequency_cap, self.even_pacing, self.active, self.any_of,
        )
        copy.set_pctr(self.pctr)  # the learned rate, not the prior the constructor starts from
        return copy

    def piloted(self, bid_micros: int | None, keywords: tuple[str, ...]) -> Campaign:
        """This campaign as the autopilot runs it: its CPC bid (None: unchanged) and its effective
        keywords (the advertiser's exact ones stay exact; the rest match as phrases)."""
        phrases = tuple(sorted(set(keywords) - set(self.keywords)))
        return self.changed("cpc" if bid_micros is not None else None, bid_micros, phrases)

    @property
    def category_filter(self) -> frozenset[str] | None:
        """Categories a request must match besides a keyword (manual campaigns with both)."""
        return self.categories if (self.keywords or self.phrases) and not self.any_of else None

    @property
    def ecpm(self) -> Fraction:
        """Expected revenue per 1000 impressions, in micros, exactly."""
        return Fraction(self.ecpm_num, self.ecpm_den)

    @property
    def min_charge_micros(self) -> int:
        """The least one win can cost: a CPM impression at a zero price costs 0, so 1 micro;
        a CPC campaign needs room for one click at its bid (clicks are billed later)."""
        return 1 if self.bid_type == "cpm" else self.bid_micros

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Campaign:
        """From a campaign record already validated by schemas.campaign.validate_campaign (and, with
        `targeting.auto`, carrying its `targeting_derived`)."""
        targeting = record.get("targeting") or {}
        keywords, phrases, categories = _targeting(record, targeting)
        budget = record["budget"]
        cap = record.get("frequency_cap")
        bid = record.get("bid") or {"type": "cpc", "amount_micros": start_bid(record)}
        return Campaign(  # not cls(...): the compiled constructor is called directly
            campaign_id=record["campaign_id"],
            advertiser_id=sys.intern(record["advertiser_id"]),
            # One of the two literals, not the record's own string: a string per campaign otherwise.
            bid_type="cpc" if bid["type"] == "cpc" else "cpm",
            bid_micros=int(bid["amount_micros"]),
            prior_pctr=_prior(round(float(record.get("pctr", 0.01)) * PCTR_DENOMINATOR)),
            keywords=keywords,
            phrases=phrases,
            categories=categories,
            filters=shared_filters((
                (normalize_keywords(negative) or None) if (negative := targeting.get("negative_keywords")) else None,
                _optional_set(targeting.get("locales"), lower=True),
                _optional_set(targeting.get("countries"), lower=True),
                _optional_set(targeting.get("devices"), lower=True),
                _optional_set(targeting.get("placements")),
                _optional_set(record.get("excluded_safety_labels")),
                _iso_ms(record.get("start")),
                _iso_ms(record.get("end")),
                str(record.get("vertical", "general")),
            )),
            daily_budget_micros=int(budget["daily_micros"]),
            total_budget_micros=int(budget["total_micros"]),
            frequency_cap=_shared_cap((int(cap["max"]), int(cap["window_s"]))) if cap else None,
            even_pacing=record.get("pacing") == "even",
            active=record.get("status", "active") == "active",
            any_of=bool(targeting.get("auto")),
        )


def _targeting(record: dict[str, Any], targeting: dict[str, Any]
               ) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str] | None]:
    """(exact keywords, phrase keywords, categories): explicit ones as `targeting.match` says, and
    with `targeting.auto` the derived ones (or the autopilot's, in `targeting_derived`), as phrases."""
    raw_keywords = targeting.get("keywords")
    raw_categories = targeting.get("categories")
    if not targeting.get("auto"):  # the common case: nothing derived
        categories = _shared(frozenset(raw_categories)) if raw_categories else None
        terms = sorted_keywords(raw_keywords) if raw_keywords else ()
        if targeting.get("match") == "phrase":
            return (), terms, categories
        return terms, (), categories
    explicit = normalize_keywords(raw_keywords or ())
    derived = record.get("targeting_derived") or {}
    derived_terms = frozenset(normalize_keyword(item["term"]) for item in derived.get("keywords") or ())
    keywords: frozenset[str] = explicit
    phrases: frozenset[str] = derived_terms - explicit
    if targeting.get("match") == "phrase":
        keywords, phrases = frozenset(), explicit | derived_terms
    category_set = set(raw_categories or ())
    category_set.update(item["category"] for item in derived.get("categories") or ())
    return tuple(sorted(keywords)), tuple(sorted(phrases)), _shared(frozenset(category_set)) if category_set else None


@dataclass(slots=True, init=False)  # __init__ written out: mypyc compiles it (dataclass's runs interpreted)
class AuctionRequest:
    """The parts of an intent event the auction reads, already normalised. Read only by
    convention: not frozen because a frozen dataclass costs ~1.7 µs more to build, once per event."""

    event_id: str
    user_id: str
    placement: str
    slots: int
    reserve_cpm_micros: int
    category: str | None
    keywords: frozenset[str]
    locale: str
    country: str
    device: str
    safety_labels: frozenset[str]
    consent_ads: bool
    personalization: bool
    age_bracket: str
    now_ms: int

    def __init__(self, event_id: str, user_id: str, placement: str, slots: int, reserve_cpm_micros: int,
                 category: str | None, keywords: frozenset[str], locale: str, country: str, device: str,
                 safety_labels: frozenset[str], consent_ads: bool, personalization: bool, age_bracket: str,
                 now_ms: int) -> None:
        self.event_id = event_id
        self.user_id = user_id
        self.placement = placement
        self.slots = slots
        self.reserve_cpm_micros = reserve_cpm_micros
        self.category = category
        self.keywords = keywords
        self.locale = locale
        self.country = country
        self.device = device
        self.safety_labels = safety_labels
        self.consent_ads = consent_ads
        self.personalization = personalization
        self.age_bracket = age_bracket
        self.now_ms = now_ms

    @classmethod
    def from_intent(cls, intent: dict[str, Any], now_ms: int) -> AuctionRequest:
        get = intent.get
        body = get("intent") or _EMPTY
        consent = get("consent") or _EMPTY
        return cls(
            intent["event_id"],
            intent["user_id"],
            get("placement", ""),
            int(get("slots", 1)),
            int(get("floor_cpm_micros") or 0),
            body.get("category"),
            normalize_keywords(body.get("keywords") or ()),
            str(get("locale", "")).lower(),
            str(get("country", "")).lower(),
            str(get("device", "")).lower(),
            frozenset((get("safety") or _EMPTY).get("labels") or ()),
            bool(consent.get("ads", False)),
            bool(consent.get("personalization", True)),
            str(get("age_bracket", "unknown")),
            now_ms,
        )


_EMPTY: dict[str, Any] = {}


@dataclass(slots=True, init=False)  # __init__ written out: mypyc compiles it (dataclass's runs interpreted)
class Winner:
    slot: int
    campaign: Campaign
    price_micros: int  # in the bid's unit: per mille for CPM, per click for CPC
    charge_micros: int  # what this impression costs now (0 for CPC)
    ecpm_micros: int  # rounded up for reporting; ranking used the exact value
    runner_up_ecpm_micros: int | None
    matched_keywords: tuple[str, ...]
    matched_category: str | None

    def __init__(self, slot: int, campaign: Campaign, price_micros: int, charge_micros: int, ecpm_micros: int,
                 runner_up_ecpm_micros: int | None, matched_keywords: tuple[str, ...], matched_category: str | None) -> None:
        self.slot = slot
        self.campaign = campaign
        self.price_micros = price_micros
        self.charge_micros = charge_micros
        self.ecpm_micros = ecpm_micros
        self.runner_up_ecpm_micros = runner_up_ecpm_micros
        self.matched_keywords = matched_keywords
        self.matched_category = matched_category


@dataclass(slots=True, init=False)  # __init__ written out: mypyc compiles it (dataclass's runs interpreted)
class AuctionResult:
    event_id: str
    winners: tuple[Winner, ...]
    no_fill_reason: NoFillReason | None
    reserve_cpm_micros: int

    def __init__(self, event_id: str, winners: tuple[Winner, ...], no_fill_reason: NoFillReason | None,
                 reserve_cpm_micros: int) -> None:
        self.event_id = event_id
        self.winners = winners
        self.no_fill_reason = no_fill_reason
        self.reserve_cpm_micros = reserve_cpm_micros
