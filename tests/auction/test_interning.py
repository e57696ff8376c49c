"""The bounded intern cache every shared value of the index goes through."""

from __future__ import annotations

from auction.interning import remember
from auction.model import _shared_cap


def test_remember_keeps_the_value_and_returns_it() -> None:
    cache: dict[str, str] = {}
    assert remember(cache, "laptop", "laptop") == "laptop"
    assert cache == {"laptop": "laptop"}


def test_a_full_cache_is_cleared_before_the_next_value() -> None:
    cache = {n: n for n in range(3)}
    assert remember(cache, 3, 3, limit=3) == 3
    assert cache == {3: 3}  # only sharing is lost: the value is still returned and kept
    assert remember(cache, 4, 4, limit=3) == 4
    assert cache == {3: 3, 4: 4}


def test_equal_caps_share_one_instance() -> None:
    # Built at run time: equal constant tuples are one object already, and would prove nothing.
    first = _shared_cap(tuple([3, int("86400")]))  # type: ignore[arg-type]
    again = _shared_cap(tuple([3, int("86400")]))  # type: ignore[arg-type]
    assert again == (3, 86_400)
    assert again is first
