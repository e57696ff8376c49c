"""`POST /v1/conversions` (docs/contract.md §8): an advertiser reports what its clicks led to.

One object or a list of up to MAX_ITEMS, accepted or refused whole: every bad field is named
(`[index].field: problem` in a list), and a click that is unknown or another advertiser's answers
404 the same way for both, with nothing recorded. The clicks are looked up where the conversions
role keeps them (`Keys.click`), so a click is known here once that role has read it from
ad.clicks (normally within a second). Accepted conversions are written to ad.conversions.raw in
one Kafka transaction (`source: advertiser`, `advertiser_id` from the key): all or none. The
conversions role then attributes each exactly once (streams/conversions.py); a conversion_id the
advertiser reported before ends as a `duplicate` there, so a retried request is harmless.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Final

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from core.redis_client import get_many
from core.settings import Settings
from schemas.checks import CollectedChecks
from schemas.conversions import check_conversion_raw
from vickrey.api.http import ADVERTISER, MAX_LIST_BODY, REDIS, SETTINGS, ApiError, json_response, read_json

RAW_TOPIC: Final = "ad.conversions.raw"
MAX_ITEMS: Final = 1000
POSTED_FIELDS: Final = frozenset({"conversion_id", "click_id", "kind", "value_micros", "ts"})


class ConversionsProducer:
    """One transactional producer per API process, one transaction at a time (a request's list is
    all or nothing); started on the first conversion, stopped with the app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None
        self.lock = asyncio.Lock()

    async def send(self, records: list[dict[str, Any]]) -> None:
        async with self.lock:
            if self.producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka, request_timeout_ms=15_000,
                                            transactional_id=f"{self.settings.topic_prefix}api-{uuid.uuid4().hex}")
                await producer.start()
                self.producer = producer
            topic = self.settings.topic(RAW_TOPIC)
            async with self.producer.transaction():
                for record in records:
                    await self.producer.send(topic, orjson.dumps(record), key=record["click_id"].encode())

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


PRODUCER: Final = web.AppKey("conversions_producer", ConversionsProducer)


def _items(body: Any) -> tuple[list[Any], bool]:
    """(items, whether the body was a list)."""
    if isinstance(body, list):
        if not 1 <= len(body) <= MAX_ITEMS:
            raise ApiError(400, [f"(body): a list of 1 to {MAX_ITEMS} conversions, got {len(body)}"])
        return body, True
    if isinstance(body, dict):
        return [body], False
    raise ApiError(400, ["(body): a conversion object or a list of them is required"])


def _checked(items: list[Any], listed: bool, advertiser_id: str, now_ms: int) -> list[dict[str, Any]]:
    """The raw records; 400 naming every problem of every item."""
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"[{index}]." if listed else ""
        if not isinstance(item, dict):
            problems.append(f"{where[:-1] if listed else '(body)'}: must be an object")
            continue
        unknown = sorted(set(item) - POSTED_FIELDS)
        problems += [f"{where}{name[:40]}: unknown field (known: {', '.join(sorted(POSTED_FIELDS))})" for name in unknown]
        record = {key: item[key] for key in POSTED_FIELDS if key in item}
        record.setdefault("ts", now_ms)
        record.update(schema_version=1, source="advertiser", advertiser_id=advertiser_id)
        checks = CollectedChecks()
        check_conversion_raw(record, checks)
        problems += [where + problem for problem in checks.problems]
        records.append(record)
    if problems:
        raise ApiError(400, problems)
    return records


async def post_conversions(request: web.Request) -> web.Response:
    settings, r, advertiser = request.app[SETTINGS], request.app[REDIS], request[ADVERTISER]
    if request.query:
        names = ", ".join(sorted(request.query))[:80]
        raise ApiError(400, [f"(query): unknown parameter(s) {names} (this operation takes none)"])
    items, listed = _items(await read_json(request, MAX_LIST_BODY))
    records = _checked(items, listed, advertiser.advertiser_id, int(time.time() * 1000))
    stored = await get_many(r, [settings.keys.click(record["click_id"]) for record in records])
    unknown = [
        f"{f'[{index}].' if listed else ''}click_id: no such click of yours ({record['click_id'][:40]!r})"
        for index, (record, click) in enumerate(zip(records, stored, strict=True))
        if click is None or orjson.loads(click)["advertiser_id"] != advertiser.advertiser_id
    ]
    if unknown:
        raise ApiError(404, unknown)
    await request.app[PRODUCER].send(records)
    return json_response({"accepted": len(records),
                          "conversion_ids": [record["conversion_id"] for record in records]}, status=202)


def add_routes(app: web.Application) -> None:
    app[PRODUCER] = ConversionsProducer(app[SETTINGS])

    async def stop_producer(app: web.Application) -> None:
        await app[PRODUCER].stop()

    app.on_cleanup.append(stop_producer)
    app.router.add_post("/v1/conversions", post_conversions)
