//! [`Membership`]: which analyzers are online now and with which weight, from the heartbeats and
//! withdrawals on the control subject.
//!
//! Pure synchronous logic: time is passed in as an [`Instant`], so every timing rule is unit
//! tested without NATS or sleeping. The event loop feeds it control messages and expiry ticks and
//! acts on the [`MembershipEvent`]s it returns (restart the selector's epoch, mirror to the
//! `analyzers` KV bucket, log).
//!
//! Rules (see `docs/protocol.md`):
//! - An analyzer id has one or more *instances*; it is online while at least one instance is.
//! - An instance is alive until `factor × its interval_ms` passes without a heartbeat from it
//!   (`--heartbeat-timeout-factor`, default 3); a withdrawal removes it at once.
//! - When instances of one id announce different weights, the weight of the *newest* instance
//!   (the one first seen last) wins, with a warning. "First seen", not "last heard", so the weight
//!   does not flap with every heartbeat.
//! - Analyzers read from the KV bucket at start are *provisional*: routed to at once, but dropped
//!   unless a heartbeat confirms them within the timeout.
//! - A control message on analyzer `<id>`'s own subject (`<control>.<id>`) must be about `<id>`:
//!   one about another id is refused and counted, so an analyzer can speak only for itself.
//!   Messages from the old shared subject (read only with `--legacy-control-subject`) carry no
//!   such proof and are taken at their word.
//! - A heartbeat whose weight is over the operator's cap (`--max-weight`) is refused whole, like
//!   an invalid one: it changes nothing (not even the instance's deadline) and is counted in
//!   `bad_heartbeats`, so no analyzer can claim nearly all traffic, by mistake or on purpose.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use logdist::protocol::control::{ControlError, ControlMessage, Heartbeat, Withdraw, MAX_WEIGHT};
use logdist::protocol::stats::{unix_millis_now, MemberRecord};

/// Default `--heartbeat-timeout-factor`.
pub const DEFAULT_TIMEOUT_FACTOR: u32 = 3;

/// Why a control message was refused (and counted in `bad_heartbeats`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// It breaks the wire contract (`logdist::control`).
    #[error(transparent)]
    Invalid(#[from] ControlError),
    /// A message about analyzer `id` on the control subject of analyzer `speaker`.
    #[error("a control message about analyzer {id:?} came on the control subject of analyzer {speaker:?}; an analyzer speaks only for itself")]
    IdMismatch { id: String, speaker: String },
    /// A valid weight, but over this distributor's `--max-weight`.
    #[error("analyzer {id:?} announces weight {weight}, over the cap of this distributor (--max-weight {cap}); heartbeat refused")]
    OverWeightCap { id: String, weight: f64, cap: f64 },
}

impl Refusal {
    /// Stable short name for logs and counters.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid(e) => e.code(),
            Refusal::IdMismatch { .. } => "id_mismatch",
            Refusal::OverWeightCap { .. } => "over_weight_cap",
        }
    }
}

/// A change the event loop must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum MembershipEvent {
    /// The analyzer came online (its first instance heartbeated).
    Joined { id: String, weight: f64 },
    /// The weight in force changed (a new instance or a new announcement).
    WeightChanged { id: String, from: f64, to: f64 },
    /// The set of instances changed but not the weight: only the KV record is affected.
    InstancesChanged { id: String },
    /// The analyzer went offline: its last instance withdrew or timed out.
    Left { id: String, reason: LeaveReason },
    /// Instances of one id announce different weights; `chosen` (the newest's) is in force.
    WeightConflict {
        id: String,
        chosen: f64,
        chosen_instance: String,
        other: f64,
        other_instance: String,
    },
}

impl MembershipEvent {
    /// True for the events that change routing (and so start a new selector epoch).
    pub fn changes_routing(&self) -> bool {
        matches!(
            self,
            MembershipEvent::Joined { .. }
                | MembershipEvent::WeightChanged { .. }
                | MembershipEvent::Left { .. }
        )
    }
}

/// Why an analyzer left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Withdrawn,
    TimedOut,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Withdrawn => "withdrawn",
            LeaveReason::TimedOut => "heartbeat timeout",
        }
    }
}

#[derive(Debug, Clone)]
struct Instance {
    weight: f64,
    interval_ms: u64,
    /// Order of first sight; larger is newer. A counter rather than an `Instant` so ties cannot
    /// happen.
    first_seen: u64,
    deadline: Instant,
    /// Seeded from the KV bucket and not yet confirmed by a heartbeat.
    provisional: bool,
    /// The batch format version it reads (`batch` in its heartbeats; 0 until one says).
    batch: u32,
}

#[derive(Debug, Clone)]
struct Analyzer {
    instances: BTreeMap<String, Instance>,
    /// Weight in force (the newest instance's).
    weight: f64,
    since_ms: u64,
}

impl Analyzer {
    fn newest(&self) -> (&String, &Instance) {
        self.instances
            .iter()
            .max_by_key(|(_, i)| i.first_seen)
            .expect("an analyzer in the table has at least one instance")
    }
}

/// Analyzers online now; see the module docs.
#[derive(Debug)]
pub struct Membership {
    factor: u32,
    max_weight: f64,
    analyzers: BTreeMap<String, Analyzer>,
    next_seen: u64,
    bad_heartbeats: u64,
}

impl Membership {
    /// An empty table; instances time out after `factor ×` their announced interval. Weights are
    /// capped at the protocol's [`MAX_WEIGHT`] until [`with_max_weight`](Self::with_max_weight).
    pub fn new(factor: u32) -> Self {
        Membership {
            factor: factor.max(1),
            max_weight: MAX_WEIGHT,
            analyzers: BTreeMap::new(),
            next_seen: 0,
            bad_heartbeats: 0,
        }
    }

    /// Refuses heartbeats (and skips bucket records) announcing more than `cap` (clamped to
    /// `(0, MAX_WEIGHT]`; the CLI checks the flag).
    pub fn with_max_weight(mut self, cap: f64) -> Self {
        if cap.is_finite() && cap > 0.0 {
            self.max_weight = cap.min(MAX_WEIGHT);
        }
        self
    }

    /// The weight cap in force.
    pub fn max_weight(&self) -> f64 {
        self.max_weight
    }

    fn timeout(&self, interval_ms: u64) -> Duration {
        Duration::from_millis(interval_ms.saturating_mul(u64::from(self.factor)))
    }

    /// Whether analyzer `id` reads batches of format `version`: every instance of it announced
    /// that version or a later one (a queue group hands a message to any of them).
    pub fn reads_batches(&self, id: &str, version: u32) -> bool {
        self.analyzers
            .get(id)
            .is_some_and(|a| a.instances.values().all(|i| i.batch >= version))
    }

    /// Control messages rejected so far.
    pub fn bad_heartbeats(&self) -> u64 {
        self.bad_heartbeats
    }

    /// Adds the analyzers of the KV bucket as provisional members, so a starting replica routes at
    /// once. Each expires `factor × interval_ms` from `now` unless a heartbeat confirms it.
    /// Returns a `Joined` event per new analyzer. Records that fail validation are skipped.
    pub fn seed(&mut self, records: &[MemberRecord], now: Instant) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        for record in records {
            let valid = logdist::protocol::control::validate_name("id", &record.id).is_ok()
                && logdist::protocol::control::validate_weight(record.weight).is_ok()
                && record.weight <= self.max_weight
                && (logdist::protocol::control::MIN_INTERVAL_MS
                    ..=logdist::protocol::control::MAX_INTERVAL_MS)
                    .contains(&record.interval_ms)
                && !record.instances.is_empty()
                && record
                    .instances
                    .iter()
                    .all(|i| logdist::protocol::control::validate_name("instance", i).is_ok());
            if !valid || self.analyzers.contains_key(&record.id) {
                continue;
            }
            let deadline = now + self.timeout(record.interval_ms);
            let mut instances = BTreeMap::new();
            for name in &record.instances {
                self.next_seen += 1;
                instances.insert(
                    name.clone(),
                    Instance {
                        weight: record.weight,
                        interval_ms: record.interval_ms,
                        first_seen: self.next_seen,
                        deadline,
                        provisional: true,
                        batch: 0,
                    },
                );
            }
            self.analyzers.insert(
                record.id.clone(),
                Analyzer {
                    instances,
                    weight: record.weight,
                    since_ms: record.since_ms,
                },
            );
            events.push(MembershipEvent::Joined {
                id: record.id.clone(),
                weight: record.weight,
            });
        }
        events
    }

    /// Parses and validates one control payload, checks that it is about `speaker` (the id of
    /// the analyzer control subject it came on; `None` for the old shared subject) and within
    /// the weight cap, for [`apply`](Self::apply). A refused payload is counted in
    /// [`bad_heartbeats`](Self::bad_heartbeats) and returned as the error.
    pub fn parse_payload(
        &mut self,
        speaker: Option<&str>,
        payload: &[u8],
    ) -> Result<ControlMessage, Refusal> {
        self.check(speaker, payload)
            .inspect_err(|_| self.bad_heartbeats += 1)
    }

    fn check(&self, speaker: Option<&str>, payload: &[u8]) -> Result<ControlMessage, Refusal> {
        let message = ControlMessage::parse(payload)?;
        if let Some(speaker) = speaker {
            if message.id() != speaker {
                return Err(Refusal::IdMismatch {
                    id: message.id().to_string(),
                    speaker: speaker.to_string(),
                });
            }
        }
        if let ControlMessage::Up(hb) = &message {
            if hb.weight > self.max_weight {
                return Err(Refusal::OverWeightCap {
                    id: hb.id.clone(),
                    weight: hb.weight,
                    cap: self.max_weight,
                });
            }
        }
        Ok(message)
    }

    /// Applies one valid control message.
    pub fn apply(&mut self, message: ControlMessage, now: Instant) -> Vec<MembershipEvent> {
        match message {
            ControlMessage::Up(hb) => self.heartbeat(hb, now),
            ControlMessage::Down(w) => self.withdraw(w),
        }
    }

    fn heartbeat(&mut self, hb: Heartbeat, now: Instant) -> Vec<MembershipEvent> {
        let deadline = now + self.timeout(hb.interval_ms);
        let Some(analyzer) = self.analyzers.get_mut(&hb.id) else {
            self.next_seen += 1;
            let mut instances = BTreeMap::new();
            instances.insert(
                hb.instance,
                Instance {
                    weight: hb.weight,
                    interval_ms: hb.interval_ms,
                    first_seen: self.next_seen,
                    deadline,
                    provisional: false,
                    batch: hb.batch,
                },
            );
            self.analyzers.insert(
                hb.id.clone(),
                Analyzer {
                    instances,
                    weight: hb.weight,
                    since_ms: unix_millis_now(),
                },
            );
            return vec![MembershipEvent::Joined {
                id: hb.id,
                weight: hb.weight,
            }];
        };
        let mut events = Vec::new();
        let announced_changed;
        match analyzer.instances.get_mut(&hb.instance) {
            Some(instance) => {
                announced_changed = instance.weight != hb.weight;
                instance.weight = hb.weight;
                instance.interval_ms = hb.interval_ms;
                instance.deadline = deadline;
                instance.provisional = false;
                instance.batch = hb.batch;
            }
            None => {
                announced_changed = true;
                self.next_seen += 1;
                analyzer.instances.insert(
                    hb.instance.clone(),
                    Instance {
                        weight: hb.weight,
                        interval_ms: hb.interval_ms,
                        first_seen: self.next_seen,
                        deadline,
                        provisional: false,
                        batch: hb.batch,
                    },
                );
                events.push(MembershipEvent::InstancesChanged { id: hb.id.clone() });
            }
        }
        if announced_changed {
            events.extend(Self::refresh_weight(&hb.id, analyzer));
        }
        events
    }

    /// Recomputes the weight in force after an instance set or announcement change: the
    /// `WeightChanged` event if it moved, and a `WeightConflict` if instances disagree.
    fn refresh_weight(id: &str, analyzer: &mut Analyzer) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        let (newest_name, newest) = analyzer.newest();
        let (newest_name, weight) = (newest_name.clone(), newest.weight);
        if let Some((other_name, other)) =
            analyzer.instances.iter().find(|(_, i)| i.weight != weight)
        {
            events.push(MembershipEvent::WeightConflict {
                id: id.to_string(),
                chosen: weight,
                chosen_instance: newest_name,
                other: other.weight,
                other_instance: other_name.clone(),
            });
        }
        if weight != analyzer.weight {
            let from = analyzer.weight;
            analyzer.weight = weight;
            // Put the routing change first: it is what the event loop acts on.
            events.insert(
                0,
                MembershipEvent::WeightChanged {
                    id: id.to_string(),
                    from,
                    to: weight,
                },
            );
        }
        events
    }

    fn withdraw(&mut self, w: Withdraw) -> Vec<MembershipEvent> {
        let Some(analyzer) = self.analyzers.get_mut(&w.id) else {
            return Vec::new();
        };
        if analyzer.instances.remove(&w.instance).is_none() {
            return Vec::new();
        }
        if analyzer.instances.is_empty() {
            self.analyzers.remove(&w.id);
            return vec![MembershipEvent::Left {
                id: w.id,
                reason: LeaveReason::Withdrawn,
            }];
        }
        let mut events = vec![MembershipEvent::InstancesChanged { id: w.id.clone() }];
        events.extend(Self::refresh_weight(&w.id, analyzer));
        events
    }

    /// Drops every instance whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        let mut gone = Vec::new();
        for (id, analyzer) in self.analyzers.iter_mut() {
            let before = analyzer.instances.len();
            analyzer.instances.retain(|_, i| i.deadline > now);
            if analyzer.instances.is_empty() {
                gone.push(id.clone());
            } else if analyzer.instances.len() != before {
                events.push(MembershipEvent::InstancesChanged { id: id.clone() });
                events.extend(Self::refresh_weight(id, analyzer));
            }
        }
        for id in gone {
            self.analyzers.remove(&id);
            events.push(MembershipEvent::Left {
                id,
                reason: LeaveReason::TimedOut,
            });
        }
        events
    }

    /// The earliest instance deadline, for the expiry timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.analyzers
            .values()
            .flat_map(|a| a.instances.values().map(|i| i.deadline))
            .min()
    }

    /// Online analyzers and their weights in force, by id (a stable order for the selector).
    pub fn online(&self) -> impl Iterator<Item = (&str, f64)> {
        self.analyzers.iter().map(|(id, a)| (id.as_str(), a.weight))
    }

    pub fn is_online(&self, id: &str) -> bool {
        self.analyzers.contains_key(id)
    }

    /// Number of analyzers online.
    pub fn len(&self) -> usize {
        self.analyzers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.analyzers.is_empty()
    }

    /// True while analyzer `id` is known only from the KV bucket (no heartbeat yet).
    pub fn is_provisional(&self, id: &str) -> bool {
        self.analyzers
            .get(id)
            .is_some_and(|a| a.instances.values().all(|i| i.provisional))
    }

    /// The KV `analyzers` record of an online analyzer.
    pub fn record(&self, id: &str) -> Option<MemberRecord> {
        let analyzer = self.analyzers.get(id)?;
        let (_, newest) = analyzer.newest();
        Some(MemberRecord {
            id: id.to_string(),
            weight: analyzer.weight,
            instances: analyzer.instances.keys().cloned().collect(),
            interval_ms: newest.interval_ms,
            since_ms: analyzer.since_ms,
            updated_at_ms: unix_millis_now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: &str, instance: &str, weight: f64, interval_ms: u64) -> ControlMessage {
        ControlMessage::Up(Heartbeat {
            id: id.into(),
            weight,
            instance: instance.into(),
            interval_ms,
            batch: 0,
        })
    }

    fn down(id: &str, instance: &str) -> ControlMessage {
        ControlMessage::Down(Withdraw {
            id: id.into(),
            instance: instance.into(),
        })
    }

    fn online(m: &Membership) -> Vec<(String, f64)> {
        m.online().map(|(id, w)| (id.to_string(), w)).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_heartbeat_joins_and_repeats_change_nothing() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        assert_eq!(
            m.apply(up("1", "a", 0.5, 100), t0),
            vec![MembershipEvent::Joined {
                id: "1".into(),
                weight: 0.5
            }]
        );
        assert!(m.apply(up("1", "a", 0.5, 100), t0 + ms(100)).is_empty());
        assert_eq!(online(&m), vec![("1".to_string(), 0.5)]);
    }

    #[test]
    fn silent_instance_times_out_after_factor_times_interval() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        m.apply(up("1", "a", 1.0, 100), t0);
        assert_eq!(m.next_deadline(), Some(t0 + ms(300)));
        assert!(m.expire(t0 + ms(299)).is_empty());
        // A heartbeat pushes the deadline.
        m.apply(up("1", "a", 1.0, 100), t0 + ms(250));
        assert!(m.expire(t0 + ms(500)).is_empty());
        assert_eq!(
            m.expire(t0 + ms(550)),
            vec![MembershipEvent::Left {
                id: "1".into(),
                reason: LeaveReason::TimedOut
            }]
        );
        assert!(m.is_empty());
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn withdraw_removes_the_instance_at_once() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        m.apply(up("1", "a", 1.0, 1000), t0);
        m.apply(up("1", "b", 1.0, 1000), t0);
        assert_eq!(
            m.apply(down("1", "a"), t0),
            vec![MembershipEvent::InstancesChanged { id: "1".into() }]
        );
        assert!(m.is_online("1"));
        assert_eq!(
            m.apply(down("1", "b"), t0),
            vec![MembershipEvent::Left {
                id: "1".into(),
                reason: LeaveReason::Withdrawn
            }]
        );
        assert!(!m.is_online("1"));
        // Withdrawing an unknown instance is harmless.
        assert!(m.apply(down("1", "b"), t0).is_empty());
    }

    #[test]
    fn newest_instance_weight_wins_and_does_not_flap() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        m.apply(up("1", "old", 0.5, 100), t0);
        let events = m.apply(up("1", "new", 0.8, 100), t0 + ms(10));
        assert!(events.contains(&MembershipEvent::WeightChanged {
            id: "1".into(),
            from: 0.5,
            to: 0.8
        }));
        assert!(events.iter().any(
            |e| matches!(e, MembershipEvent::WeightConflict { chosen, .. } if *chosen == 0.8)
        ));
        // The old instance keeps heartbeating its weight: no change, no new warning.
        assert!(m.apply(up("1", "old", 0.5, 100), t0 + ms(20)).is_empty());
        assert!(m.apply(up("1", "new", 0.8, 100), t0 + ms(30)).is_empty());
        assert_eq!(online(&m), vec![("1".to_string(), 0.8)]);
        // The newest withdraws: the older one's weight takes over.
        let events = m.apply(down("1", "new"), t0 + ms(40));
        assert!(events.contains(&MembershipEvent::WeightChanged {
            id: "1".into(),
            from: 0.8,
            to: 0.5
        }));
    }

    #[test]
    fn an_instance_can_change_its_own_weight() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        m.apply(up("1", "a", 0.5, 100), t0);
        assert_eq!(
            m.apply(up("1", "a", 0.7, 100), t0),
            vec![MembershipEvent::WeightChanged {
                id: "1".into(),
                from: 0.5,
                to: 0.7
            }]
        );
    }

    #[test]
    fn bad_payloads_are_counted_and_change_nothing() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        for payload in [
            &br#"{"id":"1","weight":0,"instance":"a","state":"up","interval_ms":100}"#[..],
            br#"{"id":"1","weight":-1,"instance":"a","state":"up","interval_ms":100}"#,
            br#"{"id":"a.b","weight":1,"instance":"a","state":"up","interval_ms":100}"#,
            br#"{"id":"1","weight":1,"instance":"a","state":"up","interval_ms":1}"#,
            b"not json",
        ] {
            assert!(m.parse_payload(Some("1"), payload).is_err());
        }
        assert_eq!(m.bad_heartbeats(), 5);
        assert!(m.is_empty());
        let ok = br#"{"id":"1","weight":1,"instance":"a","state":"up","interval_ms":100}"#;
        let message = m.parse_payload(Some("1"), ok).unwrap();
        assert_eq!(m.apply(message, t0).len(), 1);
        assert_eq!(m.bad_heartbeats(), 5);
    }

    #[test]
    fn a_heartbeat_over_the_cap_is_refused_with_its_reason_and_changes_nothing() {
        let t0 = Instant::now();
        let mut m = Membership::new(3).with_max_weight(10.0);
        assert_eq!(m.max_weight(), 10.0);
        let at_cap = br#"{"id":"1","weight":10,"instance":"a","state":"up","interval_ms":100}"#;
        let message = m.parse_payload(Some("1"), at_cap).unwrap();
        m.apply(message, t0);
        let over = br#"{"id":"1","weight":10.5,"instance":"a","state":"up","interval_ms":100}"#;
        let refusal = m.parse_payload(Some("1"), over).unwrap_err();
        assert_eq!(refusal.code(), "over_weight_cap");
        assert_eq!(
            refusal.to_string(),
            r#"analyzer "1" announces weight 10.5, over the cap of this distributor (--max-weight 10); heartbeat refused"#
        );
        assert_eq!(m.bad_heartbeats(), 1);
        assert_eq!(online(&m), vec![("1".to_string(), 10.0)]);
        // Refused whole: it does not keep the instance alive either.
        assert_eq!(m.expire(t0 + ms(300)).len(), 1);
        // A withdrawal carries no weight and is never capped.
        let down = br#"{"id":"1","instance":"a","state":"down"}"#;
        assert!(m.parse_payload(Some("1"), down).is_ok());
        // Contract violations keep their own codes; the cap never exceeds the protocol's.
        let huge = br#"{"id":"1","weight":2e6,"instance":"a","state":"up","interval_ms":100}"#;
        assert_eq!(
            m.parse_payload(Some("1"), huge).unwrap_err().code(),
            "bad_weight"
        );
        assert_eq!(
            Membership::new(3).with_max_weight(1e9).max_weight(),
            MAX_WEIGHT
        );
        assert_eq!(
            Membership::new(3).with_max_weight(f64::NAN).max_weight(),
            MAX_WEIGHT
        );
    }

    #[test]
    fn an_analyzer_speaks_only_for_itself_on_its_subject() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        let two = br#"{"id":"2","weight":1,"instance":"b","state":"up","interval_ms":100}"#;
        let message = m.parse_payload(Some("2"), two).unwrap();
        m.apply(message, t0);
        // Analyzer 1 announcing or withdrawing analyzer 2, or a new id, on its own subject.
        let forged: [&[u8]; 3] = [
            br#"{"id":"2","weight":9,"instance":"x","state":"up","interval_ms":100}"#,
            br#"{"id":"2","instance":"b","state":"down"}"#,
            br#"{"id":"3","weight":1,"instance":"x","state":"up","interval_ms":100}"#,
        ];
        for payload in forged {
            let refusal = m.parse_payload(Some("1"), payload).unwrap_err();
            assert_eq!(refusal.code(), "id_mismatch");
        }
        assert_eq!(
            m.parse_payload(Some("1"), forged[0])
                .unwrap_err()
                .to_string(),
            r#"a control message about analyzer "2" came on the control subject of analyzer "1"; an analyzer speaks only for itself"#
        );
        assert_eq!(m.bad_heartbeats(), 4);
        assert_eq!(online(&m), vec![("2".to_string(), 1.0)]);
        // The contract is checked first: an invalid message keeps its own code.
        let bad = br#"{"id":"a.b","weight":1,"instance":"x","state":"up","interval_ms":100}"#;
        assert_eq!(
            m.parse_payload(Some("1"), bad).unwrap_err().code(),
            "bad_name"
        );
        // The old shared subject carries no identity: taken at its word.
        assert!(m.parse_payload(None, forged[2]).is_ok());
    }

    #[test]
    fn bucket_records_over_the_cap_are_not_seeded() {
        let mut m = Membership::new(3).with_max_weight(1.0);
        let record = |id: &str, weight: f64| MemberRecord {
            id: id.into(),
            weight,
            instances: vec!["x".into()],
            interval_ms: 100,
            since_ms: 0,
            updated_at_ms: 0,
        };
        let events = m.seed(&[record("1", 1.0), record("2", 5.0)], Instant::now());
        assert_eq!(events.len(), 1);
        assert_eq!(online(&m), vec![("1".to_string(), 1.0)]);
    }

    #[test]
    fn seeded_members_are_provisional_until_confirmed() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        let record = |id: &str| MemberRecord {
            id: id.into(),
            weight: 0.3,
            instances: vec!["x".into()],
            interval_ms: 100,
            since_ms: 7,
            updated_at_ms: 8,
        };
        let events = m.seed(&[record("1"), record("2")], t0);
        assert_eq!(events.len(), 2);
        assert!(m.is_provisional("1"));
        // Analyzer 1 confirms; 2 never does.
        assert!(m.apply(up("1", "x", 0.3, 100), t0 + ms(50)).is_empty());
        assert!(!m.is_provisional("1"));
        let events = m.expire(t0 + ms(300));
        assert_eq!(
            events,
            vec![MembershipEvent::Left {
                id: "2".into(),
                reason: LeaveReason::TimedOut
            }]
        );
        assert_eq!(online(&m), vec![("1".to_string(), 0.3)]);
        assert_eq!(m.record("1").unwrap().since_ms, 7);
    }

    #[test]
    fn invalid_seed_records_are_skipped() {
        let mut m = Membership::new(3);
        let bad = MemberRecord {
            id: "1".into(),
            weight: f64::NAN,
            instances: vec!["x".into()],
            interval_ms: 100,
            since_ms: 0,
            updated_at_ms: 0,
        };
        assert!(m.seed(&[bad], Instant::now()).is_empty());
        assert!(m.is_empty());
    }

    #[test]
    fn record_lists_instances_and_newest_interval() {
        let t0 = Instant::now();
        let mut m = Membership::new(3);
        m.apply(up("1", "b", 0.5, 100), t0);
        m.apply(up("1", "a", 0.5, 200), t0);
        let r = m.record("1").unwrap();
        assert_eq!(r.instances, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r.interval_ms, 200);
        assert_eq!(r.weight, 0.5);
    }
}
