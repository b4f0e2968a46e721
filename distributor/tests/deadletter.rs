//! Bad input against a real nats-server: every reason of the wire contract lands on
//! `logs.deadletter` with its code and the contract's headers, the valid part of a mixed packet
//! still arrives, a packet costs one dead letter however many of its elements are invalid, and
//! the distributor keeps running.

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
            h.get(headers::PAYLOAD).is_none(),
            "a payload that is no packet keeps the old form"
        );
        assert_eq!(
            p.as_ref(),
            payload.as_slice(),
            "the rejected bytes, unchanged"
        );
    }

    // A mixed packet: valid messages go on; the invalid ones go out together, in one dead
    // letter that reports each with its index and reason.
    let bad_element = r#"{"timestamp":1,"severity":"NOPE","source":"s","message":"m"}"#;
    let mixed = format!("[{ok},{bad_element},7,{ok}]");
    client
        .publish_with_headers(INGEST, seq_headers(99), mixed.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    a.wait_packets(1).await;
    let letters = dead.wait(whole.len() + 1).await;
    let (h, p) = &letters[whole.len()];
    assert_eq!(header(h, headers::ERROR_CODE), "invalid_elements");
    assert_eq!(header(h, headers::PAYLOAD), "elements");
    assert_eq!(header(h, headers::INVALID_COUNT), "2");
    assert_eq!(
        header(h, headers::ERROR),
        "2 of 4 elements are invalid (not_an_object 1, unknown_severity 1); the payload lists each with its index and reason"
    );
    assert_eq!(header(h, headers::SUBJECT), INGEST);
    assert_eq!(header(h, headers::SEQ), "99", "original headers kept");
    let report: Vec<serde_json::Value> = serde_json::from_slice(p).unwrap();
    assert_eq!(report.len(), 2);
    assert_eq!(report[0]["index"], 1);
    assert_eq!(report[0]["code"], "unknown_severity");
    assert_eq!(
        report[0]["element"],
        serde_json::from_str::<serde_json::Value>(bad_element).unwrap()
    );
    assert_eq!(report[1]["index"], 2);
    assert_eq!(report[1]["code"], "not_an_object");
    assert_eq!(report[1]["element"], 7);
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
    assert_eq!(s.deadletter_packets, whole.len() as u64 + 1);
    // Rejected messages: one per whole payload, one per invalid element.
    assert_eq!(s.deadletter_messages, whole.len() as u64 + 2);
    assert_eq!(s.deadletter_reasons["not_json"], 2);
    assert_eq!(s.deadletter_reasons["unknown_severity"], 2);
    assert_eq!(s.deadletter_reasons["not_an_object"], 1);
    assert_eq!(s.routed_messages, 3);
    assert!(
        dead.all().len() == whole.len() + 1,
        "nothing else was dead-lettered"
    );
    assert!(distributor.terminate(WAIT).await.success());
}

/// One 100,000-element packet of `{}` used to cost 100,000 dead letters: now one, the packet
/// whole with a summary (its report would pass the limit), while the counters still count every
/// rejected message; the distributor logs it in a line, not 100,000.
#[tokio::test]
async fn a_packet_of_100000_invalid_elements_costs_one_dead_letter() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &[]).await;
    let (members, stats) = buckets(&client).await;
    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;
    let dead = DeadLetters::subscribe(&client).await;

    let flood = format!("[{}]", vec!["{}"; 100_000].join(","));
    client.publish(INGEST, flood.clone().into()).await.unwrap();
    // And a packet whose few invalid elements fit a report, behind it: its valid ones arrive.
    let ok = message(0);
    let mixed = format!("[{ok},{{}},{ok}]");
    client.publish(INGEST, mixed.into()).await.unwrap();
    client.flush().await.unwrap();
    a.wait_packets(1).await;
    let s = wait_distributor_stats(&stats, "r1", "both packets handled", |s| {
        s.received_packets == 2 && s.routed_packets == 1
    })
    .await;
    let letters = dead.wait(2).await;
    assert_eq!(letters.len(), 2, "one dead letter per packet");
    let (h, p) = &letters[0];
    assert_eq!(header(h, headers::ERROR_CODE), "invalid_elements");
    assert_eq!(header(h, headers::PAYLOAD), "packet");
    assert_eq!(header(h, headers::INVALID_COUNT), "100000");
    assert!(
        header(h, headers::ERROR).starts_with("100000 of 100000 elements are invalid (missing_field 100000); their report would exceed ")
            && header(h, headers::ERROR).contains(" bytes, so the payload is the packet, whole; the first, at index 0: "),
        "{}",
        header(h, headers::ERROR)
    );
    assert_eq!(p.as_ref(), flood.as_bytes(), "the packet, whole");
    let (h, p) = &letters[1];
    assert_eq!(header(h, headers::PAYLOAD), "elements");
    let report: Vec<serde_json::Value> = serde_json::from_slice(p).unwrap();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0]["index"], 1);
    assert_eq!(report[0]["code"], "missing_field");
    let (_, forwarded) = a.received().first[0].clone();
    assert_eq!(forwarded.as_ref(), format!("[{ok},{ok}]").as_bytes());

    assert_eq!(s.received_messages, 100_003);
    assert_eq!(s.deadletter_packets, 2);
    assert_eq!(s.deadletter_messages, 100_001);
    assert_eq!(s.deadletter_reasons["missing_field"], 100_001);
    assert_eq!(s.routed_messages, 2);
    assert!(distributor.terminate(WAIT).await.success());
    let log = distributor.stderr();
    let lines = log.lines().filter(|l| l.contains("dead-letter")).count();
    assert!((1..=2).contains(&lines), "{lines} log lines:\n{log}");
}
