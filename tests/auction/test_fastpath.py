"""The compiled steps (Rust, fastpath/) against their Python references (auction/fastpath.py).

The intake: whatever bytes it is given, the compiled intake either leaves the value to the
reference (`None`) or gives what the reference gives: the same `AuctionRequest`, field by field,
and the intent fields the records repeat. It may only accept what `schemas.codec.decode` accepts.

The writer: for any outcome, the compiled writer gives the reference's bytes (records_of and
orjson), or leaves the outcome to it; an outcome the reference cannot encode, it never writes.

Both do the work on what the worker meets (the bench's intents and outcomes, the factories'), so
these tests cannot pass by leaving everything to the reference.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auction.engine import AuctionEngine
from auction.fastpath import Intake, Writer, read_intent, write_records
from auction.keywords import normalize_keyword
from auction.model import AuctionRequest
from auction.records import WINNERS, decode_compact, outcome_of
from loadtests import workload
from loadtests.engine_bench import build_index, validated
from schemas.codec import RecordError
from tests.auction.factories import NOW_MS, intent

INTAKE = Intake()
WRITER = Writer()
pytestmark = pytest.mark.skipif(INTAKE.compiled is None or WRITER.compiled is None,
                                reason="fastpath/ (Rust) is not built: `make native` with cargo")
FIELDS = [field.name for field in dataclasses.fields(AuctionRequest)]


def as_values(request: AuctionRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in FIELDS}


def projected(decoded: dict[str, Any]) -> dict[str, Any]:
    """The intent fields `records_of` and the worker read, as the reference's decoded intent has them."""
    fields = {key: decoded[key] for key in ("event_id", "user_id", "session_id", "placement", "ts")}
    fields["intent"] = {"category": decoded["intent"]["category"]}
    return fields


def agree(raw: bytes | None) -> bool:
    """Asserts the two agree on `raw`; True when the compiled intake read it itself."""
    compiled = INTAKE.read([raw], NOW_MS)[0]
    try:
        request, decoded = read_intent(raw, NOW_MS)
    except RecordError:
        assert compiled is None, raw
        return False
    if compiled is None:
        return False
    got_request, fields = compiled
    assert type(got_request) is AuctionRequest
    assert as_values(got_request) == as_values(request), raw
    assert fields == projected(decoded), raw
    # The intent kept in Rust for the compiled claim: its ids, and what it expands into, the same.
    parsed = INTAKE.parse([raw], NOW_MS)[0]
    assert parsed is not None
    assert (parsed.event_id, parsed.user_id) == (request.event_id, request.user_id)
    expanded_request, expanded_fields = parsed.expand()
    assert as_values(expanded_request) == as_values(request) and expanded_fields == fields, raw
    return True


def test_it_reads_the_intents_the_worker_meets() -> None:
    raws = [orjson.dumps(event) for event in workload.intents(2_000)]
    assert all(agree(raw) for raw in raws)
    assert agree(orjson.dumps(intent()))
    assert agree(json.dumps(intent(), indent=2).encode())  # whitespace anywhere JSON allows it


def test_defaults_are_filled_as_the_reference_fills_them() -> None:
    event = intent()
    for key in ("slots", "schema_version", "age_bracket", "floor_cpm_micros", "safety"):
        event.pop(key, None)
    event["consent"] = {"ads": True}
    assert agree(orjson.dumps(event))
    request = INTAKE.read([orjson.dumps(event)], NOW_MS)[0]
    assert request is not None
    assert (request[0].slots, request[0].reserve_cpm_micros, request[0].age_bracket) == (1, 0, "unknown")
    assert request[0].personalization is True and request[0].safety_labels == frozenset()


@pytest.mark.parametrize("raw", [
    None,  # a tombstone: the reference names it
    b"",
    b"[1, 2]",
    b'{"event_id": "e"}',
    orjson.dumps([intent()]),
    orjson.dumps(intent())[:-1],
    orjson.dumps({**intent(), "slots": 9}),
    orjson.dumps({**intent(), "ts": -1}),
    orjson.dumps({**intent(), "ts": 1.5}),
    orjson.dumps({**intent(), "ts": 2**53}),
    orjson.dumps({**intent(), "slots": True}),
    orjson.dumps({**intent(), "intent": [["IAB19-6"], ["laptop"], 0.9]}),  # an array where an object goes
    orjson.dumps({**intent(), "consent": [True, True]}),
    orjson.dumps({**intent(), "safety": None}),
    orjson.dumps({**intent(), "safety": {"labels": None}}),
    orjson.dumps({**intent(), "age_bracket": None}),
    orjson.dumps({**intent(), "intent": {"category": "IAB999", "keywords": [], "confidence": 1}}),
    orjson.dumps({**intent(), "intent": {"category": "IAB1", "keywords": [], "confidence": 1.0000000000000002}}),
    orjson.dumps({**intent(), "intent": {"category": "IAB1", "keywords": ["x" * 65], "confidence": 1}}),
    b'{"a":1e999,' + orjson.dumps(intent())[1:],  # orjson refuses an infinite number anywhere
    b'{"schema_version":1,' + orjson.dumps(intent())[1:],  # a repeated key: orjson keeps the last
    orjson.dumps({**intent(), "user_id": "x" * 129}),
    orjson.dumps({**intent(), "locale": ""}),
    b"\xef\xbb\xbf" + orjson.dumps(intent()),
    orjson.dumps(intent()).replace(b'"s-1"', b'"s-\xff"'),  # not UTF-8
])
def test_what_the_compiled_intake_must_not_accept_it_leaves_to_the_reference(raw: bytes | None) -> None:
    assert INTAKE.read([raw], NOW_MS)[0] is None or agree(raw)
    agree(raw)


@pytest.mark.parametrize("event", [
    {**intent(), "extra": 1},  # fields the schema does not name: Python tolerates them
    {**intent(), "device": "Móvil"},  # lowercasing beyond ASCII
    intent(keywords=["ＬＡＰＴＯＰ"]),  # NFKC
    intent(keywords=['say "hi"']),  # an escape in the JSON
])
def test_the_reference_reads_what_the_compiled_intake_leaves(event: dict[str, Any]) -> None:
    raw = orjson.dumps(event)
    assert INTAKE.read([raw], NOW_MS) == [None]
    read_intent(raw, NOW_MS)  # valid: the worker auctions it all the same


ASCII_WORDS = st.text(alphabet=st.sampled_from("abcdeisuyzhxAIESY \t\x0b\x0c\x1c-"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(ASCII_WORDS, max_size=5))
def test_keywords_are_normalised_as_python_normalises_them(raw_keywords: list[str]) -> None:
    # plurals (batteries, classes, bus, glass), case, Python's whitespace (\x0b, \x1c...), blanks
    event = intent(keywords=raw_keywords or ["laptop"])
    read = INTAKE.read([json.dumps(event, ensure_ascii=False).encode()], NOW_MS)[0]
    if any("\x1c" <= char <= "\x1f" or char in "\x0b\x0c\t" for keyword in raw_keywords for char in keyword):
        return  # control characters travel escaped in JSON: the reference reads those
    assert read is not None
    assert read[0].keywords == frozenset(filter(None, map(normalize_keyword, raw_keywords or ["laptop"])))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**60), max_value=2**60),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=140))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
# Values a field might well hold (so that many generated intents stay valid) beside any JSON value.
PLAUSIBLE = st.one_of(st.integers(0, 6), st.booleans(), st.sampled_from(["IAB1", "IAB19-6", "IAB25", "13_17", "unknown"]),
                      st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12),
                      st.lists(st.text(alphabet="abcs ", max_size=8), max_size=3), st.floats(0, 1))
ASCII_KEYWORD = st.text(alphabet="abcdeisy -ABS", max_size=12)
KEYWORDS = st.lists(st.one_of(ASCII_KEYWORD, ASCII_KEYWORD, ASCII_KEYWORD, st.text(max_size=6)), max_size=4)
KEYS = st.sampled_from(["schema_version", "event_id", "ts", "user_id", "session_id", "placement", "slots",
                        "floor_cpm_micros", "intent", "locale", "country", "device", "safety", "consent",
                        "age_bracket", "other"])
INNER = st.sampled_from([("intent", "category"), ("intent", "keywords"), ("intent", "confidence"),
                         ("intent", "other"), ("consent", "ads"), ("consent", "personalization"),
                         ("safety", "labels")])


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_on_any_intent_the_two_agree(data: st.DataObject) -> None:
    event = intent(keywords=data.draw(KEYWORDS))
    for _ in range(data.draw(st.integers(0, 3))):
        key = data.draw(KEYS)
        if data.draw(st.booleans()):
            event.pop(key, None)
        else:
            event[key] = data.draw(st.one_of(PLAUSIBLE, VALUES))
    for _ in range(data.draw(st.integers(0, 2))):
        outer, inner = data.draw(INNER)
        if isinstance(event.get(outer), dict):
            event[outer][inner] = data.draw(st.one_of(PLAUSIBLE, VALUES))
    try:
        raw = orjson.dumps(event)
    except TypeError:  # a surrogate hypothesis drew: orjson writes no such JSON
        return
    agree(raw)
    agree(json.dumps(event, ensure_ascii=False, separators=(", ", ": ")).encode())


# -- the writer ----------------------------------------------------------------------------------

def written(fields: dict[str, Any], outcome: list[Any], keywords: frozenset[str]) -> bool:
    """Asserts the compiled writer gives the reference's bytes or leaves the outcome (and leaves
    every outcome the reference cannot encode); True when it wrote it itself."""
    assert WRITER.compiled is not None
    compiled = WRITER.compiled.write(fields, outcome, keywords)
    try:
        reference = write_records(fields, outcome, keywords)
    except (TypeError, KeyError, orjson.JSONEncodeError):
        assert compiled is None
        return False
    if compiled is None:
        return False
    assert compiled == reference
    return True


def test_the_writer_writes_what_the_worker_publishes_and_replays() -> None:
    records = validated(workload.campaigns(n=2_000))
    engine = AuctionEngine(build_index(records))
    creatives = {record["campaign_id"]: record["creatives"] for record in records}
    filled = 0
    for event in workload.intents(1_000):
        raw = orjson.dumps(event)
        request, decoded = read_intent(raw, NOW_MS)
        compiled = INTAKE.read([raw], NOW_MS)[0]
        assert compiled is not None
        outcome = outcome_of(request.event_id, engine.run(request), NOW_MS, creatives, personalized=False)
        assert written(compiled[1], outcome, request.keywords)
        first = WRITER.write(compiled[1], outcome, request.keywords)
        assert first == write_records(decoded, outcome, request.keywords)  # the intake's few fields suffice
        assert WRITER.write(compiled[1], decode_compact(first[3]), request.keywords) == first  # a replay
        filled += bool(outcome[WINNERS])
    assert filled > 500  # most auctions of the workload fill: the winners' records were written


TEXTS = st.one_of(st.text(max_size=12), st.text(alphabet='"\\\n\t\x00\x1f\x7f\u2028é😀ab', max_size=8),
                  st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=3))
INTS = st.one_of(st.integers(-(2**20), 2**20), st.integers(-(2**70), 2**70))
FLOATS = st.one_of(st.floats(0, 1), st.floats(), st.sampled_from([1e-5, 1e-6, 1e16, 1e15, 5e-324, -0.0, 0.021]))
CREATIVES = st.fixed_dictionaries({"creative_id": TEXTS}, optional={"title": TEXTS, "url": st.one_of(TEXTS, INTS, st.none())})
WINNER = st.tuples(st.one_of(st.integers(1, 5), st.booleans()), TEXTS, TEXTS, st.one_of(CREATIVES, st.just({})), st.sampled_from(["cpm", "cpc"]),
                   INTS, INTS, INTS, INTS, st.one_of(st.none(), INTS), FLOATS,
                   st.one_of(st.lists(TEXTS, max_size=3), st.lists(TEXTS, max_size=3).map(tuple), TEXTS, st.none()),
                   st.one_of(st.none(), TEXTS)).map(list)


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({"event_id": TEXTS, "user_id": TEXTS, "session_id": TEXTS, "placement": TEXTS,
                              "ts": INTS, "intent": st.fixed_dictionaries({"category": st.one_of(st.none(), TEXTS)})}),
       st.tuples(INTS, st.one_of(st.none(), TEXTS), INTS, st.booleans(), st.lists(WINNER, max_size=3)).map(list),
       st.frozensets(TEXTS, max_size=4))
def test_on_any_outcome_the_writer_gives_the_references_bytes(fields: dict[str, Any], outcome: list[Any],
                                                              keywords: frozenset[str]) -> None:
    written(fields, outcome, keywords)


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_are_written_as_orjson_writes_them(pctr: float) -> None:
    fields = {"event_id": "e", "user_id": "u", "session_id": "s", "placement": "p", "ts": 1, "intent": {"category": "IAB1"}}
    winner = [1, "c", "a", {"creative_id": "k"}, "cpc", 1, 1, 0, 1, None, pctr, ("x",), "IAB1"]
    assert written(fields, [1, None, 0, False, [winner]], frozenset({"x"}))


def test_what_the_writer_must_not_write_it_leaves_to_the_reference() -> None:
    fields = {"event_id": "e", "user_id": "u", "session_id": "s", "placement": "p", "ts": 1, "intent": {"category": "IAB1"}}

    def outcome(**change: Any) -> list[Any]:
        winner = [1, "c", "a", {"creative_id": "k"}, "cpc", 1, 1, 0, 1, None, 0.5, ("x",), "IAB1"]
        for position, value in change.items():
            winner[int(position.removeprefix("at"))] = value
        return [1, None, 0, False, [winner]]

    deep: list[Any] = []
    for _ in range(300):  # deeper than orjson writes
        deep = [deep]
    looped: list[Any] = []
    looped.append(looped)  # contains itself
    assert WRITER.compiled is not None
    for case in (outcome(at11="ab"), outcome(at11=None), outcome(at0=True), outcome(at3={"creative_id": "k", "x": deep}),
                 outcome(at3={"creative_id": "k", "x": looped})):
        assert WRITER.compiled.write(fields, case, frozenset({"x"})) is None
        written(fields, case, frozenset({"x"}))
    assert WRITER.compiled.write(fields, tuple(outcome()), frozenset({"x"})) is None  # type: ignore[arg-type]
    assert WRITER.compiled.write(fields, outcome(), {"x"}) is None  # type: ignore[arg-type]
    assert written(fields, outcome(at3={"creative_id": "k", "x": [[[1]]]}), frozenset({"x"}))  # shallow nesting is fine


# -- in the worker's role -------------------------------------------------------------------------

class _Dlq:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def dlq(self, record: Any, error: Any, now_ms: int) -> Any:
        self.errors.append(str(error))
        return ("dlq", None, b"")


@pytest.mark.integration
async def test_the_worker_reads_each_intent_once_by_the_path_that_can_and_counts_the_paths(settings: Any) -> None:
    from aiokafka import ConsumerRecord  # noqa: PLC0415

    from auction.people import PeopleCache  # noqa: PLC0415
    from auction.worker import AuctionRole, Pending  # noqa: PLC0415
    from auction.worker_metrics import Tally, WorkerMetrics  # noqa: PLC0415
    from core.metrics import Metrics  # noqa: PLC0415
    from core.redis_client import redis_from_url  # noqa: PLC0415

    values = [orjson.dumps(intent("plain")), orjson.dumps({**intent("extra"), "extra": 1}), b'{"event_id": 1}', None]
    records = [ConsumerRecord("chat.intents", 0, n, 0, 0, None, value, None, 0, 0, []) for n, value in enumerate(values)]
    metrics, client, loop = Metrics(), redis_from_url(settings.redis), _Dlq()
    role = AuctionRole(settings, WorkerMetrics(metrics), client, PeopleCache())
    try:
        await role.start(loop)  # type: ignore[arg-type]
        pending: list[Pending] = []
        outputs: list[Any] = []
        tally = Tally()
        role._read_intents(records, NOW_MS, pending, outputs, tally)  # noqa: SLF001
        tally.publish(role.metrics)
    finally:
        await role.close()
        await client.aclose()
    assert [item.request.event_id for item in pending] == ["plain", "extra"]
    assert len(outputs) == 2 and loop.errors[1].endswith("no value (the Kafka record's value is null)")
    assert "event_id" in loop.errors[0]  # the reference names the bad field
    assert metrics.value("vickrey_auction_intake_total", path="compiled") == 1
    assert metrics.value("vickrey_auction_intake_total", path="reference") == 1
    assert metrics.value("vickrey_auction_rejected_total", kind="invalid") == 2
