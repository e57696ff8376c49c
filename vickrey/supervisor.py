"""`vickrey run` (every role in one supervised process group) and `vickrey auction --workers N`.

Each role runs as its own `vickrey …` child process, so one crashing never takes the others
down: a child that dies is restarted (with a short back-off) under the same instance name,
which lets its successor fence and abort whatever transaction it left open. SIGTERM/SIGINT
stop every child gracefully (each finishes its batch and commits) and then the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from auction.batching import BATCH_MAX
from core import logs
from core.settings import Settings

log = logging.getLogger("vickrey.supervisor")
STOP_GRACE_S = 30.0
MAX_BACKOFF_S = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    backoff_s: float = 0.5

    env: dict[str, str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started_at = time.monotonic()
        log.info("started", extra={"child": self.name, "pid": self.process.pid})


def vickrey_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vickrey", *args]


def assign_metrics_ports(children: list[Child], base_port: int) -> None:
    """Each child its own /metrics port: base, base+1, … (0 keeps 0: every child picks a free one)."""
    for offset, child in enumerate(children):
        port = 0 if base_port == 0 else base_port + offset
        child.env = dict(os.environ, VICKREY_METRICS_PORT=str(port))


def supervise(children: list[Child]) -> int:
    stopping = False

    def request_stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for child in children:
        child.start()
    while not stopping:
        time.sleep(0.2)
        for child in children:
            assert child.process is not None
            code = child.process.poll()
            if code is None or stopping:
                continue
            # A child that ran a while gets restarted at once; one that keeps dying backs off.
            lived = time.monotonic() - child.started_at
            child.backoff_s = 0.5 if lived > 30 else min(MAX_BACKOFF_S, child.backoff_s * 2)
            child.restarts += 1
            log.warning("child exited, restarting", extra={"child": child.name, "code": code, "in_s": child.backoff_s})
            time.sleep(child.backoff_s)
            child.start()
    log.info("stopping children")
    for child in children:
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("child did not stop in time, killing it", extra={"child": child.name})
            child.process.kill()
            child.process.wait()
    return 0


def auction_children(count: int, base: str, batch_max: int, linger_ms: int) -> list[Child]:
    extra = ["--batch-max", str(batch_max), "--linger-ms", str(linger_ms)]
    return [Child(f"auction-{i}", vickrey_argv("auction", "--instance", f"{base}-{i}", *extra)) for i in range(count)]


def run_auction_workers(settings: Settings, workers: int, instance: str | None, batch_max: int, linger_ms: int) -> int:
    """`vickrey auction --workers N`: N worker processes with stable instance names."""
    logs.setup("supervisor")
    children = auction_children(workers, instance or f"{os.uname().nodename}-w", batch_max, linger_ms)
    assign_metrics_ports(children, settings.metrics_port)
    return supervise(children)


def run_everything(settings: Settings, streams: bool = True) -> int:
    """`vickrey run`: the auction worker and every stream role, supervised."""
    logs.setup("supervisor")
    children = auction_children(1, f"{os.uname().nodename}-run", BATCH_MAX, 0)
    if streams:
        children.append(Child("streams", vickrey_argv("streams")))
        children.append(Child("autopilot", vickrey_argv("streams", "autopilot")))
    assign_metrics_ports(children, settings.metrics_port)
    return supervise(children)
