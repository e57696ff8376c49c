"""CI smoke of `make loadtest`: 10 s of Locust against a pipeline of its own (own topic prefix and
Redis namespace), then the reports exist, decisions came back and the latencies are numbers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from core.settings import Settings
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


async def test_loadtest_smoke(topics: Settings, env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
    reports = tmp_path / "loadtest"
    command = [
        sys.executable, "-m", "loadtests.run", "--duration", "10s", "--start-pipeline", "--no-streams",
        "--rate", "100", "--seed", "7", "--reports", str(reports),
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for name in ("report.html", "vickrey_stats.csv", "summary.json"):
        assert (reports / name).is_file(), f"{name} missing; output:\n{output}"
    summary = orjson.loads((reports / "summary.json").read_bytes())
    assert summary["published"] > 0
    assert summary["decisions"] > 0, summary
    assert summary["timeouts"] <= summary["published"] // 10, summary
    for q in ("p50", "p95", "p99"):
        assert isinstance(summary["latency_ms"][q], float) and summary["latency_ms"][q] > 0, summary
    assert 0.0 <= summary["fill_rate"] <= 1.0
    stats = (reports / "vickrey_stats.csv").read_text()
    assert "decision,ad.decisions" in stats and "publish,chat.intents" in stats
    assert "end-to-end" in done.stdout and "fill rate" in done.stdout
