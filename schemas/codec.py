"""Bytes ⇄ records for every topic of docs/contract.md §3, plus the DLQ and applied-control record builders.

`decode` is on the auction worker's hot path (~20k events/s on one core), so it parses with orjson
and validates with hand-written checks (schemas/records.py) rather than a generic JSON Schema
validator; the JSON Schema files stay the contract, and tests prove both agree.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import orjson

from schemas import conversions, records
from schemas.campaign import check_campaign, check_policy_record
from schemas.checks import RECORD_MAX_BYTES, Record, RecordError, show

__all__ = ["RecordError", "applied_control", "decode", "dlq_record", "encode", "json_schema", "schema_file", "validate"]

Validator = Callable[[Record], None]
STATE_MAX_BYTES: Final = 256 * 1024  # an advertiser's 1000 key hashes, a person's 1000 hidden advertisers

# Logical topic → (validator, byte limit). Inputs and ours alike are ≤ 64 KiB; a DLQ record may carry
# up to 256 KiB of the bytes it could not read.
_TOPICS: Final[dict[str, tuple[Validator, int]]] = {
    "chat.intents": (records.check_chat_intent, RECORD_MAX_BYTES),
    "ad.decisions": (records.check_decision, RECORD_MAX_BYTES),
    "ad.impressions": (records.check_impression, RECORD_MAX_BYTES),
    "ad.clicks.raw": (records.check_click_raw, RECORD_MAX_BYTES),
    "ad.clicks": (records.check_click, RECORD_MAX_BYTES),
    "ad.clicks.invalid": (records.check_invalid_click, RECORD_MAX_BYTES),
    "billing.ledger": (records.check_ledger_entry, RECORD_MAX_BYTES),
    "reports.campaign-minute": (records.check_campaign_minute, RECORD_MAX_BYTES),
    "campaigns": (check_campaign, RECORD_MAX_BYTES),
    "campaigns.autopilot": (records.check_autopilot_decision, RECORD_MAX_BYTES),
    "autopilot.feed": (records.check_autopilot_feed, RECORD_MAX_BYTES),
    "ad.conversions.raw": (conversions.check_conversion_raw, RECORD_MAX_BYTES),
    "ad.conversions": (conversions.check_conversion, RECORD_MAX_BYTES),
    "ad.conversions.invalid": (conversions.check_invalid_conversion, RECORD_MAX_BYTES),
    "conversions.pending": (conversions.check_pending_conversion, RECORD_MAX_BYTES),
    "conversions.by-campaign": (conversions.check_conversion, RECORD_MAX_BYTES),
    "user.controls": (records.check_user_control, RECORD_MAX_BYTES),
    "user.controls.applied": (records.check_user_control_applied, RECORD_MAX_BYTES),
    # Compacted copies of what Redis holds (docs/contract.md §9); larger, for long lists.
    "policy": (check_policy_record, 2 * RECORD_MAX_BYTES),
    "advertisers": (records.check_advertiser_record, STATE_MAX_BYTES),
    "user.controls.state": (records.check_controls_state, STATE_MAX_BYTES),
}
_DLQ: Final[tuple[Validator, int]] = (records.check_dlq, 2 * 1024 * 1024)
DLQ_KEEP_BYTES: Final = 256 * 1024  # of an oversized key or value, so the DLQ record fits a Kafka message
_ERROR_MAX: Final = 1000
SCHEMA_DIR: Final = Path(str(resources.files("schemas")))  # not __file__: this module may be compiled


def checker(topic: str) -> tuple[Validator, int]:
    """The field checks of a logical topic and its byte limit."""
    found = _TOPICS.get(topic)
    if found is not None:
        return found
    if topic.endswith(".dlq"):
        return _DLQ
    raise KeyError(f"no record schema for topic {topic!r}; logical names are {', '.join(_TOPICS)} and *.dlq")


def decode(topic: str, data: bytes | None) -> Record:
    """Parses and validates one record of the LOGICAL `topic`, filling defaults. Raises RecordError
    naming the first problem (`str(err)` is fit for a DLQ record), KeyError for an unknown topic."""
    check, limit = _TOPICS.get(topic) or checker(topic)
    if data is None:
        raise RecordError("", "no value (the Kafka record's value is null)")
    if len(data) > limit:
        raise RecordError("", f"{len(data)} bytes, over the {limit // 1024} KiB limit")
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _parse_error(data, exc) from None
    if type(record) is not dict:
        raise RecordError("", f"must be a JSON object, got {show(record)}")
    check(record)
    return record


def _parse_error(data: bytes, exc: orjson.JSONDecodeError) -> RecordError:
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as bad:
        return RecordError("", f"not valid UTF-8 at byte {bad.start}")
    return RecordError("", f"malformed JSON: {exc}")


def validate(topic: str, record: Record) -> Record:
    """Checks an already-parsed record of `topic` (e.g. one a test built), filling defaults in place."""
    checker(topic)[0](record)
    return record


def encode(record: Record) -> bytes:
    return orjson.dumps(record)


def _b64(raw: bytes | None) -> tuple[str | None, bool]:
    if raw is None:
        return None, False
    return base64.b64encode(raw[:DLQ_KEEP_BYTES]).decode("ascii"), len(raw) > DLQ_KEEP_BYTES


def dlq_record(source_topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
               error: str | BaseException, ts_ms: int) -> Record:
    """The `{topic}.dlq` record for an input that could not be read (schemas/dlq.json). `source_topic`
    is the Kafka topic as consumed (with any prefix); `error` is usually the RecordError."""
    key_b64, key_cut = _b64(key)
    value_b64, value_cut = _b64(value)
    words = (str(error) or type(error).__name__) if isinstance(error, BaseException) else error
    words = words or "unreadable record"  # the DLQ contract wants words, never an empty string
    if len(words) > _ERROR_MAX:
        words = words[: _ERROR_MAX - 1] + "…"
    return {"schema_version": 1, "source_topic": source_topic, "partition": partition, "offset": offset,
            "key_b64": key_b64, "value_b64": value_b64, "truncated": key_cut or value_cut, "error": words,
            "ts": ts_ms}


def applied_control(control: Record, partition: int, offset: int, applied_ts: int) -> Record:
    """The `user.controls.applied` confirmation of a decoded control read at (partition, offset)."""
    hide = control["action"] == "hide_advertiser"
    return {"schema_version": 1, "control_id": control.get("control_id") or f"{partition}:{offset}",
            "user_id": control["user_id"], "action": control["action"],
            "advertiser_id": control["advertiser_id"] if hide else None, "ts": control["ts"],
            "applied_ts": applied_ts}


def schema_file(topic: str) -> Path:
    """The JSON Schema of a logical topic (`campaigns` → campaign.json, `*.dlq` → dlq.json), or of
    `campaign` / `dlq` by name. The policy object `vickrey policy apply` takes is `$defs.policy` of
    the `policy` topic's schema."""
    name = {"campaigns": "campaign"}.get(topic, "dlq" if topic.endswith(".dlq") else topic)
    path = SCHEMA_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no JSON Schema for {topic!r}")
    return path


@cache
def _schema_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def json_schema(topic: str) -> dict[str, Any]:
    """A fresh copy of the parsed JSON Schema (for jsonschema in tests and for tooling)."""
    parsed: dict[str, Any] = json.loads(_schema_text(schema_file(topic)))
    return parsed
