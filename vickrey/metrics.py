"""Prometheus text exposition for the workers, and the tiny HTTP server for /metrics and /healthz.

Hand-written on purpose: a few counters, gauges and histograms, rendered in the text format
(version 0.0.4); no global registry, one `Metrics` per process.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Labels = tuple[tuple[str, str], ...]
log = logging.getLogger("vickrey.metrics")


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)
    kind: str = "counter"

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        if not self.values:
            yield f"{self.name} 0"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {value:g}"


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.total += value * times
        self.count += times

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            yield f'{self.name}_bucket{{le="{bound:g}"}} {running}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{self.name}_sum {self.total:g}"
        yield f"{self.name}_count {self.count}"


class Metrics:
    def __init__(self) -> None:
        self._items: list[Counter | Histogram] = []

    def counter(self, name: str, help: str) -> Counter:
        item = Counter(name, help)
        self._items.append(item)
        return item

    def gauge(self, name: str, help: str) -> Counter:
        item = Counter(name, help, kind="gauge")
        self._items.append(item)
        return item

    def histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> Histogram:
        item = Histogram(name, help, buckets)
        self._items.append(item)
        return item

    def render(self) -> str:
        return "\n".join(line for item in self._items for line in item.render()) + "\n"


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server
    return runner, (server.sockets[0].getsockname()[1] if server is not None and server.sockets else port)


async def serve(metrics: Metrics, port: int, healthy: Callable[[], bool], host: str = "127.0.0.1") -> web.AppRunner:
    """Serve /metrics and /healthz; port 0 picks a free port (logged), so workers can share a host."""

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    async def health_handler(_: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    try:
        runner, bound = await start_site(app, host, port)
    except OSError as exc:
        # Another process has the port: keep working and serve metrics on a free port instead,
        # loudly (the URL is logged), rather than refusing to auction.
        log.error("metrics port taken, serving on a free port", extra={"port": port, "error": str(exc)})
        runner, bound = await start_site(app, host, 0)
    log.info("metrics listening", extra={"url": f"http://{host}:{bound}/metrics"})
    return runner
