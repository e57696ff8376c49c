"""Validators of the conversion records (docs/contract.md §8), mirroring schemas/ad.conversions*.json
and the internal conversions.pending (tests prove they agree). The raw record is an input: unknown
fields are tolerated and defaults filled; the records we produce refuse unknown fields."""

from __future__ import annotations

from typing import Final

from schemas.checks import MISSING, STRICT, Checks, Record
from schemas.records import IMPRESSION_ID_MAX

CONVERSION_KINDS: Final = ("purchase", "signup", "lead", "other")
CONVERSION_SOURCES: Final = ("in_chat", "advertiser")
INVALID_CONVERSION_REASONS: Final = ("unknown_click", "duplicate", "expired", "before_click")
RAW_FIELDS: Final = ("conversion_id", "click_id", "ts", "kind", "value_micros", "source", "advertiser_id")


def check_conversion_raw(r: Record, c: Checks = STRICT) -> None:
    c.version(r)
    _reported_fields(r, c, value_default=0)


def _reported_fields(r: Record, c: Checks, value_default: object = MISSING) -> None:
    """Required on the records we write; `value_micros` defaults to 0 on the raw input."""
    c.text(r, "conversion_id")
    c.text(r, "click_id")
    c.integer(r, "ts")
    c.choice(r, "kind", CONVERSION_KINDS)
    c.integer(r, "value_micros", default=value_default)
    c.choice(r, "source", CONVERSION_SOURCES)
    c.ident(r, "advertiser_id", required=False)


_ATTRIBUTED_FIELDS: Final = frozenset({"schema_version", *RAW_FIELDS, "campaign_id", "impression_id", "click_ts"})


def check_conversion(r: Record, c: Checks = STRICT) -> None:
    """`ad.conversions`: attributed to a billable click."""
    c.unknown_fields(r, _ATTRIBUTED_FIELDS)
    c.version(r, required=True)
    _reported_fields(r, c)
    c.ident(r, "advertiser_id")
    c.ident(r, "campaign_id")
    c.text(r, "impression_id", hi=IMPRESSION_ID_MAX)
    c.integer(r, "click_ts")


_INVALID_FIELDS: Final = frozenset({"schema_version", *RAW_FIELDS, "reason"})


def check_invalid_conversion(r: Record, c: Checks = STRICT) -> None:
    c.unknown_fields(r, _INVALID_FIELDS)
    c.version(r, required=True)
    _reported_fields(r, c)
    c.choice(r, "reason", INVALID_CONVERSION_REASONS)


_PENDING_FIELDS: Final = frozenset({"schema_version", *RAW_FIELDS, "origin", "read_at", "due_at", "attempt"})


def check_pending_conversion(r: Record, c: Checks = STRICT) -> None:
    """`conversions.pending` (internal): a raw conversion waiting for its click."""
    c.unknown_fields(r, _PENDING_FIELDS)
    c.version(r, required=True)
    _reported_fields(r, c)
    c.text(r, "origin")
    c.integer(r, "read_at")
    c.integer(r, "due_at")
    c.integer(r, "attempt", lo=1, hi=64)
