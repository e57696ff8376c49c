"""In-memory campaign index: posting lists kept in descending eCPM order.

Every campaign sits in exactly one family of lists: its keywords' lists when it targets
keywords, else its categories' lists, else the list of untargeted campaigns. Retrieval walks
each list an event touches from the top and can stop as soon as the slots and their runner-up
are settled, so a popular keyword with thousands of campaigns costs a handful of steps.
Updates touch one campaign's lists only (bisect insert/remove), never a rebuild.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from fractions import Fraction

from auction.model import Campaign


def _order(campaign: Campaign) -> int:
    return -campaign.rank_key


class CampaignIndex:
    def __init__(self) -> None:
        self.campaigns: dict[str, Campaign] = {}
        self.by_keyword: dict[str, list[Campaign]] = {}
        self.by_category: dict[str, list[Campaign]] = {}
        self.untargeted: list[Campaign] = []

    def __len__(self) -> int:
        return len(self.campaigns)

    def __contains__(self, campaign_id: object) -> bool:
        return campaign_id in self.campaigns

    def get(self, campaign_id: str) -> Campaign | None:
        return self.campaigns.get(campaign_id)

    def _lists_of(self, campaign: Campaign, create: bool) -> list[list[Campaign]]:
        terms: Iterable[str]
        if campaign.keywords:
            table, terms = self.by_keyword, campaign.keywords
        elif campaign.categories:
            table, terms = self.by_category, campaign.categories
        else:
            return [self.untargeted]
        if create:
            return [table.setdefault(term, []) for term in terms]
        return [table[term] for term in terms if term in table]

    @classmethod
    def build(cls, campaigns: Iterable[Campaign]) -> CampaignIndex:
        """Bulk build: append everywhere, then sort each list once (much faster than inserts)."""
        index = cls()
        for campaign in campaigns:
            if not campaign.active:
                continue
            index.campaigns[campaign.campaign_id] = campaign
            for postings in index._lists_of(campaign, create=True):
                postings.append(campaign)
        for table in (index.by_keyword, index.by_category):
            for postings in table.values():
                postings.sort(key=_order)
        index.untargeted.sort(key=_order)
        return index

    def upsert(self, campaign: Campaign) -> None:
        """Add, change or (when paused) withdraw one campaign."""
        self.remove(campaign.campaign_id)
        if not campaign.active:
            return
        self.campaigns[campaign.campaign_id] = campaign
        for postings in self._lists_of(campaign, create=True):
            insort(postings, campaign, key=_order)

    def remove(self, campaign_id: str) -> bool:
        old = self.campaigns.pop(campaign_id, None)
        if old is None:
            return False
        for postings in self._lists_of(old, create=False):
            position = bisect_left(postings, -old.rank_key, key=_order)
            while position < len(postings) and postings[position] is not old:
                position += 1
            if position < len(postings):
                del postings[position]
        self._drop_empty(old)
        return True

    def _drop_empty(self, campaign: Campaign) -> None:
        table = self.by_keyword if campaign.keywords else self.by_category
        for term in campaign.keywords or campaign.categories or ():
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
