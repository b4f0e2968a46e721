//! Coalescing against a real nats-server (docs/protocol.md "Batches"): packets for one analyzer
//! go out together only to analyzers that announce `"batch": 1`, the shares by message count do
//! not change, `--linger 0` sends one NATS message per packet, and every packet arrives whole
//! with its own headers.
//!
//! The analyzers here are raw NATS subscribers that count NATS messages and the packets in
//! them (read with `logdist::protocol::batch::split`, as any analyzer would).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use common::*;
use futures::StreamExt;
use logdist::protocol::batch;
use logdist::protocol::control::{ControlMessage, Heartbeat};
use logdist::protocol::headers;
use logdist_testing::{wait_until, NatsServer};

/// Heartbeat interval of the raw analyzers: long enough that a loaded machine does not time
/// them out mid-run (which would restart the shares' epoch).
const RAW_HEARTBEAT: Duration = Duration::from_secs(1);

/// What one raw analyzer received.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// NATS messages.
    nats_messages: u64,
    /// Of those, batches.
    batches: u64,
    /// Packets (a batch's counted one by one).
    packets: u64,
    /// Log messages, from `Logdist-Count` of each packet.
    messages: u64,
    /// `Logdist-Seq` of every packet, in arrival order.
    seqs: Vec<u64>,
    /// Packets whose payload did not match its own `Logdist-Count` header (must stay 0).
    mismatched: u64,
    /// `Logdist-Packet-Id` of every packet (at-least-once).
    packet_ids: Vec<String>,
}

/// A raw analyzer: a queue subscription on `analyzer.<id>` and heartbeats announcing `batch`.
struct RawAnalyzer {
    id: String,
    weight: f64,
    counts: Arc<Mutex<Counts>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RawAnalyzer {
    async fn start(client: &Client, id: &str, weight: f64, batch_version: u32) -> RawAnalyzer {
        Self::start_replying(client, id, weight, batch_version, true).await
    }

    /// [`start`](Self::start); `reply: false` never acknowledges (a hung analyzer).
    async fn start_replying(
        client: &Client,
        id: &str,
        weight: f64,
        batch_version: u32,
        reply: bool,
    ) -> RawAnalyzer {
        let subject = format!("analyzer.{id}");
        let mut sub = client
            .queue_subscribe(subject.clone(), subject.clone())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let sink = counts.clone();
        let replier = client.clone();
        let receive = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply.clone().filter(|_| reply) {
                    // At-least-once: one reply acknowledges the packet, or the whole batch.
                    let _ = replier.publish(reply, Bytes::new()).await;
                }
                let mut c = sink.lock().unwrap();
                c.nats_messages += 1;
                // No header comes empty: a batch list no packet had a value for is not sent at
                // all (the distributor builds batches from a template that names every list).
                for (name, values) in msg.headers.iter().flat_map(|h| h.iter()) {
                    assert!(
                        values.iter().all(|v| !v.as_str().is_empty()),
                        "{name} came with an empty value: {:?}",
                        msg.headers
                    );
                }
                let parts = batch::split(msg.headers.as_ref(), msg.payload.len())
                    .expect("a readable batch");
                let packets: Vec<(async_nats::HeaderMap, Bytes)> = match parts {
                    Some(parts) => {
                        c.batches += 1;
                        let h = msg.headers.as_ref().unwrap();
                        parts
                            .iter()
                            .map(|p| (p.headers(h), msg.payload.slice(p.range.clone())))
                            .collect()
                    }
                    None => vec![(msg.headers.clone().unwrap_or_default(), msg.payload.clone())],
                };
                for (h, payload) in packets {
                    let count: u64 = h.get(headers::COUNT).unwrap().as_str().parse().unwrap();
                    let parsed = logdist::PacketValidator::default()
                        .count_if_valid(&payload)
                        .map(|n| n as u64);
                    if parsed != Some(count) {
                        c.mismatched += 1;
                    }
                    c.packets += 1;
                    c.messages += count;
                    if let Some(seq) = h.get(headers::SEQ) {
                        c.seqs.push(seq.as_str().parse().unwrap());
                    }
                    if let Some(id) = h.get(headers::PACKET_ID) {
                        c.packet_ids.push(id.to_string());
                    }
                }
            }
        });
        let beat = Bytes::from(
            ControlMessage::Up(Heartbeat {
                id: id.to_string(),
                weight,
                instance: "raw".into(),
                interval_ms: RAW_HEARTBEAT.as_millis() as u64,
                batch: batch_version,
            })
            .to_json(),
        );
        let beat_client = client.clone();
        let control = control_subject(id);
        let heartbeats = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RAW_HEARTBEAT);
            loop {
                tick.tick().await;
                let _ = beat_client.publish(control.clone(), beat.clone()).await;
                let _ = beat_client.flush().await;
            }
        });
        RawAnalyzer {
            id: id.to_string(),
            weight,
            counts,
            tasks: vec![receive, heartbeats],
        }
    }

    fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for RawAnalyzer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn wait_packets(analyzers: &[&RawAnalyzer], what: &str, packets: u64) {
    wait_until(what, WAIT, || async {
        analyzers.iter().map(|a| a.counts().packets).sum::<u64>() >= packets
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got: u64 = analyzers.iter().map(|a| a.counts().packets).sum();
    assert_eq!(got, packets, "{what}: no packet twice");
}

/// Publishes `n` single-message packets with `Logdist-Seq` 0.. as fast as the client takes them.
async fn burst(client: &Client, first_seq: u64, n: u64) {
    let payload = Bytes::from(message(1));
    for seq in first_seq..first_seq + n {
        client
            .publish_with_headers(INGEST, seq_headers(seq), payload.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

#[tokio::test]
async fn held_packets_leave_as_bounded_batches_in_order() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(
        &server,
        "r1",
        &["--linger", "50ms", "--batch-max-messages", "100"],
    )
    .await;
    let (members, stats) = buckets(&client).await;
    // No analyzer yet: the packets are held, and leave together once one is online.
    burst(&client, 0, 1000).await;
    wait_distributor_stats(&stats, "r1", "1000 packets held", |s| {
        s.held_packets == 1000
    })
    .await;
    let a = RawAnalyzer::start(&client, "a", 1.0, batch::BATCH_VERSION).await;
    wait_member(&members, "a", true).await;
    wait_packets(&[&a], "the held packets", 1000).await;
    let c = a.counts();
    assert_eq!(
        c.mismatched, 0,
        "each packet whole, with its own Logdist-Count"
    );
    assert_eq!(c.seqs, (0..1000).collect::<Vec<_>>(), "in order");
    // At most 100 messages a batch: 1000 packets are at least 10 NATS messages, and a burst
    // released at once fills them.
    assert_eq!(c.nats_messages, 10, "{c:?}");
    assert_eq!(c.batches, 10);
    let s = wait_distributor_stats(&stats, "r1", "batches counted", |s| s.batches_sent == 10).await;
    assert_eq!(s.batched_packets, 1000);
    assert_eq!(s.routed_packets, 1000);
    assert_eq!(s.analyzers["a"].packets, 1000);
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn big_packets_leave_alone_in_order_between_batches() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &["--linger", "50ms"]).await;
    let (members, stats) = buckets(&client).await;
    // Held while no analyzer is online, then released at once: small packets batch for certain
    // (held_packets_leave_as_bounded_batches_in_order); 200-message packets (~13 KB) must not.
    let big = Bytes::from(logdist_testing::packet(200));
    assert!(big.len() > 8 * 1024, "{} bytes", big.len());
    let small = Bytes::from(message(1));
    let order: Vec<bool> = (0..60).map(|seq| (seq / 10) % 2 == 1).collect();
    for (seq, &is_big) in order.iter().enumerate() {
        let payload = if is_big { big.clone() } else { small.clone() };
        client
            .publish_with_headers(INGEST, seq_headers(seq as u64), payload)
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    wait_distributor_stats(&stats, "r1", "60 packets held", |s| s.held_packets == 60).await;
    let a = RawAnalyzer::start(&client, "a", 1.0, batch::BATCH_VERSION).await;
    wait_member(&members, "a", true).await;
    wait_packets(&[&a], "the held packets", 60).await;
    let c = a.counts();
    assert_eq!(c.mismatched, 0, "each packet whole: {c:?}");
    assert_eq!(c.seqs, (0..60).collect::<Vec<_>>(), "in order");
    // 30 big packets alone; the 30 small ones in three runs of ten, one batch each.
    assert_eq!((c.nats_messages, c.batches), (33, 3), "{c:?}");
    let s = wait_distributor_stats(&stats, "r1", "all routed", |s| s.routed_packets == 60).await;
    assert_eq!((s.batches_sent, s.batched_packets), (3, 30));
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn linger_0_sends_one_message_per_packet() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &["--linger", "0"]).await;
    let (members, stats) = buckets(&client).await;
    burst(&client, 0, 500).await;
    wait_distributor_stats(&stats, "r1", "500 packets held", |s| s.held_packets == 500).await;
    let a = RawAnalyzer::start(&client, "a", 1.0, batch::BATCH_VERSION).await;
    wait_member(&members, "a", true).await;
    wait_packets(&[&a], "the held packets", 500).await;
    let c = a.counts();
    assert_eq!((c.nats_messages, c.batches), (500, 0), "{c:?}");
    assert_eq!(c.seqs, (0..500).collect::<Vec<_>>());
    let s = wait_distributor_stats(&stats, "r1", "all routed", |s| s.routed_packets == 500).await;
    assert_eq!(s.batches_sent, 0);
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn a_lone_packet_leaves_at_once_not_after_the_linger() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    // The longest linger there is: a packet that waited for it would take a second.
    let linger = Duration::from_secs(1);
    let mut distributor = start_distributor(&server, "r1", &["--linger", "1s"]).await;
    let (members, stats) = buckets(&client).await;
    let a = RawAnalyzer::start(&client, "a", 1.0, batch::BATCH_VERSION).await;
    wait_member(&members, "a", true).await;
    // One packet at a time, the next only when the last one arrived: nothing else ever waits.
    let payload = Bytes::from(message(1));
    let mut latencies = Vec::new();
    for seq in 0..20u64 {
        let sent = std::time::Instant::now();
        client
            .publish_with_headers(INGEST, seq_headers(seq), payload.clone())
            .await
            .unwrap();
        client.flush().await.unwrap();
        wait_until(&format!("packet {seq}"), WAIT, || async {
            a.counts().packets > seq
        })
        .await;
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        median < linger / 2,
        "a lone packet waited for the linger: median {median:?}, all {latencies:?}"
    );
    let c = a.counts();
    assert_eq!((c.nats_messages, c.batches), (20, 0), "each alone: {c:?}");
    assert_eq!(c.seqs, (0..20).collect::<Vec<_>>());
    let s = wait_distributor_stats(&stats, "r1", "all routed", |s| s.routed_packets == 20).await;
    assert_eq!(s.batches_sent, 0);
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn under_load_batches_form_for_those_that_read_them_and_shares_hold() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    // The default linger and bounds; a buffer that takes every burst (nothing is lost to it).
    let mut distributor = start_distributor(&server, "r1", &["--ingest-buffer", "65536"]).await;
    let (members, stats) = buckets(&client).await;
    // Analyzer "old" does not announce batches (a third-party or older analyzer).
    let analyzers = [
        RawAnalyzer::start(&client, "1", 0.5, batch::BATCH_VERSION).await,
        RawAnalyzer::start(&client, "2", 0.3, batch::BATCH_VERSION).await,
        RawAnalyzer::start(&client, "old", 0.2, 0).await,
    ];
    for a in &analyzers {
        wait_member(&members, &a.id, true).await;
    }
    let refs: Vec<&RawAnalyzer> = analyzers.iter().collect();
    // Packets of 1 to 20 messages, in bursts the distributor cannot route as fast as they come.
    let packets: Vec<Bytes> = (0..=20).map(|n| Bytes::from(packet(n))).collect();
    let mut rng = Lcg::new(11);
    let (mut sent_messages, mut sent_packets) = (0u64, 0u64);
    for round in 0..4 {
        for _ in 0..5000 {
            let n = rng.range(1, 20);
            client
                .publish_with_headers(
                    INGEST,
                    seq_headers(sent_packets),
                    packets[n as usize].clone(),
                )
                .await
                .unwrap();
            sent_messages += n;
            sent_packets += 1;
        }
        client.flush().await.unwrap();
        wait_packets(&refs, &format!("round {round}"), sent_packets).await;
    }
    let by_id: HashMap<&str, Counts> = analyzers.iter().map(|a| (&*a.id, a.counts())).collect();
    for (id, c) in &by_id {
        assert_eq!(c.mismatched, 0, "analyzer {id}");
        let mut sorted = c.seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, c.seqs, "analyzer {id}: packets in the order routed");
    }
    let old = &by_id["old"];
    assert_eq!(
        old.batches, 0,
        "an analyzer that does not announce batches gets none"
    );
    assert_eq!(old.nats_messages, old.packets);
    let batched: u64 = ["1", "2"].iter().map(|id| by_id[id].batches).sum();
    let nats: u64 = ["1", "2"].iter().map(|id| by_id[id].nats_messages).sum();
    let packets_12: u64 = ["1", "2"].iter().map(|id| by_id[id].packets).sum();
    assert!(
        batched > 0 && nats < packets_12,
        "under load, batches form: {nats} NATS messages for {packets_12} packets"
    );
    // Shares by message count, within the bound the routing test holds without batches.
    let total: u64 = by_id.values().map(|c| c.messages).sum();
    let s = distributor_stats(&stats, "r1").await.unwrap();
    eprintln!(
        "epoch {}, shares {:?}",
        s.epoch,
        by_id
            .iter()
            .map(|(id, c)| (id, c.messages as f64 / total as f64))
            .collect::<Vec<_>>()
    );
    assert_eq!(total, sent_messages, "nothing lost");
    for a in &analyzers {
        let share = 100.0 * by_id[&*a.id].messages as f64 / total as f64;
        assert!(
            (share - 100.0 * a.weight).abs() < 0.1,
            "analyzer {}: {share:.4}% vs {}%",
            a.id,
            100.0 * a.weight
        );
    }
    let s = wait_distributor_stats(&stats, "r1", "all routed", |s| {
        s.routed_messages == sent_messages
    })
    .await;
    assert_eq!(s.routed_packets, sent_packets);
    assert_eq!(s.batches_sent, batched);
    let url = server.url();
    let mut cli =
        logdist_testing::Process::spawn("distributor", &["stats", "--nats-url", &url], &[]);
    assert!(cli.wait(WAIT).await.success(), "{}", cli.stderr());
    assert!(
        cli.stdout().contains("packets per batch"),
        "{}",
        cli.stdout()
    );
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn at_least_once_one_request_and_one_reply_per_batch() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &["--delivery", "at-least-once"]).await;
    let (members, stats) = buckets(&client).await;
    let analyzers = [
        RawAnalyzer::start(&client, "1", 0.6, batch::BATCH_VERSION).await,
        RawAnalyzer::start(&client, "old", 0.4, 0).await,
    ];
    for a in &analyzers {
        wait_member(&members, &a.id, true).await;
    }
    let refs: Vec<&RawAnalyzer> = analyzers.iter().collect();
    // The stream stores the burst; the distributor pulls it 500 packets at a time.
    let js = async_nats::jetstream::new(client.clone());
    let payload = Bytes::from(message(1));
    let mut acks = Vec::new();
    for seq in 0..3000u64 {
        acks.push(
            js.publish_with_headers(INGEST, seq_headers(seq), payload.clone())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    wait_packets(&refs, "every packet", 3000).await;
    let by_id: HashMap<&str, Counts> = analyzers.iter().map(|a| (&*a.id, a.counts())).collect();
    let mut ids: Vec<&String> = by_id.values().flat_map(|c| &c.packet_ids).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        3000,
        "every packet with its own Logdist-Packet-Id, once"
    );
    let old = &by_id["old"];
    assert_eq!((old.batches, old.nats_messages), (0, old.packets));
    let one = &by_id["1"];
    assert!(
        one.batches > 0 && one.nats_messages < one.packets,
        "one request per batch: {} requests for {} packets",
        one.nats_messages,
        one.packets
    );
    // One reply acked every packet of a batch: the stream empties, nothing is redelivered.
    let s = wait_distributor_stats(&stats, "r1", "every packet acknowledged", |s| {
        s.routed_packets == 3000
    })
    .await;
    assert_eq!(s.redelivered, 0);
    assert_eq!(s.batches_sent, one.batches);
    assert!(s.batched_packets <= one.packets && s.batched_packets >= 2 * s.batches_sent);
    let js = &js;
    wait_until("the stream empty", WAIT, || async move {
        match js.get_stream("LOGS").await {
            Ok(mut stream) => stream.info().await.is_ok_and(|i| i.state.messages == 0),
            Err(_) => false,
        }
    })
    .await;
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn a_batch_its_analyzer_fails_is_rerouted_packet_by_packet() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(
        &server,
        "r1",
        &["--delivery", "at-least-once", "--request-timeout", "1s"],
    )
    .await;
    let (members, stats) = buckets(&client).await;
    // "hung" reads batches and never answers; "ok" answers everything.
    let hung = RawAnalyzer::start_replying(&client, "hung", 0.5, batch::BATCH_VERSION, false).await;
    let ok = RawAnalyzer::start(&client, "ok", 0.5, batch::BATCH_VERSION).await;
    wait_member(&members, "hung", true).await;
    wait_member(&members, "ok", true).await;
    let js = async_nats::jetstream::new(client.clone());
    let payload = Bytes::from(message(1));
    let mut acks = Vec::new();
    for seq in 0..1000u64 {
        acks.push(
            js.publish_with_headers(INGEST, seq_headers(seq), payload.clone())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    let ok_ref = &ok;
    wait_until("every packet acknowledged by ok", WAIT, || async move {
        let mut ids = ok_ref.counts().packet_ids;
        ids.sort();
        ids.dedup();
        ids.len() == 1000
    })
    .await;
    let h = hung.counts();
    assert!(h.batches > 0, "the hung analyzer got batches: {h:?}");
    let s = wait_distributor_stats(&stats, "r1", "every packet routed", |s| {
        s.routed_packets == 1000
    })
    .await;
    assert_eq!(s.deadletter_packets, 0, "re-routed, not dead-lettered");
    assert!(
        s.redelivered >= h.packets,
        "each packet of a failed batch goes round again"
    );
    assert_eq!(
        s.analyzers["ok"].packets, 1000,
        "every packet acknowledged by ok"
    );
    assert!(distributor.terminate(WAIT).await.success());
}

/// HTTP ingest at-most-once, where the gateway hands its packets to the distributor's router:
/// held packets leave as batches, and a lone packet leaves alone with exactly the headers a
/// forwarded packet has (the gateway's map has room for the distributor's two; its entries
/// without a value must not reach the wire).
#[tokio::test]
async fn http_packets_batch_and_a_lone_one_leaves_with_the_forwarded_headers() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let http = format!("127.0.0.1:{}", logdist_testing::free_port());
    let mut distributor =
        start_distributor(&server, "r1", &["--linger", "50ms", "--http", &http]).await;
    let (members, stats) = buckets(&client).await;
    let web = reqwest::Client::new();
    let send = |web: &reqwest::Client| {
        web.post(format!("http://{http}/message/send"))
            .header("Content-Type", "application/json")
            .body(message(1))
            .send()
    };
    wait_until("the gateway answers", WAIT, || {
        let request = web.get(format!("http://{http}/healthz")).send();
        async move { request.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    // No analyzer yet: the packets are held, and leave together once one is online.
    for _ in 0..20 {
        assert_eq!(send(&web).await.unwrap().status(), 200);
    }
    wait_distributor_stats(&stats, "r1", "20 packets held", |s| s.held_packets == 20).await;
    let mut wire = client.subscribe("analyzer.a").await.unwrap();
    let a = RawAnalyzer::start(&client, "a", 1.0, batch::BATCH_VERSION).await;
    wait_member(&members, "a", true).await;
    wait_packets(&[&a], "the held packets", 20).await;
    let c = a.counts();
    assert_eq!(c.mismatched, 0, "each packet whole: {c:?}");
    assert_eq!((c.nats_messages, c.batches), (1, 1), "one batch: {c:?}");
    let held = tokio::time::timeout(WAIT, wire.next())
        .await
        .unwrap()
        .unwrap();
    let h = held.headers.as_ref().unwrap();
    assert_eq!(
        h.get(batch::AGENTS).unwrap().as_str(),
        vec!["http"; 20].join(",")
    );
    assert_eq!(
        h.get(batch::SENT_AT).unwrap().as_str().split(',').count(),
        20
    );

    // One request with nothing else waiting: it leaves alone, once the linger is over.
    assert_eq!(send(&web).await.unwrap().status(), 200);
    let alone = tokio::time::timeout(WAIT, wire.next())
        .await
        .unwrap()
        .unwrap();
    let h = alone.headers.as_ref().unwrap();
    let mut names: Vec<String> = h.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            headers::AGENT,
            headers::COUNT,
            headers::DISTRIBUTOR,
            headers::SENT_AT
        ],
        "{h:?}"
    );
    assert_eq!(h.get(headers::AGENT).unwrap().as_str(), "http");
    assert_eq!(h.get(headers::COUNT).unwrap().as_str(), "1");
    assert_eq!(h.get(headers::DISTRIBUTOR).unwrap().as_str(), "r1");
    let sent_at: u128 = h.get(headers::SENT_AT).unwrap().as_str().parse().unwrap();
    assert!(sent_at <= logdist::protocol::headers::unix_nanos_now());
    assert_eq!(&alone.payload[..], message(1).as_bytes());
    wait_packets(&[&a], "the lone packet", 21).await;
    let s = wait_distributor_stats(&stats, "r1", "all routed", |s| s.routed_packets == 21).await;
    assert_eq!((s.batches_sent, s.batched_packets), (1, 20));
    assert!(distributor.terminate(WAIT).await.success());
}
