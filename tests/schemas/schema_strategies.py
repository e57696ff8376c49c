"""Test helpers driven by the JSON Schema files: a hypothesis strategy of valid records, the defaults a
schema declares, single-point mutations of a record, and the two judges (jsonschema and the codec).

Supports the subset the schemas use: $ref to #/$defs, anyOf, enum, const, type, min/max(Length|Items),
minimum/maximum/exclusiveMinimum, pattern, properties/required/additionalProperties, if/then/else
(generated records are filtered through jsonschema for the conditionals).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas import RecordError, decode, encode, json_schema
from schemas.campaign import iso_to_ms

Json = Any
TOPICS = ("chat.intents", "ad.decisions", "ad.impressions", "ad.clicks.raw", "ad.clicks", "ad.clicks.invalid",
          "billing.ledger", "reports.campaign-minute", "campaigns", "campaigns.autopilot", "autopilot.feed", "user.controls",
          "user.controls.applied", "ad.conversions.raw", "ad.conversions", "ad.conversions.invalid", "conversions.pending",
          "conversions.by-campaign", "policy", "advertisers", "user.controls.state",
          "chat.intents.dlq")
INPUT_TOPICS = ("chat.intents", "ad.clicks.raw", "user.controls", "ad.conversions.raw")


class Judge:
    """jsonschema's and the codec's verdicts on one topic's records."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.schema = json_schema(topic)
        self.validator = Draft202012Validator(self.schema)

    def schema_ok(self, record: Json) -> bool:
        return bool(self.validator.is_valid(record))

    def codec_error(self, record: Json) -> RecordError | None:
        try:
            decode(self.topic, encode(record))
        except RecordError as error:
            return error
        return None


def resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follows a local $ref, keeping the sibling keywords (description)."""
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        node = {**root["$defs"][name], **{k: v for k, v in node.items() if k not in ("$ref", "description")}}
    return node


# --- valid records ---------------------------------------------------------------------------------

_EXTRA = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5),
                   st.lists(st.integers(0, 3), max_size=2))


def _text(node: dict[str, Any]) -> st.SearchStrategy[str]:
    lo, hi = node.get("minLength", 0), node.get("maxLength", 200)
    if "pattern" in node:
        return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
    return st.text(min_size=lo, max_size=min(hi, 40)) | st.text(min_size=hi, max_size=hi)


def _number(node: dict[str, Any]) -> st.SearchStrategy[float | int]:
    lo = node.get("minimum", node.get("exclusiveMinimum", -1e9))
    hi = node.get("maximum", 1e9)
    open_lo = "exclusiveMinimum" in node
    ints = st.integers(math.floor(lo) + (1 if open_lo and lo == math.floor(lo) else 0), math.floor(hi))
    return st.floats(lo, hi, exclude_min=open_lo, allow_nan=False) | ints


def strategy(root: dict[str, Any], node: dict[str, Any], path: str = "",
             overrides: dict[str, st.SearchStrategy[Json]] | None = None) -> st.SearchStrategy[Json]:
    overrides = overrides or {}
    if path in overrides:
        return overrides[path]
    node = resolve(root, node)
    if "anyOf" in node:
        return st.one_of([strategy(root, option, path, overrides) for option in node["anyOf"]])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "string":
        return _text(node)
    if kind == "integer":
        return st.integers(node.get("minimum", -(2**60)), node.get("maximum", 2**60))
    if kind == "number":
        return _number(node)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = strategy(root, node.get("items", {}), path + "[]", overrides)
        lo, hi = node.get("minItems", 0), node.get("maxItems", 6)
        return st.lists(items, min_size=lo, max_size=min(hi, lo + 4)) | st.lists(items, min_size=hi, max_size=hi)
    if kind == "object":
        props = node.get("properties", {})
        required = set(node.get("required", ()))
        prefix = path + "." if path else ""
        subs = {key: strategy(root, sub, prefix + key, overrides) for key, sub in props.items()}
        optional = {key: s for key, s in subs.items() if key not in required}
        if node.get("additionalProperties", True) is not False:
            optional["x_future_field"] = _EXTRA  # open records must tolerate what producers add
        return st.fixed_dictionaries({k: s for k, s in subs.items() if k in required}, optional=optional)
    raise AssertionError(f"unsupported schema node at {path!r}: {node}")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


_MOMENTS = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)).map(_iso)


def _repair_campaign(campaign: dict[str, Any]) -> dict[str, Any]:
    """Makes a schema-valid campaign satisfy the rules only code checks (see campaign.json)."""
    budget = campaign["budget"]
    budget["daily_micros"], budget["total_micros"] = sorted((budget["daily_micros"], budget["total_micros"]))
    for index, creative in enumerate(campaign["creatives"]):
        creative["creative_id"] = f"{creative['creative_id'][:120]}.{index}"
    start, end = campaign.get("start"), campaign.get("end")
    if start is not None and end is not None:
        campaign["start"], campaign["end"] = sorted((start, end), key=iso_to_ms)
        if campaign["start"] == campaign["end"]:
            campaign["end"] = None
    return campaign


_CAMPAIGN_OVERRIDES: dict[str, st.SearchStrategy[Json]] = {
    "pctr": st.integers(1, 10**6).map(lambda n: n / 10**6),
    "start": st.none() | _MOMENTS,
    "end": st.none() | _MOMENTS,
}


def valid_records(topic: str) -> st.SearchStrategy[dict[str, Any]]:
    judge = Judge(topic)
    root = judge.schema
    if topic == "campaigns":
        return strategy(root, root, overrides=_CAMPAIGN_OVERRIDES).map(_repair_campaign).filter(judge.schema_ok)
    return strategy(root, root).filter(judge.schema_ok)


# --- defaults ----------------------------------------------------------------------------------------


def with_defaults(root: dict[str, Any], node: dict[str, Any], value: Json) -> Json:
    """`value` with every default the schema declares filled in (what decode must return)."""
    node = resolve(root, node)
    if not isinstance(value, dict) or "properties" not in node:
        return value
    filled = dict(value)
    for key, sub in node["properties"].items():
        sub_node = resolve(root, sub)
        if key not in filled and "default" in sub_node:
            filled[key] = copy.deepcopy(sub_node["default"])
        if key in filled:
            filled[key] = with_defaults(root, sub_node, filled[key])
    return filled


# --- mutations ---------------------------------------------------------------------------------------

WRONG_VALUES: tuple[Json, ...] = (None, True, 7, -1, 0.5, "x", "", [], ["x"], {}, {"x": 1})


def _set(record: Json, steps: list[str | int], value: Json) -> Json:
    mutated = copy.deepcopy(record)
    target = mutated
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = value
    return mutated


def _delete(record: Json, steps: list[str | int]) -> Json:
    mutated = copy.deepcopy(record)
    target = mutated
    for step in steps[:-1]:
        target = target[step]
    del target[steps[-1]]
    return mutated


def _path(steps: list[str | int]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _edge_values(node: dict[str, Any], value: Json) -> list[Json]:
    """Values at and just past the node's limits."""
    edges: list[Json] = ["not-a-valid-value"] if "enum" in node else []
    if "minimum" in node or "maximum" in node or "exclusiveMinimum" in node:
        for bound in (node.get("minimum"), node.get("maximum"), node.get("exclusiveMinimum")):
            if isinstance(bound, int):
                edges += [bound - 1, bound, bound + 1]
    if "maxLength" in node:
        edges += ["a" * node["maxLength"], "a" * (node["maxLength"] + 1)]
    if node.get("minLength", 0) > 0:
        edges += ["a" * node["minLength"], "a" * (node["minLength"] - 1)]
    if isinstance(value, list) and value:
        if "maxItems" in node:
            edges += [value[:1] * node["maxItems"], value[:1] * (node["maxItems"] + 1)]
        if "minItems" in node:
            edges += [value[:1] * max(node["minItems"] - 1, 0)]
    return edges


def mutations(root: dict[str, Any], record: Json) -> Iterator[tuple[str, Json]]:
    """(dotted path, record changed at that one place): wrong types, edge values, each key removed,
    an unknown key added at every object level."""

    def walk(node: dict[str, Any], value: Json, steps: list[str | int]) -> Iterator[tuple[str, Json]]:
        node = resolve(root, node)
        if "anyOf" in node:
            for option in node["anyOf"]:
                yield from walk(option, value, steps)
            return
        if steps:
            for wrong in (*WRONG_VALUES, *_edge_values(node, value)):
                yield _path(steps), _set(record, steps, wrong)
        if isinstance(value, dict):
            yield _path([*steps, "zz_unknown"]), _set(record, [*steps, "zz_unknown"], 1)
            for key, sub in node.get("properties", {}).items():
                if key in value:
                    yield _path([*steps, key]), _delete(record, [*steps, key])
                    yield from walk(sub, value[key], [*steps, key])
        if isinstance(value, list) and "items" in node:
            for index, item in enumerate(value[:2]):
                yield from walk(node["items"], item, [*steps, index])

    yield from walk(root, record, [])


def _moment_ms(text: Json) -> int | None:
    try:
        return iso_to_ms(text) if isinstance(text, str) else None
    except ValueError:
        return None


def code_only_violation(topic: str, record: Json) -> str | None:
    """The campaign rules JSON Schema cannot say (campaign.json's description); None for other topics."""
    if topic != "campaigns" or not isinstance(record, dict):
        return None
    budget = record.get("budget")
    if isinstance(budget, dict) and all(type(budget.get(k)) is int for k in ("daily_micros", "total_micros")) \
            and budget["daily_micros"] > budget["total_micros"]:
        return "daily > total"
    creatives = record.get("creatives")
    if isinstance(creatives, list):
        ids = [c.get("creative_id") for c in creatives if isinstance(c, dict) and isinstance(c.get("creative_id"), str)]
        if len(ids) != len(set(ids)):
            return "duplicate creative_id"
    pctr = record.get("pctr")
    if isinstance(pctr, float) and round(pctr, 6) != pctr:
        return "pctr decimals"
    times = [record.get(k) for k in ("start", "end")]
    if any(isinstance(t, str) and _moment_ms(t) is None for t in times):
        return "not an ISO-8601 date-time with timezone"
    start, end = (_moment_ms(t) for t in times)
    if start is not None and end is not None and end <= start:
        return "end not after start"
    return None


def a_moment(days: int = 0) -> str:
    return _iso(datetime(2025, 11, 1, tzinfo=UTC) + timedelta(days=days))
