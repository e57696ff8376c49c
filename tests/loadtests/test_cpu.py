"""CPU accounting of the benchmark (loadtests/cpu.py): per-event arithmetic, real /proc and Redis
readings, and the table in BENCHMARKS.md."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core.settings import Settings
from loadtests import cpu
from loadtests.bench_kafka import latency_cpu
from loadtests.bench_report import markdown_block


def test_per_event_us_and_unknown_parts() -> None:
    before = {"process": 1.0, "redis": 10.0, "broker": 100.0}
    after = {"process": 1.5, "redis": 10.25, "broker": 100.125}
    assert cpu.per_event_us(before, after, 10_000) == {"process": 50.0, "redis": 25.0, "broker": 12.5, "total": 87.5}
    no_broker = cpu.per_event_us({**before, "broker": None}, after, 10_000)
    assert no_broker["broker"] is None and no_broker["total"] is None and no_broker["redis"] == 25.0
    assert cpu.per_event_us(before, after, 0)["process"] is None


def test_process_cpu_counts_work_of_a_live_process() -> None:
    start = cpu.process_cpu_s(os.getpid())
    assert start is not None
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    end = cpu.process_cpu_s(os.getpid())
    assert end is not None and end - start >= 0.1
    assert cpu.process_cpu_s(2**22 + 12345) is None  # no such process


@pytest.mark.integration
async def test_snapshot_reads_redis_and_the_local_broker(settings: Settings) -> None:
    first = await cpu.snapshot(settings, os.getpid())
    assert isinstance(first["redis"], float) and isinstance(first["process"], float)
    if cpu.broker_pid() is not None:  # started by `make up`, as in CI
        assert isinstance(first["broker"], float)


def test_markdown_shows_the_cpu_table(tmp_path: Path) -> None:
    results = {
        "details": {"throughput": {"cpu_us_per_event": {
            "baseline": {"process": 18.0, "redis": 0.0, "broker": 5.0, "total": 23.0},
            "worker": {"process": 60.0, "redis": 33.0, "broker": 11.0, "total": 104.0},
        }}},
    }
    block = markdown_block(results, tmp_path / "nope.png", tmp_path)
    assert "| worker | 60.0 | 33.0 | 11.0 | 104.0 |" in block and "| baseline | 18.0 | 0.0 | 5.0 | 23.0 |" in block


def test_latency_points_report_each_process_and_cores_busy(tmp_path: Path) -> None:
    before = {"process": 2.0, "redis": 10.0, "broker": 100.0, "load_generator": 5.0}
    after = {"process": 2.6, "redis": 10.2, "broker": 100.5, "load_generator": 5.4}
    point = latency_cpu(before, after, events=10_000, wall_s=2.0)
    assert point["cpu_us_per_event"] == {"worker": 60.0, "redis": 20.0, "broker": 50.0, "load_generator": 40.0,
                                         "total": 170.0}
    assert point["cores_busy"] == 0.85  # 1.7 CPU seconds in 2 s of wall time
    assert latency_cpu({**before, "broker": None}, after, 10_000, 2.0)["cores_busy"] is None
    curve = [{"fraction_of_max": 0.5, "offered_events_per_s": 5000, "throughput_events_per_s": 4990, "p50_ms": 20.0,
              "p95_ms": 40.0, "p99_ms": 60.0, "missing": 0, **point}]
    block = markdown_block({"details": {"latency_curve": curve}}, tmp_path / "nope.png", tmp_path)
    assert "| 50% | 5,000 | 4,990 | 20.0 | 40.0 | 60.0 | 0 | 0.85 | 60.0 / 40.0 / 20.0 / 50.0 |" in block
