"""Records of every Vickrey topic: JSON Schemas (the contract, `schemas/*.json`), the codec that reads
and writes them, campaign and policy validation, and the IAB category taxonomy."""

from schemas.campaign import (
    DEFAULT_POLICY,
    iso_to_ms,
    restricted_vertical_problem,
    validate_campaign,
    validate_policy,
)
from schemas.checks import RecordError
from schemas.codec import applied_control, decode, dlq_record, encode, json_schema, schema_file, validate
from schemas.iab import IAB_CATEGORIES, ancestors, parent

__all__ = [
    "DEFAULT_POLICY",
    "IAB_CATEGORIES",
    "RecordError",
    "ancestors",
    "applied_control",
    "decode",
    "dlq_record",
    "encode",
    "iso_to_ms",
    "json_schema",
    "parent",
    "restricted_vertical_problem",
    "schema_file",
    "validate",
    "validate_campaign",
    "validate_policy",
]
