"""`both_engines`: a test marked with it runs once with the Python engine and once with its
compiled twin deciding every auction (tests/auction/factories.py `make_engine`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from auction.fastpath import _native
from tests.auction import factories


@pytest.fixture(params=["python", "compiled"])
def both_engines(request: pytest.FixtureRequest) -> Iterator[str]:
    kind = str(request.param)
    if kind == "compiled" and _native() is None:
        # CI builds it (VICKREY_REQUIRE_NATIVE=1 refuses to run without it): only a machine with
        # no Rust toolchain skips here.
        pytest.skip("the compiled engine is not built (make native with a Rust toolchain)")
    factories.ENGINE_KIND = kind
    try:
        yield kind
    finally:
        factories.ENGINE_KIND = "python"
