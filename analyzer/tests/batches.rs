//! Our analyzer reads batches (docs/protocol.md "Batches") in every mode — built-in analysis,
//! `--forward-http` and `--exec` — behind a real distributor and nats-server: every log message
//! once, and the batches counted in its stats record.
//!
//! Packets published while no analyzer is online are held by the distributor and leave together
//! when one comes online, so batches form for certain, whatever the machine's load.

mod pipeline;

use std::collections::BTreeSet;
use std::time::Duration;

use logdist::protocol::stats::{analyzer_key, AnalyzerStats};
use logdist_testing::{wait_distributor_stats, wait_for_members, NatsServer};
use pipeline::*;

async fn record(stats: &async_nats::jetstream::kv::Store, id: &str) -> AnalyzerStats {
    let key = analyzer_key(id, &format!("i{id}"));
    match stats.get(key).await {
        Ok(Some(value)) => serde_json::from_slice(&value).unwrap_or_default(),
        _ => AnalyzerStats::default(),
    }
}

/// Publishes packets `range` of `tag` while no analyzer is online and waits until the
/// distributor holds them all (`held` in total so far).
async fn publish_held(
    client: &async_nats::Client,
    stats: &async_nats::jetstream::kv::Store,
    tag: &str,
    range: std::ops::Range<usize>,
) -> BTreeSet<String> {
    let n = range.len() as u64;
    let sent = publish(client, tag, range, 1000, Duration::ZERO).await;
    wait_distributor_stats(stats, "d1", &format!("{tag}: {n} packets held"), |s| {
        s.held_packets == n
    })
    .await;
    sent
}

fn lines(path: &std::path::Path) -> BTreeSet<String> {
    file_lines(path).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_reads_batches() {
    let server = NatsServer::start();
    let url = server.url();
    let (_distributor, stats) = coalescing_distributor(&url).await;
    let client = async_nats::connect(&url).await.unwrap();

    // Built-in analysis, printing each message.
    let sent = publish_held(&client, &stats, "native", 0..1000).await;
    let mut native = analyzer(&url, "1", "1", &["--print"]);
    let total = sent.len() as u64;
    let stats_ref = &stats;
    eventually(
        "the built-in analyzer counts every message",
        || async move { record(stats_ref, "1").await.messages == total },
    )
    .await;
    let r = record(&stats, "1").await;
    assert_eq!(
        r.packets, 1000,
        "each packet of a batch counted as a packet"
    );
    assert!(r.batches > 0 && r.batches < 1000, "batches: {}", r.batches);
    assert_eq!(r.invalid_packets, 0);
    assert!(
        native.terminate(WAIT).await.success(),
        "{}",
        native.stderr()
    );
    let printed: Vec<String> = native
        .stdout()
        .lines()
        .filter_map(|line| line.rsplit_once(": ").map(|(_, id)| id.to_string()))
        .filter(|id| id.starts_with("native-"))
        .collect();
    assert_eq!(printed.len(), sent.len(), "every message printed once");
    assert_eq!(printed.into_iter().collect::<BTreeSet<_>>(), sent);
    wait_for_members(&url, 0, WAIT).await;

    // An HTTP analyzer: each packet of a batch is its own request, as if it had come alone.
    let sent = publish_held(&client, &stats, "http", 0..1000).await;
    let endpoint = TestEndpoint::start();
    let mut http = analyzer(&url, "2", "1", &["--forward-http", &endpoint.url()]);
    let (total, received) = (sent.len() as u64, &endpoint.received);
    eventually("the endpoint receives every message", || async move {
        received.messages() == total
    })
    .await;
    assert_eq!(endpoint.received.ids(), sent, "every message once");
    // Its stats record catches up at the next report.
    eventually("batches counted", || async move {
        let r = record(stats_ref, "2").await;
        r.messages == total && r.batches > 0
    })
    .await;
    assert!(http.terminate(WAIT).await.success(), "{}", http.stderr());
    wait_for_members(&url, 0, WAIT).await;

    // A process analyzer: one line per log message on its stdin.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lines.txt");
    let command = format!(
        "exec '{}' -u -c 'import json,sys\nfor l in sys.stdin: print(json.loads(l)[\"message\"], flush=True)' >> '{}'",
        python().display(),
        out.display()
    );
    let sent = publish_held(&client, &stats, "exec", 0..1000).await;
    let mut child = analyzer(&url, "3", "1", &["--exec", &command]);
    let (total, out_ref) = (sent.len(), &out);
    eventually("the child reads every message", || async move {
        lines(out_ref).len() == total
    })
    .await;
    assert_eq!(lines(&out), sent);
    // Its stats record catches up at the next report.
    eventually("batches counted", || async move {
        let r = record(stats_ref, "3").await;
        r.messages == total as u64 && r.batches > 0
    })
    .await;
    assert!(child.terminate(WAIT).await.success(), "{}", child.stderr());
}

/// At-least-once: an HTTP analyzer gets requests that are batches, posts each packet, and
/// answers each batch once, after every packet of it got its 2xx: the stream empties with
/// every message delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_analyzer_acknowledges_each_batch_once_at_least_once() {
    let server = NatsServer::start();
    let url = server.url();
    let _distributor = distributor(&url, "d1", "at-least-once");
    let endpoint = TestEndpoint::start();
    let _http = analyzer(&url, "2", "1", &["--forward-http", &endpoint.url()]);
    wait_for_members(&url, 1, WAIT).await;
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // Stored first, then pulled 500 at a time: requests carry batches.
    let mut sent = BTreeSet::new();
    let mut acks = Vec::new();
    for n in 0..2000 {
        let (payload, size) = packet("alo", n);
        sent.extend((0..size).map(|k| format!("alo-{n}-{k}")));
        acks.push(
            js.publish("logs.ingest.test", payload.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    wait_consumer_drained(&js).await;
    assert_eq!(endpoint.received.ids(), sent, "every message delivered");
    let stats = js.get_key_value("logdist_stats").await.unwrap();
    let stats_ref = &stats;
    eventually("the batches counted", || async move {
        let r = record(stats_ref, "2").await;
        r.packets + r.duplicates >= 2000 && r.batches > 0
    })
    .await;
    let d = logdist_testing::distributor_stats(&stats, "d1")
        .await
        .unwrap();
    assert!(d.batches_sent > 0, "{d:?}");
    assert_eq!(d.deadletter_packets, 0);
}

/// The built-in analysis reads each packet of a batch in place, from the batch's lists: its
/// `Logdist-Packet-Id` (a repeat within the batch is dropped), its `Logdist-Sent-At` (latency)
/// and its payload (an invalid one counted, the rest analyzed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_analysis_reads_packet_ids_and_sent_at_from_a_batch() {
    use async_nats::HeaderValue;
    use bytes::Bytes;
    use logdist::protocol::batch::BatchBuilder;
    use logdist::protocol::headers::name;

    let server = NatsServer::start();
    let url = server.url();
    let (_distributor, stats) = coalescing_distributor(&url).await;
    let client = async_nats::connect(&url).await.unwrap();
    let mut native = analyzer(&url, "1", "1", &[]);
    wait_for_members(&url, 1, WAIT).await;

    let record_of = |i: usize| {
        Bytes::from(format!(
            r#"{{"timestamp":1,"severity":"INFO","source":"s","message":"m{i}"}}"#
        ))
    };
    let packet_headers = |sent_at: Option<u128>| {
        let mut h = async_nats::HeaderMap::new();
        h.insert(name::AGENT, "a1");
        if let Some(at) = sent_at {
            h.insert(name::SENT_AT, at.to_string().as_str());
        }
        h
    };
    let now = logdist::protocol::headers::unix_nanos_now();
    let mut builder = BatchBuilder::new();
    // Packet 1 twice (a redelivery in the same batch), packet 2 without Sent-At, packet 3 of
    // two messages.
    builder.push_with_packet_id(&packet_headers(Some(now)), &record_of(1), 1, "LOGS:1");
    builder.push_with_packet_id(&packet_headers(Some(now)), &record_of(1), 1, "LOGS:1");
    builder.push_with_packet_id(&packet_headers(None), &record_of(2), 1, "LOGS:2");
    let two = Bytes::from(format!(
        "[{},{}]",
        std::str::from_utf8(&record_of(3)).unwrap(),
        std::str::from_utf8(&record_of(4)).unwrap()
    ));
    builder.push_with_packet_id(&packet_headers(Some(now)), &two, 2, "LOGS:3");
    let (headers, payload) = builder.finish(&HeaderValue::from("d1"));
    client
        .publish_with_headers("analyzer.1", headers, payload)
        .await
        .unwrap();
    // A second batch: one valid packet and one that is not JSON.
    builder.push(&packet_headers(Some(now)), &record_of(5), 1);
    builder.push(&packet_headers(None), &Bytes::from_static(b"not json"), 1);
    let (headers, payload) = builder.finish(&HeaderValue::from("d1"));
    client
        .publish_with_headers("analyzer.1", headers, payload)
        .await
        .unwrap();
    client.flush().await.unwrap();

    let stats_ref = &stats;
    eventually("both batches counted", || async move {
        let r = record(stats_ref, "1").await;
        r.batches == 2 && r.packets + r.duplicates + r.invalid_packets == 6
    })
    .await;
    let r = record(&stats, "1").await;
    assert_eq!((r.packets, r.messages), (4, 5), "{r:?}");
    assert_eq!(r.duplicates, 1, "the repeat of LOGS:1");
    assert_eq!(r.invalid_packets, 1);
    let latency = r
        .latency
        .expect("latencies from the batches' Sent-At lists");
    assert_eq!(
        latency.count, 3,
        "the analyzed packets that had a Sent-At: {latency:?}"
    );
    assert!(
        native.terminate(WAIT).await.success(),
        "{}",
        native.stderr()
    );
}
