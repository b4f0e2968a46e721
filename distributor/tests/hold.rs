//! No analyzer online, against a real nats-server: packets are held in order and delivered when
//! one appears; beyond the limits they are dead-lettered as `no_analyzer_online`.

mod common;

use bytes::Bytes;
use common::*;
use logdist::protocol::headers;
use logdist_testing::NatsServer;

#[tokio::test]
async fn held_then_delivered_in_order_and_overflow_dead_lettered() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &["--hold-max-packets", "20"]).await;
    let (members, stats) = buckets(&client).await;
    let dead = DeadLetters::subscribe(&client).await;

    let payload = Bytes::from(packet(3));
    for seq in 0..25u64 {
        client
            .publish_with_headers(INGEST, seq_headers(seq), payload.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let letters = dead.wait(5).await;
    for (i, (h, p)) in letters.iter().enumerate() {
        assert_eq!(header(h, headers::ERROR_CODE), "no_analyzer_online");
        assert_eq!(
            header(h, headers::SEQ),
            (20 + i).to_string(),
            "the newest are refused"
        );
        assert_eq!(p, &payload);
    }
    let s = wait_distributor_stats(&stats, "r1", "20 packets held", |s| s.held_packets == 20).await;
    assert_eq!(
        (s.held_messages, s.held_total, s.held_overflow),
        (60, 20, 5)
    );
    assert_eq!(s.held_bytes, 20 * payload.len() as u64);

    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;
    a.wait_packets(20).await;
    assert_eq!(
        a.received().seqs,
        (0..20).collect::<Vec<u64>>(),
        "delivered in order"
    );
    assert_eq!(a.messages(), 60);
    wait_distributor_stats(&stats, "r1", "hold queue empty", |s| {
        s.held_packets == 0 && s.routed_packets == 20
    })
    .await;
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn byte_limit_applies_too() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let payload = Bytes::from(packet(10));
    let limit = (payload.len() * 2).to_string();
    let mut distributor = start_distributor(&server, "r1", &["--hold-max-bytes", &limit]).await;
    let (_, stats) = buckets(&client).await;
    let dead = DeadLetters::subscribe(&client).await;
    for seq in 0..3u64 {
        client
            .publish_with_headers(INGEST, seq_headers(seq), payload.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let letters = dead.wait(1).await;
    assert_eq!(header(&letters[0].0, headers::SEQ), "2");
    wait_distributor_stats(&stats, "r1", "2 held, 1 overflow", |s| {
        s.held_packets == 2 && s.held_overflow == 1
    })
    .await;
    // Stopping with packets held dead-letters them rather than dropping them silently.
    assert!(distributor.terminate(WAIT).await.success());
    let letters = dead.wait(3).await;
    assert_eq!(header(&letters[1].0, headers::SEQ), "0");
    assert_eq!(
        header(&letters[2].0, headers::ERROR_CODE),
        "no_analyzer_online"
    );
}
