"""The trust policy (docs/contract.md §4b) in Redis, announced on the compacted Kafka topic `policy`.

- `{ns}:policy` — string: the policy JSON (orjson, as normalised by
  `schemas.campaign.validate_policy`). Absent means `schemas.campaign.DEFAULT_POLICY`.
- `{ns}:policy:version` — integer, one more at every `apply_policy` (absent = 0). Workers poll it
  and reload the policy when it changes (within 1 s).

After its Redis transaction, `apply_policy` publishes `{"schema_version": 1, "version", "policy"}`
(schemas/policy.json) on `policy`, key `policy`: Redis is never the only copy (docs/contract.md §9),
and `restore_policy` puts the topic's latest back into an emptied Redis. Versions never go back:
in a namespace without a version (new, or Redis emptied) the next one continues from the topic's
latest, so a policy applied after a loss is never taken for older than the one before it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from core.compacted import read_latest
from core.settings import Settings
from schemas.campaign import DEFAULT_POLICY, validate_policy
from schemas.codec import RecordError, decode, encode
from vickrey.announce import announce_state, start_producer

log = logging.getLogger("vickrey.policy_store")

POLICY_TOPIC = "policy"
POLICY_KEY = b"policy"  # the topic's one key
MAX_WATCH_RETRIES = 50


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


def policy_record(policy: dict[str, Any], version: int) -> bytes:
    """The `policy` topic's value for a stored policy and its version."""
    return encode({"schema_version": 1, "version": version, "policy": policy})


def _read_record(latest: dict[bytes, bytes | None]) -> dict[str, Any] | None:
    """The topic's latest record, decoded and checked (None: none, a tombstone, or unreadable)."""
    raw = latest.get(POLICY_KEY)
    if raw is None:
        return None
    try:
        return decode(POLICY_TOPIC, raw)
    except RecordError as error:
        log.error("the policy topic's latest record is unreadable, not restored: %s", error)
        return None


async def _topic_version(settings: Settings) -> int:
    record = _read_record(await read_latest(settings, POLICY_TOPIC))
    return 0 if record is None else int(record["version"])


async def apply_policy(settings: Settings, r: Redis, obj: Any, *, announce: bool = True) -> tuple[dict[str, Any], int]:
    """Validate and store a policy; return (normalised policy, new version). Raises InvalidPolicy.

    Unless `announce` is False it is then published on the `policy` topic: Kafka is connected
    first (an unreachable Kafka stores nothing), and AnnounceError says so when the publish fails
    after Redis stored the policy (it is in force then; apply it again to announce it)."""
    policy, problems = validate_policy(obj)
    if policy is None or problems:
        raise InvalidPolicy(list(problems) or ["(policy): invalid"])
    producer = await start_producer(settings, [POLICY_TOPIC]) if announce else None
    try:
        version = await _store(settings, r, policy, continue_from_topic=announce)
        if producer is not None:

            async def state() -> bytes:
                raw_policy, raw_version = await r.mget([settings.keys.policy(), settings.keys.policy_version()])
                if raw_policy is None or raw_version is None:  # Redis was emptied meanwhile
                    return policy_record(policy, version)  # the policy is never a tombstone
                return policy_record(orjson.loads(raw_policy), int(raw_version))

            await announce_state(settings, producer, POLICY_TOPIC, POLICY_KEY, state,
                                 stored=f"policy version {version}")
    finally:
        if producer is not None:
            await producer.stop()
    return policy, version


async def _store(settings: Settings, r: Redis, policy: dict[str, Any], *, continue_from_topic: bool) -> int:
    """Set the policy and the next version in one MULTI/EXEC (under WATCH of the version)."""
    policy_key, version_key = settings.keys.policy(), settings.keys.policy_version()
    topic_version: int | None = None
    async with r.pipeline(transaction=True) as raw_pipe:
        pipe: Any = raw_pipe  # redis-py leaves multi() untyped
        for _attempt in range(MAX_WATCH_RETRIES):
            try:
                await pipe.watch(version_key)
                current = await pipe.get(version_key)
                if current is not None:
                    base = int(current)
                else:
                    if topic_version is None:
                        topic_version = await _topic_version(settings) if continue_from_topic else 0
                    base = topic_version
                pipe.multi()
                pipe.set(policy_key, orjson.dumps(policy))
                pipe.set(version_key, base + 1)
                await pipe.execute()
                return base + 1
            except WatchError:
                continue
    raise RuntimeError(f"the policy changed concurrently {MAX_WATCH_RETRIES} times in a row; try again")


async def restore_policy(settings: Settings, r: Redis, latest: dict[bytes, bytes | None]) -> bool:
    """Put the `policy` topic's latest record (`latest`: key → latest value, as
    core.compacted.read_latest gives it) back into Redis when Redis has no policy version or a
    lower one: policy and version in one MULTI/EXEC, under WATCH of the version, so a policy
    applied meanwhile is never overwritten. True when it wrote."""
    record = _read_record(latest)
    if record is None:
        return False
    version = int(record["version"])
    policy, _problems = validate_policy(record["policy"])  # its stored form: the fields in order
    if policy is None:
        return False  # unreachable: decode checked it
    policy_key, version_key = settings.keys.policy(), settings.keys.policy_version()
    async with r.pipeline(transaction=True) as raw_pipe:
        pipe: Any = raw_pipe
        for _attempt in range(MAX_WATCH_RETRIES):
            try:
                await pipe.watch(version_key)
                current = await pipe.get(version_key)
                if current is not None and int(current) >= version:
                    await pipe.reset()
                    return False
                pipe.multi()
                pipe.set(policy_key, orjson.dumps(policy))
                pipe.set(version_key, version)
                await pipe.execute()
                return True
            except WatchError:
                continue
    raise RuntimeError(f"the policy changed concurrently {MAX_WATCH_RETRIES} times in a row; try again")
