//! `auction._fastpath.Engine`: src/engine.rs for Python (auction/engine_compiled.py drives it).
//! It holds a copy of the campaign index, the spend view and the policy, which the Python side
//! keeps in step with its own, and runs auctions on `AuctionRequest` fields.

use crate::engine::{
    crc32, tie_hash, Campaign, Engine as Core, Filters, FxHashMap, FxHashSet, Outcome, Person, Policy, Request, Term,
    STAGE_COUNT,
};
use crate::json::{push_float, push_int, push_str, push_strs};
use crate::records;
use crate::Parsed;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFrozenSet, PyList, PyString, PyTuple};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A non-negative integer as a Python int: through a machine word when it fits (PyO3 converts a
/// u128 through a byte array, several times slower), which is always for money in micros.
fn int<'py>(py: Python<'py>, value: u128) -> PyResult<Bound<'py, PyAny>> {
    match u64::try_from(value) {
        Ok(small) => Ok(small.into_pyobject(py)?.into_any()),
        Err(_) => Ok(value.into_pyobject(py)?.into_any()),
    }
}

#[pyclass(name = "Engine")]
pub struct PyEngine {
    core: Core,
    lineage: HashMap<String, Vec<String>>,
    /// Campaigns whose numbers this copy cannot hold (past 128 bits): while any is held, every
    /// auction is left to Python.
    unsupported: HashSet<String>,
    /// Campaigns whose spend today does not fit 64 bits: while any, every auction is left to Python.
    odd_spend: HashSet<String>,
    /// The filter stages' names, in the engine's order (`STAGES` in auction/engine.py).
    stages: Vec<String>,
    /// For `claim`: the ads' label as JSON.
    label_json: Vec<u8>,
    /// The topics of decisions and impressions (`set_topics`): until set, `claim` answers None.
    topics: Option<(Py<PyString>, Py<PyString>)>,
    /// core/keys.py `EVENT_BUCKETS`: an event's bucket is the CRC-32 of its id modulo this.
    event_buckets: u32,
    /// Each campaign's creatives as the records write them (auction/creatives.py `Creatives`
    /// tells them): each creative's JSON and its creative_id's. A campaign not here is the
    /// Python steps' to write.
    creatives: FxHashMap<String, Vec<Creative>>,
}

/// A creative as the records write it: its JSON, and its creative_id's JSON.
type Creative = (Vec<u8>, Vec<u8>);

/// The learned pCTR as `campaign.pctr_num / campaign.pctr_den` gives it in Python: below 2**53
/// both are exact doubles and one division rounds as Python's does; past that, None.
fn pctr_of(campaign: &Campaign) -> Option<f64> {
    const EXACT: u64 = 1 << 53;
    if campaign.pctr_den == 0 || campaign.pctr_num > EXACT || campaign.pctr_den > EXACT {
        return None;
    }
    Some(campaign.pctr_num as f64 / campaign.pctr_den as f64)
}

fn strings(value: &Bound<'_, PyAny>) -> PyResult<Option<FxHashSet<String>>> {
    if value.is_none() {
        Ok(None)
    } else {
        Ok(Some(value.extract()?))
    }
}

fn terms(words: &Bound<'_, PyAny>, core: &mut Core) -> PyResult<Box<[u32]>> {
    let words: Vec<String> = words.extract()?;
    Ok(words.iter().map(|word| core.term(word)).collect())
}

/// More slots than any request asks for (the schema allows a few): such a request is Python's.
const MAX_SLOTS: u64 = 1_000;

/// The strings of a frozenset (or an empty list for None); None when it is not a frozenset of str.
fn strings_of<'py>(set: Option<&Bound<'py, PyAny>>) -> Option<Vec<Bound<'py, PyString>>> {
    let Some(set) = set else { return Some(Vec::new()) };
    let set = set.downcast::<PyFrozenSet>().ok()?;
    set.iter().map(|item| item.downcast_into::<PyString>().ok()).collect()
}

/// The text of each string, borrowed.
fn texts<'a>(strings: &'a [Bound<'_, PyString>]) -> PyResult<Vec<&'a str>> {
    strings.iter().map(|text| text.to_str()).collect()
}

/// Stands for a campaign whose id cannot be read: while held, Python decides every auction.
const UNREADABLE: &str = "\u{0}unreadable";

fn id_of(campaign: &Bound<'_, PyAny>) -> Option<String> {
    campaign
        .getattr(intern!(campaign.py(), "campaign_id"))
        .ok()?
        .extract()
        .ok()
}

/// Whether a campaign the index would hold is active (an unreadable flag counts as active, so
/// that Python decides).
fn found_active(campaign: &Bound<'_, PyAny>) -> bool {
    let active = campaign.getattr(intern!(campaign.py(), "active"));
    active.and_then(|value| value.extract::<bool>()).unwrap_or(true)
}

/// Copies made once for the Python objects campaigns share (`shared_filters`, `_shared`), by the
/// object's address: kept only for one call, while the campaigns passed in hold those objects.
#[derive(Default)]
struct Shared {
    filters: FxHashMap<usize, Arc<Filters>>,
    categories: FxHashMap<usize, Arc<FxHashSet<String>>>,
}

fn campaign_of<'py>(campaign: &Bound<'py, PyAny>, core: &mut Core, shared: &mut Shared) -> PyResult<Campaign> {
    let py = campaign.py();
    let get = |name: &Bound<'py, PyString>| campaign.getattr(name);
    let filters = get(intern!(py, "filters"))?;
    let filters = if filters.is_none() {
        None
    } else if let Some(found) = shared.filters.get(&(filters.as_ptr() as usize)) {
        Some(found.clone())
    } else {
        let field = |name: &Bound<'py, PyString>| filters.getattr(name);
        let copy = Arc::new(Filters {
            negative_keywords: strings(&field(intern!(py, "negative_keywords"))?)?,
            locales: strings(&field(intern!(py, "locales"))?)?,
            countries: strings(&field(intern!(py, "countries"))?)?,
            devices: strings(&field(intern!(py, "devices"))?)?,
            placements: strings(&field(intern!(py, "placements"))?)?,
            excluded_safety_labels: strings(&field(intern!(py, "excluded_safety_labels"))?)?,
            start_ms: field(intern!(py, "start_ms"))?.extract()?,
            end_ms: field(intern!(py, "end_ms"))?.extract()?,
            vertical: field(intern!(py, "vertical"))?.extract()?,
        });
        shared.filters.insert(filters.as_ptr() as usize, copy.clone());
        Some(copy)
    };
    let categories = get(intern!(py, "categories"))?;
    let categories = if categories.is_none() {
        None
    } else if let Some(found) = shared.categories.get(&(categories.as_ptr() as usize)) {
        Some(found.clone())
    } else {
        let copy = Arc::new(categories.extract::<FxHashSet<String>>()?);
        shared.categories.insert(categories.as_ptr() as usize, copy.clone());
        Some(copy)
    };
    let bid_type: String = get(intern!(py, "bid_type"))?.extract()?;
    let (cap_max, cap_window_s): (u64, u64) = get(intern!(py, "frequency_cap"))?
        .extract::<Option<_>>()?
        .unwrap_or((0, 0));
    Ok(Campaign {
        campaign_id: Term::from(get(intern!(py, "campaign_id"))?.extract::<String>()?),
        advertiser_id: {
            let number = core.term(&get(intern!(py, "advertiser_id"))?.extract::<String>()?);
            core.text(number).clone()
        },
        advertiser_no: 0,
        cpc: bid_type == "cpc",
        bid_micros: get(intern!(py, "bid_micros"))?.extract()?,
        pctr_num: get(intern!(py, "pctr_num"))?.extract()?,
        pctr_den: get(intern!(py, "pctr_den"))?.extract()?,
        rank_key: get(intern!(py, "rank_key"))?.extract()?,
        keywords: terms(&get(intern!(py, "keywords"))?, core)?,
        phrases: terms(&get(intern!(py, "phrases"))?, core)?,
        categories,
        any_of: get(intern!(py, "any_of"))?.extract()?,
        has_filters: get(intern!(py, "has_filters"))?.extract()?,
        filters,
        daily_budget_micros: get(intern!(py, "daily_budget_micros"))?.extract()?,
        even_pacing: get(intern!(py, "even_pacing"))?.extract()?,
        active: get(intern!(py, "active"))?.extract()?,
        cap_max,
        cap_window_s,
    })
}

impl PyEngine {
    /// This copy of a Python campaign, or None when it cannot hold it exactly.
    /// This copy of a Python campaign; else `Err(Some(id))` when it is active and cannot be held
    /// exactly (so Python decides while it is in the index), `Err(None)` when it is paused.
    fn copy_of(&mut self, campaign: &Bound<'_, PyAny>, shared: &mut Shared) -> Result<Campaign, Option<String>> {
        match campaign_of(campaign, &mut self.core, shared) {
            Ok(copy) if copy.rank_key_is_consistent() => Ok(copy),
            Ok(copy) if !copy.active => Err(None),
            Ok(copy) => Err(Some(copy.campaign_id.to_string())),
            Err(_) if !found_active(campaign) => Err(None),
            Err(_) => Err(Some(id_of(campaign).unwrap_or_else(|| UNREADABLE.to_string()))),
        }
    }

    /// `lineage`: the code and its parent, as the taxonomy holds them (or, for a code it does
    /// not hold, by the code's shape, as `_lineage` does).
    fn ancestors<'a>(
        lineage: &'a HashMap<String, Vec<String>>,
        category: Option<&str>,
    ) -> std::borrow::Cow<'a, [String]> {
        match category {
            None | Some("") => std::borrow::Cow::Owned(Vec::new()),
            Some(code) => match lineage.get(code) {
                Some(found) => std::borrow::Cow::Borrowed(found.as_slice()),
                None => std::borrow::Cow::Owned(match code.split_once('-') {
                    Some((parent, _)) => vec![code.to_string(), parent.to_string()],
                    None => vec![code.to_string()],
                }),
            },
        }
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        unsafe_categories: FxHashSet<String>,
        minor_brackets: FxHashSet<String>,
        lineage: HashMap<String, Vec<String>>,
        increment_micros: u128,
        stages: Vec<String>,
        label: &str,
        event_buckets: u32,
    ) -> PyResult<Self> {
        if event_buckets == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "event_buckets: must be at least 1",
            ));
        }
        if stages.len() != STAGE_COUNT {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "stages: the engine has {STAGE_COUNT} filter stages, got {}",
                stages.len()
            )));
        }
        let mut core = Core::default();
        (core.unsafe_categories, core.minor_brackets, core.increment_micros) =
            (unsafe_categories, minor_brackets, increment_micros);
        Ok(PyEngine {
            core,
            lineage,
            unsupported: HashSet::new(),
            odd_spend: HashSet::new(),
            stages,
            label_json: {
                let mut quoted = Vec::with_capacity(label.len() + 2);
                push_str(&mut quoted, label);
                quoted
            },
            topics: None,
            event_buckets,
            creatives: FxHashMap::default(),
        })
    }

    fn set_policy(
        &mut self,
        blocked_safety_labels: FxHashSet<String>,
        sensitive_categories: FxHashSet<String>,
        restricted_verticals: FxHashSet<String>,
    ) {
        self.core.policy = Policy {
            blocked_safety_labels,
            sensitive_categories,
            restricted_verticals,
        };
    }

    /// The whole index again (`CampaignIndex.build`'s campaigns, in its order).
    /// Never fails part way: a campaign it cannot copy is named in `unsupported` instead.
    fn build(&mut self, campaigns: &Bound<'_, PyList>) {
        self.unsupported.clear();
        self.core.clear_terms(); // every campaign's terms are numbered again
        let mut copies = Vec::with_capacity(campaigns.len());
        let mut shared = Shared::default();
        for campaign in campaigns.iter() {
            match self.copy_of(&campaign, &mut shared) {
                Ok(copy) => copies.push(copy),
                Err(Some(campaign_id)) => {
                    self.unsupported.insert(campaign_id);
                }
                Err(None) => {} // paused: not in the index
            }
        }
        self.core.build(copies);
    }

    fn upsert(&mut self, campaign: &Bound<'_, PyAny>) {
        match self.copy_of(campaign, &mut Shared::default()) {
            Ok(copy) => {
                self.unsupported.remove(&*copy.campaign_id);
                self.core.upsert(copy);
            }
            Err(found) => {
                let campaign_id = found
                    .or_else(|| id_of(campaign))
                    .unwrap_or_else(|| UNREADABLE.to_string());
                self.core.remove(&campaign_id);
                if found_active(campaign) {
                    self.unsupported.insert(campaign_id);
                } else {
                    self.unsupported.remove(&campaign_id);
                }
            }
        }
    }

    fn remove(&mut self, campaign_id: &str) {
        self.unsupported.remove(campaign_id);
        self.core.remove(campaign_id);
    }

    /// Campaigns held, and how many of the Python index's it could not hold.
    fn sizes(&self) -> (usize, usize) {
        (self.core.len(), self.unsupported.len())
    }

    /// The topics `claim`'s records go to: ad.decisions and ad.impressions, as the worker names them.
    fn set_topics(&mut self, decisions: Py<PyString>, impressions: Py<PyString>) {
        self.topics = Some((decisions, impressions));
    }

    /// A campaign's creatives, each as `(JSON of the creative, JSON of its creative_id)`, as
    /// orjson writes them in the records; `None`: they cannot be written so (the Python steps
    /// write that campaign's records).
    #[pyo3(signature = (campaign_id, encoded))]
    fn creatives_set(&mut self, campaign_id: String, encoded: Option<Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)>>) {
        match encoded {
            Some(pairs) => {
                let copies = pairs
                    .iter()
                    .map(|(creative, creative_id)| (creative.as_bytes().to_vec(), creative_id.as_bytes().to_vec()))
                    .collect();
                self.creatives.insert(campaign_id, copies);
            }
            None => {
                self.creatives.remove(&campaign_id);
            }
        }
    }

    fn creatives_remove(&mut self, campaign_id: &str) {
        self.creatives.remove(campaign_id);
    }

    fn creatives_clear(&mut self) {
        self.creatives.clear();
    }

    fn set_increment(&mut self, increment_micros: u128) {
        self.core.increment_micros = increment_micros;
    }

    fn spend_clear(&mut self) {
        self.odd_spend.clear();
        self.core.spend_clear();
    }

    /// `SpendView.record`. Spend past 64 bits (Redis's counters never get there) cannot be paced
    /// exactly here: Python decides while the view holds such a figure.
    fn spend_set(&mut self, campaign_id: String, today_micros: &Bound<'_, PyAny>, blocked: bool) {
        match today_micros.extract::<i64>() {
            Ok(today) => {
                self.odd_spend.remove(&campaign_id);
                self.core.spend_set(campaign_id, i128::from(today), blocked);
            }
            Err(_) => {
                self.odd_spend.insert(campaign_id.clone());
                self.core.spend_set(campaign_id, 0, blocked);
            }
        }
    }

    fn spend_block(&mut self, campaign_id: String) {
        self.core.spend_block(campaign_id);
    }

    /// One auction on an `AuctionRequest`'s fields: `(no_fill_reason, None)`, `(None, winners)`
    /// with each winner `(slot, campaign_id, price_micros, charge_micros, ecpm_micros,
    /// runner_up_ecpm_micros, matched_keywords, matched_category)`, or `None`: the Python engine
    /// decides this one (a number past 128 bits, a campaign this copy could not hold).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (event_id, placement, slots, reserve_cpm_micros, category, keywords, locale, country, device,
                        safety_labels, consent_ads, age_bracket, now_ms, hidden=None, capped=None, refused=None))]
    fn run<'py>(
        &mut self,
        py: Python<'py>,
        event_id: &str,
        placement: &str,
        slots: &Bound<'py, PyAny>,
        reserve_cpm_micros: &Bound<'py, PyAny>,
        category: Option<&str>,
        keywords: &Bound<'py, PyAny>,
        locale: &str,
        country: &str,
        device: &str,
        safety_labels: &Bound<'py, PyAny>,
        consent_ads: bool,
        age_bracket: &str,
        now_ms: i64,
        hidden: Option<&Bound<'py, PyAny>>,
        capped: Option<&Bound<'py, PyAny>>,
        refused: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let asked = Asked {
            event_id,
            placement,
            slots,
            reserve_cpm_micros,
            category,
            keywords,
            locale,
            country,
            device,
            safety_labels,
            consent_ads,
            age_bracket,
            now_ms,
            hidden,
            capped,
            refused,
        };
        let Some((outcome, _, _)) = self.decide(&asked)? else {
            return Ok(None);
        };
        let no_fill =
            |reason: &str| PyTuple::new(py, [PyString::intern(py, reason).into_any(), py.None().into_bound(py)]);
        let answer = match outcome {
            Outcome::Gated(reason) => no_fill(reason)?,
            Outcome::NoFill(stage) => no_fill(&self.stages[stage as usize])?,
            Outcome::Winners(winners) => {
                let list = PyList::empty(py);
                for winner in winners {
                    let campaign = self.core.campaign(winner.campaign);
                    let matched = PyTuple::new(py, winner.matched_keywords.iter().map(|k| PyString::new(py, k)))?;
                    let category = match &winner.matched_category {
                        Some(code) => PyString::intern(py, code).into_any(),
                        None => py.None().into_bound(py),
                    };
                    let runner_up = match winner.runner_up_ecpm_micros {
                        Some(value) => int(py, value)?,
                        None => py.None().into_bound(py),
                    };
                    list.append(PyTuple::new(
                        py,
                        [
                            winner.slot.into_pyobject(py)?.into_any(),
                            PyString::new(py, &campaign.campaign_id).into_any(),
                            int(py, winner.price_micros)?,
                            int(py, winner.charge_micros)?,
                            int(py, winner.ecpm_micros)?,
                            runner_up,
                            matched.into_any(),
                            category,
                        ],
                    )?)?;
                }
                PyTuple::new(py, [py.None().into_bound(py), list.into_any()])?
            }
        };
        Ok(Some(answer))
    }

    /// `run`, then what the worker makes of the result (auction/worker.py `_claim`), in one step:
    /// `(published, impressions, no_fill_reason, compact, entry)`: the records as the `Writer`
    /// writes them from `outcome_of`'s compact outcome (`personalized` false), each as
    /// `(topic, key, value)`, how many are impressions, the decision's no-fill reason, the compact
    /// outcome and the claim's entry in the reservation call (which lists its reservations: the
    /// Python `Claim` reads them from it when asked), with no Python object per winner in
    /// between. `fields`: the intent's fields; the creatives are the ones `creatives_set` told.
    /// `None` where `run` answers `None`, or where a value is not of the shape the Python steps
    /// would meet: those steps then do it all.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (fields, source, user_id, ts_decided, event_id, placement, slots, reserve_cpm_micros, category,
                        keywords, locale, country, device, safety_labels, consent_ads, age_bracket, now_ms,
                        hidden=None, capped=None, refused=None))]
    fn claim<'py>(
        &mut self,
        py: Python<'py>,
        fields: &Bound<'py, PyAny>,
        source: &str,
        user_id: &str,
        ts_decided: i64,
        event_id: &str,
        placement: &str,
        slots: &Bound<'py, PyAny>,
        reserve_cpm_micros: &Bound<'py, PyAny>,
        category: Option<&str>,
        keywords: &Bound<'py, PyAny>,
        locale: &str,
        country: &str,
        device: &str,
        safety_labels: &Bound<'py, PyAny>,
        consent_ads: bool,
        age_bracket: &str,
        now_ms: i64,
        hidden: Option<&Bound<'py, PyAny>>,
        capped: Option<&Bound<'py, PyAny>>,
        refused: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Ok(fields) = fields.downcast_exact::<PyDict>() else {
            return Ok(None);
        };
        if self.topics.is_none() {
            return Ok(None);
        }
        let asked = Asked {
            event_id,
            placement,
            slots,
            reserve_cpm_micros,
            category,
            keywords,
            locale,
            country,
            device,
            safety_labels,
            consent_ads,
            age_bracket,
            now_ms,
            hidden,
            capped,
            refused,
        };
        let Some((outcome, reserve_cpm_micros, keyword_strings)) = self.decide(&asked)? else {
            return Ok(None);
        };
        let Some((intent, event_id_obj)) = records::intent_of(fields) else {
            return Ok(None);
        };
        let (Ok(records_event_id), Some(session_id)) = (event_id_obj.to_str(), session_of(fields)) else {
            return Ok(None);
        };
        let intent = intent.with_event_id(records_event_id); // the records' ids: the intent's
        let (Ok(keywords), Ok(session_id)) = (texts(&keyword_strings), session_id.to_str()) else {
            return Ok(None);
        };
        let claimant = Claimant {
            event_id,
            user_id,
            source,
            session_id,
        };
        let decided = Decided {
            outcome,
            reserve_cpm_micros,
            keywords,
        };
        Ok(self.written(py, &intent, &claimant, ts_decided, decided))
    }

    /// `claim` of an intent the compiled intake kept (`Intake.parse`): the same answer as `claim`
    /// on the request and fields `parsed.expand()` makes, byte for byte
    /// (tests/auction/test_claim.py), without making them. `hidden`, `capped` and `refused` as
    /// `claim` takes them.
    #[pyo3(signature = (parsed, source, ts_decided, hidden=None, capped=None, refused=None))]
    #[allow(clippy::too_many_arguments)]
    fn claim_parsed<'py>(
        &mut self,
        py: Python<'py>,
        parsed: &Bound<'py, Parsed>,
        source: &str,
        ts_decided: i64,
        hidden: Option<&Bound<'py, PyAny>>,
        capped: Option<&Bound<'py, PyAny>>,
        refused: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if self.topics.is_none() || !self.unsupported.is_empty() || !self.odd_spend.is_empty() {
            return Ok(None);
        }
        let parsed = parsed.get();
        let intent = &parsed.intent;
        // The intake read these within the schema's bounds; outside the engine's, Python decides.
        let (Ok(slots), Ok(reserve_cpm_micros)) = (u64::try_from(intent.slots), u64::try_from(intent.floor_cpm_micros))
        else {
            return Ok(None);
        };
        if slots == 0 || slots > MAX_SLOTS {
            return Ok(None);
        }
        let Some(person) = self.person_of(hidden, capped, refused)? else {
            return Ok(None);
        };
        // As sets, like the request's frozensets (a keyword repeated in the intent counts once).
        let keywords = distinct(&intent.keywords);
        let ancestors = Self::ancestors(&self.lineage, Some(&intent.category));
        let request = Request {
            event_id: &intent.event_id,
            placement: &intent.placement,
            slots: slots as usize,
            reserve_cpm_micros: u128::from(reserve_cpm_micros),
            ancestors: &ancestors,
            keywords: keywords.clone(),
            locale: &intent.locale,
            country: &intent.country,
            device: &intent.device,
            safety_labels: distinct(&intent.safety_labels),
            consent_ads: intent.consent_ads,
            age_bracket: &intent.age_bracket,
            now_ms: parsed.now_ms,
        };
        let outcome = self.core.run(&request, &person);
        drop(request);
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        let records_intent = records::Intent::of(
            &intent.event_id,
            &intent.user_id,
            &intent.session_id,
            &intent.placement,
            intent.ts,
            &intent.category,
        );
        let claimant = Claimant {
            event_id: &intent.event_id,
            user_id: &intent.user_id,
            source,
            session_id: &intent.session_id,
        };
        let decided = Decided {
            outcome,
            reserve_cpm_micros,
            keywords,
        };
        Ok(self.written(py, &records_intent, &claimant, ts_decided, decided))
    }
}

/// The texts once each, sorted.
fn distinct(texts: &[String]) -> Vec<&str> {
    let mut once: Vec<&str> = texts.iter().map(String::as_str).collect();
    once.sort_unstable();
    once.dedup();
    once
}

/// The fields' session id, when it is a string.
fn session_of<'py>(fields: &Bound<'py, PyDict>) -> Option<Bound<'py, PyString>> {
    fields
        .get_item(intern!(fields.py(), "session_id"))
        .ok()??
        .downcast_into::<PyString>()
        .ok()
}

/// Who claims (the request's ids, as the Python `Claim` carries them), from where, and the
/// session the decision is keyed by.
struct Claimant<'a> {
    event_id: &'a str,
    user_id: &'a str,
    source: &'a str,
    session_id: &'a str,
}

/// The arguments of one auction, as Python passed them.
struct Asked<'a, 'py> {
    event_id: &'a str,
    placement: &'a str,
    slots: &'a Bound<'py, PyAny>,
    reserve_cpm_micros: &'a Bound<'py, PyAny>,
    category: Option<&'a str>,
    keywords: &'a Bound<'py, PyAny>,
    locale: &'a str,
    country: &'a str,
    device: &'a str,
    safety_labels: &'a Bound<'py, PyAny>,
    consent_ads: bool,
    age_bracket: &'a str,
    now_ms: i64,
    hidden: Option<&'a Bound<'py, PyAny>>,
    capped: Option<&'a Bound<'py, PyAny>>,
    refused: Option<&'a Bound<'py, PyAny>>,
}

/// `decide`'s answer: the outcome, the reserve and the request's keywords.
type Decision<'py> = (Outcome, u64, Vec<Bound<'py, PyString>>);

/// An auction the engine decided, with what the records need of its request.
struct Decided<'k> {
    outcome: Outcome,
    reserve_cpm_micros: u64,
    keywords: Vec<&'k str>,
}

impl PyEngine {
    /// The person's hidden advertisers, capped campaigns and this auction's refusals, as the
    /// engine holds them; `None` when a value is not of the shape the Python engine meets (it
    /// then decides).
    fn person_of<'py>(
        &self,
        hidden: Option<&Bound<'py, PyAny>>,
        capped: Option<&Bound<'py, PyAny>>,
        refused: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Person>> {
        let (Some(hidden_strings), Some(capped_strings)) = (strings_of(hidden), strings_of(capped)) else {
            return Ok(None);
        };
        let mut refused_pairs: Vec<(Bound<'py, PyString>, i8)> = Vec::new();
        if let Some(refused) = refused {
            let Ok(refused) = refused.downcast::<PyDict>() else {
                return Ok(None);
            };
            for (campaign_id, reason) in refused.iter() {
                let (Ok(campaign_id), Ok(reason)) =
                    (campaign_id.downcast_into::<PyString>(), reason.extract::<String>())
                else {
                    return Ok(None);
                };
                let Some(stage) = self.stages.iter().position(|name| *name == reason).map(|at| at as i8) else {
                    return Ok(None);
                };
                refused_pairs.push((campaign_id, stage));
            }
        }
        let mut person = Person::default();
        for advertiser in &hidden_strings {
            if let Some(number) = self.core.advertiser_no(advertiser.to_str()?) {
                person.hidden_advertisers.insert(number);
            }
        }
        for campaign_id in &capped_strings {
            if let Some(slot) = self.core.slot_of(campaign_id.to_str()?) {
                person.capped_campaigns.insert(slot);
            }
        }
        for (campaign_id, stage) in &refused_pairs {
            if let Some(slot) = self.core.slot_of(campaign_id.to_str()?) {
                person.refused.insert(slot, *stage);
            }
        }
        Ok(Some(person))
    }

    /// The auction, or `None` where the Python engine must decide it.
    fn decide<'py>(&mut self, asked: &Asked<'_, 'py>) -> PyResult<Option<Decision<'py>>> {
        if !self.unsupported.is_empty() || !self.odd_spend.is_empty() {
            return Ok(None);
        }
        // Values of another type or range than the schema lets through are the Python engine's
        // to decide (or to refuse): the compiled one answers None, never raises for them.
        let (Ok(slots), Ok(reserve_cpm_micros)) =
            (asked.slots.extract::<u64>(), asked.reserve_cpm_micros.extract::<u64>())
        else {
            return Ok(None);
        };
        if slots == 0 || slots > MAX_SLOTS {
            return Ok(None);
        }
        let Some(keyword_strings) = strings_of(Some(asked.keywords)) else {
            return Ok(None);
        };
        let Some(label_strings) = strings_of(Some(asked.safety_labels)) else {
            return Ok(None);
        };
        let Some(person) = self.person_of(asked.hidden, asked.capped, asked.refused)? else {
            return Ok(None);
        };
        let ancestors = Self::ancestors(&self.lineage, asked.category);
        let request = Request {
            event_id: asked.event_id,
            placement: asked.placement,
            slots: slots as usize,
            reserve_cpm_micros: u128::from(reserve_cpm_micros),
            ancestors: &ancestors,
            keywords: texts(&keyword_strings)?,
            locale: asked.locale,
            country: asked.country,
            device: asked.device,
            safety_labels: texts(&label_strings)?,
            consent_ads: asked.consent_ads,
            age_bracket: asked.age_bracket,
            now_ms: asked.now_ms,
        };
        let outcome = self.core.run(&request, &person);
        drop(request);
        Ok(outcome.map(|outcome| (outcome, reserve_cpm_micros, keyword_strings)))
    }

    /// The records and reservations of a decided auction (`claim`, `claim_parsed`), or `None`
    /// for the Python steps. `intent`: what the records repeat of the intent; `keywords`: the
    /// request's.
    fn written<'py>(
        &self,
        py: Python<'py>,
        intent: &records::Intent<'_>,
        claimant: &Claimant<'_>,
        ts_decided: i64,
        decided: Decided<'_>,
    ) -> Option<Bound<'py, PyTuple>> {
        let event_id = claimant.event_id; // the creative pick and the claim: the request's, as in Python
        let reserve = itoa::Buffer::new()
            .format(decided.reserve_cpm_micros)
            .as_bytes()
            .to_vec();
        let mut ts = Vec::with_capacity(16);
        push_int(&mut ts, ts_decided);
        let (reason, winners) = match decided.outcome {
            Outcome::Gated(reason) => (Some(reason.to_string()), Vec::new()),
            Outcome::NoFill(stage) => (Some(self.stages[stage as usize].clone()), Vec::new()),
            Outcome::Winners(winners) => (None, winners),
        };
        let mut reason_json = Vec::with_capacity(16);
        match &reason {
            Some(text) => push_str(&mut reason_json, text),
            None => reason_json.extend_from_slice(b"null"),
        }
        let intent_keywords = if winners.is_empty() {
            b"[]".to_vec()
        } else {
            records::sorted_keywords(decided.keywords.clone())
        };
        let auction = records::Auction {
            ts_decided: ts,
            reason: reason_json,
            reserve,
            personalized: b"false".to_vec(),
            intent_keywords,
        };
        let mut values: Vec<u8> = Vec::with_capacity(512 * winners.len());
        let mut parts = Vec::with_capacity(winners.len());
        // The auction's entry in the reservation call (auction/budgets.py `entry_of`): its values
        // in that flat JSON list, without brackets: event_id, source, user_id, how many
        // reservations, each one's six values, the outcome's length, the event bucket.
        let mut entry = Vec::with_capacity(96 + 96 * winners.len());
        push_str(&mut entry, event_id);
        entry.push(b',');
        push_str(&mut entry, claimant.source);
        entry.push(b',');
        push_str(&mut entry, claimant.user_id);
        entry.push(b',');
        entry.extend_from_slice(itoa::Buffer::new().format(winners.len()).as_bytes());
        for winner in &winners {
            let campaign = self.core.campaign(winner.campaign);
            // `pick_creative` (auction/records.py): one creative, or a rotation by the tie hash.
            let choices = self.creatives.get(&*campaign.campaign_id)?;
            let (creative, creative_id) = match choices.len() {
                0 => return None,
                1 => &choices[0],
                count => &choices[tie_hash(event_id, &campaign.campaign_id) as usize % count],
            };
            let money = |value: u128| u64::try_from(value).ok(); // orjson writes ints up to 64 bits
            let (price, charge, ecpm) = (
                money(winner.price_micros)?,
                money(winner.charge_micros)?,
                money(winner.ecpm_micros)?,
            );
            let runner_up = match winner.runner_up_ecpm_micros {
                Some(value) => Some(money(value)?),
                None => None,
            };
            let slot = i64::try_from(winner.slot).ok()?;
            let pctr = pctr_of(campaign)?;
            // Each value written once into `values`, its span kept for the records to copy.
            let out = &mut values;
            macro_rules! put {
                ($write:expr) => {{
                    let start = out.len();
                    $write;
                    start..out.len()
                }};
            }
            let number =
                |out: &mut Vec<u8>, value: u64| out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
            let winner_json = records::Winner {
                slot,
                campaign: put!(push_str(out, &campaign.campaign_id)),
                advertiser: put!(push_str(out, &campaign.advertiser_id)),
                creative: put!(out.extend_from_slice(creative)),
                creative_id: put!(out.extend_from_slice(creative_id)),
                bid_type: put!(push_str(out, if campaign.cpc { "cpc" } else { "cpm" })),
                bid: put!(number(out, campaign.bid_micros)),
                price: put!(number(out, price)),
                charge: put!(number(out, charge)),
                ecpm: put!(number(out, ecpm)),
                runner_up: put!(match runner_up {
                    Some(value) => number(out, value),
                    None => out.extend_from_slice(b"null"),
                }),
                pctr: put!(push_float(out, pctr)?),
                matched: put!(push_strs(out, &winner.matched_keywords)),
                category: put!(match &winner.matched_category {
                    Some(code) => push_str(out, code),
                    None => out.extend_from_slice(b"null"),
                }),
            };
            parts.push(winner_json);
            // auction/worker.py `reservations_of`: a CPM winner needs its charge (at least a micro) left in
            // the budget, a CPC winner one click at its price.
            let need = if campaign.cpc { price } else { charge.max(1) };
            let last = &parts[parts.len() - 1];
            let value = |span: &std::ops::Range<usize>| &values[span.clone()];
            for piece in [
                value(&last.campaign),
                itoa::Buffer::new().format(charge).as_bytes(),
                itoa::Buffer::new().format(need).as_bytes(),
                itoa::Buffer::new().format(campaign.cap_max).as_bytes(),
                itoa::Buffer::new().format(campaign.cap_window_s).as_bytes(),
                value(&last.advertiser),
            ] {
                entry.push(b',');
                entry.extend_from_slice(piece);
            }
        }
        let written = records::records(&self.label_json, intent, &auction, &parts, &values);
        let bucket = crc32(&[event_id.as_bytes()]) % self.event_buckets;
        entry.push(b',');
        entry.extend_from_slice(itoa::Buffer::new().format(written.compact.len()).as_bytes());
        entry.push(b',');
        entry.extend_from_slice(itoa::Buffer::new().format(bucket).as_bytes());
        // The records to publish, as the worker's loop takes them: (topic, key, value).
        let (decisions, impressions) = self.topics.as_ref()?;
        let published = PyList::empty(py);
        let session_key = PyBytes::new(py, claimant.session_id.as_bytes());
        published
            .append((decisions.bind(py), session_key, PyBytes::new(py, &written.decision)))
            .ok()?;
        for (impression_id, impression) in &written.impressions {
            let key = PyBytes::new(py, impression_id.as_bytes());
            published
                .append((impressions.bind(py), key, PyBytes::new(py, impression)))
                .ok()?;
        }
        let reason_obj = match &reason {
            Some(text) => PyString::intern(py, text).into_any(),
            None => py.None().into_bound(py),
        };
        let parts = [
            published.into_any(),
            written.impressions.len().into_pyobject(py).ok()?.into_any(),
            reason_obj,
            PyBytes::new(py, &written.compact).into_any(),
            PyBytes::new(py, &entry).into_any(),
        ];
        PyTuple::new(py, parts).ok()
    }
}
