"""Shared fixtures. Every test gets its own topic prefix and Redis namespace, so tests never
see each other's data; services are the real Kafka and Redis started by `make up`."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisClusterException

from core.redis_client import sync_redis_from_url
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VICKREY_SHARED", ROOT.parent / "shared"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite tests what runs: stale compiled modules (older than their source) would test old
    code, so they stop it; CI also requires the hot path compiled (VICKREY_REQUIRE_NATIVE=1)."""
    from core import native

    try:
        native.check(require=os.environ.get("VICKREY_REQUIRE_NATIVE") == "1")
    except RuntimeError as problem:
        pytest.exit(str(problem), returncode=3)


def unique_tag(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tag() -> str:
    return unique_tag()


def _drop_namespace(settings: Settings) -> None:
    try:
        client = sync_redis_from_url(settings.redis)
    except RedisClusterException:
        return  # a blocking cluster client asks for the slot map at once: no cluster answers
    try:
        keys = list(client.scan_iter(match=f"{settings.namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        pass  # Redis is not part of every test
    finally:
        client.close()


@pytest.fixture
def settings(tag: str) -> Iterator[Settings]:
    """Settings isolated to this test: topic prefix `<tag>.` and Redis namespace `<tag>`; the
    namespace's keys are removed afterwards (workers the test ran write there too)."""
    base = Settings.from_env()
    isolated = base.with_(
        topic_prefix=f"{tag}.", namespace=tag, partitions=int(os.environ.get("VICKREY_TEST_PARTITIONS", "3")), metrics_port=0
    )
    yield isolated
    _drop_namespace(isolated)


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """Environment for subprocesses (the CLI, workers) that must see this test's isolation."""
    return settings.as_env()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    """A real Redis client on this test's namespace (the `settings` fixture removes its keys)."""
    client = sync_redis_from_url(settings.redis)
    yield client
    client.close()


@pytest.fixture
async def topics(settings: Settings) -> AsyncIterator[Settings]:
    """Create every contract topic under this test's prefix; delete them afterwards."""
    from core.topics import delete_topics, ensure_topics

    await ensure_topics(settings)
    yield settings
    await delete_topics(settings)
