"""Per-key token buckets in Redis, so every API process shares one limit per key.

`{ns}:ratelimit:<key digest>` — hash `tokens` (float), `ts` (ms, Redis TIME): a bucket of `burst`
tokens, refilled at `rate_per_s`; each request takes one. The script reads the clock of Redis, not
of the API process, so several processes agree. The key expires once the bucket would be full again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from core.settings import Settings

_TAKE: Final = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait_ms
"""


@dataclass(frozen=True)
class RateLimit:
    """`burst` requests at once, then `rate_per_s` per second, per API key."""

    rate_per_s: float = 20.0
    burst: int = 60

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("rate limit: rate_per_s must be > 0 and burst >= 1")



async def take(settings: Settings, r: Redis, key_digest: str, limit: RateLimit) -> int:
    """Take one token; 0 when allowed, else the whole seconds to wait (for `Retry-After`, >= 1)."""
    wait_ms = await r.eval(
        _TAKE, 1, settings.keys.rate_limit(key_digest), repr(float(limit.rate_per_s)), str(limit.burst)
    )
    wait = int(wait_ms)
    return 0 if wait <= 0 else max(1, math.ceil(wait / 1000))
