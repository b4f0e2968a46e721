//! The contract is implementable by someone else: `examples/nats_py_analyzer.py`, written with
//! nats-py from docs/protocol.md alone, gets its weighted share beside two of our analyzers
//! behind a real distributor, and withdraws cleanly on SIGTERM.

mod pipeline;

use std::time::Duration;

use logdist_testing::{wait_for_members, workspace_root, NatsServer, Process};
use pipeline::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_py_example_gets_its_share() {
    let server = NatsServer::start();
    let url = server.url();
    // The default request time-out: an interpreter on a loaded machine may take more than 1 s to
    // reach a packet, and a packet re-routed after a time-out is counted twice.
    let _distributor = distributor_with(&url, "d1", "at-least-once", "5s");
    let slow_heartbeats = ["--heartbeat-interval", "1s"];
    let _one = analyzer(&url, "1", "0.5", &slow_heartbeats);
    let _two = analyzer(&url, "2", "0.2", &slow_heartbeats);
    let script = workspace_root().join("examples/nats_py_analyzer.py");
    let script = script.to_str().unwrap();
    let mut example = Process::spawn_at(
        &python(),
        &[
            script,
            "--nats-url",
            &url,
            "--id",
            "py",
            "--weight",
            "0.3",
            "--instance",
            "ipy",
            "--report-interval",
            "0.2",
        ],
        &[],
    );
    let started = std::time::Instant::now();
    wait_for_members(&url, 3, WAIT).await;
    eprintln!("{:?} members", started.elapsed());
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stats = js.get_key_value("logdist_stats").await.unwrap();

    let sent = publish(&client, "py", 0..10_000, 500, Duration::from_millis(5)).await;
    let total = sent.len() as u64;
    let stats = &stats;
    let counts = || async move {
        [
            counted(stats, "1").await,
            counted(stats, "2").await,
            counted(stats, "py").await,
        ]
    };
    let deadline = std::time::Instant::now() + WAIT;
    while counts().await.iter().sum::<u64>() != total {
        assert!(
            std::time::Instant::now() < deadline,
            "counted {:?} (analyzers 1, 2, py) of {total} messages; example stderr:\n{}",
            counts().await,
            example.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{:?} counted", started.elapsed());
    wait_consumer_drained(&js).await;
    eprintln!("{:?} drained", started.elapsed());
    let share = counted(stats, "py").await as f64 / total as f64;
    eprintln!("nats-py example: {:.4}% of {total} messages", 100.0 * share);
    assert!((share - 0.3).abs() <= 0.001, "share {share}");

    let status = example.terminate(WAIT).await;
    eprintln!("{:?} terminated", started.elapsed());
    assert!(status.success(), "{}", example.stderr());
    assert!(example.stdout().contains("down:"), "{}", example.stdout());
    wait_for_members(&url, 2, WAIT).await;
}

/// The example reads batches: packets held while no analyzer was online leave coalesced once it
/// announces itself, and it counts every message of them, one packet at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_py_example_reads_batches() {
    let server = NatsServer::start();
    let url = server.url();
    let (_distributor, stats) = coalescing_distributor(&url).await;
    let client = async_nats::connect(&url).await.unwrap();
    let sent = publish(&client, "py", 0..2_000, 1000, Duration::ZERO).await;
    let total = sent.len() as u64;
    logdist_testing::wait_distributor_stats(&stats, "d1", "2000 packets held", |s| {
        s.held_packets == 2000
    })
    .await;
    let script = workspace_root().join("examples/nats_py_analyzer.py");
    let mut example = Process::spawn_at(
        &python(),
        &[
            script.to_str().unwrap(),
            "--nats-url",
            &url,
            "--id",
            "py",
            "--weight",
            "1",
            "--instance",
            "ipy",
            "--report-interval",
            "0.2",
        ],
        &[],
    );
    let stats = &stats;
    let record = || async move {
        match stats.get("analyzer.py.ipy").await {
            Ok(Some(v)) => serde_json::from_slice::<serde_json::Value>(&v).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    };
    logdist_testing::wait_until("the example counts every message", WAIT, || async move {
        record().await["messages"] == total
    })
    .await;
    let r = record().await;
    assert_eq!(r["packets"], 2000, "{r}");
    assert_eq!(r["invalid_packets"], 0, "{r}");
    let batches = r["batches"].as_u64().unwrap();
    let d = logdist_testing::distributor_stats(stats, "d1")
        .await
        .unwrap();
    assert!(d.batches_sent > 0, "{d:?}");
    assert_eq!(batches, d.batches_sent, "every batch read as one");
    assert!(
        example.terminate(WAIT).await.success(),
        "{}",
        example.stderr()
    );
}
