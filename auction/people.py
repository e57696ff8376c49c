"""What a worker has learned about people from Redis's refusals: capped campaigns and hidden
advertisers. Only a shortcut (Redis decides); erased when a person asks to be forgotten."""

from __future__ import annotations

from dataclasses import dataclass, field

from auction.engine import UserState

MAX_PEOPLE = 200_000
CAP_MEMORY_MS = 60_000  # re-ask Redis at least this often: a cap window may have ended


@dataclass(slots=True)
class _Person:
    capped_until: dict[str, int] = field(default_factory=dict)  # campaign -> epoch ms
    hidden: set[str] = field(default_factory=set)  # advertiser ids


class PeopleCache:
    def __init__(self) -> None:
        self._people: dict[str, _Person] = {}

    def __len__(self) -> int:
        return len(self._people)

    def _person(self, user_id: str) -> _Person:
        person = self._people.get(user_id)
        if person is None:
            if len(self._people) >= MAX_PEOPLE:
                self._people.clear()  # bounded memory; a cold cache only costs refusals
            person = self._people[user_id] = _Person()
        return person

    def remember_cap(self, user_id: str, campaign_id: str, window_s: int, now_ms: int) -> None:
        self._person(user_id).capped_until[campaign_id] = now_ms + min(window_s * 1000, CAP_MEMORY_MS)

    def remember_hidden(self, user_id: str, advertiser_id: str) -> None:
        self._person(user_id).hidden.add(advertiser_id)

    def forget(self, user_id: str) -> bool:
        return self._people.pop(user_id, None) is not None

    def knows(self, user_id: str) -> bool:
        return user_id in self._people

    def state_for(self, user_id: str, now_ms: int) -> UserState | None:
        person = self._people.get(user_id)
        if person is None:
            return None
        capped = frozenset(c for c, until in person.capped_until.items() if until > now_ms)
        return UserState(hidden_advertisers=frozenset(person.hidden), capped_campaigns=capped)
