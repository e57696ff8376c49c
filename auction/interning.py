"""Bounded intern caches: campaigns repeat the same keywords, sets, filters and caps, and one
shared instance each keeps the index small and its build fast. Full, a cache is cleared, not
evicted in order: only sharing (or speed) is lost until it fills again."""

from __future__ import annotations

from typing import TypeVar

Key = TypeVar("Key")
Value = TypeVar("Value")

SHARED_MAX = 100_000  # entries per cache, unless the cache says otherwise


def remember(cache: dict[Key, Value], key: Key, value: Value, limit: int = SHARED_MAX) -> Value:
    """Keep `value` under `key` (the caller looked it up first, inline: that is the hot part)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value
