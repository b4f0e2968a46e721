//! Overload in at-most-once mode: agents publishing faster than a replica routes. The ingest
//! connection's buffer (`--ingest-buffer`) bounds memory; what does not fit is dropped, and every
//! dropped packet is counted (`ingest_dropped_packets`), never lost silently.

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
    assert!(
        s.slow_consumer_events > 0,
        "drops show as slow-consumer events too"
    );
    a.wait_packets(s.routed_packets).await;
    assert_eq!(a.messages(), s.routed_packets * 50);
    let log = distributor.stderr();
    assert!(
        log.contains("dropped packets while the router was behind"),
        "{log}"
    );
    assert!(log.contains("slow consumer"), "{log}");
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
