"""The load-test and benchmark pieces that need no services: generator, shapes, tallies, plot,
report, profile summary."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from auction.fastpath import Intake, Writer, _native, hot_path
from core.settings import Settings
from loadtests import engine_bench, generator, workload
from loadtests.bench_report import END, START, markdown_block, table, update_markdown
from loadtests.fastpath_ab import arm_environment
from loadtests.plot import bench_plot, nice_ticks
from loadtests.profile import summarise
from loadtests.shapes import Profile, parse_duration
from loadtests.stack import require_local
from loadtests.summary import LatencyStats, percentile
from schemas.campaign import validate_campaign
from schemas.codec import validate
from schemas.iab import IAB_CATEGORIES


def test_generated_intents_are_valid_and_varied() -> None:
    gen = generator.IntentGenerator(seed=1)
    intents = [gen.next() for _ in range(3000)]
    for intent in intents:
        validate("chat.intents", intent)
        assert intent["intent"]["category"] in IAB_CATEGORIES
    assert len({i["event_id"] for i in intents}) == len(intents)
    assert len({i["locale"] for i in intents}) >= 15 and len({i["country"] for i in intents}) >= 15
    assert {i["device"] for i in intents} == {"mobile", "desktop", "tablet"}
    assert {i["slots"] for i in intents} == {1, 2, 3}
    share = Counter()
    for i in intents:
        share["no_consent"] += not i["consent"]["ads"]
        share["labels"] += bool(i["safety"]["labels"])
        share["minor"] += i["age_bracket"] in ("under_13", "13_17")
        share["floor"] += "floor_cpm_micros" in i
    assert all(0.01 < share[k] / len(intents) < 0.5 for k in share), share


def test_same_seed_same_stream() -> None:
    a, b = generator.IntentGenerator(seed=9, run_tag="x"), generator.IntentGenerator(seed=9, run_tag="x")
    assert [{**a.next(), "ts": 0} for _ in range(50)] == [{**b.next(), "ts": 0} for _ in range(50)]


def test_synthetic_campaigns_are_valid_and_match_the_taxonomy() -> None:
    campaigns = generator.campaigns()
    keywords = {k for _, words in generator.TAXONOMY.values() for k in words}
    for campaign in campaigns:
        record, problems = validate_campaign(campaign)
        assert record is not None, problems
        assert set(campaign["targeting"]["keywords"]) <= keywords


def test_profiles_are_bounded() -> None:
    for name in ("steady", "stepup", "spike"):
        profile = Profile(name=name, rate=100, user_rate=10, duration_s=30, peak_factor=4)
        ticks = [profile.tick(t) for t in range(0, 31)]
        assert ticks[-1] is None and all(t is not None for t in ticks[:-1])
        users = [t[0] for t in ticks if t]
        assert min(users) == 10 and max(users) == (10 if name == "steady" else 40)
    profile = Profile(duration_s=30)
    profile.exhausted = True
    assert profile.tick(1) is None
    assert parse_duration("20s") == 20 and parse_duration("2m") == 120 and parse_duration("15") == 15


def test_percentiles_and_reservoir() -> None:
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    stats = LatencyStats(reservoir=100)
    for n in range(1000):
        stats.decision(n / 1000, n % 4 != 0, None if n % 4 else "no_candidates")
    summary = stats.summary()
    assert len(stats.samples) == 100 and summary["fill_rate"] == 0.75
    assert summary["no_fill_reasons"] == {"no_candidates": 250}
    assert all(isinstance(v, float) for v in summary["latency_ms"].values())


def test_load_stays_local() -> None:
    require_local(Settings())
    with pytest.raises(SystemExit):
        require_local(Settings(kafka="10.0.0.5:9092"))
    with pytest.raises(SystemExit):
        require_local(Settings(redis="redis://example.com:6379/0"))


def test_plot_is_a_png(tmp_path: Path) -> None:
    points = [{"offered_events_per_s": r, "throughput_events_per_s": r * 0.98, "p50_ms": 5 + r / 1000,
               "p99_ms": 10 + r / 100} for r in (500, 1250, 2500, 3750, 4500)]
    path = tmp_path / "docs" / "bench.png"
    bench_plot(points, 5000, 25, path, "caption 1.5K")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 560)
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == height * (1 + width * 3)
    assert nice_ticks(4321) == [0, 1000, 2000, 3000, 4000, 5000]


def test_table_and_markdown_keep_nulls_and_notes(tmp_path: Path) -> None:
    results = {
        "engine_auctions_per_s": 60000, "index_build_s_100k": 2.5, "worker_ratio": 0.42, "e2e_p99_ms": 12.0,
        "billing_events_per_s": None, "worker_impressions_per_s": 4000, "command": "make bench",
        "machine": {"cores": 2, "python": "3.11.7", "platform": "Linux"},
        "missing": {"billing_events_per_s": "streams.bench is not importable"},
        "details": {"latency_curve": [{"fraction_of_max": 0.5, "offered_events_per_s": 100, "throughput_events_per_s": 99,
                                       "p50_ms": 3.0, "p95_ms": 5.0, "p99_ms": 7.0, "missing": 0}]},
    }
    text = table(results)
    assert "MISSED" in text and "null billing_events_per_s: streams.bench is not importable" in text
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\nintro\n\n{START}\nold\n{END}\n\n## Notes\nkept\n")
    update_markdown(md, markdown_block(results, tmp_path / "nope.png", tmp_path))
    out = md.read_text()
    assert "intro" in out and "kept" in out and "old" not in out and "| worker / baseline | 0.42 |" in out


def test_profile_summary(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "process 1:main;run (auction/worker.py:10);process (auction/worker.py:20);run (auction/engine.py:30) 60\n"
        "process 1:main;run (auction/worker.py:10);decode (schemas/codec.py:5) 30\n"
        "process 1:main;run_forever (asyncio/base_events.py:1);select (selectors.py:468) 10\n"
    )
    text = summarise(raw)
    assert "samples: 100" in text and "60.0%  auction engine" in text and "30.0%  decode + validate" in text


def test_table_shows_the_transactional_loop_beside_the_worker(tmp_path: Path) -> None:
    results = {
        "baseline_events_per_s": 40000, "txn_loop_events_per_s": 20000, "txn_loop_ratio": 0.5,
        "worker_events_per_s": 10000, "worker_ratio": 0.25, "e2e_p99_ms": 80.0, "txn_loop_e2e_p99_ms": 30.0,
        "details": {"throughput": {"throughput_events_per_run": 1000, "baseline_runs": [40000],
                                   "txn_loop_runs": [20000], "worker_runs": [10000]},
                    "latency_curve": [{"fraction_of_max": 0.5, "offered_events_per_s": 5000, "throughput_events_per_s": 4990,
                                       "p50_ms": 40.0, "p95_ms": 60.0, "p99_ms": 80.0, "missing": 0}],
                    "txn_loop_latency": [{"offered_events_per_s": 5000, "throughput_events_per_s": 5000, "p50_ms": 12.0,
                                          "p95_ms": 20.0, "p99_ms": 30.0, "missing": 0, "cores_busy": 1.5,
                                          "cpu_us_per_event": {"worker": 100.0, "load_generator": 80.0, "redis": 1.0,
                                                               "broker": 120.0}}],
                    "e2e_rounds": {"rate_events_per_s": 5000, "worker_p99_ms": [80.0], "txn_loop_p99_ms": [30.0],
                                   "p99_ratio_per_round": [2.67]}},
    }
    text = table(results)
    assert "transactional loop / baseline" in text and "transactional loop e2e p99, same rate" in text
    block = markdown_block(results, tmp_path / "nope.png", tmp_path)
    assert "| transactional loop / baseline | 0.5 | x |  |  |" in block
    assert "| transactional loop e2e p99, same rate | 30.0 | ms |  |  |" in block
    assert "transactional loop [20000]" in block
    assert ("| transactional loop, 50% rate, round 1 | 5,000 | 5,000 | 12.0 | 20.0 | 30.0 | 0 | 1.5 | "
            "100.0 / 80.0 / 1.0 / 120.0 (loop) |") in block
    assert "worker p99 [80.0] ms, transactional loop p99 [30.0] ms, ratio per round [2.67]" in block


def test_profile_summary_knows_the_compiled_steps(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    so = "auction/_fastpath.cpython-311-x86_64-linux-gnu.so"
    raw.write_text(
        f"process 1:main;Loop._process (core/loop.py:1);Writer.write (auction/fastpath.py:93);"
        f"_fastpath::json::push_str::h1 ({so}) 40\n"
        f"process 1:main;Loop._process (core/loop.py:1);Writer.write (auction/fastpath.py:93);"
        f"pyo3::types::tuple::PyTuple::new::h2 ({so}) 10\n"
        f"process 1:main;Loop._process (core/loop.py:1);Intake.read (auction/fastpath.py:83);"
        f"serde_json::read::SliceRead::skip_to_escape::h3 ({so}) 30\n"
        "process 1:main;send (aiokafka/conn.py:1);StreamWriter.write (asyncio/streams.py:343) 20\n"
        f"process 1:main;AuctionRole._auction (auction/worker.py:1);EngineTwin.run (auction/twin.py:60);"
        f"_fastpath::engine::Engine::run::h4 ({so}) 25\n"
        f"process 1:main;AuctionRole._auction (auction/worker.py:1);EngineTwin.run (auction/twin.py:60);"
        f"pyo3::instance::Bound::getattr::h5 ({so}) 5\n"
    )
    text = summarise(raw)
    assert "38.5%  output records" in text and "23.1%  intake (compiled" in text
    assert "15.4%  Kafka client (other)" in text  # asyncio's StreamWriter.write is not the record writer
    assert "23.1%  auction engine" in text  # the compiled twin, and PyO3 frames it calls



def test_the_fastpath_ab_reference_arm_turns_the_compiled_steps_off(tmp_path: Path) -> None:
    """loadtests/fastpath_ab.py: a process started with the reference arm's environment runs the
    Python references; the compiled arm's runs what is built here."""
    code = "from auction.fastpath import Intake, Writer, hot_path; print(hot_path(Intake(), Writer()))"
    ran = {arm: subprocess.run([sys.executable, "-c", code], env=arm_environment(arm, tmp_path), capture_output=True,
                               text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
           for arm in ("reference", "compiled")}
    assert ran == {"reference": "reference", "compiled": hot_path(Intake(), Writer())}


def test_the_engine_bench_measures_the_engine_the_worker_runs() -> None:
    """`details.engine`: the engine with its compiled twin where fastpath/ is built (the worker's),
    the Python engine beside it, and the twin's copy of the index."""
    found = engine_bench.engine_auctions_per_s(campaigns=300, auctions=300, runs=1)
    built = _native() is not None
    assert found["engine"] == ("compiled" if built else "python")
    assert found["engine_auctions_per_s"] > 0 and found["engine_python_auctions_per_s"] > 0
    twin = engine_bench.twin_build(engine_bench.build_index(engine_bench.validated(workload.campaigns(n=300))), runs=1)
    if built:
        assert twin["index_twin_build_s_100k"] > 0 and twin["index_twin_bytes_per_campaign"] >= 0
    else:
        assert twin == {"index_twin": "absent"}
