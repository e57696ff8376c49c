"""Phrase match and autopilot targeting in the engine (docs/contract.md §7): a phrase keyword
matches every intent keyword containing its words in order, found through the index (no scan);
an autopilot campaign is reached through any of its keywords or categories."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auction.engine import AuctionEngine
from auction.keywords import PHRASE_WORDS_MAX, phrase_terms, sub_phrases
from tests.auction.factories import campaign, engine_for, request

# Each test runs with the Python engine and with its compiled twin (tests/auction/conftest.py).
pytestmark = pytest.mark.usefixtures("both_engines")


def winners(engine: AuctionEngine, keywords: list[str], category: str = "IAB19-6", slots: int = 1) -> list[str]:
    req = request(intent={"category": category, "keywords": keywords, "confidence": 0.9}, slots=slots)
    return sorted(w.campaign.campaign_id for w in engine.run(req).winners)

WORDS = st.sampled_from(["wireless", "earbud", "usb-c", "charger", "fast", "power", "bank"])


def test_a_phrase_keyword_matches_longer_intent_keywords_not_shorter_ones() -> None:
    engine = engine_for([campaign("ph", targeting={"keywords": ["earbuds"], "match": "phrase"}),
                         campaign("ph2", targeting={"keywords": ["wireless earbuds"], "match": "phrase"})])
    assert winners(engine, ["wireless earbuds"], slots=2) == ["ph", "ph2"]
    assert winners(engine, ["earbuds"], slots=2) == ["ph"]  # `wireless earbuds` needs both words
    assert winners(engine, ["earbuds wireless"], slots=2) == ["ph"]  # and in that order


def test_exact_keywords_stay_exact() -> None:
    engine = engine_for([campaign("ex", targeting={"keywords": ["earbuds"]})])
    assert winners(engine, ["wireless earbuds"]) == []
    assert winners(engine, ["earbuds"]) == ["ex"]


def test_why_names_the_phrase_that_matched() -> None:
    engine = engine_for([campaign("ph", targeting={"keywords": ["power bank"], "match": "phrase"})])
    result = engine.run(request(keywords=["usb-c power bank", "tokyo"]))
    assert result.winners
    assert result.winners[0].matched_keywords == ("power bank",)


def test_derived_keywords_match_as_phrases_and_categories_reach_too() -> None:
    derived = {"keywords": [{"term": "power bank", "from": "title", "matched": "power bank"}],
               "categories": [{"category": "IAB19", "name": "Technology & Computing", "from": "body", "matched": "usb"}]}
    auto = campaign("auto", targeting={"auto": True}, targeting_derived=derived)
    engine = engine_for([auto])
    assert winners(engine, ["slim power bank"], category="IAB20") == ["auto"]
    # Reached through the category alone (an autopilot campaign is any-of), not through a keyword.
    assert winners(engine, ["keyboard"], category="IAB19-6") == ["auto"]
    assert winners(engine, ["keyboard"], category="IAB20") == []


def test_a_manual_campaign_with_keywords_and_categories_needs_both() -> None:
    manual = campaign("m", targeting={"keywords": ["power bank"], "categories": ["IAB19"], "match": "phrase"})
    engine = engine_for([manual])
    assert winners(engine, ["power bank"], category="IAB20") == []
    assert winners(engine, ["slim power bank"], category="IAB19-6") == ["m"]


@given(st.lists(WORDS, min_size=1, max_size=8), st.lists(WORDS, min_size=1, max_size=3))
def test_sub_phrases_are_exactly_the_runs_of_words(intent_words: list[str], phrase_words: list[str]) -> None:
    keyword, phrase = " ".join(intent_words), " ".join(phrase_words)
    runs = {" ".join(intent_words[i:j]) for i in range(len(intent_words)) for j in range(i + 1, len(intent_words) + 1)
            if j - i <= PHRASE_WORDS_MAX or (i == 0 and j == len(intent_words))}
    assert (phrase in sub_phrases(frozenset({keyword}))) == (phrase in runs)


@given(st.lists(st.lists(WORDS, min_size=1, max_size=8), min_size=1, max_size=4))
def test_sub_phrases_of_several_keywords_are_every_run_of_each(keywords_words: list[list[str]]) -> None:
    """Exactly the union of each keyword's runs and the keywords, the first time (worked out) and
    the second (from the cache of runs); keywords of one word each are their own runs."""
    keywords = frozenset(" ".join(words) for words in keywords_words)
    expected = set(keywords)
    for words in keywords_words:
        expected |= {" ".join(words[i:j]) for i in range(len(words))
                     for j in range(i + 1, min(len(words), i + PHRASE_WORDS_MAX) + 1)}
    assert sub_phrases(keywords) == expected
    assert sub_phrases(keywords) == expected


@given(st.lists(st.lists(WORDS, min_size=1, max_size=8), min_size=1, max_size=4))
def test_what_the_engine_looks_up_is_sub_phrases(keywords_words: list[list[str]]) -> None:
    """The engine looks phrases up keyword by keyword (`phrase_terms`, each single word as
    itself): the same terms as `sub_phrases`, which a winner's `why` is matched against."""
    keywords = frozenset(" ".join(words) for words in keywords_words)
    looked_up: set[str] = set()
    for keyword in keywords:
        looked_up.update(phrase_terms(keyword) if " " in keyword else (keyword,))
    assert looked_up == sub_phrases(keywords)
