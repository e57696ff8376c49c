"""Every auction worker follows `campaigns.autopilot` (docs/contract.md §7): each new version of a
campaign's bid and effective keywords is applied to the worker's index as soon as it is read.

No consumer group: every worker reads the whole compacted topic from the start (the latest
decision of every campaign), then follows it, committed records only (read_committed: a decision
whose transaction the autopilot aborted is never applied). A record is read within about
FETCH_WAIT_MS of its commit; the autopilot commits every half second (streams/autopilot.py).
"""

from __future__ import annotations

from typing import Any

from auction.live import LiveState
from core.broadcast import BroadcastReader
from core.metrics import Metrics
from core.settings import Settings

DECISIONS = "campaigns.autopilot"
FETCH_WAIT_MS = 100


class AutopilotListener(BroadcastReader):
    def __init__(self, settings: Settings, live: LiveState, metrics: Metrics) -> None:
        super().__init__(settings, DECISIONS, self._apply, start="earliest", fetch_max_wait_ms=FETCH_WAIT_MS)
        self.live = live
        self.applied = metrics.counter("vickrey_auction_autopilot_applied_total",
                                       "Autopilot decisions applied to this worker's campaigns")

    def _apply(self, decision: dict[str, Any]) -> None:
        if self.live.apply_decision(decision):
            self.applied.inc()
