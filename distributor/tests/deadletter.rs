//! Bad input against a real nats-server: every reason of the wire contract lands on
//! `logs.deadletter` with its code and the contract's headers, the valid part of a mixed packet
//! still arrives, and the distributor keeps running.

mod common;

use bytes::Bytes;
use common::*;
use logdist::protocol::headers;
use logdist_testing::NatsServer;

#[tokio::test]
async fn every_bad_input_is_dead_lettered_with_its_reason() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &["--max-packet-bytes", "4096"]).await;
    let (members, stats) = buckets(&client).await;
    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;
    let dead = DeadLetters::subscribe(&client).await;

    let ok = message(0);
    let whole: Vec<(&str, Vec<u8>)> = vec![
        (
            "too_large",
            format!("[{}]", vec![ok.as_str(); 100].join(",")).into_bytes(),
        ),
        ("not_utf8", b"{\"a\":\"\xff\"}".to_vec()),
        ("not_json", b"hello".to_vec()),
        ("not_json", Vec::new()),
        ("wrong_shape", b"42".to_vec()),
        ("empty_packet", b"[]".to_vec()),
        (
            "missing_field",
            br#"{"timestamp":1,"severity":"INFO","message":"m"}"#.to_vec(),
        ),
        (
            "wrong_type",
            br#"{"timestamp":1,"severity":"INFO","source":null,"message":"m"}"#.to_vec(),
        ),
        (
            "unknown_severity",
            br#"{"timestamp":1,"severity":"LOUD","source":"s","message":"m"}"#.to_vec(),
        ),
        (
            "empty_source",
            br#"{"timestamp":1,"severity":"INFO","source":"","message":"m"}"#.to_vec(),
        ),
        (
            "bad_timestamp",
            br#"{"timestamp":"yesterday","severity":"INFO","source":"s","message":"m"}"#.to_vec(),
        ),
        (
            "malformed",
            br#"{"timestamp":1,"timestamp":2,"severity":"INFO","source":"s","message":"m"}"#
                .to_vec(),
        ),
    ];
    for (i, (_, payload)) in whole.iter().enumerate() {
        client
            .publish_with_headers(
                logdist::Names::default().agent_ingest_subject("bad"),
                seq_headers(i as u64),
                Bytes::from(payload.clone()),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let letters = dead.wait(whole.len()).await;
    for (i, (code, payload)) in whole.iter().enumerate() {
        let (h, p) = &letters[i];
        assert_eq!(header(h, headers::ERROR_CODE), *code, "case {i}");
        assert!(
            !header(h, headers::ERROR).is_empty(),
            "case {i} has a reason for people"
        );
        assert_eq!(
            header(h, headers::SUBJECT),
            logdist::Names::default().agent_ingest_subject("bad")
        );
        assert_eq!(header(h, headers::DISTRIBUTOR), "r1");
        assert_eq!(
            header(h, headers::SEQ),
            i.to_string(),
            "original headers kept"
        );
        assert!(
            h.get(headers::INDEX).is_none(),
            "a whole payload has no index"
        );
        assert_eq!(
            p.as_ref(),
            payload.as_slice(),
            "the rejected bytes, unchanged"
        );
    }

    // A mixed packet: valid messages go on, each invalid one is dead-lettered alone.
    let bad_element = r#"{"timestamp":1,"severity":"NOPE","source":"s","message":"m"}"#;
    let mixed = format!("[{ok},{bad_element},7,{ok}]");
    client.publish(INGEST, mixed.into()).await.unwrap();
    client.flush().await.unwrap();
    a.wait_packets(1).await;
    let letters = dead.wait(whole.len() + 2).await;
    let (h, p) = &letters[whole.len()];
    assert_eq!(header(h, headers::ERROR_CODE), "unknown_severity");
    assert_eq!(header(h, headers::INDEX), "1");
    assert_eq!(header(h, headers::SUBJECT), INGEST);
    assert_eq!(p.as_ref(), bad_element.as_bytes());
    let (h, p) = &letters[whole.len() + 1];
    assert_eq!(header(h, headers::ERROR_CODE), "not_an_object");
    assert_eq!(header(h, headers::INDEX), "2");
    assert_eq!(p.as_ref(), b"7");
    let (fh, fp) = a.received().first[0].clone();
    assert_eq!(fp.as_ref(), format!("[{ok},{ok}]").as_bytes());
    assert_eq!(header(fh.as_ref().unwrap(), headers::COUNT), "2");

    // Still running: a good packet is routed, and the counters add up.
    client.publish(INGEST, ok.clone().into()).await.unwrap();
    client.flush().await.unwrap();
    a.wait_packets(2).await;
    let s = wait_distributor_stats(&stats, "r1", "dead-letter counters", |s| {
        s.routed_packets == 2
    })
    .await;
    assert_eq!(s.received_packets, whole.len() as u64 + 2);
    assert_eq!(s.deadletter_packets, whole.len() as u64 + 2);
    assert_eq!(s.deadletter_reasons["not_json"], 2);
    assert_eq!(s.deadletter_reasons["unknown_severity"], 2);
    assert_eq!(s.routed_messages, 3);
    assert!(
        dead.all().len() == whole.len() + 2,
        "nothing else was dead-lettered"
    );
    assert!(distributor.terminate(WAIT).await.success());
}
