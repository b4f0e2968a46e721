//! The HTTP gateway against a real nats-server and a real HTTP client: every endpoint, every
//! error status, and that what is accepted is what reaches the ingest subject.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use logdist::Names;
use logdist_http::{start, GatewayConfig, LocalPacket, LocalRouter};
use logdist_testing::NatsServer;
use tokio_util::sync::CancellationToken;

const HELLO: &str =
    r#"{"timestamp":1020,"severity":"WARN","source":"app","message":"hello world!"}"#;

struct Fixture {
    server: NatsServer,
    client: async_nats::Client,
    base: String,
    ingest: async_nats::Subscriber,
    counters: std::sync::Arc<logdist_http::GatewayCounters>,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn fixture(max_body_bytes: usize, acknowledged: bool) -> Fixture {
    fixture_with(max_body_bytes, acknowledged, None).await
}

/// [`fixture`] whose gateway hands its packets to `local_router` instead of publishing them.
async fn fixture_with(
    max_body_bytes: usize,
    acknowledged: bool,
    local_router: Option<LocalRouter>,
) -> Fixture {
    fixture_on(
        max_body_bytes,
        acknowledged,
        local_router,
        logdist::protocol::deadletter::DEFAULT_REPORT_MAX_BYTES,
        "",
    )
    .await
}

/// [`fixture_with`] with a dead-letter report limit and extra nats-server configuration.
async fn fixture_on(
    max_body_bytes: usize,
    acknowledged: bool,
    local_router: Option<LocalRouter>,
    deadletter_report_max_bytes: usize,
    server_config: &str,
) -> Fixture {
    let server = NatsServer::with_config(server_config);
    let client = async_nats::connect(server.url()).await.unwrap();
    let ingest = client
        .subscribe(logdist::Names::default().agent_ingest_subject("http"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let shutdown = CancellationToken::new();
    let running = start(
        GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            names: Names::default(),
            max_body_bytes,
            acknowledged,
            mapping: logdist::ingest_format::Mapping::default(),
            local_router,
            deadletter_report_max_bytes,
            telemetry: None,
        },
        client.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    Fixture {
        base: format!("http://{}", running.local_addr),
        server,
        client,
        ingest,
        counters: running.counters.clone(),
        _shutdown: shutdown.drop_guard(),
    }
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("published to the ingest subject")
        .unwrap()
}

async fn nothing_more(sub: &mut async_nats::Subscriber) {
    let extra = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(
        extra.is_err(),
        "nothing may be published for a rejected request"
    );
}

/// Kills the fixture's nats-server and waits until the gateway's client notices.
async fn stop_nats(server: &mut NatsServer, client: &async_nats::Client) {
    server.kill();
    logdist_testing::wait_until(
        "client sees the disconnect",
        Duration::from_secs(10),
        || {
            let state = client.connection_state();
            async move { state != async_nats::connection::State::Connected }
        },
    )
    .await;
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// POST /message/send reads its body itself: one that comes in several chunks is joined whole,
/// and one over the limit in chunks is a 413 (raw HTTP/1.1, so the chunks are the test's).
#[tokio::test]
async fn a_single_message_in_chunks_is_joined_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut f = fixture(1 << 10, false).await;
    let addr = f.base.trim_start_matches("http://").to_string();
    let post_chunks = |chunks: Vec<String>| {
        let addr = addr.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut request = format!(
                "POST /message/send HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
                 transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            );
            for chunk in &chunks {
                request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            }
            request.push_str("0\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
                .await
                .expect("an answer within 10 s")
                .unwrap();
            answer
        }
    };
    let (head, tail) = HELLO.split_at(HELLO.len() / 2);
    let answer = post_chunks(vec![head.into(), tail.into()]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(r#"{"accepted":1,"stored":false}"#),
        "{answer}"
    );
    let msg = next(&mut f.ingest).await;
    assert_eq!(&msg.payload[..], HELLO.as_bytes());

    let over = "x".repeat(600);
    let answer = post_chunks(vec![over.clone(), over]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
}

#[tokio::test]
async fn old_service_single_message_is_published_unchanged() {
    let mut f = fixture(1 << 20, false).await;
    let http = reqwest::Client::new();
    // Exactly what the old service's curl example sends (curl -d: form content type).
    let response = http
        .post(format!("{}/message/send", f.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 1);
    let msg = next(&mut f.ingest).await;
    assert_eq!(&msg.payload[..], HELLO.as_bytes());
    let headers = msg.headers.unwrap();
    assert_eq!(
        headers
            .get(logdist::protocol::headers::AGENT)
            .unwrap()
            .as_str(),
        "http"
    );
    assert!(headers.get(logdist::protocol::headers::SENT_AT).is_some());
    // Only those two: the distributor adds its own when it forwards.
    assert_eq!(headers.iter().count(), 2, "{headers:?}");
    assert!(headers.get(logdist::protocol::headers::COUNT).is_none());

    // An array is not a single message.
    let response = http
        .post(format!("{}/message/send", f.base))
        .body(format!("[{HELLO}]"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    nothing_more(&mut f.ingest).await;
}

#[tokio::test]
async fn packets_ndjson_and_gzip() {
    let mut f = fixture(1 << 20, false).await;
    let http = reqwest::Client::new();
    let packet = format!("[{HELLO},{HELLO},{HELLO}]");
    let r = http
        .post(format!("{}/messages", f.base))
        .header("Content-Type", "application/json")
        .body(packet.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["accepted"], 3);
    assert_eq!(&next(&mut f.ingest).await.payload[..], packet.as_bytes());

    let ndjson = format!("{HELLO}\n{HELLO}\n\n");
    let r = http
        .post(format!("{}/messages", f.base))
        .header("Content-Type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        &next(&mut f.ingest).await.payload[..],
        format!("[{HELLO},{HELLO}]").as_bytes()
    );

    let r = http
        .post(format!("{}/messages", f.base))
        .header("Content-Type", "application/x-ndjson")
        .header("Content-Encoding", "gzip")
        .body(gzip(
            format!("{HELLO}\n{HELLO}\n{HELLO}\n{HELLO}\n").as_bytes(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["accepted"], 4);
    let payload = next(&mut f.ingest).await.payload;
    let packet = logdist::PacketValidator::default().parse(&payload).unwrap();
    assert_eq!(packet.records.len(), 4);
}

#[tokio::test]
async fn shippers_records_are_mapped_on_messages_with_format() {
    let mut f = fixture(1 << 20, false).await;
    let http = reqwest::Client::new();
    let post = |query: &str, body: &str| {
        http.post(format!("{}/messages{query}", f.base))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
    };
    // Fluent Bit's documented pairs, and a Vector event.
    let r = post(
        "?format=fluent-bit",
        r#"[[1457108504,{"tag":"fluentbit","log":"one"}],[1457108505.5,{"tag":"web","log":"two","level":"crit"}]]"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["accepted"], 2);
    let payload = next(&mut f.ingest).await.payload;
    let packet = logdist::PacketValidator::default().parse(&payload).unwrap();
    assert!(packet.is_fully_valid());
    assert_eq!(packet.records[1].severity, logdist::Severity::Fatal);
    assert_eq!(packet.records[1].source, "web");
    let r = post(
        "?format=vector",
        r#"{"host":"h1","message":"m","timestamp":"2026-12-01T12:00:00Z","source_type":"stdin"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let payload = next(&mut f.ingest).await.payload;
    assert_eq!(
        logdist::PacketValidator::default().count_if_valid(&payload),
        Some(1)
    );

    // A record that cannot be mapped refuses the request, naming the field and the format.
    let r = post(
        "?format=vector",
        r#"[{"host":"h1","message":"m"},{"host":"h1"}]"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_messages");
    assert_eq!(body["invalid"][0]["index"], 1);
    assert_eq!(body["invalid"][0]["error"], "missing_field");
    assert_eq!(
        body["invalid"][0]["reason"],
        "vector record has no `message` field"
    );
    let r = post("?format=yaml", "[]").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unknown_format"
    );
    nothing_more(&mut f.ingest).await;
}

#[tokio::test]
async fn every_error_status_and_nothing_published() {
    let mut f = fixture(4096, false).await;
    let http = reqwest::Client::new();
    let post = |path: &str, ctype: &str, body: Vec<u8>| {
        http.post(format!("{}{path}", f.base))
            .header("Content-Type", ctype)
            .body(body)
            .send()
    };

    // 400 naming the field and the reason.
    let r = post(
        "/message/send",
        "application/json",
        br#"{"timestamp":1,"severity":"INFO","message":"m"}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "missing_field");
    assert_eq!(body["field"], "source");
    assert!(body["reason"].as_str().unwrap().contains("source"));

    let r = post("/message/send", "application/json", b"not json".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "not_json"
    );

    // A packet with one bad message is refused whole, with its index.
    let bad = r#"{"timestamp":1,"severity":"LOUD","source":"s","message":"m"}"#;
    let r = post(
        "/messages",
        "application/json",
        format!("[{HELLO},{bad}]").into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_messages");
    assert_eq!(body["invalid"][0]["index"], 1);
    assert_eq!(body["invalid"][0]["field"], "severity");

    // 413 over the limit, plain and after decompression.
    let big = format!("[{}]", vec![HELLO; 60].join(","));
    let r = post("/messages", "application/json", big.clone().into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "too_large"
    );
    let r = http
        .post(format!("{}/messages", f.base))
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(gzip(big.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // The same on POST /message/send, which reads its body itself.
    let huge = format!(
        r#"{{"timestamp":1,"severity":"INFO","source":"s","message":"{}"}}"#,
        "x".repeat(5000)
    );
    let r = post("/message/send", "application/json", huge.into_bytes())
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too_large");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("limit of 4096 bytes"),
        "{body}"
    );

    // 415 for other content types and encodings.
    let r = post("/messages", "text/plain", HELLO.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unsupported_media_type"
    );
    let r = http
        .post(format!("{}/messages", f.base))
        .header("Content-Encoding", "br")
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    nothing_more(&mut f.ingest).await;

    // 503 while NATS is down; healthz follows the connection.
    assert_eq!(
        http.get(format!("{}/healthz", f.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    stop_nats(&mut f.server, &f.client).await;
    assert_eq!(
        http.get(format!("{}/healthz", f.base))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let r = post(
        "/message/send",
        "application/json",
        HELLO.as_bytes().to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "nats_unavailable"
    );
}

/// At-most-once in the distributor: accepted packets go to the router's queue, not to NATS; a
/// queue that stays full is a 503 `overloaded` with `Retry-After`, a closed one (the router
/// stopped) a 503 `stopping`, and neither accepts anything.
#[tokio::test]
async fn a_local_router_gets_the_packets_and_a_full_one_pushes_back() {
    let (queue, mut router) = tokio::sync::mpsc::channel::<LocalPacket>(2);
    let local = LocalRouter {
        queue,
        max_wait: Duration::from_millis(100),
    };
    let mut f = fixture_with(1 << 20, false, Some(local)).await;
    let http = reqwest::Client::new();
    let send = |body: String| {
        http.post(format!("{}/message/send", f.base))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    for _ in 0..2 {
        let r = send(HELLO.to_string()).await.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"accepted": 1, "stored": false}));
    }
    let packet = http
        .post(format!("{}/messages", f.base))
        .body(format!("[{HELLO},{HELLO},{HELLO}]"));

    // The router takes nothing: the third request waits 100 ms for room, then is refused.
    let started = std::time::Instant::now();
    let r = packet.try_clone().unwrap().send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "overloaded");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("queue of 2 HTTP packets") && reason.contains("nothing was accepted"),
        "{reason}"
    );

    // What was accepted is in the queue, as it would have been published; nothing went to NATS.
    for _ in 0..2 {
        let p = router.try_recv().expect("an accepted packet in the queue");
        assert_eq!(
            p.subject.as_str(),
            Names::default().agent_ingest_subject("http")
        );
        assert_eq!(&p.payload[..], HELLO.as_bytes());
        assert_eq!(p.messages, 1);
        let agent = p.headers.get(logdist::protocol::headers::AGENT).unwrap();
        assert_eq!(agent.as_str(), "http");
        assert!(p.headers.get(logdist::protocol::headers::SENT_AT).is_some());
    }
    assert!(
        router.try_recv().is_err(),
        "the refused packet is not queued"
    );
    nothing_more(&mut f.ingest).await;

    // Room again: accepted, with its count of messages.
    let r = packet.try_clone().unwrap().send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(router.recv().await.unwrap().messages, 3);

    // The router stopped: refused at once, as the distributor shuts down.
    drop(router);
    let r = send(HELLO.to_string()).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "stopping");
    nothing_more(&mut f.ingest).await;
}

#[tokio::test]
async fn acknowledged_mode_answers_after_the_stream_stored_it() {
    let f = fixture(1 << 20, true).await;
    let http = reqwest::Client::new();
    // No stream captures the subject yet: JetStream cannot ack, so nothing is promised.
    let r = http
        .post(format!("{}/message/send", f.base))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    let js = async_nats::jetstream::new(f.client.clone());
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: logdist_testing::STREAM.into(),
            subjects: vec![
                logdist::protocol::names::DEFAULT_INGEST_SUBJECT.into(),
                logdist::Names::default().ingest_wildcard(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let r = http
        .post(format!("{}/message/send", f.base))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["stored"], true);
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn analyzer_stats_is_the_old_services_view() {
    let f = fixture(1 << 20, false).await;
    let js = async_nats::jetstream::new(f.client.clone());
    let stats =
        logdist::open_or_create_bucket(&js, logdist::protocol::names::DEFAULT_STATS_BUCKET, "")
            .await
            .unwrap();
    let membership = logdist::open_or_create_bucket(
        &js,
        logdist::protocol::names::DEFAULT_MEMBERSHIP_BUCKET,
        "",
    )
    .await
    .unwrap();
    for (id, instance, weight, messages) in [
        ("1", "a", 0.5, 100u64),
        ("1", "b", 0.5, 50),
        ("2", "c", 0.3, 90),
    ] {
        let record = logdist::protocol::stats::AnalyzerStats {
            id: id.into(),
            instance: instance.into(),
            weight,
            messages,
            ..Default::default()
        };
        stats
            .put(
                logdist::protocol::stats::analyzer_key(id, instance),
                serde_json::to_vec(&record).unwrap().into(),
            )
            .await
            .unwrap();
    }
    membership.put("1", "{}".into()).await.unwrap();
    let views: serde_json::Value = reqwest::get(format!("{}/analyzer/stats", f.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        views,
        serde_json::json!([
            {"id": "1", "weight": 0.5, "messages": 150, "online": true},
            {"id": "2", "weight": 0.3, "messages": 90, "online": false}
        ])
    );
}

/// OTLP/HTTP logs, the fixtures built with the OpenTelemetry project's own types.
mod otlp {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message as _;

    fn record(severity_number: i32, body: &str) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_764_590_400_000_000_000,
            severity_number,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.into())),
            }),
            ..Default::default()
        }
    }

    fn request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(service.into())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    async fn post(f: &Fixture, ctype: &str, gzipped: bool, body: Vec<u8>) -> reqwest::Response {
        let mut r = reqwest::Client::new()
            .post(format!("{}/v1/logs", f.base))
            .header("Content-Type", ctype);
        if gzipped {
            r = r.header("Content-Encoding", "gzip");
        }
        r.body(body).send().await.unwrap()
    }

    struct Subjects {
        ingest: async_nats::Subscriber,
        deadletter: async_nats::Subscriber,
    }

    async fn subscribe(f: &Fixture) -> Subjects {
        let subjects = Subjects {
            ingest: f
                .client
                .subscribe(logdist::Names::default().agent_ingest_subject("otlp"))
                .await
                .unwrap(),
            deadletter: f
                .client
                .subscribe(logdist::protocol::names::DEFAULT_DEADLETTER_SUBJECT)
                .await
                .unwrap(),
        };
        f.client.flush().await.unwrap();
        subjects
    }

    fn header(msg: &async_nats::Message, name: &str) -> String {
        msg.headers.as_ref().unwrap().get(name).unwrap().to_string()
    }

    #[tokio::test]
    async fn protobuf_and_json_requests_become_one_canonical_packet_each() {
        let f = fixture(1 << 20, false).await;
        let mut s = subscribe(&f).await;

        let req = request(
            "checkout",
            vec![record(9, "a"), record(17, "b"), record(21, "c")],
        );
        let r = post(&f, "application/x-protobuf", false, req.encode_to_vec()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
        let answer = ExportLogsServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
        assert_eq!(answer.partial_success, None, "full success leaves it unset");
        let msg = next(&mut s.ingest).await;
        assert_eq!(header(&msg, logdist::protocol::headers::AGENT), "otlp");
        let packet = logdist::PacketValidator::default()
            .parse(&msg.payload)
            .unwrap();
        assert!(packet.is_fully_valid());
        let seen: Vec<_> = packet
            .records
            .iter()
            .map(|r| (r.severity.as_str(), r.source.as_ref(), r.message.as_ref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("INFO", "checkout", "a"),
                ("ERROR", "checkout", "b"),
                ("FATAL", "checkout", "c")
            ]
        );

        // OTLP/JSON as the specification writes it (hex ids, 64-bit integers as strings),
        // gzip-compressed.
        let json = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"search"}}]},
            "scopeLogs":[{"scope":{"name":"s"},"logRecords":[
              {"timeUnixNano":"1764590400000000000","severityNumber":13,"severityText":"WARN","body":{"stringValue":"slow"},
               "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","unknownField":1},
              {"observedTimeUnixNano":1764590400000000001,"severityText":"debug","body":{"kvlistValue":{"values":[{"key":"q","value":{"intValue":"7"}}]}}}]}]}]}"#;
        let r = post(&f, "application/json", true, gzip(json.as_bytes())).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap(),
            serde_json::json!({})
        );
        let msg = next(&mut s.ingest).await;
        let messages: Vec<serde_json::Value> = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["severity"], "WARN");
        assert_eq!(messages[0]["source"], "search");
        assert_eq!(messages[0]["trace_id"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(messages[1]["severity"], "DEBUG");
        assert_eq!(messages[1]["message"], r#"{"q":7}"#);
        assert_eq!(messages[1]["timestamp"], "2025-12-01T12:00:00.000000001Z");

        // An empty request succeeds and publishes nothing.
        let r = post(&f, "application/x-protobuf", false, Vec::new()).await;
        assert_eq!(r.status(), 200);
        nothing_more(&mut s.ingest).await;
        nothing_more(&mut s.deadletter).await;
    }

    fn loud(body: &str) -> LogRecord {
        let mut loud = record(0, body);
        loud.severity_text = "LOUD".into();
        loud
    }

    /// The report of a packet's dead letter (`Logdist-Payload: elements`).
    fn report(dead: &async_nats::Message) -> Vec<serde_json::Value> {
        assert_eq!(
            header(dead, logdist::protocol::headers::PAYLOAD),
            "elements"
        );
        assert_eq!(
            header(dead, logdist::protocol::headers::CONTENT_TYPE),
            "application/json"
        );
        serde_json::from_slice(&dead.payload).unwrap()
    }

    #[tokio::test]
    async fn refused_records_are_a_partial_success_and_one_dead_letter() {
        let f = fixture(1 << 20, false).await;
        let mut s = subscribe(&f).await;
        let req = request(
            "web",
            vec![record(9, "ok"), loud("loud"), record(13, "ok too")],
        );
        let r = post(&f, "application/x-protobuf", false, req.encode_to_vec()).await;
        assert_eq!(r.status(), 200);
        let answer = ExportLogsServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
        let partial = answer.partial_success.unwrap();
        assert_eq!(partial.rejected_log_records, 1);
        assert!(
            partial.error_message.contains("LOUD"),
            "{}",
            partial.error_message
        );
        let dead = next(&mut s.deadletter).await;
        assert_eq!(
            header(&dead, logdist::protocol::headers::ERROR_CODE),
            "invalid_elements"
        );
        assert_eq!(
            header(&dead, logdist::protocol::headers::INVALID_COUNT),
            "1"
        );
        assert_eq!(
            header(&dead, logdist::protocol::headers::SUBJECT),
            logdist::Names::default().agent_ingest_subject("otlp")
        );
        assert!(dead
            .headers
            .as_ref()
            .unwrap()
            .get(logdist::protocol::headers::INDEX)
            .is_none());
        let entries = report(&dead);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["index"], 1);
        assert_eq!(entries[0]["code"], "unknown_severity");
        assert!(entries[0]["error"].as_str().unwrap().contains("\"LOUD\""));
        // The element is the record itself, as OTLP/JSON.
        let kept: LogRecord = serde_json::from_value(entries[0]["element"].clone()).unwrap();
        assert_eq!(kept, loud("loud"));
        let packet = next(&mut s.ingest).await;
        assert_eq!(
            logdist::PacketValidator::default().count_if_valid(&packet.payload),
            Some(2)
        );

        // The same in OTLP/JSON.
        let json = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":99},{"severityNumber":1}]}]}]}"#;
        let r = post(&f, "application/json", false, json.into()).await;
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["partialSuccess"]["rejectedLogRecords"], "1");
        let entries = report(&next(&mut s.deadletter).await);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["element"]["severityNumber"], 99);
        let packet = next(&mut s.ingest).await;
        let messages: Vec<serde_json::Value> = serde_json::from_slice(&packet.payload).unwrap();
        assert_eq!(messages[0]["source"], "unknown_service");
        assert_eq!(messages[0]["severity"], "TRACE");
        nothing_more(&mut s.deadletter).await;
        let counted =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(counted(&f.counters.deadletters), 2);
        assert_eq!(counted(&f.counters.rejected_records), 2);
    }

    /// 10,000 refused records: one dead letter, the request whole (their report is over the
    /// 1 MiB limit), in its own encoding; the valid records still go out as one packet.
    #[tokio::test]
    async fn a_request_of_10000_refused_records_costs_one_dead_letter() {
        let f = fixture(8 << 20, false).await;
        let mut s = subscribe(&f).await;
        let mut records: Vec<LogRecord> = (0..10_000).map(|i| loud(&format!("bad {i}"))).collect();
        for i in 0..5 {
            records.insert(i * 2_000, record(9, &format!("good {i}")));
        }
        let body = request("web", records).encode_to_vec();
        let r = post(&f, "application/x-protobuf", false, body.clone()).await;
        assert_eq!(r.status(), 200);
        let answer = ExportLogsServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
        assert_eq!(answer.partial_success.unwrap().rejected_log_records, 10_000);

        let dead = next(&mut s.deadletter).await;
        nothing_more(&mut s.deadletter).await;
        assert_eq!(
            header(&dead, logdist::protocol::headers::ERROR_CODE),
            "invalid_elements"
        );
        assert_eq!(header(&dead, logdist::protocol::headers::PAYLOAD), "packet");
        assert_eq!(
            header(&dead, logdist::protocol::headers::INVALID_COUNT),
            "10000"
        );
        assert_eq!(
            header(&dead, logdist::protocol::headers::CONTENT_TYPE),
            "application/x-protobuf"
        );
        let summary = header(&dead, logdist::protocol::headers::ERROR);
        assert!(
            summary.starts_with("10000 of 10005 elements are invalid (unknown_severity 10000)"),
            "{summary}"
        );
        // Every refused record is in it: the request as it came.
        assert_eq!(&dead.payload[..], &body[..]);
        let kept = ExportLogsServiceRequest::decode(&dead.payload[..]).unwrap();
        let loud = kept.resource_logs[0].scope_logs[0]
            .log_records
            .iter()
            .filter(|r| r.severity_text == "LOUD")
            .count();
        assert_eq!(loud, 10_000);

        let packet = next(&mut s.ingest).await;
        let messages: Vec<serde_json::Value> = serde_json::from_slice(&packet.payload).unwrap();
        let bodies: Vec<_> = messages.iter().map(|m| m["message"].clone()).collect();
        assert_eq!(bodies, ["good 0", "good 1", "good 2", "good 3", "good 4"]);
        nothing_more(&mut s.ingest).await;
        let counted =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(counted(&f.counters.deadletters), 1);
        assert_eq!(counted(&f.counters.rejected_records), 10_000);
    }

    /// A request larger than the server lets one message be, with more refused records than a
    /// report can hold: still one dead letter, listing as many as fit, and saying so.
    #[tokio::test]
    async fn refused_records_that_fit_nowhere_are_listed_as_far_as_they_fit() {
        // A report of at most 4 KiB, and a server that takes no message over 70,000 bytes: the
        // request, of 3,000 refused records, is larger.
        let f = fixture_on(1 << 20, false, None, 4096, "max_payload: 70000").await;
        let mut s = subscribe(&f).await;
        let mut records: Vec<LogRecord> =
            (0..3_000).map(|i| loud(&format!("bad {i:04}"))).collect();
        records.push(record(9, "good"));
        let body = request("web", records).encode_to_vec();
        assert!(body.len() > 70_000, "{}", body.len());
        let r = post(&f, "application/x-protobuf", false, body).await;
        assert_eq!(r.status(), 200);
        let dead = next(&mut s.deadletter).await;
        nothing_more(&mut s.deadletter).await;
        assert_eq!(
            header(&dead, logdist::protocol::headers::INVALID_COUNT),
            "3000"
        );
        assert!(dead.payload.len() <= 4096);
        let entries = report(&dead);
        assert!(
            !entries.is_empty() && entries.len() < 500,
            "{}",
            entries.len()
        );
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry["index"], i);
            assert_eq!(
                entry["element"]["body"]["stringValue"],
                format!("bad {i:04}")
            );
        }
        let summary = header(&dead, logdist::protocol::headers::ERROR);
        assert!(
            summary.contains(&format!("lists the first {} only", entries.len())),
            "{summary}"
        );
        next(&mut s.ingest).await;
    }

    #[tokio::test]
    async fn otlp_errors_are_status_messages_and_keep_a_dead_letter() {
        let mut f = fixture(4096, false).await;
        let mut s = subscribe(&f).await;

        // Not protobuf: 400 (not retryable), a google.rpc.Status, and the bytes kept.
        let garbage = b"\xff\xff\xff\xff not protobuf".to_vec();
        let r = post(&f, "application/x-protobuf", false, garbage.clone()).await;
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
        let status = logdist_http::otlp::Status::decode(r.bytes().await.unwrap()).unwrap();
        assert_eq!(status.code, 3);
        assert!(
            status.message.contains("ExportLogsServiceRequest"),
            "{}",
            status.message
        );
        let dead = next(&mut s.deadletter).await;
        assert_eq!(
            header(&dead, logdist::protocol::headers::ERROR_CODE),
            "bad_protobuf"
        );
        assert_eq!(
            header(&dead, logdist::protocol::headers::CONTENT_TYPE),
            "application/x-protobuf"
        );
        assert_eq!(&dead.payload[..], &garbage[..]);

        let r = post(
            &f,
            "application/json",
            false,
            b"{\"resourceLogs\":7}".to_vec(),
        )
        .await;
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], 3);
        assert!(body["message"].as_str().unwrap().contains("OTLP/JSON"));
        let dead = next(&mut s.deadletter).await;
        assert_eq!(
            header(&dead, logdist::protocol::headers::ERROR_CODE),
            "bad_otlp_json"
        );

        // 413: the body, or the packet it would become, over the limit (not retryable either).
        let r = post(&f, "application/x-protobuf", false, vec![0; 5000]).await;
        assert_eq!(r.status(), 413);
        let many: Vec<_> = (0..60)
            .map(|i| record(9, &format!("message {i}")))
            .collect();
        let body = request("web", many).encode_to_vec();
        assert!(body.len() < 4096);
        let r = post(&f, "application/x-protobuf", false, body).await;
        assert_eq!(r.status(), 413);
        let status = logdist_http::otlp::Status::decode(r.bytes().await.unwrap()).unwrap();
        assert!(
            status.message.contains("smaller batches"),
            "{}",
            status.message
        );
        assert_eq!(
            header(
                &next(&mut s.deadletter).await,
                logdist::protocol::headers::ERROR_CODE
            ),
            "too_large"
        );

        // 415 for anything but the two OTLP encodings.
        let r = post(&f, "text/plain", false, b"hello".to_vec()).await;
        assert_eq!(r.status(), 415);
        nothing_more(&mut s.ingest).await;

        // 503 while NATS is down: the one retryable answer.
        stop_nats(&mut f.server, &f.client).await;
        let r = post(
            &f,
            "application/x-protobuf",
            false,
            request("web", vec![record(9, "m")]).encode_to_vec(),
        )
        .await;
        assert_eq!(r.status(), 503);
        let status = logdist_http::otlp::Status::decode(r.bytes().await.unwrap()).unwrap();
        assert_eq!(status.code, 14);
    }
}

#[tokio::test]
async fn old_service_registration_is_recorded_for_the_bridges() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "analyzer_registrations".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    let running = logdist_http::start_with_registrations(
        GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            names: Names::default(),
            max_body_bytes: 1 << 20,
            acknowledged: false,
            mapping: logdist::ingest_format::Mapping::default(),
            local_router: None,
            deadletter_report_max_bytes: logdist::protocol::deadletter::DEFAULT_REPORT_MAX_BYTES,
            telemetry: None,
        },
        client.clone(),
        shutdown,
        Some(logdist_http::Registrations {
            store: store.clone(),
            bridge_host: None,
        }),
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr);
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str| {
        http.post(format!("{base}{path}"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
    };

    // The old bodies: numbers or strings.
    let answer = post(
        "/analyzer/register",
        r#"{"id": 7, "weight": 0.3, "port": 5001}"#,
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["registered"], "7");
    assert_eq!(body["url"], "http://127.0.0.1:5001/message/process");
    let value = store.get("7").await.unwrap().expect("recorded");
    let registration: logdist_http::Registration = serde_json::from_slice(&value).unwrap();
    assert_eq!(
        (
            registration.id.as_str(),
            registration.weight,
            registration.url.as_str()
        ),
        ("7", 0.3, "http://127.0.0.1:5001/message/process")
    );
    let answer = post(
        "/analyzer/register",
        r#"{"id": "a-1", "weight": "2", "port": "80"}"#,
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 200);

    for (body, field) in [
        (r#"{"weight": 0.3, "port": 5001}"#, "id"),
        (r#"{"id": "a.b", "weight": 0.3, "port": 5001}"#, "id"),
        (r#"{"id": "7", "weight": -1, "port": 5001}"#, "weight"),
        (r#"{"id": "7", "port": 5001}"#, "weight"),
        (r#"{"id": "7", "weight": 0.3, "port": 70000}"#, "port"),
        (r#"{"id": "7", "weight": 0.3}"#, "port"),
    ] {
        let answer = post("/analyzer/register", body).await.unwrap();
        assert_eq!(answer.status(), 400, "{body}");
        let error: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(error["field"], field, "{body}: {error}");
    }
    let answer = post("/analyzer/register", "not json").await.unwrap();
    assert_eq!(answer.status(), 400);

    let answer = post("/analyzer/deregister", r#"{"id": "7"}"#)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(store.get("7").await.unwrap().is_none());
    let answer = post("/analyzer/deregister", r#"{"id": "7"}"#)
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let error: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(error["error"], "not_registered");
}
