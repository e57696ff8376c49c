"""The contract's two forms stay equal: docs/contract.md (the repository's copy of the design and
contract) and docs/records.md (rendered from the JSON Schemas) against schemas/*.json, and the
repository's copies against the shared originals where those exist. Files only: no Kafka, no Redis.

What the schema files themselves must be (valid, documented, examples that pass, the IAB enum) is
tests/schemas/test_schema_files.py; this file is about the documents."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas import reference, schema_file

try:
    from core.topics import TOPICS
except ImportError:  # before the move to core/
    from vickrey.settings import TOPICS  # type: ignore[no-redef,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("VICKREY_SHARED", ROOT.parent / "shared"))  # as in tests/conftest.py
CONTRACT = ROOT / "docs" / "contract.md"
RECORDS = ROOT / "docs" / "records.md"
SCHEMA_DIR = ROOT / "schemas"
VECTORS = ROOT / "tests" / "data" / "auction_vectors.json"

# Records with a schema that are no entry of TOPICS: campaign.json is also what `vickrey campaigns
# apply` takes, dlq.json every `{topic}.dlq`. (What `vickrey policy apply` takes is `$defs.policy` of
# policy.json, the `policy` topic's record.)
EXTRA_RECORDS = ("campaign", "dlq")

# The only edits of the copy besides its header: paths into the shared folder become the repository's own.
REPO_PATHS = {"`shared/examples/auction_vectors.json`": "`tests/data/auction_vectors.json`",
              "`shared/data/`": "`schemas/data/`"}

# Record headings (`**name**`) whose name is not their schema's.
HEADING_SCHEMA = {"{topic}.dlq": "dlq", "Campaign": "campaign"}

# Schemas of records that have no record heading in §3, §7 or §8, and where the contract speaks of them.
DESCRIBED_ELSEWHERE = {
    "user.controls": "§4b: a bullet gives {user_id, action, advertiser_id, ts}",
    "user.controls.applied": "§4b: named as the confirmation of each applied control, no fields",
    "policy": "§4b: sensitive topics and restricted verticals, no record format; §9: kept on a compacted topic",
    "advertisers": "§9: advertisers' key hashes, kept on a compacted topic, no record format",
    "user.controls.state": "§9: people's controls, kept on a compacted topic, no record format",
}

# Vickrey's own records between its roles: not in the contract, documented in docs/records.md only.
INTERNAL = {"autopilot.feed": "the autopilot-feed role's aggregates for the autopilot (streams/autopilot_feed.py)",
            "conversions.pending": "conversions waiting for their click (streams/conversions.py)",
            "conversions.by-campaign": "attributed conversions keyed by campaign, for reporting (streams/reporting.py)"}

# §3 states it once for every record ("Every record carries `schema_version`"), no record lists it.
STATED_ONCE = {"schema_version"}

# Records whose prose starts from another record's fields ("the raw fields plus …", "the raw click plus …").
BUILDS_ON = {"ad.clicks": "ad.clicks.raw", "ad.clicks.invalid": "ad.clicks.raw",
             "ad.conversions": "ad.conversions.raw", "ad.conversions.invalid": "ad.conversions.raw"}

# Required by a schema but named nowhere in its record's prose: each one is a disagreement to settle
# (add the field to DESIGN.md and docs/contract.md, or drop it from the schema). Listed by name so that
# every other field stays checked; the test fails as soon as an entry is no longer needed.
SCHEMA_ONLY = {
    # schemas/README.md: a DLQ key or value over 256 KiB keeps its first 256 KiB and sets `truncated`.
    "dlq": {"truncated"},
    # §8 (not §3's record paragraph): "`reports.campaign-minute` gains `conversions` and `conversion_value_micros`".
    "reports.campaign-minute": {"conversions", "conversion_value_micros"},
}

# Topics that §7 (autopilot) and §8 (conversions) define and that are not built yet: no schema, no
# entry in TOPICS. Whoever adds one's schema removes it here; its record is then checked like §3's.
NOT_YET_BUILT: tuple[str, ...] = ()

HEADING = re.compile(r"\*\*([\w{}.-]+)\*\*")
# A backticked name, a bracket, or a full stop that ends a sentence (not `0..1`, not inside backticks).
TOKEN = re.compile(r"`([^`]*)`|[(\[{]|[)\]}]|\.(?=\s|$)")
# Between a field and the first of its values: "`reason`: `unknown_impression`", "`x`: null or one of `a`".
VALUES_GAP = re.compile(r"\s*:\s*(null or one of\s*)?")
# A parenthesis after a field that lists its values: "`kind` (`impression`|`click`)".
ALTERNATIVES = re.compile(r"`[^`]+`(?:\|`[^`]+`)+")


@dataclass
class Prose:
    """What a record's paragraph says: its top-level fields and the values it lists for some of them."""

    fields: list[str] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)


def contract() -> str:
    return CONTRACT.read_text(encoding="utf-8")


def section(number: str) -> str:
    match = re.search(rf"^## {re.escape(number)}\. .*?(?=^## |\Z)", contract(), re.M | re.S)
    assert match, f"docs/contract.md has no section {number}"
    return match.group()


def is_heading(name: str) -> bool:
    return "." in name or name in HEADING_SCHEMA  # not **micros**, **contract**


def record_paragraphs(text: str) -> dict[str, str]:
    """Record heading → its text, from after the heading to the next heading or blank line."""
    found = [match for match in HEADING.finditer(text) if is_heading(match.group(1))]
    ends = [match.start() for match in found[1:]] + [len(text)]
    return {match.group(1): text[match.end():end].split("\n\n")[0] for match, end in zip(found, ends, strict=True)}


def read_record(paragraph: str) -> Prose:
    """The backticked names outside any (), [] or {} of the paragraph's first sentence are its fields,
    except that a field followed by `:` and directly a name (or "null or one of") starts the list of
    that field's values, which runs to the end of the sentence."""
    prose, depth, gap, pos = Prose(), 0, "", 0
    listing: str | None = None
    group: tuple[str, int] | None = None  # (field, start) of a parenthesis right after a field
    for match in TOKEN.finditer(paragraph):
        if depth == 0:
            gap += paragraph[pos:match.start()]
        pos, token, name = match.end(), match.group(), match.group(1)
        if name is not None:
            if depth:
                continue
            if listing:
                prose.values[listing].append(name)
            elif prose.fields and VALUES_GAP.fullmatch(gap):
                listing = prose.fields[-1]
                prose.values[listing] = [name]
            else:
                prose.fields.append(name)
            gap = ""
        elif token in "([{":
            if depth == 0 and token == "(" and prose.fields and not gap.strip() and not listing:
                group = (prose.fields[-1], match.end())
            gap += token if depth == 0 else ""
            depth += 1
        elif token in ")]}":
            depth -= 1
            if depth == 0 and group:
                alternatives = ALTERNATIVES.match(paragraph, group[1], match.start())
                if alternatives:
                    prose.values[group[0]] = re.findall(r"`([^`]+)`", alternatives.group())
                group = None
        elif depth == 0:
            break  # the first sentence ends
    return prose


def schema_of(name: str) -> Path:
    return SCHEMA_DIR / f"{HEADING_SCHEMA.get(name, name)}.json"


def load(path: Path) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return parsed


def headings(*numbers: str) -> dict[str, str]:
    return {name: text for number in numbers for name, text in record_paragraphs(section(number)).items()}


BUILT = sorted(name for name in headings("3", "7", "8") if schema_of(name).is_file())


def test_records_md_is_rendered_from_the_schemas() -> None:
    assert RECORDS.read_text(encoding="utf-8") == reference.render(), (
        "docs/records.md is out of date: python -m schemas.reference > docs/records.md")


def test_every_topic_has_a_schema_and_a_section_in_records_md() -> None:
    sections = re.findall(r"^## (\S+)$", RECORDS.read_text(encoding="utf-8"), re.M)
    for topic in (*TOPICS, *EXTRA_RECORDS):
        assert schema_file(topic).stem in sections, topic


def test_every_record_heading_has_a_schema_and_every_schema_a_place_in_the_contract() -> None:
    in_3 = headings("3")
    assert [name for name in in_3 if not schema_of(name).is_file()] == []
    documented = {schema_of(name).stem for name in BUILT} | set(DESCRIBED_ELSEWHERE) | set(INTERNAL)
    assert documented == {path.stem for path in SCHEMA_DIR.glob("*.json")}
    assert "`schema_version`" in section("3").split("**", 1)[0], "§3 no longer states schema_version for all"


@pytest.mark.parametrize("name", BUILT)
def test_record_prose_and_schema_name_the_same_fields(name: str) -> None:
    paragraph = headings("3", "7", "8")[name]
    assert (name in BUILDS_ON) == bool(re.search(r"\bthe raw \w+ plus\b", paragraph)), name
    prose = read_record(paragraph)
    fields = set(prose.fields)
    if name in BUILDS_ON:
        fields |= set(read_record(headings("3", "7", "8")[BUILDS_ON[name]]).fields)
    schema = load(schema_of(name))
    stem = schema_of(name).stem
    assert sorted(fields - set(schema["properties"])) == [], "named in the contract, not in the schema"
    unnamed = set(schema["required"]) - fields - STATED_ONCE
    assert sorted(unnamed - SCHEMA_ONLY.get(stem, set())) == [], "required by the schema, not in the contract"
    assert unnamed >= SCHEMA_ONLY.get(stem, set()), "settled: drop it from SCHEMA_ONLY (named, or not required)"
    for key, values in prose.values.items():
        enum = reference.resolve(schema, schema["properties"][key]).get("enum", [])
        assert set(values) == {value for value in enum if value is not None}, key


def test_not_yet_built_topics_have_no_schema_yet() -> None:
    unbuilt = sorted(name for name in headings("7", "8") if not schema_of(name).is_file())
    assert unbuilt == sorted(NOT_YET_BUILT), "NOT_YET_BUILT must be exactly the §7/§8 records without a schema"
    for topic in NOT_YET_BUILT:
        assert not (SCHEMA_DIR / f"{topic}.json").exists(), f"{topic} has a schema now: drop it from NOT_YET_BUILT"
        assert topic not in TOPICS, f"{topic} is a topic now: give it a schema and drop it from NOT_YET_BUILT"


def test_contract_stands_on_its_own() -> None:
    text = contract()
    assert re.findall(r"^## (\w+)\.", text, re.M) == ["1", "2", "3", "4", "4b", "5", "6", "7", "8", "9"]
    assert not re.findall(r"\bshared/", text), "a path into the shared folder, which a clone does not have"
    for path in REPO_PATHS.values():
        assert path in text and (ROOT / path.strip("`")).exists(), path
    header = text.split("\n\n")[1]
    assert header.startswith("> ") and "`schemas/`" in header and "`tests/docs/test_contract.py`" in header


def test_contract_is_the_shared_design_verbatim() -> None:
    design = SHARED / "DESIGN.md"
    if not design.is_file():
        pytest.skip(f"{design} not found (set VICKREY_SHARED): docs/contract.md is then the source")
    expected = design.read_text(encoding="utf-8")
    for shared, own in REPO_PATHS.items():
        expected = expected.replace(shared, own)
    title, _header, body = contract().split("\n\n", 2)
    assert f"{title}\n\n{body}" == expected, "docs/contract.md differs from DESIGN.md beyond its header and paths"


def test_auction_vectors_are_the_shared_ones() -> None:
    shared = SHARED / "examples" / "auction_vectors.json"
    if not shared.is_file():
        pytest.skip(f"{shared} not found (set VICKREY_SHARED): tests/data/auction_vectors.json is then the source")
    assert VECTORS.read_bytes() == shared.read_bytes()
