"""The Redis edge of the auction: one atomic, idempotent reservation call per batch.

`reserve.lua` checks and reserves budgets and frequency caps for every auction of a batch in
one EVALSHA (one round trip), and keeps each event's outcome so that a replayed batch gets the
first answer back instead of a second charge. The outcomes of one call are kept together in one
blob, which the worker lets go (`committed`) once the Kafka transaction that published them has
committed: only a batch whose commit failed is ever replayed. What stays for the event TTL is
where each event came from, so a reused event_id is still caught.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import orjson
from mypy_extensions import mypyc_attr
from redis.asyncio import Redis

from core.keys import Keys, event_bucket


def with_caps(script: str) -> str:
    """A reservation script of this package with caps.lua (the frequency-cap windows) in front:
    a Redis script cannot import another."""
    scripts = resources.files("auction")  # works compiled too
    return scripts.joinpath("caps.lua").read_text() + scripts.joinpath(script).read_text()


SCRIPT = with_caps("reserve.lua")


AnswerKind = Literal["ok", "replay", "committed", "dup", "refused"]


@dataclass(slots=True, init=False)  # __init__ written out: mypyc compiles it (dataclass's runs interpreted)
class Reservation:
    campaign_id: str
    charge_micros: int  # added to spend now (CPM); 0 for CPC
    need_micros: int  # budget that must be left: the charge, or one click for CPC
    cap_max: int  # 0: no frequency cap
    cap_window_s: int
    advertiser_id: str  # refused when the person hid this advertiser

    def __init__(self, campaign_id: str, charge_micros: int, need_micros: int, cap_max: int = 0, cap_window_s: int = 0,
                 advertiser_id: str = "") -> None:
        self.campaign_id = campaign_id
        self.charge_micros = charge_micros
        self.need_micros = need_micros
        self.cap_max = cap_max
        self.cap_window_s = cap_window_s
        self.advertiser_id = advertiser_id

    def as_list(self) -> list[Any]:
        return [self.campaign_id, self.charge_micros, self.need_micros, self.cap_max, self.cap_window_s, self.advertiser_id]


class Claim:
    """One auction's tentative outcome, offered to Redis."""

    event_id: str
    source: str  # "<partition>:<offset>" of the record, to tell a replay from a duplicate
    user_id: str
    outcome: bytes  # what to keep and hand back on replay
    entry: bytes  # `entry_of` this claim, when the compiled step wrote it already; else empty
    _reservations: list[Reservation] | None  # None: read from `entry` when asked

    def __init__(self, event_id: str, source: str, user_id: str, outcome: bytes,
                 reservations: list[Reservation] | None = None, entry: bytes = b"") -> None:
        self.event_id = event_id
        self.source = source
        self.user_id = user_id
        self.outcome = outcome
        self.entry = entry
        self._reservations = [] if reservations is None and not entry else reservations

    @property
    def reservations(self) -> list[Reservation]:
        """What Redis must reserve for it. The compiled step hands over only its entry, which lists
        them: they are read from it when asked (by the Redis Cluster reserver; the single-node
        one sends the entry as it is)."""
        if self._reservations is None:
            self._reservations = reservations_in(self.entry)
        return self._reservations


def reservations_in(entry: bytes) -> list[Reservation]:
    """The reservations an entry (`entry_of`) lists."""
    values = orjson.loads(b"[" + entry + b"]")
    listed = []
    for start in range(4, 4 + 6 * int(values[3]), 6):
        campaign_id, charge, need, cap_max, cap_window_s, advertiser_id = values[start : start + 6]
        listed.append(Reservation(str(campaign_id), int(charge), int(need), int(cap_max), int(cap_window_s),
                                  str(advertiser_id)))
    return listed


def entry_of(claim: Claim) -> bytes:
    """The claim's entry in reserve.lua's ARGV[4]: its values in that flat JSON list, without the
    brackets (event_id, source, user_id, how many reservations, each one's six values, the
    outcome's length, the event bucket). The compiled step writes the same bytes
    (fastpath/src/engine_py.rs `claim`)."""
    values: list[Any] = [claim.event_id, claim.source, claim.user_id, len(claim.reservations)]
    for reservation in claim.reservations:
        values += reservation.as_list()
    values += [len(claim.outcome), event_bucket(claim.event_id)]
    return orjson.dumps(values)[1:-1]


@dataclass(slots=True)
class Answer:
    kind: AnswerKind
    outcome: bytes = b""  # replay: the kept outcome
    first_source: str = ""  # dup: where the event_id was first seen
    refused: dict[str, str] = field(default_factory=dict)  # campaign_id -> budget|frequency_cap|user_hidden


OK = Answer("ok")
COMMITTED = Answer("committed")


@mypyc_attr(allow_interpreted_subclasses=True)  # auction/budgets_split.py's SplitReserver (one call per chunk)
class BudgetReserver:
    def __init__(self, redis: Redis, keys: Keys, outcome_ttl_s: int) -> None:
        self.keys = keys
        self._templates = orjson.dumps(keys.lua_templates())
        self.outcome_ttl_s = outcome_ttl_s
        self._script = redis.register_script(SCRIPT)
        self._redis = redis
        self._drop: list[str] = []  # blobs whose outcomes are committed in Kafka
        self._layout_checked = False

    async def reserve(self, claims: list[Claim], day: str) -> tuple[list[Answer], list[tuple[str, int, int]], str]:
        """Answers in claim order, (campaign_id, spend today, spend total) of every campaign the
        batch touched as Redis holds them afterwards, and the id of the blob that keeps the
        outcomes of this call (hand it to `committed` once they are published)."""
        if not claims:
            return [], [], ""
        if not self._layout_checked:
            await self.check_layout()
        blob_id = os.urandom(8).hex()
        entries = b",".join([claim.entry or entry_of(claim) for claim in claims])
        drop = self.take_drops()
        args: list[bytes | str | int] = [self._templates, day, self.outcome_ttl_s, b"[" + entries + b"]", blob_id,
                                         b"".join([claim.outcome for claim in claims]), *drop]
        try:
            raw = await self._script(keys=[], args=args)
        except BaseException:
            self.put_back_drops(drop)
            raise
        others, spends = orjson.loads(raw)
        answers = [OK] * len(claims)  # the script lists only the answers that are not "ok"
        for position, item in others or ():
            answers[position - 1] = _answer(item)
        return answers, [(str(c), int(t), int(s)) for c, t, s in (spends or [])], blob_id

    async def check_layout(self) -> None:
        """Write the layout key of the decided events (core/keys.py `seen_layout`) if it is not
        there: the periods' length (the event TTL now), and until when reserve.lua must also look
        events up under the per-event keys of the older layout. That is one TTL from now if any
        such key is left (found with SCAN, which does not block Redis), else never."""
        keys, redis = self.keys, self._redis
        if not await redis.exists(keys.seen_layout()):
            legacy_until = 0
            async for _ in redis.scan_iter(match=keys.any_outcome(), count=10_000):
                seconds, micros = await redis.time()
                legacy_until = (int(seconds) + self.outcome_ttl_s) * 1000 + int(micros) // 1000
                break
            await redis.set(keys.seen_layout(), f"{self.outcome_ttl_s} {legacy_until}", nx=True)
        self._layout_checked = True

    def take_drops(self) -> list[str]:
        """The committed blobs for this call to drop (put back in `_drop` if it fails). Taken, not
        copied: calls overlap (the worker's next part reserves while this one's answer comes)."""
        drop, self._drop = self._drop, []
        return drop

    def put_back_drops(self, drop: list[str]) -> None:
        """A call that took `drop` failed: the next call drops them."""
        self._drop[:0] = drop

    def committed(self, blob_ids: list[str]) -> None:
        """These blobs' outcomes are published and committed: the next call drops them."""
        self._drop += [blob_id for blob_id in blob_ids if blob_id]

    async def drop_committed(self) -> None:
        """Drop the committed blobs now (at shutdown, when no further call would)."""
        drop, self._drop = self._drop, []
        if drop:
            await self._redis.unlink(*(self.keys.blob(blob_id) for blob_id in drop))


def _answer(item: list[Any]) -> Answer:
    kind = item[0]
    if kind == "ok":
        return OK
    if kind == "replay":
        return Answer("replay", outcome=str(item[1]).encode())
    if kind == "committed":
        return COMMITTED
    if kind == "dup":
        return Answer("dup", first_source=str(item[1]))
    return Answer("refused", refused={str(cid): str(reason) for cid, reason in item[1]})
