"""Prometheus metrics (prometheus_client) and the small HTTP server for `/metrics` and `/healthz`.

One `Metrics` per process: its own registry (no global state, so tests and several roles in one
process never collide), the families every loop shares (labelled by role), and `value()` to
read a sample back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger("vickrey.metrics")
BATCH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_RECORDS = (1, 10, 50, 100, 250, 500, 1000, 2000)


class LoopFamilies:
    """What every consume→produce loop reports, labelled by role."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.records_in = counter(
            "vickrey_records_in_total", "Records handed to the role (again when a batch is consumed again)",
            ("role", "topic"),
        )
        self.records_out = counter("vickrey_records_out_total", "Records published (committed)", ("role", "topic"))
        self.records_committed = counter(
            "vickrey_records_committed_total", "Input records whose batch committed", ("role",)
        )
        self.dlq = counter("vickrey_dlq_total", "Unreadable input records sent to a DLQ", ("role", "topic"))
        self.failures = counter(
            "vickrey_batch_failures_total", "Batches aborted and consumed again, by stage", ("role", "stage")
        )
        self.rebalances = counter("vickrey_rebalances_total", "Partition assignments received", ("role",))
        self.lag = Gauge(
            "vickrey_consumer_lag", "Records behind the partition end", ("role", "topic", "partition"),
            registry=registry,
        )
        self.batch_records = Histogram(
            "vickrey_batch_records", "Records per committed batch", ("role",), buckets=BATCH_RECORDS, registry=registry
        )
        self.batch_seconds = Histogram(
            "vickrey_batch_seconds", "From a batch's first record to its commit", ("role",),
            buckets=BATCH_SECONDS, registry=registry,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.loop = LoopFamilies(self.registry)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when it was never touched)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)


async def serve(metrics: Metrics, port: int, healthy: Callable[[], bool], host: str = "127.0.0.1") -> web.AppRunner:
    """Serve /metrics and /healthz; port 0 picks a free port (logged), so workers can share a host."""

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

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
        # loudly (the URL is logged), rather than refusing to work.
        log.error("metrics port taken, serving on a free port", extra={"port": port, "error": str(exc)})
        runner, bound = await start_site(app, host, 0)
    log.info("metrics listening", extra={"url": f"http://{host}:{bound}/metrics"})
    return runner
