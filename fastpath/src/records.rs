//! An auction's records written straight to bytes: what `auction/records.py` `records_of` builds
//! from the intent's fields and the compact outcome, and `encode_outcome` / `encode_compact` then
//! encode with orjson, byte for byte (tests/auction/test_fastpath.py holds them equal). Any value
//! of a shape the reference would not give (`None` out) leaves the event to the reference.

use crate::json::{push_int, push_items, push_str, push_value};
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

/// `(encoded, impression_ids, no_fill_reason, compact)`: the decision's bytes then each
/// impression's, the impressions' ids, the decision's no-fill reason, and the compact outcome's
/// bytes. `keywords`: the request's normalised keywords (the impressions carry them sorted).
pub fn write<'py>(
    py: Python<'py>,
    label_json: &[u8],
    fields: &Bound<'py, PyDict>,
    outcome: &Bound<'py, PyList>,
    keywords: &Bound<'py, PyFrozenSet>,
) -> Option<Bound<'py, PyTuple>> {
    let field = |key: &Bound<'py, PyString>| fields.get_item(key).ok().flatten();
    let event_id_obj = field(intern!(py, "event_id"))?;
    let event_id = event_id_obj.downcast::<PyString>().ok()?.to_str().ok()?;
    let event = json_of(&event_id_obj)?;
    let user = json_of(&field(intern!(py, "user_id"))?)?;
    let session = json_of(&field(intern!(py, "session_id"))?)?;
    let placement = json_of(&field(intern!(py, "placement"))?)?;
    let ts_event = json_of(&field(intern!(py, "ts"))?)?;
    let body = field(intern!(py, "intent"))?;
    let category = json_of(
        &body
            .downcast::<PyDict>()
            .ok()?
            .get_item(intern!(py, "category"))
            .ok()??,
    )?;

    if outcome.len() != WINNERS + 1 {
        return None;
    }
    let ts_decided = json_of(&item(outcome, TS_DECIDED)?)?;
    let reserve = json_of(&item(outcome, RESERVE_CPM)?)?;
    let personalized = json_of(&item(outcome, PERSONALIZED)?)?;
    let winners_obj = item(outcome, WINNERS)?;
    let winners = winners_obj.downcast::<PyList>().ok()?;

    // The impressions carry the request's keywords, sorted (code point order is UTF-8 byte order).
    let mut intent_keywords = Vec::new();
    if !winners.is_empty() {
        let mut sorted: Vec<Bound<'py, PyString>> = Vec::with_capacity(keywords.len());
        for keyword in keywords.iter() {
            sorted.push(keyword.downcast_into::<PyString>().ok()?);
        }
        let mut texts = Vec::with_capacity(sorted.len());
        for keyword in &sorted {
            texts.push(keyword.to_str().ok()?);
        }
        texts.sort_unstable();
        intent_keywords.push(b'[');
        for (index, text) in texts.iter().enumerate() {
            if index > 0 {
                intent_keywords.push(b',');
            }
            push_str(&mut intent_keywords, text);
        }
        intent_keywords.push(b']');
    }

    let mut decision = Vec::with_capacity(512 + 512 * winners.len());
    push_fields(
        &mut decision,
        &[
            (b"{\"schema_version\":1,\"event_id\":", &event),
            (b",\"session_id\":", &session),
            (b",\"user_id\":", &user),
            (b",\"placement\":", &placement),
            (b",\"ts_event\":", &ts_event),
            (b",\"ts_decided\":", &ts_decided),
            (b",\"ads\":[", b""),
        ],
    );

    let encoded = PyList::empty(py);
    let impression_ids = PyList::empty(py);
    let mut scratch: Vec<u8> = Vec::with_capacity(512);
    let mut impressions: Vec<Vec<u8>> = Vec::with_capacity(winners.len());
    for (index, winner_obj) in winners.iter().enumerate() {
        let winner = winner_obj.downcast::<PyList>().ok()?;
        if winner.len() != 13 {
            return None;
        }
        let slot: i64 = item(winner, 0)?.downcast_exact::<PyInt>().ok()?.extract().ok()?; // not a bool
        let mut slot_json = Vec::with_capacity(2);
        push_int(&mut slot_json, slot);
        let mut impression_id_text = String::with_capacity(event_id.len() + 3);
        impression_id_text.push_str(event_id);
        impression_id_text.push(':');
        impression_id_text.push_str(itoa::Buffer::new().format(slot));
        let mut impression_id = Vec::with_capacity(impression_id_text.len() + 2);
        push_str(&mut impression_id, &impression_id_text);
        // This winner's values, written once into `scratch` (no allocation per value), then copied
        // where the decision and the impression put them.
        scratch.clear();
        let mut put = |value: &Bound<'py, PyAny>| -> Option<Range<usize>> {
            let start = scratch.len();
            push_value(&mut scratch, value)?;
            Some(start..scratch.len())
        };
        let campaign = put(&item(winner, 1)?)?;
        let advertiser = put(&item(winner, 2)?)?;
        let creative_obj = item(winner, 3)?;
        let creative = put(&creative_obj)?;
        let creative_id = put(&creative_obj
            .downcast::<PyDict>()
            .ok()?
            .get_item(intern!(py, "creative_id"))
            .ok()??)?;
        // `list(winner[11])`: a tuple or a list, a JSON array either way; anything else to Python.
        let matched_obj = item(winner, 11)?;
        if !(matched_obj.is_exact_instance_of::<PyList>() || matched_obj.is_exact_instance_of::<PyTuple>()) {
            return None;
        }
        let matched = put(&matched_obj)?;
        let mut numbers: [Range<usize>; 7] = Default::default(); // bid_type, bid, price, charge, ecpm, runner-up ecpm, pctr
        for (at, span) in numbers.iter_mut().enumerate() {
            *span = put(&item(winner, 4 + at)?)?;
        }
        let why_category = put(&item(winner, 12)?)?;
        let value = |span: &Range<usize>| &scratch[span.clone()];
        let [bid_type, bid, price, charge, ecpm, runner_up, pctr] = numbers.each_ref().map(value);

        push_fields(
            &mut decision,
            &[
                (if index > 0 { b",{\"slot\":" } else { b"{\"slot\":" }, &slot_json),
                (b",\"impression_id\":", &impression_id),
                (b",\"campaign_id\":", value(&campaign)),
                (b",\"advertiser_id\":", value(&advertiser)),
                (b",\"creative\":", value(&creative)),
                (b",\"label\":", label_json),
                (b",\"why\":{\"matched_keywords\":", value(&matched)),
                (b",\"category\":", value(&why_category)),
                (b",\"personalized\":", &personalized),
                (b"}}", b""),
            ],
        );
        let mut impression = Vec::with_capacity(640);
        push_fields(
            &mut impression,
            &[
                (b"{\"schema_version\":1,\"impression_id\":", &impression_id),
                (b",\"event_id\":", &event),
                (b",\"ts\":", &ts_decided),
                (b",\"user_id\":", &user),
                (b",\"session_id\":", &session),
                (b",\"placement\":", &placement),
                (b",\"slot\":", &slot_json),
                (b",\"campaign_id\":", value(&campaign)),
                (b",\"advertiser_id\":", value(&advertiser)),
                (b",\"creative_id\":", value(&creative_id)),
                (b",\"bid_type\":", bid_type),
                (b",\"bid_micros\":", bid),
                (b",\"price_micros\":", price),
                (b",\"charge_micros\":", charge),
                (b",\"ecpm_micros\":", ecpm),
                (b",\"runner_up_ecpm_micros\":", runner_up),
                (b",\"reserve_cpm_micros\":", &reserve),
                (b",\"pctr\":", pctr),
                (b",\"category\":", &category),
                (b",\"matched_keywords\":", value(&matched)),
                (b",\"intent_keywords\":", &intent_keywords),
                (b"}", b""),
            ],
        );
        impressions.push(impression);
        impression_ids.append(PyString::new(py, &impression_id_text)).ok()?;
    }
    let no_fill_reason = if winners.is_empty() {
        item(outcome, NO_FILL_REASON)?
    } else {
        py.None().into_bound(py)
    };
    decision.extend_from_slice(b"],\"no_fill_reason\":");
    push_value(&mut decision, &no_fill_reason)?;
    decision.push(b'}');

    let mut compact = Vec::with_capacity(256 + 256 * winners.len());
    push_items(&mut compact, outcome.iter())?;

    encoded.append(PyBytes::new(py, &decision)).ok()?;
    for impression in &impressions {
        encoded.append(PyBytes::new(py, impression)).ok()?;
    }
    PyTuple::new(
        py,
        [
            encoded.into_any(),
            impression_ids.into_any(),
            no_fill_reason,
            PyBytes::new(py, &compact).into_any(),
        ],
    )
    .ok()
}
