//! `agent-sim --publish jetstream` against a real nats-server: with a distributor in
//! `--delivery at-least-once` mode, what agents publish while the server is down and restarted is
//! retried until the stream stored it, and every message is counted by the analyzer; what can
//! never be stored is counted and reported as failed; without a stream capturing the subjects,
//! agent-sim stops at once with an error that says what to run.

use std::time::Duration;

use async_nats::jetstream;
use logdist_testing::{
    wait_for_members, wait_until, AgentSimOptions, AnalyzerOptions, Delivery, DistributorOptions,
    NatsServer, Process, WAIT,
};

/// A distributor in at-least-once mode and one analyzer (so that every repeat of a packet reaches
/// the instance that drops repeats by packet id: sent must equal counted exactly).
fn start_pipeline(url: &str) -> (Process, Process) {
    let distributor = DistributorOptions::new(url)
        .replica("d1")
        .stats_interval(Duration::from_millis(200))
        .delivery(Delivery::AtLeastOnce)
        .args(&["--ack-wait", "2s", "--request-timeout", "1s"])
        .spawn();
    let analyzer = AnalyzerOptions::new(url, "1", 1.0)
        .heartbeat_interval(Duration::from_millis(500))
        .report_interval(Duration::from_millis(200))
        .spawn();
    (distributor, analyzer)
}

/// Messages analyzer 1 (instance i1) has counted and checkpointed.
async fn analyzed(js: &jetstream::Context) -> u64 {
    let Ok(stats) = js
        .get_key_value(logdist::protocol::names::DEFAULT_STATS_BUCKET)
        .await
    else {
        return 0;
    };
    let Ok(Some(value)) = stats
        .get(logdist::protocol::stats::analyzer_key("1", "i1"))
        .await
    else {
        return 0;
    };
    serde_json::from_slice::<logdist::protocol::stats::AnalyzerStats>(&value)
        .map_or(0, |s| s.messages)
}

#[tokio::test]
async fn jetstream_publishing_loses_nothing_while_the_server_is_down_and_restarted() {
    let mut server = NatsServer::start();
    let url = server.url();
    let (_distributor, analyzer) = start_pipeline(&url);
    wait_for_members(&url, 1, WAIT).await;
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let js_ref = &js;
    wait_until("stream LOGS", WAIT, || async move {
        js_ref.get_stream(logdist_testing::STREAM).await.is_ok()
    })
    .await;

    let mut sim = AgentSimOptions::new(&url)
        .args(&[
            "--publish",
            "jetstream",
            "--ack-timeout",
            "2s",
            "--agents",
            "4",
            "--packet-size",
            "1..100",
            "--rate",
            "20000",
            "--duration",
            "8s",
        ])
        .verify(Duration::from_secs(4))
        // One analyzer: the share is 100 %; this checks loss.
        .max_deviation(100.0)
        .spawn();
    wait_until("analyzer 1 to count 5,000 messages", WAIT, || async move {
        analyzed(js_ref).await >= 5_000
    })
    .await;
    // Down for 3 s, longer than agent-sim's --ack-timeout: what the agents published meanwhile is
    // not acknowledged and must be published again.
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();

    let status = sim.wait(Duration::from_secs(150)).await;
    let report: serde_json::Value = serde_json::from_str(&sim.stdout()).unwrap_or_else(|e| {
        panic!(
            "JSON report ({e}); stderr:\n{}\nanalyzer:\n{}",
            sim.stderr(),
            analyzer.stderr()
        )
    });
    let (s, v) = (&report["sent"], &report["verification"]);
    eprintln!(
        "sent {} stored packets {} retries {} duplicate acks {} failed {}; received {} extra {} stream {}",
        s["messages"],
        s["packets"],
        s["retries"],
        s["duplicate_acks"],
        s["failed_packets"],
        v["received"],
        v["extra"],
        v["stream"]
    );
    assert!(status.success(), "{report:#}\n{}", sim.stderr());
    assert_eq!(s["publish"], "jetstream");
    assert_eq!(s["failed_packets"], 0, "{s:#}");
    assert!(
        s["retries"].as_u64().unwrap() > 0,
        "the outage cost no retry: {s:#}"
    );
    assert!(s["messages"].as_u64().unwrap() > 50_000, "{s:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["received"], v["sent"], "{v:#}");
    assert_eq!(v["stream"]["packets_left"], 0, "{v:#}");
}

#[tokio::test]
async fn jetstream_publishing_without_a_stream_fails_at_once_and_says_what_to_run() {
    // JetStream is on, but no distributor created the stream LOGS.
    let server = NatsServer::start();
    let mut sim = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &server.url(),
            "--publish",
            "jetstream",
            "--count",
            "1000",
        ],
        &[],
    );
    let started = std::time::Instant::now();
    let status = sim.wait(WAIT).await;
    assert_eq!(status.code(), Some(1), "{}", sim.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not within the retry budget: {:?}",
        started.elapsed()
    );
    let stderr = sim.stderr();
    for needle in [
        "no JetStream stream captures logs.ingest.sim-",
        "no responders",
        "--delivery at-least-once",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in:\n{stderr}");
    }
    assert!(sim.stdout().is_empty(), "no report: {}", sim.stdout());
}

#[tokio::test]
async fn packets_never_stored_are_counted_as_failed_not_dropped() {
    let mut server = NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: logdist_testing::STREAM.into(),
        subjects: vec![logdist::Names::default().ingest_wildcard()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut sim = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &server.url(),
            "--publish",
            "jetstream",
            "--ack-timeout",
            "500ms",
            "--retry-timeout",
            "2s",
            "--agents",
            "2",
            "--packet-size",
            "10",
            "--rate",
            "2000",
            "--duration",
            "4s",
            "--json",
        ],
        &[],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill(); // and never back
    let status = sim.wait(Duration::from_secs(60)).await;
    let report: serde_json::Value = serde_json::from_str(&sim.stdout())
        .unwrap_or_else(|e| panic!("JSON report ({e}); stderr:\n{}", sim.stderr()));
    let s = &report["sent"];
    eprintln!("{s:#}");
    assert_eq!(status.code(), Some(1), "{s:#}");
    let stored = s["messages"].as_u64().unwrap();
    let failed = s["failed_messages"].as_u64().unwrap();
    assert!(stored > 1_000, "stored before the kill: {s:#}");
    assert!(s["failed_packets"].as_u64().unwrap() > 0, "{s:#}");
    assert!(failed > 0, "{s:#}");
    assert!(s["last_publish_error"].is_string(), "{s:#}");
    // 2,000 messages/s for 4 s: every one was either stored or counted as failed.
    assert!(
        (7_800..=8_020).contains(&(stored + failed)),
        "stored {stored} + failed {failed}: {s:#}"
    );
    assert!(
        sim.stderr().contains("was not stored"),
        "a warning names the first failure:\n{}",
        sim.stderr()
    );
}
