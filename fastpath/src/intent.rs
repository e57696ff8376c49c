//! A chat intent, read straight from its bytes: the rules of `schemas/records.py`
//! `_chat_intent_is_plainly_valid` and the values `AuctionRequest.from_intent` takes from it.
//!
//! Anything this reader does not plainly accept returns `None`, and the caller takes the Python
//! path (`schemas.codec.decode`), which names the problem or reads what this one leaves to it:
//! escaped strings, fields the schema does not name (Python tolerates them; skipping them here
//! could accept a value orjson refuses, such as `1e999`), non-ASCII keywords and device, locale
//! or country (NFKC and case folding stay Python's). So it may refuse anything, but may only accept what the Python path accepts,
//! with the same values (tests/auction/test_fastpath.py checks both on generated cases).

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::collections::HashSet;

/// The bounds of the intent schema, handed over by Python (schemas/checks.py, schemas/records.py),
/// so that each is defined once.
pub struct Rules {
    pub categories: HashSet<String>,
    pub age_brackets: Vec<String>,
    pub short_max: usize,
    pub int_max: i64,
    pub max_slots: i64,
    pub keywords_max: usize,
    pub keyword_max: usize,
    pub record_max_bytes: usize,
}

/// What the auction reads of one intent, normalised as `AuctionRequest.from_intent` does. Owned:
/// the worker keeps it from the intake to the claim (`Parsed` in src/lib.rs).
pub struct Intent {
    pub event_id: String,
    pub ts: i64,
    pub user_id: String,
    pub session_id: String,
    pub placement: String,
    pub slots: i64,
    pub floor_cpm_micros: i64,
    pub category: String,
    pub keywords: Vec<String>,
    pub locale: String,
    pub country: String,
    pub device: String,
    pub safety_labels: Vec<String>,
    pub consent_ads: bool,
    pub personalization: bool,
    pub age_bracket: String,
}

/// A field that may be absent (then its default applies) but not null: `Some` only when present.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Top<'a> {
    #[serde(default, deserialize_with = "present")]
    schema_version: Option<i64>,
    event_id: Option<&'a str>,
    ts: Option<i64>,
    user_id: Option<&'a str>,
    session_id: Option<&'a str>,
    placement: Option<&'a str>,
    #[serde(default, deserialize_with = "present")]
    slots: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    floor_cpm_micros: Option<i64>,
    #[serde(borrow)]
    intent: Option<&'a RawValue>,
    locale: Option<&'a str>,
    country: Option<&'a str>,
    device: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "present")]
    safety: Option<&'a RawValue>,
    #[serde(borrow)]
    consent: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    age_bracket: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    category: Option<&'a str>,
    confidence: Option<f64>,
    #[serde(borrow)]
    keywords: Option<Vec<&'a str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Safety<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    labels: Option<Vec<&'a str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Consent {
    ads: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    personalization: Option<bool>,
}

/// A JSON object (not an array, which serde would also read into a struct), parsed.
fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    let text = raw.get();
    if !text.starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

fn text_ok(value: &str, rules: &Rules) -> bool {
    let chars = if value.is_ascii() {
        value.len()
    } else {
        value.chars().count()
    };
    0 < chars && chars <= rules.short_max
}

fn int_ok(value: i64, rules: &Rules) -> bool {
    0 <= value && value <= rules.int_max
}

/// Python's `str.split()` separators within ASCII.
fn is_python_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f)
}

/// `keywords._singular` (simple English plural folding) of one ASCII word, appended to `out`.
fn push_singular(word: &str, out: &mut String) {
    const KEEP_S: [&str; 5] = ["ss", "us", "is", "ous", "ics"];
    const DROP_ES: [&str; 5] = ["sses", "ches", "shes", "xes", "zes"];
    let len = word.len();
    if len <= 3 || !word.ends_with('s') || KEEP_S.iter().any(|end| word.ends_with(end)) {
        out.push_str(word);
    } else if word.ends_with("ies") && len > 4 {
        out.push_str(&word[..len - 3]);
        out.push('y');
    } else if DROP_ES.iter().any(|end| word.ends_with(end)) {
        out.push_str(&word[..len - 2]);
    } else {
        out.push_str(&word[..len - 1]);
    }
}

/// `keywords.normalize_keyword` for an ASCII keyword (NFKC leaves ASCII alone and case folding
/// is lowercasing there); `None` for any other, which Python normalises.
pub fn normalize_ascii(raw: &str) -> Option<String> {
    if !raw.is_ascii() {
        return None;
    }
    let lower = raw.to_ascii_lowercase();
    let mut out = String::with_capacity(lower.len());
    for word in lower
        .split(|c: char| is_python_space(c as u8))
        .filter(|word| !word.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        push_singular(word, &mut out);
    }
    Some(out)
}

fn lower_ascii(value: &str) -> Option<String> {
    value.is_ascii().then(|| value.to_ascii_lowercase())
}

/// The intent in `data`, when it is plainly valid and every value it gives the auction reads the
/// same here as in Python; otherwise `None`.
pub fn read(data: &[u8], rules: &Rules) -> Option<Intent> {
    if data.len() > rules.record_max_bytes || data.contains(&b'\\') {
        return None; // over the limit (Python names it), or escapes (Python decodes them)
    }
    let text = std::str::from_utf8(data).ok()?;
    if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return None;
    }
    let top: Top = serde_json::from_str(text).ok()?;
    if top.schema_version.unwrap_or(1) != 1 {
        return None;
    }
    let (event_id, user_id, session_id) = (top.event_id?, top.user_id?, top.session_id?);
    let (placement, locale, country, device) = (top.placement?, top.locale?, top.country?, top.device?);
    for value in [event_id, user_id, session_id, placement, locale, country, device] {
        if !text_ok(value, rules) {
            return None;
        }
    }
    let ts = top.ts?;
    let slots = top.slots.unwrap_or(1);
    let floor_cpm_micros = top.floor_cpm_micros.unwrap_or(0);
    if !int_ok(ts, rules) || !(1..=rules.max_slots).contains(&slots) || !int_ok(floor_cpm_micros, rules) {
        return None;
    }
    let body: Body = object(top.intent?)?;
    let category = body.category?;
    let confidence = body.confidence?;
    if !rules.categories.contains(category) || !(0.0..=1.0).contains(&confidence) {
        return None;
    }
    let raw_keywords = body.keywords?;
    if raw_keywords.len() > rules.keywords_max {
        return None;
    }
    let mut keywords = Vec::with_capacity(raw_keywords.len());
    for raw in raw_keywords {
        // Python counts characters; a non-ASCII keyword is refused below anyway.
        if raw.len() > rules.keyword_max {
            return None;
        }
        let normalized = normalize_ascii(raw)?;
        if !normalized.is_empty() {
            keywords.push(normalized);
        }
    }
    let consent: Consent = object(top.consent?)?;
    let consent_ads = consent.ads?;
    let personalization = consent.personalization.unwrap_or(true);
    let age_bracket = top.age_bracket.unwrap_or("unknown");
    if !rules.age_brackets.iter().any(|known| known == age_bracket) {
        return None;
    }
    let safety_labels = match top.safety {
        None => Vec::new(),
        Some(raw) => {
            let safety: Safety = object(raw)?;
            safety.labels.unwrap_or_default()
        }
    };
    if !safety_labels.iter().all(|label| text_ok(label, rules)) {
        return None;
    }
    Some(Intent {
        event_id: event_id.to_owned(),
        ts,
        user_id: user_id.to_owned(),
        session_id: session_id.to_owned(),
        placement: placement.to_owned(),
        slots,
        floor_cpm_micros,
        category: category.to_owned(),
        keywords,
        locale: lower_ascii(locale)?,
        country: lower_ascii(country)?,
        device: lower_ascii(device)?,
        safety_labels: safety_labels.into_iter().map(str::to_owned).collect(),
        consent_ads,
        personalization,
        age_bracket: age_bracket.to_owned(),
    })
}
