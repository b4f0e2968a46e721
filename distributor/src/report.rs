//! `distributor stats`: reads the membership and stats buckets, adds up the `distributor.*`
//! records of every replica, and prints one table (or JSON) of the routing shares.
//!
//! The *actual %* column is the share since the last membership change (the `epoch_messages` of
//! the replicas that are live, i.e. wrote within [`LIVE_WITHIN_MS`]), because that is what the
//! current targets promise; the all-time counts (of every replica that ever wrote) are shown too.
//! When a replica routes with `--affinity`, two more columns: the keys each analyzer holds (the
//! largest count among live replicas: each counts the keys it saw, and with several replicas
//! most keys reach all of them) and *kept %*, the share of its keys' packets that reached it
//! (all replicas, all-time).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use logdist::protocol::stats::{
    unix_millis_now, DistributorStats, MemberRecord, DISTRIBUTOR_KEY_PREFIX,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::StatsArgs;

/// A replica whose record is older than this is shown as not live and left out of the shares
/// since the last change (replicas write at least once a second).
pub const LIVE_WITHIN_MS: u64 = 5_000;

/// Everything `distributor stats` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub generated_at_ms: u64,
    pub replicas: Vec<ReplicaRow>,
    pub totals: Totals,
    pub analyzers: Vec<AnalyzerRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaRow {
    pub replica: String,
    pub delivery: String,
    pub live: bool,
    pub updated_at_ms: u64,
    pub received_packets: u64,
    pub routed_messages: u64,
    pub deadletter_packets: u64,
    pub held_packets: u64,
    pub messages_per_sec: f64,
    /// `--affinity` of the replica (`none` when it has none, or an older version wrote).
    pub affinity: String,
}

/// Sums over every replica (messages per second over live ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub received_packets: u64,
    pub received_messages: u64,
    pub routed_packets: u64,
    pub routed_messages: u64,
    pub deadletter_packets: u64,
    pub deadletter_messages: u64,
    pub held_packets: u64,
    pub held_overflow: u64,
    pub ingest_dropped_packets: u64,
    pub batches_sent: u64,
    pub batched_packets: u64,
    pub slow_consumer_events: u64,
    pub bad_heartbeats: u64,
    pub messages_per_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyzerRow {
    pub id: String,
    /// In the membership bucket now.
    pub online: bool,
    /// The effective weight routing uses (an operator's override, else the announced weight;
    /// 0 drained), as the newest live replica reports it.
    pub weight: f64,
    /// The weight the analyzer announces.
    pub announced_weight: f64,
    /// Effective weight over the sum of effective weights online, in percent (0 when offline).
    pub target_pct: f64,
    /// Share of the messages routed since the last membership change, in percent; `None`
    /// before any message was routed in this epoch.
    pub actual_pct: Option<f64>,
    /// `actual_pct − target_pct`, in percentage points.
    pub deviation_pp: Option<f64>,
    /// Messages routed to it since the last membership change (live replicas).
    pub messages: u64,
    /// Messages routed to it since each replica started (all replicas).
    pub total_messages: u64,
    /// With affinity: distinct keys whose first choice it is, this epoch (the largest count
    /// among live replicas).
    pub keys_held: Option<u64>,
    /// With affinity: of the packets whose key ranks it first, the share it got, in percent
    /// (all replicas, all-time); `None` before any.
    pub affinity_kept_pct: Option<f64>,
}

impl Report {
    /// Adds up the records. Pure, so it is unit-tested without NATS.
    pub fn build(
        members: &[MemberRecord],
        distributors: &[DistributorStats],
        now_ms: u64,
    ) -> Report {
        let live = |d: &DistributorStats| now_ms.saturating_sub(d.updated_at_ms) <= LIVE_WITHIN_MS;
        // Overrides live in the replicas: the newest live record says what routing uses.
        let newest_live = distributors
            .iter()
            .filter(|d| live(d))
            .max_by_key(|d| d.updated_at_ms);
        let effective = |m: &MemberRecord| {
            newest_live
                .and_then(|d| d.analyzers.get(&m.id))
                .filter(|r| r.online)
                .map_or(m.weight, |r| r.weight)
        };
        let weight_sum: f64 = members.iter().map(effective).sum();
        let mut ids: BTreeSet<&str> = members.iter().map(|m| m.id.as_str()).collect();
        for d in distributors {
            ids.extend(d.analyzers.keys().map(String::as_str));
        }
        let mut epoch: BTreeMap<&str, u64> = BTreeMap::new();
        let mut all_time: BTreeMap<&str, u64> = BTreeMap::new();
        // With affinity: keys held (max over live replicas), keyed and kept packets (sums).
        let mut keys: BTreeMap<&str, u64> = BTreeMap::new();
        let mut keyed: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let has_affinity = |d: &DistributorStats| !d.affinity.is_empty() && d.affinity != "none";
        for d in distributors {
            for (id, r) in &d.analyzers {
                *all_time.entry(id).or_default() += r.messages;
                if live(d) && r.online {
                    *epoch.entry(id).or_default() += r.epoch_messages;
                }
                if has_affinity(d) {
                    if live(d) && r.online {
                        let held = keys.entry(id).or_default();
                        *held = (*held).max(r.keys_held);
                    }
                    let k = keyed.entry(id).or_default();
                    k.0 += r.keyed_packets;
                    k.1 += r.kept_packets;
                }
            }
        }
        let any_affinity = distributors.iter().any(has_affinity);
        let epoch_total: u64 = epoch.values().sum();
        let analyzers = ids
            .into_iter()
            .map(|id| {
                let member = members.iter().find(|m| m.id == id);
                let weight = member.map_or(0.0, effective);
                let announced_weight = member.map_or(0.0, |m| m.weight);
                let target_pct = if weight_sum > 0.0 {
                    100.0 * weight / weight_sum
                } else {
                    0.0
                };
                let messages = epoch.get(id).copied().unwrap_or(0);
                let actual_pct =
                    (epoch_total > 0).then(|| 100.0 * messages as f64 / epoch_total as f64);
                AnalyzerRow {
                    id: id.to_string(),
                    online: member.is_some(),
                    weight,
                    announced_weight,
                    target_pct,
                    actual_pct,
                    deviation_pp: actual_pct.map(|a| a - target_pct),
                    messages,
                    total_messages: all_time.get(id).copied().unwrap_or(0),
                    keys_held: any_affinity.then(|| keys.get(id).copied().unwrap_or(0)),
                    affinity_kept_pct: keyed
                        .get(id)
                        .filter(|(keyed, _)| *keyed > 0)
                        .map(|(keyed, kept)| 100.0 * *kept as f64 / *keyed as f64),
                }
            })
            .collect();
        let mut totals = Totals::default();
        let mut replicas = Vec::new();
        for d in distributors {
            totals.received_packets += d.received_packets;
            totals.received_messages += d.received_messages;
            totals.routed_packets += d.routed_packets;
            totals.routed_messages += d.routed_messages;
            totals.deadletter_packets += d.deadletter_packets;
            totals.deadletter_messages += d.deadletter_messages;
            totals.held_packets += d.held_packets;
            totals.held_overflow += d.held_overflow;
            totals.ingest_dropped_packets += d.ingest_dropped_packets;
            totals.batches_sent += d.batches_sent;
            totals.batched_packets += d.batched_packets;
            totals.slow_consumer_events += d.slow_consumer_events;
            totals.bad_heartbeats += d.bad_heartbeats;
            if live(d) {
                totals.messages_per_sec += d.messages_per_sec;
            }
            replicas.push(ReplicaRow {
                replica: d.replica.clone(),
                delivery: d.delivery.clone(),
                live: live(d),
                updated_at_ms: d.updated_at_ms,
                received_packets: d.received_packets,
                routed_messages: d.routed_messages,
                deadletter_packets: d.deadletter_packets,
                held_packets: d.held_packets,
                messages_per_sec: d.messages_per_sec,
                affinity: if d.affinity.is_empty() {
                    "none".to_string()
                } else {
                    d.affinity.clone()
                },
            });
        }
        Report {
            generated_at_ms: now_ms,
            replicas,
            totals,
            analyzers,
        }
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let live = self.replicas.iter().filter(|r| r.live).count();
        let t = &self.totals;
        let _ = writeln!(
            out,
            "replicas: {} ({} live)   received: {} packets, {} messages   routed: {} messages   dead letters: {}   held: {}   rate: {:.0} msg/s",
            self.replicas.len(),
            live,
            t.received_packets,
            t.received_messages,
            t.routed_messages,
            t.deadletter_packets,
            t.held_packets,
            t.messages_per_sec
        );
        if t.batches_sent > 0 {
            let _ = writeln!(
                out,
                "batches: {} NATS messages carried {} packets ({:.1} packets per batch)",
                t.batches_sent,
                t.batched_packets,
                t.batched_packets as f64 / t.batches_sent as f64
            );
        }
        let affinity = self.analyzers.iter().any(|a| a.keys_held.is_some());
        let _ = write!(
            out,
            "{:<16} {:>6} {:>10} {:>10} {:>9} {:>9} {:>8} {:>14} {:>14}",
            "analyzer",
            "online",
            "announced",
            "effective",
            "target %",
            "actual %",
            "dev pp",
            "messages",
            "all-time"
        );
        if affinity {
            let _ = write!(out, " {:>9} {:>7}", "keys", "kept %");
        }
        out.push('\n');
        for a in &self.analyzers {
            let pct = |v: Option<f64>, signed: bool| match v {
                Some(v) if signed => format!("{v:+.3}"),
                Some(v) => format!("{v:.3}"),
                None => "-".to_string(),
            };
            let _ = write!(
                out,
                "{:<16} {:>6} {:>10} {:>10} {:>9.3} {:>9} {:>8} {:>14} {:>14}",
                a.id,
                if a.online { "yes" } else { "no" },
                if a.online {
                    format!("{}", a.announced_weight)
                } else {
                    "-".to_string()
                },
                if a.online {
                    format!("{}", a.weight)
                } else {
                    "-".to_string()
                },
                a.target_pct,
                pct(a.actual_pct, false),
                pct(a.deviation_pp, true),
                a.messages,
                a.total_messages
            );
            if affinity {
                let _ = write!(
                    out,
                    " {:>9} {:>7}",
                    a.keys_held.unwrap_or(0),
                    a.affinity_kept_pct
                        .map_or("-".to_string(), |k| format!("{k:.1}"))
                );
            }
            out.push('\n');
        }
        if self.analyzers.is_empty() {
            out.push_str("(no analyzers online and nothing routed yet)\n");
        }
        out
    }
}

/// Why `distributor stats` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Connect(#[from] logdist::ConnectError),
    #[error("cannot read KV bucket {bucket:?}: {detail}")]
    Read { bucket: String, detail: String },
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Runs `distributor stats`: one report, or one per `--interval` with `--watch` until `shutdown`.
pub async fn run(args: StatsArgs, shutdown: CancellationToken) -> Result<(), StatsError> {
    let connection = match logdist::connect(&args.nats, "distributor stats", &shutdown).await {
        Ok(c) => c,
        Err(logdist::ConnectError::Cancelled { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let js = jetstream::new(connection.client.clone());
    let clear = args.watch && !args.json && std::io::stdout().is_terminal();
    loop {
        let report = read_report(&js, &args).await?;
        let text = if args.json {
            serde_json::to_string(&report).expect("reports serialize") + "\n"
        } else {
            report.render()
        };
        {
            let mut stdout = std::io::stdout().lock();
            if clear {
                write!(stdout, "\x1b[2J\x1b[H")?;
            }
            stdout.write_all(text.as_bytes())?;
            if args.watch && !args.json && !clear {
                writeln!(stdout)?;
            }
            stdout.flush()?;
        }
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}

async fn read_report(js: &jetstream::Context, args: &StatsArgs) -> Result<Report, StatsError> {
    let members: Vec<MemberRecord> =
        read_bucket(js, &args.names.membership_bucket, |_| true).await?;
    let prefix = format!("{DISTRIBUTOR_KEY_PREFIX}.");
    let distributors: Vec<DistributorStats> =
        read_bucket(js, &args.names.stats_bucket, |key| key.starts_with(&prefix)).await?;
    Ok(Report::build(&members, &distributors, unix_millis_now()))
}

/// Decodes every value whose key passes `wanted`; a missing bucket reads as empty (nothing has
/// run yet), an undecodable value is skipped with a warning.
async fn read_bucket<T: serde::de::DeserializeOwned>(
    js: &jetstream::Context,
    bucket: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<T>, StatsError> {
    let err = |detail: String| StatsError::Read {
        bucket: bucket.to_string(),
        detail,
    };
    let store: kv::Store = match js.get_key_value(bucket).await {
        Ok(store) => store,
        Err(e) => {
            tracing::debug!(bucket, error = %e, "bucket not readable; treating as empty");
            return Ok(Vec::new());
        }
    };
    let mut keys = store.keys().await.map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| err(e.to_string()))?;
        if !wanted(&key) {
            continue;
        }
        if let Some(value) = store.get(&key).await.map_err(|e| err(e.to_string()))? {
            match serde_json::from_slice(&value) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(bucket, key = %key, error = %e, "undecodable record; skipped")
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdist::protocol::stats::RouteStats;

    fn member(id: &str, weight: f64) -> MemberRecord {
        MemberRecord {
            id: id.into(),
            weight,
            instances: vec!["i".into()],
            interval_ms: 1000,
            since_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn replica(
        name: &str,
        updated_at_ms: u64,
        routes: &[(&str, bool, u64, u64)],
    ) -> DistributorStats {
        let mut d = DistributorStats {
            replica: name.into(),
            delivery: "at-most-once".into(),
            updated_at_ms,
            received_packets: 10,
            ..Default::default()
        };
        for &(id, online, messages, epoch_messages) in routes {
            d.routed_messages += messages;
            // The weights the members below announce, in force (no override).
            let weight = match id {
                "1" => 0.5,
                "2" => 0.3,
                "3" => 0.2,
                _ => 0.0,
            };
            d.analyzers.insert(
                id.into(),
                RouteStats {
                    online,
                    weight,
                    announced_weight: weight,
                    messages,
                    epoch_messages,
                    ..Default::default()
                },
            );
        }
        d
    }

    #[test]
    fn targets_follow_the_effective_weights_of_the_newest_live_replica() {
        let now = 100_000;
        let members = [member("1", 0.5), member("2", 0.3), member("3", 0.2)];
        let all = [("1", true, 0, 0), ("2", true, 0, 0), ("3", true, 0, 0)];
        let mut newest = replica("a", now, &all);
        newest.analyzers.get_mut("2").unwrap().weight = 0.0; // drained
        newest.analyzers.get_mut("3").unwrap().weight = 0.5; // raised
        let older = replica("b", now - 1000, &all);
        let r = Report::build(&members, &[older, newest], now);
        let row = |id: &str| r.analyzers.iter().find(|a| a.id == id).unwrap().clone();
        assert_eq!((row("2").announced_weight, row("2").weight), (0.3, 0.0));
        assert!((row("1").target_pct - 50.0).abs() < 1e-9);
        assert!((row("2").target_pct - 0.0).abs() < 1e-9);
        assert!((row("3").target_pct - 50.0).abs() < 1e-9);
        let text = r.render();
        let cells: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("3 "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(&cells[..5], ["3", "yes", "0.2", "0.5", "50.000"], "{text}");
    }

    #[test]
    fn sums_replicas_and_compares_with_targets() {
        let now = 100_000;
        let members = [member("1", 0.5), member("2", 0.3), member("3", 0.2)];
        let replicas = [
            replica(
                "a",
                now,
                &[
                    ("1", true, 600, 500),
                    ("2", true, 300, 300),
                    ("3", true, 200, 200),
                ],
            ),
            replica(
                "b",
                now - 1000,
                &[
                    ("1", true, 500, 500),
                    ("2", true, 300, 300),
                    ("3", true, 200, 200),
                    ("old", false, 50, 0),
                ],
            ),
            // A replica that stopped long ago: all-time counts only.
            replica("c", now - 60_000, &[("1", true, 70, 70)]),
        ];
        let r = Report::build(&members, &replicas, now);
        assert_eq!(r.replicas.iter().filter(|x| x.live).count(), 2);
        assert_eq!(r.totals.received_packets, 30);
        let row = |id: &str| r.analyzers.iter().find(|a| a.id == id).unwrap().clone();
        assert_eq!(row("1").messages, 1000);
        assert_eq!(row("1").total_messages, 1170);
        assert!((row("1").actual_pct.unwrap() - 50.0).abs() < 1e-9);
        assert!((row("2").target_pct - 30.0).abs() < 1e-9);
        assert!(row("3").deviation_pp.unwrap().abs() < 1e-9);
        let old = row("old");
        assert!(!old.online);
        assert_eq!((old.target_pct, old.total_messages), (0.0, 50));
        let text = r.render();
        assert!(text.contains("replicas: 3 (2 live)"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("1 ") && l.contains("50.000")),
            "{text}"
        );
    }

    #[test]
    fn affinity_columns_add_up_kept_and_take_the_largest_key_count() {
        let now = 100_000;
        let members = [member("1", 0.5), member("2", 0.5)];
        let mut replicas = [
            replica("a", now, &[("1", true, 60, 60), ("2", true, 40, 40)]),
            replica("b", now, &[("1", true, 50, 50), ("2", true, 50, 50)]),
        ];
        for (d, held) in replicas.iter_mut().zip([7, 9]) {
            d.affinity = "agent".into();
            for r in d.analyzers.values_mut() {
                r.keys_held = held;
                r.keyed_packets = 10;
                r.kept_packets = 9;
            }
        }
        let r = Report::build(&members, &replicas, now);
        let one = r.analyzers.iter().find(|a| a.id == "1").unwrap();
        assert_eq!(one.keys_held, Some(9));
        assert!((one.affinity_kept_pct.unwrap() - 90.0).abs() < 1e-9);
        assert_eq!(r.replicas[0].affinity, "agent");
        let text = r.render();
        assert!(text.lines().next().is_some(), "{text}");
        assert!(text.contains("kept %"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("1 ") && l.ends_with("9    90.0")),
            "{text}"
        );
        // Without affinity, no such columns.
        let plain = Report::build(&members, &[replica("a", now, &[("1", true, 1, 1)])], now);
        assert!(plain.analyzers.iter().all(|a| a.keys_held.is_none()));
        assert!(!plain.render().contains("kept %"));
    }

    #[test]
    fn empty_buckets_render_a_note() {
        let r = Report::build(&[], &[], 0);
        assert!(r.analyzers.is_empty());
        assert!(r.render().contains("no analyzers online"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["analyzers"], serde_json::json!([]));
    }

    #[test]
    fn no_traffic_yet_has_no_actual_share() {
        let r = Report::build(&[member("1", 1.0)], &[], 0);
        assert_eq!(r.analyzers[0].actual_pct, None);
        assert_eq!(r.analyzers[0].target_pct, 100.0);
        assert!(r.render().contains(" - "));
    }
}
