"""The live creatives: a mapping for the Python steps, told to the compiled engine as JSON."""

from __future__ import annotations

from typing import Any

import orjson

from auction.creatives import Creatives, encoded


class Told:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def creatives_set(self, campaign_id: str, pairs: Any) -> None:
        self.calls.append(("set", campaign_id, pairs))

    def creatives_remove(self, campaign_id: str) -> None:
        self.calls.append(("remove", campaign_id))


def test_each_creative_is_written_as_inside_a_record() -> None:
    creative = {"creative_id": "c-1", "title": "Ünïcode \"quoted\"\n", "n": 1.5, "tags": ["a", None]}
    record = orjson.dumps({"ads": [{"creative": creative}], "id": creative["creative_id"]})
    [(whole, creative_id)] = encoded([creative]) or []
    assert record == b'{"ads":[{"creative":' + whole + b'}],"id":' + creative_id + b"}"


def test_what_cannot_be_written_is_none() -> None:
    assert encoded([{"creative_id": "c-1", "title": {1, 2}}]) is None  # a set
    assert encoded([{"title": "no id"}]) is None
    assert encoded(["not a dict"]) is None
    assert encoded([{"creative_id": 2**70}]) is None  # past orjson's integers
    assert encoded([]) == []


def test_changes_are_told_to_the_mirror() -> None:
    creatives = Creatives({"c1": [{"creative_id": "x"}]})
    told = Told()
    creatives.mirror = told
    creatives.set("c2", [{"creative_id": "y"}])
    creatives.remove("c1")
    creatives.remove("absent")
    assert dict(creatives) == {"c2": [{"creative_id": "y"}]} and len(creatives) == 1
    assert told.calls == [("set", "c2", [(b'{"creative_id":"y"}', b'"y"')]), ("remove", "c1"), ("remove", "absent")]
