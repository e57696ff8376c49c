"""In-memory campaign index: posting lists kept in descending eCPM order.

A manual campaign sits in one family of lists: its keywords' lists (exact and phrase) when it
targets keywords, else its categories' lists, else the list of untargeted campaigns. An autopilot
campaign (`targeting.auto`) is reached through any of them, so it sits in its keywords' and its
categories' lists. Phrase keywords are looked up by every run of words of an intent keyword. Retrieval walks
each list an event touches from the top and can stop as soon as the slots and their runner-up
are settled, so a popular keyword with thousands of campaigns costs a handful of steps.
Updates touch one campaign's lists only (bisect insert/remove), never a rebuild.
"""

from __future__ import annotations

import gc
from bisect import bisect_left, insort
from collections.abc import Iterable
from fractions import Fraction
from types import TracebackType
from typing import Any

from auction.model import Campaign


def _order(campaign: Campaign) -> int:
    return -campaign.rank_key


class BulkLoad:
    """`with BulkLoad():` around making a whole index (Campaign.from_record for every campaign,
    then CampaignIndex.build): the cyclic garbage collector is paused meanwhile. Campaigns form
    no cycles, and a collection every few hundred allocations cost about a tenth of the build."""

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.was_enabled:
            gc.enable()


class CampaignIndex:
    def __init__(self) -> None:
        self.campaigns: dict[str, Campaign] = {}
        self.by_keyword: dict[str, list[Campaign]] = {}
        self.by_phrase: dict[str, list[Campaign]] = {}
        self.by_category: dict[str, list[Campaign]] = {}
        self.untargeted: list[Campaign] = []
        # The compiled engine's copy of this index (auction/twin.py), told every change.
        self.mirror: Any = None

    def __len__(self) -> int:
        return len(self.campaigns)

    def __contains__(self, campaign_id: object) -> bool:
        return campaign_id in self.campaigns

    def get(self, campaign_id: str) -> Campaign | None:
        return self.campaigns.get(campaign_id)

    def _families(self, campaign: Campaign) -> list[tuple[dict[str, list[Campaign]], Iterable[str]]]:
        families: list[tuple[dict[str, list[Campaign]], Iterable[str]]] = []
        if campaign.keywords:
            families.append((self.by_keyword, campaign.keywords))
        if campaign.phrases:
            families.append((self.by_phrase, campaign.phrases))
        if campaign.categories and (campaign.any_of or not families):
            families.append((self.by_category, campaign.categories))
        return families

    def _lists_of(self, campaign: Campaign, create: bool) -> list[list[Campaign]]:
        families = self._families(campaign)
        if not families:
            return [self.untargeted]
        if create:
            return [table.setdefault(term, []) for table, terms in families for term in terms]
        return [table[term] for table, terms in families for term in terms if term in table]

    @classmethod
    def build(cls, campaigns: Iterable[Campaign]) -> CampaignIndex:
        """Bulk build: the campaigns sorted once, then appended to their lists in that order, so
        every list is born sorted (much faster than inserts, and than sorting each list)."""
        index = cls()
        held = index.campaigns
        for campaign in campaigns:
            # One campaign per id, the last one given (a duplicate once stayed in the posting
            # lists, out of reach of remove() and unknown to the compiled engine's copy), in the
            # order of its last appearance.
            held.pop(campaign.campaign_id, None)
            if campaign.active:
                held[campaign.campaign_id] = campaign
        # Stable: ties keep that order, as a stable sort of each list after appending did.
        for campaign in sorted(held.values(), key=_order):
            families = index._families(campaign)
            if not families:
                index.untargeted.append(campaign)
            for table, terms in families:  # _lists_of(create=True), without a list per campaign
                for term in terms:
                    postings = table.get(term)
                    if postings is None:
                        postings = table[term] = []
                    postings.append(campaign)
        for table in (index.by_keyword, index.by_phrase, index.by_category):
            for term, postings in table.items():
                table[term] = postings[:]  # exactly its size: appends left up to 1/8 spare
        return index

    def upsert(self, campaign: Campaign) -> None:
        """Add, change or (when paused) withdraw one campaign."""
        self.remove(campaign.campaign_id)
        if self.mirror is not None:
            self.mirror.upsert(campaign)
        if not campaign.active:
            return
        self.campaigns[campaign.campaign_id] = campaign
        for postings in self._lists_of(campaign, create=True):
            insort(postings, campaign, key=_order)

    def remove(self, campaign_id: str) -> bool:
        old = self.campaigns.pop(campaign_id, None)
        if old is None:
            return False
        if self.mirror is not None:
            self.mirror.remove(campaign_id)
        for postings in self._lists_of(old, create=False):
            position = bisect_left(postings, -old.rank_key, key=_order)
            while position < len(postings) and postings[position] is not old:
                position += 1
            if position < len(postings):
                del postings[position]
        self._drop_empty(old)
        return True

    def _drop_empty(self, campaign: Campaign) -> None:
        for table, terms in self._families(campaign):
            for term in terms:
                if term in table and not table[term]:
                    del table[term]

    def set_pctr(self, campaign_id: str, pctr: Fraction) -> None:
        """Move a campaign to its new place after its learned pCTR (so its eCPM) changed."""
        campaign = self.campaigns.get(campaign_id)
        if campaign is None or campaign.pctr == pctr:
            return
        self.remove(campaign_id)
        campaign.set_pctr(pctr)
        self.upsert(campaign)
