//! An auction's records written straight to bytes: what `auction/records.py` `records_of` builds
//! from the intent's fields and the compact outcome, and `encode_outcome` / `encode_compact` then
//! encode with orjson, byte for byte (tests/auction/test_fastpath.py holds them equal). Any value
//! of a shape the reference would not give (`None` out) leaves the event to the reference.
//!
//! Two sources feed one layout (`records`): a compact outcome made in Python (`write`, the
//! `Writer` of auction/fastpath.py, which also writes a replay's records), and the compiled
//! engine's own winners (src/engine_py.rs `claim`), which never become Python objects.

use crate::json::{push_int, push_str, push_strs, push_value};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFrozenSet, PyInt, PyList, PyString, PyTuple};
use std::ops::Range;

/// The compact outcome's layout (auction/records.py).
const TS_DECIDED: usize = 0;
const NO_FILL_REASON: usize = 1;
const RESERVE_CPM: usize = 2;
const PERSONALIZED: usize = 3;
const WINNERS: usize = 4;
const WINNER_FIELDS: usize = 13;

fn json_of(value: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(32);
    push_value(&mut out, value)?;
    Some(out)
}

/// Each key (with the punctuation before it) and then its value's JSON, in order.
fn push_fields(out: &mut Vec<u8>, fields: &[(&[u8], &[u8])]) {
    for (key, value) in fields {
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }
}

fn item<'py>(list: &Bound<'py, PyList>, index: usize) -> Option<Bound<'py, PyAny>> {
    list.get_item(index).ok()
}

/// What the records repeat of the consumed intent, as JSON.
pub struct Intent<'a> {
    event_id: &'a str,
    event: Vec<u8>,
    user: Vec<u8>,
    session: Vec<u8>,
    placement: Vec<u8>,
    ts_event: Vec<u8>,
    category: Vec<u8>,
}

/// The intent fields `records_of` reads (auction/fastpath.py `Fields`).
pub fn intent_of<'a, 'py>(fields: &'a Bound<'py, PyDict>) -> Option<(Intent<'a>, Bound<'py, PyString>)> {
    let py = fields.py();
    let field = |key: &Bound<'py, PyString>| fields.get_item(key).ok().flatten();
    let event_id_obj = field(intern!(py, "event_id"))?.downcast_into::<PyString>().ok()?;
    let event = json_of(&event_id_obj)?;
    let body = field(intern!(py, "intent"))?;
    let category = json_of(
        &body
            .downcast::<PyDict>()
            .ok()?
            .get_item(intern!(py, "category"))
            .ok()??,
    )?;
    let intent = Intent {
        event_id: "",
        event,
        user: json_of(&field(intern!(py, "user_id"))?)?,
        session: json_of(&field(intern!(py, "session_id"))?)?,
        placement: json_of(&field(intern!(py, "placement"))?)?,
        ts_event: json_of(&field(intern!(py, "ts"))?)?,
        category,
    };
    Some((intent, event_id_obj))
}

impl<'a> Intent<'a> {
    /// What the records repeat of an intent the compiled intake read (src/lib.rs `Parsed`): the
    /// same bytes `intent_of` writes from the fields `Intake.requests` makes of it.
    pub fn of(event_id: &'a str, user_id: &str, session_id: &str, placement: &str, ts: i64, category: &str) -> Self {
        let text = |value: &str| {
            let mut out = Vec::with_capacity(value.len() + 2);
            push_str(&mut out, value);
            out
        };
        let mut ts_event = Vec::with_capacity(16);
        push_int(&mut ts_event, ts);
        Intent {
            event_id,
            event: text(event_id),
            user: text(user_id),
            session: text(session_id),
            placement: text(placement),
            ts_event,
            category: text(category),
        }
    }

    /// The event id's text, borrowed from the string `intent_of` handed back.
    pub fn with_event_id(self, event_id: &'a str) -> Self {
        Intent { event_id, ..self }
    }
}

/// What the outcome says of the whole auction, as JSON.
pub struct Auction {
    pub ts_decided: Vec<u8>,
    pub reason: Vec<u8>, // the compact outcome's no-fill reason (its decision says null when it has ads)
    pub reserve: Vec<u8>,
    pub personalized: Vec<u8>,
    pub intent_keywords: Vec<u8>, // the request's keywords, sorted (`[]` without winners)
}

/// A winner's values, as spans of JSON in one buffer (written once, copied where each record
/// puts them).
pub struct Winner {
    pub slot: i64,
    pub campaign: Range<usize>,
    pub advertiser: Range<usize>,
    pub creative: Range<usize>,
    pub creative_id: Range<usize>,
    pub bid_type: Range<usize>,
    pub bid: Range<usize>,
    pub price: Range<usize>,
    pub charge: Range<usize>,
    pub ecpm: Range<usize>,
    pub runner_up: Range<usize>,
    pub pctr: Range<usize>,
    pub matched: Range<usize>,
    pub category: Range<usize>,
}

/// JSON written into a shared buffer, its span handed back.
pub fn span(buffer: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>) -> Option<()>) -> Option<Range<usize>> {
    let start = buffer.len();
    write(buffer)?;
    Some(start..buffer.len())
}

/// The keywords as the impressions carry them: a JSON array, sorted (code point order is UTF-8
/// byte order).
pub fn sorted_keywords(mut texts: Vec<&str>) -> Vec<u8> {
    texts.sort_unstable();
    let mut out = Vec::with_capacity(16 * texts.len() + 2);
    push_strs(&mut out, &texts);
    out
}

/// An auction's records, encoded.
pub struct Records {
    pub decision: Vec<u8>,
    pub impressions: Vec<(String, Vec<u8>)>, // (impression_id, the impression's bytes), by slot
    pub compact: Vec<u8>,                    // the compact outcome
}

/// The decision, one impression per winner and the compact outcome (the decision's no-fill
/// reason is the outcome's when there are no winners, else null).
pub fn records(
    label_json: &[u8],
    intent: &Intent<'_>,
    auction: &Auction,
    winners: &[Winner],
    values: &[u8],
) -> Records {
    let value = |span: &Range<usize>| &values[span.clone()];
    let mut decision = Vec::with_capacity(512 + 512 * winners.len());
    push_fields(
        &mut decision,
        &[
            (b"{\"schema_version\":1,\"event_id\":", &intent.event),
            (b",\"session_id\":", &intent.session),
            (b",\"user_id\":", &intent.user),
            (b",\"placement\":", &intent.placement),
            (b",\"ts_event\":", &intent.ts_event),
            (b",\"ts_decided\":", &auction.ts_decided),
            (b",\"ads\":[", b""),
        ],
    );
    let mut compact = Vec::with_capacity(256 + 256 * winners.len());
    push_fields(
        &mut compact,
        &[
            (b"[", &auction.ts_decided),
            (b",", &auction.reason),
            (b",", &auction.reserve),
            (b",", &auction.personalized),
            (b",[", b""),
        ],
    );
    let mut impressions: Vec<(String, Vec<u8>)> = Vec::with_capacity(winners.len());
    for (index, winner) in winners.iter().enumerate() {
        let mut slot_json = Vec::with_capacity(2);
        push_int(&mut slot_json, winner.slot);
        let mut impression_id_text = String::with_capacity(intent.event_id.len() + 3);
        impression_id_text.push_str(intent.event_id);
        impression_id_text.push(':');
        impression_id_text.push_str(itoa::Buffer::new().format(winner.slot));
        let mut impression_id = Vec::with_capacity(impression_id_text.len() + 2);
        push_str(&mut impression_id, &impression_id_text);
        push_fields(
            &mut decision,
            &[
                (if index > 0 { b",{\"slot\":" } else { b"{\"slot\":" }, &slot_json),
                (b",\"impression_id\":", &impression_id),
                (b",\"campaign_id\":", value(&winner.campaign)),
                (b",\"advertiser_id\":", value(&winner.advertiser)),
                (b",\"creative\":", value(&winner.creative)),
                (b",\"label\":", label_json),
                (b",\"why\":{\"matched_keywords\":", value(&winner.matched)),
                (b",\"category\":", value(&winner.category)),
                (b",\"personalized\":", &auction.personalized),
                (b"}}", b""),
            ],
        );
        let mut impression = Vec::with_capacity(640);
        push_fields(
            &mut impression,
            &[
                (b"{\"schema_version\":1,\"impression_id\":", &impression_id),
                (b",\"event_id\":", &intent.event),
                (b",\"ts\":", &auction.ts_decided),
                (b",\"user_id\":", &intent.user),
                (b",\"session_id\":", &intent.session),
                (b",\"placement\":", &intent.placement),
                (b",\"slot\":", &slot_json),
                (b",\"campaign_id\":", value(&winner.campaign)),
                (b",\"advertiser_id\":", value(&winner.advertiser)),
                (b",\"creative_id\":", value(&winner.creative_id)),
                (b",\"bid_type\":", value(&winner.bid_type)),
                (b",\"bid_micros\":", value(&winner.bid)),
                (b",\"price_micros\":", value(&winner.price)),
                (b",\"charge_micros\":", value(&winner.charge)),
                (b",\"ecpm_micros\":", value(&winner.ecpm)),
                (b",\"runner_up_ecpm_micros\":", value(&winner.runner_up)),
                (b",\"reserve_cpm_micros\":", &auction.reserve),
                (b",\"pctr\":", value(&winner.pctr)),
                (b",\"category\":", &intent.category),
                (b",\"matched_keywords\":", value(&winner.matched)),
                (b",\"intent_keywords\":", &auction.intent_keywords),
                (b"}", b""),
            ],
        );
        impressions.push((impression_id_text, impression));
        push_fields(
            &mut compact,
            &[
                (if index > 0 { b",[" } else { b"[" }, &slot_json),
                (b",", value(&winner.campaign)),
                (b",", value(&winner.advertiser)),
                (b",", value(&winner.creative)),
                (b",", value(&winner.bid_type)),
                (b",", value(&winner.bid)),
                (b",", value(&winner.price)),
                (b",", value(&winner.charge)),
                (b",", value(&winner.ecpm)),
                (b",", value(&winner.runner_up)),
                (b",", value(&winner.pctr)),
                (b",", value(&winner.matched)),
                (b",", value(&winner.category)),
                (b"]", b""),
            ],
        );
    }
    decision.extend_from_slice(b"],\"no_fill_reason\":");
    decision.extend_from_slice(if winners.is_empty() { &auction.reason } else { b"null" });
    decision.push(b'}');
    compact.extend_from_slice(b"]]");
    Records {
        decision,
        impressions,
        compact,
    }
}

/// `records` of a compact outcome made in Python (the `Writer`). `keywords`: the request's
/// normalised keywords.
pub fn write<'py>(
    py: Python<'py>,
    label_json: &[u8],
    fields: &Bound<'py, PyDict>,
    outcome: &Bound<'py, PyList>,
    keywords: &Bound<'py, PyFrozenSet>,
) -> Option<Bound<'py, PyTuple>> {
    let (intent, event_id_obj) = intent_of(fields)?;
    let intent = intent.with_event_id(event_id_obj.to_str().ok()?);
    if outcome.len() != WINNERS + 1 {
        return None;
    }
    let winners_obj = item(outcome, WINNERS)?;
    let winner_list = winners_obj.downcast::<PyList>().ok()?;
    let intent_keywords = if winner_list.is_empty() {
        b"[]".to_vec()
    } else {
        let strings: Vec<Bound<'py, PyString>> = keywords
            .iter()
            .map(|keyword| keyword.downcast_into::<PyString>().ok())
            .collect::<Option<_>>()?;
        sorted_keywords(strings.iter().map(|text| text.to_str().ok()).collect::<Option<_>>()?)
    };
    let reason = item(outcome, NO_FILL_REASON)?;
    let auction = Auction {
        ts_decided: json_of(&item(outcome, TS_DECIDED)?)?,
        reason: json_of(&reason)?,
        reserve: json_of(&item(outcome, RESERVE_CPM)?)?,
        personalized: json_of(&item(outcome, PERSONALIZED)?)?,
        intent_keywords,
    };
    let mut values: Vec<u8> = Vec::with_capacity(512 * winner_list.len());
    let mut winners = Vec::with_capacity(winner_list.len());
    for winner_obj in winner_list.iter() {
        let winner = winner_obj.downcast::<PyList>().ok()?;
        if winner.len() != WINNER_FIELDS {
            return None;
        }
        let field = |at: usize| item(winner, at);
        let mut put = |value: &Bound<'py, PyAny>| span(&mut values, |out| push_value(out, value));
        let slot: i64 = field(0)?.downcast_exact::<PyInt>().ok()?.extract().ok()?; // not a bool
        let creative_obj = field(3)?;
        let creative_id_obj = creative_obj
            .downcast::<PyDict>()
            .ok()?
            .get_item(intern!(py, "creative_id"))
            .ok()??;
        // `list(winner[11])`: a tuple or a list, a JSON array either way; anything else to Python.
        let matched_obj = field(11)?;
        if !(matched_obj.is_exact_instance_of::<PyList>() || matched_obj.is_exact_instance_of::<PyTuple>()) {
            return None;
        }
        winners.push(Winner {
            slot,
            campaign: put(&field(1)?)?,
            advertiser: put(&field(2)?)?,
            creative: put(&creative_obj)?,
            creative_id: put(&creative_id_obj)?,
            bid_type: put(&field(4)?)?,
            bid: put(&field(5)?)?,
            price: put(&field(6)?)?,
            charge: put(&field(7)?)?,
            ecpm: put(&field(8)?)?,
            runner_up: put(&field(9)?)?,
            pctr: put(&field(10)?)?,
            matched: put(&matched_obj)?,
            category: put(&field(12)?)?,
        });
    }
    let written = records(label_json, &intent, &auction, &winners, &values);
    let encoded = PyList::empty(py);
    let impression_ids = PyList::empty(py);
    encoded.append(PyBytes::new(py, &written.decision)).ok()?;
    for (impression_id, impression) in &written.impressions {
        encoded.append(PyBytes::new(py, impression)).ok()?;
        impression_ids.append(PyString::new(py, impression_id)).ok()?;
    }
    let no_fill_reason = if winners.is_empty() {
        reason
    } else {
        py.None().into_bound(py)
    };
    let compact = PyBytes::new(py, &written.compact).into_any();
    PyTuple::new(
        py,
        [encoded.into_any(), impression_ids.into_any(), no_fill_reason, compact],
    )
    .ok()
}
