"""`VICKREY_REDIS` → a Redis client (core/redis_client.py): the URL forms, the bad ones named, and
(marked `redis_cluster`, skipped unless a cluster answers) a real round trip on the Redis Cluster
of `make up REDIS=cluster` and that make up again restarts a node that is gone.

The cluster tests use `VICKREY_REDIS` when it names a cluster, else the six nodes make up starts
(127.0.0.1:7000-7005). The restart test needs the nodes make up started (their pid files in
`.local/run/`, or `$OPS_LOCAL_DIR/run/` when the scripts were pointed elsewhere)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException

from core.redis_client import (
    PipelineScripts,
    RedisTarget,
    is_cluster,
    parse_redis_url,
    redis_from_url,
    sync_cluster_client,
    sync_redis_from_url,
)
from core.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
PORTS = tuple(range(7000, 7006))  # ops/lib.sh: REDIS_CLUSTER_PORTS
MAKE_UP_URL = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in PORTS)

# -- the URL --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379", "redis://:secret@127.0.0.1:6379/3",
     "rediss://cache.example:6380/1?socket_timeout=3", "unix:///run/redis.sock?db=2"],
)
def test_a_single_redis_url_is_what_redis_py_takes(url: str) -> None:
    target = parse_redis_url(url)
    assert target == RedisTarget(url) and not target.cluster


def test_a_cluster_url_with_one_seed() -> None:
    target = parse_redis_url("redis+cluster://127.0.0.1:7000")
    assert target.cluster and target.seeds == (("127.0.0.1", 7000),)


def test_a_cluster_url_with_several_seeds() -> None:
    target = parse_redis_url("redis+cluster://10.0.0.1:7000, 10.0.0.2:7001,redis-3.internal:7002/")
    assert target.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("redis-3.internal", 7002))
    assert parse_redis_url("REDIS+CLUSTER://[::1]:7000/0").seeds == (("::1", 7000),)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("127.0.0.1:6379", "must specify one of the following schemes"),
        ("http://127.0.0.1:6379", "or redis+cluster://host:port[,host:port...] for a Redis Cluster"),
        ("redis://127.0.0.1:port/0", "Port could not be cast to integer"),
        ("redis://127.0.0.1:6379/zero", "the database after the host must be a number, not 'zero'"),
        ("redis+cluster://", "no host:port in an empty URL"),
        ("redis+cluster://127.0.0.1", "seed '127.0.0.1' has no port"),
        ("redis+cluster://:7000", "seed ':7000' has no valid host"),
        ("redis+cluster://127.0.0.1:7000,,127.0.0.1:7001", "no host:port in one of its seeds"),
        ("redis+cluster://127.0.0.1:seven", "seed '127.0.0.1:seven': the port must be a number from 1 to 65535"),
        ("redis+cluster://127.0.0.1:70000", "the port must be a number from 1 to 65535"),
        ("redis+cluster://127.0.0.1:7000/2", "a Redis Cluster has only database 0, not '2'"),
        ("redis+cluster://user:pw@127.0.0.1:7000", "a cluster URL takes no user, password or options"),
        ("redis+cluster://127.0.0.1:7000?socket_timeout=1", "a cluster URL takes no user, password or options"),
    ],
)
def test_a_bad_url_is_refused_with_the_problem_named(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_redis_url(url)
    assert problem in str(caught.value)
    with pytest.raises(SettingsError) as named:
        Settings.from_env(redis=url)
    assert str(named.value).startswith(f"VICKREY_REDIS={url!r}: ") and problem in str(named.value)


def test_the_settings_take_a_cluster_url() -> None:
    assert Settings.from_env(redis=MAKE_UP_URL).redis == MAKE_UP_URL


# -- the factory (no connection is made) ------------------------------------------------------------


async def test_the_factory_picks_the_client_by_the_url() -> None:
    single = redis_from_url("redis://127.0.0.1:6379/0", socket_timeout=15)
    assert type(single) is Redis and not is_cluster(single)
    assert single.connection_pool.connection_kwargs["socket_timeout"] == 15
    cluster = redis_from_url("redis+cluster://127.0.0.1:7000,127.0.0.2:7001", socket_timeout=15)
    assert isinstance(cluster, AsyncRedisCluster) and is_cluster(cluster)  # typed Redis, which it is not
    seeds = list(cluster.nodes_manager.startup_nodes.values())
    assert [(node.host, node.port) for node in seeds] == [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    assert all(node.connection_kwargs["socket_timeout"] == 15 for node in seeds)
    await single.aclose()
    await cluster.aclose()


def test_the_blocking_factory_asks_a_seed_at_once() -> None:
    single = sync_redis_from_url("redis://127.0.0.1:6379/0")
    assert type(single) is redis.Redis and not is_cluster(single)
    single.close()
    with pytest.raises(RedisClusterException):  # port 1: nothing answers
        sync_redis_from_url("redis+cluster://127.0.0.1:1", socket_connect_timeout=1)


# -- on the Redis Cluster ---------------------------------------------------------------------------


def cluster_url() -> str:
    url = os.environ.get("VICKREY_REDIS", "")
    return url if url and parse_redis_url(url).cluster else MAKE_UP_URL


def cluster_answers() -> bool:
    try:
        client = sync_cluster_client(parse_redis_url(cluster_url()), socket_connect_timeout=1, socket_timeout=2)
    except (RedisClusterException, redis.RedisError):
        return False
    try:
        return bool(client.cluster_info().get("cluster_state") == "ok")
    except (RedisClusterException, redis.RedisError):
        return False
    finally:
        client.close()


needs_the_cluster = pytest.mark.skipif(not cluster_answers(), reason="needs a Redis Cluster (make up REDIS=cluster)")


def keys_on_two_primaries(client: AsyncRedisCluster | RedisCluster, prefix: str) -> tuple[str, str]:
    """Two keys in different slots that different primaries own."""

    def owner(key: str) -> str:
        node = client.get_node_from_key(key)
        assert node is not None
        return node.name

    first = f"{prefix}:a"
    for i in range(1000):
        other = f"{prefix}:b{i}"
        if owner(other) != owner(first):
            assert key_slot(first.encode()) != key_slot(other.encode())
            return first, other
    raise AssertionError("every key landed on one primary")


@pytest.mark.integration
@pytest.mark.redis_cluster
@needs_the_cluster
@pytest.mark.parametrize("dead_seed", [False, True], ids=["seeds", "first-seed-down"])
async def test_a_round_trip_on_the_cluster_through_the_factory(dead_seed: bool) -> None:
    """Set and read keys of two slots on two primaries through `redis_from_url`, the asyncio client
    every role uses; with a first seed that does not answer, the next one is asked."""
    url = cluster_url()
    if dead_seed:
        url = url.replace("redis+cluster://", "redis+cluster://127.0.0.1:1,", 1)
    client = redis_from_url(url, socket_connect_timeout=2)
    assert isinstance(client, AsyncRedisCluster)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    try:
        await client.initialize()
        one, two = keys_on_two_primaries(client, prefix)
        await client.set(one, b"1", ex=60)
        await client.set(two, b"2", ex=60)
        assert (await client.get(one), await client.get(two)) == (b"1", b"2")
        assert await client.delete(one, two) == 2  # split by slot: two commands, two nodes
    finally:
        await client.aclose()


@pytest.mark.integration
@pytest.mark.redis_cluster
@needs_the_cluster
def test_a_round_trip_on_the_cluster_through_the_blocking_factory() -> None:
    client = sync_redis_from_url(cluster_url())
    assert isinstance(client, RedisCluster)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    try:
        one, two = keys_on_two_primaries(client, prefix)
        client.set(one, b"1", ex=60)
        client.set(two, b"2", ex=60)
        assert client.get(one) == b"1" and client.get(two) == b"2"
        assert client.delete(one, two) == 2
    finally:
        client.close()



# -- make up REDIS=cluster, run again ----------------------------------------------------------------


def run_dir() -> Path:
    local = os.environ.get("OPS_LOCAL_DIR")
    return (Path(local) if local else ROOT / ".local") / "run"


def node_pid(port: int) -> int | None:
    """The live pid make up recorded for a node (a zombie is dead: PID 1 in a container may never
    reap a killed daemon), as ops/lib.sh judges it."""
    try:
        pid = int((run_dir() / f"redis-{port}.pid").read_text().strip())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in ("Z", "X") else pid


def make_up_cluster_running() -> bool:
    return all(node_pid(port) is not None for port in PORTS)


def up(**env: str) -> subprocess.CompletedProcess[str]:
    """ops/up.sh as `make up` runs it, in the broker mode that is running."""
    brokers = "3" if (run_dir() / "kafka-1.pid").exists() else "1"
    return subprocess.run(["bash", "ops/up.sh"], cwd=ROOT, env=dict(os.environ, BROKERS=brokers, **env),
                          capture_output=True, text=True, timeout=180)


@pytest.mark.integration
@pytest.mark.redis_cluster
@pytest.mark.slow
@pytest.mark.skipif(not make_up_cluster_running(), reason="needs the Redis Cluster of make up REDIS=cluster (its pid files)")
def test_make_up_again_restarts_a_killed_node_and_leaves_the_others() -> None:
    before = {port: node_pid(port) for port in PORTS}
    # `make up` in the other Redis mode refuses, and touches nothing.
    mixed = up(REDIS="single")
    assert mixed.returncode == 1 and "run 'make down' first" in mixed.stderr, mixed.stdout + mixed.stderr
    assert {port: node_pid(port) for port in PORTS} == before

    victim = PORTS[1]  # a primary when the cluster was created (7000-7002 are)
    pid = before[victim]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while node_pid(victim) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node_pid(victim) is None

    again = up(REDIS="cluster")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"redis node {victim}: started" in again.stdout
    after = {port: node_pid(port) for port in PORTS}
    assert after[victim] not in (None, pid)
    assert {p: after[p] for p in PORTS if p != victim} == {p: before[p] for p in PORTS if p != victim}
    assert "cluster_state ok" in subprocess.run(["bash", "ops/up.sh", "--status"], cwd=ROOT, capture_output=True,
                                                text=True, timeout=60).stdout
    assert cluster_answers()


@pytest.mark.integration
@pytest.mark.redis_cluster
@needs_the_cluster
async def test_pipeline_scripts_load_once_and_again_after_noscript() -> None:
    """`PipelineScripts` loads its scripts on the primaries once; after SCRIPT FLUSH (what a replica
    that took over looks like) one pipeline fails with NOSCRIPT and the next loads them again."""
    client = redis_from_url(cluster_url())
    scripts = PipelineScripts(client, "return redis.call('INCR', KEYS[1])")
    (incr,) = scripts.scripts
    key = f"t{uuid.uuid4().hex[:10]}:n"

    async def one_call() -> list[object]:
        await scripts.ready()
        pipe = client.pipeline(transaction=False)
        await incr(keys=[key], client=pipe)
        return await scripts.execute(pipe)

    try:
        assert await one_call() == [1]
        assert await one_call() == [2]
        await client.script_flush()  # the cluster client sends it to every primary
        with pytest.raises(NoScriptError):
            await one_call()
        assert await one_call() == [3]
    finally:
        await client.delete(key)
        await client.aclose()
