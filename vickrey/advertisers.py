"""Advertisers and their API keys, in Redis, announced on the compacted Kafka topic `advertisers`.

Redis layout (`{ns}` = `VICKREY_NAMESPACE`):

- `{ns}:{advertisers}:<advertiser_id>` — string: the advertiser JSON `{"advertiser_id", "name",
  "created_ms"}`. Its existence claims the id (ids are unique).
- `{ns}:{advertisers}` — hash: SHA-256 hex digest of an API key → the advertiser JSON of its owner.
  An advertiser may hold several keys (one field each); the keys themselves are never stored.
  Both share the hash tag `{advertisers}`: the create script and the restore's MULTI/EXEC keep to
  one slot on a Redis Cluster (core/keys.py).

After each change of an advertiser's keys (`create_advertiser`, `add_key`) the advertiser and the
SHA-256 of every key it holds are published on `advertisers` (key advertiser_id;
schemas/advertisers.json): Redis is never the only copy (docs/contract.md §9), and
`restore_advertisers` puts the topic's latest back where Redis lacks it. Only hashes go to Kafka.

Keys are `vk_` + 32 URL-safe characters from `secrets` (192 random bits). One unsalted SHA-256 is
enough to store them: a slow password hash (bcrypt, scrypt, argon2) exists to make guessing
low-entropy *passwords* from a stolen hash expensive, and nobody can enumerate 2^192 keys however
fast the hash is. A fast hash also lets every request be authenticated by one HGET on the digest,
with no per-request CPU cost and no secret compared byte by byte.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis.asyncio import Redis

from core.settings import Settings
from schemas.checks import ID_PATTERN
from schemas.codec import RecordError, decode, encode
from vickrey.announce import AnnounceError, announce_state, start_producer

log = logging.getLogger("vickrey.advertisers")

ADVERTISERS_TOPIC: Final = "advertisers"

KEY_PREFIX: Final = "vk_"
KEY_RANDOM_BYTES: Final = 24  # 24 bytes -> 32 URL-safe base64 characters
KEY_PATTERN: Final = re.compile(r"vk_[A-Za-z0-9_-]{32}")
ID_PREFIX: Final = "adv-"
NAME_MAX: Final = 128
SLUG_MAX: Final = 60
MAX_SUFFIX: Final = 10_000
KEYS_MAX: Final = 500  # API keys per advertiser (an advertisers record holds up to 1000 hashes)
RESTORE_CHUNK: Final = 500

# Claim the id and register the first key in one step, so an advertiser never exists without a key.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


class AdvertiserError(ValueError):
    """An advertiser cannot be created (bad name, unknown id)."""


class KeyNotAnnounced(AnnounceError):
    """The advertiser and its new API key are stored in Redis and work, but announcing them on
    Kafka failed. `api_key` is the new key: shown only this once, so callers still hand it over."""

    def __init__(self, message: str, advertiser: Advertiser, api_key: str) -> None:
        super().__init__(message)
        self.advertiser = advertiser
        self.api_key = api_key


@dataclass(frozen=True)
class Advertiser:
    advertiser_id: str
    name: str
    created_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"advertiser_id": self.advertiser_id, "name": self.name, "created_ms": self.created_ms}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> Advertiser:
        data: Any = orjson.loads(raw)
        return cls(str(data["advertiser_id"]), str(data["name"]), int(data["created_ms"]))


def hash_key(api_key: str) -> str:
    """The stored form of an API key: its SHA-256 hex digest."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def slug(name: str) -> str:
    """`Café Röst & Co.` → `cafe-rost-co`: ASCII lowercase letters and digits joined by `-`."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    if text.startswith(ID_PREFIX):
        text = text[len(ID_PREFIX) :]
    return text[:SLUG_MAX].strip("-")


def clean_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned or len(cleaned) > NAME_MAX:
        raise AdvertiserError(f"name: must be 1 to {NAME_MAX} characters, not only spaces")
    if not slug(cleaned):
        raise AdvertiserError(
            f"name: {name!r} needs at least one ASCII letter or digit (the id is made from it)"
        )
    return cleaned


async def _claim(settings: Settings, r: Redis, advertiser: Advertiser, api_key: str) -> bool:
    keys = [settings.keys.advertiser(advertiser.advertiser_id), settings.keys.advertisers()]
    created = await r.eval(_CREATE, 2, *keys, advertiser.to_json(), hash_key(api_key))
    return bool(created)


async def create_advertiser(
    settings: Settings, r: Redis, name: str, *, advertiser_id: str | None = None, announce: bool = True
) -> tuple[Advertiser, str]:
    """Create an advertiser and its first key; returns (advertiser, the key: shown once, never stored).

    The id is `adv-<slug of name>`, with `-2`, `-3`, ... appended when taken; or exactly
    `advertiser_id` when given (AdvertiserError if that one is taken or no id).

    Unless `announce` is False, the advertiser is then published on `advertisers`: Kafka is
    connected first (an unreachable Kafka stores nothing), and KeyNotAnnounced (carrying the key)
    says so when the publish fails after Redis stored the advertiser.
    """
    name = clean_name(name)
    if advertiser_id is not None and not (len(advertiser_id) <= 128 and ID_PATTERN[0].fullmatch(advertiser_id)):
        raise AdvertiserError(f"advertiser_id: {advertiser_id!r} {ID_PATTERN[1]}, at most 128 characters")
    base = advertiser_id or ID_PREFIX + slug(name)
    candidates = [base] if advertiser_id else [base, *(f"{base}-{n}" for n in range(2, MAX_SUFFIX))]
    api_key = new_api_key()
    now_ms = int(time.time() * 1000)
    producer = await start_producer(settings, [ADVERTISERS_TOPIC]) if announce else None
    try:
        for candidate in candidates:
            advertiser = Advertiser(candidate, name, now_ms)
            if await _claim(settings, r, advertiser, api_key):
                if producer is not None:
                    await _announce(settings, r, producer, advertiser, api_key, "created")
                return advertiser, api_key
    finally:
        if producer is not None:
            await producer.stop()
    raise AdvertiserError(f"advertiser_id: {base!r} is taken")


async def get_advertiser(settings: Settings, r: Redis, advertiser_id: str) -> Advertiser | None:
    raw = await r.get(settings.keys.advertiser(advertiser_id))
    return None if raw is None else Advertiser.from_json(raw)


async def add_key(settings: Settings, r: Redis, advertiser_id: str, *, announce: bool = True) -> str:
    """A new key for an existing advertiser (its other keys keep working); AdvertiserError if unknown
    or when it holds KEYS_MAX keys already. Announced like `create_advertiser`'s first key."""
    advertiser = await get_advertiser(settings, r, advertiser_id)
    if advertiser is None:
        raise AdvertiserError(f"no advertiser with id {advertiser_id!r}")
    if len(await key_hashes(settings, r, advertiser_id)) >= KEYS_MAX:
        raise AdvertiserError(f"advertiser {advertiser_id!r} holds {KEYS_MAX} API keys already, the most it may")
    api_key = new_api_key()
    producer = await start_producer(settings, [ADVERTISERS_TOPIC]) if announce else None
    try:
        await r.hset(settings.keys.advertisers(), hash_key(api_key), advertiser.to_json())
        if producer is not None:
            await _announce(settings, r, producer, advertiser, api_key, "given a new API key")
    finally:
        if producer is not None:
            await producer.stop()
    return api_key


async def key_hashes(settings: Settings, r: Redis, advertiser_id: str) -> list[str]:
    """The SHA-256 digests of every API key of the advertiser, sorted. Reads the whole key hash
    (one HGETALL): fine at the rate advertisers get keys."""
    stored: dict[Any, Any] = await r.hgetall(settings.keys.advertisers())
    digests = (digest.decode() if isinstance(digest, bytes) else str(digest)
               for digest, raw in stored.items() if Advertiser.from_json(raw).advertiser_id == advertiser_id)
    return sorted(digests)


def advertiser_record(advertiser: Advertiser, digests: list[str]) -> bytes:
    """The `advertisers` topic's value: the advertiser and the sorted hashes of its keys."""
    return encode({"schema_version": 1, "advertiser": advertiser.to_dict(), "key_hashes": sorted(digests)})


async def _announce(settings: Settings, r: Redis, producer: Any, advertiser: Advertiser, api_key: str,
                    what: str) -> None:
    """Publish the advertiser with every key hash it holds now (KeyNotAnnounced when that fails)."""

    async def state() -> bytes:
        digests = await key_hashes(settings, r, advertiser.advertiser_id)
        # Redis emptied meanwhile: the key just made is still the advertiser's (restore puts it back).
        return advertiser_record(advertiser, digests or [hash_key(api_key)])

    try:
        await announce_state(settings, producer, ADVERTISERS_TOPIC, advertiser.advertiser_id.encode(), state,
                             stored=f"advertiser {advertiser.advertiser_id} ({what}; the new key works)")
    except AnnounceError as exc:
        raise KeyNotAnnounced(f"{exc}. A later key of the advertiser announces every key it holds",
                              advertiser, api_key) from exc


async def authenticate(settings: Settings, r: Redis, api_key: str) -> Advertiser | None:
    """The owner of `api_key`, or None for a malformed or unknown key."""
    if not KEY_PATTERN.fullmatch(api_key):
        return None
    raw = await r.hget(settings.keys.advertisers(), hash_key(api_key))
    return None if raw is None else Advertiser.from_json(raw)


async def list_advertisers(settings: Settings, r: Redis) -> list[tuple[Advertiser, int]]:
    """Every advertiser that holds a key, with its number of keys, sorted by id."""
    stored: dict[Any, Any] = await r.hgetall(settings.keys.advertisers())
    found: dict[str, tuple[Advertiser, int]] = {}
    for raw in stored.values():
        adv = Advertiser.from_json(raw)
        _, count = found.get(adv.advertiser_id, (adv, 0))
        found[adv.advertiser_id] = (adv, count + 1)
    return [found[k] for k in sorted(found)]


async def restore_advertisers(settings: Settings, r: Redis, latest: dict[bytes, bytes | None]) -> int:
    """Put back what Redis lacks of the `advertisers` topic's latest records (`latest`: key →
    latest value, as core.compacted.read_latest gives it): the advertiser (SET NX) and each of its
    key hashes (HSETNX), so nothing Redis holds is overwritten. The writes of up to RESTORE_CHUNK
    advertisers are one MULTI/EXEC: a key added meanwhile finds the advertiser with all its
    restored keys, or no advertiser, and is announced with them. Returns how many
    advertisers it restored something for; an unreadable record is logged and skipped."""
    records: list[tuple[Advertiser, list[str]]] = []
    for key, value in sorted(latest.items()):
        if value is None:
            continue  # advertisers are never deleted; nothing to restore
        try:
            record = decode(ADVERTISERS_TOPIC, value)
        except RecordError as error:
            log.error("advertisers record %r is unreadable, not restored: %s", key, error)
            continue
        data = record["advertiser"]
        records.append((Advertiser(data["advertiser_id"], data["name"], data["created_ms"]), record["key_hashes"]))
    restored = 0
    for start in range(0, len(records), RESTORE_CHUNK):
        chunk = records[start : start + RESTORE_CHUNK]
        pipe: Any = r.pipeline(transaction=True)  # one MULTI/EXEC per chunk
        for advertiser, digests in chunk:
            raw = advertiser.to_json()
            pipe.set(settings.keys.advertiser(advertiser.advertiser_id), raw, nx=True)
            for digest in digests:
                pipe.hsetnx(settings.keys.advertisers(), digest, raw)
        results = iter(await pipe.execute())
        for _advertiser, digests in chunk:
            wrote = [next(results) for _ in range(1 + len(digests))]
            restored += any(wrote)
    return restored
