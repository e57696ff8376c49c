"""The JSON Schema files themselves: valid draft 2020-12, documented, self-contained, with examples
that pass, and an IAB enum that is exactly the taxonomy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from core.topics import TOPICS
from schemas import IAB_CATEGORIES, decode, encode, json_schema, schema_file

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.json"))
EXPECTED = {"chat.intents", "dlq", "ad.decisions", "ad.impressions", "ad.clicks.raw", "ad.clicks",
            "ad.clicks.invalid", "billing.ledger", "reports.campaign-minute", "campaign", "campaigns.autopilot", "autopilot.feed", "user.controls",
            "user.controls.applied", "policy", "ad.conversions.raw", "ad.conversions", "ad.conversions.invalid",
            "conversions.pending", "conversions.by-campaign", "advertisers", "user.controls.state"}


def load(path: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return parsed


def test_one_schema_per_record() -> None:
    assert {path.stem for path in SCHEMA_FILES} == EXPECTED


def test_every_contract_topic_has_its_schema() -> None:
    for topic in TOPICS:
        assert schema_file(topic).is_file(), topic


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_is_valid_draft_2020_12_and_documented(path: Path) -> None:
    schema = load(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{path.name}")
    assert schema["title"] == path.stem
    assert len(schema["description"]) > 40
    assert schema["examples"], "every schema carries at least one example"
    # Self-contained: external tools (the contract smoke test) validate with no registry.
    refs = _walk(schema, "$ref")
    assert all(ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"] for ref in refs)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_schema_version_is_const_1(path: Path) -> None:
    schema = load(path)
    version = schema["properties"]["schema_version"]
    assert version["const"] == 1 and version["type"] == "integer"
    is_input = path.stem in {"chat.intents", "ad.clicks.raw", "ad.conversions.raw", "user.controls", "campaign"}
    assert ("schema_version" in schema["required"]) is not is_input
    assert (version.get("default") == 1) is is_input


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_examples_pass_jsonschema_and_the_codec(path: Path) -> None:
    schema = load(path)
    validator = Draft202012Validator(schema)
    topic = {"campaign": "campaigns", "dlq": "chat.intents.dlq"}.get(path.stem, path.stem)
    for example in schema["examples"]:
        assert not list(validator.iter_errors(example))
        decode(topic, encode(example))


def test_input_records_tolerate_unknown_fields_and_ours_refuse_them() -> None:
    for path in SCHEMA_FILES:
        schema = load(path)
        tolerant = path.stem in {"chat.intents", "ad.clicks.raw", "user.controls"}
        assert ("additionalProperties" not in schema) is tolerant, path.stem


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_iab_enum_is_exactly_the_taxonomy(path: Path) -> None:
    schema = load(path)
    if "iab_category" in schema["$defs"]:
        assert schema["$defs"]["iab_category"]["enum"] == list(IAB_CATEGORIES)


def test_chat_intents_required_and_defaulted_fields() -> None:
    schema = json_schema("chat.intents")
    assert set(schema["required"]) == {"event_id", "ts", "user_id", "session_id", "placement", "intent", "locale",
                                       "country", "device", "consent"}
    props = schema["properties"]
    defaults = {key: props[key]["default"] for key in props if "default" in props[key]}
    assert defaults == {"schema_version": 1, "slots": 1, "safety": {"labels": []}, "age_bracket": "unknown"}
    assert props["consent"]["properties"]["personalization"]["default"] is True
    assert set(props["intent"]["required"]) == {"category", "keywords", "confidence"}
    assert "default" not in props["floor_cpm_micros"]  # absent means no reserve


def test_no_fill_reason_enum_is_the_contract() -> None:
    reasons = json_schema("ad.decisions")["properties"]["no_fill_reason"]["enum"]
    assert reasons == [None, "no_candidates", "below_floor", "budget", "frequency_cap", "pacing", "brand_safety",
                       "no_consent", "minor", "sensitive_topic", "user_hidden"]


def _walk(node: Any, key: str) -> list[Any]:
    found: list[Any] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            found += _walk(item, key)
    return found
