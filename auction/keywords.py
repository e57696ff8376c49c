"""Keyword normalisation shared by campaign targeting and intent events.

Both sides go through the same function, so "Laptops", "laptop" and "ＬＡＰＴＯＰ" meet in one
posting list. Plural folding is deliberately simple (English suffix rules): it must be
predictable for advertisers, not linguistically perfect.
"""

from __future__ import annotations

import unicodedata

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
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()  # bounded memory; a cold cache only costs a few microseconds per keyword
    _CACHE[raw] = normalized
    return normalized


_BLANK = frozenset({""})


def normalize_keywords(raw: list[str] | tuple[str, ...]) -> frozenset[str]:
    keywords = frozenset(map(normalize_keyword, raw))
    return keywords - _BLANK if "" in keywords else keywords
