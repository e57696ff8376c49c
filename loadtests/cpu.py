"""CPU time per event of everything one benchmark run keeps busy: the measured process, Redis and
the local Kafka broker.

On a 2-core machine these three share the cores, so a side's throughput is bounded by the sum of
its per-event CPU, not by the measured process alone; `make bench` reports each part for the
plain loop and the worker side by side. Process and broker CPU come from /proc (Linux), Redis's
from INFO cpu. Totals include each process's start-up (a fraction of a µs per event at 200,000
events); the broker's is only known when `make up` started it (its pid file in .local/run/).
"""

from __future__ import annotations

import os
from pathlib import Path

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from core.redis_client import is_cluster, redis_from_url
from core.settings import Settings
from loadtests.stack import ROOT

BROKER_PIDFILE = ROOT / ".local" / "run" / "kafka.pid"
CpuSeconds = dict[str, float | None]


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process (utime and stime of /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    try:
        return int(BROKER_PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None


async def redis_cpu_s(settings: Settings) -> float | None:
    """Redis's CPU seconds so far; on a Redis Cluster, the sum over every node (primaries and
    replicas: a replica's CPU is what the writes cost it too)."""
    client = redis_from_url(settings.redis)
    try:
        if is_cluster(client):
            per_node = await client.info("cpu", target_nodes=AsyncRedisCluster.ALL_NODES)
            return sum(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]) for info in per_node.values())
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:  # noqa: BLE001 - a missing figure is reported as null, not a failed bench
        return None
    finally:
        await client.aclose()


async def snapshot(settings: Settings, pid: int | None) -> CpuSeconds:
    """CPU seconds so far of the process `pid` (if given and running), Redis and the broker."""
    broker = broker_pid()
    return {
        "process": None if pid is None else process_cpu_s(pid),
        "redis": await redis_cpu_s(settings),
        "broker": None if broker is None else process_cpu_s(broker),
    }


def per_event_us(before: CpuSeconds, after: CpuSeconds, events: int) -> dict[str, float | None]:
    """µs of CPU per event for each part, and their sum when every part is known."""
    out: dict[str, float | None] = {}
    for part, start in before.items():
        end = after.get(part)
        out[part] = None if start is None or end is None or events <= 0 else round((end - start) / events * 1e6, 1)
    known = [value for value in out.values() if value is not None]
    out["total"] = round(sum(known), 1) if len(known) == len(out) else None
    return out
