"""Each live campaign's creatives, as the records carry them.

`LiveState` keeps them here; the Python steps read them as a mapping (`pick_creative`). The
compiled engine (auction/twin.py) keeps a copy already written as JSON, so that its claim copies
bytes instead of reading a Python dict per winner: every change is told to it (`mirror`), as
`CampaignIndex` and `SpendView` tell theirs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from schemas.checks import Record

# A creative as the records write it: its JSON, and its creative_id's JSON.
Encoded = tuple[bytes, bytes]


def encoded(creatives: list[Record]) -> list[Encoded] | None:
    """Each creative and its creative_id as orjson writes them inside a record (it writes a
    nested value as it writes that value alone); None when one cannot be written (not JSON, or
    no creative_id): the Python steps then meet that campaign's records and name the problem."""
    try:
        return [(orjson.dumps(creative), orjson.dumps(creative["creative_id"])) for creative in creatives]
    except (TypeError, KeyError, IndexError, orjson.JSONEncodeError):
        return None


class Creatives(Mapping[str, list[Record]]):
    def __init__(self, by_campaign: Mapping[str, list[Record]] | None = None) -> None:
        self._by_campaign: dict[str, list[Record]] = {}
        self.mirror: Any = None  # the compiled engine that keeps a copy (`EngineTwin.attach_creatives`)
        for campaign_id, creatives in (by_campaign or {}).items():
            self.set(campaign_id, creatives)

    def __getitem__(self, campaign_id: str) -> list[Record]:
        return self._by_campaign[campaign_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_campaign)

    def __len__(self) -> int:
        return len(self._by_campaign)

    def set(self, campaign_id: str, creatives: list[Record]) -> None:
        self._by_campaign[campaign_id] = creatives
        if self.mirror is not None:
            self.mirror.creatives_set(campaign_id, encoded(creatives))

    def remove(self, campaign_id: str) -> None:
        self._by_campaign.pop(campaign_id, None)
        if self.mirror is not None:
            self.mirror.creatives_remove(campaign_id)
