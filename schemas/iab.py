"""IAB Content Taxonomy 1.0: the category codes of intents, targeting and policy (docs/contract.md §3, §4).

Codes are `IAB<n>` (tier 1) or `IAB<n>-<m>` (tier 2, child of `IAB<n>`)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

_TSV: Final = Path(__file__).resolve().parent / "data" / "iab-content-taxonomy-1.0.tsv"


def _load(path: Path) -> dict[str, str]:
    categories: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:  # first line is the header
        code, _tier, name = (cell.strip() for cell in line.split("\t"))
        categories[code] = name
    return categories


IAB_CATEGORIES: Final[dict[str, str]] = _load(_TSV)
"""Code → name, e.g. `"IAB19-6": "Cell Phones"`, in the taxonomy's order."""

def _lineage(code: str) -> tuple[str, ...]:
    """The code and its parent by the codes' shape: tier 2 `IAB<n>-<m>` is under tier 1 `IAB<n>`."""
    parent_code, dash, _ = code.partition("-")
    return (code, parent_code) if dash else (code,)


# Precomputed because targeting and trust checks ask for ancestors on the hot path.
_ANCESTORS: Final[dict[str, tuple[str, ...]]] = {code: _lineage(code) for code in IAB_CATEGORIES}


def _known(code: str) -> str:
    if code not in IAB_CATEGORIES:
        raise KeyError(f"unknown IAB category {code!r}")
    return code


def parent(code: str) -> str | None:
    """The tier-1 parent of a tier-2 code (`IAB19-6` → `IAB19`); None for a tier-1 code.
    Raises KeyError for a code not in the taxonomy."""
    chain = _ANCESTORS[_known(code)]
    return chain[1] if len(chain) > 1 else None


def ancestors(code: str) -> tuple[str, ...]:
    """The code itself, then its parent: `IAB19-6` → `("IAB19-6", "IAB19")`, `IAB19` → `("IAB19",)`.
    A category matches a target when the target is one of its ancestors. Raises KeyError if unknown."""
    return _ANCESTORS[_known(code)]


def lineage(code: str | None) -> tuple[str, ...]:
    """`ancestors` for whatever an auction request carries: () for no category. Never raises (the
    codec refuses unknown codes before an auction; the engine's own tests use made-up ones)."""
    if not code:
        return ()
    found = _ANCESTORS.get(code)
    return found if found is not None else _lineage(code)
