"""The one settings object: every `VICKREY_*` environment variable is read here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Logical topic names (DESIGN.md §3); the physical name is `topic_prefix + name`.
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
    "user.controls",
    "user.controls.applied",
    "user.controls.dlq",
    "ad.clicks.raw.dlq",
    "ad.impressions.dlq",
    "ad.clicks.dlq",
)
COMPACTED_TOPICS: frozenset[str] = frozenset({"campaigns"})


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected an integer") from None


@dataclass(frozen=True)
class Settings:
    kafka: str = "127.0.0.1:9092"
    redis: str = "redis://127.0.0.1:6379/0"
    topic_prefix: str = ""
    namespace: str = "vickrey"
    price_increment_micros: int = 10_000
    partitions: int = 6
    metrics_port: int = 9400
    # How long a decided event_id is remembered (its outcome kept for replays, its id for
    # refusing duplicates). Memory in Redis grows with event rate x this.
    event_ttl_s: int = 86_400

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        settings = cls(
            kafka=env.get("VICKREY_KAFKA") or cls.kafka,
            redis=env.get("VICKREY_REDIS") or cls.redis,
            topic_prefix=env.get("VICKREY_TOPIC_PREFIX", ""),
            namespace=env.get("VICKREY_NAMESPACE") or cls.namespace,
            price_increment_micros=_int("VICKREY_PRICE_INCREMENT_MICROS", cls.price_increment_micros),
            partitions=_int("VICKREY_PARTITIONS", cls.partitions),
            metrics_port=_int("VICKREY_METRICS_PORT", cls.metrics_port),
            event_ttl_s=_int("VICKREY_EVENT_TTL_S", cls.event_ttl_s),
        )
        if settings.price_increment_micros < 0:
            raise SystemExit("VICKREY_PRICE_INCREMENT_MICROS must be >= 0")
        if settings.event_ttl_s < 60:
            raise SystemExit("VICKREY_EVENT_TTL_S must be >= 60 (replays after a crash need the kept outcome)")
        if settings.partitions < 1:
            raise SystemExit("VICKREY_PARTITIONS must be >= 1")
        return settings

    def as_env(self) -> dict[str, str]:
        """The process environment plus these settings as `VICKREY_*` variables: what a child
        `vickrey …` process needs to see exactly this stack."""
        return dict(
            os.environ,
            VICKREY_KAFKA=self.kafka,
            VICKREY_REDIS=self.redis,
            VICKREY_TOPIC_PREFIX=self.topic_prefix,
            VICKREY_NAMESPACE=self.namespace,
            VICKREY_PRICE_INCREMENT_MICROS=str(self.price_increment_micros),
            VICKREY_PARTITIONS=str(self.partitions),
            VICKREY_METRICS_PORT=str(self.metrics_port),
            VICKREY_EVENT_TTL_S=str(self.event_ttl_s),
        )

    def topic(self, name: str) -> str:
        """Physical Kafka topic for a logical name (the prefix isolates stacks and tests)."""
        return f"{self.topic_prefix}{name}"

    def group(self, role: str) -> str:
        """Consumer group / transactional-id / Faust app id base, prefixed like the topics."""
        return f"{self.topic_prefix}{role}"

    def key(self, *parts: str) -> str:
        """A Redis key under the namespace."""
        return ":".join((self.namespace, *parts))
