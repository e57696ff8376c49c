"""The one place a Redis client is made from `VICKREY_REDIS` (docs/contract.md §2 and §9).

Two kinds of URL:

- `redis+cluster://host:port[,host:port...]`: a Redis Cluster. The hosts are seed nodes only
  (redis-py's *startup nodes*): the client asks them for the slot map (CLUSTER SLOTS) and then
  talks to whichever primary owns a key's slot, following MOVED/ASK redirects and failovers.
  One seed that answers is enough; list several so that a client can start while one is down.
  A cluster has one database (0), so the URL has no path (a trailing `/` or `/0` is accepted),
  and no user, password or options.
- anything else: one Redis, `Redis.from_url` as always (`redis://`, `rediss://`, `unix://`; the
  database number, password and options in the URL as redis-py reads them).

`Settings` validates the URL with `parse_redis_url`, so a bad one stops the process at start with
`VICKREY_REDIS` and the problem named, never at the first command.

**What the type does not say.** `redis.asyncio.cluster.RedisCluster` is not a subclass of
`redis.asyncio.Redis`: they are two classes mixing in the same command methods (`get`, `hset`,
`eval`, `register_script`, `pipeline`, `scan_iter`, `aclose`, …). Every caller holds a `Redis`
today (auction/budgets.py, the stores, the roles are typed so), so `redis_from_url` returns the
cluster client *as* a `Redis` (a cast): the commands are the same and route by key. What differs,
and what mypy therefore cannot catch:

- a Lua script (`EVAL`/`EVALSHA`, `register_script`) must get keys of one hash slot only: the
  cluster client refuses keys of several slots ("all keys must map to the same key slot"), and a
  script must not touch a key it was not given (the server answers CROSSSLOT or MOVED);
- a MULTI/EXEC transaction (`pipeline(transaction=True)`, `watch`) must keep to one slot too;
  a `pipeline(transaction=False)` is split by node and runs as several pipelines, not in order
  across nodes;
- commands without keys go to some node, not to "the" Redis: `info()` answers per node,
  `scan_iter` walks every primary, `eval` with no keys runs on a random one, `flushdb` and
  `keys` fan out;
- multi-key `delete`, `exists`, `mget_nonatomic` are split by slot (not atomic across slots).

The README ("Redis Cluster") lists the scripts and transactions that still cross slots; until
they are split by slot, the cluster client serves only what keeps to one slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.connection import parse_url
from redis.exceptions import NoScriptError

CLUSTER_SCHEME = "redis+cluster"
CLUSTER_FORM = "redis+cluster://host:port[,host:port...]"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a `VICKREY_REDIS` URL names: a single Redis (`seeds` empty) or a cluster's seed nodes."""

    url: str
    seeds: tuple[tuple[str, int], ...] = ()

    @property
    def cluster(self) -> bool:
        return bool(self.seeds)


def parse_redis_url(url: str) -> RedisTarget:
    """The target of a `VICKREY_REDIS` URL; ValueError names what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() == CLUSTER_SCHEME:
        return RedisTarget(url, _seeds(rest))
    try:
        parts = parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except ValueError as exc:
        raise ValueError(f"{exc} (or {CLUSTER_FORM} for a Redis Cluster)") from None
    path = rest.partition("?")[0].partition("/")[2] if scheme.lower() != "unix" else ""
    if path and "db" not in parts:
        raise ValueError(f"the database after the host must be a number, not {path!r}")
    return RedisTarget(url)


def _seeds(rest: str) -> tuple[tuple[str, int], ...]:
    nodes, _, database = rest.partition("/")
    if database not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {database!r}: use {CLUSTER_FORM}")
    if "@" in nodes or "?" in nodes or "?" in database:
        raise ValueError(f"a cluster URL takes no user, password or options: use {CLUSTER_FORM}")
    seeds = []
    for part in nodes.split(","):
        node = part.strip()
        if not node:
            raise ValueError(f"no host:port in {'an empty URL' if not nodes.strip() else 'one of its seeds'}: use {CLUSTER_FORM}")
        host, colon, port = node.rpartition(":")
        if not colon:
            raise ValueError(f"seed {node!r} has no port: use {CLUSTER_FORM}")
        if host.startswith("[") and host.endswith("]"):  # an IPv6 address, [::1]:7000
            host = host[1:-1]
        if not host or any(c in host for c in "[]/ \t"):
            raise ValueError(f"seed {node!r} has no valid host: use {CLUSTER_FORM}")
        if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"seed {node!r}: the port must be a number from 1 to 65535")
        seeds.append((host, int(port)))
    return tuple(seeds)


def redis_from_url(url: str, **options: Any) -> Redis:
    """An asyncio client for `url` (a `VICKREY_REDIS`): `RedisCluster` for `redis+cluster://`,
    `Redis.from_url` otherwise; `options` (timeouts, …) go to either. Connects on first use.

    The cluster client is returned typed as `Redis`, which it is not: see the module's docstring
    for what differs (scripts and transactions must keep to one hash slot)."""
    target = parse_redis_url(url)
    if target.cluster:
        return cast(Redis, async_cluster_client(target, **options))
    return Redis.from_url(url, **options)


def async_cluster_client(target: RedisTarget, **options: Any) -> AsyncRedisCluster:
    """The asyncio cluster client, typed as what it is."""
    return AsyncRedisCluster(startup_nodes=[AsyncClusterNode(host, port) for host, port in target.seeds], **options)


def sync_redis_from_url(url: str, **options: Any) -> redis.Redis:
    """The same as `redis_from_url` for blocking code (tests, tools). Unlike the asyncio one, the
    blocking cluster client asks a seed for the slot map at once, so it raises here when no seed
    answers (redis.exceptions.RedisClusterException, not a RedisError)."""
    target = parse_redis_url(url)
    if target.cluster:
        return cast(redis.Redis, sync_cluster_client(target, **options))
    return redis.Redis.from_url(url, **options)


def sync_cluster_client(target: RedisTarget, **options: Any) -> RedisCluster:
    """The blocking cluster client, typed as what it is."""
    nodes = [ClusterNode(host, port) for host, port in target.seeds]  # type: ignore[no-untyped-call]  # unannotated in redis-py
    return RedisCluster(startup_nodes=nodes, **options)


def is_cluster(client: object) -> bool:
    """True for a cluster client from this module (either kind), whatever its static type says."""
    return isinstance(client, (AsyncRedisCluster, RedisCluster))


async def get_many(client: Redis, keys: Sequence[str | bytes]) -> list[Any]:
    """The values of `keys`, in order (None where absent): one MGET on a single Redis; on a
    cluster, split by slot (`mget_nonatomic`), which is no less atomic than the reads need: each
    caller reads independent keys (spend counters, stored clicks), never a set that must agree."""
    if not keys:
        return []
    if isinstance(client, AsyncRedisCluster):
        return list(await client.mget_nonatomic(keys))
    return list(await client.mget(keys))


async def load_for_pipeline(client: Redis, *scripts: AsyncScript) -> None:
    """Make `scripts` callable inside a pipeline. A single Redis's pipeline loads a script it
    misses by itself; redis-py's cluster pipeline does not (NOSCRIPT), so on a cluster they are
    loaded on every primary first (SCRIPT LOAD goes to all of them; a primary that took over
    since then gets them at the next call)."""
    if isinstance(client, AsyncRedisCluster):
        for script in scripts:
            await client.script_load(script.script)


class PipelineScripts:
    """Scripts a role calls inside its pipelines, batch after batch: loaded on the cluster's
    primaries once (`ready`), not before every batch; `execute` runs a pipeline and, when a node
    answers NOSCRIPT (a replica that took over since, a SCRIPT FLUSH), forgets that they were
    loaded and re-raises, so the batch fails once and the loop's retry loads them again."""

    def __init__(self, client: Redis, *sources: str) -> None:
        self.client = client
        self.scripts = [client.register_script(source) for source in sources]
        self._loaded = False

    async def ready(self) -> None:
        if not self._loaded:
            await load_for_pipeline(self.client, *self.scripts)
            self._loaded = True

    async def execute(self, pipe: Any) -> list[Any]:
        try:
            return list(await pipe.execute())
        except NoScriptError:
            self._loaded = False
            raise
