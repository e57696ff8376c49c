"""Compact outcomes (auction/records.py): what Redis keeps of an auction until its batch commits,
and the records a replay builds from it. A replay publishes the first attempt's bytes exactly,
whatever changed in between (creatives, bids, learned pCTR, the clock), and the records are
those the worker published before outcomes were compact (the reference below, byte for byte)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import orjson
import pytest
import redis
from aiokafka import ConsumerRecord, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from auction.engine import AuctionEngine
from auction.fastpath import INPUT, Writer
from auction.model import AuctionRequest, AuctionResult, Campaign
from auction.people import PeopleCache
from auction.records import (
    decode_compact,
    encode_compact,
    encode_outcome,
    is_compact,
    outcome_of,
    records_of,
    split_outcome,
)
from auction.worker import AuctionRole, Pending
from auction.worker_metrics import WorkerMetrics
from core.metrics import Metrics
from core.redis_client import redis_from_url
from core.settings import Settings
from schemas.codec import decode
from tests.auction.factories import (
    NOW_MS,
    campaign_record,
    engine_for,
    intent,
    load_vectors,
    vector_campaigns,
)
from tests.auction.test_worker import apply

CASES = load_vectors()


def reference_records(intent: dict[str, Any], result: AuctionResult, ts_decided: int,
                      creatives_of: Mapping[str, list[dict[str, Any]]], personalized: bool,
                      intent_keywords: list[str] | None = None) -> list[bytes]:
    """The records as the worker built and published them before compact outcomes (build_records
    and encode_outcome of 0b7fc4c, verbatim but for the encoding at the end)."""
    event_id = intent["event_id"]
    user_id, session_id, placement = intent["user_id"], intent["session_id"], intent["placement"]
    category = intent["intent"]["category"]
    ads: list[dict[str, Any]] = []
    impressions: list[dict[str, Any]] = []
    for winner in result.winners:
        campaign = winner.campaign
        campaign_id = campaign.campaign_id
        creatives = creatives_of[campaign_id]
        creative = creatives[0] if len(creatives) == 1 else creatives[
            zlib.crc32(f"{event_id}\x1f{campaign_id}".encode()) % len(creatives)]
        impression_id = f"{event_id}:{winner.slot}"
        ads.append({"slot": winner.slot, "impression_id": impression_id, "campaign_id": campaign_id,
                    "advertiser_id": campaign.advertiser_id, "creative": creative, "label": "Sponsored",
                    "why": {"matched_keywords": list(winner.matched_keywords), "category": winner.matched_category,
                            "personalized": personalized}})
        impressions.append({
            "schema_version": 1, "impression_id": impression_id, "event_id": event_id, "ts": ts_decided,
            "user_id": user_id, "session_id": session_id, "placement": placement, "slot": winner.slot,
            "campaign_id": campaign_id, "advertiser_id": campaign.advertiser_id,
            "creative_id": creative["creative_id"], "bid_type": campaign.bid_type, "bid_micros": campaign.bid_micros,
            "price_micros": winner.price_micros, "charge_micros": winner.charge_micros,
            "ecpm_micros": winner.ecpm_micros, "runner_up_ecpm_micros": winner.runner_up_ecpm_micros,
            "reserve_cpm_micros": result.reserve_cpm_micros, "pctr": campaign.pctr_num / campaign.pctr_den,
            "category": category, "matched_keywords": list(winner.matched_keywords),
            "intent_keywords": intent_keywords if intent_keywords is not None else [],
        })
    decision = {"schema_version": 1, "event_id": event_id, "session_id": session_id, "user_id": user_id,
                "placement": placement, "ts_event": intent["ts"], "ts_decided": ts_decided, "ads": ads,
                "no_fill_reason": None if ads else result.no_fill_reason}
    return [orjson.dumps(decision), *map(orjson.dumps, impressions)]


def decoded_intent(event_id: str, **extra: Any) -> dict[str, Any]:
    """An intent as the worker has it: decoded by the codec (defaults filled in)."""
    return decode(INPUT, orjson.dumps(intent(event_id, **extra)))


def keywords_of(intent: dict[str, Any], winners: bool) -> list[str] | None:
    """The worker's intent_keywords: the normalised keywords, when anything won."""
    return sorted(AuctionRequest.from_intent(intent, NOW_MS).keywords) if winners else None


def first_attempt(engine: AuctionEngine, intent: dict[str, Any], creatives: dict[str, list[dict[str, Any]]],
                  ts_decided: int) -> tuple[AuctionResult, list[bytes], bytes]:
    """The auction, the records published (those of the reference too), and the compact outcome
    Redis keeps."""
    result = engine.run(AuctionRequest.from_intent(intent, ts_decided))
    outcome = outcome_of(intent["event_id"], result, ts_decided, creatives, personalized=False)
    keywords = keywords_of(intent, bool(result.winners))
    published = encode_outcome(*records_of(intent, outcome, keywords))
    assert published == reference_records(intent, result, ts_decided, creatives, False, keywords)
    return result, published, encode_compact(outcome)


def replayed(intent: dict[str, Any], kept: bytes) -> list[bytes]:
    assert is_compact(kept)
    outcome = decode_compact(kept)
    return encode_outcome(*records_of(intent, outcome, keywords_of(intent, bool(outcome[4]))))


def change_everything(engine: AuctionEngine, creatives: dict[str, list[dict[str, Any]]]) -> None:
    """What may change between a failed commit and its replay: every creative (and how many a
    campaign rotates over), every bid and bid type, every learned pCTR."""
    for campaign_id, listed in creatives.items():
        creatives[campaign_id] = [{**c, "creative_id": c["creative_id"] + "-v2", "title": "Changed ✓", "body": "new"}
                                  for c in listed] + [{**listed[0], "creative_id": campaign_id + "-extra"}]
    for campaign in list(engine.index.campaigns.values()):
        changed = campaign.changed(bid_type="cpc" if campaign.bid_type == "cpm" else "cpm",
                                   bid_micros=campaign.bid_micros * 2 + 1)
        changed.set_pctr(Fraction(7, 1000))
        engine.index.upsert(changed)


def creatives_for(campaigns: list[Campaign], per_campaign: int = 1) -> dict[str, list[dict[str, Any]]]:
    return {c.campaign_id: [{**campaign_record(c.campaign_id)["creatives"][0], "creative_id": f"{c.campaign_id}-{n}"}
                            for n in range(per_campaign)] for c in campaigns}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector_replays_byte_for_byte(case: dict[str, Any]) -> None:
    campaigns = vector_campaigns(case)
    engine = engine_for(campaigns, increment_micros=case.get("increment_micros", 10_000))
    creatives = creatives_for(campaigns, per_campaign=2)
    event = decoded_intent(case["event_id"], slots=case.get("slots", 1),
                           floor_cpm_micros=case.get("reserve_cpm_micros", 0))
    result, published, kept = first_attempt(engine, event, creatives, NOW_MS)
    assert len(published) == 1 + len(case["expected"])
    change_everything(engine, creatives)
    if result.winners:  # the change shows: a new auction would publish other bytes
        assert first_attempt(engine, event, creatives, NOW_MS + 1)[1] != published
    assert replayed(event, kept) == published
    assert len(kept) < sum(map(len, published))  # compact: what the intent already says is not kept


# -- random auctions --------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=40)
creative = st.fixed_dictionaries({"creative_id": st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), "title": text,
                                  "body": text, "url": st.just("https://example.com/x"), "cta": text})
bidder = st.fixed_dictionaries({
    "advertiser_id": st.sampled_from([f"adv{i}" for i in range(5)]),
    "bid_type": st.sampled_from(["cpm", "cpc"]),
    "amount_micros": st.integers(min_value=1, max_value=50_000_000),
    "pctr": st.sampled_from([0.000001, 0.001, 0.01, 0.017, 0.05, 0.123456, 0.999999]),
    "creatives": st.lists(creative, min_size=1, max_size=3, unique_by=lambda c: c["creative_id"]),
})


@settings(max_examples=300, deadline=None)
@given(bidders=st.lists(bidder, min_size=1, max_size=7), slots=st.integers(min_value=1, max_value=5),
       floor=st.sampled_from([0, 100_000, 1_000_000, 5_000_000]), increment=st.sampled_from([0, 10_000]),
       event_id=st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True), learned=st.integers(0, 500))
def test_random_auctions_replay_byte_for_byte(bidders: list[dict[str, Any]], slots: int, floor: int, increment: int,
                                              event_id: str, learned: int) -> None:
    records = [campaign_record(f"c{i}", advertiser_id=b["advertiser_id"], bid_type=b["bid_type"],
                               amount_micros=b["amount_micros"], pctr=b["pctr"], creatives=b["creatives"])
               for i, b in enumerate(bidders)]
    campaigns = [Campaign.from_record(r) for r in records]
    for n, campaign in enumerate(campaigns):  # learned rates: pCTR no longer a short decimal
        campaign.set_pctr(Fraction(n * learned + 1, 3 * learned + 7))
    engine = engine_for(campaigns, increment_micros=increment)
    creatives = {r["campaign_id"]: list(r["creatives"]) for r in records}
    event = decoded_intent(event_id, slots=slots, floor_cpm_micros=floor)
    _, published, kept = first_attempt(engine, event, creatives, NOW_MS)
    change_everything(engine, creatives)
    assert replayed(event, kept) == published
    assert encode_compact(decode_compact(kept)) == kept  # a replay kept again is kept the same


@settings(max_examples=300, deadline=None)
@given(ts=st.integers(0, 2**53 - 1), pctr=st.floats(allow_nan=False, allow_infinity=False),
       price=st.integers(0, 2**53 - 1), runner_up=st.none() | st.integers(0, 2**53 - 1), name=text,
       category=st.none() | st.sampled_from(["IAB19", "IAB19-6"]), keywords=st.lists(text, max_size=3),
       reason=st.none() | st.sampled_from(["below_floor", "budget"]), personalized=st.booleans())
def test_every_value_survives_the_round_trip(ts: int, pctr: float, price: int, runner_up: int | None, name: str,
                                             category: str | None, keywords: list[str], reason: str | None,
                                             personalized: bool) -> None:
    """Any value a compact outcome can hold comes back the same, so its records do too."""
    creative = {"creative_id": "k", "title": name, "body": name, "url": "https://example.com", "cta": "Go"}
    winner = [1, "c1", "a1", creative, "cpc", price, price, 0, price, runner_up, pctr, tuple(keywords), category]
    outcomes: list[list[Any]] = [[ts, reason, price, personalized, [winner]], [ts, reason, price, personalized, []]]
    for outcome in outcomes:
        event = decoded_intent("e-1")
        first = encode_outcome(*records_of(event, outcome, sorted(keywords)))
        assert encode_outcome(*records_of(event, decode_compact(encode_compact(outcome)), sorted(keywords))) == first


def test_records_kept_whole_are_told_apart() -> None:
    """A blob kept by a worker before compact outcomes (the records joined by newlines) is not
    read as a compact outcome: the worker publishes it as it is."""
    engine = engine_for([Campaign.from_record(campaign_record("c1"))])
    event = decoded_intent("e-1")
    _, published, kept = first_attempt(engine, event, {"c1": campaign_record("c1")["creatives"]}, NOW_MS)
    whole = b"\n".join(published)
    assert not is_compact(whole) and split_outcome(whole) == published and is_compact(kept)
    with pytest.raises(ValueError, match="not a compact outcome"):
        decode_compact(b"[1, 2]")


# -- through the worker's role and Redis ------------------------------------------------------------


class _NoLoop:
    def dlq(self, record: Any, error: Any, now_ms: int) -> Any:
        raise AssertionError(f"refused: {error}")


@pytest.mark.integration
async def test_a_batch_replayed_by_the_worker_publishes_the_same_bytes(
    settings: Settings, topics: Settings, redis_client: redis.Redis
) -> None:
    """The worker's role auctions a batch whose commit then fails; before it is consumed again
    every creative, bid and pCTR changes and the clock moves on. The replay publishes exactly
    the first attempt's records, charges nothing twice, and the first records come from Redis."""
    records = [campaign_record(f"c{i}", amount_micros=1_000_000 + 10_000 * i, keywords=["laptop"],
                               creatives=[{"creative_id": f"c{i}-{n}", "title": f"Offer {n}", "body": "ü", "cta": "Go",
                                           "url": f"https://example.com/{i}/{n}"} for n in range(1 + i % 3)])
               for i in range(6)]
    await apply(settings, records)
    clock = [time.time()]
    client = redis_from_url(settings.redis)
    metrics = Metrics()
    role = AuctionRole(settings, WorkerMetrics(metrics), client, PeopleCache(), clock=lambda: clock[0])
    try:
        await role.start(_NoLoop())  # type: ignore[arg-type]
        tp = TopicPartition(settings.topic(INPUT), 0)
        events = [intent(f"r{n}", slots=1 + n % 3, user_id=f"u{n}") for n in range(40)]
        batch = {tp: [ConsumerRecord(tp.topic, 0, n, 0, 0, None, orjson.dumps(e), None, 0, 0, [])
                      for n, e in enumerate(events)]}
        first = (await (await role.process(batch, 0)).whole()).outputs  # never committed: the blob stays
        spend = {r["campaign_id"]: redis_client.get(settings.keys.spend_total(r["campaign_id"])) for r in records}

        for campaign_id in list(role.live.creatives):
            role.live.creatives.set(campaign_id, [{**c, "title": "changed"} for c in role.live.creatives[campaign_id]])
        for campaign in list(role.engine.index.campaigns.values()):
            changed = campaign.changed(bid_micros=campaign.bid_micros * 3)
            changed.set_pctr(Fraction(1, 3))
            role.engine.index.upsert(changed)
        clock[0] += 3600
        again = (await (await role.process(batch, 0)).whole()).outputs
    finally:
        await role.close()
        await client.aclose()
    assert len(first) > len(events)  # decisions and impressions
    assert again == first
    assert metrics.value("vickrey_auction_replayed_total") == len(events)
    assert spend == {r["campaign_id"]: redis_client.get(settings.keys.spend_total(r["campaign_id"])) for r in records}
    assert any(orjson.loads(value)["ads"] for topic, _, value in first if value and topic.endswith("ad.decisions"))


@pytest.mark.integration
async def test_a_committed_batch_read_again_by_the_next_owner_publishes_nothing(
    settings: Settings, topics: Settings, redis_client: redis.Redis
) -> None:
    """A rebalance: the old owner's batch commits, then its partitions are revoked. The new owner
    may read offsets from before that commit (aiokafka cannot wait for pending transactional
    offsets), so it auctions the same records again: Redis must answer "committed" (publish
    nothing, charge nothing), not hand back the outcomes to publish a second time."""
    await apply(settings, [campaign_record("c1", keywords=["laptop"])])
    client = redis_from_url(settings.redis)
    old_metrics, new_metrics = Metrics(), Metrics()
    old = AuctionRole(settings, WorkerMetrics(old_metrics), client, PeopleCache())
    new = AuctionRole(settings, WorkerMetrics(new_metrics), client, PeopleCache())
    try:
        await old.start(_NoLoop())  # type: ignore[arg-type]
        await new.start(_NoLoop())  # type: ignore[arg-type]
        tp = TopicPartition(settings.topic(INPUT), 0)
        batch = {tp: [ConsumerRecord(tp.topic, 0, n, 0, 0, None, orjson.dumps(intent(f"rb{n}")), None, 0, 0, [])
                      for n in range(10)]}
        step = await (await old.process(batch, 0)).whole()
        assert step.outputs and step.on_commit is not None
        step.on_commit()  # its transaction committed
        spend = redis_client.get(settings.keys.spend_total("c1"))
        await old.on_revoked([tp])  # the loop calls this once that transaction has landed
        again = await (await new.process(batch, 0)).whole()
    finally:
        await old.close()
        await new.close()
        await client.aclose()
    assert again.outputs == []
    assert new_metrics.value("vickrey_auction_already_committed_total") == 10
    assert new_metrics.value("vickrey_auction_replayed_total") == 0
    assert redis_client.get(settings.keys.spend_total("c1")) == spend


def test_pending_is_what_the_worker_fills() -> None:
    """The role fills a pending auction's records from the compact outcome alone."""
    engine = engine_for([Campaign.from_record(campaign_record("c1"))])
    event = decoded_intent("e-1")
    result, published, kept = first_attempt(engine, event, {"c1": campaign_record("c1")["creatives"]}, NOW_MS)
    item = Pending(ConsumerRecord(INPUT, 0, 0, 0, 0, None, orjson.dumps(event), None, 0, 0, []), None,
                   (AuctionRequest.from_intent(event, NOW_MS), event))
    topics = ("t.decisions", "t.impressions")
    for writer in (Writer(), Writer(compiled=False)):  # compiled (where built) and the reference alike
        item.published = []
        assert AuctionRole._set_records(writer, topics, item, decode_compact(kept)) == kept  # noqa: SLF001
        assert item.published == [("t.decisions", b"s-1", published[0]), ("t.impressions", b"e-1:1", published[1])]
        assert item.impressions == 1 and item.no_fill_reason is None
    assert result.winners
