"""Keyword normalisation shared by campaign targeting and intent events.

Both sides go through the same function, so "Laptops", "laptop" and "ＬＡＰＴＯＰ" meet in one
posting list. Plural folding is deliberately simple (English suffix rules): it must be
predictable for advertisers, not linguistically perfect.
"""

from __future__ import annotations

import unicodedata

from auction.interning import remember

_CACHE: dict[str, str] = {}
_CACHE_MAX = 200_000

# Words whose trailing "s" is not a plural marker.
_KEEP_S = ("ss", "us", "is", "ous", "ics")


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_KEEP_S):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zes")):
        return word[:-2]
    return word[:-1]


def normalize_keyword(raw: str) -> str:
    """NFKC, case-folded, whitespace collapsed, each word singularised."""
    cached = _CACHE.get(raw)
    if cached is not None:
        return cached
    text = unicodedata.normalize("NFKC", raw).casefold()
    normalized = " ".join(_singular(word) for word in text.split())
    return remember(_CACHE, raw, normalized, _CACHE_MAX)  # a cold cache costs microseconds per keyword


# Phrase match looks up every run of up to this many words of an intent keyword (a campaign
# phrase of more words still matches an intent keyword equal to it).
PHRASE_WORDS_MAX = 6


def _runs(keyword: str) -> tuple[str, ...]:
    """Every run of consecutive words (up to PHRASE_WORDS_MAX) of one keyword, and the keyword."""
    words = keyword.split(" ")
    count = len(words)
    runs = tuple(" ".join(words[start:end]) for start in range(count)
                 for end in range(start + 1, min(count, start + PHRASE_WORDS_MAX) + 1))
    return runs if count <= PHRASE_WORDS_MAX else (*runs, keyword)


_RUNS: dict[str, tuple[str, ...]] = {}
# Bounded by the runs held, not the keywords: a long keyword has many runs (a 21-word one ~100).
_RUNS_MAX = 200_000
_runs_held = 0


def phrase_terms(keyword: str) -> tuple[str, ...]:
    """What phrase-match campaign keywords are looked up by for one intent keyword of several
    words: every run of consecutive words (up to PHRASE_WORDS_MAX) and the keyword itself
    (`earbuds` is in `wireless earbuds`). A keyword of one word is its own only term: callers
    look it up directly. Intent keywords repeat, so each one's terms are worked out once
    (bounded cache): the engine asks once per keyword per auction, and building a set of an
    event's terms instead cost ~10 % of its time per auction."""
    global _runs_held  # noqa: PLW0603 -- the cache's size, kept beside it
    runs = _RUNS.get(keyword)
    if runs is None:
        runs = _runs(keyword)
        if _runs_held + len(runs) > _RUNS_MAX:
            _RUNS.clear()  # bounded memory; only speed is lost
            _runs_held = 0
        _RUNS[keyword] = runs
        _runs_held += len(runs)
    return runs


def sub_phrases(keywords: frozenset[str]) -> frozenset[str]:
    """Every term phrase match looks up for these intent keywords: each keyword, and each one's
    `phrase_terms` (for a winner's `why`; one `union`, not a set built, updated and frozen)."""
    runs = [phrase_terms(keyword) for keyword in keywords if " " in keyword]
    return keywords.union(*runs) if runs else keywords


def normalize_keywords(raw: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Every keyword normalised, blanks dropped (once per event, and per campaign)."""
    return frozenset(_normalized(raw))


def sorted_keywords(raw: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`normalize_keywords`, sorted, as a tuple (a campaign's keywords): with no set in between,
    which costs a campaign record more than sorting and dropping repeats."""
    found = _normalized(raw)
    found.sort()
    kept = [keyword for position, keyword in enumerate(found) if not position or keyword != found[position - 1]]
    return tuple(kept)


def _normalized(raw: list[str] | tuple[str, ...]) -> list[str]:
    """Looks the cache up inline: a call per keyword costs more than the lookup."""
    cache = _CACHE
    found: list[str] = []
    for keyword in raw:
        normalized = cache.get(keyword)
        if normalized is None:
            normalized = normalize_keyword(keyword)
        if normalized:
            found.append(normalized)
    return found
