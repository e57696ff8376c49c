"""Hand-written validators, one per record of docs/contract.md §3 (campaigns: schemas/campaign.py).

Each mirrors its JSON Schema in schemas/*.json (tests prove they agree) and fills the schema's
defaults in place. Input records (chat.intents, ad.clicks.raw, user.controls) tolerate unknown fields
so producer teams can add fields before we read them; records we produce refuse them.
"""

from __future__ import annotations

import re
from typing import Final

from schemas.checks import ID_PATTERN, INT_MAX, MISSING, SHORT_MAX, STRICT, Checks, Record, show
from schemas.iab import IAB_CATEGORIES

AGE_BRACKETS: Final = ("under_13", "13_17", "18_plus", "unknown")
CONTROL_ACTIONS: Final = ("hide_advertiser", "personalization_off", "personalization_on", "forget")
BID_TYPES: Final = ("cpm", "cpc")
NO_FILL_REASONS: Final = ("no_candidates", "below_floor", "budget", "frequency_cap", "pacing", "brand_safety",
                          "no_consent", "minor", "sensitive_topic", "user_hidden")
INVALID_CLICK_REASONS: Final = ("unknown_impression", "duplicate", "expired", "user_mismatch", "too_fast")
LEDGER_KINDS: Final = ("impression", "click")

MAX_SLOTS: Final = 5
IMPRESSION_ID_MAX: Final = 130  # `{event_id}:{slot}`: a 128-character event id plus ":" and one digit
KEYWORDS_MAX: Final = 32
KEYWORD_MAX: Final = 64
TITLE_MAX: Final = 90
BODY_MAX: Final = 300
URL_MAX: Final = 2048


def check_chat_intent(r: Record, c: Checks = STRICT) -> None:
    if c is STRICT and _chat_intent_is_plainly_valid(r):
        return
    c.version(r)
    c.text(r, "event_id")
    c.integer(r, "ts")
    c.text(r, "user_id")
    c.text(r, "session_id")
    c.text(r, "placement")
    c.integer(r, "slots", lo=1, hi=MAX_SLOTS, default=1)
    c.integer(r, "floor_cpm_micros", required=False)
    intent = c.obj(r, "intent")
    if intent is not None:
        c.category(intent, "category", "intent.")
        c.texts(intent, "keywords", "intent.", max_items=KEYWORDS_MAX, lo=0, hi=KEYWORD_MAX)
        c.number(intent, "confidence", "intent.", lo=0.0, hi=1.0)
    c.text(r, "locale")
    c.text(r, "country")
    c.text(r, "device")
    safety = c.obj(r, "safety", default={})
    if safety is not None:
        c.texts(safety, "labels", "safety.", default=[])
    consent = c.obj(r, "consent")
    if consent is not None:
        c.boolean(consent, "ads", "consent.")
        c.boolean(consent, "personalization", "consent.", default=True)
    c.choice(r, "age_bracket", AGE_BRACKETS, default="unknown")


_INTENT_TEXTS: Final = ("event_id", "user_id", "session_id", "placement", "locale", "country", "device")


def _chat_intent_is_plainly_valid(r: Record) -> bool:  # noqa: C901 - straight-line on purpose (hot path)
    """The hot path: the same rules as check_chat_intent, straight-line, for the common valid event.
    True means valid (defaults filled); False means "let the field checks find and name the problem".
    It may only accept what check_chat_intent accepts (tests run both on every generated case)."""
    get = r.get
    value = get("schema_version", 1)
    if type(value) is not int or value != 1:
        return False
    for key in _INTENT_TEXTS:
        value = get(key)
        if type(value) is not str or not 0 < len(value) <= SHORT_MAX:
            return False
    value = get("ts")
    if type(value) is not int or not 0 <= value <= INT_MAX:
        return False
    value = get("slots", 1)
    if type(value) is not int or not 1 <= value <= MAX_SLOTS:
        return False
    value = get("floor_cpm_micros", 0)
    if type(value) is not int or not 0 <= value <= INT_MAX:
        return False
    intent = get("intent")
    if type(intent) is not dict:
        return False
    value = intent.get("category")
    if type(value) is not str or value not in IAB_CATEGORIES:
        return False
    value = intent.get("confidence")
    if not (type(value) is float or type(value) is int) or not 0 <= value <= 1:
        return False
    keywords = intent.get("keywords")
    if type(keywords) is not list or len(keywords) > KEYWORDS_MAX:
        return False
    for value in keywords:
        if type(value) is not str or len(value) > KEYWORD_MAX:
            return False
    consent = get("consent")
    if type(consent) is not dict or type(consent.get("ads")) is not bool:
        return False
    if type(consent.get("personalization", True)) is not bool:
        return False
    value = get("age_bracket", "unknown")
    if type(value) is not str or value not in AGE_BRACKETS:
        return False
    safety = get("safety", _NO_SAFETY)
    if type(safety) is not dict:
        return False
    labels = safety.get("labels", _NO_LABELS)
    if type(labels) is not list:
        return False
    for value in labels:
        if type(value) is not str or not 0 < len(value) <= SHORT_MAX:
            return False
    # Valid: fill the defaults (fresh containers, never the shared markers).
    if "slots" not in r:
        r["slots"] = 1
    if "schema_version" not in r:
        r["schema_version"] = 1
    if "age_bracket" not in r:
        r["age_bracket"] = "unknown"
    if "personalization" not in consent:
        consent["personalization"] = True
    if safety is _NO_SAFETY:
        r["safety"] = {"labels": []}
    elif labels is _NO_LABELS:
        safety["labels"] = []
    return True


_NO_SAFETY: Final[Record] = {}
_NO_LABELS: Final[list[str]] = []


def check_click_raw(r: Record, c: Checks = STRICT) -> None:
    c.version(r)
    _raw_click_fields(r, c)


def _raw_click_fields(r: Record, c: Checks) -> None:
    c.text(r, "click_id")
    c.text(r, "impression_id", hi=IMPRESSION_ID_MAX)
    c.integer(r, "ts")
    c.text(r, "user_id")


def check_user_control(r: Record, c: Checks = STRICT) -> None:
    c.version(r)
    c.text(r, "control_id", required=False)
    _control_fields(r, c)


def _control_fields(r: Record, c: Checks) -> None:
    c.text(r, "user_id")
    hide = c.choice(r, "action", CONTROL_ACTIONS) and r["action"] == "hide_advertiser"
    # The advertiser matters only for hide; elsewhere a stray value is ignored, as long as it is an id.
    c.ident(r, "advertiser_id", required=hide)
    c.integer(r, "ts")


_APPLIED_FIELDS: Final = frozenset(
    {"schema_version", "control_id", "user_id", "action", "advertiser_id", "ts", "applied_ts"})


def check_user_control_applied(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _APPLIED_FIELDS)
    c.version(r, required=True)
    c.text(r, "control_id")
    c.text(r, "user_id")
    if c.choice(r, "action", CONTROL_ACTIONS) and r["action"] != "hide_advertiser":
        if "advertiser_id" not in r:
            c.problem("advertiser_id", "missing (required; null unless action is hide_advertiser)")
        elif r["advertiser_id"] is not None:
            c.problem("advertiser_id", f"must be null when action is {r['action']}")
    else:
        c.ident(r, "advertiser_id")
    c.integer(r, "ts")
    c.integer(r, "applied_ts")


_STATE_FIELDS: Final = frozenset({"schema_version", "user_id", "hidden_advertisers", "personalization", "ts"})
HIDDEN_MAX: Final = 1000  # advertisers one person may hide (user.controls.state.json)
PERSONALIZATION: Final = ("on", "off")


def check_controls_state(r: Record, c: Checks = STRICT) -> None:
    """A `user.controls.state` record: a person's whole ad controls (the controls role writes it)."""
    c.unknown_fields(r, _STATE_FIELDS)
    c.version(r, required=True)
    c.text(r, "user_id")
    c.texts(r, "hidden_advertisers", max_items=HIDDEN_MAX, pattern=ID_PATTERN)
    if "personalization" not in r:
        c.problem("personalization", "missing (required; null when the person never chose)")
    elif r["personalization"] is not None:
        c.choice(r, "personalization", PERSONALIZATION)
    c.integer(r, "ts")


_ADVERTISER_RECORD_FIELDS: Final = frozenset({"schema_version", "advertiser", "key_hashes"})
_ADVERTISER_FIELDS: Final = frozenset({"advertiser_id", "name", "created_ms"})
KEY_HASHES_MAX: Final = 1000  # key hashes in one advertisers record (advertisers.json)
_SHA256: Final = (re.compile(r"[0-9a-f]{64}"), "must be a SHA-256 digest: 64 lowercase hex digits")


def check_advertiser_record(r: Record, c: Checks = STRICT) -> None:
    """An `advertisers` record: an advertiser and the SHA-256 of every API key it holds."""
    c.unknown_fields(r, _ADVERTISER_RECORD_FIELDS)
    c.version(r, required=True)
    advertiser = c.obj(r, "advertiser")
    if advertiser is not None:
        c.unknown_fields(advertiser, _ADVERTISER_FIELDS, "advertiser.")
        c.ident(advertiser, "advertiser_id", "advertiser.")
        c.text(advertiser, "name", "advertiser.")
        c.integer(advertiser, "created_ms", "advertiser.")
    c.texts(r, "key_hashes", min_items=1, max_items=KEY_HASHES_MAX, lo=64, hi=64, pattern=_SHA256)


_CREATIVE_FIELDS: Final = frozenset({"creative_id", "title", "body", "url", "cta"})
_HTTPS_URL: Final = (re.compile(r"https://[^\s/?#@]+(?:[/?#]\S*)?"), "must be an https URL")


def check_creative(r: Record, prefix: str, c: Checks) -> None:
    """A creative as a campaign declares it and a decision carries it."""
    c.unknown_fields(r, _CREATIVE_FIELDS, prefix)
    c.ident(r, "creative_id", prefix)
    c.text(r, "title", prefix, hi=TITLE_MAX)
    c.text(r, "body", prefix, lo=0, hi=BODY_MAX)
    c.text(r, "url", prefix, hi=URL_MAX, pattern=_HTTPS_URL)
    c.text(r, "cta", prefix)


_DECISION_FIELDS: Final = frozenset({"schema_version", "event_id", "session_id", "user_id", "placement",
                                     "ts_event", "ts_decided", "ads", "no_fill_reason"})
_AD_FIELDS: Final = frozenset({"slot", "impression_id", "campaign_id", "advertiser_id", "creative", "label", "why"})
_WHY_FIELDS: Final = frozenset({"matched_keywords", "category", "personalized"})


def check_decision(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _DECISION_FIELDS)
    c.version(r, required=True)
    for key in ("event_id", "session_id", "user_id", "placement"):
        c.text(r, key)
    c.integer(r, "ts_event")
    c.integer(r, "ts_decided")
    ads = c.array(r, "ads", hi=MAX_SLOTS)
    for index, ad in enumerate(ads or ()):
        _check_ad(ad, f"ads[{index}]", c)
    reason = r.get("no_fill_reason")
    if "no_fill_reason" not in r:
        c.problem("no_fill_reason", "missing (required; null when ads is not empty)")
    elif ads and reason is not None:
        c.problem("no_fill_reason", f"must be null when ads is not empty, got {reason!r}")
    elif ads == [] or reason is not None:  # no ads: a reason is required; a non-null one must be known
        c.choice(r, "no_fill_reason", NO_FILL_REASONS)


def _check_ad(ad: object, path: str, c: Checks) -> None:
    if type(ad) is not dict:
        c.problem(path, "must be an object")
        return
    prefix = path + "."
    c.unknown_fields(ad, _AD_FIELDS, prefix)
    c.integer(ad, "slot", prefix, lo=1, hi=MAX_SLOTS)
    c.text(ad, "impression_id", prefix, hi=IMPRESSION_ID_MAX)
    c.ident(ad, "campaign_id", prefix)
    c.ident(ad, "advertiser_id", prefix)
    creative = c.obj(ad, "creative", prefix)
    if creative is not None:
        check_creative(creative, prefix + "creative.", c)
    c.choice(ad, "label", ("Sponsored",), prefix)
    why = c.obj(ad, "why", prefix)
    if why is not None:
        c.unknown_fields(why, _WHY_FIELDS, prefix + "why.")
        c.texts(why, "matched_keywords", prefix + "why.", max_items=KEYWORDS_MAX, lo=0, hi=KEYWORD_MAX)
        c.category(why, "category", prefix + "why.", nullable=True)
        c.boolean(why, "personalized", prefix + "why.")


_IMPRESSION_FIELDS: Final = frozenset(
    {"schema_version", "impression_id", "event_id", "ts", "user_id", "session_id", "placement", "slot",
     "campaign_id", "advertiser_id", "creative_id", "bid_type", "bid_micros", "price_micros", "charge_micros",
     "ecpm_micros", "runner_up_ecpm_micros", "reserve_cpm_micros", "pctr", "category", "matched_keywords",
     "intent_keywords"})


def check_impression(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _IMPRESSION_FIELDS)
    c.version(r, required=True)
    c.text(r, "impression_id", hi=IMPRESSION_ID_MAX)
    c.text(r, "event_id")
    c.integer(r, "ts")
    for key in ("user_id", "session_id", "placement"):
        c.text(r, key)
    c.integer(r, "slot", lo=1, hi=MAX_SLOTS)
    for key in ("campaign_id", "advertiser_id", "creative_id"):
        c.ident(r, key)
    cpc = c.choice(r, "bid_type", BID_TYPES) and r["bid_type"] == "cpc"
    c.integer(r, "bid_micros", lo=1)
    c.integer(r, "price_micros")
    if c.integer(r, "charge_micros") and cpc and r["charge_micros"] != 0:
        c.problem("charge_micros", f"must be 0 for a CPC bid (charged on click), got {r['charge_micros']}")
    c.integer(r, "ecpm_micros")
    if r.get("runner_up_ecpm_micros", 0) is not None:
        c.integer(r, "runner_up_ecpm_micros")
    c.integer(r, "reserve_cpm_micros")
    c.number(r, "pctr", lo=0.0, hi=1.0)
    c.category(r, "category", nullable=True)
    _keyword_lists(r, c)


_CLICK_FIELDS: Final = frozenset({"schema_version", "click_id", "impression_id", "ts", "user_id", "campaign_id",
                                  "advertiser_id", "charge_micros", "matched_keywords", "intent_keywords"})


def check_click(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _CLICK_FIELDS)
    c.version(r, required=True)
    _raw_click_fields(r, c)
    c.ident(r, "campaign_id")
    c.ident(r, "advertiser_id")
    c.integer(r, "charge_micros")
    _keyword_lists(r, c)


def _keyword_lists(r: Record, c: Checks) -> None:
    """Optional on impressions and clicks (absent on records written before §7)."""
    for key in ("matched_keywords", "intent_keywords"):
        c.texts(r, key, max_items=KEYWORDS_MAX, hi=KEYWORD_MAX, required=False)


_INVALID_CLICK_FIELDS: Final = frozenset({"schema_version", "click_id", "impression_id", "ts", "user_id", "reason"})


def check_invalid_click(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _INVALID_CLICK_FIELDS)
    c.version(r, required=True)
    _raw_click_fields(r, c)
    c.choice(r, "reason", INVALID_CLICK_REASONS)


_LEDGER_FIELDS: Final = frozenset({"schema_version", "entry_id", "kind", "campaign_id", "advertiser_id",
                                   "amount_micros", "ts", "overdelivery"})


def check_ledger_entry(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _LEDGER_FIELDS)
    c.version(r, required=True)
    c.text(r, "entry_id", hi=IMPRESSION_ID_MAX)
    c.choice(r, "kind", LEDGER_KINDS)
    c.ident(r, "campaign_id")
    c.ident(r, "advertiser_id")
    amount_ok = c.integer(r, "amount_micros")
    c.integer(r, "ts")
    if c.boolean(r, "overdelivery") and r["overdelivery"] and amount_ok and r["amount_micros"] != 0:
        c.problem("amount_micros", f"must be 0 when overdelivery is true, got {r['amount_micros']}")


_REPORT_FIELDS: Final = frozenset({"schema_version", "campaign_id", "window_start", "window_end", "impressions",
                                   "clicks", "spend_micros", "ctr", "ecpm_micros", "conversions",
                                   "conversion_value_micros"})


def check_campaign_minute(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _REPORT_FIELDS)  # also keeps user and session ids out of advertiser reports
    c.version(r, required=True)
    c.ident(r, "campaign_id")
    for key in ("window_start", "window_end", "impressions", "clicks", "spend_micros"):
        c.integer(r, key)
    c.number(r, "ctr")
    c.integer(r, "ecpm_micros")
    c.integer(r, "conversions")
    c.integer(r, "conversion_value_micros")


_DLQ_FIELDS: Final = frozenset({"schema_version", "source_topic", "partition", "offset", "key_b64", "value_b64",
                                "truncated", "error", "ts"})
_BASE64: Final = (re.compile(r"[A-Za-z0-9+/]*={0,2}"), "must be standard base64")
BASE64_MAX: Final = 349_528  # base64 of the 256 KiB kept of an oversized key or value


def check_dlq(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _DLQ_FIELDS)
    c.version(r, required=True)
    c.text(r, "source_topic", hi=249)
    c.integer(r, "partition")
    c.integer(r, "offset")
    for key in ("key_b64", "value_b64"):
        if r.get(key, "") is not None:
            c.text(r, key, lo=0, hi=BASE64_MAX, pattern=_BASE64)
    c.boolean(r, "truncated")
    c.text(r, "error", hi=1000)
    c.integer(r, "ts")


_AUTOPILOT_FIELDS: Final = frozenset({"schema_version", "campaign_id", "version", "ts", "bid", "keywords", "categories",
                                      "keywords_added", "keywords_removed", "reason"})
_AUTOPILOT_BID_FIELDS: Final = frozenset({"type", "amount_micros"})
_AUTOPILOT_LIST_MAX: Final = 64


def check_autopilot_decision(r: Record, c: Checks = STRICT) -> None:
    """A `campaigns.autopilot` record (what the autopilot role writes; workers read it)."""
    c.unknown_fields(r, _AUTOPILOT_FIELDS)
    c.version(r, required=True)
    c.ident(r, "campaign_id")
    c.integer(r, "version", lo=1)
    c.integer(r, "ts")
    bid = r.get("bid", MISSING)
    if bid is None:
        pass
    elif type(bid) is dict:
        c.unknown_fields(bid, _AUTOPILOT_BID_FIELDS, "bid.")
        c.choice(bid, "type", ("cpc",), "bid.")
        c.integer(bid, "amount_micros", "bid.", lo=1)
    else:
        c.problem("bid", f"must be an object {{type: cpc, amount_micros}} or null, got {show(bid)}")
    for key in ("keywords", "keywords_added", "keywords_removed"):
        c.texts(r, key, max_items=_AUTOPILOT_LIST_MAX, hi=KEYWORD_MAX)
    c.texts(r, "categories", max_items=_AUTOPILOT_LIST_MAX, hi=16)
    c.text(r, "reason", hi=1000)


_FEED_FIELDS: Final = frozenset({"schema_version", "campaign_id", "window_start", "window_end", "impressions", "clicks",
                                 "spend_micros", "price_sum_micros", "priced_impressions", "all_prices_micros",
                                 "keywords", "via_category", "conversions"})
_FEED_KEYWORD_FIELDS: Final = frozenset({"keyword", "impressions", "clicks", "spend_micros"})
_FEED_VIA_FIELDS: Final = frozenset({"keyword", "impressions", "clicks"})
FEED_KEYWORDS_MAX: Final = 64
FEED_VIA_CATEGORY_MAX: Final = 200


def check_autopilot_feed(r: Record, c: Checks = STRICT) -> None:
    """An `autopilot.feed` record (internal: the autopilot-feed role writes it, the autopilot reads it)."""
    c.unknown_fields(r, _FEED_FIELDS)
    c.version(r, required=True)
    c.ident(r, "campaign_id")
    for key in ("window_start", "window_end", "impressions", "clicks", "spend_micros", "price_sum_micros",
                "priced_impressions", "all_prices_micros"):
        c.integer(r, key)
    c.integer(r, "conversions", default=0)  # absent on windows written before conversions existed
    for key, fields, most in (("keywords", _FEED_KEYWORD_FIELDS, FEED_KEYWORDS_MAX),
                              ("via_category", _FEED_VIA_FIELDS, FEED_VIA_CATEGORY_MAX)):
        items = c.array(r, key, hi=most)
        for index, item in enumerate(items or ()):
            where = f"{key}[{index}]."
            if type(item) is not dict:
                c.problem(f"{key}[{index}]", f"must be an object, got {show(item)}")
                continue
            c.unknown_fields(item, fields, where)
            c.text(item, "keyword", where, hi=KEYWORD_MAX)
            for count in sorted(fields - {"keyword"}):
                c.integer(item, count, where)
