//! HTTP analyzers (`analyzer --forward-http`) against a real nats-server, a real distributor and a
//! real HTTP endpoint: the endpoint's share in every body format, at-least-once through an outage
//! and through the endpoint's death, and refused payloads dead-lettered with the status.

mod pipeline;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::StreamExt;
use logdist_testing::{wait_for_members, NatsServer};
use pipeline::*;

/// Target share of the HTTP analyzer: 0.3 beside native analyzers of 0.5 and 0.2.
const TARGET: f64 = 0.3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_analyzer_gets_its_share_in_every_format() {
    let server = NatsServer::start();
    let url = server.url();
    let _distributor = distributor(&url, "d1", "at-most-once");
    // Heartbeats of 1 s: a debug build on a loaded machine can miss a 300 ms heartbeat time-out,
    // and a membership change in the middle of a round would move the shares.
    let slow_heartbeats = ["--heartbeat-interval", "1s"];
    let _one = analyzer(&url, "1", "0.5", &slow_heartbeats);
    let _two = analyzer(&url, "2", "0.2", &slow_heartbeats);
    wait_for_members(&url, 2, WAIT).await;
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stats = js.get_key_value("logdist_stats").await.unwrap();

    for format in ["packet", "ndjson", "message"] {
        let endpoint = TestEndpoint::start();
        let endpoint_url = endpoint.url();
        let mut http = analyzer(
            &url,
            "7",
            "0.3",
            &[
                "--forward-http",
                &endpoint_url,
                "--forward-format",
                format,
                "--heartbeat-interval",
                "1s",
            ],
        );
        wait_for_members(&url, 3, WAIT).await;
        let (one, two) = (counted(&stats, "1").await, counted(&stats, "2").await);
        let sent = publish(&client, format, 0..10_000, 500, Duration::from_millis(5)).await;
        let total = sent.len() as u64;
        let (stats, received) = (&stats, &endpoint.received);
        eventually(
            &format!("{format}: all {total} messages received"),
            || async move {
                let native = counted(stats, "1").await - one + counted(stats, "2").await - two;
                native + received.messages() == total
            },
        )
        .await;
        let share = received.messages() as f64 / total as f64;
        eprintln!(
            "{format}: endpoint {} of {total} messages = {:.4}% ({} requests)",
            received.messages(),
            100.0 * share,
            received.requests.load(Ordering::SeqCst)
        );
        assert!(
            (share - TARGET).abs() <= 0.001,
            "{format}: share {share} vs {TARGET}"
        );
        assert_eq!(*received.forms.lock().unwrap(), BTreeSet::from([format]));
        // Every message once, and only messages that were sent.
        let ids = received.ids();
        assert_eq!(ids.len() as u64, received.messages(), "{format}: repeats");
        assert!(ids.is_subset(&sent));
        if format == "message" {
            assert_eq!(
                received.requests.load(Ordering::SeqCst),
                received.messages()
            );
        }
        let status = http.terminate(WAIT).await;
        assert!(status.success(), "{format}: {}", http.stderr());
        wait_for_members(&url, 2, WAIT).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_an_outage_and_the_endpoints_death_lose_nothing() {
    let server = NatsServer::start();
    let url = server.url();
    let _distributor = distributor(&url, "d1", "at-least-once");
    let one = analyzer(&url, "1", "0.5", &["--print"]);
    let two = analyzer(&url, "2", "0.2", &["--print"]);
    let mut endpoint = TestEndpoint::start();
    let endpoint_url = endpoint.url();
    let http = analyzer(
        &url,
        "7",
        "0.3",
        &[
            "--forward-http",
            &endpoint_url,
            "--heartbeat-interval",
            "1s",
            "--health-interval",
            "200ms",
        ],
    );
    wait_for_members(&url, 3, WAIT).await;
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());

    // 1. Under load, the endpoint answers 503 for 2.5 s, then recovers.
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            publish(&client, "a", 0..6_000, 100, Duration::from_millis(100)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    endpoint.received.failing.store(true, Ordering::SeqCst);
    let js_ref = &js;
    eventually(
        "the failing endpoint's analyzer to withdraw",
        || async move { !is_member(js_ref, "7").await },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let before_recovery = endpoint.received.messages();
    endpoint.received.failing.store(false, Ordering::SeqCst);
    eventually(
        "the recovered endpoint's analyzer to come back",
        || async move { is_member(js_ref, "7").await },
    )
    .await;
    let mut sent = load.await.unwrap();
    assert!(
        endpoint.received.messages() > before_recovery,
        "the endpoint got packets again after it recovered"
    );

    // 2. Under load, the endpoint dies for good: its share moves within the heartbeat time-out.
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            publish(&client, "b", 0..3_000, 100, Duration::from_millis(100)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    endpoint.kill();
    let killed = Instant::now();
    eventually("the dead endpoint's analyzer to withdraw", || async move {
        !is_member(js_ref, "7").await
    })
    .await;
    let moved_after = killed.elapsed();
    eprintln!("share moved {moved_after:?} after the endpoint died");
    assert!(
        moved_after < Duration::from_secs(3),
        "not within the heartbeat time-out (3 x 1s): {moved_after:?}"
    );
    sent.extend(load.await.unwrap());

    // Every packet acknowledged, and every message reached an analyzer or the endpoint.
    wait_consumer_drained(&js).await;
    let mut seen = endpoint.received.ids();
    seen.extend(printed_ids(&one));
    seen.extend(printed_ids(&two));
    let lost: Vec<_> = sent.difference(&seen).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} of {} messages lost, e.g. {lost:?}; analyzer 7 stderr:\n{}",
        sent.difference(&seen).count(),
        sent.len(),
        http.stderr()
    );
    eprintln!(
        "sent {} messages; the endpoint received {} of them",
        sent.len(),
        endpoint.received.ids().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_payloads_are_dead_lettered_and_acks_wait_for_a_2xx() {
    let server = NatsServer::start();
    let url = server.url();
    let endpoint = TestEndpoint::start();
    let endpoint_url = endpoint.url();
    let client = async_nats::connect(&url).await.unwrap();
    let mut control = client.subscribe("logdist.control.*").await.unwrap();
    let mut deadletters = client.subscribe("logs.deadletter").await.unwrap();
    client.flush().await.unwrap();
    let mut http = analyzer(
        &url,
        "9",
        "1",
        &[
            "--forward-http",
            &endpoint_url,
            "--forward-format",
            "message",
            "--health-interval",
            "200ms",
        ],
    );
    tokio::time::timeout(WAIT, control.next())
        .await
        .expect("the analyzer announces itself once its endpoint answers");

    let records = [
        r#"{"timestamp":1,"severity":"INFO","source":"a","message":"ok-0"}"#,
        r#"{"timestamp":2,"severity":"INFO","source":"a","message":"reject-me-1"}"#,
        r#"{"timestamp":3,"severity":"INFO","source":"a","message":"ok-2"}"#,
    ];
    let packet = format!("[{}]", records.join(","));
    let request = |id: &str, payload: String| {
        let mut headers = HeaderMap::new();
        headers.insert("Logdist-Packet-Id", id);
        headers.insert("Logdist-Agent", "agent-7");
        async_nats::Request::new()
            .headers(headers)
            .payload(payload.into())
            .timeout(Some(WAIT))
    };
    client
        .send_request("analyzer.9", request("T:1", packet.clone()))
        .await
        .expect("acknowledged once every request is settled");
    let dead = tokio::time::timeout(WAIT, deadletters.next())
        .await
        .expect("a dead letter")
        .unwrap();
    let headers = dead.headers.clone().unwrap();
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(dead.payload, records[1].as_bytes());
    assert_eq!(
        header("Logdist-Error-Code").as_deref(),
        Some("http_rejected")
    );
    assert_eq!(header("Logdist-Http-Status").as_deref(), Some("400"));
    assert_eq!(header("Logdist-Index").as_deref(), Some("1"));
    assert_eq!(header("Logdist-Analyzer").as_deref(), Some("9.i9"));
    assert_eq!(header("Logdist-Agent").as_deref(), Some("agent-7"));
    let reason = header("Logdist-Error").unwrap();
    assert!(
        reason.contains("HTTP 400") && reason.contains("is not allowed here\\nsecond line"),
        "{reason}"
    );
    assert_eq!(
        endpoint.received.ids(),
        BTreeSet::from(["ok-0".to_string(), "ok-2".to_string()])
    );

    // A redelivery of an acknowledged packet is acknowledged without posting it again.
    let requests = endpoint.received.requests.load(Ordering::SeqCst);
    client
        .send_request("analyzer.9", request("T:1", packet.clone()))
        .await
        .expect("a duplicate is acknowledged");
    assert_eq!(endpoint.received.requests.load(Ordering::SeqCst), requests);

    // While the endpoint answers 503 the packet is not acknowledged; after it recovers, it is.
    endpoint.received.failing.store(true, Ordering::SeqCst);
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Logdist-Packet-Id", "T:2");
    client
        .publish_with_reply_and_headers(
            "analyzer.9",
            inbox,
            headers,
            format!("[{}]", records[0].replace("ok-0", "later-0")).into(),
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1_500), replies.next())
            .await
            .is_err(),
        "acknowledged before the endpoint took it"
    );
    assert!(endpoint.received.requests.load(Ordering::SeqCst) > requests);
    endpoint.received.failing.store(false, Ordering::SeqCst);
    tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("acknowledged once the endpoint answered 2xx");
    assert!(endpoint.received.ids().contains("later-0"));

    assert!(http.terminate(WAIT).await.success(), "{}", http.stderr());
    let stats = async_nats::jetstream::new(client.clone())
        .get_key_value("logdist_stats")
        .await
        .unwrap();
    let value = stats.get("analyzer.9.i9").await.unwrap().unwrap();
    let record: logdist::protocol::stats::AnalyzerStats = serde_json::from_slice(&value).unwrap();
    let forward = record.forward.clone().expect("forwarding counters");
    assert_eq!((record.messages, record.duplicates), (3, 1), "{record:#?}");
    assert_eq!(forward.rejected_requests, 1, "{forward:#?}");
    assert_eq!(forward.deadletter_messages, 1, "{forward:#?}");
    assert!(forward.retries > 0, "{forward:#?}");
    assert_eq!(forward.format, "message");
}
