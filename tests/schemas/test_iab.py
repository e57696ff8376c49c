"""schemas.iab: the IAB Content Taxonomy 1.0 as the codes of intents, targeting and policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.iab import IAB_CATEGORIES, ancestors, parent

PACKAGED = Path(__file__).resolve().parents[2] / "schemas" / "data" / "iab-content-taxonomy-1.0.tsv"
SHARED = Path(os.environ.get("VICKREY_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def test_taxonomy_size_and_names() -> None:
    assert len(IAB_CATEGORIES) == 392
    assert sum("-" not in code for code in IAB_CATEGORIES) == 26
    assert IAB_CATEGORIES["IAB19"] == "Technology & Computing"
    assert IAB_CATEGORIES["IAB26"] == "Illegal Content"
    assert all(name == name.strip() and name for name in IAB_CATEGORIES.values())  # no CR from CRLF lines


def test_parent_and_ancestors() -> None:
    assert parent("IAB19-6") == "IAB19"
    assert parent("IAB19") is None
    assert ancestors("IAB19-6") == ("IAB19-6", "IAB19")
    assert ancestors("IAB25") == ("IAB25",)
    assert all(parent(code) in IAB_CATEGORIES for code in IAB_CATEGORIES if "-" in code)


@pytest.mark.parametrize("code", ["IAB99", "IAB19-99", "iab19", ""])
def test_unknown_codes_raise(code: str) -> None:
    with pytest.raises(KeyError, match="unknown IAB category"):
        ancestors(code)
    with pytest.raises(KeyError):
        parent(code)


def test_packaged_copy_matches_the_shared_data() -> None:
    shared = SHARED / "data" / "iab-content-taxonomy-1.0.tsv"
    if not shared.is_file():
        pytest.skip(f"{shared} not found (set VICKREY_SHARED)")
    assert PACKAGED.read_bytes() == shared.read_bytes()
