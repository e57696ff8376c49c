"""Helpers for the CLI and store tests: run `.venv/bin/vickrey` with a test's isolated settings."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from core.redis_client import redis_from_url
from core.settings import Settings
from tests.conftest import ROOT

SAMPLES = ROOT / "vickrey" / "samples"
VICKREY = ROOT / ".venv" / "bin" / "vickrey"


def vickrey_bin() -> list[str]:
    """The console script if installed, else the module (same code)."""
    return [str(VICKREY)] if VICKREY.exists() else [sys.executable, "-m", "vickrey"]


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*vickrey_bin(), *args], env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120
    )


def load_sample(name: str) -> list[dict[str, Any]]:
    data = orjson.loads((SAMPLES / name).read_bytes())
    assert isinstance(data, list)
    return data


@pytest.fixture
async def stack(topics: Settings, redis_client: redis.Redis) -> AsyncIterator[Settings]:
    """Topics created under this test's prefix, Redis keys of its namespace removed afterwards."""
    yield topics


@pytest.fixture
async def aredis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = redis_from_url(settings.redis)
    yield client
    await client.aclose()


async def read_topic(
    settings: Settings, name: str, want_keys: set[str], timeout_s: float = 30.0
) -> dict[str, bytes | None]:
    """Read a topic from the beginning until every key of `want_keys` was seen; latest value per key."""
    consumer = AIOKafkaConsumer(
        settings.topic(name),
        bootstrap_servers=settings.kafka,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: dict[str, bytes | None] = {}
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not want_keys <= seen.keys() and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    assert rec.key is not None
                    seen[rec.key.decode()] = rec.value
    finally:
        await consumer.stop()
    return seen


def stream_entries(client: redis.Redis, key: str) -> list[dict[str, str]]:
    """Every entry of a Redis stream, fields decoded, oldest first."""
    raw: Any = client.xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in raw]


def hash_items(client: redis.Redis, key: str) -> dict[str, bytes]:
    raw: Any = client.hgetall(key)
    return {k.decode(): v for k, v in raw.items()}


def sample_path(name: str) -> Path:
    return SAMPLES / name
