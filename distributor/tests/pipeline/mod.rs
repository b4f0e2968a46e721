//! A whole pipeline of real processes for the delivery tests: distributors, analyzers and
//! agent-sim as the load, on a real nats-server or cluster; plus readers of the stream, the
//! consumer and the stats that the assertions need.
#![allow(dead_code)]

use std::time::Duration;

use async_nats::jetstream;
use logdist::protocol::stats::DistributorStats;
#[allow(unused_imports)] // each test binary uses its own few
pub use logdist_testing::{
    analyzer_stats, distributor_stats, stats_bucket, wait_members, Delivery, WAIT,
};
use logdist_testing::{
    wait_until, AgentSimOptions, AnalyzerOptions, DistributorOptions, Process, CONSUMER, STREAM,
    THREE_ANALYZERS,
};

/// Held by each test that runs agent-sim: several full pipelines in debug builds at once would
/// starve two cores, and requests timing out for lack of CPU only measure the machine.
pub static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Ack wait of the consumer in these tests: a replica that dies holds its packets this long.
pub const ACK_WAIT: &str = "2s";
/// Well above the analyzers' default 200 ms checkpoint interval.
pub const REQUEST_TIMEOUT: &str = "1s";

/// `distributor run` in `delivery` mode, with the ack wait and request time-out above.
pub fn distributor(urls: &str, replica: &str, delivery: Delivery, extra: &[&str]) -> Process {
    let mut args = vec!["--ack-wait", ACK_WAIT];
    if !extra.contains(&"--request-timeout") {
        args.extend_from_slice(&["--request-timeout", REQUEST_TIMEOUT]);
    }
    args.extend_from_slice(extra);
    DistributorOptions::new(urls)
        .replica(replica)
        .delivery(delivery)
        .args(&args)
        .spawn()
}

/// A real analyzer with fast heartbeats and reports.
pub fn analyzer(urls: &str, id: &str, weight: f64) -> Process {
    analyzer_with(urls, id, weight, &[])
}

/// [`analyzer`] with extra flags.
pub fn analyzer_with(urls: &str, id: &str, weight: f64, extra: &[&str]) -> Process {
    AnalyzerOptions::new(urls, id, weight)
        .heartbeat_interval(Duration::from_millis(100))
        .report_interval(Duration::from_millis(200))
        .args(extra)
        .spawn()
}

/// Analyzers 1, 2, 3 with weights 0.5, 0.3, 0.2.
pub fn three_analyzers(urls: &[&str]) -> Vec<Process> {
    THREE_ANALYZERS
        .iter()
        .enumerate()
        .map(|(i, (id, weight))| analyzer(urls[i % urls.len()], id, *weight))
        .collect()
}

/// agent-sim: 6 s of 20,000 messages/s in packets of 1–100, verified with no loss allowed.
pub fn agent_sim(urls: &str) -> Process {
    agent_sim_quiet(urls, Duration::from_secs(3))
}

/// [`agent_sim`] that waits for counters to stay still `quiet` before verifying (a cluster
/// fail-over pauses the pipeline for several seconds).
pub fn agent_sim_quiet(urls: &str, quiet: Duration) -> Process {
    agent_sim_for(urls, "6s", quiet)
}

/// [`agent_sim_quiet`] sending for `duration` (at 20,000 messages/s).
pub fn agent_sim_for(urls: &str, duration: &str, quiet: Duration) -> Process {
    agent_sim_with(urls, duration, quiet, "core", 0.5)
}

/// agent-sim at 20,000 messages/s in packets of 1–100 for `duration`, publishing with `publish`
/// (`core` or `jetstream`), verified with no loss allowed and shares within `max_deviation` pp,
/// once the counters stayed still for `quiet`; the JSON report on stdout.
pub fn agent_sim_with(
    urls: &str,
    duration: &str,
    quiet: Duration,
    publish: &str,
    max_deviation: f64,
) -> Process {
    AgentSimOptions::new(urls)
        .args(&[
            "--publish",
            publish,
            "--rate",
            "20000",
            "--duration",
            duration,
            "--packet-size",
            AGENT_SIM_PACKET_SIZE,
        ])
        .verify(quiet)
        .max_deviation(max_deviation)
        .spawn()
}

/// Waits for agent-sim and returns its JSON report (exit status and report).
pub async fn report(sim: &mut Process) -> (std::process::ExitStatus, serde_json::Value) {
    logdist_testing::agent_sim_report(sim, Duration::from_secs(120)).await
}

pub async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.expect("connect");
    jetstream::new(client)
}

/// Creates the membership and stats buckets with 3 replicas on a cluster, before any process
/// creates them with 1: losing a node must not take the stats (the analyzers' checkpoints, the
/// tests' measure) with it.
pub async fn create_replicated_buckets(js: &jetstream::Context) {
    for bucket in [
        logdist::protocol::names::DEFAULT_MEMBERSHIP_BUCKET,
        logdist::protocol::names::DEFAULT_STATS_BUCKET,
    ] {
        js.create_key_value(jetstream::kv::Config {
            bucket: bucket.to_string(),
            history: 1,
            num_replicas: 3,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    }
}

/// Waits until analyzer `id` has counted (and checkpointed) at least `messages` messages.
pub async fn wait_analyzed(stats: &async_nats::jetstream::kv::Store, id: &str, messages: u64) {
    wait_until(
        &format!("analyzer {id} to count {messages} messages"),
        WAIT,
        || async move {
            analyzer_stats(stats, id)
                .await
                .is_some_and(|s| s.messages >= messages)
        },
    )
    .await;
}

/// Waits until the consumer has nothing pending and nothing un-acked: every packet the stream
/// captured was acknowledged by an analyzer (or dead-lettered). Returns (stream messages
/// captured so far = last sequence, delivered consumer sequence).
pub async fn wait_consumer_drained(js: &jetstream::Context) -> (u64, u64) {
    let last = std::cell::Cell::new((0, 0));
    let last_ref = &last;
    wait_until("the consumer to have every packet acked", WAIT, || async {
        let Ok(mut stream) = js.get_stream(STREAM).await else {
            return false;
        };
        let Ok(info) = stream.info().await.cloned() else {
            return false;
        };
        let Ok(mut consumer) = stream
            .get_consumer::<jetstream::consumer::pull::Config>(CONSUMER)
            .await
        else {
            return false;
        };
        let Ok(c) = consumer.info().await else {
            return false;
        };
        last_ref.set((info.state.last_sequence, c.delivered.stream_sequence));
        c.num_pending == 0 && c.num_ack_pending == 0 && info.state.messages == 0
    })
    .await;
    last.get()
}

/// Prints the verification part of a report (visible with `--nocapture`) and returns it.
pub fn verification<'a>(name: &str, report: &'a serde_json::Value) -> &'a serde_json::Value {
    let v = &report["verification"];
    eprintln!(
        "{name}: sent {} received {} lost {} extra {} deadlettered {} max deviation {:.3} pp",
        v["sent"],
        v["received"],
        v["lost"],
        v["extra"],
        v["deadlettered"],
        v["max_abs_deviation_pp"]
    );
    v
}

/// Messages per packet that agent-sim sends here.
const AGENT_SIM_PACKET_SIZE: &str = "1..100";
/// The largest of them: what the selector's bound is counted in.
const MAX_PACKET_MESSAGES: f64 = 100.0;

/// Asserts that, in `replica`'s stats, every analyzer online has an epoch share (of what
/// analyzers acknowledged since the last membership change) within `pp` points of its target,
/// or within one packet of it when the epoch is short: the selector keeps each analyzer's count
/// within about one largest packet of its target (distributor/src/selector.rs), so a last epoch
/// of 2,900 messages (an analyzer re-joined near the end of a fail-over run) is 1.7 pp off with
/// 51 messages too few, as one run measured.
pub fn assert_epoch_shares(stats: &DistributorStats, pp: f64) {
    let online: Vec<_> = stats.analyzers.iter().filter(|(_, r)| r.online).collect();
    assert!(!online.is_empty(), "{stats:#?}");
    let total: u64 = online.iter().map(|(_, r)| r.epoch_messages).sum();
    if total == 0 {
        // The membership changed after the traffic ended (an analyzer re-joined late).
        eprintln!(
            "  epoch {}: no messages since it began, no shares to check",
            stats.epoch
        );
        return;
    }
    let pp = pp.max(100.0 * MAX_PACKET_MESSAGES / total as f64);
    for (id, r) in online {
        let deviation = 100.0 * (r.epoch_share - r.target_share);
        eprintln!(
            "  analyzer {id}: target {:.2}% epoch share {:.3}% ({} messages) dev {deviation:+.3} pp",
            100.0 * r.target_share,
            100.0 * r.epoch_share,
            r.epoch_messages
        );
        assert!(
            deviation.abs() <= pp,
            "analyzer {id}: epoch share {:.3}% vs target {:.3}% (bound {pp:.2} pp, {total} messages in the epoch)",
            100.0 * r.epoch_share,
            100.0 * r.target_share
        );
    }
}
