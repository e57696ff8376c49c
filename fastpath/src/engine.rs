//! The auction engine of `auction/engine.py`, over its own copy of the campaign index: gates,
//! eligibility, ranking, allocation and pricing, exactly as the Python engine decides them
//! (tests/auction run the engine's tests and generated cases through both). Pure: no Python here.
//!
//! Money and rates are integers as in Python; a product that would overflow 128 bits makes
//! `run` answer `None`, and that auction takes the Python engine (whose ints have no bound).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// FxHash (rustc's): the engine's keys are short strings and small ints, hashed millions of times
/// a second; SipHash's resistance to chosen keys buys nothing here (campaign ids are validated
/// input, and a slow bucket costs time, never a wrong answer).
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(value as u64);
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.add(value as u64);
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = HashMap<K, V, FxBuild>;
pub type FxHashSet<T> = HashSet<T, FxBuild>;

/// Filter stages in the order a candidate meets them: the positions of `STAGES` in
/// auction/engine.py, which names them (handed over when the engine is made, and checked there).
pub const STAGE_COUNT: usize = 7;
const TARGETING: i8 = 0;
const SAFETY: i8 = 1;
const HIDDEN: i8 = 2;
const CAP: i8 = 3;
const BUDGET: i8 = 4;
const PACING: i8 = 5;
const FLOOR: i8 = 6;
const PASS: i8 = -1;

const RANK_SCALE: u128 = 1 << 20; // auction/model.py RANK_SCALE: rank keys arrive computed; kept for the check
const DAY_MS: i64 = 86_400_000;
const PACING_TOLERANCE_BP: i128 = 200;
const BASIS_POINTS: i128 = 10_000;
const PHRASE_WORDS_MAX: usize = 6;

pub struct Filters {
    pub negative_keywords: Option<FxHashSet<String>>,
    pub locales: Option<FxHashSet<String>>,
    pub countries: Option<FxHashSet<String>>,
    pub devices: Option<FxHashSet<String>>,
    pub placements: Option<FxHashSet<String>>,
    pub excluded_safety_labels: Option<FxHashSet<String>>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub vertical: String,
}

/// A keyword, phrase or advertiser id, held once however many campaigns name it (`Engine::term`):
/// a campaign's keywords are pointers to shared strings, not ten strings of its own.
pub type Term = Arc<str>;

/// What the engine reads of a campaign (auction/model.py `Campaign`).
pub struct Campaign {
    pub campaign_id: Term,
    pub advertiser_id: Term,
    pub advertiser_no: u32, // the engine's number for advertiser_id (set when it is held)
    pub cpc: bool,
    // Held in 64 bits (a campaign whose numbers do not fit is not copied: Python decides while
    // it is in the index), worked in 128.
    pub bid_micros: u64,
    pub pctr_num: u64,
    pub pctr_den: u64,
    pub rank_key: u128,
    pub keywords: Box<[u32]>, // term numbers (`Engine::term`)
    pub phrases: Box<[u32]>,
    pub categories: Option<Arc<FxHashSet<String>>>,
    pub any_of: bool,
    pub has_filters: bool,
    pub filters: Option<Arc<Filters>>,
    pub daily_budget_micros: i64,
    pub even_pacing: bool,
    pub active: bool,
    // What the Redis reservation needs (the engine itself never reads them): the frequency cap's
    // impressions and window, 0 and 0 without one.
    pub cap_max: u64,
    pub cap_window_s: u64,
}

impl Campaign {
    /// The exact eCPM as (numerator, denominator); None past 128 bits.
    fn ecpm(&self) -> Option<(u128, u128)> {
        if self.cpc {
            Some((
                u128::from(self.bid_micros)
                    .checked_mul(u128::from(self.pctr_num))?
                    .checked_mul(1000)?,
                u128::from(self.pctr_den),
            ))
        } else {
            Some((u128::from(self.bid_micros), 1))
        }
    }

    fn category_filter(&self) -> Option<&FxHashSet<String>> {
        if (!self.keywords.is_empty() || !self.phrases.is_empty()) && !self.any_of {
            self.categories.as_deref()
        } else {
            None
        }
    }

    /// Checks the rank key Python computed against the bid and rate it came from.
    pub fn rank_key_is_consistent(&self) -> bool {
        match self.ecpm() {
            Some((num, den)) => num
                .checked_mul(RANK_SCALE)
                .is_some_and(|scaled| scaled / den == self.rank_key),
            None => false,
        }
    }
}

/// The trust policy (auction/engine.py `Policy`) and the fixed gates.
#[derive(Default)]
pub struct Policy {
    pub blocked_safety_labels: FxHashSet<String>,
    pub sensitive_categories: FxHashSet<String>,
    pub restricted_verticals: FxHashSet<String>,
}

/// One auction's request (auction/model.py `AuctionRequest`), borrowed from the caller.
pub struct Request<'a> {
    pub event_id: &'a str,
    pub placement: &'a str,
    pub slots: usize,
    pub reserve_cpm_micros: u128,
    pub ancestors: &'a [String],
    pub keywords: Vec<&'a str>, // in the order Python iterates the request's frozenset
    pub locale: &'a str,
    pub country: &'a str,
    pub device: &'a str,
    pub safety_labels: Vec<&'a str>,
    pub consent_ads: bool,
    pub age_bracket: &'a str,
    pub now_ms: i64,
}

/// What the worker knows of the person and what Redis refused for this event.
#[derive(Default)]
pub struct Person {
    pub hidden_advertisers: FxHashSet<u32>, // the engine's numbers (`advertiser_no`)
    pub capped_campaigns: FxHashSet<u32>,   // slots (`slot_of`)
    pub refused: FxHashMap<u32, i8>,        // slot -> stage
}

pub struct Winner {
    pub slot: usize,
    pub campaign: u32,
    pub price_micros: u128,
    pub charge_micros: u128,
    pub ecpm_micros: u128,
    pub runner_up_ecpm_micros: Option<u128>,
    pub matched_keywords: Vec<String>,
    pub matched_category: Option<String>,
}

pub enum Outcome {
    Winners(Vec<Winner>),
    Gated(&'static str), // a gate's reason (`_gate`)
    NoFill(i8),          // the furthest stage a candidate reached
}

#[derive(Default)]
pub struct Engine {
    pub campaigns: Vec<Option<Campaign>>,
    free: Vec<u32>,
    slot_of: FxHashMap<Term, u32>,
    advertiser_numbers: FxHashMap<Term, u32>,
    terms: FxHashMap<Term, u32>,
    term_list: Vec<Term>,
    /// Posting lists by term, one table per `Family` (exact keywords, phrases, categories).
    tables: [FxHashMap<Term, Vec<u32>>; 3],
    untargeted: Vec<u32>,
    pub policy: Policy,
    pub unsafe_categories: FxHashSet<String>,
    pub minor_brackets: FxHashSet<String>,
    pub increment_micros: u128,
    // The spend view by campaign id (the Python view's), and as each held campaign reads it, by slot.
    spend_today: FxHashMap<String, i128>,
    blocked: FxHashSet<String>,
    slot_spend: Vec<(i128, bool)>,
    scratch: Scan,
}

#[derive(Clone, Copy)]
enum Family {
    Keyword,
    Phrase,
    Category,
}

impl Engine {
    pub fn campaign(&self, slot: u32) -> &Campaign {
        self.campaigns[slot as usize]
            .as_ref()
            .expect("a posted campaign is held")
    }

    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// A held campaign's slot.
    pub fn slot_of(&self, campaign_id: &str) -> Option<u32> {
        self.slot_of.get(campaign_id).copied()
    }

    /// A new day: no spend, nothing blocked (`SpendView.roll_to`).
    pub fn spend_clear(&mut self) {
        self.spend_today.clear();
        self.blocked.clear();
        self.slot_spend.iter_mut().for_each(|spend| *spend = (0, false));
    }

    /// `SpendView.record`: today's spend, and whether the campaign is out of budget.
    pub fn spend_set(&mut self, campaign_id: String, today_micros: i128, blocked: bool) {
        if let Some(slot) = self.slot_of(&campaign_id) {
            self.slot_spend[slot as usize] = (today_micros, blocked);
        }
        if blocked {
            self.blocked.insert(campaign_id.clone());
        } else {
            self.blocked.remove(&campaign_id);
        }
        self.spend_today.insert(campaign_id, today_micros);
    }

    /// `SpendView.mark_exhausted`.
    pub fn spend_block(&mut self, campaign_id: String) {
        if let Some(slot) = self.slot_of(&campaign_id) {
            self.slot_spend[slot as usize].1 = true;
        }
        self.blocked.insert(campaign_id);
    }

    /// The one shared copy of this string (kept for the engine's life: the vocabulary of
    /// keywords and advertisers, not of requests).
    pub fn term(&mut self, text: &str) -> u32 {
        if let Some(found) = self.terms.get(text) {
            return *found;
        }
        let term: Term = Arc::from(text);
        let number = self.term_list.len() as u32;
        self.term_list.push(term.clone());
        self.terms.insert(term, number);
        number
    }

    /// The text of a term number.
    pub fn text(&self, number: u32) -> &Term {
        &self.term_list[number as usize]
    }

    fn families(&self, campaign: &Campaign) -> Vec<(Family, Vec<Term>)> {
        let texts = |numbers: &[u32]| numbers.iter().map(|number| self.text(*number).clone()).collect();
        let mut families = Vec::new();
        if !campaign.keywords.is_empty() {
            families.push((Family::Keyword, texts(&campaign.keywords)));
        }
        if !campaign.phrases.is_empty() {
            families.push((Family::Phrase, texts(&campaign.phrases)));
        }
        if let Some(categories) = &campaign.categories {
            if !categories.is_empty() && (campaign.any_of || families.is_empty()) {
                let mut codes: Vec<Term> = categories.iter().map(|code| Term::from(code.as_str())).collect();
                codes.sort();
                families.push((Family::Category, codes));
            }
        }
        families
    }

    /// No campaigns and no terms: before a whole index is copied again (the terms of campaigns
    /// gone since are let go).
    pub fn clear_terms(&mut self) {
        self.clear();
        self.terms.clear();
        self.term_list.clear();
    }

    pub fn clear(&mut self) {
        let policy = std::mem::take(&mut self.policy);
        let unsafe_categories = std::mem::take(&mut self.unsafe_categories);
        let minor_brackets = std::mem::take(&mut self.minor_brackets);
        let spend_today = std::mem::take(&mut self.spend_today);
        let blocked = std::mem::take(&mut self.blocked);
        let terms = std::mem::take(&mut self.terms);
        let term_list = std::mem::take(&mut self.term_list);
        self.slot_spend.clear();
        let increment_micros = self.increment_micros;
        *self = Engine {
            policy,
            unsafe_categories,
            minor_brackets,
            increment_micros,
            spend_today,
            blocked,
            terms,
            term_list,
            ..Engine::default()
        };
    }

    /// Posting lists in descending rank key; a campaign goes after those with an equal key
    /// (`insort`, as the Python index does), or at the end while `build` appends.
    fn post(&mut self, slot: u32, sorted: bool) {
        let campaigns = &self.campaigns;
        let held = campaigns[slot as usize].as_ref().expect("a held campaign");
        let key = held.rank_key;
        let place = |list: &mut Vec<u32>| {
            let position = if sorted {
                list.partition_point(|other| campaigns[*other as usize].as_ref().map_or(0, |c| c.rank_key) >= key)
            } else {
                list.len()
            };
            list.insert(position, slot);
        };
        let families = self.families(held);
        if families.is_empty() {
            place(&mut self.untargeted);
        }
        for (family, terms) in families {
            let table = &mut self.tables[family as usize];
            for term in terms {
                place(table.entry(term).or_default());
            }
        }
    }

    /// Bulk build: every campaign appended, then each list sorted once (stable, as Python's).
    pub fn build(&mut self, campaigns: Vec<Campaign>) {
        self.clear();
        for campaign in campaigns {
            if campaign.active {
                let slot = self.hold(campaign);
                self.post(slot, false);
            }
        }
        let campaigns = &self.campaigns;
        let key = |slot: &u32| std::cmp::Reverse(campaigns[*slot as usize].as_ref().map_or(0, |c| c.rank_key));
        for table in &mut self.tables {
            for list in table.values_mut() {
                list.sort_by_key(key);
                list.shrink_to_fit(); // exactly its size: appends left up to half spare
            }
            table.shrink_to_fit();
        }
        self.untargeted.sort_by_key(key);
        self.untargeted.shrink_to_fit();
        self.campaigns.shrink_to_fit();
        self.slot_spend.shrink_to_fit();
        self.slot_of.shrink_to_fit();
    }

    /// The engine's number for an advertiser it holds a campaign of.
    pub fn advertiser_no(&self, advertiser_id: &str) -> Option<u32> {
        self.advertiser_numbers.get(advertiser_id).copied()
    }

    fn hold(&mut self, mut campaign: Campaign) -> u32 {
        let next = self.advertiser_numbers.len() as u32;
        campaign.advertiser_no = *self
            .advertiser_numbers
            .entry(campaign.advertiser_id.clone())
            .or_insert(next);
        let campaign_id = campaign.campaign_id.clone();
        let spend = (
            self.spend_today.get(&*campaign_id).copied().unwrap_or(0),
            self.blocked.contains(&*campaign_id),
        );
        let slot = match self.free.pop() {
            Some(slot) => {
                self.campaigns[slot as usize] = Some(campaign);
                slot
            }
            None => {
                self.campaigns.push(Some(campaign));
                (self.campaigns.len() - 1) as u32
            }
        };
        self.slot_of.insert(campaign_id, slot);
        if self.slot_spend.len() < self.campaigns.len() {
            self.slot_spend.resize(self.campaigns.len(), (0, false));
        }
        self.slot_spend[slot as usize] = spend;
        slot
    }

    /// Add, change or (when paused) withdraw one campaign.
    pub fn upsert(&mut self, campaign: Campaign) {
        self.remove(&campaign.campaign_id.clone());
        if campaign.active {
            let slot = self.hold(campaign);
            self.post(slot, true);
        }
    }

    pub fn remove(&mut self, campaign_id: &str) -> bool {
        let Some(slot) = self.slot_of.remove(campaign_id) else {
            return false;
        };
        let old = self.campaigns[slot as usize].take().expect("a held campaign");
        let families = self.families(&old);
        if families.is_empty() {
            self.untargeted.retain(|other| *other != slot);
        }
        for (family, terms) in &families {
            let table = &mut self.tables[*family as usize];
            for term in terms {
                if let Some(list) = table.get_mut(term) {
                    list.retain(|other| *other != slot);
                    if list.is_empty() {
                        table.remove(term);
                    }
                }
            }
        }
        self.free.push(slot);
        true
    }

    fn gate(&self, request: &Request) -> Option<&'static str> {
        if !request.consent_ads {
            return Some("no_consent");
        }
        if self.minor_brackets.contains(request.age_bracket) {
            return Some("minor");
        }
        if request
            .safety_labels
            .iter()
            .any(|label| self.policy.blocked_safety_labels.contains(*label))
        {
            return Some("brand_safety");
        }
        if request
            .ancestors
            .iter()
            .any(|code| self.unsafe_categories.contains(code))
        {
            return Some("brand_safety");
        }
        if request
            .ancestors
            .iter()
            .any(|code| self.policy.sensitive_categories.contains(code))
        {
            return Some("sensitive_topic");
        }
        None
    }

    /// One auction, or `None` when a number would pass 128 bits (the Python engine decides it).
    pub fn run(&mut self, request: &Request, person: &Person) -> Option<Outcome> {
        // The scan's sets, emptied and used again auction after auction: allocating and growing
        // them cost about a third of the engine's time.
        let mut scan = std::mem::take(&mut self.scratch);
        scan.clear();
        let outcome = self.run_with(request, person, &mut scan);
        self.scratch = scan;
        outcome
    }

    fn run_with(&self, request: &Request, person: &Person, scan: &mut Scan) -> Option<Outcome> {
        if let Some(reason) = self.gate(request) {
            return Some(Outcome::Gated(reason));
        }
        let need = request.slots + 1;
        let mut furthest = TARGETING;
        let mut floor_key: Option<u128> = None; // the need-th accepted advertiser's key, once there are `need`
        let reserve_key = request.reserve_cpm_micros.checked_mul(RANK_SCALE)?;
        let mut advertisers = std::mem::take(&mut scan.advertisers);
        for postings in self.lists_for(request) {
            if floor_key.is_some_and(|floor| self.campaign(postings[0]).rank_key < floor) {
                break;
            }
            advertisers.clear();
            let before = scan.accepted.len();
            let stage = self.scan(
                postings,
                request,
                person,
                scan,
                &mut advertisers,
                need,
                floor_key,
                reserve_key,
            )?;
            furthest = furthest.max(stage);
            if scan.accepted.len() > before && scan.best.len() >= need {
                scan.keys.clear();
                scan.keys.extend(scan.best.values().copied());
                scan.keys.sort_unstable_by(|a, b| b.cmp(a));
                floor_key = Some(scan.keys[need - 1]);
            }
        }
        scan.advertisers = advertisers;
        let ranked = self.best_per_advertiser(self.rank(&scan.accepted, request.event_id)?);
        if ranked.is_empty() {
            return Some(Outcome::NoFill(furthest));
        }
        let mut terms: Option<FxHashSet<&str>> = None;
        let mut winners = Vec::new();
        for (index, &slot) in ranked.iter().take(request.slots).enumerate() {
            let winner = self.campaign(slot);
            let runner_up = ranked.get(index + 1).map(|other| self.campaign(*other));
            let (price, charge) = self.price(winner, runner_up, request.reserve_cpm_micros)?;
            if !winner.phrases.is_empty() && terms.is_none() {
                terms = Some(sub_phrases(&request.keywords));
            }
            let (num, den) = winner.ecpm()?;
            let runner_up_ecpm = match runner_up {
                Some(other) => {
                    let (num, den) = other.ecpm()?;
                    Some(ceil_div(num, den))
                }
                None => None,
            };
            winners.push(Winner {
                slot: index + 1,
                campaign: slot,
                price_micros: price,
                charge_micros: charge,
                ecpm_micros: ceil_div(num, den),
                runner_up_ecpm_micros: runner_up_ecpm,
                matched_keywords: self.matched_keywords(winner, &request.keywords, terms.as_ref()),
                matched_category: matched_category(winner, request.ancestors),
            });
        }
        Some(Outcome::Winners(winners))
    }

    /// The non-empty posting lists the request reaches, best first (`_lists_for`).
    fn lists_for<'a>(&'a self, request: &Request) -> Vec<&'a [u32]> {
        let mut walk: Vec<&'a [u32]> = Vec::new();
        for keyword in &request.keywords {
            self.add(&mut walk, self.tables[Family::Keyword as usize].get(*keyword));
        }
        let by_phrase = &self.tables[Family::Phrase as usize];
        if !by_phrase.is_empty() {
            for keyword in &request.keywords {
                if keyword.contains(' ') {
                    for term in phrase_terms(keyword) {
                        self.add(&mut walk, by_phrase.get(term));
                    }
                } else {
                    self.add(&mut walk, by_phrase.get(*keyword));
                }
            }
        }
        for code in request.ancestors {
            self.add(&mut walk, self.tables[Family::Category as usize].get(code.as_str()));
        }
        self.add(&mut walk, Some(&self.untargeted));
        walk
    }

    /// Insert a non-empty list after the lists whose top key is at least its own (`_add`).
    fn add<'a>(&'a self, walk: &mut Vec<&'a [u32]>, postings: Option<&'a Vec<u32>>) {
        let Some(postings) = postings else { return };
        if postings.is_empty() {
            return;
        }
        let top = self.campaign(postings[0]).rank_key;
        let mut position = walk.len();
        while position > 0 && self.campaign(walk[position - 1][0]).rank_key < top {
            position -= 1;
        }
        walk.insert(position, postings);
    }

    /// `_scan`: one list in rank order until `need` advertisers are in; the furthest stage.
    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        postings: &[u32],
        request: &Request,
        person: &Person,
        scan: &mut Scan,
        advertisers: &mut FxHashSet<u32>,
        need: usize,
        floor_key: Option<u128>,
        reserve_key: u128,
    ) -> Option<i8> {
        let check_all = self.policy.restricted_verticals.contains("general");
        let mut found = 0usize;
        let mut last_key: Option<u128> = None;
        let mut furthest = TARGETING;
        for &slot in postings {
            let campaign = self.campaign(slot);
            let key = campaign.rank_key;
            if floor_key.is_some_and(|floor| key < floor) || (found >= need && last_key.is_some_and(|last| key < last))
            {
                break;
            }
            if !scan.accepted_set.contains(&slot) {
                if scan.rejected.contains(&slot) {
                    continue;
                }
                let mut stage = if campaign.has_filters || check_all {
                    self.filter_stage(campaign, request)
                } else {
                    PASS
                };
                if stage == PASS {
                    let (spend_today, blocked) = self.slot_spend[slot as usize];
                    if !person.hidden_advertisers.is_empty()
                        && person.hidden_advertisers.contains(&campaign.advertiser_no)
                    {
                        stage = HIDDEN;
                    } else if let Some(refused) = person.refused.get(&slot) {
                        stage = *refused;
                    } else if !person.capped_campaigns.is_empty() && person.capped_campaigns.contains(&slot) {
                        stage = CAP;
                    } else if blocked {
                        stage = BUDGET;
                    } else if campaign.even_pacing
                        && !pacing_allows(campaign, spend_today, request.now_ms, request.event_id)
                    {
                        stage = PACING;
                    }
                }
                if stage != PASS {
                    scan.rejected.insert(slot);
                    furthest = furthest.max(stage);
                    continue;
                }
                if key < reserve_key {
                    return Some(FLOOR); // the rest is below the floor too
                }
                scan.accepted.push(slot);
                scan.accepted_set.insert(slot);
                let best = scan.best.entry(campaign.advertiser_no).or_insert(key);
                if key > *best {
                    *best = key;
                }
            }
            if advertisers.insert(campaign.advertiser_no) {
                found += 1;
            }
            last_key = Some(key);
        }
        Some(furthest)
    }

    fn filter_stage(&self, campaign: &Campaign, request: &Request) -> i8 {
        if let Some(categories) = campaign.category_filter() {
            if !request.ancestors.iter().any(|code| categories.contains(code)) {
                return TARGETING;
            }
        }
        let Some(filters) = &campaign.filters else {
            return if self.policy.restricted_verticals.contains("general") {
                TARGETING
            } else {
                PASS
            };
        };
        let outside =
            |set: &Option<FxHashSet<String>>, value: &str| set.as_ref().is_some_and(|set| !set.contains(value));
        if outside(&filters.placements, request.placement)
            || outside(&filters.devices, request.device)
            || outside(&filters.countries, request.country)
            || filters
                .locales
                .as_ref()
                .is_some_and(|locales| !locale_matches(locales, request.locale))
            || filters
                .negative_keywords
                .as_ref()
                .is_some_and(|negative| request.keywords.iter().any(|keyword| negative.contains(*keyword)))
            || filters.start_ms.is_some_and(|start| request.now_ms < start)
            || filters.end_ms.is_some_and(|end| request.now_ms >= end)
            || self.policy.restricted_verticals.contains(&filters.vertical)
        {
            return TARGETING;
        }
        if let Some(excluded) = &filters.excluded_safety_labels {
            if request.safety_labels.iter().any(|label| excluded.contains(*label)) {
                return SAFETY;
            }
        }
        PASS
    }

    /// `rank`: descending rank key, stable; runs of equal keys by exact eCPM, then the tie hash.
    fn rank(&self, accepted: &[u32], event_id: &str) -> Option<Vec<u32>> {
        let mut ranked = accepted.to_vec();
        ranked.sort_by_key(|slot| std::cmp::Reverse(self.campaign(*slot).rank_key));
        let mut start = 0;
        while start < ranked.len() {
            let key = self.campaign(ranked[start]).rank_key;
            let mut end = start + 1;
            while end < ranked.len() && self.campaign(ranked[end]).rank_key == key {
                end += 1;
            }
            if end - start > 1 {
                let mut run: Vec<(u128, u128, u32, u32)> = Vec::with_capacity(end - start);
                for &slot in &ranked[start..end] {
                    let campaign = self.campaign(slot);
                    let (num, den) = campaign.ecpm()?;
                    run.push((num, den, tie_hash(event_id, &campaign.campaign_id), slot));
                }
                // Exact eCPM descending (cross-multiplied in 256 bits), then the hash ascending.
                run.sort_by(|a, b| mul_wide(b.0, a.1).cmp(&mul_wide(a.0, b.1)).then(a.2.cmp(&b.2)));
                for (offset, item) in run.iter().enumerate() {
                    ranked[start + offset] = item.3;
                }
            }
            start = end;
        }
        Some(ranked)
    }

    /// The campaign keywords that matched the request (for `why`): exact ones, then phrases.
    fn matched_keywords(&self, campaign: &Campaign, keywords: &[&str], terms: Option<&FxHashSet<&str>>) -> Vec<String> {
        matched_keywords_of(&self.term_list, campaign, keywords, terms)
    }

    fn best_per_advertiser(&self, ranked: Vec<u32>) -> Vec<u32> {
        let mut seen: FxHashSet<u32> = FxHashSet::default();
        ranked
            .into_iter()
            .filter(|slot| seen.insert(self.campaign(*slot).advertiser_no))
            .collect()
    }

    /// `price_slots` for one slot: (price, charge).
    fn price(&self, winner: &Campaign, runner_up: Option<&Campaign>, reserve: u128) -> Option<(u128, u128)> {
        let (mut threshold_num, mut threshold_den, mut increment) = (reserve, 1u128, 0u128);
        if let Some(other) = runner_up {
            let (num, den) = other.ecpm()?;
            if num > reserve.checked_mul(den)? {
                (threshold_num, threshold_den, increment) = (num, den, self.increment_micros);
            }
        }
        let price = if winner.cpc {
            let numerator = threshold_num.checked_mul(u128::from(winner.pctr_den))?;
            let denominator = threshold_den
                .checked_mul(u128::from(winner.pctr_num))?
                .checked_mul(1000)?;
            if denominator == 0 {
                return None; // a zero rate: Python raises; leave it to Python
            }
            ceil_div(numerator, denominator)
        } else {
            ceil_div(threshold_num, threshold_den)
        };
        let price = price.checked_add(increment)?.min(u128::from(winner.bid_micros));
        let charge = if winner.cpc { 0 } else { (price + 500) / 1000 };
        Some((price, charge))
    }
}

#[derive(Default)]
struct Scan {
    accepted: Vec<u32>,
    accepted_set: FxHashSet<u32>,
    best: FxHashMap<u32, u128>,
    rejected: FxHashSet<u32>,
    advertisers: FxHashSet<u32>,
    keys: Vec<u128>,
}

impl Scan {
    fn clear(&mut self) {
        self.accepted.clear();
        self.accepted_set.clear();
        self.best.clear();
        self.rejected.clear();
        self.advertisers.clear();
    }
}

fn ceil_div(numerator: u128, denominator: u128) -> u128 {
    numerator.div_ceil(denominator)
}

/// a * b as (high, low) 128-bit halves: compares exactly where the product passes 128 bits.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    let mask = u64::MAX as u128;
    let (a_hi, a_lo) = (a >> 64, a & mask);
    let (b_hi, b_lo) = (b >> 64, b & mask);
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let hi_hi = a_hi * b_hi;
    let middle = (lo_lo >> 64) + (hi_lo & mask) + (lo_hi & mask);
    let low = (middle << 64) | (lo_lo & mask);
    let high = hi_hi + (hi_lo >> 64) + (lo_hi >> 64) + (middle >> 64);
    (high, low)
}

/// `tie_hash`: zlib's CRC-32 of "<event_id>\x1f<campaign_id>".
pub fn tie_hash(event_id: &str, campaign_id: &str) -> u32 {
    crc32(&[event_id.as_bytes(), b"\x1f", campaign_id.as_bytes()])
}

/// zlib's CRC-32 of the parts, end to end.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &byte in *part {
            crc = CRC_TABLE[((crc ^ byte as u32) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// `pacing_allows` (auction/pacing.py).
fn pacing_allows(campaign: &Campaign, spend_today_micros: i128, now_ms: i64, event_id: &str) -> bool {
    let daily = i128::from(campaign.daily_budget_micros);
    if !campaign.even_pacing || daily <= 0 {
        return true;
    }
    let elapsed_ms = now_ms.rem_euclid(DAY_MS) as i128;
    let target_micros = (daily * elapsed_ms).div_euclid(DAY_MS as i128);
    let ahead_micros = spend_today_micros - target_micros;
    if ahead_micros <= 0 {
        return true;
    }
    let tolerance_micros = (daily * PACING_TOLERANCE_BP).div_euclid(BASIS_POINTS).max(1);
    let sit_out_bp = (ahead_micros * BASIS_POINTS)
        .div_euclid(tolerance_micros)
        .min(BASIS_POINTS);
    (tie_hash(event_id, &campaign.campaign_id) as i128) % BASIS_POINTS >= sit_out_bp
}

/// `phrase_terms` (auction/keywords.py): every run of up to PHRASE_WORDS_MAX consecutive words,
/// and the keyword itself when it has more words than that. A run of words joined by the one
/// space that split them is the stretch of the keyword they span: no string is built.
pub fn phrase_terms(keyword: &str) -> Vec<&str> {
    let mut starts = vec![0usize];
    let mut ends = Vec::new();
    for (position, byte) in keyword.bytes().enumerate() {
        if byte == b' ' {
            ends.push(position);
            starts.push(position + 1);
        }
    }
    ends.push(keyword.len());
    let count = starts.len();
    let mut runs = Vec::with_capacity(count * PHRASE_WORDS_MAX.min(count) + 1);
    for start in 0..count {
        for end in start + 1..=count.min(start + PHRASE_WORDS_MAX) {
            runs.push(&keyword[starts[start]..ends[end - 1]]);
        }
    }
    if count > PHRASE_WORDS_MAX {
        runs.push(keyword);
    }
    runs
}

fn sub_phrases<'a>(keywords: &[&'a str]) -> FxHashSet<&'a str> {
    let mut terms: FxHashSet<&'a str> = keywords.iter().copied().collect();
    for keyword in keywords {
        if keyword.contains(' ') {
            terms.extend(phrase_terms(keyword));
        }
    }
    terms
}

fn matched_keywords_of(
    texts: &[Term],
    campaign: &Campaign,
    keywords: &[&str],
    terms: Option<&FxHashSet<&str>>,
) -> Vec<String> {
    let text = |number: &u32| &texts[*number as usize];
    let mut matched: Vec<String> = campaign
        .keywords
        .iter()
        .map(text)
        .filter(|keyword| keywords.contains(&&***keyword))
        .map(|keyword| keyword.to_string())
        .collect();
    if let Some(terms) = terms {
        matched.extend(
            campaign
                .phrases
                .iter()
                .map(text)
                .filter(|phrase| terms.contains(&***phrase))
                .map(|phrase| phrase.to_string()),
        );
    }
    matched
}

fn matched_category(campaign: &Campaign, ancestors: &[String]) -> Option<String> {
    match &campaign.categories {
        None => ancestors.first().cloned(),
        Some(categories) => ancestors.iter().find(|code| categories.contains(*code)).cloned(),
    }
}

fn locale_matches(locales: &FxHashSet<String>, locale: &str) -> bool {
    locales.contains(locale) || locales.contains(locale.split('-').next().unwrap_or(locale))
}
