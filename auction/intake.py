"""Intents in, auction requests out: the first step of the worker's per-event path.

`Intake.read` turns a part of a batch (the consumed records' values) into, for each value,
`(request, fields)`: the `AuctionRequest` the engine runs, and the intent fields the records
repeat (event_id, user_id, session_id, placement, ts and intent.category, as `records_of` reads
them). Two ways do it, with the same results:

- the compiled intake (Rust, fastpath/; `make native` builds it into `auction/_fastpath`): it
  reads the raw bytes and builds the request with no parsed dict in between, for every intent it
  can plainly accept (fastpath/src/intent.rs says which);
- the reference, and the way for every value the compiled one leaves (`None`): `schemas.codec.decode`
  (a bad record raises the RecordError that names its field, for the DLQ) and
  `AuctionRequest.from_intent`.

tests/auction/test_intake.py holds the two equal on generated intents.
"""

from __future__ import annotations

from typing import Any, Protocol

from auction.model import AuctionRequest
from schemas.checks import INT_MAX, RECORD_MAX_BYTES, SHORT_MAX
from schemas.codec import decode
from schemas.iab import IAB_CATEGORIES
from schemas.records import AGE_BRACKETS, KEYWORD_MAX, KEYWORDS_MAX, MAX_SLOTS

INPUT = "chat.intents"
Fields = dict[str, Any]
Read = tuple[AuctionRequest, Fields]


class _Compiled(Protocol):
    def requests(self, values: list[bytes | None], now_ms: int) -> list[Read | None]: ...


def _compiled() -> _Compiled | None:
    """The Rust intake, configured with the schema's bounds (defined once, in Python), or None
    when it is not built."""
    try:
        from auction import _fastpath  # type: ignore[attr-defined]  # noqa: PLC0415 - optional build
    except ImportError:
        return None
    intake: _Compiled = _fastpath.Intake(
        set(IAB_CATEGORIES), list(AGE_BRACKETS), SHORT_MAX, INT_MAX, MAX_SLOTS, KEYWORDS_MAX, KEYWORD_MAX,
        RECORD_MAX_BYTES, AuctionRequest,
    )
    return intake


def reference(value: bytes | None, now_ms: int) -> Read:
    """The Python way: decode (raises RecordError naming the problem) and `from_intent`."""
    intent = decode(INPUT, value)
    return AuctionRequest.from_intent(intent, now_ms), intent


class Intake:
    def __init__(self, compiled: bool = True) -> None:
        self.compiled = _compiled() if compiled else None

    @property
    def hot_path(self) -> str:
        """`compiled` when the Rust intake runs, else `reference`."""
        return "reference" if self.compiled is None else "compiled"

    def read(self, values: list[bytes | None], now_ms: int) -> list[Read | None]:
        """The compiled intake's answer for each value (`None`: call `reference` for it); all
        `None` when it is not built."""
        if self.compiled is None:
            return [None] * len(values)
        return self.compiled.requests(values, now_ms)
