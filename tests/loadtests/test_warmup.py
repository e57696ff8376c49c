"""The broker warm-up of `make bench` (loadtests/warmup.py): bounded, recorded in
`details.warmup`, and shown in the report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.settings import Settings
from loadtests import bench
from loadtests.bench_report import markdown_block, table
from loadtests.warmup import summary, warm_up

WARMUP = {
    "what": "plain produce, the plain loop and the transactional loop", "seconds": 45.0, "rate_events_per_s": 10000.0,
    "events": 450_000, "traffic_s": 45.0, "duration_s": 52.3, "window_s": 5.0, "offered_events_per_s_median": 10000,
    "brokers_measured": 1, "broker_us_per_event_start": 120.5, "broker_us_per_event_end": 60.2, "end_vs_start": 0.5,
    "lag_at_end": {"plain loop": 0, "transactional loop": 0},
    "windows": [{"t_s": 5.0, "events": 50_000, "events_per_s": 10000, "broker_us_per_event": 120.5, "broker_cores": 1.2}],
}


def test_start_and_end_are_the_first_and_last_measured_windows() -> None:
    windows = [{"broker_us_per_event": None}, {"broker_us_per_event": 200.0}, {"broker_us_per_event": 150.0},
               {"broker_us_per_event": 100.0}]
    assert summary(windows) == {"broker_us_per_event_start": 200.0, "broker_us_per_event_end": 100.0,
                                "end_vs_start": 0.5}
    assert summary([{"broker_us_per_event": None}])["end_vs_start"] is None  # no broker pid: nothing measured


def test_the_report_says_what_the_warm_up_did(tmp_path: Path) -> None:
    results = {"details": {"warmup": WARMUP, "cluster_warmup": {"error": "KafkaConnectionError: down"}}}
    block = markdown_block(results, tmp_path / "nope.png", tmp_path)
    assert ("Broker warm-up before the measured stages (`details.warmup`, not counted): 45.0 s at 10,000 intents/s, "
            "450,000 intents through the plain and the transactional loop; broker CPU per intent 120.5 µs in the "
            "first 5 s, 60.2 in the last (0.5×).") in block
    assert "Broker warm-up of the three brokers failed: KafkaConnectionError: down." in block
    assert "broker CPU per intent 120.5 µs" in table(results)


def test_the_warm_up_runs_first_and_can_be_skipped_or_shortened() -> None:
    assert next(iter(bench.STAGES)) == "warmup"
    args = bench.parse_args(["--warmup-seconds", "30", "--warmup-rate", "5000", "--skip", "warmup"])
    assert (args.warmup_seconds, args.warmup_rate, args.skip) == (30.0, 5000.0, "warmup")
    assert bench.parse_args([]).warmup_seconds == 45.0


@pytest.mark.integration
async def test_a_short_warm_up_drives_both_loops_and_measures_the_broker(settings: Settings) -> None:
    began = time.monotonic()
    found = await warm_up(settings, seconds=4.0, rate=500.0)
    assert time.monotonic() - began < 60  # bounded: traffic, start-up of the loops and their catch-up
    assert found["events"] == pytest.approx(2000, abs=5) and found["traffic_s"] == pytest.approx(4.0, abs=0.5)
    assert [w["t_s"] for w in found["windows"]] == pytest.approx([4.0], abs=0.5)
    assert found["lag_at_end"] == {"plain loop": 0, "transactional loop": 0}  # both loops read everything
    if found["brokers_measured"]:  # `make up`'s broker, as in CI
        assert found["broker_us_per_event_start"] > 0 and found["broker_us_per_event_end"] > 0
