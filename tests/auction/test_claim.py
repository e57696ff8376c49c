"""The twin's one compiled step (`EngineTwin.claim`: the auction, its records and its Redis
reservations) gives what the worker's Python steps give, byte for byte: the reference engine, then
`outcome_of`, the reference writer (`records_of` with orjson), `reservations_of` and the claim's
entry in the reservation call (`entry_of`). A replay
writes the same records again from the compact outcome it keeps."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auction.budgets import Claim, entry_of
from auction.creatives import Creatives
from auction.engine import AuctionEngine, UserState
from auction.fastpath import Intake, Writer, _native, write_records
from auction.model import AuctionRequest, Campaign, NoFillReason, blended_pctr
from auction.pacing import SpendView
from auction.records import decode_compact, outcome_of
from auction.twin import EngineTwin
from auction.worker import reservations_of
from loadtests import workload
from loadtests.engine_bench import validated
from tests.auction.factories import NOW_MS, campaign_record, intent
from tests.auction.test_twin import campaign_records, intent_events, pair, requests

pytestmark = pytest.mark.skipif(_native() is None, reason="the compiled engine is not built (make native)")


def attach(engine: AuctionEngine, creatives: dict[str, Any]) -> Creatives:
    """The live creatives, told to the engine's twin (as the worker's `LiveState` keeps them)."""
    book = Creatives(creatives)
    assert engine.twin is not None
    engine.twin.attach_creatives(book)
    return book


def check(engine: AuctionEngine, fields: dict[str, Any], request: AuctionRequest, creatives: Creatives,
          user: UserState | None = None, refused: dict[str, NoFillReason] | None = None) -> bool:
    """The twin's claim equals the Python steps' (True), or it left the event to them (False)."""
    twin = engine.twin
    assert isinstance(twin, EngineTwin)
    twin.set_topics("t.decisions", "t.impressions")
    claimed = twin.claim(request, user, refused, fields, "3:1234", NOW_MS + 5)
    result = engine.run_python(request, user, refused)
    outcome = outcome_of(request.event_id, result, NOW_MS + 5, creatives, personalized=False)
    expected = write_records(fields, outcome, request.keywords)
    if claimed is None:
        return False
    published, impressions, no_fill_reason, compact, entry = claimed
    encoded, impression_ids = expected[0], expected[1]
    impressions_expected = [("t.impressions", impression_id.encode(), raw)
                            for impression_id, raw in zip(impression_ids, encoded[1:], strict=True)]
    assert published == [("t.decisions", fields["session_id"].encode(), encoded[0]), *impressions_expected]
    assert (impressions, no_fill_reason, compact) == (len(impression_ids), *expected[2:])
    # Its entry in the reservation call, as `entry_of` writes it for a claim made in Python, and the
    # reservations a Claim reads back from it (the Redis Cluster reserver asks for them).
    assert entry == entry_of(Claim(request.event_id, "3:1234", request.user_id, compact, reservations_of(result)))
    read_back = Claim(request.event_id, "3:1234", request.user_id, compact, entry=entry).reservations
    assert [r.as_list() for r in read_back] == [r.as_list() for r in reservations_of(result)]
    # A replay: the compact outcome kept in Redis, written again (compiled writer and reference).
    assert Writer().write(fields, decode_compact(compact), request.keywords) == expected
    assert write_records(fields, decode_compact(compact), request.keywords) == expected
    return True


def test_the_bench_workload_claims_as_the_python_steps_do() -> None:
    records = validated(workload.campaigns(n=1_000, advertisers=300))
    rng = random.Random(11)
    for record in rng.sample(records, 300):  # several creatives: the rotation picks among them
        record["creatives"] = [{**record["creatives"][0], "creative_id": f"{record['campaign_id']}-{n}"}
                               for n in range(rng.randint(2, 4))]
    campaigns = [Campaign.from_record(record) for record in records]
    spend = SpendView(day="20260921")
    for campaign in rng.sample(campaigns, 200):
        spend.record(campaign, campaign.daily_budget_micros // 2, 0)
    _, engine = pair(campaigns, spend)
    creatives = attach(engine, {record["campaign_id"]: record["creatives"] for record in records})
    ids = [campaign.campaign_id for campaign in campaigns]
    claimed = filled = multi = 0
    for n, event in enumerate(workload.intents(2_000)):
        request = AuctionRequest.from_intent(event, NOW_MS + n)
        user = UserState(frozenset(), frozenset(rng.sample(ids, 50))) if n % 4 == 0 else None
        refused: dict[str, NoFillReason] | None = {rng.choice(ids): "budget"} if n % 6 == 0 else None
        claimed += check(engine, event, request, creatives, user, refused)
        winners = engine.run_python(request, user, refused).winners
        filled += bool(winners)
        multi += len(winners) > 1
    assert claimed == 2_000  # the bench's numbers are all the compiled step's
    assert filled > 500 and multi > 100


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_generated_auctions_claim_as_the_python_steps_do(data: st.DataObject) -> None:
    records = [data.draw(campaign_records(n)) for n in range(data.draw(st.integers(0, 10)))]
    for record in records:
        count = data.draw(st.integers(1, 3))
        record["creatives"] = [{**record["creatives"][0], "creative_id": f"{record['campaign_id']}-{n}",
                                "title": data.draw(st.sampled_from(["An offer", "Ünïcode \"quoted\"\n", "😀"]))}
                               for n in range(count)]
        if data.draw(st.integers(0, 3)) == 0:
            record["frequency_cap"] = {"max": data.draw(st.integers(1, 5)),
                                       "window_s": data.draw(st.sampled_from([60, 3600, 86_400]))}
    campaigns = [Campaign.from_record(record) for record in records]
    for campaign in campaigns:
        if campaign.bid_type == "cpc" and data.draw(st.booleans()):  # a learned CTR: pctr as a float of it
            impressions = data.draw(st.integers(1, 10**6))
            campaign.set_pctr(blended_pctr(campaign.prior_pctr, impressions, data.draw(st.integers(0, impressions))))
    _, engine = pair(campaigns)
    creatives = attach(engine, {record["campaign_id"]: record["creatives"] for record in records})
    ids = [campaign.campaign_id for campaign in campaigns] or ["none"]
    for _ in range(4):
        request = data.draw(requests())
        # The records take the intent's ids, the creative pick and the claim the request's: here
        # they differ, so that a mix-up shows.
        fields = intent(f"{request.event_id}-f", user_id="u-fields",
                        session_id=data.draw(st.sampled_from(["s-1", "s\u00e9\\2"])))
        refused = data.draw(st.one_of(st.none(), st.dictionaries(
            st.sampled_from(ids), st.sampled_from(["budget", "frequency_cap", "user_hidden"]))))
        user = UserState(frozenset(), frozenset(data.draw(st.lists(st.sampled_from(ids))))) if data.draw(
            st.booleans()) else None
        # Nothing here is past the twin's bits: it must take every event.
        assert check(engine, fields, request, creatives, user, refused)


def test_what_it_cannot_write_is_left_to_the_python_steps() -> None:
    """A campaign without creatives in the live state, a creative the writer cannot encode, or a
    learned CTR whose ratio is past a double's exact integers: None, and the worker's Python steps
    meet the case as before (and raise where they raise)."""
    plain = Campaign.from_record(campaign_record("plain", amount_micros=2_000_000))
    _, engine = pair([plain])
    request = AuctionRequest.from_intent(intent(), NOW_MS)
    fields = intent()
    creatives = attach(engine, {"plain": campaign_record("plain")["creatives"]})
    assert engine.twin is not None
    assert engine.twin.claim(request, None, None, fields, "0:1", NOW_MS) is None  # no topics yet
    assert check(engine, fields, request, creatives)
    # Told as the live state changes: no creatives, then creatives it cannot write, then some again.
    creatives.remove("plain")
    assert engine.twin.claim(request, None, None, fields, "0:1", NOW_MS) is None
    for odd in ([{"creative_id": "plain-1", "title": {1, 2}}],  # a set: not JSON
                [{"title": "no id"}], []):
        creatives.set("plain", odd)
        assert engine.twin.claim(request, None, None, fields, "0:1", NOW_MS) is None
    creatives.set("plain", campaign_record("plain")["creatives"])
    assert check(engine, fields, request, creatives)

    learned = Campaign.from_record(campaign_record("learned", bid_type="cpc", amount_micros=5_000_000))
    learned.set_pctr(blended_pctr(learned.prior_pctr, 2**55 + 1, 2**50))
    assert learned.pctr_den > 2**53 and learned.pctr_num < 2**64 and learned.pctr_den < 2**64
    _, engine = pair([learned])
    assert engine.twin is not None
    engine.twin.set_topics("t.decisions", "t.impressions")
    attach(engine, {"learned": campaign_record("learned")["creatives"]})
    assert engine.twin.run(request, None, None) is not None  # the auction itself it decides
    assert engine.twin.claim(request, None, None, fields, "0:1", NOW_MS) is None


def parsed_alike(engine: AuctionEngine, raw: bytes, now_ms: int, creatives: Creatives,
                 user: UserState | None = None, refused: dict[str, NoFillReason] | None = None) -> bool:
    """The claim of an intent kept in Rust (`claim_parsed`) equals the claim of the request and
    fields it expands into, which `check` holds equal to the Python steps (True); False when the
    compiled intake left the intent to the reference."""
    parsed = Intake().parse([raw], now_ms)[0]
    if parsed is None:
        return False
    request, fields = parsed.expand()
    twin = engine.twin
    assert isinstance(twin, EngineTwin)
    assert check(engine, fields, request, creatives, user, refused)
    by_request = twin.claim(request, user, refused, fields, "3:1234", NOW_MS + 5)
    by_parsed = twin.claim_parsed(parsed, user, refused, "3:1234", NOW_MS + 5)
    assert by_request is not None and by_parsed is not None
    assert by_parsed == by_request
    return True


def test_an_intent_kept_in_rust_claims_as_its_request_does_on_the_bench_workload() -> None:
    records = validated(workload.campaigns(n=1_000, advertisers=300))
    campaigns = [Campaign.from_record(record) for record in records]
    _, engine = pair(campaigns)
    creatives = attach(engine, {record["campaign_id"]: record["creatives"] for record in records})
    rng = random.Random(5)
    ids = [campaign.campaign_id for campaign in campaigns]
    advertisers = sorted({campaign.advertiser_id for campaign in campaigns})
    taken = 0
    for n, event in enumerate(workload.intents(1_000)):
        user = UserState(frozenset(rng.sample(advertisers, 20)), frozenset(rng.sample(ids, 50))) if n % 4 == 0 else None
        refused: dict[str, NoFillReason] | None = {rng.choice(ids): "budget"} if n % 6 == 0 else None
        taken += parsed_alike(engine, orjson.dumps(event), NOW_MS + n, creatives, user, refused)
    assert taken == 1_000  # the bench's intents are all the compiled intake's


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_an_intent_kept_in_rust_claims_as_its_request_does(data: st.DataObject) -> None:
    records = [data.draw(campaign_records(n)) for n in range(data.draw(st.integers(0, 10)))]
    campaigns = [Campaign.from_record(record) for record in records]
    _, engine = pair(campaigns)
    creatives = attach(engine, {record["campaign_id"]: record["creatives"] for record in records})
    ids = [campaign.campaign_id for campaign in campaigns] or ["none"]
    for _ in range(4):
        event = data.draw(intent_events())
        event["session_id"] = data.draw(st.sampled_from(["s-1", "s\u00e9 2"]))
        refused = data.draw(st.one_of(st.none(), st.dictionaries(
            st.sampled_from(ids), st.sampled_from(["budget", "frequency_cap", "user_hidden"]))))
        user = UserState(frozenset(data.draw(st.lists(st.sampled_from([f"a{n}" for n in range(6)])))),
                         frozenset(data.draw(st.lists(st.sampled_from(ids))))) if data.draw(st.booleans()) else None
        now_ms = NOW_MS + data.draw(st.integers(-(10**8), 10**8))
        assert parsed_alike(engine, orjson.dumps(event), now_ms, creatives, user, refused)


def test_a_parsed_intent_is_left_to_the_python_steps_where_a_request_would_be() -> None:
    """No topics yet, or no creatives it can write: None, as `claim` answers."""
    plain = Campaign.from_record(campaign_record("plain", amount_micros=2_000_000))
    _, engine = pair([plain])
    assert engine.twin is not None
    parsed = Intake().parse([orjson.dumps(intent())], NOW_MS)[0]
    creatives = attach(engine, {"plain": campaign_record("plain")["creatives"]})
    assert engine.twin.claim_parsed(parsed, None, None, "0:1", NOW_MS) is None  # no topics yet
    engine.twin.set_topics("t.decisions", "t.impressions")
    assert engine.twin.claim_parsed(parsed, None, None, "0:1", NOW_MS) is not None
    creatives.set("plain", [{"creative_id": "x", "t": {1}}])
    assert engine.twin.claim_parsed(parsed, None, None, "0:1", NOW_MS) is None
    creatives.remove("plain")
    assert engine.twin.claim_parsed(parsed, None, None, "0:1", NOW_MS) is None
