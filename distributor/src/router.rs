//! [`Router`]: the routing table of one replica. It maps the [`WeightedSelector`]'s indices to
//! analyzer ids and subjects, starts a new epoch on every membership change, and keeps the
//! per-analyzer counters (all-time and since the epoch) that the stats report.
//!
//! Synchronous and allocation-free per packet: [`route`](Router::route) is one O(k) choice and a
//! few counter increments, and hands back the pre-built subject to publish to.
//!
//! With key affinity ([`with_affinity`](Router::with_affinity)) a packet's key picks the analyzer
//! through the [`AffinityRule`] over the same selector counts, and the router counts, per
//! analyzer, the keyed packets whose key ranks it first, how many of them it got ("affinity
//! kept") and the distinct keys it holds this epoch ([`KeyCensus`]).
//!
//! An analyzer whose effective weight is 0 (an operator drained it, see
//! [`crate::weight_overrides`]) is online but *drained*: it stays in the stats with target share
//! 0 and keeps its counters, but it is not in the selector, so nothing new is routed to it. With
//! every analyzer drained the table [`is_empty`](Router::is_empty) and packets are held.
//!
//! At-least-once delivery counts only what analyzers acknowledged: [`reserve`](Router::reserve)
//! assigns a packet in the selector at once (so balancing sees packets in flight), then either
//! [`confirm`](Router::confirm) counts it in the route counters when the analyzer acknowledged,
//! or [`cancel`](Router::cancel) takes the assignment back when the delivery failed.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::Subject;
use logdist::protocol::stats::{unix_millis_now, RouteStats};

use crate::affinity::{AffinityRule, KeyCensus, KeyHash};
use crate::selector::WeightedSelector;

/// Counters of what one replica routed to one analyzer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteCounters {
    pub messages: u64,
    pub packets: u64,
    pub bytes: u64,
    pub epoch_messages: u64,
    pub epoch_packets: u64,
    /// With affinity: packets (delivered anywhere) whose key ranks this analyzer first.
    pub keyed_packets: u64,
    /// With affinity: of [`keyed_packets`](Self::keyed_packets), those delivered here.
    pub kept_packets: u64,
}

/// Where a packet goes: the analyzer's index and, for a packet with a key, its key's first
/// choice (to count affinity kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub first_choice: Option<usize>,
}

/// One analyzer online now and routed to.
#[derive(Debug, Clone)]
struct Route {
    id: Arc<str>,
    subject: Subject,
    /// The weight routing uses (the operator's override, else the announced weight).
    weight: f64,
    /// The weight the analyzer announces.
    announced: f64,
    counters: RouteCounters,
}

/// An analyzer online now but drained (effective weight 0).
#[derive(Debug, Clone, Copy, Default)]
struct Drained {
    announced: f64,
    counters: RouteCounters,
}

/// One online analyzer for [`Router::set_weights`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member<'a> {
    pub id: &'a str,
    /// The weight it announces.
    pub announced: f64,
    /// The weight routing uses: finite and >= 0; 0 drains it.
    pub effective: f64,
}

/// A packet assigned to an analyzer and not yet acknowledged (at-least-once delivery).
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The analyzer's id.
    pub id: Arc<str>,
    /// Where to send the packet.
    pub subject: Subject,
    index: usize,
    /// The key's first choice, for a packet with a key.
    first_choice: Option<(usize, Arc<str>)>,
    epoch: u64,
    messages: u64,
}

/// Routing table of one replica; see the module docs.
#[derive(Debug)]
pub struct Router {
    analyzer_prefix: String,
    selector: WeightedSelector,
    /// With `--affinity`: the rule, over the same analyzers in the same order as the selector.
    affinity: Option<AffinityRule>,
    /// Distinct keys this epoch by first choice (empty without affinity).
    census: KeyCensus,
    /// With affinity: packets that had no key (balanced by the selector alone).
    keyless_packets: u64,
    /// Online analyzers routed to, in the selector's index order (sorted by id).
    routes: Vec<Route>,
    /// Online analyzers drained to weight 0, by id.
    drained: BTreeMap<String, Drained>,
    /// All-time counters of analyzers that went offline (kept so stats still add up).
    departed: BTreeMap<String, RouteCounters>,
    epoch: u64,
    epoch_started_ms: u64,
    routed_messages: u64,
}

impl Router {
    /// An empty table; analyzer `<id>` is reached at `<analyzer_prefix>.<id>`.
    pub fn new(analyzer_prefix: &str) -> Self {
        Router {
            analyzer_prefix: analyzer_prefix.to_string(),
            selector: WeightedSelector::new(),
            affinity: None,
            census: KeyCensus::default(),
            keyless_packets: 0,
            routes: Vec::new(),
            drained: BTreeMap::new(),
            departed: BTreeMap::new(),
            epoch: 0,
            epoch_started_ms: unix_millis_now(),
            routed_messages: 0,
        }
    }

    /// The same table with key affinity of slack `ε` (see [`AffinityRule`]).
    pub fn with_affinity(mut self, slack: f64) -> Self {
        let mut rule = AffinityRule::new(slack);
        rule.set_analyzers(self.routes.iter().map(|r| (&*r.id, r.weight)));
        self.affinity = Some(rule);
        self
    }

    /// True when packets with a key are routed by affinity.
    pub fn has_affinity(&self) -> bool {
        self.affinity.is_some()
    }

    /// Replaces the online analyzers and their weights and starts a new epoch (shares restart,
    /// nobody is owed anything), each analyzer's announced weight being the one routed by.
    pub fn set_members<'a>(&mut self, members: impl IntoIterator<Item = (&'a str, f64)>) {
        self.set_weights(members.into_iter().map(|(id, weight)| Member {
            id,
            announced: weight,
            effective: weight,
        }));
    }

    /// Replaces the online analyzers and their announced and effective weights and starts a new
    /// epoch. Counters of analyzers that stay are kept; those of analyzers that left move to the
    /// departed table. Analyzers with effective weight 0 are drained (see the module docs).
    pub fn set_weights<'a>(&mut self, members: impl IntoIterator<Item = Member<'a>>) {
        let mut old: BTreeMap<String, RouteCounters> = self
            .routes
            .drain(..)
            .map(|r| (r.id.to_string(), r.counters))
            .chain(
                std::mem::take(&mut self.drained)
                    .into_iter()
                    .map(|(id, d)| (id, d.counters)),
            )
            .collect();
        for member in members {
            let mut counters = old
                .remove(member.id)
                .or_else(|| self.departed.remove(member.id))
                .unwrap_or_default();
            counters.epoch_messages = 0;
            counters.epoch_packets = 0;
            if member.effective > 0.0 {
                self.routes.push(Route {
                    id: Arc::from(member.id),
                    subject: Subject::from(format!("{}.{}", self.analyzer_prefix, member.id)),
                    weight: member.effective,
                    announced: member.announced,
                    counters,
                });
            } else {
                self.drained.insert(
                    member.id.to_string(),
                    Drained {
                        announced: member.announced,
                        counters,
                    },
                );
            }
        }
        // The selector's order is the routes' order: keep it sorted by id whatever the input.
        self.routes.sort_by(|a, b| a.id.cmp(&b.id));
        for (id, mut counters) in old {
            counters.epoch_messages = 0;
            counters.epoch_packets = 0;
            self.departed.insert(id, counters);
        }
        let weights: Vec<f64> = self.routes.iter().map(|r| r.weight).collect();
        self.selector.set_weights(&weights);
        if let Some(rule) = &mut self.affinity {
            rule.set_analyzers(self.routes.iter().map(|r| (&*r.id, r.weight)));
        }
        self.census.reset(self.routes.len());
        self.epoch += 1;
        self.epoch_started_ms = unix_millis_now();
    }

    /// True when no analyzer can take a packet: none online, or all drained (packets are held).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Picks the analyzer for a packet of `messages` messages and `bytes` bytes with key `key`
    /// (`None`: no key, or no affinity), counts it, and returns the analyzer's subject; `None`
    /// when no analyzer is online.
    #[inline]
    pub fn route(&mut self, key: Option<KeyHash>, messages: u64, bytes: usize) -> Option<&Subject> {
        let index = self.route_index(key, messages, bytes)?;
        Some(&self.routes[index].subject)
    }

    /// [`route`](Self::route), returning the analyzer's index in this epoch (see
    /// [`subject`](Self::subject), [`id`](Self::id)) instead of its subject.
    #[inline]
    pub fn route_index(
        &mut self,
        key: Option<KeyHash>,
        messages: u64,
        bytes: usize,
    ) -> Option<usize> {
        let pick = self.choose(key, messages, &[])?;
        self.selector.assign(pick.index, messages);
        self.count_key(key, pick.first_choice);
        if let Some(f) = pick.first_choice {
            let c = &mut self.routes[f].counters;
            c.keyed_packets += 1;
            c.kept_packets += u64::from(f == pick.index);
        }
        let route = &mut self.routes[pick.index];
        let c = &mut route.counters;
        c.messages += messages;
        c.packets += 1;
        c.bytes += bytes as u64;
        c.epoch_messages += messages;
        c.epoch_packets += 1;
        self.routed_messages += messages;
        Some(pick.index)
    }

    /// Analyzers routed to in this epoch (indices `0..len`).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Subject of the analyzer at index `i` in this epoch.
    pub fn subject(&self, i: usize) -> &Subject {
        &self.routes[i].subject
    }

    /// Counts a key (or its absence) seen while affinity is on.
    fn count_key(&mut self, key: Option<KeyHash>, first_choice: Option<usize>) {
        if self.affinity.is_none() {
            return;
        }
        match (key, first_choice) {
            (Some(key), Some(first)) => self.census.record(key, first),
            _ => self.keyless_packets += 1,
        }
    }

    /// Picks the analyzer for a packet of `messages` messages with key `key`, skipping the
    /// analyzers in `exclude` (ids that already failed this packet); when that leaves none, any
    /// analyzer online. Counts nothing: call [`reserve`](Self::reserve) with the result. `None`
    /// when none is online.
    pub fn choose(
        &self,
        key: Option<KeyHash>,
        messages: u64,
        exclude: &[Arc<str>],
    ) -> Option<Pick> {
        let excluded: Vec<usize> = exclude
            .iter()
            .filter_map(|id| self.routes.iter().position(|r| r.id == *id))
            .collect();
        let pick = |excluded: &[usize]| match (&self.affinity, key) {
            (Some(rule), Some(key)) => {
                rule.choose(key, messages, &self.selector, excluded)
                    .map(|c| Pick {
                        index: c.index,
                        first_choice: Some(c.first_choice),
                    })
            }
            _ => self.selector.choose(messages, excluded).map(|index| Pick {
                index,
                first_choice: None,
            }),
        };
        if !excluded.is_empty() {
            if let Some(p) = pick(&excluded) {
                return Some(p);
            }
        }
        pick(&[])
    }

    /// Id of the analyzer at index `i` (as returned by [`choose`](Self::choose)).
    pub fn id(&self, i: usize) -> &Arc<str> {
        &self.routes[i].id
    }

    /// Assigns a packet of `messages` messages with key `key` to the analyzer `pick` names in
    /// the selector (so the next choices account for it) without counting it as routed yet.
    pub fn reserve(&mut self, pick: Pick, key: Option<KeyHash>, messages: u64) -> Reservation {
        self.selector.assign(pick.index, messages);
        self.count_key(key, pick.first_choice);
        let route = &self.routes[pick.index];
        Reservation {
            id: route.id.clone(),
            subject: route.subject.clone(),
            index: pick.index,
            first_choice: pick.first_choice.map(|f| (f, self.routes[f].id.clone())),
            epoch: self.epoch,
            messages,
        }
    }

    /// Counters of an analyzer a reservation names, by index in its own epoch, else by id.
    fn counters_mut(
        &mut self,
        same_epoch: bool,
        index: usize,
        id: &str,
    ) -> Option<&mut RouteCounters> {
        if same_epoch {
            return Some(&mut self.routes[index].counters);
        }
        match self.routes.iter_mut().find(|r| &*r.id == id) {
            Some(route) => Some(&mut route.counters),
            None => match self.drained.get_mut(id) {
                Some(drained) => Some(&mut drained.counters),
                None => self.departed.get_mut(id),
            },
        }
    }

    /// The analyzer acknowledged a reserved packet of `bytes` bytes: count it as routed. Epoch
    /// counters count it only if it was reserved in the current epoch.
    pub fn confirm(&mut self, reservation: &Reservation, bytes: usize) {
        let same_epoch = reservation.epoch == self.epoch;
        let n = reservation.messages;
        if let Some(c) = self.counters_mut(same_epoch, reservation.index, &reservation.id) {
            c.messages += n;
            c.packets += 1;
            c.bytes += bytes as u64;
            if same_epoch {
                c.epoch_messages += n;
                c.epoch_packets += 1;
            }
        }
        if let Some((f, id)) = &reservation.first_choice {
            let kept = *id == reservation.id;
            if let Some(c) = self.counters_mut(same_epoch, *f, id) {
                c.keyed_packets += 1;
                c.kept_packets += u64::from(kept);
            }
        }
        self.routed_messages += n;
    }

    /// The delivery of a reserved packet failed: take its assignment back (only within the same
    /// epoch; a new epoch restarted the selector's counts anyway).
    pub fn cancel(&mut self, reservation: &Reservation) {
        if reservation.epoch == self.epoch {
            self.selector
                .revoke(reservation.index, reservation.messages);
        }
    }

    /// Membership changes applied since start.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the current epoch began, unix milliseconds.
    pub fn epoch_started_ms(&self) -> u64 {
        self.epoch_started_ms
    }

    /// Messages routed since start.
    pub fn routed_messages(&self) -> u64 {
        self.routed_messages
    }

    /// With affinity: packets routed without a key since start.
    pub fn keyless_packets(&self) -> u64 {
        self.keyless_packets
    }

    /// With affinity: more distinct keys came this epoch than the census counts.
    pub fn keys_saturated(&self) -> bool {
        self.census.saturated()
    }

    /// With affinity: distinct keys seen this epoch whose first choice is analyzer `id`, and
    /// whether the count stopped at [`KeyCensus`]'s limit.
    pub fn keys_held(&self, id: &str) -> Option<(u64, bool)> {
        let i = self.routes.iter().position(|r| &*r.id == id)?;
        Some((self.census.held(i), self.census.saturated()))
    }

    /// Counters of analyzer `id` (online, drained or departed).
    pub fn counters(&self, id: &str) -> Option<RouteCounters> {
        self.routes
            .iter()
            .find(|r| &*r.id == id)
            .map(|r| r.counters)
            .or_else(|| self.drained.get(id).map(|d| d.counters))
            .or_else(|| self.departed.get(id).copied())
    }

    /// The announced and effective weight of online analyzer `id` (effective 0: drained).
    pub fn weights(&self, id: &str) -> Option<(f64, f64)> {
        self.routes
            .iter()
            .find(|r| &*r.id == id)
            .map(|r| (r.announced, r.weight))
            .or_else(|| self.drained.get(id).map(|d| (d.announced, 0.0)))
    }

    /// Per-analyzer stats, by id: online analyzers with their target shares, and departed ones
    /// (offline, target 0) with their all-time counts.
    pub fn route_stats(&self) -> BTreeMap<String, RouteStats> {
        let total = self.routed_messages.max(1) as f64;
        // Counted messages, not the selector's assignments: with at-least-once delivery those
        // include packets still in flight.
        let epoch_total = self
            .routes
            .iter()
            .map(|r| r.counters.epoch_messages)
            .sum::<u64>()
            .max(1) as f64;
        // The fields every analyzer's record takes from its counters; an analyzer that left has
        // no epoch (its epoch counts are of an epoch that is over).
        let counted = |c: &RouteCounters, in_epoch: bool| RouteStats {
            messages: c.messages,
            packets: c.packets,
            bytes: c.bytes,
            actual_share: c.messages as f64 / total,
            epoch_messages: if in_epoch { c.epoch_messages } else { 0 },
            epoch_packets: if in_epoch { c.epoch_packets } else { 0 },
            epoch_share: if in_epoch {
                c.epoch_messages as f64 / epoch_total
            } else {
                0.0
            },
            keyed_packets: c.keyed_packets,
            kept_packets: c.kept_packets,
            affinity_kept: affinity_kept(c),
            ..RouteStats::default()
        };
        let mut out = BTreeMap::new();
        for (id, c) in &self.departed {
            out.insert(id.clone(), counted(c, false));
        }
        for (id, d) in &self.drained {
            out.insert(
                id.clone(),
                RouteStats {
                    online: true,
                    announced_weight: d.announced,
                    ..counted(&d.counters, true)
                },
            );
        }
        for (i, r) in self.routes.iter().enumerate() {
            out.insert(
                r.id.to_string(),
                RouteStats {
                    online: true,
                    weight: r.weight,
                    announced_weight: r.announced,
                    target_share: self.selector.target_share(i),
                    keys_held: self.census.held(i),
                    ..counted(&r.counters, true)
                },
            );
        }
        out
    }
}

/// `kept / keyed`, or `None` before any keyed packet.
fn affinity_kept(c: &RouteCounters) -> Option<f64> {
    (c.keyed_packets > 0).then(|| c.kept_packets as f64 / c.keyed_packets as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_prefixed_subjects_by_weight() {
        let mut r = Router::new("analyzer");
        assert!(r.route(None, 1, 10).is_none());
        r.set_members([("a", 3.0), ("b", 1.0)]);
        let mut hits = BTreeMap::new();
        for _ in 0..400 {
            let s = r.route(None, 1, 10).unwrap().to_string();
            *hits.entry(s).or_insert(0) += 1;
        }
        assert_eq!(hits["analyzer.a"], 300);
        assert_eq!(hits["analyzer.b"], 100);
        let stats = r.route_stats();
        assert_eq!(stats["a"].target_share, 0.75);
        assert_eq!(stats["a"].bytes, 3000);
        assert_eq!(stats["b"].epoch_share, 0.25);
    }

    #[test]
    fn departed_analyzers_keep_all_time_counts_and_epoch_restarts() {
        let mut r = Router::new("analyzer");
        r.set_members([("a", 1.0), ("b", 1.0)]);
        for _ in 0..10 {
            r.route(None, 5, 1);
        }
        assert_eq!(r.epoch(), 1);
        r.set_members([("b", 1.0)]);
        assert_eq!(r.epoch(), 2);
        let stats = r.route_stats();
        assert!(!stats["a"].online);
        assert_eq!(stats["a"].messages, 25);
        assert_eq!(stats["b"].epoch_messages, 0);
        r.route(None, 5, 1);
        assert_eq!(r.counters("b").unwrap().messages, 30);
        // a comes back: its all-time count resumes.
        r.set_members([("a", 1.0), ("b", 1.0)]);
        r.route(None, 5, 1);
        assert_eq!(r.counters("a").unwrap().messages, 30);
        assert_eq!(r.routed_messages(), 60);
    }

    fn member(id: &str, announced: f64, effective: f64) -> Member<'_> {
        Member {
            id,
            announced,
            effective,
        }
    }

    #[test]
    fn a_drained_analyzer_stays_online_and_receives_nothing() {
        let mut r = Router::new("analyzer");
        r.set_weights([member("a", 1.0, 1.0), member("b", 1.0, 1.0)]);
        for _ in 0..10 {
            r.route(None, 1, 1);
        }
        // b drained by an operator: a new epoch, everything goes to a.
        r.set_weights([member("a", 1.0, 1.0), member("b", 1.0, 0.0)]);
        assert_eq!(r.epoch(), 2);
        for _ in 0..10 {
            assert_eq!(r.route(None, 1, 1).unwrap().as_str(), "analyzer.a");
        }
        let stats = r.route_stats();
        assert!(stats["b"].online);
        assert_eq!((stats["b"].target_share, stats["b"].messages), (0.0, 5));
        assert_eq!(stats["a"].target_share, 1.0);
        assert_eq!(r.weights("b"), Some((1.0, 0.0)));
        // Every analyzer drained: nothing to route to, packets are held.
        r.set_weights([member("a", 1.0, 0.0), member("b", 1.0, 0.0)]);
        assert!(r.is_empty());
        assert!(r.route(None, 1, 1).is_none());
        // Back to the announced weights: counters resume where they were.
        r.set_weights([member("a", 1.0, 1.0), member("b", 1.0, 1.0)]);
        assert_eq!(r.counters("a").unwrap().messages, 15);
        assert_eq!(r.counters("b").unwrap().messages, 5);
        // An override only changes the effective weight.
        r.set_weights([member("a", 1.0, 3.0), member("b", 1.0, 1.0)]);
        assert_eq!(r.weights("a"), Some((1.0, 3.0)));
        assert_eq!(
            (
                r.route_stats()["a"].weight,
                r.route_stats()["a"].announced_weight
            ),
            (3.0, 1.0)
        );
        assert_eq!(r.route_stats()["a"].target_share, 0.75);
    }

    #[test]
    fn reservations_count_only_when_confirmed() {
        let mut r = Router::new("analyzer");
        r.set_members([("a", 1.0), ("b", 1.0)]);
        let i = r.choose(None, 10, &[]).unwrap();
        assert_eq!(&**r.id(i.index), "a");
        let first = r.reserve(i, None, 10);
        assert_eq!(first.subject.as_str(), "analyzer.a");
        // The reservation steers the next choice although nothing is counted yet.
        let j = r.choose(None, 10, &[]).unwrap();
        assert_eq!(&**r.id(j.index), "b");
        let second = r.reserve(j, None, 10);
        assert_eq!(r.routed_messages(), 0);
        r.confirm(&first, 100);
        assert_eq!(r.counters("a").unwrap().messages, 10);
        assert_eq!(r.counters("a").unwrap().bytes, 100);
        // b failed: its assignment is taken back, so b is chosen again, unless excluded.
        r.cancel(&second);
        assert_eq!(&**r.id(r.choose(None, 10, &[]).unwrap().index), "b");
        let b: Arc<str> = Arc::from("b");
        assert_eq!(
            &**r.id(r.choose(None, 10, std::slice::from_ref(&b)).unwrap().index),
            "a"
        );
        // Every analyzer excluded: any analyzer online rather than none.
        let a: Arc<str> = Arc::from("a");
        assert!(r.choose(None, 10, &[a, b]).is_some());
        assert_eq!(r.counters("b").unwrap().messages, 0);
        assert_eq!(r.route_stats()["a"].epoch_share, 1.0);
    }

    #[test]
    fn confirmation_after_an_epoch_change_counts_all_time_only() {
        let mut r = Router::new("analyzer");
        r.set_members([("a", 1.0), ("b", 1.0)]);
        let i = r.choose(None, 5, &[]).unwrap();
        let res = r.reserve(i, None, 5);
        r.set_members([("b", 1.0)]);
        r.cancel(&res); // other epoch: no effect on the new selector
        r.confirm(&res, 1);
        let c = r.counters("a").unwrap();
        assert_eq!((c.messages, c.epoch_messages), (5, 0));
        assert_eq!(r.routed_messages(), 5);
    }

    #[test]
    fn affinity_keeps_keys_on_their_first_choice_and_counts_it() {
        let mut r = Router::new("analyzer").with_affinity(0.01);
        r.set_members([("a", 0.5), ("b", 0.3), ("c", 0.2)]);
        let keys: Vec<KeyHash> = (0..300)
            .map(|i| KeyHash::of(format!("agent-{i}").as_bytes()))
            .collect();
        // Equal volumes per key: almost every packet stays on its key's first choice.
        for round in 0..20 {
            for k in &keys {
                r.route(Some(*k), 10, 100).unwrap();
            }
            if round == 0 {
                r.route(None, 10, 100).unwrap();
            }
        }
        let (mut keyed, mut kept, mut held) = (0, 0, 0);
        for id in ["a", "b", "c"] {
            let c = r.counters(id).unwrap();
            keyed += c.keyed_packets;
            kept += c.kept_packets;
            held += r.keys_held(id).unwrap().0;
        }
        assert_eq!(keyed, 300 * 20);
        assert_eq!(held, 300);
        assert_eq!(r.keyless_packets(), 1);
        assert!(kept as f64 >= 0.8 * keyed as f64, "kept {kept} of {keyed}");
        // Shares follow the weights within the bound.
        let stats = r.route_stats();
        for (id, target) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
            let share = stats[id].epoch_share;
            assert!(
                (share - target).abs() <= 0.01 * 0.8 + 0.001,
                "{id}: {share}"
            );
        }
        // A new epoch counts keys afresh.
        r.set_members([("a", 0.5), ("b", 0.3)]);
        assert_eq!(r.keys_held("a"), Some((0, false)));
    }

    #[test]
    fn keyed_reservations_count_affinity_when_confirmed() {
        let mut r = Router::new("analyzer").with_affinity(0.01);
        r.set_members([("a", 1.0), ("b", 1.0)]);
        let key = KeyHash::of(b"web-1");
        let pick = r.choose(Some(key), 10, &[]).unwrap();
        let first = pick.first_choice.unwrap();
        assert_eq!(pick.index, first);
        let res = r.reserve(pick, Some(key), 10);
        let first_id = r.id(first).clone();
        assert_eq!(r.counters(&first_id).unwrap().keyed_packets, 0);
        r.confirm(&res, 1);
        let c = r.counters(&first_id).unwrap();
        assert_eq!((c.keyed_packets, c.kept_packets), (1, 1));
        // Its first choice failed: the retry goes elsewhere and is not "kept".
        let pick = r
            .choose(Some(key), 10, std::slice::from_ref(&first_id))
            .unwrap();
        assert_ne!(pick.index, first);
        let res = r.reserve(pick, Some(key), 10);
        r.confirm(&res, 1);
        let c = r.counters(&first_id).unwrap();
        assert_eq!((c.keyed_packets, c.kept_packets), (2, 1));
        assert_eq!(r.keys_held(&first_id), Some((1, false)));
    }
}
