"""Campaign and policy documents (docs/contract.md §3 Campaign, §4b): validation that names every problem.

`validate_campaign` is what `vickrey campaigns apply` runs: a campaign is refused whole, with every
problem as `<field>: <problem>`; a valid one comes back normalised (defaults filled, canonical key
order), and the normalised form validates to itself. The contract is schemas/campaign.json plus the
rules JSON Schema cannot say (daily <= total budget, unique creative ids, pctr decimals, end after
start, 64 KiB encoded).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Final

import orjson

from schemas.checks import (
    RECORD_MAX_BYTES,
    STRICT,
    Checks,
    CollectedChecks,
    Record,
    show,
)
from schemas.records import BID_TYPES, KEYWORD_MAX, KEYWORDS_MAX, check_creative

STATUSES: Final = ("active", "paused")
PACINGS: Final = ("asap", "even")
MAX_CREATIVES: Final = 20
PCTR_DECIMALS: Final = 6  # the engine reads pctr as Fraction(str(pctr)): a multiple of 1/10^6, exactly
VERTICAL_PATTERN: Final = (re.compile(r"[a-z][a-z0-9_-]*"),
                           "must be a lowercase token (a letter, then a-z, 0-9, _ or -)")
VERTICAL_MAX: Final = 64
_KEYWORD_PATTERN: Final = (re.compile(r"(?s).*\S.*"), "must not be blank")
_TIME_MAX: Final = 64

_CAMPAIGN_FIELDS: Final = ("schema_version", "campaign_id", "advertiser_id", "status", "bid", "goal", "pctr",
                           "budget", "pacing", "targeting", "frequency_cap", "excluded_safety_labels", "vertical",
                           "creatives", "brief", "start", "end", "targeting_derived")
_CAMPAIGN_KNOWN: Final = frozenset(_CAMPAIGN_FIELDS)
_BID_FIELDS: Final = frozenset({"type", "amount_micros"})
_BUDGET_FIELDS: Final = frozenset({"daily_micros", "total_micros"})
_CAP_FIELDS: Final = frozenset({"max", "window_s"})
_TARGET_LISTS: Final = ("locales", "countries", "devices", "placements")
_TARGETING_FIELDS: Final = frozenset({"keywords", "negative_keywords", "categories", "auto", "match", *_TARGET_LISTS})
GOALS: Final = ("manual", "max_clicks", "target_cpc", "target_cpa")
AUTOPILOT_GOALS: Final = GOALS[1:]  # the autopilot bids CPC for these
TARGETED_GOALS: Final = ("target_cpc", "target_cpa")  # these need target_micros
MATCHES: Final = ("exact", "phrase")
SOURCES: Final = ("title", "body", "brief")
BRIEF_MAX: Final = 2000
_GOAL_FIELDS: Final = frozenset({"type", "target_micros", "max_bid_micros"})
_DERIVED_FIELDS: Final = frozenset({"keywords", "categories"})
_DERIVED_KEYWORD_FIELDS: Final = frozenset({"term", "from", "matched"})
_DERIVED_CATEGORY_FIELDS: Final = frozenset({"category", "name", "from", "matched"})


def check_campaign(r: Record, c: Checks = STRICT) -> None:
    """Checks a parsed campaign in place (defaults filled); `c` decides raise-first or collect-all."""
    c.unknown_fields(r, _CAMPAIGN_KNOWN)
    c.version(r)
    c.ident(r, "campaign_id")
    c.ident(r, "advertiser_id")
    c.choice(r, "status", STATUSES, default="active")
    goal = _check_goal(r, c)
    _check_bid(r, c, goal)
    if c.number(r, "pctr", lo=0.0, hi=1.0, lo_open=True, default=0.01):
        r["pctr"] = float(r["pctr"])
        if 10**PCTR_DECIMALS % Fraction(repr(r["pctr"])).denominator:
            c.problem("pctr", f"must have at most {PCTR_DECIMALS} decimal places (it is used exactly), "
                              f"got {r['pctr']!r}")
    budget = c.obj(r, "budget")
    if budget is not None:
        c.unknown_fields(budget, _BUDGET_FIELDS, "budget.")
        daily = c.integer(budget, "daily_micros", "budget.", lo=1)
        if c.integer(budget, "total_micros", "budget.", lo=1) and daily and \
                budget["daily_micros"] > budget["total_micros"]:
            c.problem("budget.daily_micros", f"must not exceed budget.total_micros "
                                             f"({budget['daily_micros']} > {budget['total_micros']})")
    c.choice(r, "pacing", PACINGS, default="asap")
    targeting = c.obj(r, "targeting", default={})
    if targeting is not None:
        _check_targeting(targeting, c)
    _check_frequency_cap(r, c)
    c.texts(r, "excluded_safety_labels", default=[])
    c.text(r, "vertical", hi=VERTICAL_MAX, pattern=VERTICAL_PATTERN, default="general")
    _check_creatives(r, c)
    c.text(r, "brief", lo=1, hi=BRIEF_MAX, required=False)
    _check_derived(r, c)
    start, end = _time_ms(r, "start", c), _time_ms(r, "end", c)
    if start is not None and end is not None and end <= start:
        c.problem("end", f"must be after start ({r['end']!r} is not after {r['start']!r})")


def _check_goal(r: Record, c: Checks) -> str | None:
    """The goal's type (None when it is unreadable)."""
    goal = c.obj(r, "goal", default={"type": "manual"})
    if goal is None:
        return None
    c.unknown_fields(goal, _GOAL_FIELDS, "goal.")
    kind = goal.get("type") if c.choice(goal, "type", GOALS, "goal.") else None
    c.integer(goal, "target_micros", "goal.", lo=1, required=kind in TARGETED_GOALS)
    c.integer(goal, "max_bid_micros", "goal.", lo=1, required=False)
    return kind if isinstance(kind, str) else None


def _check_bid(r: Record, c: Checks, goal: str | None) -> None:
    """Required with the manual goal; with one the autopilot bids for, optional and CPC only."""
    bid = c.obj(r, "bid", required=goal not in AUTOPILOT_GOALS)
    if bid is None:
        return
    c.unknown_fields(bid, _BID_FIELDS, "bid.")
    if c.choice(bid, "type", BID_TYPES, "bid.") and goal in AUTOPILOT_GOALS and bid["type"] != "cpc":
        c.problem("bid.type", f"must be 'cpc' with the goal {goal!r} (the autopilot bids per click), got {bid['type']!r}")
    c.integer(bid, "amount_micros", "bid.", lo=1)


def _check_derived(r: Record, c: Checks) -> None:
    """`targeting_derived`, as Vickrey writes it (campaign apply replaces whatever an input says)."""
    derived = c.obj(r, "targeting_derived", required=False)
    if derived is None:
        return
    c.unknown_fields(derived, _DERIVED_FIELDS, "targeting_derived.")
    for index, item in enumerate(c.array(derived, "keywords", "targeting_derived.", hi=KEYWORDS_MAX) or ()):
        path = f"targeting_derived.keywords[{index}]."
        if type(item) is not dict:
            c.problem(path[:-1], f"must be an object, got {show(item)}")
            continue
        c.unknown_fields(item, _DERIVED_KEYWORD_FIELDS, path)
        c.text(item, "term", path, hi=KEYWORD_MAX, pattern=_KEYWORD_PATTERN)
        c.choice(item, "from", SOURCES, path)
        c.text(item, "matched", path)
    for index, item in enumerate(c.array(derived, "categories", "targeting_derived.", hi=3) or ()):
        path = f"targeting_derived.categories[{index}]."
        if type(item) is not dict:
            c.problem(path[:-1], f"must be an object, got {show(item)}")
            continue
        c.unknown_fields(item, _DERIVED_CATEGORY_FIELDS, path)
        c.category(item, "category", path)
        c.text(item, "name", path)
        c.choice(item, "from", SOURCES, path)
        c.text(item, "matched", path)


def _check_targeting(t: Record, c: Checks) -> None:
    c.unknown_fields(t, _TARGETING_FIELDS, "targeting.")
    c.boolean(t, "auto", "targeting.", default=False)
    c.choice(t, "match", MATCHES, "targeting.", default="exact")
    # An empty list would match nothing and silently never serve: absent is how to say "any".
    c.texts(t, "keywords", "targeting.", min_items=1, max_items=KEYWORDS_MAX, hi=KEYWORD_MAX,
            pattern=_KEYWORD_PATTERN, required=False)
    c.texts(t, "negative_keywords", "targeting.", max_items=KEYWORDS_MAX, hi=KEYWORD_MAX,
            pattern=_KEYWORD_PATTERN, required=False)
    c.categories(t, "categories", "targeting.", min_items=1, required=False)
    for key in _TARGET_LISTS:
        c.texts(t, key, "targeting.", min_items=1, required=False)


def _check_frequency_cap(r: Record, c: Checks) -> None:
    cap = r.setdefault("frequency_cap", None)
    if cap is None:
        return
    if type(cap) is not dict:
        c.problem("frequency_cap", f"must be an object {{max, window_s}} or null, got {show(cap)}")
        return
    c.unknown_fields(cap, _CAP_FIELDS, "frequency_cap.")
    c.integer(cap, "max", "frequency_cap.", lo=1)
    c.integer(cap, "window_s", "frequency_cap.", lo=1)


def _check_creatives(r: Record, c: Checks) -> None:
    first_index: dict[str, int] = {}
    for index, creative in enumerate(c.array(r, "creatives", lo=1, hi=MAX_CREATIVES) or ()):
        path = f"creatives[{index}]"
        if type(creative) is not dict:
            c.problem(path, f"must be an object, got {show(creative)}")
            continue
        check_creative(creative, path + ".", c)
        creative_id = creative.get("creative_id")
        if isinstance(creative_id, str):
            if creative_id in first_index:
                c.problem(path + ".creative_id",
                          f"duplicate of creatives[{first_index[creative_id]}].creative_id ({creative_id!r})")
            first_index.setdefault(creative_id, index)


def _time_ms(r: Record, key: str, c: Checks) -> int | None:
    """Checks an optional ISO-8601 date-time (default null) and returns it as epoch ms."""
    value = r.setdefault(key, None)
    if value is None:
        return None
    words = "must be an ISO-8601 date-time with a timezone, e.g. '2025-11-01T00:00:00Z'"
    if not isinstance(value, str) or len(value) > _TIME_MAX:
        c.problem(key, f"{words}, got {show(value)}")
        return None
    try:
        return iso_to_ms(value)
    except ValueError:
        c.problem(key, f"{words}, got {show(value)}")
        return None


def iso_to_ms(text: str) -> int:
    """Epoch ms of an ISO-8601 date-time that names its timezone; ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone")
    return (moment - _EPOCH) // timedelta(milliseconds=1)  # exact, unlike timestamp() * 1000


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _validated(obj: object, check: Callable[[Record, Checks], None], order: tuple[str, ...], what: str) -> tuple[Record | None, list[str]]:
    if not isinstance(obj, dict):
        return None, [f"(record): {what} must be a JSON object, got {show(obj)}"]
    record: Record = copy.deepcopy(obj)  # never change the caller's object
    checks = CollectedChecks()
    check(record, checks)
    if not checks.problems:
        size = len(orjson.dumps(record))
        if size > RECORD_MAX_BYTES:
            checks.problem("", f"{size} bytes encoded, over the 64 KiB limit")
    if checks.problems:
        return None, checks.problems
    return {key: record[key] for key in order if key in record}, []


def validate_campaign(obj: object) -> tuple[Record | None, list[str]]:
    """(normalised campaign, []) or (None, every problem as `<field>: <problem>`)."""
    return _validated(obj, check_campaign, _CAMPAIGN_FIELDS, "a campaign")


# --- policy (docs/contract.md §4b) --------------------------------------------------------------------------

_POLICY_FIELDS: Final = ("schema_version", "sensitive_categories", "restricted_verticals", "blocked_safety_labels")
_POLICY_KNOWN: Final = frozenset(_POLICY_FIELDS)
_POLICY_LIST_MAX: Final = 256

DEFAULT_POLICY: Final[Record] = {
    "schema_version": 1,
    "sensitive_categories": ["IAB7", "IAB11", "IAB23"],
    "restricted_verticals": ["dating", "health", "financial_services", "politics", "gambling"],
    "blocked_safety_labels": ["hate", "extremism", "self_harm", "adult", "violence_graphic"],
}
"""The policy until someone applies another (a shared object: copy it before changing it)."""


def check_policy(r: Record, c: Checks = STRICT, prefix: str = "") -> None:
    c.unknown_fields(r, _POLICY_KNOWN, prefix)
    c.version(r, prefix)
    c.categories(r, "sensitive_categories", prefix, max_items=392)
    c.texts(r, "restricted_verticals", prefix, max_items=_POLICY_LIST_MAX, hi=VERTICAL_MAX, pattern=VERTICAL_PATTERN)
    c.texts(r, "blocked_safety_labels", prefix, max_items=_POLICY_LIST_MAX)


_POLICY_RECORD_FIELDS: Final = frozenset({"schema_version", "version", "policy"})


def check_policy_record(r: Record, c: Checks = STRICT) -> None:
    """A record of the compacted `policy` topic: the policy's version and the policy (schemas/policy.json)."""
    c.unknown_fields(r, _POLICY_RECORD_FIELDS)
    c.version(r, required=True)
    c.integer(r, "version", lo=1)
    policy = c.obj(r, "policy")
    if policy is not None:
        check_policy(policy, c, "policy.")


def validate_policy(obj: object) -> tuple[Record | None, list[str]]:
    """(normalised policy, []) or (None, every problem). All three lists are required."""
    return _validated(obj, check_policy, _POLICY_FIELDS, "a policy")


def restricted_vertical_problem(campaign: Record, policy: Record) -> str | None:
    """The problem when the policy restricts the campaign's vertical, else None."""
    vertical = campaign.get("vertical", "general")
    restricted = policy.get("restricted_verticals", [])
    if vertical not in restricted:
        return None
    return f"vertical: {vertical!r} is restricted by the policy (restricted_verticals: {', '.join(restricted)})"

