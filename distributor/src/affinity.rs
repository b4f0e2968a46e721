//! [`AffinityRule`]: key affinity with weighted shares. It sends every packet of one *key* (an
//! agent, a service, a session …) to the same analyzer, so analyzers that keep state per source
//! see all of it, while the analyzers' shares of log messages still follow their weights within a
//! bound. [`AffinityKey`] says where a packet's key comes from (`--affinity`).
//!
//! # Rule
//!
//! Every key has a *ranking* of the analyzers online, by weighted rendezvous
//! (highest-random-weight) hashing. For key `x` and analyzer `i` with weight `w_i` let
//! `u_i(x) ∈ (0, 1)` be the hash of the pair (below) and
//!
//! ```text
//! r_i(x) = −ln(u_i(x)) / w_i          (the smallest r ranks first; ties: the lowest index)
//! ```
//!
//! The first of the ranking is the key's *first choice*. A packet of `n` messages with key `x`
//! goes to the first analyzer `c` of `x`'s ranking whose count passes the bounded-load check
//!
//! ```text
//! s_c ≤ (1 + ε)·p_c·(T + n)
//! ```
//!
//! where `s_c`, `p_c` and `T` are the [`WeightedSelector`]'s messages assigned to `c` in the
//! epoch, its normalised weight and the epoch's total, and `ε` is the slack
//! (`--affinity-slack`). In words: an analyzer takes the packet unless it already holds more
//! than `(1 + ε)` of its share of the epoch's messages, counting this packet. Such an analyzer
//! always exists (some `s_i ≤ p_i·T`, since `Σ s_i = Σ p_i·T`); only when analyzers are
//! excluded (at-least-once retries) can the walk find none, and then the selector's own rule
//! chooses. Packets without a key are routed by the selector's rule, over the same counts.
//!
//! # Shares of keys
//!
//! When the `u_i(x)` are independent and uniform, `−ln u_i(x)` is exponential with rate 1 and
//! `r_i(x)` exponential with rate `w_i`; the smallest of independent exponentials is `i`'s with
//! probability `w_i / Σ w` (`∫ w_i e^{−w_i t} e^{−(W − w_i) t} dt = w_i / W`). So each key's
//! first choice is analyzer `i` with probability proportional to its weight: the keys, not yet
//! the messages, split by weight.
//!
//! # Minimal movement
//!
//! `r_i(x)` depends only on the key, analyzer `i`'s id and `i`'s weight. Hence:
//! - when analyzer `j` joins, a key's first choice changes only if `r_j(x)` is the new minimum,
//!   and then it moves *to `j`*: an expected `w_j / W'` of the keys move, no more;
//! - when `j` leaves, only the keys whose first choice was `j` move;
//! - when `j`'s weight changes, keys move only to `j` (weight up) or away from it (down);
//!   scaling all weights by one factor moves nothing.
//!
//! # Agreement
//!
//! The hash uses fixed constants and no per-process seed (unlike std's `HashMap`), so every
//! replica and every version computes the same rankings from the key's bytes, the analyzers' ids
//! and weights, without talking to each other. The unit tests pin its values.
//! `KeyHash::of(b) = fmix64(fnv1a64(b))`; an analyzer's seed is `fmix64(fnv1a64(id) ^ D)` for a
//! fixed domain constant `D`; `u_i(x) = (⌊fmix64(key ^ seed) / 2¹¹⌋ + ½) / 2⁵³`. FNV-1a 64
//! (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) reads the bytes; `fmix64` is
//! MurmurHash3's 64-bit finalizer, which spreads every input bit over the output.
//!
//! # Bound
//!
//! Write `e_i = s_i − p_i·T` (as in [`crate::selector`]) and `n_max` for the largest packet of
//! the epoch. Then at every moment, for `k` analyzers,
//!
//! ```text
//! −ε·(1 − p_i)·T − (k−1)·n_max  ≤  e_i  ≤  ε·p_i·T + n_max
//! ```
//!
//! *Proof.* The upper bound holds at `T = 0`. Take one packet of `n ≤ n_max` messages. An
//! analyzer not chosen has `e_i' = e_i − p_i·n ≤ e_i`, and its bound did not fall. If the
//! check chose `c`, then `e_c' = s_c + n − p_c·(T+n) ≤ ε·p_c·(T+n) + n`. If the selector's rule
//! chose, its proof gives `e_c' < n_max`. So the upper bound holds by induction; the lower one
//! follows from `Σ e_i = 0`: `e_i = −Σ_{m≠i} e_m ≥ −ε·(1 − p_i)·T − (k−1)·n_max`. ∎
//!
//! As shares: `|s_i/T − p_i| ≤ ε·max(p_i, 1 − p_i) + (k−1)·n_max/T`, so with the default
//! `ε = 0.01` every analyzer's share ends within 1 percentage point of its target however skewed
//! the keys are. The property tests check the bound, the split of keys, the minimal movement and
//! the pinned hash values.
//!
//! # Trade-off
//!
//! The check moves packets off their first choice only when that analyzer is full, so the share
//! of messages that leave their first choice is about `Σ_i max(0, L_i − (1+ε)·p_i)`, where `L_i`
//! is the share of messages whose key ranks `i` first: it depends on how skewed the keys are
//! more than on `ε`. A heavy key whose first choice is full spills to its second choice, so it
//! is split between two analyzers instead of the shares drifting. A smaller `ε` gives truer
//! shares and moves a little more, down to `ε = 0`, where an analyzer refuses its own keys
//! whenever it is a message above its share and about a third of the packets move. The figures
//! behind the default: `cargo run -p distributor --example affinity_slack` (docs/distributor.md).
//!
//! # Epochs and at-least-once
//!
//! The check reads the selector's epoch counts, so it restarts with them on every membership
//! change. Exclusion (analyzers that just failed a delivery) keeps the bound: the walk skips
//! them and the selector's rule is the fallback. Revocation steps outside the proof, as it does
//! for the selector.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::selector::WeightedSelector;

/// Default `--affinity-slack` (ε): measured with `cargo run -p distributor --example
/// affinity_slack`; see the module docs.
pub const DEFAULT_SLACK: f64 = 0.01;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Mixed into analyzer ids so an analyzer's seed never equals the hash of a key with the same
/// bytes.
const ANALYZER_DOMAIN: u64 = 0x6c6f_6764_6973_7421;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The stable hash of a packet's key; see the module docs. Equal bytes give equal hashes in every
/// process and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub u64);

impl KeyHash {
    /// Hash of a key's bytes.
    pub fn of(bytes: &[u8]) -> KeyHash {
        KeyHash(fmix64(fnv1a64(bytes)))
    }
}

/// An analyzer as the rule sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    seed: u64,
    /// `1 / w_i`: the race divides by the weight.
    inverse_weight: f64,
}

impl Candidate {
    /// `r_i(x)` of the module docs.
    #[inline]
    fn race(&self, key: KeyHash) -> f64 {
        let h = fmix64(key.0 ^ self.seed);
        let u = ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        -u.ln() * self.inverse_weight
    }
}

/// Where a keyed packet went, as [`AffinityRule::choose`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The analyzer's index (the caller's, as given to [`AffinityRule::set_analyzers`]).
    pub index: usize,
    /// The key's first choice: where the packet would go if no analyzer were full.
    pub first_choice: usize,
}

impl Choice {
    /// True when the packet went to its key's first choice ("affinity kept").
    pub fn kept(&self) -> bool {
        self.index == self.first_choice
    }
}

/// Weighted rendezvous hashing with a bounded-load check; see the module docs.
#[derive(Debug, Clone)]
pub struct AffinityRule {
    slack: f64,
    candidates: Vec<Candidate>,
}

impl AffinityRule {
    /// A rule with no analyzers and slack `ε`, which must be finite and ≥ 0 (the command line
    /// checks it; otherwise this panics, because the bound would not hold).
    pub fn new(slack: f64) -> Self {
        assert!(
            slack.is_finite() && slack >= 0.0,
            "slack must be finite and ≥ 0: {slack}"
        );
        AffinityRule {
            slack,
            candidates: Vec::new(),
        }
    }

    /// The slack `ε`.
    pub fn slack(&self) -> f64 {
        self.slack
    }

    /// Replaces the analyzers (ids and weights, index `i` is the caller's analyzer `i`, the same
    /// order as the selector's weights). Weights must be finite and > 0.
    pub fn set_analyzers<'a>(&mut self, analyzers: impl IntoIterator<Item = (&'a str, f64)>) {
        self.candidates.clear();
        for (id, weight) in analyzers {
            assert!(
                weight.is_finite() && weight > 0.0,
                "weights must be finite and > 0: {weight}"
            );
            self.candidates.push(Candidate {
                seed: fmix64(fnv1a64(id.as_bytes()) ^ ANALYZER_DOMAIN),
                inverse_weight: 1.0 / weight,
            });
        }
    }

    /// Number of analyzers.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The analyzer ranked right after `after` (a race time and an index) for `key`: the
    /// smallest `(race, index)` greater than `after`, or the first when `after` is `None`.
    /// O(k) and allocation-free; walking the whole ranking this way is O(k²), which only a
    /// packet whose first choices are all full pays.
    #[inline]
    fn next_ranked(&self, key: KeyHash, after: Option<(f64, usize)>) -> Option<(f64, usize)> {
        let mut best: Option<(f64, usize)> = None;
        for (i, c) in self.candidates.iter().enumerate() {
            let r = c.race(key);
            if let Some((ar, ai)) = after {
                if r < ar || (r == ar && i <= ai) {
                    continue;
                }
            }
            if best.is_none_or(|(br, _)| r < br) {
                best = Some((r, i));
            }
        }
        best
    }

    /// The key's first choice; `None` without analyzers.
    pub fn first_choice(&self, key: KeyHash) -> Option<usize> {
        self.next_ranked(key, None).map(|(_, i)| i)
    }

    /// The key's whole ranking, first choice first (allocates; for diagnostics and tests).
    pub fn ranking(&self, key: KeyHash) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.len());
        let mut after = None;
        while let Some(next) = self.next_ranked(key, after) {
            out.push(next.1);
            after = Some(next);
        }
        out
    }

    /// Picks the analyzer for a packet of `n` messages with key `key`, reading the epoch's
    /// counts from `selector` (which must have the same analyzers in the same order) and skipping
    /// the indices in `exclude`. Counts nothing: assign the result in the selector. `None` when
    /// no analyzer is left.
    pub fn choose(
        &self,
        key: KeyHash,
        n: u64,
        selector: &WeightedSelector,
        exclude: &[usize],
    ) -> Option<Choice> {
        debug_assert_eq!(self.len(), selector.len());
        let (first_race, first_choice) = self.next_ranked(key, None)?;
        let horizon = (selector.total() + n) as f64;
        // The first choice may go up to (1 + ε) of its share; a later one only up to its share,
        // so a spilled packet never fills an analyzer so far that its own keys spill in turn.
        let fits = |c: usize, slack: f64| {
            !exclude.contains(&c)
                && selector.assigned(c) as f64 <= (1.0 + slack) * selector.target_share(c) * horizon
        };
        if fits(first_choice, self.slack) {
            return Some(Choice {
                index: first_choice,
                first_choice,
            });
        }
        let mut current = (first_race, first_choice);
        while let Some(next) = self.next_ranked(key, Some(current)) {
            if fits(next.1, 0.0) {
                return Some(Choice {
                    index: next.1,
                    first_choice,
                });
            }
            current = next;
        }
        selector.choose(n, exclude).map(|index| Choice {
            index,
            first_choice,
        })
    }
}

/// Most distinct keys a [`KeyCensus`] counts per epoch: about 2 MiB of memory per replica.
pub const MAX_COUNTED_KEYS: usize = 100_000;

/// The distinct keys seen in an epoch, by first choice: the "keys held" of each analyzer.
/// Exact up to [`MAX_COUNTED_KEYS`] keys per epoch; beyond, new keys are not counted and
/// [`saturated`](Self::saturated) says so (memory stays bounded whatever the keys are).
#[derive(Debug, Default)]
pub struct KeyCensus {
    seen: HashSet<u64, BuildHasherDefault<PreHashed>>,
    held: Vec<u64>,
    saturated: bool,
}

impl KeyCensus {
    /// Forgets every key (a new epoch) for `analyzers` analyzers.
    pub fn reset(&mut self, analyzers: usize) {
        self.seen.clear();
        self.seen.shrink_to(MAX_COUNTED_KEYS.min(1024));
        self.held.clear();
        self.held.resize(analyzers, 0);
        self.saturated = false;
    }

    /// Records a packet of `key`, whose first choice is `first_choice`.
    #[inline]
    pub fn record(&mut self, key: KeyHash, first_choice: usize) {
        if self.seen.contains(&key.0) {
            return;
        }
        if self.seen.len() >= MAX_COUNTED_KEYS {
            self.saturated = true;
            return;
        }
        self.seen.insert(key.0);
        self.held[first_choice] += 1;
    }

    /// Distinct keys whose first choice is analyzer `i`.
    pub fn held(&self, i: usize) -> u64 {
        self.held.get(i).copied().unwrap_or(0)
    }

    /// True when more keys came than the census counts.
    pub fn saturated(&self) -> bool {
        self.saturated
    }
}

/// A `Hasher` for [`KeyHash`] values, which are already well mixed: hashing them again would
/// only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where a packet's affinity key comes from (`--affinity`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AffinityKey {
    /// No affinity: every packet is balanced by the selector alone (the default).
    #[default]
    None,
    /// The `Logdist-Agent` header, else the last token of the ingest subject.
    Agent,
    /// The value of this header; packets without it have no key.
    Header(HeaderName),
    /// This top-level field of the packet's first record (for packets from one source): a
    /// string's text, or the JSON text of a number or boolean; packets without it (or with
    /// `null`, an object or an array there) have no key.
    Field(String),
}

/// Why an `--affinity` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}; expected none, agent, header:NAME or field:NAME")]
pub struct ParseAffinityKeyError(String);

impl FromStr for AffinityKey {
    type Err = ParseAffinityKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: String| Err(ParseAffinityKeyError(m));
        match s.split_once(':') {
            None if s == "none" => Ok(AffinityKey::None),
            None if s == "agent" => Ok(AffinityKey::Agent),
            Some(("header", "")) => err("header: needs a header name".into()),
            Some(("header", name)) => match HeaderName::from_str(name) {
                Ok(name) => Ok(AffinityKey::Header(name)),
                Err(_) => err(format!("{name:?} is not a valid NATS header name")),
            },
            Some(("field", "")) => err("field: needs a field name".into()),
            Some(("field", name)) => Ok(AffinityKey::Field(name.to_string())),
            _ => err(format!("unknown affinity {s:?}")),
        }
    }
}

impl fmt::Display for AffinityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AffinityKey::None => f.write_str("none"),
            AffinityKey::Agent => f.write_str("agent"),
            AffinityKey::Header(name) => write!(f, "header:{name}"),
            AffinityKey::Field(name) => write!(f, "field:{name}"),
        }
    }
}

impl AffinityKey {
    /// True for [`AffinityKey::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, AffinityKey::None)
    }
}

/// Takes the affinity key of each packet, as `--affinity` says, for a distributor whose ingest
/// subject is `ingest` (packets come on `<ingest>` or `<ingest>.<agent>`).
#[derive(Debug, Clone)]
pub struct KeyExtractor {
    key: AffinityKey,
    /// `<ingest>.`: what precedes an agent's token in a per-agent ingest subject.
    agent_prefix: String,
}

impl KeyExtractor {
    pub fn new(key: AffinityKey, ingest: &str) -> Self {
        KeyExtractor {
            key,
            agent_prefix: format!("{ingest}."),
        }
    }

    /// Where keys come from.
    pub fn key(&self) -> &AffinityKey {
        &self.key
    }

    /// The key of a packet that came on `subject` with `headers` and (valid) `payload`, or `None`
    /// when it has none. `agent` without a `Logdist-Agent` header takes the last token after
    /// `<ingest>.`; a packet on the bare ingest subject has no key. Header modes read no
    /// payload; `field:` reads the payload once more (building nothing but the key).
    pub fn extract(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Option<KeyHash> {
        match &self.key {
            AffinityKey::None => None,
            AffinityKey::Agent => {
                let header = headers
                    .and_then(|h| h.get(logdist::protocol::headers::name::AGENT))
                    .map(|v| v.as_str())
                    .filter(|v| !v.is_empty());
                let key = header.or_else(|| {
                    subject
                        .strip_prefix(&self.agent_prefix)
                        .and_then(|rest| rest.rsplit('.').next())
                        .filter(|token| !token.is_empty())
                })?;
                Some(KeyHash::of(key.as_bytes()))
            }
            AffinityKey::Header(name) => headers
                .and_then(|h| h.get(name.clone()))
                .map(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .map(|v| KeyHash::of(v.as_bytes())),
            AffinityKey::Field(name) => field_key(payload, name),
        }
    }
}

/// The hash of field `name` of the first record of a packet (an object or an array of objects).
fn field_key(payload: &[u8], name: &str) -> Option<KeyHash> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    FirstRecordField { name }
        .deserialize(&mut deserializer)
        .ok()
        .flatten()
}

struct FirstRecordField<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for FirstRecordField<'_> {
    type Value = Option<KeyHash>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstRecordField<'_> {
    type Value = Option<KeyHash>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log object or an array of them")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(field) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && field == self.name {
                let raw: &'de RawValue = map.next_value()?;
                found = scalar_key(raw.get());
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let found = seq
            .next_element_seed(FirstRecordField { name: self.name })?
            .flatten();
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(found)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The key text of a field's raw JSON value: a string's (unescaped) text, a number's or
/// boolean's JSON text; `None` for null, objects and arrays.
fn scalar_key(raw: &str) -> Option<KeyHash> {
    match raw.as_bytes().first()? {
        b'"' => {
            let text: Cow<'_, str> = serde_json::from_str(raw).ok()?;
            Some(KeyHash::of(text.as_bytes()))
        }
        b'{' | b'[' | b'n' => None,
        _ => Some(KeyHash::of(raw.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(analyzers: &[(&str, f64)], slack: f64) -> (AffinityRule, WeightedSelector) {
        let mut rule = AffinityRule::new(slack);
        rule.set_analyzers(analyzers.iter().copied());
        let mut selector = WeightedSelector::new();
        let weights: Vec<f64> = analyzers.iter().map(|(_, w)| *w).collect();
        selector.set_weights(&weights);
        (rule, selector)
    }

    fn key(i: usize) -> KeyHash {
        KeyHash::of(format!("agent-{i}").as_bytes())
    }

    /// These values are the contract between replicas and versions: changing the hash moves
    /// every key. Do not update them; a failure here is a bug. The FNV values are the
    /// published test vectors; the others were computed by a separate implementation (Python)
    /// of the formulas in the module docs.
    #[test]
    fn hash_values_are_pinned() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(KeyHash::of(b"agent-1").0, 0x48de_2143_dbb0_2bfe);
        let (rule, _) = rule(&[("a", 0.5), ("b", 0.3), ("c", 0.2)], 0.01);
        let firsts: Vec<usize> = (0..16)
            .map(|i| rule.first_choice(key(i)).unwrap())
            .collect();
        assert_eq!(firsts, [0, 0, 1, 0, 1, 0, 0, 0, 1, 2, 1, 2, 2, 0, 0, 0]);
    }

    #[test]
    fn census_counts_distinct_keys_by_first_choice_up_to_its_limit() {
        let mut census = KeyCensus::default();
        census.reset(2);
        for x in 0..10 {
            census.record(key(x % 4), x % 2);
        }
        assert_eq!((census.held(0), census.held(1)), (2, 2));
        for x in 0..MAX_COUNTED_KEYS + 5 {
            census.record(key(x + 100), 1);
        }
        assert!(census.saturated());
        assert_eq!(census.held(0) + census.held(1), MAX_COUNTED_KEYS as u64);
        census.reset(3);
        assert_eq!((census.held(1), census.saturated()), (0, false));
    }

    #[test]
    fn parses_the_affinity_flag() {
        assert_eq!("none".parse::<AffinityKey>().unwrap(), AffinityKey::None);
        assert_eq!("agent".parse::<AffinityKey>().unwrap(), AffinityKey::Agent);
        let h: AffinityKey = "header:Trace-Id".parse().unwrap();
        assert_eq!(h.to_string(), "header:Trace-Id");
        let f: AffinityKey = "field:service".parse().unwrap();
        assert_eq!(f, AffinityKey::Field("service".into()));
        for bad in ["", "agents", "header:", "field:", "header:a b", "host:x"] {
            let e = bad.parse::<AffinityKey>().unwrap_err().to_string();
            assert!(e.contains("expected none, agent"), "{bad}: {e}");
        }
    }

    #[test]
    fn extracts_keys() {
        let mut headers = HeaderMap::new();
        headers.insert(logdist::protocol::headers::AGENT, "web-1");
        headers.insert("Trace-Id", "t-9");
        let payload = br#"[{"service":"api","n":1},{"service":"db"}]"#;
        let keys = |mode: &str| KeyExtractor::new(mode.parse().unwrap(), "logs.ingest");
        let agent = keys("agent");
        assert_eq!(
            agent.extract("logs.ingest.host-7", Some(&headers), payload),
            Some(KeyHash::of(b"web-1"))
        );
        assert_eq!(
            agent.extract("logs.ingest.host-7", None, payload),
            Some(KeyHash::of(b"host-7"))
        );
        // The bare ingest subject names no agent (the HTTP gateway publishes there).
        assert_eq!(agent.extract("logs.ingest", None, payload), None);
        let header = keys("header:Trace-Id");
        assert_eq!(
            header.extract("logs.ingest", Some(&headers), payload),
            Some(KeyHash::of(b"t-9"))
        );
        assert_eq!(header.extract("logs.ingest", None, payload), None);
        let field = |name: &str, payload: &[u8]| {
            keys(&format!("field:{name}")).extract("logs.ingest", None, payload)
        };
        assert_eq!(field("service", payload), Some(KeyHash::of(b"api")));
        assert_eq!(field("n", payload), Some(KeyHash::of(b"1")));
        assert_eq!(field("missing", payload), None);
        assert_eq!(
            field("service", br#"{"service":"a\u0062c"}"#),
            Some(KeyHash::of(b"abc"))
        );
        assert_eq!(field("service", br#"{"service":null}"#), None);
        assert_eq!(field("service", br#"{"service":{"x":1}}"#), None);
        assert_eq!(field("service", b"not json"), None);
        assert_eq!(
            keys("none").extract("logs.ingest.a", Some(&headers), payload),
            None
        );
    }

    #[test]
    fn goes_to_the_next_choice_only_when_the_first_is_full() {
        let (rule, mut selector) = rule(&[("a", 1.0), ("b", 1.0)], 0.0);
        let k = key(3);
        let ranking = rule.ranking(k);
        // While its first choice holds no more than its share (counting the packet), a packet
        // stays there: 0 ≤ ½·10, then 10 ≤ ½·20.
        for _ in 0..2 {
            let c = rule.choose(k, 10, &selector, &[]).unwrap();
            assert!(c.kept());
            selector.assign(c.index, 10);
        }
        // Now 20 > ½·30: the next packet goes to the second choice.
        let c = rule.choose(k, 10, &selector, &[]).unwrap();
        assert_eq!(c.index, ranking[1]);
        assert!(!c.kept());
        // The first is full and the second excluded: the selector's rule picks the first.
        let c = rule.choose(k, 10, &selector, &[ranking[1]]).unwrap();
        assert_eq!(c.index, ranking[0]);
    }

    fn weight() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(1.0),
            0.01f64..100.0,
            (-2.0f64..2.0).prop_map(|e| 10f64.powf(e)),
        ]
    }

    /// Keys with Zipf-like volumes (exponent `s`), packets drawn by volume.
    fn zipf_packets(keys: usize, s: f64, packets: usize, seed: u64) -> Vec<(usize, u64)> {
        let volumes: Vec<f64> = (1..=keys).map(|r| (r as f64).powf(-s)).collect();
        let total: f64 = volumes.iter().sum();
        let mut cumulative = Vec::with_capacity(keys);
        let mut acc = 0.0;
        for v in &volumes {
            acc += v / total;
            cumulative.push(acc);
        }
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fmix64(state)
        };
        (0..packets)
            .map(|_| {
                let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
                let key = cumulative.partition_point(|&c| c < u).min(keys - 1);
                (key, 1 + next() % 50)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The bound of the module docs, after every packet, for random weights, slack, key skew
        /// (uniform to very heavy heads), packet sizes and a share of keyless packets.
        #[test]
        fn excess_stays_within_the_bound(
            weights in prop::collection::vec(weight(), 1..7),
            slack in prop_oneof![Just(0.0), Just(0.01), 0.0f64..0.5],
            keys in 1usize..300,
            skew in 0.0f64..2.0,
            keyless_every in prop_oneof![Just(0usize), 2usize..10],
            seed in any::<u64>(),
        ) {
            let ids: Vec<String> = (0..weights.len()).map(|i| format!("an-{i}")).collect();
            let analyzers: Vec<(&str, f64)> =
                ids.iter().map(|s| s.as_str()).zip(weights.iter().copied()).collect();
            let (rule, mut selector) = rule(&analyzers, slack);
            let k = weights.len() as f64;
            let mut n_max = 0u64;
            for (step, (key, n)) in zipf_packets(keys, skew, 1500, seed).into_iter().enumerate() {
                n_max = n_max.max(n);
                let i = if keyless_every > 0 && step % keyless_every == 0 {
                    selector.choose(n, &[]).unwrap()
                } else {
                    rule.choose(self::key(key), n, &selector, &[]).unwrap().index
                };
                selector.assign(i, n);
                let t = selector.total() as f64;
                let rounding = 1e-9 * t + 1e-9;
                for i in 0..selector.len() {
                    let p = selector.target_share(i);
                    let e = selector.excess(i);
                    prop_assert!(e <= slack * p * t + n_max as f64 + rounding,
                        "excess {e} of {i} above ε·p·T + n_max");
                    prop_assert!(e >= -slack * (1.0 - p) * t - (k - 1.0) * n_max as f64 - rounding,
                        "excess {e} of {i} below the lower bound");
                }
            }
        }

        /// A join moves keys only to the newcomer, a leave only the leaver's keys, a weight
        /// change only to or from the analyzer whose weight changed.
        #[test]
        fn moves_only_the_keys_it_must(
            weights in prop::collection::vec(weight(), 2..7),
            new_weight in weight(),
        ) {
            let ids: Vec<String> = (0..weights.len()).map(|i| format!("an-{i}")).collect();
            let all: Vec<(&str, f64)> =
                ids.iter().map(|s| s.as_str()).zip(weights.iter().copied()).collect();
            let last = all.len() - 1;
            let (with, _) = rule(&all, 0.01);
            let (without, _) = rule(&all[..last], 0.01);
            let mut changed = all.clone();
            changed[0].1 = new_weight;
            let (reweighted, _) = rule(&changed, 0.01);
            for x in 0..500 {
                let before = without.first_choice(key(x)).unwrap();
                let after = with.first_choice(key(x)).unwrap();
                // Join of `last` (or, read backwards, its leave).
                prop_assert!(after == before || after == last);
                let original = with.first_choice(key(x)).unwrap();
                let now = reweighted.first_choice(key(x)).unwrap();
                prop_assert!(now == original || now == 0 || original == 0);
                if new_weight >= all[0].1 {
                    prop_assert!(now == original || now == 0);
                } else {
                    prop_assert!(now == original || original == 0);
                }
            }
        }

        /// Two instances built from the same analyzers in any order rank every key alike, and
        /// scaling all weights moves nothing.
        #[test]
        fn instances_agree(
            weights in prop::collection::vec(weight(), 1..7),
            scale in 0.01f64..100.0,
        ) {
            let ids: Vec<String> = (0..weights.len()).map(|i| format!("an-{i}")).collect();
            let all: Vec<(&str, f64)> =
                ids.iter().map(|s| s.as_str()).zip(weights.iter().copied()).collect();
            let reversed: Vec<(&str, f64)> = all.iter().rev().copied().collect();
            let scaled: Vec<(&str, f64)> = all.iter().map(|(id, w)| (*id, w * scale)).collect();
            let (a, _) = rule(&all, 0.01);
            let (b, _) = rule(&reversed, 0.01);
            let (c, _) = rule(&scaled, 0.01);
            let n = all.len();
            for x in 0..300 {
                let first = a.first_choice(key(x)).unwrap();
                prop_assert_eq!(ids[first].as_str(), reversed[b.first_choice(key(x)).unwrap()].0);
                prop_assert_eq!(a.ranking(key(x)), c.ranking(key(x)));
                prop_assert_eq!(a.ranking(key(x)).len(), n);
            }
        }
    }

    /// Keys split by weight: 30,000 keys over 0.5/0.3/0.2 land within 1.5 pp of each share
    /// (binomial σ ≈ 0.3 pp), and a fourth analyzer of weight 1/3 of the total takes close to
    /// a quarter of the keys, all from the others.
    #[test]
    fn keys_split_by_weight_and_a_join_moves_its_share() {
        let (three, _) = rule(&[("a", 0.5), ("b", 0.3), ("c", 0.2)], 0.01);
        let (four, _) = rule(
            &[("a", 0.5), ("b", 0.3), ("c", 0.2), ("d", 1.0 / 3.0)],
            0.01,
        );
        let n = 30_000;
        let mut counts = [0usize; 3];
        let mut moved = 0;
        for x in 0..n {
            let before = three.first_choice(key(x)).unwrap();
            counts[before] += 1;
            let after = four.first_choice(key(x)).unwrap();
            if after != before {
                assert_eq!(after, 3);
                moved += 1;
            }
        }
        for (i, target) in [0.5, 0.3, 0.2].into_iter().enumerate() {
            let share = counts[i] as f64 / n as f64;
            assert!((share - target).abs() < 0.015, "{i}: {share} vs {target}");
        }
        let moved = moved as f64 / n as f64;
        assert!((moved - 0.25).abs() < 0.015, "moved {moved}");
    }
}
