"""The advertiser HTTP API and dashboard (`vickrey api`): see `app` for the routes and docs/contract.md §4b.

`main(settings, args)` serves it; `demo_key(settings)` hands `make demo` a key of the demo advertiser.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from aiohttp import web
from redis.asyncio import Redis

from core.logs import setup as setup_logs
from core.redis_client import redis_from_url
from core.settings import Settings
from vickrey.advertisers import AdvertiserError, add_key, create_advertiser, get_advertiser
from vickrey.api.app import create_app

__all__ = ["DEMO_ADVERTISER_ID", "create_app", "demo_key", "main"]

DEMO_ADVERTISER_ID: Final = "adv-voltbook"  # owns two of the sample campaigns (vickrey/samples)
DEMO_ADVERTISER_NAME: Final = "VoltBook"
DEFAULT_HOST: Final = "0.0.0.0"  # every interface, as docker-compose's port mapping needs


def main(settings: Settings, port: int = 8080, host: str = DEFAULT_HOST) -> int:
    """Serve the API and dashboard until interrupted (`vickrey api`)."""
    setup_logs("api")
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host

    def announce(_text: str) -> None:
        print(
            f"vickrey api: serving on {host}:{port}; dashboard http://{local}:{port}/  "
            f"OpenAPI http://{local}:{port}/openapi.json",
            flush=True,
        )

    try:
        web.run_app(create_app(settings), host=host, port=port, print=announce, handle_signals=True)
    except OSError as exc:
        print(f"vickrey: error: cannot serve on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def ademo_key(settings: Settings, r: Redis) -> str:
    """A new key of the demo advertiser, created (with exactly that id) if missing."""
    if await get_advertiser(settings, r, DEMO_ADVERTISER_ID) is None:
        try:
            _advertiser, key = await create_advertiser(
                settings, r, DEMO_ADVERTISER_NAME, advertiser_id=DEMO_ADVERTISER_ID
            )
            return key
        except AdvertiserError:
            pass  # created concurrently: add a key instead
    return await add_key(settings, r, DEMO_ADVERTISER_ID)


def demo_key(settings: Settings) -> str:
    """A fresh API key of the demo advertiser `adv-voltbook` (earlier keys keep working).

    Synchronous; safe to call from inside a running event loop too (it then runs in a thread).
    """

    async def run() -> str:
        r = redis_from_url(settings.redis, socket_connect_timeout=5, socket_timeout=15)
        try:
            return await ademo_key(settings, r)
        finally:
            await r.aclose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(run())).result()
