//! What real shippers send, against a real nats-server, a real distributor and a real analyzer:
//! syslog severities in the contract, Fluent Bit's NATS output, Vector's NATS sink and a generic
//! field map on their subjects — routed, counted under their canonical levels and sources, and
//! what cannot be mapped dead-lettered with the field and the format in the reason, one dead
//! letter per payload.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use common::*;
use logdist::protocol::headers;
use logdist::protocol::stats::AnalyzerStats;
use logdist_testing::{NatsServer, Process};

/// Fluent Bit's NATS output as its documentation gives it (`[[UNIX_TIMESTAMP, JSON_MAP], …]`,
/// the tag inside each map), with a tail input's `log` line and a parsed `level`.
const FLUENT_BIT: &str = r#"[
  [1457108504,{"tag":"fluentbit","cpu_p":1.500000,"user_p":1,"system_p":0.500000,"log":"cpu sample"}],
  [1457108505.25,{"tag":"web.access","log":"GET / 200","level":"warning","host":"web-1"}],
  [1457108506,{"tag":"web.access","log":"GET /admin 500","level":"err","host":"web-1"}]
]"#;
/// The same output with a record that has neither `log` nor `message`.
const FLUENT_BIT_UNMAPPABLE: &str =
    r#"[[1457108507,{"tag":"fluentbit","cpu_p":2.0}],[1457108508,{"tag":"fluentbit","log":"ok"}]]"#;

/// Vector's log events as its NATS sink writes them with `encoding.codec = "json"` (a file
/// source's fields: `file`, `host`, `message`, `source_type`, `timestamp`), one per message.
const VECTOR: [&str; 2] = [
    r#"{"file":"/var/log/nginx/access.log","host":"edge-2","message":"GET /index.html 200","source_type":"file","timestamp":"2026-12-01T12:00:00.123456Z"}"#,
    r#"{"file":"/var/log/nginx/error.log","host":"edge-2","message":"upstream timed out","source_type":"file","timestamp":"2026-12-01T12:00:01Z","level":"error"}"#,
];

/// A real analyzer `a` (instance `ia`, weight 1), once the distributor knows it; and the stats
/// bucket where it reports.
async fn analyzer(server: &NatsServer, client: &async_nats::Client) -> (Process, kv::Store) {
    let analyzer = Process::spawn(
        "analyzer",
        &[
            "--nats-url",
            &server.url(),
            "--id",
            "a",
            "--instance",
            "ia",
            "--weight",
            "1",
            "--heartbeat-interval",
            "200ms",
            "--report-interval",
            "200ms",
        ],
        &[],
    );
    let (members, stats) = buckets(client).await;
    wait_member(&members, "a", true).await;
    (analyzer, stats)
}

/// The analyzer's own counters, once they add up to `total` messages (bounded by WAIT).
async fn analyzed(stats: &kv::Store, total: u64) -> AnalyzerStats {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let record = match stats.get("analyzer.a.ia").await {
            Ok(Some(entry)) => serde_json::from_slice::<AnalyzerStats>(&entry).ok(),
            _ => None,
        };
        match record {
            Some(r) if r.messages >= total => return r,
            last if std::time::Instant::now() > deadline => {
                panic!("the analyzer counted {last:?}, expected {total} messages")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn shippers_records_and_syslog_severities_are_analyzed_in_the_canonical_shape() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let _distributor = start_distributor(
        &server,
        "r1",
        &[
            "--ingest-format",
            "logs.fluentbit.>=fluent-bit",
            "--ingest-format",
            "logs.ingest.vector=vector",
            "--ingest-format",
            "logs.apps.>=fields",
            "--field",
            "message=msg",
            "--field",
            "source=kubernetes.pod",
            "--field",
            "severity=lvl",
        ],
    )
    .await;
    let (_analyzer, stats) = analyzer(&server, &client).await;
    let dead = DeadLetters::subscribe(&client).await;

    // Every syslog keyword and common spelling, any case, in one contract packet.
    let syslog = [
        ("emerg", "FATAL"),
        ("Emergency", "FATAL"),
        ("panic", "FATAL"),
        ("ALERT", "FATAL"),
        ("crit", "FATAL"),
        ("critical", "FATAL"),
        ("err", "ERROR"),
        ("Error", "ERROR"),
        ("warning", "WARN"),
        ("warn", "WARN"),
        ("notice", "INFO"),
        ("info", "INFO"),
        ("informational", "INFO"),
        ("debug", "DEBUG"),
    ];
    let packet: Vec<String> = syslog
        .iter()
        .map(|(s, _)| {
            format!(r#"{{"timestamp":1,"severity":"{s}","source":"syslog","message":"{s}"}}"#)
        })
        .collect();
    let publish = |subject: &'static str, payload: String| {
        let client = client.clone();
        async move { client.publish(subject, payload.into()).await.unwrap() }
    };
    publish("logs.ingest.rsyslog", format!("[{}]", packet.join(","))).await;
    publish("logs.fluentbit.web", FLUENT_BIT.into()).await;
    publish("logs.fluentbit.cpu", FLUENT_BIT_UNMAPPABLE.into()).await;
    for event in VECTOR {
        publish("logs.ingest.vector", event.into()).await;
    }
    publish(
        "logs.apps.checkout",
        r#"[{"msg":"paid","lvl":"notice","kubernetes":{"pod":"checkout-1"}},
            {"msg":"declined","lvl":"WARNING","kubernetes":{"pod":"checkout-1"}},
            {"msg":"no level","kubernetes":{"pod":"checkout-1"}}]"#
            .into(),
    )
    .await;
    client.flush().await.unwrap();

    // Analyzers report every level, zeros included.
    let mut expected: BTreeMap<String, u64> = logdist::Severity::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), 0))
        .collect();
    for (_, level) in syslog {
        *expected.entry(level.into()).or_default() += 1;
    }
    // Fluent Bit: INFO (no level), WARN, ERROR, and the mappable record of the second payload.
    for level in ["INFO", "WARN", "ERROR", "INFO"] {
        *expected.entry(level.into()).or_default() += 1;
    }
    // Vector: INFO (no severity), ERROR; fields: notice, WARNING.
    for level in ["INFO", "ERROR", "INFO", "WARN"] {
        *expected.entry(level.into()).or_default() += 1;
    }
    let total: u64 = expected.values().sum();
    let record = analyzed(&stats, total).await;
    assert_eq!(record.messages, total);
    assert_eq!(
        record.invalid_packets, 0,
        "every mapped packet is canonical"
    );
    assert_eq!(record.by_severity, expected);
    let sources: BTreeMap<String, u64> = record
        .top_sources
        .iter()
        .map(|s| (s.source.clone(), s.messages))
        .collect();
    assert_eq!(sources["syslog"], syslog.len() as u64);
    assert_eq!(sources["web-1"], 2, "Fluent Bit's host");
    assert_eq!(sources["fluentbit"], 2, "Fluent Bit's tag, without a host");
    assert_eq!(sources["edge-2"], 2, "Vector's host");
    assert_eq!(sources["checkout-1"], 2, "the field map's nested path");

    // Exactly the two unmappable records, one dead letter for each payload, naming the field
    // and the format.
    let letters = dead.wait(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dead.all().len(), 2, "nothing else was dead-lettered");
    let mut reasons: Vec<(String, String, String, u64, String, String)> = letters
        .iter()
        .map(|(h, p)| {
            assert_eq!(header(h, headers::PAYLOAD), "elements");
            assert_eq!(header(h, headers::INVALID_COUNT), "1");
            let report: Vec<serde_json::Value> = serde_json::from_slice(p).unwrap();
            assert_eq!(report.len(), 1);
            (
                header(h, headers::SUBJECT),
                header(h, headers::ERROR_CODE),
                report[0]["code"].as_str().unwrap().to_string(),
                report[0]["index"].as_u64().unwrap(),
                report[0]["error"].as_str().unwrap().to_string(),
                header(h, headers::ERROR),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            (
                "logs.apps.checkout".into(),
                "invalid_elements".into(),
                "missing_field".into(),
                2,
                "fields record has no `lvl` field (or set --default-severity)".into(),
                "1 of 3 elements are invalid (missing_field 1); the payload lists each with its \
                 index and reason"
                    .into()
            ),
            (
                "logs.fluentbit.cpu".into(),
                "invalid_elements".into(),
                "missing_field".into(),
                0,
                "fluent-bit record has no `log` (nor `message`) field".into(),
                "1 of 2 elements are invalid (missing_field 1); the payload lists each with its \
                 index and reason"
                    .into()
            ),
        ]
    );
}

/// A shipper's payload of 40,000 records that cannot be mapped used to cost 40,000 dead
/// letters: now one, the payload whole with a summary, while the counters count each record and
/// the payload's one mappable record is analyzed.
#[tokio::test]
async fn a_payload_of_40000_unmappable_records_costs_one_dead_letter() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let _distributor = start_distributor(
        &server,
        "r1",
        &["--ingest-format", "logs.fluentbit.>=fluent-bit"],
    )
    .await;
    let (_analyzer, stats) = analyzer(&server, &client).await;
    let dead = DeadLetters::subscribe(&client).await;
    let mut records = vec![r#"[1457108507,{"tag":"t"}]"#; 40_000];
    records.insert(20_000, r#"[1457108508,{"tag":"t","log":"ok"}]"#);
    let payload = format!("[{}]", records.join(","));
    client
        .publish("logs.fluentbit.flood", payload.clone().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(analyzed(&stats, 1).await.messages, 1);
    let letters = dead.wait(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dead.all().len(), 1, "one dead letter for the payload");
    let (h, p) = &letters[0];
    assert_eq!(header(h, headers::ERROR_CODE), "invalid_elements");
    assert_eq!(header(h, headers::PAYLOAD), "packet");
    assert_eq!(header(h, headers::INVALID_COUNT), "40000");
    assert!(
        header(h, headers::ERROR).starts_with(
            "40000 of 40001 elements are invalid (missing_field 40000); their report would exceed"
        ),
        "{}",
        header(h, headers::ERROR)
    );
    assert_eq!(p.as_ref(), payload.as_bytes(), "the payload, whole");
    let s = wait_distributor_stats(&stats, "r1", "the flood counted", |s| {
        s.deadletter_messages == 40_000
    })
    .await;
    assert_eq!(s.deadletter_packets, 1);
    assert_eq!(s.deadletter_reasons["missing_field"], 40_000);
    assert_eq!(s.received_messages, 40_001);
}

/// At-least-once: a stream made before `--ingest-format` named a subject outside the ingest
/// subjects is updated to capture it, and its records are analyzed.
#[tokio::test]
async fn at_least_once_captures_the_format_subjects_in_the_stream() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "LOGS".into(),
        subjects: vec!["logs.ingest".into(), "logs.ingest.>".into()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let _distributor = start_distributor(
        &server,
        "r1",
        &[
            "--delivery",
            "at-least-once",
            "--ingest-format",
            "logs.fluentbit.>=fluent-bit",
        ],
    )
    .await;
    let (_analyzer, stats) = analyzer(&server, &client).await;
    // Published through JetStream: the ack says the stream captured the subject.
    let ack = js
        .publish("logs.fluentbit.web", FLUENT_BIT.into())
        .await
        .unwrap()
        .await
        .expect("the stream captures logs.fluentbit.>");
    assert_eq!(ack.stream, "LOGS");
    assert_eq!(analyzed(&stats, 3).await.messages, 3);
}

/// A pattern that overlaps the ingest subjects without lying inside them would take a payload
/// twice: refused at start as bad usage (exit 2), with the reason.
#[tokio::test]
async fn overlapping_format_patterns_are_bad_usage() {
    let mut distributor = Process::spawn(
        "distributor",
        &["run", "--ingest-format", "logs.*.vector=vector"],
        &[],
    );
    let status = distributor.wait(WAIT).await;
    assert_eq!(status.code(), Some(2));
    assert!(
        distributor
            .stderr()
            .contains("overlaps the ingest subjects"),
        "{}",
        distributor.stderr()
    );
}
