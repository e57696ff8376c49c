"""The index's bulk build against one campaign at a time, and the keyword forms it is built from
(generated cases, hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from auction.index import CampaignIndex
from auction.keywords import normalize_keywords, sorted_keywords
from auction.model import Campaign
from tests.auction.factories import campaign

raw_keywords = st.lists(
    st.one_of(
        st.sampled_from(["Laptop", "laptops", " laptop ", "", "  ", "Power  Banks", "ﬁle", "FILE", "straße", "STRASSE"]),
        st.text(max_size=12),
    ),
    max_size=12,
)


@given(raw_keywords)
def test_sorted_keywords_is_normalize_keywords_sorted(raw: list[str]) -> None:
    assert sorted_keywords(raw) == tuple(sorted(normalize_keywords(raw)))
    assert sorted_keywords(tuple(raw)) == sorted_keywords(raw)


entries = st.lists(
    st.tuples(
        st.sampled_from([f"c{n}" for n in range(8)]),  # repeated ids: the last one given counts
        st.sampled_from([1_000_000, 2_000_000, 3_000_000]),  # few bids: many ties in rank
        st.sampled_from(["cpm", "cpc"]),
        st.sampled_from([["laptop"], ["laptop", "bag"], ["bag"], [], ["phone", "laptop bag"]]),
        st.sampled_from(["exact", "phrase"]),
        st.sampled_from([None, ["IAB19"], ["IAB19", "IAB3"]]),
        st.booleans(),  # active
    ),
    max_size=16,
)


def made(entry: tuple[str, int, str, list[str], str, list[str] | None, bool]) -> Campaign:
    campaign_id, amount, bid_type, keywords, match, categories, active = entry
    targeting: dict[str, object] = {"keywords": keywords, "match": match}
    if categories:
        targeting["categories"] = categories
    return campaign(campaign_id, amount_micros=amount, bid_type=bid_type, keywords=keywords, targeting=targeting,
                    status="active" if active else "paused")


def lists_of(index: CampaignIndex) -> dict[str, object]:
    """Every posting list as campaign ids, in order, and the campaigns held."""
    return {
        "campaigns": list(index.campaigns),
        "keywords": {term: [c.campaign_id for c in postings] for term, postings in index.by_keyword.items()},
        "phrases": {term: [c.campaign_id for c in postings] for term, postings in index.by_phrase.items()},
        "categories": {term: [c.campaign_id for c in postings] for term, postings in index.by_category.items()},
        "untargeted": [c.campaign_id for c in index.untargeted],
    }


@settings(max_examples=200)
@given(entries)
def test_the_bulk_build_equals_upserting_one_by_one(
        given_entries: list[tuple[str, int, str, list[str], str, list[str] | None, bool]]) -> None:
    """Same campaigns, same lists in the same order (ties in rank in the order of each id's last
    appearance), whether built at once or upserted one at a time."""
    campaigns = [made(entry) for entry in given_entries]
    one_by_one = CampaignIndex()
    for each in campaigns:
        one_by_one.upsert(each)
    assert lists_of(CampaignIndex.build(campaigns)) == lists_of(one_by_one)
