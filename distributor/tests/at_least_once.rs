//! `--delivery at-least-once` on one real nats-server, under steady load from agent-sim: killing
//! an analyzer, killing one of two distributor replicas, restarting nats-server and withdrawing
//! an analyzer mid-run lose no log message (counted by the analyzers, after de-duplication), and
//! every packet the stream captured ends acked. The same analyzer kill in at-most-once mode
//! loses messages, which shows what the mode buys.

mod pipeline;

use std::time::Duration;

use logdist::protocol::batch;
use logdist::protocol::stats::unix_millis_now;
use logdist_testing::{wait_until, NatsServer};
use pipeline::*;

/// Waits for the run to be acked everywhere, then for a stats write of `replica` made after
/// that, and returns it.
async fn settled_stats(
    js: &async_nats::jetstream::Context,
    replica: &str,
) -> logdist::protocol::stats::DistributorStats {
    let (captured, delivered) = wait_consumer_drained(js).await;
    eprintln!("  stream captured {captured} packets, consumer delivered up to {delivered}");
    let stats = stats_bucket(js).await;
    let after = unix_millis_now();
    let stats = &stats;
    wait_until("stats written after the run", WAIT, || async move {
        distributor_stats(stats, replica)
            .await
            .is_some_and(|s| s.updated_at_ms > after)
    })
    .await;
    distributor_stats(stats, replica).await.unwrap()
}

fn assert_no_loss(name: &str, report: &serde_json::Value) {
    let v = verification(name, report);
    assert_eq!(v["lost"], 0, "{name}: {v:#}");
    assert!(v["sent"].as_u64().unwrap() > 50_000, "{name}: {v:#}");
    assert_eq!(v["deadlettered"], 0, "{name}: {v:#}");
}

#[tokio::test]
async fn analyzer_killed_mid_run_loses_nothing() {
    let server = NatsServer::start();
    let url = server.url();
    let mut d1 = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
    let mut analyzers = three_analyzers(&[&url]);
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    let stats = stats_bucket(&js).await;

    let _load = LOAD.lock().await;
    let mut sim = agent_sim(&url);
    wait_analyzed(&stats, "2", 10_000).await;
    analyzers[1].kill().await; // SIGKILL: no withdrawal, packets in flight unanswered
    let (_, report) = report(&mut sim).await;
    assert_no_loss("analyzer killed, at-least-once", &report);

    let last = settled_stats(&js, "d1").await;
    assert_eq!(last.delivery, "at-least-once");
    assert!(
        last.redelivered > 0,
        "the killed analyzer's packets went elsewhere: {last:#?}"
    );
    assert_eq!(last.deadletter_packets, 0, "{last:#?}");
    assert!(!last.analyzers["2"].online);
    // Since analyzer 2 left, 1 and 3 share by 0.5 : 0.2, counted from acknowledgements.
    assert_epoch_shares(&last, 0.5);
    assert!(d1.terminate(WAIT).await.success());
}

#[tokio::test]
async fn analyzer_killed_mid_run_loses_messages_at_most_once() {
    let server = NatsServer::start();
    let url = server.url();
    let _d1 = distributor(&url, "d1", Delivery::AtMostOnce, &[]);
    let mut analyzers = three_analyzers(&[&url]);
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    let stats = stats_bucket(&js).await;

    let _load = LOAD.lock().await;
    let mut sim = agent_sim(&url);
    wait_analyzed(&stats, "2", 10_000).await;
    analyzers[1].kill().await;
    let (status, report) = report(&mut sim).await;
    let v = verification("analyzer killed, at-most-once", &report);
    assert_eq!(status.code(), Some(1), "the check must fail: {v:#}");
    assert!(v["lost"].as_u64().unwrap() > 0, "{v:#}");
}

#[tokio::test]
async fn distributor_replica_killed_mid_run_loses_nothing() {
    let server = NatsServer::start();
    let url = server.url();
    let mut d1 = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
    let mut d2 = distributor(&url, "d2", Delivery::AtLeastOnce, &[]);
    let _analyzers = three_analyzers(&[&url]);
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    let stats = stats_bucket(&js).await;
    let stats_ref = &stats;

    let _load = LOAD.lock().await;
    // Shares are checked below from acknowledged counts: the analyzers' own counts include the
    // duplicates of d2's redelivered packets.
    let mut sim = agent_sim_with(&url, "6s", Duration::from_secs(3), "core", 100.0);
    wait_until("replica d2 to route", WAIT, || async move {
        distributor_stats(stats_ref, "d2")
            .await
            .is_some_and(|s| s.routed_messages > 10_000)
    })
    .await;
    d2.kill().await; // its packets in flight are redelivered to d1 after the ack wait
    let (status, report) = report(&mut sim).await;
    assert_no_loss("distributor replica killed", &report);
    assert!(status.success(), "{:#}", report["verification"]);

    let last = settled_stats(&js, "d1").await;
    assert_eq!(last.deadletter_packets, 0, "{last:#?}");
    assert_epoch_shares(&last, 0.5);
    assert!(d1.terminate(WAIT).await.success());
}

#[tokio::test]
async fn nats_server_restart_mid_run_loses_nothing() {
    let mut server = NatsServer::start();
    let url = server.url();
    let mut d1 = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
    let _analyzers = three_analyzers(&[&url]);
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    let stats = stats_bucket(&js).await;

    let _load = LOAD.lock().await;
    // With core publishes, what is in flight to the server when it dies is lost before the
    // stream stores it (about 100 messages in 1 run of 3 here; docs/delivery.md): agents that
    // must lose nothing publish with acknowledgements and retry, as this one does.
    // Shares are checked below from acknowledged counts: the analyzers' own counts include the
    // duplicates of packets whose ack the restart lost (0.54 pp off in one run).
    let mut sim = agent_sim_with(&url, "6s", Duration::from_secs(3), "jetstream", 100.0);
    wait_analyzed(&stats, "3", 5_000).await;
    server.restart(); // SIGKILL, then the same port and store
    let (status, report) = report(&mut sim).await;
    assert_no_loss("nats-server restarted", &report);
    assert!(status.success(), "{:#}", report["verification"]);

    let js = jetstream(&url).await;
    let last = settled_stats(&js, "d1").await;
    assert!(last.reconnects > 0, "{last:#?}");
    assert_eq!(last.deadletter_packets, 0, "{last:#?}");
    assert_epoch_shares(&last, 0.5);
    assert!(d1.terminate(WAIT).await.success());
}

#[tokio::test]
async fn analyzer_withdrawn_mid_run_loses_nothing() {
    let server = NatsServer::start();
    let url = server.url();
    let mut d1 = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
    let mut analyzers = three_analyzers(&[&url]);
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    let stats = stats_bucket(&js).await;

    let _load = LOAD.lock().await;
    let mut sim = agent_sim(&url);
    wait_analyzed(&stats, "1", 10_000).await;
    let status = analyzers[0].terminate(WAIT).await;
    assert!(status.success(), "{}", analyzers[0].stderr());
    let (_, report) = report(&mut sim).await;
    assert_no_loss("analyzer withdrawn", &report);

    let last = settled_stats(&js, "d1").await;
    assert!(!last.analyzers["1"].online);
    // Since analyzer 1 left, 2 and 3 share by 0.3 : 0.2.
    assert_epoch_shares(&last, 0.5);
    assert!(d1.terminate(WAIT).await.success());
}

/// No analyzer online: packets stay in the stream (nothing dead-lettered) and are delivered once
/// one comes.
#[tokio::test]
async fn packets_wait_in_the_stream_until_an_analyzer_is_online() {
    let server = NatsServer::start();
    let url = server.url();
    let mut d1 = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
    let js = jetstream(&url).await;
    let js_ref = &js;
    wait_until("the stream", WAIT, || async move {
        js_ref.get_stream(logdist_testing::STREAM).await.is_ok()
    })
    .await;
    let client = async_nats::connect(&url).await.unwrap();
    let packet = r#"[{"timestamp":1,"severity":"INFO","source":"t","message":"a"},{"timestamp":2,"severity":"WARN","source":"t","message":"b"}]"#;
    for i in 0..50 {
        client
            .publish(
                logdist::Names::default().agent_ingest_subject(&format!("a{}", i % 3)),
                packet.into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    // With no analyzer online the replica does not fetch: the stream holds every packet.
    let stats = stats_bucket(&js).await;
    wait_until("the stream to hold the 50 packets", WAIT, || async move {
        match js_ref.get_stream(logdist_testing::STREAM).await {
            Ok(mut stream) => stream.info().await.is_ok_and(|i| i.state.messages == 50),
            Err(_) => false,
        }
    })
    .await;

    let _analyzer = analyzer(&url, "1", 1.0);
    wait_analyzed(&stats, "1", 100).await;
    wait_consumer_drained(&js).await;
    let s = distributor_stats(&stats, "d1").await.unwrap();
    assert_eq!(s.deadletter_packets, 0, "{s:#?}");
    assert!(d1.terminate(WAIT).await.success());
    let a = analyzer_stats(&stats, "1").await.unwrap();
    assert_eq!(a.messages, 100, "each packet analyzed once: {a:#?}");
}

/// An analyzer that never answers: the packet is retried `--max-attempts` times, then
/// dead-lettered as `undeliverable` and acked.
#[tokio::test]
async fn a_packet_no_analyzer_acknowledges_is_dead_lettered_after_max_attempts() {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    // A silent analyzer: it heartbeats and subscribes, but never replies.
    let mut silent = client
        .subscribe(logdist::Names::default().analyzer_subject("mute"))
        .await
        .unwrap();
    let mut deadletters = client
        .subscribe(logdist::protocol::names::DEFAULT_DEADLETTER_SUBJECT)
        .await
        .unwrap();
    let beats = heartbeat_forever(&client, "mute", "m", 0);
    let _d1 = distributor(
        &url,
        "d1",
        Delivery::AtLeastOnce,
        &["--request-timeout", "100ms", "--max-attempts", "3"],
    );
    let js = jetstream(&url).await;
    wait_members(&js, 1).await;
    client
        .publish(
            logdist::protocol::names::DEFAULT_INGEST_SUBJECT,
            r#"{"timestamp":1,"severity":"INFO","source":"t","message":"x"}"#.into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let letter = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut deadletters))
        .await
        .expect("a dead letter in time")
        .unwrap();
    beats.abort();
    let headers = letter.headers.unwrap();
    assert_eq!(
        headers.get("Logdist-Error-Code").unwrap().as_str(),
        "undeliverable"
    );
    assert!(
        headers
            .get("Logdist-Error")
            .unwrap()
            .as_str()
            .contains("3 attempts"),
        "{headers:?}"
    );
    assert!(headers
        .get("Logdist-Packet-Id")
        .unwrap()
        .as_str()
        .starts_with("LOGS:"));
    // Three requests reached the silent analyzer, each with the same packet id.
    for _ in 0..3 {
        let m = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut silent))
            .await
            .unwrap()
            .unwrap();
        assert!(m.reply.is_some());
    }
    wait_consumer_drained(&js).await;
}

/// `--max-in-flight-bytes` below the size of one packet: packets go out one at a time, and every
/// one of them is still delivered and acked (the bound never blocks the pipeline).
#[tokio::test]
async fn a_byte_bound_below_one_packet_still_delivers_every_packet() {
    const PACKETS: u64 = 20;
    let server = NatsServer::start();
    let url = server.url();
    let mut d1 = distributor(
        &url,
        "d1",
        Delivery::AtLeastOnce,
        &["--max-in-flight-bytes", "1"],
    );
    let _analyzers = three_analyzers(&[&url]);
    let js = jetstream(&url).await;
    wait_members(&js, 3).await;
    wait_until("the LOGS stream", WAIT, || async {
        js.get_stream(logdist_testing::STREAM).await.is_ok()
    })
    .await;

    let packet = format!(
        "[{}]",
        (0..100)
            .map(|i| format!(
                r#"{{"timestamp":{i},"severity":"INFO","source":"s","message":"message {i}"}}"#
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    for _ in 0..PACKETS {
        js.publish(
            logdist::protocol::names::DEFAULT_INGEST_SUBJECT,
            packet.clone().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored in LOGS");
    }
    let (captured, _) = wait_consumer_drained(&js).await;
    assert_eq!(captured, PACKETS);
    let stats = stats_bucket(&js).await;
    let stats = &stats;
    wait_until("every message counted", WAIT, || async move {
        let mut total = 0;
        for id in ["1", "2", "3"] {
            total += analyzer_stats(stats, id).await.map_or(0, |s| s.messages);
        }
        total == PACKETS * 100
    })
    .await;
    let last = settled_stats(&js, "d1").await;
    assert_eq!(last.routed_packets, PACKETS);
    assert_eq!(last.deadletter_packets, 0);
    assert!(d1.terminate(WAIT).await.success());
}

/// The packet id an analyzer sees is `<stream>:<stream sequence>`, read from the reply subject
/// of a real delivery: with the stream's sequences ahead of the consumer's (seven packets
/// published and purged before it delivers anything), ids from any other token of the ack
/// subject (consumer sequence, delivery count, pending) would differ. Replies ack them all.
#[tokio::test]
async fn packet_ids_are_the_stream_sequences() {
    const PURGED: u64 = 7;
    const PACKETS: u64 = 5;
    // An analyzer of this test: it heartbeats, answers every request and keeps the ids.
    let RawAnalyzerPipeline {
        _server,
        client,
        mut requests,
        mut d1,
        js,
    } = RawAnalyzerPipeline::start("echo").await;
    // No analyzer online yet: the replica fetches nothing, these only move the sequence on.
    let packet = r#"{"timestamp":1,"severity":"INFO","source":"t","message":"x"}"#;
    let subject = logdist::protocol::names::DEFAULT_INGEST_SUBJECT;
    for _ in 0..PURGED {
        js.publish(subject, packet.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let stream = js.get_stream(logdist_testing::STREAM).await.unwrap();
    stream.purge().await.unwrap();

    let beats = heartbeat_forever(&client, "echo", "e", 0);
    wait_members(&js, 1).await;
    let mut sequences = Vec::new();
    for _ in 0..PACKETS {
        let ack = js
            .publish(subject, packet.into())
            .await
            .unwrap()
            .await
            .unwrap();
        sequences.push(ack.sequence);
    }
    assert_eq!(sequences[0], PURGED + 1, "the purge kept the sequence");
    let mut ids = Vec::new();
    while ids.len() < PACKETS as usize {
        let m = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut requests))
            .await
            .expect("a request in time")
            .unwrap();
        let id = m.headers.as_ref().and_then(|h| h.get("Logdist-Packet-Id"));
        ids.push(id.map(|v| v.as_str().to_string()).unwrap_or_default());
        client
            .publish(m.reply.expect("a request"), "".into())
            .await
            .unwrap();
    }
    ids.sort();
    let expected = packet_ids(&sequences);
    assert_eq!(ids, expected);
    wait_consumer_drained(&js).await;
    beats.abort();
    assert!(d1.terminate(WAIT).await.success());
}

/// With coalescing on (the default `--linger`), a packet of `ALONE_BYTES` (8 KiB) or more goes
/// to an analyzer that reads batches as a request of its own, as in at-most-once, and its reply
/// acks it. Runs of single messages and of 200-message packets (~13 KB) wait in the stream
/// until the analyzer comes online, so they reach the replica together: the single messages
/// still go in batches (coalescing was on), none of the big packets does.
#[tokio::test]
async fn packets_of_8_kib_or_more_go_alone_and_are_acked() {
    const RUN: usize = 10;
    let RawAnalyzerPipeline {
        _server,
        client,
        mut requests,
        mut d1,
        js,
    } = RawAnalyzerPipeline::start("big").await;
    let small = bytes::Bytes::from(logdist_testing::message(0));
    let big = bytes::Bytes::from(logdist_testing::packet(200));
    assert!(big.len() >= batch::ALONE_BYTES, "{} bytes", big.len());
    // small, big, small, big: runs of RUN packets each, stored before any analyzer is online.
    // Each carries an id of the agent's own, which the replica's must replace, alone or batched.
    let subject = logdist::protocol::names::DEFAULT_INGEST_SUBJECT;
    let mut forged = async_nats::HeaderMap::new();
    forged.insert("Logdist-Packet-Id", "LOGS:forged");
    let mut sequences = Vec::new();
    for run in 0..4 {
        let payload = if run % 2 == 0 { &small } else { &big };
        for _ in 0..RUN {
            let ack = js
                .publish_with_headers(subject, forged.clone(), payload.clone())
                .await
                .unwrap();
            sequences.push(ack.await.expect("stored in LOGS").sequence);
        }
    }

    let beats = heartbeat_forever(&client, "big", "b", batch::BATCH_VERSION);
    wait_members(&js, 1).await;
    // Byte length of each packet received, by whether it came in a batch.
    let (mut alone, mut batched) = (Vec::new(), Vec::new());
    let mut ids = Vec::new();
    let mut batches = 0u64;
    while alone.len() + batched.len() < 4 * RUN {
        let m = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut requests))
            .await
            .expect("a request in time")
            .unwrap();
        match batch::split(m.headers.as_ref(), m.payload.len()).expect("a readable batch") {
            Some(parts) => {
                batches += 1;
                let headers = m.headers.as_ref().unwrap();
                for part in parts {
                    batched.push(part.range.len());
                    let id = part.headers(headers).get("Logdist-Packet-Id").cloned();
                    ids.push(id.map(|v| v.to_string()).unwrap_or_default());
                }
            }
            None => {
                alone.push(m.payload.len());
                let id = m.headers.as_ref().and_then(|h| h.get("Logdist-Packet-Id"));
                ids.push(id.map(|v| v.to_string()).unwrap_or_default());
            }
        }
        client
            .publish(m.reply.expect("a request"), "".into())
            .await
            .unwrap();
    }
    let big_alone = alone.iter().filter(|&&n| n == big.len()).count();
    let big_batched = batched.iter().filter(|&&n| n == big.len()).count();
    assert_eq!(
        (big_alone, big_batched),
        (2 * RUN, 0),
        "every big packet alone ({batches} batches of {batched:?})"
    );
    assert!(
        batches > 0 && batched.len() as u64 > batches,
        "the single messages still batch: {} alone, {batches} batches",
        alone.len()
    );
    ids.sort();
    let expected = packet_ids(&sequences);
    assert_eq!(ids, expected, "each packet once, with its own id");
    // The replies acked every packet: the stream empties, nothing redelivered.
    let (captured, _) = wait_consumer_drained(&js).await;
    assert_eq!(captured, 4 * RUN as u64);
    let last = settled_stats(&js, "d1").await;
    assert_eq!(last.routed_packets, 4 * RUN as u64);
    assert_eq!((last.redelivered, last.deadletter_packets), (0, 0));
    assert_eq!(last.batches_sent, batches);
    beats.abort();
    assert!(d1.terminate(WAIT).await.success());
}

/// A distributor in at-least-once mode with its stream created, and a bare subscription on
/// `analyzer.<id>` as the analyzer (announce it with [`heartbeat_forever`]); the server lives
/// as long as this.
struct RawAnalyzerPipeline {
    _server: NatsServer,
    client: async_nats::Client,
    requests: async_nats::Subscriber,
    d1: logdist_testing::Process,
    js: async_nats::jetstream::Context,
}

impl RawAnalyzerPipeline {
    async fn start(id: &str) -> Self {
        let server = NatsServer::start();
        let url = server.url();
        let client = async_nats::connect(&url).await.unwrap();
        let requests = client
            .subscribe(logdist::Names::default().analyzer_subject(id))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let d1 = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
        let js = jetstream(&url).await;
        let js_ref = &js;
        wait_until("the stream", WAIT, || async move {
            js_ref.get_stream(logdist_testing::STREAM).await.is_ok()
        })
        .await;
        Self {
            _server: server,
            client,
            requests,
            d1,
            js,
        }
    }
}

/// A packet whose header value holds a bare carriage return stops the replica that fetches it
/// (async-nats 0.51, nats-io/nats.rs#1612), and at-least-once keeps it in the stream. The
/// restarted replica must take it out before it pulls (one dead letter, `unreadable_headers`,
/// with the payload and the headers that can be read) instead of fetching it and stopping
/// again, and deliver what came after it.
#[tokio::test]
async fn a_packet_the_client_cannot_read_stops_a_replica_once_and_is_dead_lettered() {
    let poison = br#"{"timestamp":2,"severity":"INFO","source":"t","message":"poison"}"#;
    let letter = dead_letter_of_unreadable_packet(|_| poison.to_vec()).await;
    assert_eq!(&letter.payload[..], &poison[..]);
}

/// The same, with a packet so close to the server's max_payload that its dead letter's headers
/// would push it over: the letter goes without the payload and says so, since a letter that
/// cannot be written would leave the packet to stop the next replica too.
#[tokio::test]
async fn an_unreadable_packet_too_large_for_its_letter_is_dead_lettered_without_it() {
    let letter =
        dead_letter_of_unreadable_packet(|max_payload| vec![b'x'; max_payload - 200]).await;
    assert!(letter.payload.is_empty(), "{} bytes", letter.payload.len());
    let error = letter
        .headers
        .as_ref()
        .unwrap()
        .get("Logdist-Error")
        .unwrap();
    assert!(error.as_str().contains("is left out"), "{error:?}");
}

/// Runs one replica until a raw packet (`poison(max_payload)`, its `Logdist-Agent` value holding
/// a bare carriage return) stops it, restarts it, and checks what a user would: the restarted
/// replica dead-letters the packet once (`unreadable_headers`, the readable header kept), the
/// valid packets before and after it are analyzed, the consumer drains with the stream empty,
/// the stats count it, and the replica runs on. Returns the dead letter.
async fn dead_letter_of_unreadable_packet(
    poison: impl FnOnce(usize) -> Vec<u8>,
) -> async_nats::Message {
    let server = NatsServer::start();
    let url = server.url();
    let client = async_nats::connect(&url).await.unwrap();
    let mut deadletters = client
        .subscribe(logdist::protocol::names::DEFAULT_DEADLETTER_SUBJECT)
        .await
        .unwrap();
    let _analyzer = analyzer(&url, "1", 1.0);
    let mut first = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
    let js = jetstream(&url).await;
    wait_members(&js, 1).await;
    let stats = stats_bucket(&js).await;
    let ingest = logdist::Names::default().agent_ingest_subject("raw");
    let one = r#"{"timestamp":1,"severity":"INFO","source":"t","message":"a"}"#;
    client.publish(ingest.clone(), one.into()).await.unwrap();
    client.flush().await.unwrap();
    wait_analyzed(&stats, "1", 1).await;

    let poison = poison(client.server_info().max_payload);
    let block = b"NATS/1.0\r\nLogdist-Agent: a\rb\r\nLogdist-Seq: 7\r\n\r\n";
    logdist_testing::publish_raw(&url, &ingest, block, &poison);
    let status = first.wait(WAIT).await;
    assert!(
        !status.success(),
        "the replica that fetched it stops: {status:?}"
    );
    assert!(first.stderr().contains("connection task stopped"));

    // Two more packets wait in the stream behind it.
    for _ in 0..2 {
        client.publish(ingest.clone(), one.into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut second = distributor(&url, "d1", Delivery::AtLeastOnce, &[]);
    let letter = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut deadletters))
        .await
        .expect("a dead letter in time")
        .unwrap();
    let headers = letter.headers.as_ref().unwrap();
    assert_eq!(
        headers.get("Logdist-Error-Code").unwrap().as_str(),
        "unreadable_headers"
    );
    let error = headers.get("Logdist-Error").unwrap().as_str();
    assert!(
        error.contains("\"Logdist-Agent\"") && error.contains("bare carriage return"),
        "{error}"
    );
    assert_eq!(headers.get("Logdist-Subject").unwrap().as_str(), ingest);
    assert_eq!(
        headers.get("Logdist-Seq").unwrap().as_str(),
        "7",
        "readable ones kept"
    );
    assert!(headers.get("Logdist-Agent").is_none());

    wait_analyzed(&stats, "1", 3).await;
    // Nothing stays un-acked and the stream is empty: the packet was deleted, not left for
    // JetStream to redeliver after `--ack-wait` (which would stop this replica too).
    wait_consumer_drained(&js).await;
    let after = unix_millis_now();
    let stats_ref = &stats;
    wait_until("stats written after the drain", WAIT, || async move {
        distributor_stats(stats_ref, "d1")
            .await
            .is_some_and(|s| s.updated_at_ms > after)
    })
    .await;
    let s = distributor_stats(&stats, "d1").await.unwrap();
    assert_eq!(
        s.deadletter_reasons.get("unreadable_headers"),
        Some(&1),
        "{s:#?}"
    );
    assert!(
        second.try_wait().is_none(),
        "the restarted replica runs on: {}",
        second.stderr()
    );
    assert!(second.terminate(WAIT).await.success());
    assert!(
        tokio::time::timeout(
            Duration::from_millis(200),
            futures::StreamExt::next(&mut deadletters)
        )
        .await
        .is_err(),
        "one dead letter"
    );
    letter
}

/// The packet ids `LOGS:<sequence>` of these stream sequences, sorted.
fn packet_ids(sequences: &[u64]) -> Vec<String> {
    let mut ids: Vec<String> = sequences.iter().map(|s| format!("LOGS:{s}")).collect();
    ids.sort();
    ids
}

/// Announces a raw analyzer (`id`, weight 1, instance `instance`, reading batches of version
/// `batch`, 0 for none) every 100 ms until the returned task is aborted: for tests whose
/// analyzer is a bare subscription.
fn heartbeat_forever(
    client: &async_nats::Client,
    id: &str,
    instance: &str,
    batch: u32,
) -> tokio::task::JoinHandle<()> {
    let heartbeat =
        logdist::protocol::control::ControlMessage::Up(logdist::protocol::control::Heartbeat {
            id: id.into(),
            weight: 1.0,
            instance: instance.into(),
            interval_ms: 100,
            batch,
        });
    let subject = logdist::Names::default().analyzer_control_subject(id);
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            let _ = client
                .publish(subject.clone(), heartbeat.to_json().into())
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
