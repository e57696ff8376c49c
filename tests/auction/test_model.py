"""The campaign object of the index: its packed flags and prior read back what they were given."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auction.model import PCTR_DENOMINATOR, Campaign, Filters
from tests.auction.factories import campaign_record

_SOME_FILTERS = Filters(countries=frozenset({"us"}))


@given(
    bid_type=st.sampled_from(["cpm", "cpc"]),
    prior_micros=st.integers(0, PCTR_DENOMINATOR),
    even_pacing=st.booleans(),
    active=st.booleans(),
    any_of=st.booleans(),
    keywords=st.sampled_from([(), ("laptop",)]),
    phrases=st.sampled_from([(), ("battery life",)]),
    categories=st.sampled_from([None, frozenset({"IAB19"})]),
    filtered=st.booleans(),
)
def test_every_flag_and_the_prior_read_back(bid_type: str, prior_micros: int, even_pacing: bool, active: bool,
                                            any_of: bool, keywords: tuple[str, ...], phrases: tuple[str, ...],
                                            categories: frozenset[str] | None, filtered: bool) -> None:
    prior = Fraction(prior_micros, PCTR_DENOMINATOR)
    campaign = Campaign("c-1", "a-1", bid_type, 2_000_000, prior, keywords, phrases,  # type: ignore[arg-type]
                        categories, _SOME_FILTERS if filtered else None, 10, 20, None, even_pacing, active, any_of)
    assert (campaign.bid_type, campaign.even_pacing, campaign.active, campaign.any_of) == (
        bid_type, even_pacing, active, any_of)
    assert campaign.prior_pctr == prior and campaign.pctr == prior
    # The flag the engine's hot loop reads agrees with the rule it stands for.
    assert campaign.has_filters == (filtered or campaign.category_filter is not None)


def test_a_copy_keeps_the_learned_rate_and_changes_only_what_it_is_given() -> None:
    campaign = Campaign.from_record(campaign_record("c-1", bid_type="cpm", keywords=["laptop"], pacing="even"))
    campaign.set_pctr(Fraction(7, 1000))
    copy = campaign.changed(bid_type="cpc", bid_micros=3)
    assert (copy.bid_type, copy.bid_micros, copy.pctr) == ("cpc", 3, Fraction(7, 1000))
    assert (copy.keywords, copy.even_pacing, copy.prior_pctr) == (campaign.keywords, True, campaign.prior_pctr)
    assert campaign.bid_type == "cpm"  # the original is untouched


@pytest.mark.parametrize("prior", [Fraction(1, 3), Fraction(3, 2), Fraction(-1, 10)])
def test_a_prior_the_index_cannot_keep_exactly_is_refused(prior: Fraction) -> None:
    with pytest.raises(ValueError, match="prior_pctr"):
        Campaign("c-1", "a-1", "cpm", 1, prior, ("laptop",))
