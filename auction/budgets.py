"""The Redis edge of the auction: one atomic, idempotent reservation call per batch.

`reserve.lua` checks and reserves budgets and frequency caps for every auction of a batch in
one EVALSHA (one round trip), and keeps each event's outcome so that a replayed batch gets the
first answer back instead of a second charge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

SCRIPT = resources.files("auction").joinpath("reserve.lua").read_text()  # works compiled too


def user_key(namespace: str, user_id: str, *parts: str) -> str:
    """A per-person key: under the person's hash tag, so `forget` finds and erases them all."""
    return ":".join((namespace, f"{{u:{user_id}}}", *parts))

AnswerKind = Literal["ok", "replay", "dup", "refused"]


@dataclass(slots=True)
class Reservation:
    campaign_id: str
    charge_micros: int  # added to spend now (CPM); 0 for CPC
    need_micros: int  # budget that must be left: the charge, or one click for CPC
    cap_max: int = 0  # 0: no frequency cap
    cap_window_s: int = 0
    advertiser_id: str = ""  # refused when the person hid this advertiser

    def as_list(self) -> list[Any]:
        return [self.campaign_id, self.charge_micros, self.need_micros, self.cap_max, self.cap_window_s, self.advertiser_id]


@dataclass(slots=True)
class Claim:
    """One auction's tentative outcome, offered to Redis."""

    event_id: str
    source: str  # "<partition>:<offset>" of the record, to tell a replay from a duplicate
    user_id: str
    outcome: bytes  # what to keep and hand back on replay
    reservations: list[Reservation] = field(default_factory=list)


@dataclass(slots=True)
class Answer:
    kind: AnswerKind
    outcome: bytes = b""  # replay: the kept outcome
    first_source: str = ""  # dup: where the event_id was first seen
    refused: dict[str, str] = field(default_factory=dict)  # campaign_id -> budget|frequency_cap|user_hidden


OK = Answer("ok")


class BudgetReserver:
    def __init__(self, redis: Redis, namespace: str, outcome_ttl_s: int) -> None:
        self.namespace = namespace
        self.outcome_ttl_s = outcome_ttl_s
        self._script = redis.register_script(SCRIPT)

    async def reserve(self, claims: list[Claim], day: str) -> tuple[list[Answer], list[tuple[str, int, int]]]:
        """Answers in claim order, and (campaign_id, spend today, spend total) of every campaign
        the batch touched, as Redis holds them afterwards."""
        if not claims:
            return [], []
        meta = orjson.dumps(
            [[claim.event_id, claim.source, claim.user_id, [r.as_list() for r in claim.reservations]] for claim in claims]
        )
        args: list[bytes | str | int] = [self.namespace, day, self.outcome_ttl_s, meta]
        # What Redis keeps per event, ready to store: "<partition>:<offset>\n" + outcome.
        args += [b"%s\n%s" % (claim.source.encode(), claim.outcome) for claim in claims]
        raw = await self._script(keys=[], args=args)
        answers, spends = orjson.loads(raw)
        return [_answer(item) for item in answers], [(str(c), int(t), int(s)) for c, t, s in (spends or [])]


def _answer(item: list[Any]) -> Answer:
    kind = item[0]
    if kind == "ok":
        return OK
    if kind == "replay":
        return Answer("replay", outcome=str(item[1]).encode())
    if kind == "dup":
        return Answer("dup", first_source=str(item[1]))
    return Answer("refused", refused={str(cid): str(reason) for cid, reason in item[1]})
