"""HTTP endpoints of the reporting role (aiohttp), read from Redis so that any reporting process
answers for every campaign. Aggregates only: report records carry no user or session ids.

- `GET /reports/campaigns` — every reported campaign with its windows of the last
  `RECENT_WINDOWS` minutes, the current (still open, `"partial": true`) one included.
- `GET /reports/campaigns/{campaign_id}?from=&to=` — that campaign's windows with
  from <= window_start < to (epoch ms; default the last hour; at most 7 days).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from core.metrics import start_site
from core.settings import Settings
from streams.windows import WINDOW_MS

log = logging.getLogger("vickrey.streams.reports")
RECENT_WINDOWS = 10
DEFAULT_RANGE_MS = 3600 * 1000
MAX_WINDOWS = 7 * 1440
CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings", Settings)
REDIS_KEY: web.AppKey[Redis] = web.AppKey("redis", Redis)


def window_starts(from_ms: int, to_ms: int) -> list[int]:
    first = -(-from_ms // WINDOW_MS) * WINDOW_MS  # the first window starting at or after from
    return list(range(first, to_ms, WINDOW_MS))[-MAX_WINDOWS:]


async def read_windows(redis: Redis, settings: Settings, campaign_ids: list[str], starts: list[int]) -> dict[str, list[dict[str, Any]]]:
    fields = [str(start) for start in starts]
    async with redis.pipeline(transaction=False) as pipe:
        for campaign_id in campaign_ids:
            pipe.hmget(settings.keys.minutes(campaign_id), fields)
        results = await pipe.execute() if campaign_ids and fields else []
    return {
        campaign_id: [orjson.loads(value) for value in values if value is not None]
        for campaign_id, values in zip(campaign_ids, results, strict=False)
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def list_campaigns(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS_KEY], request.app[REDIS_KEY]
    now = int(time.time() * 1000)
    current = now - now % WINDOW_MS
    starts = [current - i * WINDOW_MS for i in range(RECENT_WINDOWS - 1, -1, -1)]
    members = await redis.smembers(settings.keys.reported_campaigns())
    campaign_ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    windows = await read_windows(redis, settings, campaign_ids, starts)
    campaigns = [{"campaign_id": cid, "windows": windows.get(cid, [])} for cid in campaign_ids]
    return _json({"now": now, "window_ms": WINDOW_MS, "campaigns": campaigns})


async def campaign_windows(request: web.Request) -> web.Response:
    settings, redis = request.app[SETTINGS_KEY], request.app[REDIS_KEY]
    campaign_id = request.match_info["campaign_id"]
    if not CAMPAIGN_ID.match(campaign_id):
        return _json({"error": "campaign_id: 1 to 128 characters of [A-Za-z0-9._:-]"}, 400)
    now = int(time.time() * 1000)
    try:
        to_ms = int(request.query.get("to", now + WINDOW_MS))
        from_ms = int(request.query.get("from", to_ms - DEFAULT_RANGE_MS))
    except ValueError:
        return _json({"error": "from and to must be integer epoch milliseconds"}, 400)
    if from_ms > to_ms:
        return _json({"error": f"from ({from_ms}) is after to ({to_ms})"}, 400)
    if not await redis.exists(settings.keys.minutes(campaign_id)):
        return _json({"error": f"no reports for campaign {campaign_id!r}"}, 404)
    windows = await read_windows(redis, settings, [campaign_id], window_starts(from_ms, to_ms))
    return _json({"campaign_id": campaign_id, "from": from_ms, "to": to_ms, "windows": windows.get(campaign_id, [])})


async def serve_reports(settings: Settings, redis: Redis, port: int, host: str = "127.0.0.1") -> tuple[web.AppRunner, int]:
    """Start the endpoints; port 0 picks a free one. Returns the runner and the bound port."""
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[REDIS_KEY] = redis
    app.router.add_get("/reports/campaigns", list_campaigns)
    app.router.add_get("/reports/campaigns/{campaign_id}", campaign_windows)
    runner, bound = await start_site(app, host, port)
    log.info("reports listening", extra={"url": f"http://{host}:{bound}/reports/campaigns"})
    return runner, bound
