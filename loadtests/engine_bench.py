"""The auction engine alone (no Kafka, no Redis): auctions/s, index build time and memory.

Workload: loadtests.workload (the engine issue's: Zipf keywords, 10 per campaign, 3 per event,
1-3 slots, budgets and caps set on the campaigns).

- auctions/s: `AuctionEngine.run` over pre-normalised `AuctionRequest`s, fresh ones each run (from
  `AuctionRequest.from_intent`, done before the clock starts), one thread, one core; the median
  of several timed runs after a warm-up. The engine the worker runs: with its compiled twin
  (auction/twin.py) where `fastpath/` is built (`engine` says which), and the Python engine alone
  beside it (`engine_python_auctions_per_s`), run for run. Budgets and caps are in force the way the engine sees
  them: the in-memory spend view (campaigns without budget left are skipped) and the per-user
  state; the Redis round trip that reserves them belongs to the worker and is not timed here.
- index build: `Campaign.from_record` for every validated record plus `CampaignIndex.build`
  (validation, JSON parsing and record generation happen before the clock starts).
- bytes per campaign: tracemalloc, memory still held once the index is built and the input
  records are freed (campaign objects, their strings, sets and the posting lists) / campaigns;
  and by part (`index_bytes_parts`): every object reachable from the index, counted once.
- the compiled twin's copy of the index, which the worker builds after it (`index_twin_*`): its
  build from the Python index, timed, and the bytes its Rust code holds per campaign (counted by
  the module's allocator: tracemalloc does not see Rust allocations).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from auction.engine import AuctionEngine
from auction.fastpath import _native
from auction.index import BulkLoad, CampaignIndex
from auction.model import AuctionRequest, Campaign
from auction.twin import engine_twin
from loadtests import workload
from schemas.campaign import validate_campaign


def validated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        campaign, problems = validate_campaign(record)
        if campaign is None:
            raise ValueError(f"workload campaign {record.get('campaign_id')} is invalid: {problems}")
        out.append(campaign)
    return out


def build_index(records: list[dict[str, Any]]) -> CampaignIndex:
    with BulkLoad():  # as the worker loads its campaigns
        return CampaignIndex.build([Campaign.from_record(record) for record in records])


def fresh_requests(intents: list[dict[str, Any]], now_ms: int) -> list[AuctionRequest]:
    """Normalised requests (what the worker's request step makes), not yet seen by the engine."""
    return [AuctionRequest.from_intent(intent, now_ms) for intent in intents]


def engine_auctions_per_s(
    campaigns: int = 10_000, auctions: int = 20_000, runs: int = 5, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    records = validated(workload.campaigns(n=campaigns))
    index = build_index(records)
    twin = engine_twin(10_000)
    python = AuctionEngine(index)
    engine = AuctionEngine(index, twin=twin) if twin is not None else python
    now_ms = int(time.time() * 1000)
    intents = workload.intents(auctions)
    for request in fresh_requests(intents[:2000], now_ms):  # warm-up
        engine.run(request)
        python.run(request)
    rates: dict[str, list[float]] = {"engine": [], "python": []}
    for i in range(runs):
        for name, run in (("engine", engine.run), ("python", python.run)):
            # Fresh requests each run, as the worker's are. A request once kept the terms the engine
            # worked out for phrase match, and runs over requests that already held them measured
            # ~10 % more auctions/s than the worker got; nothing may be carried over like that.
            requests = fresh_requests(intents, now_ms)
            gc.collect()
            started = time.perf_counter()
            for request in requests:
                run(request)
            rates[name].append(len(requests) / (time.perf_counter() - started))
        if progress:
            progress(f"engine run {i + 1}/{runs}: {rates['engine'][-1]:,.0f} auctions/s "
                     f"({'compiled' if twin is not None else 'python'}), the Python engine {rates['python'][-1]:,.0f}")
    filled = sum(1 for request in requests if engine.run(request).winners)
    return {
        "engine_auctions_per_s": round(statistics.median(rates["engine"])),
        "engine": "compiled" if twin is not None else "python",
        "engine_runs": [round(r) for r in rates["engine"]],
        "engine_python_auctions_per_s": round(statistics.median(rates["python"])),
        "engine_python_runs": [round(r) for r in rates["python"]],
        "engine_fill_rate": round(filled / len(requests), 4),
    }


def twin_build(index: CampaignIndex, runs: int = 3) -> dict[str, Any]:
    """The compiled twin's copy of `index`: build seconds (median), and the bytes its Rust code
    holds for it per campaign (counted by the module's allocator: tracemalloc does not see them)."""
    native = _native()
    times = []
    held = 0
    for _ in range(runs):
        twin = engine_twin(10_000)
        if native is None or twin is None:
            return {"index_twin": "absent"}
        gc.collect()
        before = native.held_bytes()
        started = time.perf_counter()
        AuctionEngine(index, twin=twin)  # attaching the index builds the copy
        times.append(time.perf_counter() - started)
        held = native.held_bytes() - before
        index.mirror = None
        del twin
    return {"index_twin_build_s_100k": round(statistics.median(times), 3),
            "index_twin_bytes_per_campaign": round(held / max(1, len(index)))}


def index_build(campaigns: int = 100_000, runs: int = 3, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    raw = workload.campaigns(n=campaigns, advertisers=max(1, campaigns * 3 // 10))
    if progress:
        progress(f"validating {campaigns:,} campaign records (not timed)")
    records = validated(raw)
    del raw
    times = []
    for i in range(runs):
        gc.collect()
        started = time.perf_counter()
        index = build_index(records)
        times.append(time.perf_counter() - started)
        assert len(index) == campaigns
        del index
        if progress:
            progress(f"index build {i + 1}/{runs}: {times[-1]:.2f} s")
    blob = orjson.dumps(records)
    del records
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fresh = orjson.loads(blob)  # records allocated while tracing, then freed: only the index stays
        index = build_index(fresh)
        del fresh
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    per_campaign = held / len(index)
    parts = index_parts(index)
    if progress:
        progress("the compiled twin's copy of the index")
    twin = twin_build(index)
    del index
    return {
        "index_build_s_100k": round(statistics.median(times), 3),
        "index_build_runs_s": [round(t, 3) for t in times],
        "index_bytes_per_campaign": round(per_campaign),
        "index_bytes_parts": parts,
        **twin,
    }


def index_parts(index: CampaignIndex) -> dict[str, float]:
    """Bytes per campaign of what the index holds, by part: every object reachable from it counted
    once (`sys.getsizeof`, shared objects with the first part that reaches them). Unlike the
    tracemalloc figure it does not depend on the process's history (a resize of the interpreter's
    table of interned strings during the traced build adds ~39 B per campaign in some processes,
    none in others), and it names the floor of each part."""
    seen: set[int] = set()
    parts: Counter[str] = Counter()

    def add(part: str, value: object) -> bool:
        if value is None or id(value) in seen:
            return False
        seen.add(id(value))
        parts[part] += sys.getsizeof(value)
        return True

    for table in (index.by_keyword, index.by_phrase, index.by_category):
        add("lookup tables (term -> list, id -> campaign)", table)
        for term, postings in table.items():
            add("terms", term)
            add("posting lists", postings)
    add("lookup tables (term -> list, id -> campaign)", index.campaigns)
    add("posting lists", index.untargeted)
    for campaign in index.campaigns.values():
        add("campaign objects", campaign)
        add("campaign ids", campaign.campaign_id)
        add("advertiser ids (shared)", campaign.advertiser_id)
        for terms in (campaign.keywords, campaign.phrases):
            if add("keyword tuples", terms):
                for term in terms:
                    add("terms", term)
        shared = "shared: filters, category sets, caps, priors"
        for value in (campaign.categories, campaign.filters, campaign.frequency_cap, campaign.prior_pctr):
            add(shared, value)
        if campaign.filters is not None:  # the fields themselves (astuple would copy the sets)
            for field in dataclasses.fields(campaign.filters):
                add(shared, getattr(campaign.filters, field.name))
    count = max(1, len(index))
    out = {part: round(size / count, 1) for part, size in parts.most_common()}
    out["total"] = round(sum(parts.values()) / count, 1)
    return out
