//! Overload in at-most-once mode: agents publishing faster than a replica routes. The ingest
//! buffers (`--ingest-buffer` packets, `--ingest-buffer-bytes` bytes) bound memory; what does not
//! fit is dropped, and every dropped packet is counted (`ingest_dropped_packets`), never lost
//! silently.

mod common;

use bytes::Bytes;
use common::*;
use logdist_testing::NatsServer;

const PACKETS: u64 = 5000;

#[tokio::test]
async fn a_flood_past_the_ingest_buffer_is_counted_packet_by_packet() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &["--ingest-buffer", "16"]).await;
    let (members, stats) = buckets(&client).await;
    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;

    // 5000 packets of 50 messages as fast as the client can write them: far faster than one
    // replica validates 50 messages a packet, so a 16-packet buffer overflows.
    let payload = Bytes::from(packet(50));
    for _ in 0..PACKETS {
        client.publish(INGEST, payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    // Every packet has reached the replica: taken, dropped, or (at most 2 × 16) still buffered.
    wait_distributor_stats(&stats, "r1", "every packet taken or dropped", |s| {
        s.received_packets + s.ingest_dropped_packets + 32 >= PACKETS
    })
    .await;

    let status = distributor.terminate(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", distributor.stderr());
    let s = distributor_stats(&stats, "r1").await.expect("final stats");
    assert!(
        s.ingest_dropped_packets > 0,
        "a 16-packet buffer overflowed: {s:?}"
    );
    assert_eq!(
        s.received_packets + s.ingest_dropped_packets,
        PACKETS,
        "each packet either routed or counted as dropped"
    );
    assert_eq!(s.received_packets, s.routed_packets);
    a.wait_packets(s.routed_packets).await;
    assert_eq!(a.messages(), s.routed_packets * 50);
    let log = distributor.stderr();
    assert!(
        log.contains("dropped packets while the router was behind"),
        "{log}"
    );
    // Dropped by the ingest queue, or by the client when its buffer filled between two turns
    // of the loop (a slow-consumer event each).
    assert!(
        log.contains("ingest queue full") || s.slow_consumer_events > 0,
        "{log}"
    );
}

#[tokio::test]
async fn the_ingest_queue_is_bounded_in_bytes() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    // Room for 64 packets, but only ~5 of these ~13 KB packets fit in 64 KiB.
    let mut distributor = start_distributor(
        &server,
        "r1",
        &["--ingest-buffer", "64", "--ingest-buffer-bytes", "65536"],
    )
    .await;
    let (members, stats) = buckets(&client).await;
    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;

    const LARGE: u64 = 2000;
    let payload = Bytes::from(packet(200));
    assert!(payload.len() > 12_000, "{}", payload.len());
    for _ in 0..LARGE {
        client.publish(INGEST, payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    // Every packet has reached the replica: taken, dropped, or (at most 2 × 64) still buffered.
    wait_distributor_stats(&stats, "r1", "every packet taken or dropped", |s| {
        s.received_packets + s.ingest_dropped_packets + 128 >= LARGE
    })
    .await;

    let status = distributor.terminate(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", distributor.stderr());
    let s = distributor_stats(&stats, "r1").await.expect("final stats");
    let log = distributor.stderr();
    assert!(
        s.ingest_dropped_packets > 0 && log.contains("ingest queue full"),
        "a 64 KiB queue overflowed: {s:?}\n{log}"
    );
    // The byte bound, not the packet bound, was what filled: the log line says what was queued.
    let line = without_colours(
        log.lines()
            .find(|line| line.contains("ingest queue full"))
            .unwrap(),
    );
    let field = |name: &str| -> usize {
        let rest = &line[line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {line}"))
            + name.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("queued_packets=") < 64, "{line}");
    assert!(field("queued_bytes=") <= 65536, "{line}");
    assert_eq!(
        s.received_packets + s.ingest_dropped_packets,
        LARGE,
        "each packet either routed or counted as dropped"
    );
    assert_eq!(s.received_packets, s.routed_packets);
    a.wait_packets(s.routed_packets).await;
    assert_eq!(a.messages(), s.routed_packets * 200);
}

#[tokio::test]
async fn a_replica_that_keeps_up_drops_nothing() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let default = distributor::DEFAULT_INGEST_BUFFER.to_string();
    let mut distributor = start_distributor(&server, "r1", &["--ingest-buffer", &default]).await;
    let (members, stats) = buckets(&client).await;
    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;

    // The same 5000 packets, published in bursts the default buffer absorbs.
    let payload = Bytes::from(packet(50));
    for burst in 0..PACKETS / 500 {
        for _ in 0..500 {
            client.publish(INGEST, payload.clone()).await.unwrap();
        }
        client.flush().await.unwrap();
        wait_distributor_stats(&stats, "r1", "the burst routed", |s| {
            s.routed_packets >= (burst + 1) * 500
        })
        .await;
    }
    let status = distributor.terminate(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", distributor.stderr());
    let s = distributor_stats(&stats, "r1").await.expect("final stats");
    assert_eq!((s.received_packets, s.ingest_dropped_packets), (PACKETS, 0));
    a.wait_packets(PACKETS).await;
    assert_eq!(a.messages(), PACKETS * 50);
}

/// `line` without the ANSI colour codes the log may carry.
fn without_colours(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}
