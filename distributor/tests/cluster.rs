//! `--delivery at-least-once` on a 3-node NATS cluster (stream replicas 3): two distributors and
//! three analyzers, each connected to all three nodes (`--nats-url` with every node, in different
//! orders, so clients fail over). Node 2 is made the leader of the stream `LOGS` and of its
//! consumer and of the stats bucket, then killed mid-run: nothing is lost and nothing is
//! dead-lettered, also while agent-sim publishes through the kill (with JetStream
//! acknowledgements, `--publish jetstream`: what agents send with core NATS while the stream has
//! no leader is lost before JetStream sees it).

mod pipeline;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use logdist_testing::{wait_until, NatsCluster, Process};
use pipeline::*;

/// The node made leader of everything, then killed.
const DOOMED: usize = 2;

/// The running pipeline of one test.
struct Cluster {
    cluster: NatsCluster,
    js: jetstream::Context,
    stats: kv::Store,
    distributors: Vec<Process>,
    analyzers: Vec<Process>,
}

/// Starts the cluster, the buckets with 3 replicas, two distributors and three analyzers (with
/// `analyzer_flags`), and moves the leaders of the stream and the consumer to node [`DOOMED`];
/// the stats bucket's leader too if `stats_leader_dies`, else away from it.
async fn start(analyzer_flags: &[&str], stats_leader_dies: bool) -> Cluster {
    let cluster = NatsCluster::start(3);
    cluster.wait_jetstream_ready(0).await;
    // Every node, starting at node `first`.
    let all_from = |first: usize| {
        (0..3)
            .map(|i| cluster.url((first + i) % 3))
            .collect::<Vec<_>>()
            .join(",")
    };
    let js = jetstream(&cluster.url(0)).await;
    create_replicated_buckets(&js).await;

    let replicas = ["--stream-replicas", "3"];
    let distributors = vec![
        distributor(&all_from(0), "d1", Delivery::AtLeastOnce, &replicas),
        distributor(&all_from(1), "d2", Delivery::AtLeastOnce, &replicas),
    ];
    let analyzers = logdist_testing::THREE_ANALYZERS
        .iter()
        .enumerate()
        .map(|(i, (id, weight))| analyzer_with(&all_from(i + 1), id, *weight, analyzer_flags))
        .collect();
    wait_members(&js, 3).await;
    let js_ref = &js;
    wait_until("stream LOGS with 3 replicas", WAIT, || async move {
        match js_ref.get_stream(logdist_testing::STREAM).await {
            Ok(mut s) => s.info().await.is_ok_and(|i| {
                i.config.num_replicas == 3 && i.cluster.as_ref().is_some_and(|c| c.leader.is_some())
            }),
            Err(_) => false,
        }
    })
    .await;
    // The stream and its consumer lose their leader when the node dies; the stats bucket (where
    // the analyzers' checkpoints go, and what agent-sim reads to verify) only if asked.
    let doomed = format!("n{DOOMED}");
    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    for (what, stepdown, dies) in [
        ("stream LOGS", "$JS.API.STREAM.LEADER.STEPDOWN.LOGS", true),
        (
            "consumer distributors",
            "$JS.API.CONSUMER.LEADER.STEPDOWN.LOGS.distributors",
            true,
        ),
        (
            "stream KV_logdist_stats",
            "$JS.API.STREAM.LEADER.STEPDOWN.KV_logdist_stats",
            stats_leader_dies,
        ),
    ] {
        let goal = if dies { "to lead" } else { "not to lead" };
        wait_until(&format!("{doomed} {goal} {what}"), WAIT, || {
            let (js, client, doomed) = (js.clone(), client.clone(), doomed.clone());
            async move {
                let current = leader(&js, what).await;
                if current.is_some() && (current.as_deref() == Some(doomed.as_str())) == dies {
                    return true;
                }
                let _ = client.request(stepdown, "".into()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                false
            }
        })
        .await;
    }
    let stats = stats_bucket(&js).await;
    Cluster {
        cluster,
        js,
        stats,
        distributors,
        analyzers,
    }
}

/// The leader of "stream X" or "consumer distributors" (of stream LOGS).
async fn leader(js: &jetstream::Context, what: &str) -> Option<String> {
    let (kind, name) = what.split_once(' ')?;
    let stream_name = if kind == "stream" {
        name
    } else {
        logdist_testing::STREAM
    };
    let mut stream = js.get_stream(stream_name).await.ok()?;
    if kind == "stream" {
        return stream.info().await.ok()?.cluster.clone()?.leader;
    }
    let mut consumer = stream
        .get_consumer::<jetstream::consumer::pull::Config>(name)
        .await
        .ok()?;
    consumer.info().await.ok()?.cluster.clone()?.leader
}

impl Cluster {
    /// Checks the agent-sim report: every packet stored, nothing lost, nothing dead-lettered, and
    /// messages counted beyond those sent shown to be duplicates (every packet of the run left the
    /// stream acked, so none is missing behind them); prints the processes' logs first when that
    /// fails.
    async fn assert_nothing_lost(&mut self, name: &str, sim: &mut Process) {
        let (status, report) = report(sim).await;
        let v = verification(name, &report);
        let s = &report["sent"];
        eprintln!(
            "  agent-sim: {} retries, {} duplicate acks, {} packets not stored; stream {}; its \
             client {} on the killed node",
            s["retries"],
            s["duplicate_acks"],
            s["failed_packets"],
            v["stream"],
            if sim.stderr().contains("disconnected from NATS") {
                "was"
            } else {
                "was not"
            }
        );
        let duplicates_unproven = v["extra"] != 0 && v["extra_are_duplicates"] != true;
        if v["lost"] != 0
            || v["deadlettered"] != 0
            || s["failed_packets"] != 0
            || duplicates_unproven
        {
            eprintln!("--- agent-sim:\n{}", sim.stderr());
            for p in self.distributors.iter().chain(&self.analyzers) {
                let log = p.stderr();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- last lines, newest first:\n{}", tail.join("\n"));
            }
        }
        assert_eq!(s["failed_packets"], 0, "{s:#}");
        assert_eq!(v["lost"], 0, "{v:#}");
        assert!(v["sent"].as_u64().unwrap() > 50_000, "{v:#}");
        assert_eq!(v["deadlettered"], 0, "{v:#}");
        assert_eq!(v["stream"]["packets_left"], 0, "{v:#}");
        assert!(!duplicates_unproven, "{v:#}");
        assert!(status.success(), "agent-sim's own check: {v:#}");

        let js = jetstream(&self.cluster.url(0)).await;
        let (captured, _) = wait_consumer_drained(&js).await;
        eprintln!("  stream captured {captured} packets, all acked");
        for d in &mut self.distributors {
            assert!(d.terminate(WAIT).await.success());
        }
        // Over the whole run the cumulative shares need not match the weights: an analyzer
        // whose client was on the killed node may miss heartbeats and be dropped until it is
        // back (its target is 0 meanwhile). What each replica acknowledged since the last
        // membership change must match the weights online now.
        acknowledged_shares(&self.stats).await;
        for replica in ["d1", "d2"] {
            let d = distributor_stats(&self.stats, replica)
                .await
                .expect("final stats");
            eprintln!("  replica {replica}, membership epoch {}:", d.epoch);
            assert_epoch_shares(&d, 0.5);
        }
    }
}

/// Each analyzer's share (in %) of the messages the distributors counted as acknowledged,
/// summed over both replicas' final stats: the shares issue #6 measures. (The analyzers' own
/// counts after a fail-over include duplicates their de-dup window did not see.)
async fn acknowledged_shares(stats: &kv::Store) -> std::collections::BTreeMap<String, f64> {
    let mut acked = std::collections::BTreeMap::<String, u64>::new();
    for replica in ["d1", "d2"] {
        let mut last = None;
        for _ in 0..50 {
            last = distributor_stats(stats, replica).await;
            if last.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let d = last.unwrap_or_else(|| panic!("final stats of {replica}"));
        for (id, route) in d.analyzers {
            *acked.entry(id).or_default() += route.messages;
        }
    }
    let total: u64 = acked.values().sum();
    assert!(total > 0, "nothing acknowledged: {acked:?}");
    let shares: std::collections::BTreeMap<String, f64> = ["1", "2", "3"]
        .iter()
        .map(|id| {
            let n = acked.get(*id).copied().unwrap_or(0);
            (id.to_string(), n as f64 * 100.0 / total as f64)
        })
        .collect();
    eprintln!("  acknowledged messages {acked:?}, shares {shares:?}");
    shares
}

/// The leader dies while the distributors and analyzers work through a backlog that the stream
/// stored: while JetStream elects new leaders (about 10 s here) the analyzers' checkpoints fail,
/// requests time out, acks and naks are lost, the consumer misses heartbeats and clients on node
/// 2 fail over. None of it may cost a packet an attempt, nor lose it.
///
/// The packets are published with JetStream acknowledgements (so each is stored before the kill)
/// and counted from the analyzers' stats with retries.
#[tokio::test]
async fn killing_the_leader_node_mid_delivery_loses_nothing() {
    // 300 µs per message: analyzer 1 (half of 60,000) needs about 9 s, so the node dies while
    // packets are in flight and most of the backlog is still in the stream.
    // The lock first: two 3-node clusters electing leaders at once on 2 cores can take longer
    // than the harness waits for JetStream.
    let _load = LOAD.lock().await;
    let mut c = start(&["--work-per-message", "300us"], true).await;
    const PACKETS: u64 = 600;
    const PER_PACKET: u64 = 100;
    let element =
        r#"{"timestamp":1764064800,"severity":"INFO","source":"cluster-test","message":"m"}"#;
    let payload = bytes::Bytes::from(format!(
        "[{}]",
        vec![element; PER_PACKET as usize].join(",")
    ));
    for i in 0..PACKETS {
        c.js.publish(
            logdist::Names::default().agent_ingest_subject(&format!("t{}", i % 10)),
            payload.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored in the stream");
    }
    let sent = PACKETS * PER_PACKET;
    wait_analyzed(&c.stats, "1", 3_000).await;
    let backlog =
        c.js.get_stream(logdist_testing::STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
    assert!(
        backlog > 100,
        "only {backlog} packets left: the node would die after the work"
    );
    eprintln!(
        "killing node {DOOMED}, the leader, with {backlog} of {PACKETS} packets in the stream"
    );
    c.cluster.kill(DOOMED);

    let js = jetstream(&c.cluster.url(0)).await;
    let stats = &c.stats;
    let counted = std::cell::Cell::new(0);
    let counted_ref = &counted;
    let outcome = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            let mut total = 0;
            for id in ["1", "2", "3"] {
                total += analyzer_stats(stats, id).await.map_or(0, |s| s.messages);
            }
            counted_ref.set(total);
            if total >= sent {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if outcome.is_err() {
        for p in c.distributors.iter().chain(&c.analyzers) {
            let log = p.stderr();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines, newest first:\n{}", tail.join("\n"));
        }
    }
    eprintln!("  analyzers counted {} of {sent} messages", counted.get());
    assert!(
        counted.get() >= sent,
        "lost {} of {sent} messages",
        sent - counted.get()
    );
    let (captured, _) = wait_consumer_drained(&js).await;
    assert_eq!(captured, PACKETS);
    let mut deadlettered = 0;
    let mut redelivered = 0;
    for replica in ["d1", "d2"] {
        let d = distributor_stats(stats, replica)
            .await
            .expect("distributor stats");
        deadlettered += d.deadletter_packets;
        redelivered += d.redelivered;
    }
    eprintln!("  {captured} packets captured, all acked; {redelivered} redelivered");
    assert_eq!(deadlettered, 0, "dead-lettered packets");
    for d in &mut c.distributors {
        assert!(d.terminate(WAIT).await.success());
    }
    // Shares are printed, not checked, here: in this backlog run the analyzers are throttled
    // (300 µs/message) and the fail-over reroutes thousands of timed-out requests away from the
    // analyzer that failed them; one run measured 42.0 / 21.8 / 36.2 % acknowledged for targets
    // 50 / 30 / 20 (docs/delivery.md). The steady-load fail-over test below checks them.
    acknowledged_shares(&c.stats).await;
}

/// Like the test above, with agents still publishing while the node dies, and the stats bucket's
/// leader dying too (the analyzers' checkpoints fail during the election, and agent-sim --verify
/// retries its reads). agent-sim publishes with JetStream acknowledgements and retries what the
/// leaderless stream does not acknowledge ("no responders" for about 10 s); its client may be on
/// the node that dies. Duplicates of packets redelivered after the fail-over are allowed (reported
/// as `extra`), as long as every packet of the run left the stream acked.
#[tokio::test]
async fn killing_the_leader_node_while_agents_publish_loses_nothing() {
    // The lock first: two 3-node clusters electing leaders at once on 2 cores can take longer
    // than the harness waits for JetStream.
    let _load = LOAD.lock().await;
    let mut c = start(&[], true).await;
    // Connected to every node, publishing with JetStream acknowledgements: a packet counts as
    // sent once stream LOGS stored it, and one not acknowledged (no leader, a node gone) is
    // published again with the same `Nats-Msg-Id`. Duplicates after the fail-over skew the
    // analyzers' own counts, so agent-sim checks loss only; the shares are checked from the
    // distributors' acknowledged counts.
    let mut sim = agent_sim_with(
        &c.cluster.urls(),
        "6s",
        Duration::from_secs(12),
        "jetstream",
        100.0,
    );
    wait_analyzed(&c.stats, "1", 10_000).await;
    eprintln!("killing node {DOOMED}, the leader");
    c.cluster.kill(DOOMED);
    c.assert_nothing_lost("leader node killed under load", &mut sim)
        .await;
}
