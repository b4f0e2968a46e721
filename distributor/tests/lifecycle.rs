//! Process lifecycle: SIGTERM drains and exits 0 with final stats, bad usage exits 2, a missing
//! NATS server is retried with a clear message, and a SIGTERM after the server died is obeyed in
//! bounded time.

mod common;

use bytes::Bytes;
use common::*;
use logdist_testing::{free_port, NatsServer, Process};

#[tokio::test]
async fn sigterm_routes_what_is_in_hand_and_writes_final_stats() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &[]).await;
    let (members, stats) = buckets(&client).await;
    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;

    let payload = Bytes::from(packet(10));
    for _ in 0..2000 {
        client.publish(INGEST, payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    // Terminate while packets are still in flight.
    let status = distributor.terminate(WAIT).await;
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        distributor.stderr()
    );
    let s = distributor_stats(&stats, "r1").await.expect("final stats");
    assert_eq!(
        s.received_packets, s.routed_packets,
        "everything received was routed"
    );
    assert!(s.received_packets > 0);
    // What the replica routed, the analyzer gets (the client flushed before exiting).
    a.wait_packets(s.routed_packets).await;
    assert_eq!(a.messages(), s.routed_messages);
    assert!(distributor.stderr().contains("writing final stats"));
}

#[tokio::test]
async fn bad_usage_exits_2() {
    for args in [
        &["run", "--replica-id", "not.valid"][..],
        &["--stats-interval", "10s"],
        &["--no-such-flag"],
        &["stats", "--interval", "0s"],
    ] {
        let mut p = Process::spawn("distributor", args, &[]);
        let status = p.wait(WAIT).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {}", p.stderr());
    }
    let mut help = Process::spawn("distributor", &["--help"], &[]);
    assert!(help.wait(WAIT).await.success());
    let text = help.stdout();
    for flag in [
        "--hold-max-packets",
        "--hold-max-bytes",
        "--heartbeat-timeout-factor",
        "--nats-url",
        "DISTRIBUTOR_REPLICA_ID",
        "[default: 10000]",
    ] {
        assert!(text.contains(flag), "--help mentions {flag}");
    }
}

#[tokio::test]
async fn missing_nats_is_retried_with_a_clear_message() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let mut p = Process::spawn("distributor", &["--nats-url", &url], &[]);
    logdist_testing::wait_until("a retry warning", WAIT, || async {
        p.stderr().contains("cannot reach NATS")
    })
    .await;
    let status = p.terminate(WAIT).await;
    assert!(status.success(), "{}", p.stderr());
}

/// A distributor told to stop after its NATS server died (a node going down with it) exits in
/// bounded time instead of waiting forever for a drain, a publish or a flush that cannot happen.
#[tokio::test]
async fn sigterm_after_the_server_died_exits_in_bounded_time() {
    sigterm_after_the_server_died(&[]).await;
}

#[tokio::test]
async fn sigterm_after_the_server_died_exits_in_bounded_time_at_least_once() {
    sigterm_after_the_server_died(&["--delivery", "at-least-once"]).await;
}

async fn sigterm_after_the_server_died(args: &[&str]) {
    let mut server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", args).await;
    let (members, _stats) = buckets(&client).await;
    let _a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;

    // Enough traffic that the distributor has packets in hand and publishes queued when the
    // server goes.
    let payload = Bytes::from(packet(100));
    for _ in 0..5000 {
        client.publish(INGEST, payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    server.kill();
    let started = std::time::Instant::now();
    // Drain (10 s) and the final writes (5 s each) are bounded; 40 s covers them all.
    let status = distributor
        .terminate(std::time::Duration::from_secs(40))
        .await;
    eprintln!("exited after {:?} with {status:?}", started.elapsed());
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        distributor.stderr()
    );
}

/// async-nats 0.51 ends its connection task on a header value with a bare carriage return
/// (nats-io/nats.rs#1612), and any client allowed to publish on an ingest subject can send one:
/// the distributor must then stop with an error that says so, so a supervisor restarts it,
/// instead of running on and routing nothing.
#[tokio::test]
async fn a_stopped_nats_connection_task_stops_the_distributor_with_an_error() {
    let server = NatsServer::start();
    let mut distributor = start_distributor(&server, "r1", &[]).await;
    let header = b"NATS/1.0\r\nLogdist-Agent: a\rb\r\n\r\n";
    let payload = br#"{"timestamp":1,"severity":"INFO","source":"s","message":"m"}"#;
    logdist_testing::publish_raw(&server.url(), "logs.ingest.raw", header, payload);

    let status = distributor.wait(WAIT).await;
    let stderr = distributor.stderr();
    assert!(!status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("connection task stopped"),
        "the error says why: {stderr}"
    );
}
