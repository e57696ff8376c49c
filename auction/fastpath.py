"""The compiled steps of the worker's per-event path, and their Python references.

Two steps run compiled (Rust, fastpath/; `make native` builds it into `auction/_fastpath` when a
Rust toolchain is installed), each beside the Python reference that defines it:

- `Intake.read`: a part of a batch (the consumed records' values) to, for each value,
  `(request, fields)`: the `AuctionRequest` the engine runs and the intent fields the records
  repeat (event_id, user_id, session_id, placement, ts and intent.category, as `records_of` reads
  them). Compiled, it reads the raw bytes with no parsed dict in between, for every intent it can
  plainly accept (fastpath/src/intent.rs); the reference (`read_intent`: `schemas.codec.decode`,
  which raises the RecordError naming a bad record's field, and `AuctionRequest.from_intent`)
  reads every value it leaves (`None`). `Intake.parse` is the worker's: the same reading, each
  intent kept in Rust (`Parsed`) for the compiled engine's `claim_parsed`, and expanded into
  `read`'s `(request, fields)` only where Python needs them.
- `Writer.write`: one auction's compact outcome to its records' bytes (the decision, then each
  impression), the impression ids, the no-fill reason and the compact outcome's own bytes.
  Compiled, it writes the bytes with no dict per record (fastpath/src/records.rs); the reference
  is `records_of` with orjson (auction/records.py), and takes any outcome the compiled writer
  leaves.

tests/auction/test_fastpath.py holds each pair equal, byte for byte, on generated cases.
"""

from __future__ import annotations

from typing import Any, Protocol

from auction.model import AuctionRequest
from auction.records import LABEL, WINNERS, Outcome, encode_compact, encode_outcome, records_of
from schemas.checks import INT_MAX, RECORD_MAX_BYTES, SHORT_MAX
from schemas.codec import decode
from schemas.iab import IAB_CATEGORIES
from schemas.records import AGE_BRACKETS, KEYWORD_MAX, KEYWORDS_MAX, MAX_SLOTS

INPUT = "chat.intents"
Fields = dict[str, Any]
Read = tuple[AuctionRequest, Fields]
# The decision's bytes then each impression's, the impression ids, the no-fill reason, the compact outcome.
Written = tuple[list[bytes], list[str], str | None, bytes]


class Parsed(Protocol):
    """An intent the compiled intake read and keeps in Rust (fastpath/src/lib.rs): the compiled
    engine's `claim_parsed` reads it whole; Python reads its ids, or `expand`s it into what
    `Intake.read` gives (for the Python engine, a replay's records, a DLQ message)."""

    @property
    def event_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    def expand(self) -> Read: ...


class _CompiledIntake(Protocol):
    def requests(self, values: list[bytes | None], now_ms: int) -> list[Read | None]: ...
    def parse(self, values: list[bytes | None], now_ms: int) -> list[Parsed | None]: ...


class _CompiledWriter(Protocol):
    def write(self, fields: Fields, outcome: Outcome, keywords: frozenset[str]) -> Written | None: ...


def _native() -> Any:
    """The Rust extension module, or None when it is not built."""
    try:
        from auction import _fastpath  # type: ignore[attr-defined]  # noqa: PLC0415 - an optional build
    except ImportError:
        return None
    return _fastpath


def read_intent(value: bytes | None, now_ms: int) -> Read:
    """The reference intake: decode (raises RecordError naming the problem) and `from_intent`."""
    intent = decode(INPUT, value)
    return AuctionRequest.from_intent(intent, now_ms), intent


def write_records(fields: Fields, outcome: Outcome, keywords: frozenset[str]) -> Written:
    """The reference writer: the records of `outcome`, encoded, as published and as replayed."""
    decision, impressions = records_of(fields, outcome, sorted(keywords) if outcome[WINNERS] else None)
    return (encode_outcome(decision, impressions), [impression["impression_id"] for impression in impressions],
            decision["no_fill_reason"], encode_compact(outcome))


class Intake:
    def __init__(self, compiled: bool = True) -> None:
        native = _native() if compiled else None
        self.compiled: _CompiledIntake | None = None if native is None else native.Intake(
            set(IAB_CATEGORIES), list(AGE_BRACKETS), SHORT_MAX, INT_MAX, MAX_SLOTS, KEYWORDS_MAX, KEYWORD_MAX,
            RECORD_MAX_BYTES, AuctionRequest,
        )

    def read(self, values: list[bytes | None], now_ms: int) -> list[Read | None]:
        """The compiled intake's answer for each value (`None`: `read_intent` reads it); all
        `None` when it is not built."""
        if self.compiled is None:
            return [None] * len(values)
        return self.compiled.requests(values, now_ms)

    def parse(self, values: list[bytes | None], now_ms: int) -> list[Parsed | None]:
        """`read`, the intents kept in Rust: each `Parsed.expand()` is what `read` gives."""
        if self.compiled is None:
            return [None] * len(values)
        return self.compiled.parse(values, now_ms)


class Writer:
    def __init__(self, compiled: bool = True) -> None:
        native = _native() if compiled else None
        self.compiled: _CompiledWriter | None = None if native is None else native.Writer(LABEL)

    def write(self, fields: Fields, outcome: Outcome, keywords: frozenset[str]) -> Written:
        if self.compiled is not None:
            written = self.compiled.write(fields, outcome, keywords)
            if written is not None:
                return written
        return write_records(fields, outcome, keywords)


def hot_path(intake: Intake, writer: Writer) -> str:
    """`compiled` when both steps run in Rust, else `reference`."""
    return "compiled" if intake.compiled is not None and writer.compiled is not None else "reference"
