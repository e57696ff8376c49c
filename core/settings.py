"""The one settings object: every `VICKREY_*` setting of the product is a field here and nowhere else
(the load tests' `VICKREY_LOAD_*`, `make up`'s `VICKREY_UP_TIMEOUT` and the test suite's switches
belong to those tools, not to Vickrey).

pydantic-settings reads them (`Settings()`); each field's description is the help text the CLI
prints, so the documented settings cannot drift from the real ones. Empty variables count as
unset. Bad values stop the process with the variable and the problem named (`SettingsError`).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.keys import Keys
from core.redis_client import parse_redis_url

ENV_PREFIX = "VICKREY_"


class SettingsError(ValueError):
    """A `VICKREY_*` variable holds a value Vickrey cannot use; the message names each one."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    kafka: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (comma-separated)")
    redis: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL; redis+cluster://host:port[,host:port...] names a Redis Cluster by its seed nodes",
    )
    topic_prefix: str = Field(
        "", description="prefixes every topic, consumer group, transactional id and Faust app id"
    )
    namespace: str = Field("vickrey", min_length=1, description="prefixes every Redis key")
    price_increment_micros: int = Field(10_000, ge=0, description="added to a price set by the runner-up")
    partitions: int = Field(6, ge=1, description="partitions of newly created topics")
    metrics_port: int = Field(
        9400, ge=0, le=65535, description="/metrics and /healthz; 0 picks a free port"
    )
    event_ttl_s: int = Field(
        86_400,
        ge=60,
        description="how long a decided event_id is remembered (duplicates); Redis memory grows "
        "with event rate x this (~240 bytes per event)",
    )

    autopilot_decide_every_s: int = Field(
        300,
        ge=1,
        description="how often (seconds of event time) the autopilot decides each campaign's bid and "
        "targeting; its input windows are a fifth of this, 1 to 60 s",
    )
    conversion_window_s: int = Field(
        7 * 86_400,
        ge=60,
        description="how long after its click a conversion is attributed (judged on the records' own "
        "times); conversion ids are remembered this long per advertiser (duplicates)",
    )

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parse_redis_url(value)  # its ValueError names the problem
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The settings of this process's environment (`overrides` win); SettingsError names every
        variable that is wrong."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError("; ".join(_problem(error) for error in exc.errors())) from None

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated like the environment)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def as_env(self) -> dict[str, str]:
        """The process environment plus these settings as `VICKREY_*` variables: what a child
        `vickrey …` process needs to see exactly this stack."""
        return dict(os.environ, **{env_name(name): str(value) for name, value in self.model_dump().items()})

    @property
    def keys(self) -> Keys:
        """Every Redis key of this namespace (core/keys.py)."""
        return Keys(self.namespace)

    def topic(self, name: str) -> str:
        """Physical Kafka topic for a logical name (the prefix isolates stacks and tests)."""
        return f"{self.topic_prefix}{name}"

    def logical(self, physical: str) -> str:
        """The logical topic name of a physical one."""
        return physical[len(self.topic_prefix) :] if physical.startswith(self.topic_prefix) else physical

    def group(self, role: str) -> str:
        """Consumer group / transactional-id / Faust app id base, prefixed like the topics."""
        return f"{self.topic_prefix}{role}"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def settings_help() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every setting, for `--help` and the README."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.default if info.default != "" else "(empty)"
        rows.append((env_name(name), str(default), info.description or ""))
    return rows


def _problem(error: Any) -> str:
    field = str(error["loc"][0]) if error.get("loc") else "?"
    # A validator's own ValueError reads better without pydantic's "Value error, " before it.
    problem = str(error["ctx"]["error"]) if error.get("type") == "value_error" and "error" in error.get("ctx", {}) else error["msg"]
    return f"{env_name(field)}={error.get('input')!r}: {problem}"
