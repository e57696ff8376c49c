"""The auction worker's Prometheus metrics, and the per-batch tally added to them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vickrey.metrics import Metrics


@dataclass(slots=True)
class Tally:
    """Per-batch counts, added to the metrics once per batch rather than once per event."""

    events_in: int = 0
    decisions: int = 0
    fills: int = 0
    impressions: int = 0
    replays: int = 0
    already_committed: int = 0
    no_fill: Counter[str] = field(default_factory=Counter)

    def publish(self, metrics: WorkerMetrics) -> None:
        metrics.events_in.inc(self.events_in)
        metrics.decisions.inc(self.decisions)
        metrics.fills.inc(self.fills)
        metrics.impressions.inc(self.impressions)
        metrics.replays.inc(self.replays)
        metrics.already_committed.inc(self.already_committed)
        for reason, count in self.no_fill.items():
            metrics.no_fill.inc(count, reason=reason)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = Metrics()
        m = self.registry
        self.events_in = m.counter("vickrey_auction_events_in_total", "Intent records consumed")
        self.decisions = m.counter("vickrey_auction_decisions_total", "Decisions published")
        self.fills = m.counter("vickrey_auction_fills_total", "Decisions with at least one ad")
        self.impressions = m.counter("vickrey_auction_impressions_total", "Impressions published")
        self.no_fill = m.counter("vickrey_auction_no_fill_total", "Decisions without ads, by reason")
        self.dlq = m.counter("vickrey_auction_dlq_total", "Records sent to the DLQ, by kind")
        self.replays = m.counter("vickrey_auction_replayed_total", "Events whose kept outcome was republished")
        self.already_committed = m.counter(
            "vickrey_auction_already_committed_total",
            "Records read again after their decision was committed (offsets moved back): nothing republished",
        )
        self.refusals = m.counter("vickrey_auction_refusals_total", "Reservations Redis refused, by reason")
        self.batch_size = m.histogram(
            "vickrey_auction_batch_size", "Records per batch", (1, 10, 50, 100, 250, 500, 1000, 2000)
        )
        self.latency = m.histogram(
            "vickrey_auction_batch_seconds",
            "Time to auction and commit one batch",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.auction_latency = m.histogram(
            "vickrey_auction_engine_seconds_per_event",
            "Engine time per auction (batch engine time / events)",
            (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001),
        )
        self.full_gc = m.histogram(
            "vickrey_auction_full_gc_seconds", "Full garbage collections, run between batches",
            (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.lag = m.gauge("vickrey_auction_consumer_lag", "Records behind the partition end, by partition")
        self.campaigns = m.gauge("vickrey_auction_campaigns", "Active campaigns in the index")
