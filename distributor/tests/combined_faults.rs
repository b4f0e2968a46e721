//! `--delivery at-least-once` under several faults at once (issue #14): a distributor replica
//! SIGKILLed, an analyzer that hangs (receives requests, never replies) and then is gone, and
//! nats-server SIGKILLed and restarted on the same store (or, on a 3-node cluster, the node
//! leading the stream killed), while agent-sim publishes with JetStream acknowledgements. Every
//! message the stream acknowledged must be counted by an analyzer, and nothing dead-lettered:
//! "no responders" right after a reconnection, or from several analyzers at once, is the
//! infrastructure's fault, not the analyzers'.
//!
//! And the other side: the mechanism still sends an analyzer's packets elsewhere when that
//! analyzer alone fails, and a packet that every analyzer fails while they answer the others
//! still ends as `undeliverable`, its attempts spread in time.

mod pipeline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt;
use logdist_testing::{wait_until, AnalyzerOptions, NatsCluster, NatsServer, Process};
use pipeline::*;
use tokio::task::JoinHandle;

/// How long nats-server stays down in the restart test.
const OUTAGE: Duration = Duration::from_millis(1500);

/// How a [`FakeAnalyzer`] answers requests.
#[derive(Clone, Copy, PartialEq)]
enum Answers {
    /// Replies to every request at once.
    All,
    /// Replies to every request except those whose payload contains this text.
    AllBut(&'static str),
    /// Receives requests and never replies (a hung analyzer whose heartbeats go on).
    None,
}

/// An analyzer instance played by the test with its own NATS client: heartbeats on its control
/// subject `logdist.control.<id>` (the contract's JSON, docs/protocol.md) and a queue
/// subscription on `analyzer.<id>`, as the real analyzer does, and answers as told. What it receives it records. Dropping it (or
/// [`FakeAnalyzer::vanish`]) is a crash: no withdrawal, the subscription gone.
struct FakeAnalyzer {
    tasks: Vec<JoinHandle<()>>,
    received: Arc<AtomicU64>,
    /// (time, `Logdist-Packet-Id`, payload contained the `AllBut` text) of each request.
    log: Arc<Mutex<Vec<(Instant, String, bool)>>>,
}

impl FakeAnalyzer {
    async fn start(url: &str, id: &str, instance: &str, weight: f64, answers: Answers) -> Self {
        let client = async_nats::connect(url).await.expect("connect");
        let subject = format!("analyzer.{id}");
        let mut sub = client
            .queue_subscribe(subject.clone(), subject)
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let received = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (count, record, replier) = (received.clone(), log.clone(), client.clone());
        let consumer = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                count.fetch_add(1, Ordering::Relaxed);
                let marked = match answers {
                    Answers::AllBut(text) => {
                        m.payload.windows(text.len()).any(|w| w == text.as_bytes())
                    }
                    _ => false,
                };
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Logdist-Packet-Id"))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                record.lock().unwrap().push((Instant::now(), id, marked));
                let reply = match answers {
                    Answers::All => true,
                    Answers::AllBut(_) => !marked,
                    Answers::None => false,
                };
                if let (true, Some(to)) = (reply, m.reply) {
                    let _ = replier.publish(to, bytes::Bytes::new()).await;
                }
            }
        });
        let heartbeat = format!(
            r#"{{"state":"up","id":"{id}","weight":{weight},"instance":"{instance}","interval_ms":100}}"#
        );
        let control = format!("logdist.control.{id}");
        let beats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let _ = client
                    .publish(control.clone(), heartbeat.clone().into())
                    .await;
            }
        });
        FakeAnalyzer {
            tasks: vec![consumer, beats],
            received,
            log,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Packet ids it received, with the time.
    fn log(&self) -> Vec<(Instant, String, bool)> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until it received `n` requests.
    async fn wait_received(&self, n: u64) {
        wait_until(
            &format!("{n} requests at the fake analyzer"),
            WAIT,
            || async { self.received() >= n },
        )
        .await;
    }

    /// Gone without a word: heartbeats stop, the subscription (and its client) is dropped.
    fn vanish(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for FakeAnalyzer {
    fn drop(&mut self) {
        self.vanish();
    }
}

/// Prints the last lines of each process's log (for a failing run).
fn dump(processes: &[&Process]) {
    for p in processes {
        let log = p.stderr();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- last lines, newest first:\n{}", tail.join("\n"));
    }
}

/// The dead letters counted by `replica` so far (its last stats write).
async fn dead_letters(stats: &kv::Store, replica: &str) -> u64 {
    distributor_stats(stats, replica)
        .await
        .map_or(0, |s| s.deadletter_packets)
}

/// The first faults of both combined runs, under load: once analyzer 1 counts and the hung
/// analyzer holds requests, replica d2 is SIGKILLed (its packets in flight come back after
/// --ack-wait); once d1 has rerouted the hung analyzer's timed-out packets (1 and 2 answer
/// meanwhile), the hung analyzer vanishes.
async fn replica_killed_then_hung_analyzer_gone(
    stats: &kv::Store,
    d2: &mut Process,
    hung: &mut FakeAnalyzer,
) {
    wait_analyzed(stats, "1", 5_000).await;
    hung.wait_received(20).await;
    d2.kill().await;
    wait_until(
        "d1 to reroute the hung analyzer's packets",
        WAIT,
        || async {
            distributor_stats(stats, "d1")
                .await
                .is_some_and(|s| s.redelivered > 0)
        },
    )
    .await;
    hung.vanish();
}

/// Checks agent-sim's report: every packet stored by the stream was counted by an analyzer,
/// nothing lost, nothing dead-lettered, what was counted twice shown to be duplicates.
fn assert_nothing_lost(name: &str, status: std::process::ExitStatus, report: &serde_json::Value) {
    let v = verification(name, report);
    let s = &report["sent"];
    eprintln!(
        "  agent-sim: {} retries, {} duplicate acks, {} packets not stored",
        s["retries"], s["duplicate_acks"], s["failed_packets"]
    );
    assert_eq!(s["failed_packets"], 0, "{s:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["deadlettered"], 0, "{v:#}");
    assert!(v["sent"].as_u64().unwrap() > 40_000, "{v:#}");
    assert!(
        v["extra"] == 0 || v["extra_are_duplicates"] == true,
        "counted beyond what was sent without proof of duplicates: {v:#}"
    );
    assert!(status.success(), "agent-sim's own check: {v:#}");
}

/// The issue's run on one nats-server: replica d2 SIGKILLed, analyzer 3 hung (its heartbeats go
/// on, it never replies) and then gone, nats-server SIGKILLed and restarted on the same store;
/// agent-sim publishes with JetStream acknowledgements throughout.
#[tokio::test]
async fn replica_killed_analyzer_hung_then_gone_and_server_restarted_lose_nothing() {
    let mut server = NatsServer::start();
    let url = server.url();
    // Requests to the hung analyzer are still out when the server comes back.
    let timeout = ["--request-timeout", "3s"];
    let mut d1 = distributor(&url, "d1", Delivery::AtLeastOnce, &timeout);
    let mut d2 = distributor(&url, "d2", Delivery::AtLeastOnce, &timeout);
    // The default heartbeat interval (1 s): the distributors keep these analyzers online through
    // an outage shorter than 3 s and route to them as soon as they are back, whether or not the
    // analyzers have re-subscribed yet (what the issue saw).
    let slow_beating = |id: &str, weight: f64| {
        AnalyzerOptions::new(&url, id, weight)
            .heartbeat_interval(Duration::from_secs(1))
            .report_interval(Duration::from_millis(200))
            .spawn()
    };
    let a1 = slow_beating("1", 0.5);
    let a2 = slow_beating("2", 0.3);
    let mut hung = FakeAnalyzer::start(&url, "3", "i3", 0.2, Answers::None).await;
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    let stats = stats_bucket(&js).await;

    let _load = LOAD.lock().await;
    let mut sim = agent_sim_with(&url, "6s", Duration::from_secs(3), "jetstream", 100.0);
    replica_killed_then_hung_analyzer_gone(&stats, &mut d2, &mut hung).await;
    // SIGKILL, and down for a while once every client noticed: their reconnect back-off
    // (async-nats doubles it from 2 ms up to 4 s) then spreads their returns, so the distributors
    // can be back before some analyzers re-subscribed, as in the issue.
    server.kill();
    wait_until("every client to see the server gone", WAIT, || async {
        [&d1, &a1, &a2]
            .iter()
            .all(|p| p.stderr().contains("disconnected from NATS"))
    })
    .await;
    tokio::time::sleep(OUTAGE).await;
    eprintln!("restarting nats-server");
    server.restart(); // the same port and store
    let (status, report) = report(&mut sim).await;
    let js = jetstream(&url).await;
    let stats = stats_bucket(&js).await;
    let deadlettered = dead_letters(&stats, "d1").await + dead_letters(&stats, "d2").await;
    if status.code() != Some(0) || deadlettered > 0 || std::env::var_os("DUMP").is_some() {
        eprintln!("--- agent-sim:\n{}", sim.stderr());
        dump(&[&d1, &a1, &a2]);
    }
    assert_nothing_lost("replica, hung analyzer, server restart", status, &report);
    let (captured, _) = wait_consumer_drained(&js).await;
    // The client reports its reconnection from a task of its own, so a stats record written
    // right after the server came back can still say 0: wait for the next ones.
    wait_until("d1's stats to count its reconnection", WAIT, || async {
        distributor_stats(&stats, "d1")
            .await
            .is_some_and(|s| s.reconnects > 0)
    })
    .await;
    let last = distributor_stats(&stats, "d1").await.expect("d1's stats");
    eprintln!(
        "  stream captured {captured} packets, all acked; d1 redelivered {}, reconnected {}",
        last.redelivered, last.reconnects
    );
    assert!(last.reconnects > 0, "{last:#?}");
    assert_eq!(deadlettered, 0, "{last:#?}");
    assert!(d1.terminate(Duration::from_secs(20)).await.success());
}

/// The same on a 3-node cluster (stream replicas 3), the node that leads stream LOGS killed
/// instead of a restart.
#[tokio::test]
async fn replica_killed_analyzer_hung_then_gone_and_leader_node_killed_lose_nothing() {
    // First: two clusters electing leaders at once on 2 cores can outlast the harness's waits.
    let _load = LOAD.lock().await;
    let mut cluster = NatsCluster::start(3);
    cluster.wait_jetstream_ready(0).await;
    let all_from = |first: usize| {
        (0..3)
            .map(|i| cluster.url((first + i) % 3))
            .collect::<Vec<_>>()
            .join(",")
    };
    let js = jetstream(&cluster.url(0)).await;
    create_replicated_buckets(&js).await;
    let replicas = ["--stream-replicas", "3"];
    let mut d1 = distributor(&all_from(0), "d1", Delivery::AtLeastOnce, &replicas);
    let mut d2 = distributor(&all_from(1), "d2", Delivery::AtLeastOnce, &replicas);
    let a1 = analyzer(&all_from(1), "1", 0.5);
    let a2 = analyzer(&all_from(2), "2", 0.3);
    let mut hung = FakeAnalyzer::start(&cluster.url(0), "3", "i3", 0.2, Answers::None).await;
    wait_members(&js, 3).await;
    let js_ref = &js;
    let leader = std::cell::RefCell::new(String::new());
    let leader_ref = &leader;
    wait_until(
        "stream LOGS with 3 replicas and a leader",
        WAIT,
        || async move {
            let Ok(mut stream) = js_ref.get_stream("LOGS").await else {
                return false;
            };
            let Ok(info) = stream.info().await else {
                return false;
            };
            let name = info.cluster.as_ref().and_then(|c| c.leader.clone());
            match name {
                Some(name) if info.config.num_replicas == 3 => {
                    *leader_ref.borrow_mut() = name;
                    true
                }
                _ => false,
            }
        },
    )
    .await;
    let doomed: usize = leader.borrow()[1..].parse().expect("node names are n<i>");
    // The test's own client on a node that survives.
    let js = jetstream(&cluster.url((doomed + 1) % 3)).await;
    let stats = stats_bucket(&js).await;

    let mut sim = agent_sim_with(
        &cluster.urls(),
        "6s",
        Duration::from_secs(12),
        "jetstream",
        100.0,
    );
    replica_killed_then_hung_analyzer_gone(&stats, &mut d2, &mut hung).await;
    wait_members(&js, 2).await;
    eprintln!("killing node n{doomed}, the leader of stream LOGS");
    cluster.kill(doomed);
    let (status, report) = report(&mut sim).await;
    let deadlettered = dead_letters(&stats, "d1").await + dead_letters(&stats, "d2").await;
    if status.code() != Some(0) || deadlettered > 0 {
        eprintln!("--- agent-sim:\n{}", sim.stderr());
        dump(&[&d1, &a1, &a2]);
    }
    assert_nothing_lost(
        "replica, hung analyzer, leader node killed",
        status,
        &report,
    );
    assert_eq!(report["verification"]["stream"]["packets_left"], 0);
    let (captured, _) = wait_consumer_drained(&js).await;
    eprintln!("  stream captured {captured} packets, all acked");
    assert_eq!(deadlettered, 0);
    assert!(d1.terminate(Duration::from_secs(20)).await.success());
}

/// Publishes one small valid packet on `logs.ingest` every 10 ms until dropped.
fn steady_traffic(client: async_nats::Client) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0u64.. {
            tick.tick().await;
            let packet = format!(
                r#"[{{"timestamp":{i},"severity":"INFO","source":"steady","message":"m{i}"}}]"#
            );
            let _ = client.publish("logs.ingest", packet.into()).await;
        }
    })
}

/// One instance of analyzer 1 never answers while its other instance and analyzer 2 do: its
/// packets are delivered elsewhere, none is dead-lettered, and every one is acked.
#[tokio::test]
async fn a_silent_analyzer_instance_has_its_packets_delivered_elsewhere() {
    let server = NatsServer::start();
    let url = server.url();
    let d1 = distributor(
        &url,
        "d1",
        Delivery::AtLeastOnce,
        &["--request-timeout", "300ms", "--max-attempts", "3"],
    );
    let silent = FakeAnalyzer::start(&url, "1", "1b", 1.0, Answers::None).await;
    let good = [
        FakeAnalyzer::start(&url, "1", "1a", 1.0, Answers::All).await,
        FakeAnalyzer::start(&url, "2", "2a", 1.0, Answers::All).await,
    ];
    let js = jetstream(&url).await;
    wait_members(&js, 2).await;
    wait_until("the LOGS stream", WAIT, || async {
        js.get_stream("LOGS").await.is_ok()
    })
    .await;
    const PACKETS: u64 = 200;
    for i in 0..PACKETS {
        js.publish("logs.ingest", message_packet(i).into())
            .await
            .expect("publish")
            .await
            .expect("stored in LOGS");
    }
    let (captured, _) = wait_consumer_drained(&js).await;
    assert_eq!(captured, PACKETS);
    let stats = stats_bucket(&js).await;
    let stats_ref = &stats;
    wait_until("d1's stats after the run", WAIT, || async move {
        distributor_stats(stats_ref, "d1")
            .await
            .is_some_and(|s| s.routed_packets == PACKETS)
    })
    .await;
    let s = distributor_stats(&stats, "d1").await.unwrap();
    eprintln!(
        "silent instance received {}, the others {} and {}; {} redelivered",
        silent.received(),
        good[0].received(),
        good[1].received(),
        s.redelivered
    );
    if s.deadletter_packets > 0 {
        dump(&[&d1]);
    }
    assert_eq!(s.deadletter_packets, 0, "{s:#?}");
    assert!(silent.received() > 0, "the silent instance got no packet");
    assert!(s.redelivered >= silent.received(), "{s:#?}");
    // Every packet id was answered by one of the good ones.
    let mut answered: Vec<String> = good
        .iter()
        .flat_map(|a| a.log().into_iter().map(|(_, id, _)| id))
        .collect();
    answered.sort();
    answered.dedup();
    assert_eq!(answered.len() as u64, PACKETS);
}

fn message_packet(i: u64) -> String {
    format!(r#"[{{"timestamp":{i},"severity":"INFO","source":"t","message":"m{i}"}}]"#)
}

/// A packet that every analyzer online fails (here: never answers) while they answer the other
/// packets ends as `undeliverable` after `--max-attempts`, each attempt at another analyzer and
/// each retry later than the last by a growing delay; nothing else is dead-lettered.
#[tokio::test]
async fn a_packet_no_analyzer_answers_is_undeliverable_after_its_attempts_spread_in_time() {
    const POISON: &str = "poison-pill";
    let server = NatsServer::start();
    let url = server.url();
    let d1 = distributor(
        &url,
        "d1",
        Delivery::AtLeastOnce,
        &[
            "--request-timeout",
            "300ms",
            "--max-attempts",
            "3",
            "--retry-delay",
            "300ms",
        ],
    );
    let analyzers = [
        FakeAnalyzer::start(&url, "1", "i1", 1.0, Answers::AllBut(POISON)).await,
        FakeAnalyzer::start(&url, "2", "i2", 1.0, Answers::AllBut(POISON)).await,
        FakeAnalyzer::start(&url, "3", "i3", 1.0, Answers::AllBut(POISON)).await,
    ];
    let client = async_nats::connect(&url).await.unwrap();
    let mut deadletters = client.subscribe("logs.deadletter").await.unwrap();
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    wait_until("the LOGS stream", WAIT, || async {
        js.get_stream("LOGS").await.is_ok()
    })
    .await;
    let traffic = steady_traffic(client.clone());
    analyzers[0].wait_received(10).await;
    js.publish(
        "logs.ingest",
        format!(r#"{{"timestamp":1,"severity":"ERROR","source":"t","message":"{POISON}"}}"#).into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let letter = tokio::time::timeout(WAIT, deadletters.next())
        .await
        .expect("a dead letter in time")
        .unwrap();
    traffic.abort();
    let headers = letter.headers.clone().unwrap();
    let code = headers.get("Logdist-Error-Code").unwrap().as_str();
    let reason = headers.get("Logdist-Error").unwrap().as_str().to_string();
    if code != "undeliverable" {
        dump(&[&d1]);
    }
    assert_eq!(code, "undeliverable", "{reason}");
    assert!(reason.contains("3 attempts"), "{reason}");
    assert!(
        String::from_utf8_lossy(&letter.payload).contains(POISON),
        "the dead letter is the poison packet"
    );
    // One attempt at each analyzer (the ones that failed it are skipped), spread in time: each
    // retry waits the request time-out (300 ms), then the retry delay (300 ms, then 600 ms).
    let mut attempts: Vec<(Instant, String)> = analyzers
        .iter()
        .flat_map(|a| a.log())
        .filter(|(_, _, poison)| *poison)
        .map(|(at, id, _)| (at, id))
        .collect();
    attempts.sort();
    assert_eq!(attempts.len(), 3, "one request per analyzer: {attempts:?}");
    for (a, poison) in analyzers.iter().zip(1..) {
        let got = a.log().iter().filter(|(_, _, p)| *p).count();
        assert_eq!(got, 1, "analyzer {poison} got the poison {got} times");
    }
    assert!(attempts.iter().all(|(_, id)| id == &attempts[0].1));
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    eprintln!("poison attempts {gaps:?} apart");
    // Measured where the fake analyzers receive, so each gap is off by the difference of two
    // delivery latencies (once 0.1 ms short of 500 ms with 200 ms + 300 ms): 100 ms of slack.
    // Without the delays both gaps would be about 300 ms.
    let slack = Duration::from_millis(100);
    assert!(gaps[0] >= Duration::from_millis(600) - slack, "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(900) - slack, "{gaps:?}");
    assert!(
        gaps[1] >= gaps[0] + Duration::from_millis(300) - slack,
        "growing: {gaps:?}"
    );
    // Nothing else was dead-lettered, and the steady packets were all acked.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), deadletters.next())
            .await
            .is_err(),
        "a second dead letter"
    );
    wait_consumer_drained(&js).await;
}
