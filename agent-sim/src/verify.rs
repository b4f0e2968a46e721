//! `--verify`: what the pipeline did with what agent-sim sent, from the analyzers' own counters.
//!
//! Before sending, a baseline of the stats bucket is taken; after sending, agent-sim waits until
//! the pipeline is quiet (every valid message and dead letter accounted for, or no counter moved
//! for `--quiet-period`), takes a final snapshot, and compares the differences: per analyzer the
//! share received against the target share (its weight over the weights of the analyzers online),
//! the loss (valid sent − received) and the dead letters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use logdist::snapshot::StatsSnapshot;
use serde::Serialize;

use crate::sender::SendTotals;

/// The baseline or final state of the counters that verification compares.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// (analyzer id, instance) → (weight, messages, latency p50/p99 µs).
    analyzers: HashMap<(String, String), InstanceCounts>,
    /// replica → dead-lettered messages.
    deadletters: HashMap<String, u64>,
}

#[derive(Debug, Clone, Default)]
struct InstanceCounts {
    weight: f64,
    messages: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
}

impl Counts {
    pub fn from_snapshot(snapshot: &StatsSnapshot) -> Counts {
        let mut counts = Counts::default();
        for a in &snapshot.analyzers {
            counts.analyzers.insert(
                (a.id.clone(), a.instance.clone()),
                InstanceCounts {
                    weight: a.weight,
                    messages: a.messages,
                    p50_us: a.latency.as_ref().map(|l| l.p50_us),
                    p99_us: a.latency.as_ref().map(|l| l.p99_us),
                },
            );
        }
        for d in &snapshot.distributors {
            counts
                .deadletters
                .insert(d.replica.clone(), d.deadletter_messages);
        }
        counts
    }

    /// Messages received by analyzers since `baseline`.
    fn received_since(&self, baseline: &Counts) -> u64 {
        self.analyzers
            .iter()
            .map(|(k, v)| {
                v.messages
                    .saturating_sub(baseline.analyzers.get(k).map_or(0, |b| b.messages))
            })
            .sum()
    }

    fn deadlettered_since(&self, baseline: &Counts) -> u64 {
        self.deadletters
            .iter()
            .map(|(k, v)| v.saturating_sub(baseline.deadletters.get(k).copied().unwrap_or(0)))
            .sum()
    }
}

/// One analyzer id's line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalyzerRow {
    pub id: String,
    pub weight: f64,
    pub instances: usize,
    pub target_pct: f64,
    pub received_pct: f64,
    pub deviation_pp: f64,
    pub messages: u64,
    /// Latency reported by its instances (cumulative since they started), worst instance.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

/// The outcome of `--verify`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    pub analyzers: Vec<AnalyzerRow>,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_pct: f64,
    /// Received beyond what was sent (another sender, or duplicates).
    pub extra: u64,
    pub invalid_sent: u64,
    pub deadlettered: u64,
    pub max_abs_deviation_pp: f64,
    pub passed: bool,
    pub failures: Vec<String>,
}

/// Compares `baseline` and `last`. `online` are the analyzer ids in the membership bucket now:
/// with those that received anything, they make the set the target shares are computed over.
pub fn compare(
    baseline: &Counts,
    last: &Counts,
    online: &BTreeSet<String>,
    sent: &SendTotals,
    max_loss_pct: f64,
    max_deviation_pp: f64,
) -> Verification {
    let mut per_id: BTreeMap<String, AnalyzerRow> = BTreeMap::new();
    for ((id, _instance), counts) in &last.analyzers {
        let before = baseline
            .analyzers
            .get(&(id.clone(), _instance.clone()))
            .map_or(0, |b| b.messages);
        let row = per_id.entry(id.clone()).or_insert_with(|| AnalyzerRow {
            id: id.clone(),
            weight: counts.weight,
            instances: 0,
            target_pct: 0.0,
            received_pct: 0.0,
            deviation_pp: 0.0,
            messages: 0,
            p50_us: None,
            p99_us: None,
        });
        let delta = counts.messages.saturating_sub(before);
        row.messages += delta;
        if delta > 0 || online.contains(id) {
            row.instances += 1;
        }
        row.weight = counts.weight;
        row.p50_us = row.p50_us.max(counts.p50_us);
        row.p99_us = row.p99_us.max(counts.p99_us);
    }
    // Analyzers that took part: online now, or received during the run.
    per_id.retain(|id, row| row.messages > 0 || online.contains(id));
    let received: u64 = per_id.values().map(|r| r.messages).sum();
    let weight_sum: f64 = per_id.values().map(|r| r.weight).sum();
    let mut max_abs_deviation_pp: f64 = 0.0;
    for row in per_id.values_mut() {
        row.target_pct = if weight_sum > 0.0 {
            100.0 * row.weight / weight_sum
        } else {
            0.0
        };
        row.received_pct = if received > 0 {
            100.0 * row.messages as f64 / received as f64
        } else {
            0.0
        };
        row.deviation_pp = row.received_pct - row.target_pct;
        max_abs_deviation_pp = max_abs_deviation_pp.max(row.deviation_pp.abs());
    }
    let lost = sent.messages.saturating_sub(received);
    let extra = received.saturating_sub(sent.messages);
    let loss_pct = if sent.messages > 0 {
        100.0 * lost as f64 / sent.messages as f64
    } else {
        0.0
    };
    let deadlettered = last.deadlettered_since(baseline);
    let mut failures = Vec::new();
    if loss_pct > max_loss_pct {
        failures.push(format!(
            "loss {loss_pct:.3}% ({lost} of {} messages) is over --max-loss {max_loss_pct}%",
            sent.messages
        ));
    }
    if max_abs_deviation_pp > max_deviation_pp {
        failures.push(format!(
            "share deviation {max_abs_deviation_pp:.3} pp is over --max-deviation {max_deviation_pp} pp"
        ));
    }
    if per_id.is_empty() && sent.messages > 0 {
        failures.push(
            "no analyzer received anything: is an analyzer running with the same --stats-bucket?"
                .into(),
        );
    }
    Verification {
        analyzers: per_id.into_values().collect(),
        sent: sent.messages,
        received,
        lost,
        loss_pct,
        extra,
        invalid_sent: sent.invalid_packets,
        deadlettered,
        max_abs_deviation_pp,
        passed: failures.is_empty(),
        failures,
    }
}

/// Reads the stats bucket as [`Counts`].
pub async fn read_counts(stats: &kv::Store) -> anyhow::Result<Counts> {
    Ok(Counts::from_snapshot(&StatsSnapshot::read(stats).await?))
}

/// Analyzer ids in the membership bucket now.
pub async fn read_online(membership: &kv::Store) -> anyhow::Result<BTreeSet<String>> {
    Ok(logdist::snapshot::member_ids(membership).await?)
}

/// Waits until every valid message sent and every malformed packet is accounted for, or until no
/// counter moved for `quiet`, at most `timeout`. Returns the last counts read.
pub async fn wait_quiet(
    stats: &kv::Store,
    baseline: &Counts,
    sent: &SendTotals,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<Counts> {
    let start = Instant::now();
    let mut last_change = Instant::now();
    let mut last_total = None;
    loop {
        let counts = read_counts(stats).await?;
        let received = counts.received_since(baseline);
        let deadlettered = counts.deadlettered_since(baseline);
        if received >= sent.messages && deadlettered >= sent.invalid_packets {
            return Ok(counts);
        }
        let total = received + deadlettered;
        if last_total != Some(total) {
            last_total = Some(total);
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet {
            return Ok(counts);
        }
        if start.elapsed() >= timeout {
            tracing::warn!(
                ?timeout,
                "counters still moving at --verify-timeout; reporting what is counted"
            );
            return Ok(counts);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(rows: &[(&str, &str, f64, u64)], dead: u64) -> Counts {
        let mut c = Counts::default();
        for (id, inst, w, m) in rows {
            c.analyzers.insert(
                (id.to_string(), inst.to_string()),
                InstanceCounts {
                    weight: *w,
                    messages: *m,
                    ..Default::default()
                },
            );
        }
        c.deadletters.insert("r1".into(), dead);
        c
    }

    fn sent(messages: u64, invalid: u64) -> SendTotals {
        SendTotals {
            packets: 0,
            messages,
            bytes: 0,
            invalid_packets: invalid,
            seconds: 1.0,
            messages_per_sec: 0.0,
            megabytes_per_sec: 0.0,
        }
    }

    #[test]
    fn exact_shares_pass() {
        let base = counts(&[("1", "a", 0.5, 100), ("2", "b", 0.3, 0)], 3);
        let last = counts(
            &[
                ("1", "a", 0.5, 600),
                ("2", "b", 0.3, 300),
                ("3", "c", 0.2, 200),
            ],
            5,
        );
        let online: BTreeSet<String> = ["1", "2", "3"].iter().map(|s| s.to_string()).collect();
        let v = compare(&base, &last, &online, &sent(1000, 2), 0.0, 0.1);
        assert!(v.passed, "{:?}", v.failures);
        assert_eq!(v.received, 1000);
        assert_eq!(v.deadlettered, 2);
        assert_eq!(v.analyzers[0].messages, 500);
        assert!((v.analyzers[0].target_pct - 50.0).abs() < 1e-9);
    }

    #[test]
    fn loss_and_deviation_fail() {
        let base = Counts::default();
        let last = counts(&[("1", "a", 0.5, 700), ("2", "b", 0.5, 200)], 0);
        let online: BTreeSet<String> = ["1", "2"].iter().map(|s| s.to_string()).collect();
        let v = compare(&base, &last, &online, &sent(1000, 0), 0.0, 0.5);
        assert!(!v.passed);
        assert_eq!(v.lost, 100);
        assert_eq!(v.failures.len(), 2, "{:?}", v.failures);
    }

    #[test]
    fn stale_analyzers_that_received_nothing_and_are_offline_do_not_count() {
        let base = counts(&[("9", "z", 5.0, 50)], 0);
        let last = counts(&[("9", "z", 5.0, 50), ("1", "a", 1.0, 10)], 0);
        let online: BTreeSet<String> = ["1"].iter().map(|s| s.to_string()).collect();
        let v = compare(&base, &last, &online, &sent(10, 0), 0.0, 0.1);
        assert!(v.passed, "{:?}", v.failures);
        assert_eq!(v.analyzers.len(), 1);
    }

    #[test]
    fn an_online_analyzer_that_got_nothing_is_a_deviation() {
        let last = counts(&[("1", "a", 1.0, 10), ("2", "b", 1.0, 0)], 0);
        let online: BTreeSet<String> = ["1", "2"].iter().map(|s| s.to_string()).collect();
        let v = compare(&Counts::default(), &last, &online, &sent(10, 0), 0.0, 0.1);
        assert!(!v.passed);
        assert!((v.max_abs_deviation_pp - 50.0).abs() < 1e-9);
    }
}
