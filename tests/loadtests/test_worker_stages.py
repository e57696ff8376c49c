"""The bench's step-by-step breakdown of the worker (loadtests/worker_stages.py), on the real Redis."""

from __future__ import annotations

import pytest

from core.settings import Settings
from loadtests.worker_stages import STEPS, worker_stages

pytestmark = pytest.mark.integration


async def test_every_step_is_measured_and_the_process_steps_add_up(settings: Settings) -> None:
    found = await worker_stages(settings, events=600, rounds=1)
    us = found["us_per_event"]
    assert list(us) == list(STEPS)
    assert all(value > 0 for value in found["separate"].values()), found["separate"]
    assert all(value > 0 for value in us.values()), us  # each step did work: 600 auctions, most filled
    process = sum(value for step, value in us.items() if step != "redis_server")
    assert found["process_us_per_event"] == pytest.approx(process, abs=0.5)
    assert len(found["rounds"]) == 1
    assert found["kept_bytes_per_event"] > 0  # the outcomes one reservation call keeps
    assert found["aof_bytes_per_event"] is None or found["aof_bytes_per_event"] > 0  # None: Redis keeps no AOF
