//! The HTTP gateway against a real nats-server and a real HTTP client: every endpoint, every
//! error status, and that what is accepted is what reaches the ingest subject.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use logdist::testing::NatsServer;
use logdist::Names;
use logdist_http::{start, GatewayConfig};
use tokio_util::sync::CancellationToken;

const HELLO: &str =
    r#"{"timestamp":1020,"severity":"WARN","source":"app","message":"hello world!"}"#;

struct Fixture {
    server: NatsServer,
    client: async_nats::Client,
    base: String,
    ingest: async_nats::Subscriber,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn fixture(max_body_bytes: usize, acknowledged: bool) -> Fixture {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let ingest = client.subscribe("logs.ingest.http").await.unwrap();
    client.flush().await.unwrap();
    let shutdown = CancellationToken::new();
    let running = start(
        GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            names: Names::default(),
            max_body_bytes,
            acknowledged,
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

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
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
        headers.get(logdist::headers::AGENT).unwrap().as_str(),
        "http"
    );
    assert!(headers.get(logdist::headers::SENT_AT).is_some());

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
    f.server.kill();
    logdist::testing::wait_until(
        "client sees the disconnect",
        Duration::from_secs(10),
        || {
            let state = f.client.connection_state();
            async move { state != async_nats::connection::State::Connected }
        },
    )
    .await;
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
            name: "LOGS".into(),
            subjects: vec!["logs.ingest".into(), "logs.ingest.>".into()],
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
    let stats = logdist::buckets::open_or_create(&js, "logdist_stats", "")
        .await
        .unwrap();
    let membership = logdist::buckets::open_or_create(&js, "analyzers", "")
        .await
        .unwrap();
    for (id, instance, weight, messages) in [
        ("1", "a", 0.5, 100u64),
        ("1", "b", 0.5, 50),
        ("2", "c", 0.3, 90),
    ] {
        let record = logdist::stats::AnalyzerStats {
            id: id.into(),
            instance: instance.into(),
            weight,
            messages,
            ..Default::default()
        };
        stats
            .put(
                logdist::stats::analyzer_key(id, instance),
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
