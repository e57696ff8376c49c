"""The hand-written validators (schemas/records.py, schemas/campaign.py) and the JSON Schema files say
the same thing: every record generated from a schema passes both (with the schema's defaults filled
in), and every single-point mutation of such a record gets the same verdict from both, with the codec
naming the mutated field.

Known, deliberate differences (tested in test_codec.py, excluded here): the codec refuses integral
floats such as 1.0 where an integer is due (JSON Schema's "integer" accepts them), and the campaign
rules JSON Schema cannot say (code_only_violation)."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec, decode, encode
from schemas.checks import Checks, RecordError
from tests.schemas.schema_strategies import (
    TOPICS,
    Judge,
    code_only_violation,
    mutations,
    valid_records,
    with_defaults,
)

# A mutation may be reported at another field when a conditional rule ties the two together.
CONDITIONAL_PARTNERS: dict[str, set[str]] = {
    "ad.decisions": {"no_fill_reason"},
    "ad.impressions": {"charge_micros"},
    "billing.ledger": {"amount_micros"},
    "campaigns": {"bid", "bid.type", "goal.target_micros"},  # a bid is required, or CPC, by the goal
    "user.controls": {"advertiser_id"},
    "user.controls.applied": {"advertiser_id"},
}

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


@cache
def judge(topic: str) -> Judge:
    return Judge(topic)


@cache
def records_of(topic: str) -> st.SearchStrategy[dict[str, Any]]:
    return valid_records(topic)


def generic_check(topic: str, record: dict[str, Any]) -> None:
    """The field checks without the chat.intents hot path (it runs only with the shared STRICT)."""
    codec.checker(topic)[0](record, Checks())  # type: ignore[call-arg]


@pytest.mark.parametrize("topic", TOPICS)
@SETTINGS
@given(data=st.data())
def test_generated_records_pass_both_with_schema_defaults(topic: str, data: st.DataObject) -> None:
    record = data.draw(records_of(topic))
    schema = judge(topic).schema
    assert judge(topic).schema_ok(record)
    assert decode(topic, encode(record)) == with_defaults(schema, schema, record)
    plain = copy.deepcopy(record)
    generic_check(topic, plain)
    assert plain == with_defaults(schema, schema, record)


@pytest.mark.parametrize("topic", TOPICS)
@settings(SETTINGS, max_examples=15)
@given(data=st.data())
def test_every_mutation_gets_the_same_verdict(topic: str, data: st.DataObject) -> None:
    record = data.draw(records_of(topic))
    check_mutations(topic, record)


@pytest.mark.parametrize("topic", TOPICS)
def test_mutations_of_the_schema_examples_get_the_same_verdict(topic: str) -> None:
    for example in judge(topic).schema["examples"]:
        check_mutations(topic, example)


def check_mutations(topic: str, record: dict[str, Any]) -> None:
    j = judge(topic)
    partners = CONDITIONAL_PARTNERS.get(topic, set())
    for path, mutated in mutations(j.schema, record):
        error = j.codec_error(mutated)
        generic_error = _generic_error(topic, mutated)
        assert (error is None) == (generic_error is None), (path, mutated, error, generic_error)
        if code_only_violation(topic, mutated):
            assert error is not None, (path, mutated)
            continue
        assert (error is None) == j.schema_ok(mutated), (path, mutated, error)
        if error is not None:
            named = error.field == path or error.field.startswith((path + ".", path + "[")) or error.field in partners
            assert named, (path, str(error))


def _generic_error(topic: str, record: dict[str, Any]) -> RecordError | None:
    try:
        generic_check(topic, copy.deepcopy(record))
    except RecordError as error:
        return error
    return None
