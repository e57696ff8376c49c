"""The aiohttp application: the public routes (`/`, `/openapi.json`, `/healthz`), the campaign
routes (vickrey/api/campaigns.py) and the middlewares (vickrey/api/http.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources
from typing import Final

from aiohttp import web
from redis.asyncio import Redis

from core.redis_client import redis_from_url
from core.settings import Settings
from vickrey.api import campaigns, conversions, ratelimit
from vickrey.api.http import (
    MAX_LIST_BODY,
    RATE_LIMIT,
    REDIS,
    SETTINGS,
    auth_middleware,
    errors_middleware,
    json_response,
)
from vickrey.api.openapi import openapi_document

PAGE_CSP: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# ---- public routes -------------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.Response:
    page = resources.files("vickrey.api").joinpath("dashboard.html").read_bytes()
    headers = {
        "Content-Security-Policy": PAGE_CSP,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    return web.Response(body=page, content_type="text/html", charset="utf-8", headers=headers)


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(), headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    await request.app[REDIS].ping()
    return json_response({"status": "ok"})


# ---- application ---------------------------------------------------------------------------------


def create_app(
    settings: Settings, *, rate_limit: ratelimit.RateLimit | None = None, redis: Redis | None = None
) -> web.Application:
    """The API app. It opens (and closes) its own Redis client unless `redis` is given."""
    app = web.Application(middlewares=[errors_middleware, auth_middleware], client_max_size=MAX_LIST_BODY)
    app[SETTINGS] = settings
    app[RATE_LIMIT] = rate_limit or ratelimit.RateLimit()

    async def redis_client(app: web.Application) -> AsyncIterator[None]:
        if redis is not None:
            app[REDIS] = redis
            yield
            return
        client = redis_from_url(settings.redis, socket_connect_timeout=5, socket_timeout=15)
        app[REDIS] = client
        yield
        await client.aclose()

    app.cleanup_ctx.append(redis_client)
    app.router.add_get("/", dashboard)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    campaigns.add_routes(app.router)
    conversions.add_routes(app)
    return app
