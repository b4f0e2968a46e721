//! `--verify`: what the pipeline did with what agent-sim sent, from the analyzers' own counters.
//!
//! Before sending, a baseline of the stats bucket is taken; after sending, agent-sim waits until
//! the pipeline is quiet (every valid message and dead letter accounted for, or no counter moved
//! for `--quiet-period`), takes a final snapshot, and compares the differences: per analyzer the
//! share received against the target share (its weight over the weights of the analyzers online),
//! the loss (valid sent − received) and the dead letters.
//!
//! Reads of the buckets are retried for [`READ_RETRY_FOR`]: while a bucket's stream elects a
//! leader (a cluster node died) they fail for several seconds.
//!
//! With `--publish jetstream` the counters are not the only witness: agent-sim also reads the
//! stream that stored its packets ([`StreamWitness`]). A packet leaves that work-queue stream only
//! when a distributor acks it, which it does after an analyzer counted it durably (or after
//! dead-lettering it). So once none of this run's packets is left, every stored packet was
//! counted at least once, and messages received beyond those sent are duplicates of redelivered
//! packets rather than something that could hide a loss.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use logdist::StatsSnapshot;
use serde::Serialize;

use crate::config::PublishMode;
use crate::sender::SendTotals;

/// How long a failed read of the stats or membership bucket is retried. A JetStream leader
/// election after a cluster node died takes about 10 s.
pub const READ_RETRY_FOR: Duration = Duration::from_secs(30);
/// One read attempt of a bucket.
const READ_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// One read of the stream's per-subject counts.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream that could never be read (e.g. the user may not read it) stops holding up the
/// verification after this long; the report says it was not checked.
const STREAM_GRACE: Duration = Duration::from_secs(10);

/// The baseline or final state of the counters that verification compares.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// (analyzer id, instance) → (weight, messages, latency p50/p99 µs).
    analyzers: HashMap<(String, String), InstanceCounts>,
    /// replica → dead-lettered messages.
    deadletters: HashMap<String, u64>,
    /// replica → packets its ingest connection dropped (at-most-once overload).
    ingest_dropped: HashMap<String, u64>,
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
            counts
                .ingest_dropped
                .insert(d.replica.clone(), d.ingest_dropped_packets);
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
        sum_since(&self.deadletters, &baseline.deadletters)
    }

    fn ingest_dropped_since(&self, baseline: &Counts) -> u64 {
        sum_since(&self.ingest_dropped, &baseline.ingest_dropped)
    }
}

/// The growth of per-replica counters since `baseline`, summed.
fn sum_since(now: &HashMap<String, u64>, baseline: &HashMap<String, u64>) -> u64 {
    now.iter()
        .map(|(k, v)| v.saturating_sub(baseline.get(k).copied().unwrap_or(0)))
        .sum()
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
    /// --publish jetstream: `extra` is shown to be duplicates (this run's packets all left the
    /// stream, nothing valid was dead-lettered), so it cannot hide a loss.
    pub extra_are_duplicates: bool,
    /// --publish jetstream: this run's packets left in the stream that stored them.
    pub stream: Option<StreamCheck>,
    pub invalid_sent: u64,
    pub deadlettered: u64,
    /// Packets the distributors' ingest connections dropped during the run because they could
    /// not keep up (at-most-once; `--ingest-buffer`): where an overload's loss went.
    pub distributor_dropped_packets: u64,
    pub max_abs_deviation_pp: f64,
    pub passed: bool,
    pub failures: Vec<String>,
}

/// The last read of the stream that stored this run's packets (--publish jetstream).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamCheck {
    pub stream: String,
    /// Packets still stored on this run's subjects; `None` when the last read failed.
    pub packets_left: Option<u64>,
    /// Why the last read failed.
    pub error: Option<String>,
}

/// Compares `baseline` and `last`. `online` are the analyzer ids in the membership bucket now:
/// with those that received anything, they make the set the target shares are computed over.
/// `stream` is the last [`StreamCheck`] (--publish jetstream only).
pub fn compare(
    baseline: &Counts,
    last: &Counts,
    online: &BTreeSet<String>,
    sent: &SendTotals,
    max_loss_pct: f64,
    max_deviation_pp: f64,
    stream: Option<&StreamCheck>,
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
    let distributor_dropped_packets = last.ingest_dropped_since(baseline);
    let mut failures = Vec::new();
    if loss_pct > max_loss_pct {
        let cause = if distributor_dropped_packets > 0 {
            format!(
                "; the distributors dropped {distributor_dropped_packets} packets they could not \
                 keep up with (ingest_dropped_packets: add replicas, lower --rate, or raise \
                 --ingest-buffer for bursts)"
            )
        } else {
            String::new()
        };
        failures.push(format!(
            "loss {loss_pct:.3}% ({lost} of {} messages) is over --max-loss {max_loss_pct}%{cause}",
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
    let mut extra_are_duplicates = false;
    if sent.publish == PublishMode::Jetstream {
        if let Some(StreamCheck {
            stream,
            packets_left: Some(left),
            ..
        }) = stream
        {
            if *left > 0 {
                failures.push(format!(
                    "{left} packets stored in stream {stream} were still there at the end: not \
                     delivered to an analyzer within --verify-timeout"
                ));
            }
        }
        // Extra messages are duplicates only if every stored packet was counted at least once:
        // all left the stream (acked after an analyzer counted it) and none was dead-lettered
        // instead. Otherwise duplicates could make up for lost messages in the totals.
        if extra > 0 {
            let doubt = match stream {
                None => Some("no stream stored a packet".to_string()),
                Some(c) => match (c.packets_left, &c.error) {
                    (Some(0), _) => None,
                    (Some(left), _) => {
                        Some(format!("{left} packets are left in stream {}", c.stream))
                    }
                    (None, error) => Some(format!(
                        "stream {} could not be read ({})",
                        c.stream,
                        error.as_deref().unwrap_or("no answer")
                    )),
                },
            }
            .or_else(|| {
                (deadlettered > sent.invalid_packets).then(|| {
                    format!(
                        "{deadlettered} messages were dead-lettered for {} malformed packets sent",
                        sent.invalid_packets
                    )
                })
            });
            match doubt {
                None => extra_are_duplicates = true,
                Some(doubt) => failures.push(format!(
                    "received {extra} messages more than were stored, and {doubt}: duplicates \
                     could hide a loss"
                )),
            }
        }
    }
    Verification {
        analyzers: per_id.into_values().collect(),
        sent: sent.messages,
        received,
        lost,
        loss_pct,
        extra,
        extra_are_duplicates,
        stream: stream.cloned(),
        invalid_sent: sent.invalid_packets,
        deadlettered,
        distributor_dropped_packets,
        max_abs_deviation_pp,
        passed: failures.is_empty(),
        failures,
    }
}

/// Runs `read` until it succeeds, for at most [`READ_RETRY_FOR`] (each attempt bounded to
/// [`READ_ATTEMPT_TIMEOUT`]), backing off 200 ms doubling to 2 s; then fails with the last error.
/// Returns the value and whether any attempt failed. Once a bucket is open, a failed read is a
/// leader election, a reconnect, or a server that is gone: only the last is worth failing for.
pub async fn retrying<T, F, Fut>(what: &str, mut read: F) -> anyhow::Result<(T, bool)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let mut failed = false;
    loop {
        let error = match tokio::time::timeout(READ_ATTEMPT_TIMEOUT, read()).await {
            Ok(Ok(value)) => {
                if failed {
                    tracing::info!(after = ?start.elapsed(), "read {what} again");
                }
                return Ok((value, failed));
            }
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("no answer within {READ_ATTEMPT_TIMEOUT:?}"),
        };
        if start.elapsed() + backoff > READ_RETRY_FOR {
            return Err(error.context(format!("reading {what} failed for {:.0?}", start.elapsed())));
        }
        if !failed {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot read {what}; retrying for up to {READ_RETRY_FOR:?}"
            );
        }
        failed = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Reads the stats bucket as [`Counts`] (retried, see [`retrying`]).
pub async fn read_counts(stats: &kv::Store) -> anyhow::Result<Counts> {
    Ok(read_counts_noting_failures(stats).await?.0)
}

/// [`read_counts`], and whether some attempt failed.
async fn read_counts_noting_failures(stats: &kv::Store) -> anyhow::Result<(Counts, bool)> {
    retrying("the stats bucket", || async {
        Ok(Counts::from_snapshot(&StatsSnapshot::read(stats).await?))
    })
    .await
}

/// Analyzer ids in the membership bucket now (retried, see [`retrying`]).
pub async fn read_online(membership: &kv::Store) -> anyhow::Result<BTreeSet<String>> {
    let (online, _) = retrying("the membership bucket", || async {
        Ok(logdist::member_ids(membership).await?)
    })
    .await?;
    Ok(online)
}

/// The packets of this run still stored in the stream that acknowledged them (--publish
/// jetstream), by their subjects.
pub struct StreamWitness {
    js: jetstream::Context,
    stream: String,
    /// Subject filter of the read.
    filter: String,
    /// Keep subjects `<ingest>.<prefix>-<n>` only (None: every subject matching `filter`).
    agent_prefix: Option<String>,
}

impl StreamWitness {
    /// For packets sent to `subject` (--subject), or else to `<ingest>.<agent_prefix>-<n>`.
    pub fn new(
        client: async_nats::Client,
        stream: String,
        subject: Option<&str>,
        ingest: &str,
        agent_prefix: &str,
    ) -> StreamWitness {
        let (filter, agent_prefix) = match subject {
            Some(subject) => (subject.to_string(), None),
            None => (
                format!("{ingest}.*"),
                Some(format!("{ingest}.{agent_prefix}-")),
            ),
        };
        StreamWitness {
            js: jetstream::new(client),
            stream,
            filter,
            agent_prefix,
        }
    }

    fn is_ours(&self, subject: &str) -> bool {
        match &self.agent_prefix {
            None => true,
            Some(prefix) => subject
                .strip_prefix(prefix.as_str())
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        }
    }

    /// This run's packets still in the stream, read once.
    pub async fn packets_left(&self) -> anyhow::Result<u64> {
        let read = async {
            let stream = self.js.get_stream_no_info(&self.stream).await?;
            let mut subjects = stream.info_with_subjects(&self.filter).await?;
            let mut left = 0;
            while let Some((subject, count)) = subjects.try_next().await? {
                if self.is_ours(&subject) {
                    left += count as u64;
                }
            }
            anyhow::Ok(left)
        };
        tokio::time::timeout(STREAM_READ_TIMEOUT, read)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {STREAM_READ_TIMEOUT:?}"))?
    }

    fn check(&self, read: &anyhow::Result<u64>) -> StreamCheck {
        StreamCheck {
            stream: self.stream.clone(),
            packets_left: read.as_ref().ok().copied(),
            error: read.as_ref().err().map(|e| format!("{e:#}")),
        }
    }
}

/// Waits until every valid message sent and every malformed packet is accounted for (and, with a
/// `witness`, none of this run's packets is left in the stream), or until nothing moved for
/// `quiet`, at most `timeout`. Time the stats bucket (or a stream that was readable before)
/// could not be read does not count as quiet. Returns the last counts and stream check.
pub async fn wait_quiet(
    stats: &kv::Store,
    baseline: &Counts,
    sent: &SendTotals,
    quiet: Duration,
    timeout: Duration,
    witness: Option<&StreamWitness>,
) -> anyhow::Result<(Counts, Option<StreamCheck>)> {
    let start = Instant::now();
    let mut last_change = Instant::now();
    let mut last_state = None;
    let mut stream_read_once = false;
    loop {
        let (counts, disrupted) = read_counts_noting_failures(stats).await?;
        if disrupted {
            last_change = Instant::now();
        }
        let check = match witness {
            None => None,
            Some(w) => {
                let read = w.packets_left().await;
                if read.is_ok() {
                    stream_read_once = true;
                } else if stream_read_once {
                    last_change = Instant::now(); // readable before: a disruption
                }
                Some(w.check(&read))
            }
        };
        let received = counts.received_since(baseline);
        let deadlettered = counts.deadlettered_since(baseline);
        let stream_done = match &check {
            None => true,
            Some(c) => match c.packets_left {
                Some(left) => left == 0,
                None => !stream_read_once && start.elapsed() >= STREAM_GRACE,
            },
        };
        if received >= sent.messages && deadlettered >= sent.invalid_packets && stream_done {
            return Ok((counts, check));
        }
        let state = (
            received + deadlettered,
            check.as_ref().and_then(|c| c.packets_left),
        );
        if last_state != Some(state) {
            last_state = Some(state);
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet {
            return Ok((counts, check));
        }
        if start.elapsed() >= timeout {
            tracing::warn!(
                ?timeout,
                "counters still moving at --verify-timeout; reporting what is counted"
            );
            return Ok((counts, check));
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
            messages,
            invalid_packets: invalid,
            seconds: 1.0,
            ..Default::default()
        }
    }

    fn acked(messages: u64, invalid: u64) -> SendTotals {
        SendTotals {
            publish: PublishMode::Jetstream,
            stream: Some("LOGS".into()),
            ..sent(messages, invalid)
        }
    }

    fn left(packets: Option<u64>) -> StreamCheck {
        StreamCheck {
            stream: "LOGS".into(),
            packets_left: packets,
            error: packets.is_none().then(|| "timed out".into()),
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
        let v = compare(&base, &last, &online, &sent(1000, 2), 0.0, 0.1, None);
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
        let v = compare(&base, &last, &online, &sent(1000, 0), 0.0, 0.5, None);
        assert!(!v.passed);
        assert_eq!(v.lost, 100);
        assert_eq!(v.failures.len(), 2, "{:?}", v.failures);
    }

    #[test]
    fn a_loss_names_the_packets_the_distributors_dropped() {
        let mut base = Counts::default();
        base.ingest_dropped.insert("r1".into(), 5);
        let mut last = counts(&[("1", "a", 1.0, 700)], 0);
        last.ingest_dropped.insert("r1".into(), 8);
        last.ingest_dropped.insert("r2".into(), 1);
        let online: BTreeSet<String> = ["1"].iter().map(|s| s.to_string()).collect();
        let v = compare(&base, &last, &online, &sent(1000, 0), 0.0, 0.5, None);
        assert_eq!((v.lost, v.distributor_dropped_packets), (300, 4));
        assert!(
            v.failures[0].contains("the distributors dropped 4 packets"),
            "{:?}",
            v.failures
        );
        // Without drops the loss has no such explanation.
        let v = compare(&base, &base, &online, &sent(1000, 0), 0.0, 0.5, None);
        assert!(!v.failures[0].contains("dropped"), "{:?}", v.failures);
    }

    #[test]
    fn stale_analyzers_that_received_nothing_and_are_offline_do_not_count() {
        let base = counts(&[("9", "z", 5.0, 50)], 0);
        let last = counts(&[("9", "z", 5.0, 50), ("1", "a", 1.0, 10)], 0);
        let online: BTreeSet<String> = ["1"].iter().map(|s| s.to_string()).collect();
        let v = compare(&base, &last, &online, &sent(10, 0), 0.0, 0.1, None);
        assert!(v.passed, "{:?}", v.failures);
        assert_eq!(v.analyzers.len(), 1);
    }

    #[test]
    fn an_online_analyzer_that_got_nothing_is_a_deviation() {
        let last = counts(&[("1", "a", 1.0, 10), ("2", "b", 1.0, 0)], 0);
        let online: BTreeSet<String> = ["1", "2"].iter().map(|s| s.to_string()).collect();
        let v = compare(
            &Counts::default(),
            &last,
            &online,
            &sent(10, 0),
            0.0,
            0.1,
            None,
        );
        assert!(!v.passed);
        assert!((v.max_abs_deviation_pp - 50.0).abs() < 1e-9);
    }

    #[test]
    fn jetstream_duplicates_pass_only_when_the_stream_is_drained() {
        let online: BTreeSet<String> = ["1", "2"].iter().map(|s| s.to_string()).collect();
        // 1000 stored, 1100 counted: 100 duplicates of redelivered packets.
        let last = counts(&[("1", "a", 1.0, 550), ("2", "b", 1.0, 550)], 0);
        let v = compare(
            &Counts::default(),
            &last,
            &online,
            &acked(1000, 0),
            0.0,
            0.5,
            Some(&left(Some(0))),
        );
        assert!(v.passed, "{:?}", v.failures);
        assert!(v.extra_are_duplicates);
        assert_eq!((v.lost, v.extra), (0, 100));

        // The same totals with packets left in the stream, or a stream that could not be read:
        // the duplicates could stand in for lost messages.
        for check in [left(Some(3)), left(None)] {
            let v = compare(
                &Counts::default(),
                &last,
                &online,
                &acked(1000, 0),
                0.0,
                0.5,
                Some(&check),
            );
            assert!(!v.passed, "{check:?}");
            assert!(!v.extra_are_duplicates);
            assert!(
                v.failures.iter().any(|f| f.contains("could hide a loss")),
                "{:?}",
                v.failures
            );
        }

        // Valid messages dead-lettered (e.g. `undeliverable`) are not analyzed: no excuse either.
        let dead = counts(&[("1", "a", 1.0, 550), ("2", "b", 1.0, 550)], 7);
        let v = compare(
            &Counts::default(),
            &dead,
            &online,
            &acked(1000, 2),
            0.0,
            0.5,
            Some(&left(Some(0))),
        );
        assert!(!v.passed);
        assert!(v.failures[0].contains("dead-lettered"), "{:?}", v.failures);
    }

    #[test]
    fn jetstream_packets_left_in_the_stream_fail_even_without_extra() {
        let online: BTreeSet<String> = ["1"].iter().map(|s| s.to_string()).collect();
        let last = counts(&[("1", "a", 1.0, 1000)], 0);
        let v = compare(
            &Counts::default(),
            &last,
            &online,
            &acked(1000, 0),
            0.0,
            0.5,
            Some(&left(Some(2))),
        );
        assert!(!v.passed);
        assert!(v.failures[0].contains("still there"), "{:?}", v.failures);
        // Core publishing keeps the old rule: extra is reported, not judged.
        let more = counts(&[("1", "a", 1.0, 1100)], 0);
        let v = compare(
            &Counts::default(),
            &more,
            &online,
            &sent(1000, 0),
            0.0,
            0.5,
            None,
        );
        assert!(v.passed && !v.extra_are_duplicates && v.extra == 100);
    }

    #[tokio::test]
    async fn retrying_returns_the_first_success_and_says_it_failed_before() {
        let mut calls = 0;
        let (value, failed) = retrying("test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    anyhow::bail!("timed out")
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!((value, failed), (3, true));
    }
}
