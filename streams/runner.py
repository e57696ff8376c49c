"""`vickrey streams [ROLE ...]`: click attribution, billing, reporting and CTR feedback.

All roles run in one process by default (one asyncio task each, each with its own consumer group
and transactional producer), or only the roles named, to scale them out separately. SIGTERM or
SIGINT lets every role finish its current batch and commit, then the process exits.

Every role is plain aiokafka (consume → process → produce in a Kafka transaction with the consumed
offsets, like the auction worker), not Faust: see the module docstrings and the report of issue 5.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from streams.attribution import Attribution
from streams.billing import Billing
from streams.common import StreamRole
from streams.feedback import Feedback
from streams.reporting import Reporting
from vickrey import logs
from vickrey.metrics import Metrics, serve
from vickrey.settings import Settings
from vickrey.topics import ensure_topics

log = logging.getLogger("vickrey.streams")
ROLES = ("attribution", "billing", "reporting", "feedback")
DEFAULT_REPORT_PORT = 8081
# Topics the roles write besides the contract ones: DLQs of their inputs.
EXTRA_TOPICS = ("ad.clicks.raw.dlq", "ad.impressions.dlq", "ad.clicks.dlq")


def build_roles(
    settings: Settings,
    names: Sequence[str],
    registry: Metrics,
    stop: asyncio.Event,
    report_port: int | None = DEFAULT_REPORT_PORT,
    state_dir: Path | None = None,
    report_port_fallback: bool = False,
) -> list[StreamRole]:
    """The named roles sharing one metrics registry and stop event (`state_dir`: attribution's
    store, default `.local/streams/<prefix>/attribution`)."""
    roles: list[StreamRole] = []
    for name in names:
        if name == "attribution":
            roles.append(Attribution(settings, registry, stop, state_dir=state_dir))
        elif name == "billing":
            roles.append(Billing(settings, registry, stop))
        elif name == "reporting":
            reporting = Reporting(settings, registry, stop, port=report_port)
            reporting.port_fallback = report_port_fallback
            roles.append(reporting)
        elif name == "feedback":
            roles.append(Feedback(settings, registry, stop))
        else:
            raise ValueError(f"unknown streams role {name!r} (choose from {', '.join(ROLES)})")
    return roles


async def ensure_stream_topics(settings: Settings) -> None:
    await ensure_topics(settings)
    await ensure_topics(settings, EXTRA_TOPICS)


@asynccontextmanager
async def running(roles: Sequence[StreamRole]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Start the roles and run them as tasks; on exit stop them (current batches commit) and close."""
    started: list[StreamRole] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for role in roles:
            await role.start()
            started.append(role)
        tasks = [asyncio.create_task(role.run(), name=f"streams-{role.name}") for role in roles]
        yield tasks
    finally:
        for role in roles:
            role.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for role in started:
            try:
                await role.close()
            except Exception:
                log.exception("closing a role failed", extra={"role": role.name})


async def run_streams(
    settings: Settings, names: Sequence[str], report_port: int | None = DEFAULT_REPORT_PORT, report_port_fallback: bool = False
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await ensure_stream_topics(settings)
    registry = Metrics()
    roles = build_roles(settings, names, registry, stop, report_port, report_port_fallback=report_port_fallback)
    metrics_runner = await serve(registry, settings.metrics_port, lambda: all(role.ready for role in roles))
    failed = False
    try:
        async with running(roles) as tasks:
            log.info("streams running", extra={"roles": list(names)})
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    failed = True
                    log.error("role failed; stopping", extra={"role": task.get_name()}, exc_info=task.exception())
            stopper.cancel()
    finally:
        await metrics_runner.cleanup()
    log.info("streams stopped", extra={"failed": failed})
    return 1 if failed else 0


def main(settings: Settings, args: Any) -> int:
    """Entry point for `vickrey streams [ROLE ...]` (`args.roles`: all when empty)."""
    logs.setup("streams")
    names = list(getattr(args, "roles", None) or ROLES)
    port = getattr(args, "port", None)
    # No --port: the default, or a free port when another stack on this host has it.
    return asyncio.run(run_streams(settings, names, DEFAULT_REPORT_PORT if port is None else port, port is None))
