"""Time helpers: epoch milliseconds and the UTC day that daily budgets roll over on."""

from __future__ import annotations

import time

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def utc_day(epoch_ms: int) -> str:
    """The UTC day key (YYYYMMDD) of an epoch-millisecond time."""
    return time.strftime("%Y%m%d", time.gmtime(epoch_ms // 1000))
