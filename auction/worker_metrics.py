"""The auction worker's Prometheus metrics, and the per-part tally added to them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from core.metrics import Metrics

FULL_GC_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(slots=True)
class Tally:
    """Counts of one part, added to the metrics once per part rather than once per event."""

    events_in: int = 0
    decisions: int = 0
    fills: int = 0
    impressions: int = 0
    replays: int = 0
    already_committed: int = 0
    invalid: int = 0
    duplicates: int = 0
    intake_compiled: int = 0  # intents read by the compiled intake (fastpath/)
    intake_reference: int = 0  # valid intents it left to the Python reference
    engine_compiled: int = 0  # auctions the compiled engine decided (auction/twin.py)
    engine_python: int = 0  # auctions it left to the Python engine, or all when there is no twin
    auctions: int = 0
    engine_seconds: float = 0.0
    no_fill: Counter[str] = field(default_factory=Counter)

    def publish(self, metrics: WorkerMetrics) -> None:
        metrics.events_in.inc(self.events_in)
        metrics.decisions.inc(self.decisions)
        metrics.fills.inc(self.fills)
        metrics.impressions.inc(self.impressions)
        metrics.replays.inc(self.replays)
        metrics.already_committed.inc(self.already_committed)
        metrics.rejected.labels("invalid").inc(self.invalid)
        metrics.rejected.labels("duplicate").inc(self.duplicates)
        metrics.intake.labels("compiled").inc(self.intake_compiled)
        metrics.intake.labels("reference").inc(self.intake_reference)
        metrics.engine_path.labels("compiled").inc(self.engine_compiled)
        metrics.engine_path.labels("python").inc(self.engine_python)
        metrics.auctions.inc(self.auctions)
        metrics.engine_seconds.inc(self.engine_seconds)
        for reason, count in self.no_fill.items():
            metrics.no_fill.labels(reason).inc(count)


class WorkerMetrics:
    """`vickrey_auction_*`: counted per part as it is auctioned (a part whose batch fails and is
    consumed again counts again; `vickrey_records_committed_total{role="auction"}` counts once)."""

    def __init__(self, metrics: Metrics) -> None:
        m = metrics
        self.events_in = m.counter("vickrey_auction_events_in_total", "Intent records auctioned")
        self.decisions = m.counter("vickrey_auction_decisions_total", "Decisions made")
        self.fills = m.counter("vickrey_auction_fills_total", "Decisions with at least one ad")
        self.impressions = m.counter("vickrey_auction_impressions_total", "Impressions made")
        self.no_fill = m.counter("vickrey_auction_no_fill_total", "Decisions without ads, by reason", ("reason",))
        self.rejected = m.counter(
            "vickrey_auction_rejected_total", "Intent records sent to the DLQ, by kind (invalid, duplicate)", ("kind",)
        )
        self.intake = m.counter(
            "vickrey_auction_intake_total",
            "Valid intent records read into auction requests, by path: compiled (fastpath/) or reference (Python: "
            "escaped strings, fields the schema does not name, non-ASCII words, or no Rust build)",
            ("path",),
        )
        self.replays = m.counter("vickrey_auction_replayed_total", "Events whose kept outcome was republished")
        self.already_committed = m.counter(
            "vickrey_auction_already_committed_total",
            "Records read again after their decision was committed (offsets moved back): nothing republished",
        )
        self.refusals = m.counter("vickrey_auction_refusals_total", "Reservations Redis refused, by reason", ("reason",))
        self.auctions = m.counter("vickrey_auction_engine_runs_total", "Auctions run by the engine (refused ones again)")
        self.engine_path = m.counter(
            "vickrey_auction_engine_path_total",
            "Auctions run, by engine: compiled (fastpath/, auction/twin.py) or python (a number past 128 bits, a "
            "campaign the compiled copy could not hold, or no Rust build)",
            ("path",),
        )
        self.engine_seconds = m.counter("vickrey_auction_engine_seconds_total", "Time in the engine")
        self.full_gc = m.histogram(
            "vickrey_auction_full_gc_seconds", "Full garbage collections, run between batches", FULL_GC_SECONDS
        )
