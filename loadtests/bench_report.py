"""The human side of `make bench`: targets (docs/contract.md §6), the printed table, BENCHMARKS.md."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# key -> (label, target, ">=" or "<=", unit)
TARGETS: dict[str, tuple[str, float | None, str, str]] = {
    # The contract's targets; the unit names the worker-speed issue's stricter ones (issue 17).
    "engine_auctions_per_s": ("engine alone, 10k campaigns, 1 core", 50_000, ">=", "auctions/s (aim 100,000)"),
    "index_build_s_100k": ("index build, 100k campaigns", 2.0, "<=", "s (aim 1)"),
    "index_bytes_per_campaign": ("index memory per campaign", 1024, "<=", "bytes (aim 512)"),
    "baseline_events_per_s": ("plain aiokafka loop (baseline)", None, ">=", "events/s"),
    "txn_loop_events_per_s": ("transactional loop (no auction, no Redis)", None, ">=", "events/s"),
    "txn_loop_ratio": ("transactional loop / baseline", None, ">=", "x"),
    "worker_events_per_s": ("auction worker, 1k campaigns", None, ">=", "events/s"),
    "worker_ratio": ("worker / baseline", 0.6, ">=", "x (aim 0.8)"),
    "e2e_rate_events_per_s": ("offered rate for e2e (50% of max)", None, ">=", "events/s"),
    "e2e_p50_ms": ("end-to-end p50 at 50% of max", None, "<=", "ms"),
    "e2e_p99_ms": ("end-to-end p99 at 50% of max", 25.0, "<=", "ms"),
    "txn_loop_e2e_p50_ms": ("transactional loop e2e p50, same rate", None, "<=", "ms"),
    "txn_loop_e2e_p99_ms": ("transactional loop e2e p99, same rate", None, "<=", "ms"),
    "e2e_p99_vs_txn_loop": ("e2e p99, worker / transactional loop", 1.5, "<=", "x"),
    "billing_events_per_s": ("billing (streams.bench)", None, ">=", "events/s"),
    "autopilot_clicks_vs_best_fixed": ("autopilot clicks / best fixed bid (diurnal)", 0.9, ">=", "x (aim 1.0)"),
    "autopilot_budget_used": ("autopilot share of the daily budget spent", 0.9, ">=", "x (at most 1.0)"),
    "simulate_intents_per_s": ("vickrey simulate speed", None, ">=", "intents/s"),
    "conversions_events_per_s": ("conversions role (clicks + conversions)", None, ">=", "events/s"),
    "autopilot_cpa_vs_target": ("target_cpa: cost per conversion / target (cpa)", 1.15, "<=", "x (at most 1.15)"),
    "cluster_worker_events_per_s": ("auction worker on three brokers", None, ">=", "events/s"),
    "failover_pause_ms": ("longest pause in decisions, busiest broker killed", None, "<=", "ms"),
    "redis_cluster_worker_events_per_s": ("auction worker on a Redis Cluster (split reservation)", None, ">=", "events/s"),
}
# Rates that must keep up with what the worker's impressions imply: key -> (share of impressions, words).
KEEP_UP: dict[str, tuple[float, str]] = {
    "billing_events_per_s": (1.0, "worker impressions/s"),
    "conversions_events_per_s": (0.1, "worker clicks/s at a 10 % click rate"),
}
START, END = "<!-- bench:start (written by `make bench`; edit outside this block) -->", "<!-- bench:end -->"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value < 100:
        return f"{value:,.3g}" if value < 10 else f"{value:,.1f}"
    return f"{value:,}"


def _target(key: str, results: dict[str, Any]) -> tuple[str, str]:
    label, target, op, _unit = TARGETS[key]
    value = results.get(key)
    keep_up = KEEP_UP.get(key)
    if keep_up is not None:
        impressions = results.get("worker_impressions_per_s")
        target = None if impressions is None else round(impressions * keep_up[0])
    if target is None:
        return "", ""
    shown = f"{op} {_value(target)}" + (f" ({keep_up[1]})" if keep_up else "")
    if value is None:
        return shown, "n/a"
    met = value >= target if op == ">=" else value <= target
    return shown, "ok" if met else "MISSED"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    out = []
    for key, (label, _target_value, _op, unit) in TARGETS.items():
        target, status = _target(key, results)
        out.append((label, _value(results.get(key)), unit, target, status))
    return out


def table(results: dict[str, Any]) -> str:
    header = ("measure", "value", "unit", "target", "")
    body = rows(results)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i != 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in [header, *body]]
    m = results.get("machine", {})
    lines.append("")
    lines.append(f"machine: {m.get('cores')} cores ({m.get('cpu') or 'cpu unknown'}), Python {m.get('python')}, "
                 f"{m.get('platform')}; load average at start {m.get('load_average_at_start')}")
    lines.append(f"command: {results.get('command')}")
    lines += [line for line in _warmup_lines(results.get("details", {})) if line]
    for key, reason in (results.get("missing") or {}).items():
        lines.append(f"null {key}: {reason}")
    return "\n".join(lines)


def markdown_block(results: dict[str, Any], plot: Path, md_dir: Path) -> str:
    m = results.get("machine", {})
    lines = [
        START,
        f"Latest run: `{results.get('command')}`, {results.get('started')} ({results.get('duration_s')} s).",
        "",
        f"Machine: {m.get('cores')} cores ({m.get('cpu') or 'cpu unknown'}), Python {m.get('python')}, "
        f"{m.get('platform')}; load average at start {m.get('load_average_at_start')} (a shared machine: "
        "compare ratios within one run).",
        "",
        "| measure | value | unit | target | |",
        "|---|---:|---|---|---|",
    ]
    lines += [f"| {label} | {value} | {unit} | {target} | {status} |" for label, value, unit, target, status in rows(results)]
    details = results.get("details", {})
    lines += _warmup_lines(details)
    runs = details.get("throughput", {})
    if runs:
        lines += ["", f"Runs ({runs.get('throughput_events_per_run', 0):,} events each, median taken): "
                  f"baseline {runs.get('baseline_runs')}, transactional loop {runs.get('txn_loop_runs')}, "
                  f"worker {runs.get('worker_runs')} events/s."]
    parts = runs.get("cpu_us_per_event") if runs else None
    if parts:
        lines += ["", "CPU per event, µs (median of the runs; the process, Redis and the broker share the cores, "
                  "so a side's ceiling is the cores divided by its total):", "",
                  "| side | process | Redis | broker | total |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {side} | {p.get('process')} | {p.get('redis')} | {p.get('broker')} | {p.get('total')} |"
                  for side, p in parts.items()]
        lines += [""]
    steps = details.get("worker_stages")
    if steps:
        us = steps["us_per_event"]
        lines += ["The worker's own steps, in process without Kafka (`details.worker_stages`, µs per event, median of "
                  "rounds): " + ", ".join(f"{step.replace('_', ' ')} {value}" for step, value in us.items())
                  + f"; the process's steps add up to {steps['process_us_per_event']} (Kafka's share is the "
                  "transactional loop's process figure above)." + _kept_bytes(steps), ""]
    engine = details.get("engine", {})
    if engine:
        lines += [f"Engine runs {engine.get('engine_runs')} auctions/s; index builds {engine.get('index_build_runs_s')} s."]
        parts = engine.get("index_bytes_parts")
        if parts:
            lines += ["", "What the index holds, bytes per campaign (every object reachable from it, counted once; "
                      "`details.engine.index_bytes_parts`): "
                      + ", ".join(f"{part} {size}" for part, size in parts.items()) + "."]
    curve = details.get("latency_curve") or []
    if curve:
        lines += ["", "| offered load | offered events/s | decisions/s | p50 ms | p95 ms | p99 ms | missing "
                  "| cores busy | CPU µs/event: worker / load generator / Redis / broker |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {p['fraction_of_max']:.0%} | {p['offered_events_per_s']:,} | {p['throughput_events_per_s']:,} | "
                  f"{p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p['missing']} | {p.get('cores_busy')} | "
                  f"{_cpu_parts(p.get('cpu_us_per_event'))} |" for p in curve]
        references = details.get("txn_loop_latency") or []
        if isinstance(references, dict):  # bench-results.json of before the e2e rounds: one point
            references = [references]
        for n, p in enumerate(references, 1):  # the same 50% load on the transactional loop (no auction, no Redis)
            lines += [f"| transactional loop, 50% rate, round {n} | {p['offered_events_per_s']:,} | "
                      f"{p['throughput_events_per_s']:,} | {p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | "
                      f"{p['missing']} | {p.get('cores_busy')} | {_cpu_parts(p.get('cpu_us_per_event'))} (loop) |"]
    rounds = details.get("e2e_rounds")
    if rounds:
        lines += ["", f"e2e rounds at {rounds['rate_events_per_s']:,.0f} events/s (worker and transactional loop "
                  f"alternating, fresh stack each; the keys are the medians): worker p99 {rounds['worker_p99_ms']} ms, "
                  f"transactional loop p99 {rounds['txn_loop_p99_ms']} ms, ratio per round "
                  f"{rounds['p99_ratio_per_round']}."]
    for key, reason in (results.get("missing") or {}).items():
        lines += ["", f"`{key}` is null: {reason}."]
    profile = details.get("worker_profile")
    if profile:
        blanks = [i for i, line in enumerate(profile) if not line]
        areas = profile[: blanks[1]] if len(blanks) > 1 else profile  # samples and the areas
        lines += ["", "Where the worker's time goes (py-spy --idle --native, an extra worker run; full summary in "
                  "bench-results.json `details.worker_profile`):", "", "```", *areas, "```"]
    if plot.exists():
        lines += ["", f"![throughput and latency against offered load]({os.path.relpath(plot, md_dir)})"]
    lines.append(END)
    return "\n".join(lines)


def _warmup_lines(details: dict[str, Any]) -> list[str]:
    lines = []
    for key, where in (("warmup", "before the measured stages"), ("cluster_warmup", "of the three brokers")):
        line = warmup_line(details.get(key), key, where)
        if line:
            lines += ["", line]
    return lines


def warmup_line(warmup: dict[str, Any] | None, key: str, where: str) -> str:
    """One sentence on a broker warm-up (`details.warmup`), or "" when there was none."""
    if not warmup:
        return ""
    if "error" in warmup:
        return f"Broker warm-up {where} failed: {warmup['error']}."
    ratio = warmup.get("end_vs_start")
    return (f"Broker warm-up {where} (`details.{key}`, not counted): {warmup['traffic_s']} s at {warmup['rate_events_per_s']:,.0f} intents/s, "
            f"{warmup['events']:,} intents through the plain and the transactional loop; broker CPU per intent "
            f"{warmup['broker_us_per_event_start']} µs in the first {warmup['window_s']:g} s, "
            f"{warmup['broker_us_per_event_end']} in the last" + (f" ({ratio}×)." if ratio is not None else "."))


def _kept_bytes(steps: dict[str, Any]) -> str:
    kept, aof = steps.get("kept_bytes_per_event"), steps.get("aof_bytes_per_event")
    if kept is None and aof is None:
        return ""
    return f" Redis bytes per event: {kept} of kept outcomes (until the batch commits), {aof} written to the AOF."


def _cpu_parts(parts: dict[str, Any] | None) -> str:
    if not parts:
        return "n/a"
    return " / ".join(str(parts.get(part)) for part in ("worker", "load_generator", "redis", "broker"))


def update_markdown(path: Path, block: str) -> None:
    """Replace the figures block of BENCHMARKS.md (create the file with it when missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n" + START + "\n" + END + "\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
