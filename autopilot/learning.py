"""Learned targeting (docs/contract.md §7): from an autopilot campaign's own impressions and clicks,
drop the keywords that take impressions without clicks and add the keywords of intents whose
clicks came through a category match. Pure: the autopilot role and the simulator share it.

Rules, each with the reason that goes on the `campaigns.autopilot` record:
- **Drop** a keyword the autopilot chose (derived or learned, never one the advertiser wrote)
  once it has had enough impressions that zero clicks would be unlikely (< 5 %) at the campaign's
  own click-through rate: n ≥ ln(0.05) / ln(1 - ctr), about 3 / ctr. Not after one impression.
- **Add** an intent keyword that reached the campaign only through a category and brought at
  least ADD_MIN_CLICKS clicks at a click-through rate no lower than the campaign's own.
- At most MAX_KEYWORDS keywords; the campaign keeps at least one keyword or its categories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_KEYWORDS = 32
MISS_PROBABILITY = 0.05
ADD_MIN_CLICKS = 2
CTR_FLOOR = 0.001  # no campaign rate below this is trusted for the drop rule
VIA_CATEGORY_KEPT = 500  # intent keywords remembered per campaign: the most clicked (bounded state)


@dataclass(slots=True)
class Counts:
    impressions: int = 0
    clicks: int = 0
    spend_micros: int = 0

    def add(self, impressions: int = 0, clicks: int = 0, spend_micros: int = 0) -> None:
        self.impressions += impressions
        self.clicks += clicks
        self.spend_micros += spend_micros


@dataclass(slots=True)
class KeywordCounts:
    """One campaign's counts: per keyword it matched, and per intent keyword of the impressions that
    reached it through a category only."""

    by_keyword: dict[str, Counts] = field(default_factory=dict)
    via_category: dict[str, Counts] = field(default_factory=dict)

    def impression(self, matched: tuple[str, ...], intent_keywords: frozenset[str], spend_micros: int = 0) -> None:
        for keyword in matched:
            self.by_keyword.setdefault(keyword, Counts()).add(impressions=1, spend_micros=spend_micros)
        if not matched:
            for keyword in intent_keywords:
                self.via_category.setdefault(keyword, Counts()).add(impressions=1)

    def click(self, matched: tuple[str, ...], intent_keywords: frozenset[str], spend_micros: int = 0) -> None:
        for keyword in matched:
            self.by_keyword.setdefault(keyword, Counts()).add(clicks=1, spend_micros=spend_micros)
        if not matched:
            for keyword in intent_keywords:
                self.via_category.setdefault(keyword, Counts()).add(clicks=1)

    def merge(self, other: KeywordCounts) -> None:
        """Add another set of counts (a feed window's) to these."""
        for mine, theirs in ((self.by_keyword, other.by_keyword), (self.via_category, other.via_category)):
            for keyword, counts in theirs.items():
                mine.setdefault(keyword, Counts()).add(counts.impressions, counts.clicks, counts.spend_micros)
        self.via_category = top_via_category(self.via_category, VIA_CATEGORY_KEPT)

    def to_state(self) -> dict[str, Any]:
        return {"by_keyword": {k: _triple(c) for k, c in self.by_keyword.items()},
                "via_category": {k: _triple(c) for k, c in self.via_category.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KeywordCounts:
        return cls({k: Counts(*v) for k, v in state["by_keyword"].items()},
                   {k: Counts(*v) for k, v in state["via_category"].items()})


def top_via_category(counts: dict[str, Counts], most: int) -> dict[str, Counts]:
    """At most `most` intent keywords: the most clicked, then the most seen (ties by name, so the
    same counts always keep the same keywords)."""
    if len(counts) <= most:
        return counts
    kept = sorted(counts.items(), key=lambda item: (-item[1].clicks, -item[1].impressions, item[0]))[:most]
    return dict(kept)


def _triple(counts: Counts) -> list[int]:
    return [counts.impressions, counts.clicks, counts.spend_micros]


@dataclass(frozen=True, slots=True)
class TargetingChange:
    keywords: tuple[str, ...]  # the effective list after the change
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reason: str


def impressions_to_judge(ctr: float) -> int:
    """Impressions after which zero clicks is unlikely (< MISS_PROBABILITY) at this click rate."""
    rate = min(0.5, max(CTR_FLOOR, ctr))
    return math.ceil(math.log(MISS_PROBABILITY) / math.log(1.0 - rate))


def learn(keywords: tuple[str, ...], fixed: frozenset[str], counts: KeywordCounts, campaign_ctr: float,
          has_categories: bool) -> TargetingChange | None:
    """The next targeting of an autopilot campaign, or None when nothing changes. `keywords` is the
    effective list, `fixed` the advertiser's own (never dropped)."""
    needed = impressions_to_judge(campaign_ctr)
    removed = sorted(k for k in keywords if k not in fixed and _dud(counts.by_keyword.get(k), needed))
    kept = [k for k in keywords if k not in removed]
    if not kept and not has_categories and removed:
        removed.pop()  # never left with nothing to target
        kept = [k for k in keywords if k not in removed]
    room = MAX_KEYWORDS - len(kept)
    candidates = sorted(
        ((k, c) for k, c in counts.via_category.items()
         if k not in kept and k not in removed and c.clicks >= ADD_MIN_CLICKS
         and c.clicks / max(1, c.impressions) >= campaign_ctr),
        key=lambda item: (-item[1].clicks, item[0]),
    )
    added = [k for k, _ in candidates[: max(0, room)]]
    if not removed and not added:
        return None
    parts = []
    if removed:
        parts.append(f"dropped {', '.join(removed)}: no click in {needed}+ impressions each")
    if added:
        parts.append(f"added {', '.join(added)}: clicks from intents that matched through a category")
    return TargetingChange(tuple(sorted(kept + added)), tuple(added), tuple(removed), "; ".join(parts))


def _dud(seen: Counts | None, needed: int) -> bool:
    return seen is not None and seen.clicks == 0 and seen.impressions >= needed
