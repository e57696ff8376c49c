"""The trust policy (docs/contract.md §4b) in Redis.

- `{ns}:policy` — string: the policy JSON (orjson, as normalised by
  `schemas.campaign.validate_policy`). Absent means `schemas.campaign.DEFAULT_POLICY`.
- `{ns}:policy:version` — integer, incremented by every `apply_policy` (absent = 0). Workers poll it
  and reload the policy when it changes (within 1 s).

Nothing else is announced: no stream entry, no Kafka record.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from redis.asyncio import Redis

from core.settings import Settings
from schemas.campaign import DEFAULT_POLICY, validate_policy


class InvalidPolicy(ValueError):
    """The policy was refused; `problems` names every problem as `field: problem`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


async def get_policy(settings: Settings, r: Redis) -> dict[str, Any]:
    """The policy in force (a copy of DEFAULT_POLICY when none was applied)."""
    raw = await r.get(settings.keys.policy())
    if raw is None:
        return copy.deepcopy(dict(DEFAULT_POLICY))
    policy = orjson.loads(raw)
    if not isinstance(policy, dict):
        raise ValueError(f"{settings.keys.policy()} does not hold a JSON object")
    return policy


async def get_policy_version(settings: Settings, r: Redis) -> int:
    """The policy version (0 when no policy was ever applied)."""
    return int(await r.get(settings.keys.policy_version()) or 0)


async def apply_policy(settings: Settings, r: Redis, obj: Any) -> tuple[dict[str, Any], int]:
    """Validate and store a policy; return (normalised policy, new version). Raises InvalidPolicy."""
    policy, problems = validate_policy(obj)
    if policy is None or problems:
        raise InvalidPolicy(list(problems) or ["(policy): invalid"])
    async with r.pipeline(transaction=True) as pipe:
        pipe.set(settings.keys.policy(), orjson.dumps(policy))
        pipe.incr(settings.keys.policy_version())
        _ok, version = await pipe.execute()
    return policy, int(version)
