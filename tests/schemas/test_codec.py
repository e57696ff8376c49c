"""schemas.codec: round trips, defaults, and a corpus of bad records, each refused with an error that
names the field and the problem."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas import RecordError, applied_control, decode, dlq_record, encode, json_schema, validate
from schemas.bench import bench_decode
from tests.schemas.schema_strategies import TOPICS

# What the contract smoke tool (shared/tools/contract_smoke.py) sends.
SMOKE_INTENT: dict[str, Any] = {
    "schema_version": 1, "event_id": "smoke-1", "ts": 1764250000000, "user_id": "u-smoke-1",
    "session_id": "s-smoke-1", "placement": "chat_inline", "slots": 2,
    "intent": {"category": "IAB19-6", "keywords": ["smokek0"], "confidence": 0.9}, "locale": "en-US",
    "country": "US", "device": "desktop", "safety": {"labels": []}, "consent": {"ads": True},
    "floor_cpm_micros": 3000000,
}
MINIMAL_INTENT: dict[str, Any] = {
    "event_id": "e1", "ts": 1, "user_id": "u1", "session_id": "s1", "placement": "chat_inline",
    "intent": {"category": "IAB1", "keywords": [], "confidence": 1}, "locale": "en", "country": "US",
    "device": "mobile", "consent": {"ads": False},
}


def intent(**changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(SMOKE_INTENT)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = record
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return record


DELETE = object()


@pytest.mark.parametrize("topic", TOPICS)
def test_examples_round_trip(topic: str) -> None:
    for example in json_schema(topic)["examples"]:
        once = decode(topic, encode(example))
        assert decode(topic, encode(once)) == once
        assert orjson.loads(encode(once)) == once


def test_smoke_intent_decodes_with_defaults() -> None:
    decoded = decode("chat.intents", encode(SMOKE_INTENT))
    assert decoded["consent"] == {"ads": True, "personalization": True}
    assert decoded["age_bracket"] == "unknown"
    assert decoded["floor_cpm_micros"] == 3000000 and decoded["slots"] == 2


def test_minimal_intent_gets_every_default() -> None:
    decoded = decode("chat.intents", encode(MINIMAL_INTENT))
    assert decoded == {**MINIMAL_INTENT, "schema_version": 1, "slots": 1, "safety": {"labels": []},
                       "consent": {"ads": False, "personalization": True}, "age_bracket": "unknown"}
    assert "floor_cpm_micros" not in decoded  # optional without default: absent means no reserve


def test_defaults_are_fresh_objects() -> None:
    first = decode("chat.intents", encode(MINIMAL_INTENT))
    first["safety"]["labels"].append("changed")
    assert decode("chat.intents", encode(MINIMAL_INTENT))["safety"] == {"labels": []}


def test_empty_safety_object_gets_empty_labels() -> None:
    assert decode("chat.intents", encode(intent(safety={})))["safety"] == {"labels": []}


def test_unknown_fields_of_input_records_are_kept() -> None:
    decoded = decode("chat.intents", encode(intent(experiment="b", intent__sentiment=0.2)))
    assert decoded["experiment"] == "b" and decoded["intent"]["sentiment"] == 0.2


def test_limits_are_inclusive() -> None:
    record = intent(user_id="u" * 128, slots=5, intent__keywords=["k" * 64] * 32)
    assert decode("chat.intents", encode(record))["user_id"] == "u" * 128
    padded = intent(padding="")
    padded["padding"] = "x" * (64 * 1024 - len(encode(padded)))
    assert len(encode(padded)) == 64 * 1024
    decode("chat.intents", encode(padded))


# (topic, bytes, expected field, a word the problem must contain)
BAD: list[tuple[str, bytes | None, str, str]] = [
    ("chat.intents", b"{oops", "", "malformed JSON"),
    ("chat.intents", b'{"event_id": "e1",', "", "malformed JSON"),
    ("chat.intents", b"", "", "malformed JSON"),
    ("chat.intents", b"\xff\xfe", "", "not valid UTF-8 at byte 0"),
    ("chat.intents", b'{"event_id": "caf\xe9"}', "", "not valid UTF-8 at byte 17"),
    ("chat.intents", b"[1, 2]", "", "must be a JSON object"),
    ("chat.intents", b'"hello"', "", "must be a JSON object"),
    ("chat.intents", None, "", "null"),
    ("chat.intents", b'{"event_id": 7}', "event_id", "must be a string"),
    ("chat.intents", encode(intent(event_id=DELETE)), "event_id", "missing"),
    ("chat.intents", encode(intent(ts="yesterday")), "ts", "integer"),
    ("chat.intents", encode(intent(ts=-5)), "ts", "non-negative"),
    ("chat.intents", encode(intent(ts=2**53)), "ts", "2^53"),
    ("chat.intents", encode(intent(ts=1.5)), "ts", "integer"),
    ("chat.intents", encode(intent(ts=True)), "ts", "got true"),
    ("chat.intents", encode(intent(slots=0)), "slots", "from 1 to 5, got 0"),
    ("chat.intents", encode(intent(slots=6)), "slots", "from 1 to 5, got 6"),
    ("chat.intents", encode(intent(slots=9)), "slots", "must be an integer from 1 to 5, got 9"),
    ("chat.intents", encode(intent(slots="2")), "slots", "got '2'"),
    ("chat.intents", encode(intent(floor_cpm_micros=-1)), "floor_cpm_micros", "non-negative"),
    ("chat.intents", encode(intent(floor_cpm_micros=2.5)), "floor_cpm_micros", "integer"),
    ("chat.intents", encode(intent(user_id="u" * 129)), "user_id", "129 characters, over the 128-character limit"),
    ("chat.intents", encode(intent(session_id="")), "session_id", "must not be empty"),
    ("chat.intents", encode(intent(placement=None)), "placement", "got null"),
    ("chat.intents", encode(intent(intent=DELETE)), "intent", "missing"),
    ("chat.intents", encode(intent(intent=["x"])), "intent", "must be an object"),
    ("chat.intents", encode(intent(intent__category="IAB99")), "intent.category", "unknown IAB category 'IAB99'"),
    ("chat.intents", encode(intent(intent__category="iab19-6")), "intent.category", "unknown IAB category"),
    ("chat.intents", encode(intent(intent__category=19)), "intent.category", "IAB category code"),
    ("chat.intents", encode(intent(intent__keywords=["k"] * 33)), "intent.keywords", "33 items, over the 32-item limit"),
    ("chat.intents", encode(intent(intent__keywords=["ok", "k" * 65])), "intent.keywords[1]", "65 characters"),
    ("chat.intents", encode(intent(intent__keywords=["ok", "fine", "", 4])), "intent.keywords[3]", "must be a string"),
    ("chat.intents", encode(intent(intent__keywords="router")), "intent.keywords", "must be an array"),
    ("chat.intents", encode(intent(intent__confidence=1.01)), "intent.confidence", "from 0 to 1"),
    ("chat.intents", encode(intent(intent__confidence="high")), "intent.confidence", "number"),
    ("chat.intents", encode(intent(locale=DELETE)), "locale", "missing"),
    ("chat.intents", encode(intent(safety__labels=["ok", ""])), "safety.labels[1]", "must not be empty"),
    ("chat.intents", encode(intent(safety=[])), "safety", "must be an object"),
    ("chat.intents", encode(intent(consent=DELETE)), "consent", "missing"),
    ("chat.intents", encode(intent(consent__ads=DELETE)), "consent.ads", "missing"),
    ("chat.intents", encode(intent(consent__ads="yes")), "consent.ads", "true or false"),
    ("chat.intents", encode(intent(consent__personalization=1)), "consent.personalization", "true or false"),
    ("chat.intents", encode(intent(age_bracket="adult")), "age_bracket",
     "must be one of under_13, 13_17, 18_plus, unknown, got 'adult'"),
    ("chat.intents", encode(intent(schema_version=2)), "schema_version", "must be 1"),
    ("chat.intents", encode(intent(padding="x" * 70_000)), "", "over the 64 KiB limit"),
    ("ad.clicks.raw", b'{"click_id": "k1", "impression_id": "e1:1", "ts": 5}', "user_id", "missing"),
    ("ad.clicks.raw", encode({"click_id": "k1", "impression_id": "e" * 131, "ts": 5, "user_id": "u"}),
     "impression_id", "over the 130-character limit"),
    ("user.controls", encode({"user_id": "u1", "action": "hide_advertiser", "ts": 5}), "advertiser_id", "missing"),
    ("user.controls", encode({"user_id": "u1", "action": "mute", "ts": 5}), "action", "hide_advertiser"),
    ("user.controls", encode({"user_id": "u1", "action": "hide_advertiser", "advertiser_id": "a b", "ts": 5}),
     "advertiser_id", "A-Z a-z 0-9"),
]


@pytest.mark.parametrize(("topic", "data", "field", "words"), BAD, ids=[f"{b[2] or 'record'}:{b[3][:30]}" for b in BAD])
def test_bad_record_is_refused_naming_field_and_problem(topic: str, data: bytes | None, field: str,
                                                        words: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode(topic, data)
    assert caught.value.field == field
    assert words in caught.value.problem
    assert str(caught.value) == f"{field or '(record)'}: {caught.value.problem}"


def test_record_error_is_a_value_error_with_its_parts() -> None:
    error = RecordError("slots", "must be an integer from 1 to 5, got 9")
    assert isinstance(error, ValueError)
    assert str(error) == "slots: must be an integer from 1 to 5, got 9"
    assert str(RecordError("", "not valid UTF-8 at byte 0")) == "(record): not valid UTF-8 at byte 0"


def test_long_offending_values_are_cut_in_messages() -> None:
    with pytest.raises(RecordError) as caught:
        decode("chat.intents", encode(intent(age_bracket="z" * 5000)))
    assert len(str(caught.value)) < 200


def test_integral_floats_are_not_integers_unlike_json_schema() -> None:
    """A deliberate difference: JSON Schema's "integer" accepts 1.0; money, times and counts must be
    JSON integers, so the codec refuses it."""
    record = intent(slots=2.0)
    assert Draft202012Validator(json_schema("chat.intents")).is_valid(record)
    with pytest.raises(RecordError, match="slots: must be an integer from 1 to 5, got 2.0"):
        decode("chat.intents", encode(record))


def test_ids_with_a_trailing_newline_are_refused() -> None:
    """Python's `$` (used by jsonschema) matches before a final newline; the codec's full match does not."""
    campaign = copy.deepcopy(json_schema("campaign")["examples"][1])
    campaign["campaign_id"] = "c-9\n"
    with pytest.raises(RecordError) as caught:
        decode("campaigns", encode(campaign))
    assert caught.value.field == "campaign_id"


def test_unknown_topic_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="no record schema"):
        decode("chat.intent", b"{}")


def test_our_records_refuse_unknown_fields() -> None:
    click = {**json_schema("ad.clicks")["examples"][0], "user_agent": "x"}
    with pytest.raises(RecordError) as caught:
        validate("ad.clicks", click)
    assert caught.value.field == "user_agent" and "unknown field" in caught.value.problem


def test_decision_with_ads_has_no_reason_and_without_ads_has_one() -> None:
    filled, empty = (copy.deepcopy(e) for e in json_schema("ad.decisions")["examples"])
    filled["no_fill_reason"] = "budget"
    with pytest.raises(RecordError, match="no_fill_reason: must be null when ads is not empty"):
        validate("ad.decisions", filled)
    empty["no_fill_reason"] = None
    with pytest.raises(RecordError, match="no_fill_reason: must be one of no_candidates"):
        validate("ad.decisions", empty)


def test_ads_are_labelled_sponsored() -> None:
    decision = copy.deepcopy(json_schema("ad.decisions")["examples"][0])
    decision["ads"][0]["label"] = "Ad"
    with pytest.raises(RecordError) as caught:
        validate("ad.decisions", decision)
    assert caught.value.field == "ads[0].label"


def test_cpc_impressions_charge_nothing_and_overdelivery_charges_nothing() -> None:
    impression = {**json_schema("ad.impressions")["examples"][0], "bid_type": "cpc"}
    with pytest.raises(RecordError, match="charge_micros: must be 0 for a CPC bid"):
        validate("ad.impressions", impression)
    entry = {**json_schema("billing.ledger")["examples"][0], "overdelivery": True}
    with pytest.raises(RecordError, match="amount_micros: must be 0 when overdelivery is true"):
        validate("billing.ledger", entry)


def test_dlq_record_keeps_the_bytes_and_the_reason() -> None:
    try:
        decode("chat.intents", b"\xff\xfe")
    except RecordError as error:
        dead = dlq_record("p.chat.intents", 3, 41, None, b"\xff\xfe", error, 1764250000000)
    assert dead == {"schema_version": 1, "source_topic": "p.chat.intents", "partition": 3, "offset": 41,
                    "key_b64": None, "value_b64": base64.b64encode(b"\xff\xfe").decode(), "truncated": False,
                    "error": "(record): not valid UTF-8 at byte 0", "ts": 1764250000000}
    assert decode("chat.intents.dlq", encode(dead)) == dead


def test_dlq_record_of_an_oversized_value_is_truncated_and_marked() -> None:
    value = b"x" * (1024 * 1024)
    dead = dlq_record("chat.intents", 0, 0, b"user-1", value, "(record): 1048576 bytes, over the 64 KiB limit", 5)
    assert dead["truncated"] is True and dead["key_b64"] == base64.b64encode(b"user-1").decode()
    assert base64.b64decode(dead["value_b64"]) == value[: 256 * 1024]
    assert decode("chat.intents.dlq", encode(dead)) == dead
    assert Draft202012Validator(json_schema("dlq")).is_valid(dead)


def test_dlq_record_of_a_null_value_and_an_empty_error() -> None:
    dead = dlq_record("ad.clicks.raw", 1, 2, b"k", None, ValueError(), 7)
    assert dead["value_b64"] is None and dead["error"] == "ValueError"
    validate("ad.clicks.raw.dlq", dead)


def test_applied_control_echoes_the_control() -> None:
    control = decode("user.controls", encode({"user_id": "u1", "action": "hide_advertiser", "advertiser_id": "adv-7",
                                              "ts": 10, "client": "ios"}))
    applied = applied_control(control, 2, 1417, 12)
    assert applied == {"schema_version": 1, "control_id": "2:1417", "user_id": "u1", "action": "hide_advertiser",
                       "advertiser_id": "adv-7", "ts": 10, "applied_ts": 12}
    validate("user.controls.applied", applied)
    forget = decode("user.controls", encode({"user_id": "u1", "action": "forget", "ts": 11, "control_id": "c-77",
                                             "advertiser_id": "adv-7"}))
    applied = applied_control(forget, 0, 5, 13)
    assert applied["control_id"] == "c-77" and applied["advertiser_id"] is None
    validate("user.controls.applied", applied)


def test_bench_decode_reports_microseconds() -> None:
    assert 0 < bench_decode(200, repeats=1) < 10_000
