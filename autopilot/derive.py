"""Targeting derived from an advertiser's creatives and brief (docs/contract.md §7, `targeting.auto`).

`derive(creatives, brief)` is pure and deterministic: the same text gives the same `Derived` in
every process (no hash-seed dependence: outputs are sorted by full keys, dicts are read in the
order the text fills them). Nothing is read at call time; YAKE's stop words, the taxonomy and
the curated table (autopilot/synonyms.py) are loaded once at import.

Keywords: YAKE (n-grams up to 3, its own deduplication) run on each text (every title, then every
body, then the brief); each phrase is trimmed of numbers and units at its edges and of ad-copy
words at its end ("mAh power bank" → "power bank", "breakfast included" → "breakfast"),
normalised with auction.keywords.normalize_keyword and dropped if it is only stop words, numbers,
units or ad-copy words, keeps a stop word inside, is one token under 3 characters or is longer
than 64 characters. Duplicates merge (first source, best score); order is YAKE score (lower is
better), ties by term; at most MAX_KEYWORDS.

Categories: every IAB 1.0 category (not the policy families IAB24-26) is matched by the parts of
its name (split at "&" and "/") and by curated synonyms, on normalised words without stop words,
longest phrase first, never across a sentence. Each phrase counts once, where it is found first:
title 3, body 2, brief 1, times its length in words, a quarter for words common to every ad.
Categories group by tier-1 family; families under 30% of the best one are dropped; in a family,
the tier-2 codes that match (with at least half the points of the parent's own words) are
preferred to the parent. At most MAX_CATEGORIES, best first, ties by code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import yake

from auction.keywords import normalize_keyword
from autopilot import synonyms
from schemas.iab import IAB_CATEGORIES

MAX_KEYWORDS: Final = 32
MAX_CATEGORIES: Final = 3
MAX_BRIEF_CHARS: Final = 2_000
MAX_TERM_CHARS: Final = 64
Source = Literal["title", "body", "brief"]


@dataclass(frozen=True, slots=True)
class DerivedKeyword:
    term: str  # normalised with normalize_keyword, 1-3 words, e.g. "power bank"
    source: Source  # where it was found first: title before body before brief
    matched: str  # the words as they appear in that text, e.g. "Power Banks"


@dataclass(frozen=True, slots=True)
class DerivedCategory:
    category: str  # an IAB 1.0 code present in schemas.iab.IAB_CATEGORIES, e.g. "IAB19"
    name: str  # its taxonomy name
    source: Source
    matched: str  # the word(s) of the text that matched the category (its name or a curated synonym)


@dataclass(frozen=True, slots=True)
class Derived:
    keywords: tuple[DerivedKeyword, ...]  # best first, unique terms, at most MAX_KEYWORDS
    categories: tuple[DerivedCategory, ...]  # best first, at most MAX_CATEGORIES

    def as_json(self) -> dict[str, Any]:
        return {
            "keywords": [{"term": k.term, "from": k.source, "matched": k.matched} for k in self.keywords],
            "categories": [
                {"category": c.category, "name": c.name, "from": c.source, "matched": c.matched}
                for c in self.categories
            ],
        }

    @property
    def empty(self) -> bool:
        return not self.keywords and not self.categories


def derive(creatives: Sequence[Mapping[str, Any]], brief: str | None) -> Derived:
    """From each creative's `title` and `body` and the optional `brief` (≤ 2,000 characters; any
    longer is cut there). Missing or non-text fields count as empty."""
    texts = _texts(creatives, brief)
    return Derived(keywords=_keywords(texts), categories=_categories(texts))


def _texts(creatives: Sequence[Mapping[str, Any]], brief: str | None) -> tuple[tuple[Source, str], ...]:
    """Every title, then every body, then the brief: the order in which a term's source is decided."""
    found: list[tuple[Source, str]] = []
    fields: tuple[Source, ...] = ("title", "body")
    for source in fields:
        for creative in creatives:
            value = creative.get(source)
            if isinstance(value, str) and value.strip():
                found.append((source, value))
    if isinstance(brief, str) and brief.strip():
        found.append(("brief", brief[:MAX_BRIEF_CHARS]))
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# Keywords (YAKE)

_YAKE_STOPWORDS: Final[frozenset[str]] = (
    frozenset(yake.KeywordExtractor(lan="en").stopword_set) | frozenset(synonyms.GENERIC_VERBS)) - {""}
_AD_FILLER: Final = frozenset(synonyms.AD_FILLER)
_UNITS: Final = frozenset(
    ("mah", "wh", "kwh", "w", "kw", "v", "kg", "g", "mg", "lb", "oz", "km", "mi", "mph", "kph", "cm", "mm")
    + ("m", "ml", "l", "gb", "tb", "mb", "ghz", "mhz", "hz", "fps", "px", "mp", "k", "x", "ft", "hr", "min")
)
_NUMBERISH: Final = re.compile(r"[\d.,:/%+\-]*\d[\d.,:/%+\-]*[a-z]{0,3}")


def _extractor() -> Any:
    """A fresh extractor per call (YAKE keeps per-instance caches); its stop words come from the set
    loaded at import, so building one reads no file. Deduplication is YAKE's default (sequence
    matcher, 0.9); only arguments spelled alike in every YAKE release since 0.4 are passed."""
    return yake.KeywordExtractor(lan="en", n=3, top=MAX_KEYWORDS, stopwords=set(_YAKE_STOPWORDS))


def _filler(surface: str) -> bool:
    """A word that cannot carry a keyword: a stop word, a number ("20,000", "20K"), a unit, punctuation."""
    word = surface.casefold()
    return (
        word in _YAKE_STOPWORDS
        or normalize_keyword(word) in _UNITS
        or _NUMBERISH.fullmatch(word) is not None
        or not any(ch.isalnum() for ch in word)
    )


def _ad_word(surface: str) -> bool:
    return _filler(surface) or normalize_keyword(surface.casefold()) in _AD_FILLER


def _clean(phrase: str) -> tuple[str, str] | None:
    """(term, matched) for a YAKE phrase, or None when it is not a usable keyword. Numbers and units
    at its edges are trimmed ("mAh power bank" → "power bank"), and words of ad copy at its end
    ("breakfast included" → "breakfast"); a stop word, number or unit left inside ("charge your
    laptop") drops it, as does a phrase of ad copy only ("free", "ten minutes")."""
    words = phrase.split()
    lo, hi = 0, len(words)
    while lo < hi and _filler(words[lo]):
        lo += 1
    while hi > lo and _ad_word(words[hi - 1]):
        hi -= 1
    kept = words[lo:hi]
    if not kept or len(kept) > 3 or any(_filler(word) for word in kept) or all(map(_ad_word, kept)):
        return None
    matched = " ".join(kept)
    term = normalize_keyword(matched)
    if (len(kept) == 1 and len(term) < 3) or len(term) > MAX_TERM_CHARS or normalize_keyword(term) != term:
        return None
    return term, matched


def _keywords(texts: Sequence[tuple[Source, str]]) -> tuple[DerivedKeyword, ...]:
    extractor = _extractor()
    best: dict[str, tuple[float, Source, str]] = {}  # term → (best score, first source, matched there)
    for source, text in texts:
        for phrase, score in extractor.extract_keywords(text):
            cleaned = _clean(str(phrase))
            if cleaned is None:
                continue
            term, matched = cleaned
            known = best.get(term)
            if known is None:
                best[term] = (float(score), source, matched)
            elif float(score) < known[0]:
                best[term] = (float(score), known[1], known[2])
    ranked = sorted(best.items(), key=lambda item: (item[1][0], item[0]))[:MAX_KEYWORDS]
    return tuple(DerivedKeyword(term=term, source=source, matched=matched) for term, (_, source, matched) in ranked)


# ---------------------------------------------------------------------------------------------
# Categories (taxonomy names and curated synonyms)

_WORD: Final = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_POSSESSIVE: Final = re.compile(r"['’]s$", re.IGNORECASE)
_BOUNDARY: Final = re.compile(r"[!?;:()\[\]{}|•\n]|[.,](?:\s|$)")  # phrases never span these
_CATEGORY_STOP: Final = frozenset(synonyms.STOP_WORDS)
_WEIGHTS: Final[dict[Source, int]] = {"title": 12, "body": 8, "brief": 4}
_SOURCE_RANK: Final[dict[Source, int]] = {"title": 0, "body": 1, "brief": 2}


@dataclass(frozen=True, slots=True)
class _Token:
    word: str  # normalised
    start: int
    end: int
    segment: int  # index of the sentence-like run of text it belongs to


def _tokens(text: str, noise: frozenset[str] = frozenset()) -> list[_Token]:
    tokens: list[_Token] = []
    segment, previous_end = 0, 0
    for match in _WORD.finditer(text):
        if _BOUNDARY.search(text, previous_end, match.start()) is not None:
            segment += 1
        previous_end = match.end()
        raw = _POSSESSIVE.sub("", match.group()).casefold()
        if raw in _CATEGORY_STOP:
            continue
        for word in normalize_keyword(raw).split():
            if word not in _CATEGORY_STOP and word not in noise:
                tokens.append(_Token(word, match.start(), match.end(), segment))
    return tokens


def _phrase(text: str, noise: frozenset[str] = frozenset()) -> tuple[str, ...]:
    return tuple(token.word for token in _tokens(text, noise))


def _name_parts(code: str, name: str) -> tuple[str, ...]:
    """A category's name as phrases that each say it: "Coffee/Tea" → "Coffee", "Tea"."""
    if code in synonyms.NAME_OVERRIDES:
        return synonyms.NAME_OVERRIDES[code]
    return tuple(part for part in re.split(r"[&/,]| - ", name) if part.strip())


def _build_index() -> tuple[dict[tuple[str, ...], tuple[str, ...]], int]:
    """Normalised phrase → the codes it says, in taxonomy order then table order."""
    noise = frozenset(synonyms.NAME_NOISE)
    ambiguous = frozenset(_phrase(word) for word in synonyms.AMBIGUOUS)
    index: dict[tuple[str, ...], list[str]] = {}

    def add(phrase: tuple[str, ...], code: str) -> None:
        codes = index.setdefault(phrase, [])
        if code not in codes:
            codes.append(code)

    for code, name in IAB_CATEGORIES.items():
        if code.partition("-")[0] in synonyms.EXCLUDED_FAMILIES:
            continue
        for part in _name_parts(code, name):
            phrase = _phrase(part, noise)
            if phrase and phrase not in ambiguous and len(" ".join(phrase)) > 1:  # not the "C" of C/C++
                add(phrase, code)
    for code, words in synonyms.SYNONYMS.items():
        if code not in IAB_CATEGORIES:
            raise ValueError(f"autopilot/synonyms.py: {code!r} is not an IAB 1.0 category")
        for word in words:
            if not _phrase(word):
                raise ValueError(f"autopilot/synonyms.py: {word!r} ({code}) has no words to match")
            add(_phrase(word), code)
    return {phrase: tuple(codes) for phrase, codes in index.items()}, max(map(len, index))


_INDEX, _LONGEST = _build_index()
_WEAK: Final = frozenset(_phrase(word) for word in synonyms.WEAK)


@dataclass(frozen=True, slots=True)
class _Hit:
    phrase: tuple[str, ...]
    source: Source
    matched: str
    order: int  # position among all hits, for ties
    points: int


def _match_at(tokens: Sequence[_Token], i: int) -> int:
    """The length of the longest known phrase starting at token i within one segment, or 0."""
    for size in range(min(_LONGEST, len(tokens) - i), 0, -1):
        window = tokens[i : i + size]
        if window[0].segment == window[-1].segment and tuple(t.word for t in window) in _INDEX:
            return size
    return 0


def _hits(text: str) -> Iterator[tuple[tuple[str, ...], str]]:
    """(phrase, the text it matched) for each match, longest phrase first, left to right."""
    tokens = _tokens(text)
    i = 0
    while i < len(tokens):
        size = _match_at(tokens, i)
        if size == 0:
            i += 1
            continue
        window = tokens[i : i + size]
        yield tuple(t.word for t in window), text[window[0].start : window[-1].end]
        i += size


def _first_hits(texts: Sequence[tuple[Source, str]]) -> list[_Hit]:
    """Each matched phrase once, where it was found first (texts come title, body, brief)."""
    first: dict[tuple[str, ...], _Hit] = {}
    for source, text in texts:
        for phrase, matched in _hits(text):
            if phrase not in first:
                points = _WEIGHTS[source] * len(phrase) // (4 if phrase in _WEAK else 1)
                first[phrase] = _Hit(phrase, source, matched, len(first), points)
    return list(first.values())


def _code_key(code: str) -> tuple[int, ...]:
    return tuple(int(part) for part in code[3:].split("-"))


def _family(code: str) -> str:
    return code.partition("-")[0]


def _rank(hit: _Hit) -> tuple[int, int, int]:
    return _SOURCE_RANK[hit.source], -hit.points, hit.order


def _score(hits: Sequence[_Hit]) -> tuple[dict[str, int], dict[str, _Hit]]:
    """Points per code, and the hit that says each code first (title, body, brief), then best."""
    points: dict[str, int] = {}
    best: dict[str, _Hit] = {}
    for hit in hits:
        for code in _INDEX[hit.phrase]:
            points[code] = points.get(code, 0) + hit.points
            known = best.get(code)
            if known is None or _rank(hit) < _rank(known):
                best[code] = hit
    return points, best


def _pick(points: Mapping[str, int]) -> list[str]:
    """Families best first (those under 30% of the best family dropped); in each, the tier-2 codes
    that match with at least half the parent's own points, else the parent itself."""
    families: dict[str, int] = {}
    for code, value in points.items():
        families[_family(code)] = families.get(_family(code), 0) + value
    if not families:
        return []
    top = max(families.values())
    kept = sorted((f for f, v in families.items() if v * 10 >= top * 3), key=lambda f: (-families[f], _code_key(f)))
    picked: list[str] = []
    for family in kept:
        own = points.get(family, 0)
        children = sorted(
            (c for c in points if c != family and _family(c) == family and points[c] * 2 >= own),
            key=lambda c: (-points[c], _code_key(c)),
        )
        picked.extend(children or [family])
    return picked[:MAX_CATEGORIES]


def _categories(texts: Sequence[tuple[Source, str]]) -> tuple[DerivedCategory, ...]:
    points, best = _score(_first_hits(texts))
    return tuple(
        DerivedCategory(category=code, name=IAB_CATEGORIES[code], source=best[code].source, matched=best[code].matched)
        for code in _pick(points)
    )
