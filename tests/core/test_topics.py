"""`ensure_topics` / `vickrey topics create` against the real broker."""

from __future__ import annotations

import pytest

from core.settings import Settings
from core.topics import COMPACTED_TOPICS, TOPICS, admin_client, delete_topics, describe_topics, ensure_topics
from tests.vickrey.conftest import run_cli

pytestmark = pytest.mark.integration


async def test_ensure_topics_is_idempotent_with_partitions_and_compaction(settings: Settings) -> None:
    try:
        created = await ensure_topics(settings)
        assert sorted(created) == sorted(settings.topic(n) for n in TOPICS)
        assert await ensure_topics(settings) == []  # second run: everything exists, nothing created

        infos = {i.name: i for i in await describe_topics(settings)}
        async with admin_client(settings) as admin:
            brokers = len((await admin.describe_cluster())["brokers"])
        for name in TOPICS:
            info = infos[settings.topic(name)]
            assert info.exists and info.partitions == settings.partitions, info
            want = "compact" if name in COMPACTED_TOPICS else "delete"
            assert info.cleanup_policy == want, info
            # One replica per broker up to three; with three, a write needs two in sync (§9).
            assert info.replicas == min(3, brokers), info
            if brokers >= 3:
                assert info.min_insync_replicas == "2", info
        async with admin_client(settings) as admin:  # leaders are there right after ensure_topics
            for meta in await admin.describe_topics([settings.topic(n) for n in TOPICS]):
                assert all(p["leader"] >= 0 for p in meta["partitions"]), meta
    finally:
        deleted = await delete_topics(settings)
    assert sorted(deleted) == sorted(settings.topic(n) for n in TOPICS)


async def test_ensure_topics_subset_and_existing_left_alone(settings: Settings) -> None:
    try:
        assert await ensure_topics(settings, ["campaigns"]) == [settings.topic("campaigns")]
        # an existing topic keeps its partition count even when settings ask for more
        more = settings.with_(partitions=settings.partitions + 2)
        assert await ensure_topics(more, ["campaigns", "ad.clicks"]) == [settings.topic("ad.clicks")]
        infos = {i.name: i for i in await describe_topics(more, ["campaigns", "ad.clicks"])}
        assert infos[settings.topic("campaigns")].partitions == settings.partitions
        assert infos[settings.topic("ad.clicks")].partitions == settings.partitions + 2
    finally:
        await delete_topics(settings)


async def test_delete_topics_refuses_an_empty_prefix(settings: Settings) -> None:
    with pytest.raises(ValueError, match="PREFIX is empty"):
        await delete_topics(settings.with_(topic_prefix=""))


async def test_cli_topics_create_twice(settings: Settings, env: dict[str, str]) -> None:
    try:
        first = run_cli(env, "topics", "create")
        assert first.returncode == 0, first.stderr
        assert f"created {len(TOPICS)}, existing 0" in first.stdout
        assert f"created  {settings.topic('campaigns')}" in first.stdout
        second = run_cli(env, "topics", "create")
        assert second.returncode == 0, second.stderr
        assert f"created 0, existing {len(TOPICS)}" in second.stdout
        listed = run_cli(env, "topics", "list")
        assert listed.returncode == 0, listed.stderr
        assert f"{settings.topic('campaigns')}" in listed.stdout and "cleanup.policy=compact" in listed.stdout
        assert "missing" not in listed.stdout
    finally:
        await delete_topics(settings)
