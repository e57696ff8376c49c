"""Field checks shared by every record validator (codec and campaign files).

Each check reads one field of a parsed JSON object, fills its default when absent, and reports a
problem as `<dotted field path>: <words>`. Every check has a fast path for the valid case (a type
test and a range test) and builds its message only when that fails, because the codec runs on the
auction's hot path. `Checks` raises `RecordError` on the first problem; `CollectedChecks` keeps them
all (a campaign file is refused with every problem named).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from schemas.iab import IAB_CATEGORIES

Record = dict[str, Any]

INT_MAX: Final = 2**53 - 1  # largest integer every JSON parser reads exactly; bounds money, times, counts
SHORT_MAX: Final = 128  # ids and short strings (docs/contract.md §3)
RECORD_MAX_BYTES: Final = 64 * 1024  # one record (docs/contract.md §3)

ID_PATTERN: Final = (re.compile(r"[A-Za-z0-9._:-]+"), "must use only A-Z a-z 0-9 . _ : - (ids go into Redis and Kafka keys)")


class RecordError(ValueError):
    """A record that cannot be read. `field` is the dotted path (`intent.keywords[3]`), "" for the whole
    record; `problem` says what is wrong; str() is `<field>: <problem>` with `(record)` for ""."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field or '(record)'}: {problem}")
        self.field = field
        self.problem = problem


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Marks an absent field (distinct from JSON null)."""


def show(value: object) -> str:
    """The offending value in JSON terms, short enough for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    return repr(value)[:40]


# --- value-level problems: the words for one value, or None when it is fine -------------------------


def text_problem(value: object, lo: int, hi: int, pattern: tuple[re.Pattern[str], str] | None = None) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {show(value)}"
    if len(value) < lo:
        return "must not be empty" if lo == 1 else f"must be at least {lo} characters, got {len(value)}"
    if len(value) > hi:
        return f"{len(value)} characters, over the {hi}-character limit"
    if pattern is not None and not pattern[0].fullmatch(value):
        return f"{pattern[1]}, got {show(value)}"
    return None


def _int_words(lo: int, hi: int) -> str:
    if hi != INT_MAX:
        return f"an integer from {lo} to {hi}"
    return {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")


def int_problem(value: object, lo: int, hi: int) -> str | None:
    # bool is an int subclass in Python but not a JSON integer; 1.0 is a JSON number, not an integer.
    if type(value) is not int:
        return f"must be {_int_words(lo, hi)}, got {show(value)}"
    if value > hi == INT_MAX:
        return f"must be at most {INT_MAX} (2^53 - 1), got {value}"
    if not lo <= value <= hi:
        return f"must be {_int_words(lo, hi)}, got {value}"
    return None


def number_problem(value: object, lo: float, hi: float, lo_open: bool = False) -> str | None:
    if (type(value) is int or type(value) is float) and (lo < value if lo_open else lo <= value) and value <= hi:
        return None
    low = f"above {lo:g}" if lo_open else f"from {lo:g}"
    words = f"a number {low}" + ("" if hi == math.inf else f" {'and at most' if lo_open else 'to'} {hi:g}")
    return f"must be {words}, got {show(value)}"


def choice_problem(value: object, allowed: tuple[str, ...]) -> str | None:
    if isinstance(value, str) and value in allowed:
        return None
    return f"must be one of {', '.join(allowed)}, got {show(value)}"


def category_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be an IAB category code such as 'IAB19-6', got {show(value)}"
    if value not in IAB_CATEGORIES:
        return f"unknown IAB category {show(value)}"
    return None


class Checks:
    """Field checks that raise RecordError on the first problem. Each takes the parent object, the key
    and the parent's path prefix (`"intent."`), fills `default` when the key is absent (mutable defaults
    must be empty: they are copied), and returns whether the value is present (or defaulted) and valid."""

    def problem(self, field: str, words: str) -> None:
        raise RecordError(field, words)

    def _absent(self, rec: Record, key: str, prefix: str, required: bool, default: object) -> bool:
        """Handles an absent key: fills the default (True), or reports it if required (False)."""
        if default is not MISSING:
            rec[key] = default.copy() if isinstance(default, (list, dict)) else default
            return True
        if required:
            self.problem(prefix + key, "missing (required)")
        return False

    def _report(self, rec: Record, key: str, prefix: str, words: str | None, required: bool, default: object) -> bool:
        if key not in rec:
            return self._absent(rec, key, prefix, required, default)
        if words is None:
            return True
        self.problem(prefix + key, words)
        return False

    def unknown_fields(self, rec: Record, known: frozenset[str], prefix: str = "") -> None:
        """Refuses fields not in `known` (campaigns, policy, records we produce)."""
        if known.issuperset(rec):
            return
        for key in rec:
            if key not in known:
                self.problem(prefix + key, f"unknown field (known: {', '.join(sorted(known))})")

    def text(self, rec: Record, key: str, prefix: str = "", *, lo: int = 1, hi: int = SHORT_MAX,
             pattern: tuple[re.Pattern[str], str] | None = None, required: bool = True,
             default: object = MISSING) -> bool:
        value = rec.get(key, MISSING)
        if type(value) is str and lo <= len(value) <= hi and (pattern is None or pattern[0].fullmatch(value)):
            return True
        return self._report(rec, key, prefix, text_problem(value, lo, hi, pattern), required, default)

    def ident(self, rec: Record, key: str, prefix: str = "", *, required: bool = True) -> bool:
        """An id of campaigns, advertisers, creatives: 1–128 characters of [A-Za-z0-9._:-]."""
        return self.text(rec, key, prefix, pattern=ID_PATTERN, required=required)

    def integer(self, rec: Record, key: str, prefix: str = "", *, lo: int = 0, hi: int = INT_MAX,
                required: bool = True, default: object = MISSING) -> bool:
        value = rec.get(key, MISSING)
        if type(value) is int and lo <= value <= hi:
            return True
        return self._report(rec, key, prefix, int_problem(value, lo, hi), required, default)

    def number(self, rec: Record, key: str, prefix: str = "", *, lo: float = 0.0, hi: float = math.inf,
               lo_open: bool = False, required: bool = True, default: object = MISSING) -> bool:
        value = rec.get(key, MISSING)
        if (type(value) is float or type(value) is int) and lo <= value <= hi and not (lo_open and value == lo):
            return True
        return self._report(rec, key, prefix, number_problem(value, lo, hi, lo_open), required, default)

    def boolean(self, rec: Record, key: str, prefix: str = "", *, required: bool = True,
                default: object = MISSING) -> bool:
        value = rec.get(key, MISSING)
        if type(value) is bool:
            return True
        return self._report(rec, key, prefix, f"must be true or false, got {show(value)}", required, default)

    def choice(self, rec: Record, key: str, allowed: tuple[str, ...], prefix: str = "", *,
               required: bool = True, default: object = MISSING) -> bool:
        value = rec.get(key, MISSING)
        if type(value) is str and value in allowed:
            return True
        return self._report(rec, key, prefix, choice_problem(value, allowed), required, default)

    def category(self, rec: Record, key: str, prefix: str = "", *, nullable: bool = False) -> bool:
        value = rec.get(key, MISSING)
        if (type(value) is str and value in IAB_CATEGORIES) or (nullable and value is None):
            return True
        return self._report(rec, key, prefix, category_problem(value), True, MISSING)

    def obj(self, rec: Record, key: str, prefix: str = "", *, required: bool = True,
            default: object = MISSING) -> Record | None:
        value = rec.get(key, MISSING)
        if type(value) is dict:
            return value
        if self._report(rec, key, prefix, f"must be an object, got {show(value)}", required, default):
            filled: Record | None = rec.get(key)
            return filled
        return None

    def array(self, rec: Record, key: str, prefix: str = "", *, lo: int = 0, hi: int = INT_MAX,
              required: bool = True, default: object = MISSING) -> list[Any] | None:
        value = rec.get(key, MISSING)
        if type(value) is list and lo <= len(value) <= hi:
            return value
        if type(value) is not list:
            words = f"must be an array, got {show(value)}"
        elif len(value) < lo:
            words = "must not be empty" if lo == 1 else f"must have at least {lo} items, got {len(value)}"
        else:
            words = f"{len(value)} items, over the {hi}-item limit"
        if self._report(rec, key, prefix, words, required, default):
            filled: list[Any] | None = rec.get(key)
            return filled
        return None

    def texts(self, rec: Record, key: str, prefix: str = "", *, min_items: int = 0, max_items: int = INT_MAX,
              lo: int = 1, hi: int = SHORT_MAX, pattern: tuple[re.Pattern[str], str] | None = None,
              required: bool = True, default: object = MISSING) -> bool:
        """An array of strings, each checked like `text`."""
        items = self.array(rec, key, prefix, lo=min_items, hi=max_items, required=required, default=default)
        if items is None:
            return False
        ok = True
        for index, item in enumerate(items):
            if type(item) is str and lo <= len(item) <= hi and (pattern is None or pattern[0].fullmatch(item)):
                continue
            words = text_problem(item, lo, hi, pattern)
            if words is not None:
                self.problem(f"{prefix}{key}[{index}]", words)
                ok = False
        return ok

    def categories(self, rec: Record, key: str, prefix: str = "", *, min_items: int = 0,
                   max_items: int = INT_MAX, required: bool = True) -> bool:
        """An array of IAB category codes."""
        items = self.array(rec, key, prefix, lo=min_items, hi=max_items, required=required)
        ok = items is not None
        for index, item in enumerate(items or ()):
            words = category_problem(item)
            if words is not None:
                self.problem(f"{prefix}{key}[{index}]", words)
                ok = False
        return ok

    def version(self, rec: Record, prefix: str = "", *, required: bool = False) -> bool:
        """`schema_version`: the integer 1; optional (default 1) on input records, required on ours."""
        value = rec.get("schema_version", MISSING)
        if type(value) is int and value == 1:
            return True
        words = f"must be 1 (the only version so far), got {show(value)}"
        return self._report(rec, "schema_version", prefix, words, required, MISSING if required else 1)


class CollectedChecks(Checks):
    """The same checks, keeping every problem as `<field>: <problem>` instead of raising."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, field: str, words: str) -> None:
        self.problems.append(f"{field or '(record)'}: {words}")


STRICT: Final = Checks()
