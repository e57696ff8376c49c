"""Advertisers and their API keys, in Redis.

Redis layout (`{ns}` = `VICKREY_NAMESPACE`):

- `{ns}:advertiser:<advertiser_id>` — string: the advertiser JSON `{"advertiser_id", "name",
  "created_ms"}`. Its existence claims the id (ids are unique).
- `{ns}:advertisers` — hash: SHA-256 hex digest of an API key → the advertiser JSON of its owner.
  An advertiser may hold several keys (one field each); the keys themselves are never stored.

Keys are `vk_` + 32 URL-safe characters from `secrets` (192 random bits). One unsalted SHA-256 is
enough to store them: a slow password hash (bcrypt, scrypt, argon2) exists to make guessing
low-entropy *passwords* from a stolen hash expensive, and nobody can enumerate 2^192 keys however
fast the hash is. A fast hash also lets every request be authenticated by one HGET on the digest,
with no per-request CPU cost and no secret compared byte by byte.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis.asyncio import Redis

from core.settings import Settings

KEY_PREFIX: Final = "vk_"
KEY_RANDOM_BYTES: Final = 24  # 24 bytes -> 32 URL-safe base64 characters
KEY_PATTERN: Final = re.compile(r"vk_[A-Za-z0-9_-]{32}")
ID_PREFIX: Final = "adv-"
NAME_MAX: Final = 128
SLUG_MAX: Final = 60
MAX_SUFFIX: Final = 10_000

# Claim the id and register the first key in one step, so an advertiser never exists without a key.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


class AdvertiserError(ValueError):
    """An advertiser cannot be created (bad name, unknown id)."""


@dataclass(frozen=True)
class Advertiser:
    advertiser_id: str
    name: str
    created_ms: int

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"advertiser_id": self.advertiser_id, "name": self.name, "created_ms": self.created_ms}
        )

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
    settings: Settings, r: Redis, name: str, *, advertiser_id: str | None = None
) -> tuple[Advertiser, str]:
    """Create an advertiser and its first key; returns (advertiser, the key: shown once, never stored).

    The id is `adv-<slug of name>`, with `-2`, `-3`, ... appended when taken; or exactly
    `advertiser_id` when given (AdvertiserError if that one is taken).
    """
    name = clean_name(name)
    base = advertiser_id or ID_PREFIX + slug(name)
    candidates = [base] if advertiser_id else [base, *(f"{base}-{n}" for n in range(2, MAX_SUFFIX))]
    api_key = new_api_key()
    now_ms = int(time.time() * 1000)
    for candidate in candidates:
        advertiser = Advertiser(candidate, name, now_ms)
        if await _claim(settings, r, advertiser, api_key):
            return advertiser, api_key
    raise AdvertiserError(f"advertiser_id: {base!r} is taken")


async def get_advertiser(settings: Settings, r: Redis, advertiser_id: str) -> Advertiser | None:
    raw = await r.get(settings.keys.advertiser(advertiser_id))
    return None if raw is None else Advertiser.from_json(raw)


async def add_key(settings: Settings, r: Redis, advertiser_id: str) -> str:
    """A new key for an existing advertiser (its other keys keep working); AdvertiserError if unknown."""
    advertiser = await get_advertiser(settings, r, advertiser_id)
    if advertiser is None:
        raise AdvertiserError(f"no advertiser with id {advertiser_id!r}")
    api_key = new_api_key()
    await r.hset(settings.keys.advertisers(), hash_key(api_key), advertiser.to_json())
    return api_key


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
