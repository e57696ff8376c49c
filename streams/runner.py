"""`vickrey streams [ROLE ...]`: click attribution, billing, reporting, CTR feedback, the
autopilot's feed and conversion attribution (the autopilot itself, on Faust, runs alone: streams/autopilot.py).

All roles run in one process by default (one loop each, each with its own consumer group and
transactional producer, core/loop.py), or only the roles named, to scale them out separately.
SIGTERM or SIGINT lets every loop commit the batch it has, then the process exits; a loop that
gives up (core/loop.py's failure policy) stops the others and the process exits 1, for its
supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from core import logs
from core.loop import Loop, Role, run_loops
from core.loop import running as running_loops
from core.metrics import Metrics, serve
from core.settings import Settings
from core.topics import ensure_topics
from streams.attribution import Attribution
from streams.autopilot_feed import AutopilotFeed
from streams.billing import Billing
from streams.conversions import Conversions
from streams.feedback import Feedback
from streams.reporting import Reporting

log = logging.getLogger("vickrey.streams")
ROLES = ("attribution", "billing", "reporting", "feedback", "autopilot-feed", "conversions")
AUTOPILOT = "autopilot"  # on Faust, in a process of its own (streams/autopilot.py)
DEFAULT_REPORT_PORT = 8081


def build_roles(
    settings: Settings,
    names: Sequence[str],
    metrics: Metrics,
    report_port: int | None = DEFAULT_REPORT_PORT,
    state_dir: Path | None = None,
    report_port_fallback: bool = False,
) -> list[Role]:
    """The named roles, sharing one metrics registry (`state_dir`: attribution's store, default
    `.local/streams/<prefix>/attribution`)."""
    roles: list[Role] = []
    for name in names:
        if name == "attribution":
            roles.append(Attribution(settings, metrics, state_dir=state_dir))
        elif name == "billing":
            roles.append(Billing(settings, metrics))
        elif name == "reporting":
            reporting = Reporting(settings, metrics, port=report_port)
            reporting.port_fallback = report_port_fallback
            roles.append(reporting)
        elif name == "feedback":
            roles.append(Feedback(settings, metrics))
        elif name == "autopilot-feed":
            roles.append(AutopilotFeed(settings, metrics))
        elif name == "conversions":
            roles.append(Conversions(settings, metrics))
        else:
            raise ValueError(f"unknown streams role {name!r} (choose from {', '.join(ROLES)})")
    return roles


@asynccontextmanager
async def running(settings: Settings, roles: Sequence[Role], metrics: Metrics | None = None,
                  stop: asyncio.Event | None = None) -> AsyncIterator[list[Loop]]:
    """The roles on their loops in this process until the block ends (tests, benchmarks)."""
    stop = stop or asyncio.Event()
    loops = [Loop(settings, role, metrics or Metrics(), stop) for role in roles]
    async with running_loops(loops, stop):
        yield loops


async def run_streams(settings: Settings, names: Sequence[str], report_port: int | None = DEFAULT_REPORT_PORT,
                      report_port_fallback: bool = False) -> int:
    stop = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(sig, stop.set)
    await ensure_topics(settings)
    metrics = Metrics()
    roles = build_roles(settings, names, metrics, report_port, report_port_fallback=report_port_fallback)
    loops = [Loop(settings, role, metrics, stop) for role in roles]
    metrics_runner = await serve(metrics, settings.metrics_port, lambda: all(loop.ready for loop in loops))
    try:
        log.info("streams running", extra={"roles": list(names)})
        ok = await run_loops(loops, stop)
    finally:
        await metrics_runner.cleanup()
    log.info("streams stopped", extra={"failed": not ok})
    return 0 if ok else 1


def main(settings: Settings, roles: Sequence[str], port: int | None) -> int:
    """`vickrey streams [ROLE ...]` (all roles when none are named)."""
    logs.setup("streams")
    # No --port: the default, or a free port when another stack on this host has it.
    return asyncio.run(run_streams(settings, list(roles) or list(ROLES),
                                   DEFAULT_REPORT_PORT if port is None else port, port is None))
