"""What every handler shares: the app's keys, JSON answers and errors, the body limit, and the
two middlewares (JSON errors; API keys and rate limits).

Every error answers `{"errors": ["field: problem", ...]}`. Everything under `/v1/` needs
`Authorization: Bearer <key>` (401 otherwise), then takes one token of that key's bucket (429 with
`Retry-After` when empty; see `ratelimit`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.settings import Settings
from vickrey.advertisers import Advertiser, authenticate, hash_key
from vickrey.api import ratelimit

log = logging.getLogger("vickrey.api")

MAX_BODY: Final = 64 * 1024  # a larger body answers 413
MAX_LIST_BODY: Final = 1024 * 1024  # for the endpoints that take lists (1,000 conversions); the app's own limit
SETTINGS: Final = web.AppKey("settings", Settings)
REDIS: Final = web.AppKey("redis", Redis)
RATE_LIMIT: Final = web.AppKey("rate_limit", ratelimit.RateLimit)
ADVERTISER: Final = web.RequestKey("advertiser", Advertiser)
JSON_HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """Answered as `{"errors": problems}` with `status` (and `headers`)."""

    def __init__(self, status: int, problems: list[str], headers: dict[str, str] | None = None) -> None:
        super().__init__("; ".join(problems))
        self.status = status
        self.problems = problems
        self.headers = headers or {}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={**JSON_HEADERS, **(headers or {})},
    )


def error_response(status: int, problems: list[str], headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"errors": problems}, status, headers)


_HTTP_PROBLEMS: Final = {
    404: "(path): not found",
    405: "(method): not allowed here",
    413: f"(body): larger than the {MAX_LIST_BODY}-byte (1024 KiB) limit",
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON error; storage outages as 503; anything unexpected as a logged 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.problems, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {h: exc.headers[h] for h in ("Allow", "Retry-After") if h in exc.headers}
        problem = _HTTP_PROBLEMS.get(exc.status, f"(request): {exc.reason}")
        return error_response(exc.status, [problem], keep)
    except RedisError as exc:
        log.warning("redis failed during %s %s: %s", request.method, request.path, exc)
        return error_response(503, ["service: storage (Redis) unavailable; try again shortly"])
    except (KafkaError, TimeoutError) as exc:
        log.warning("kafka failed during %s %s: %s", request.method, request.path, exc)
        return error_response(503, ["service: Kafka unavailable, nothing was changed; try again shortly"])
    except Exception:
        log.exception("unexpected error during %s %s", request.method, request.path)
        return error_response(500, ["service: internal error"])


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`/v1/...` needs a known key (401), then a token from its bucket (429)."""
    if not (request.path == "/v1" or request.path.startswith("/v1/")):
        return await handler(request)
    settings, r = request.app[SETTINGS], request.app[REDIS]
    key = _bearer(request)
    advertiser = None if key is None else await authenticate(settings, r, key)
    if key is None or advertiser is None:
        raise ApiError(
            401,
            ["authorization: missing or unknown API key; send `Authorization: Bearer <key>`"],
            {"WWW-Authenticate": 'Bearer realm="vickrey"'},
        )
    wait_s = await ratelimit.take(settings, r, hash_key(key), request.app[RATE_LIMIT])
    if wait_s:
        raise ApiError(
            429, [f"rate limit: too many requests with this key; retry after {wait_s} s"],
            {"Retry-After": str(wait_s)},
        )  # fmt: skip
    request[ADVERTISER] = advertiser
    return await handler(request)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, [f"(body): larger than the {limit}-byte ({limit // 1024} KiB) limit"])


async def read_json(request: web.Request, limit: int = MAX_BODY) -> Any:
    """The request body as JSON: 413 past `limit` (checked before reading when the length is
    declared), 400 when unreadable."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    raw = await request.read()  # the app's client_max_size (MAX_LIST_BODY) stops a longer chunked body
    if len(raw) > limit:
        raise _too_large(limit)
    if not raw.strip():
        raise ApiError(400, ["(body): a JSON object is required"])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, [f"(body): not valid JSON (UTF-8): {exc}"]) from None


