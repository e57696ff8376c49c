"""Kafka topics of one Vickrey stack: create them (idempotently), describe them, delete them.

Every logical topic of `TOPICS` becomes `settings.topic(name)` (the prefix isolates
stacks and tests), with `settings.partitions` partitions and one replica per broker up to three; the topics of
`COMPACTED_TOPICS` (the latest state per key, tombstone = deleted: `campaigns`, `campaigns.autopilot`,
and the copies of what Redis holds, `policy`, `advertisers`, `user.controls.state`) get
`cleanup.policy=compact`. Existing topics are left exactly as they are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.metadata import MetadataRequest

from core.settings import Settings

log = logging.getLogger(__name__)

# Logical topic names (docs/contract.md §3); the physical name is `settings.topic(name)`.
TOPICS: tuple[str, ...] = (
    "chat.intents",
    "chat.intents.dlq",
    "ad.decisions",
    "ad.impressions",
    "ad.clicks.raw",
    "ad.clicks",
    "ad.clicks.invalid",
    "billing.ledger",
    "reports.campaign-minute",
    "campaigns",
    "campaigns.autopilot",
    "autopilot.feed",  # internal: the autopilot-feed role's aggregates for the autopilot (streams/)
    "ad.conversions.raw",
    "ad.conversions",
    "ad.conversions.invalid",
    "conversions.pending",  # internal: conversions waiting for their click (streams/conversions.py)
    "conversions.by-campaign",  # internal: attributed conversions keyed by campaign, for reporting
    "user.controls",
    "user.controls.applied",
    "user.controls.dlq",
    "ad.clicks.raw.dlq",
    "ad.impressions.dlq",
    "ad.clicks.dlq",
    "ad.conversions.raw.dlq",
    # Compacted copies of what Redis holds (docs/contract.md §9), which `vickrey reconcile` restores:
    "policy",  # the trust policy and its version (vickrey/policy_store.py)
    "advertisers",  # each advertiser and its API key hashes (vickrey/advertisers.py)
    "user.controls.state",  # each person's ad controls; forget = tombstone (auction/controls.py)
)
COMPACTED_TOPICS: frozenset[str] = frozenset(
    {"campaigns", "campaigns.autopilot", "policy", "advertisers", "user.controls.state"}
)

# Replicas per topic: one per broker up to three (`make up BROKERS=3`: docs/contract.md §9); with
# three, a write needs two in sync, so one broker can die without losing an acknowledged record.
MAX_REPLICATION_FACTOR = 3
MIN_INSYNC_WITH_THREE = 2
LEADER_WAIT_S = 30.0
METADATA_RETRIES, METADATA_RETRY_S = 10, 0.2  # up to ~2 s for a broker to learn of a new topic
_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno
_UNKNOWN_TOPIC = 3


@dataclass
class TopicsReport:
    """What `create_topics` did: physical names created and those that already existed."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TopicInfo:
    """One physical topic as the broker describes it (`partitions` 0 and `exists` False when missing)."""

    name: str
    exists: bool
    partitions: int = 0
    cleanup_policy: str | None = None
    replicas: int = 0  # replication factor (of its first partition)
    min_insync_replicas: str | None = None


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client for `settings.kafka`, closed on exit."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka, request_timeout_ms=15_000)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


def topic_configs(name: str, replication_factor: int = 1) -> dict[str, str]:
    """Topic-level configuration for a logical topic name, at that replication factor."""
    configs = {"cleanup.policy": "compact"} if name in COMPACTED_TOPICS else {}
    if replication_factor >= MAX_REPLICATION_FACTOR:
        configs["min.insync.replicas"] = str(MIN_INSYNC_WITH_THREE)
    return configs


async def replication_factor(admin: AIOKafkaAdminClient) -> int:
    """One replica per broker of the cluster, up to MAX_REPLICATION_FACTOR."""
    cluster = await admin.describe_cluster()
    return max(1, min(MAX_REPLICATION_FACTOR, len(cluster.get("brokers") or [])))


async def create_topics(settings: Settings, names: Iterable[str] | None = None) -> TopicsReport:
    """Create the given logical topics (default: all of `TOPICS`) unless they exist; wait for leaders."""
    logical = list(dict.fromkeys(TOPICS if names is None else names))
    report = TopicsReport()
    if not logical:
        return report
    async with admin_client(settings) as admin:
        present = await listed_anywhere(admin)
        missing = [n for n in logical if settings.topic(n) not in present]
        report.existing = [settings.topic(n) for n in logical if settings.topic(n) in present]
        if missing:
            replicas = await replication_factor(admin)
            new = [
                NewTopic(settings.topic(n), settings.partitions, replicas, topic_configs=topic_configs(n, replicas))
                for n in missing
            ]
            response = await admin.create_topics(new)
            for topic, code, message in _topic_errors(response):
                if code == 0:
                    report.created.append(topic)
                elif code == _TOPIC_ALREADY_EXISTS:  # created concurrently by someone else
                    report.existing.append(topic)
                else:
                    raise for_code(code)(f"creating topic {topic}: {message or 'error code ' + str(code)}")
        await _wait_for_leaders(admin, report.created + report.existing)
    for topic in report.existing:
        log.info("topic %s already exists; left alone", topic)
    return report


async def ensure_topics(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Create every contract topic (or just `names`, logical) idempotently; return the physical names created.

    Topics that already exist are left alone (logged at INFO). Returns once every topic has a leader,
    so producers started right afterwards do not fail.
    """
    return (await create_topics(settings, names)).created


async def describe_topics(settings: Settings, names: Iterable[str] | None = None) -> list[TopicInfo]:
    """Partitions and cleanup policy of the given logical topics (default: all of `TOPICS`)."""
    physical = [settings.topic(n) for n in dict.fromkeys(TOPICS if names is None else names)]
    wanted = {"cleanup.policy": None, "min.insync.replicas": None}
    partitions: dict[str, int] = {}
    replicas: dict[str, int] = {}
    configs: dict[str, dict[str, str]] = {}
    present: set[str] = set()
    if not physical:
        return []
    async with admin_client(settings) as admin:
        for attempt in range(METADATA_RETRIES):
            # With several brokers, one may learn of a topic just created a moment after another
            # (seen on three brokers: a listed topic missing, or described with no partitions or
            # configs by the broker asked): ask again briefly before calling anything missing.
            present = await listed_anywhere(admin)
            found = [t for t in physical if t in present]
            known = len(found) == len(physical)
            if found:
                for meta in await admin.describe_topics(found):
                    known = known and bool(meta["partitions"]) and not meta.get("error_code")
                    partitions[meta["topic"]] = len(meta["partitions"])
                    replicas[meta["topic"]] = len(meta["partitions"][0]["replicas"]) if meta["partitions"] else 0
                resources = [ConfigResource(ConfigResourceType.TOPIC, t, wanted) for t in found]
                for response in await admin.describe_configs(resources):
                    for code, _msg, _type, name, entries in response.resources:
                        known = known and not code
                        configs[name] = {entry[0]: entry[1] for entry in entries if entry[0] in wanted}
            if known or attempt == METADATA_RETRIES - 1:
                break
            await asyncio.sleep(METADATA_RETRY_S)
    return [
        TopicInfo(t, True, partitions.get(t, 0), configs.get(t, {}).get("cleanup.policy"), replicas.get(t, 0),
                  configs.get(t, {}).get("min.insync.replicas"))
        if t in present
        else TopicInfo(t, False)
        for t in physical
    ]


async def listed_anywhere(admin: AIOKafkaAdminClient) -> set[str]:
    """The topics any broker lists. Each broker answers from its own copy of the cluster's
    metadata, and under load one learns of a topic created a moment ago later than the others
    (seen on three brokers: topics created and described, then missing from the next list)."""
    client = admin._client  # noqa: SLF001 - aiokafka's admin has no per-broker metadata request
    brokers = client.cluster.brokers()
    if not brokers:  # no metadata yet: one broker's answer is all there is
        return set(await admin.list_topics())
    names: set[str] = set()
    for broker in brokers:
        response = await client.send(broker.nodeId, MetadataRequest(None))
        names.update(topic["topic"] for topic in response.to_object()["topics"])
    return names


async def delete_topics(settings: Settings) -> list[str]:
    """Delete every topic whose name starts with `settings.topic_prefix`; return the names deleted.

    Refuses to run with an empty prefix: that would delete every topic of the cluster.
    """
    prefix = settings.topic_prefix
    if not prefix:
        raise ValueError(
            "refusing to delete topics: VICKREY_TOPIC_PREFIX is empty (that would mean every topic)"
        )
    async with admin_client(settings) as admin:
        doomed = sorted(t for t in await listed_anywhere(admin) if t.startswith(prefix))
        if doomed:
            response = await admin.delete_topics(doomed)
            for topic, code, *_rest in getattr(response, "topic_error_codes", []):
                if code not in (0, _UNKNOWN_TOPIC):
                    log.warning("deleting topic %s failed with error code %s", topic, code)
    return doomed


async def topic_partitions(settings: Settings, topic: str, timeout_s: float = LEADER_WAIT_S) -> list[TopicPartition]:
    """The partitions of the physical `topic`, once each has a leader (a topic created a moment ago
    may take a few tries)."""
    async with admin_client(settings) as admin:
        await _wait_for_leaders(admin, [topic], timeout_s)
        (meta,) = await admin.describe_topics([topic])
    return [TopicPartition(topic, part["partition"]) for part in sorted(meta["partitions"], key=lambda p: p["partition"])]


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """(topic, error_code, error_message) of a CreateTopics response of any version."""
    out: list[tuple[str, int, str | None]] = []
    for entry in response.topic_errors:
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and isinstance(entry[2], str) else None
        out.append((topic, code, message))
    return out


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float = LEADER_WAIT_S) -> None:
    """Poll metadata until every partition of `topics` has a leader."""
    if not topics:
        return
    deadline = time.monotonic() + timeout_s
    pending = list(topics)
    while True:
        ready: set[str] = set()
        for meta in await admin.describe_topics(pending):
            parts = meta.get("partitions") or []
            if meta.get("error_code", 0) == 0 and parts and all(p.get("leader", -1) >= 0 for p in parts):
                ready.add(meta["topic"])
        pending = [t for t in pending if t not in ready]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s:.0f} s: {', '.join(pending)}")
        await asyncio.sleep(0.1)
