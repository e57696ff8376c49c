"""How the auction worker batches, fetches and runs: one place, read by the worker, by the bench's
transactional loop (loadtests/txn_loop.py) and by its stage measurements (loadtests/worker_stages.py),
so that only the auction differs between the worker and the reference loop, and the reference loop
does not import the worker (the engine, the live state) to learn them."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import uvloop

from core.loop import LoopOptions

_T = TypeVar("_T")

# Events per batch, and so per Kafka transaction, at most. Each transaction costs the broker a
# few milliseconds of CPU whatever its size; a quiet stream still commits small batches at once.
BATCH_MAX = 2000
# A fetch is answered once it has FETCH_MIN_BYTES or has waited FETCH_MAX_WAIT_MS. Answered at the
# first record (1 byte), a worker under moderate load fetched, auctioned and committed in slivers:
# at 1,200 intents/s it spent ~560 µs of CPU per event and the broker ~430; with 64 KiB / 10 ms,
# ~310 and ~280, and a lower p99 (BENCHMARKS.md, "Fetching in slivers"). At most 10 ms is added
# to a decision while the stream is quiet; an idle worker polls 100 times a second.
FETCH_MAX_WAIT_MS = 10
FETCH_MIN_BYTES = 64 * 1024


def loop_options(batch_max: int = BATCH_MAX, linger_ms: int = 0,
                 start_at: Literal["earliest", "latest"] = "earliest") -> LoopOptions:
    """The auction worker's batch and fetch options."""
    return LoopOptions(batch_max=batch_max, linger_ms=linger_ms, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                       fetch_min_bytes=FETCH_MIN_BYTES, start_at=start_at)


def run_on_worker_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` on the worker's event loop, uvloop: the worker's Redis calls and task switches
    cost less there, ~12 % of its CPU per event at its maximum. Loops that only talk to Kafka
    (the streams roles, the bench's reference loops) ran slower on it, so they stay on asyncio's
    own (BENCHMARKS.md, "uvloop")."""
    return uvloop.run(main)
