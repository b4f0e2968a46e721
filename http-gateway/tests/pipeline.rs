//! HTTP ingest through a real distributor process (`--http`) to real analyzers: the same shares
//! as NATS ingest, and in at-least-once mode a 200 that survives the distributor's death.

use std::time::Duration;

use logdist::StatsSnapshot;
use logdist_testing::{
    free_port, wait_for_members, wait_until, AnalyzerOptions, Delivery, DistributorOptions,
    NatsServer, Process, WAIT,
};

fn packet(messages: usize, n: usize) -> String {
    let records: Vec<String> = (0..messages)
        .map(|i| {
            format!(
                r#"{{"timestamp":{n},"severity":"INFO","source":"http-test","message":"packet {n} message {i}"}}"#
            )
        })
        .collect();
    format!("[{}]", records.join(","))
}

fn analyzer(url: &str, id: &str, weight: f64) -> Process {
    AnalyzerOptions::new(url, id, weight)
        .instance(&format!("h{id}"))
        // 500 ms (timeout 1.5 s): a debug build on 2 cores can stall a 100 ms heartbeat past its
        // 300 ms timeout, which drops the analyzer mid-run and skews the shares.
        .heartbeat_interval(Duration::from_millis(500))
        .report_interval(Duration::from_millis(200))
        .spawn()
}

/// Waits until the analyzers' own counters add up to `expected` messages; returns them by id.
async fn analyzed(server: &NatsServer, expected: u64) -> Vec<(String, u64)> {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut last = Vec::new();
    let mut total = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while total < expected && std::time::Instant::now() < deadline {
        if let Ok(kv) = js
            .get_key_value(logdist::protocol::names::DEFAULT_STATS_BUCKET)
            .await
        {
            if let Ok(snapshot) = StatsSnapshot::read(&kv).await {
                last = snapshot
                    .analyzers
                    .iter()
                    .map(|a| (a.id.clone(), a.messages))
                    .collect();
                last.sort();
                total = last.iter().map(|(_, m)| m).sum();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(total, expected, "analyzers counted {last:?}");
    last
}

async fn healthy(base: &str) {
    let http = reqwest::Client::new();
    wait_until("gateway healthy", WAIT, || {
        let request = http.get(format!("{base}/healthz")).send();
        async move { request.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
}

/// A distributor serving HTTP and three analyzers weighted 0.5, 0.3, 0.2, all known to it.
struct Pipeline {
    server: NatsServer,
    base: String,
    _processes: Vec<Process>,
}

async fn pipeline() -> Pipeline {
    pipeline_on(NatsServer::start()).await
}

/// [`pipeline`] on a server of your own.
async fn pipeline_on(server: NatsServer) -> Pipeline {
    let url = server.url();
    let port = free_port();
    let distributor = DistributorOptions::new(&url)
        .args(&[
            "--http",
            &format!("127.0.0.1:{port}"),
            "--stats-interval",
            "200ms",
        ])
        .spawn();
    let processes = vec![
        distributor,
        analyzer(&url, "1", 0.5),
        analyzer(&url, "2", 0.3),
        analyzer(&url, "3", 0.2),
    ];
    let base = format!("http://127.0.0.1:{port}");
    healthy(&base).await;
    // Wait until the distributor knows all three analyzers.
    wait_for_members(&url, 3, WAIT).await;
    Pipeline {
        server,
        base,
        _processes: processes,
    }
}

/// Counts, while it lives, what is published to `<ingest>.http`: at-most-once, the gateway hands
/// its packets to the router of its own process, so nothing may be there.
struct IngestHttpWatch {
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl IngestHttpWatch {
    async fn start(server: &NatsServer) -> IngestHttpWatch {
        use futures::StreamExt;
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut sub = client
            .subscribe(logdist::Names::default().agent_ingest_subject("http"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while sub.next().await.is_some() {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        IngestHttpWatch { seen, task }
    }

    fn seen(&self) -> u64 {
        self.seen.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for IngestHttpWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn http_packets_reach_analyzers_with_the_same_share_accuracy() {
    let Pipeline { server, base, .. } = &pipeline().await;
    let on_nats = IngestHttpWatch::start(server).await;

    // 1,500 packets of 1..=40 messages from 6 concurrent HTTP clients.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..6usize {
        let base = base.clone();
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            let mut sent = 0u64;
            for n in 0..250usize {
                let size = 1 + (n * 7 + worker * 13) % 40;
                let r = http
                    .post(format!("{base}/messages"))
                    .header("Content-Type", "application/json")
                    .body(packet(size, n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                sent += size as u64;
            }
            sent
        });
    }
    let mut sent = 0;
    while let Some(r) = tasks.join_next().await {
        sent += r.unwrap();
    }
    let counts = analyzed(server, sent).await;
    // A packet through NATS would have passed the watch before reaching an analyzer.
    assert_eq!(on_nats.seen(), 0, "no packet took the hop through NATS");
    let total: u64 = counts.iter().map(|(_, m)| m).sum();
    for ((id, messages), target) in counts.iter().zip([50.0, 30.0, 20.0]) {
        let share = 100.0 * *messages as f64 / total as f64;
        // The routing bound: under (k-1) x 40 messages of error out of ~31,000.
        assert!(
            (share - target).abs() < 0.3,
            "analyzer {id}: {share:.3}% vs {target}%"
        );
    }
}

/// At-most-once, a 200 means the packet is in the router's queue: stopping the distributor
/// (SIGTERM) while clients post routes every accepted packet before it exits; what comes after
/// is refused (503 or no connection), never accepted and dropped.
#[tokio::test]
async fn every_200_is_analyzed_across_a_shutdown() {
    let server = NatsServer::start();
    let url = server.url();
    let port = free_port();
    let mut distributor = DistributorOptions::new(&url)
        .args(&["--http", &format!("127.0.0.1:{port}")])
        .spawn();
    let _analyzers = [analyzer(&url, "1", 0.7), analyzer(&url, "2", 0.3)];
    let base = format!("http://127.0.0.1:{port}");
    healthy(&base).await;
    wait_for_members(&url, 2, WAIT).await;

    // 16 clients posting 50-message packets keep the router busy (a debug build validates
    // slowly), so its queue holds accepted packets when the signal comes.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for worker in 0..16usize {
        let (base, accepted) = (base.clone(), accepted.clone());
        clients.spawn(async move {
            let http = reqwest::Client::new();
            // Until the gateway stops answering (bounded: the distributor is stopped below).
            for n in 0..1_000_000usize {
                let body = packet(50, worker * 1_000_000 + n);
                match http
                    .post(format!("{base}/messages"))
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        accepted.fetch_add(50, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => {
                        assert_eq!(r.status(), 503, "refused only with 503");
                        let body: serde_json::Value = r.json().await.unwrap();
                        match body["error"].as_str() {
                            // The router is behind: retry, as a client would.
                            Some("overloaded") => continue,
                            Some("stopping") => return,
                            other => panic!("unexpected 503 {other:?}"),
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    wait_until("20,000 messages accepted", WAIT, || {
        let n = accepted.load(std::sync::atomic::Ordering::Relaxed);
        async move { n >= 20_000 }
    })
    .await;
    let status = distributor.terminate(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", distributor.stderr());
    tokio::time::timeout(WAIT, async {
        while let Some(r) = clients.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("the clients stopped with the gateway");
    let accepted = accepted.load(std::sync::atomic::Ordering::Relaxed);
    let counts = analyzed(&server, accepted).await;
    assert_eq!(counts.iter().map(|(_, m)| m).sum::<u64>(), accepted);
}

#[tokio::test]
async fn at_least_once_200_survives_a_distributor_kill() {
    let server = NatsServer::start();
    let url = server.url();
    let port = free_port();
    let mut first = DistributorOptions::new(&url)
        .delivery(Delivery::AtLeastOnce)
        .args(&["--http", &format!("127.0.0.1:{port}")])
        .spawn();
    let base = format!("http://127.0.0.1:{port}");
    healthy(&base).await;
    // No analyzer yet: every 200 is a promise held only by the stream.
    let http = reqwest::Client::new();
    let mut accepted = 0u64;
    let deadline = std::time::Instant::now() + WAIT;
    while accepted < 300 {
        let r = http
            .post(format!("{base}/message/send"))
            .body(format!(
                r#"{{"timestamp":{accepted},"severity":"ERROR","source":"http","message":"m{accepted}"}}"#
            ))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["stored"], true);
                accepted += 1;
            }
            // The stream may not exist yet in the first moments: 503, never a false 200.
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected status {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway kept refusing"
        );
    }
    first.kill().await;

    let _second = DistributorOptions::new(&url)
        .delivery(Delivery::AtLeastOnce)
        .spawn();
    let _analyzer = analyzer(&url, "1", 1.0);
    let counts = analyzed(&server, accepted).await;
    assert_eq!(counts, vec![("1".to_string(), accepted)]);
}

/// The Python interpreter of the project's venv (`make tools`), or `$LOGDIST_PYTHON`.
fn python() -> std::path::PathBuf {
    std::env::var_os("LOGDIST_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| logdist_testing::workspace_root().join(".tools/venv/bin/python"))
}

/// Runs `http-gateway/tests/<script>` with `args` in the venv's Python, within `limit`; returns
/// its stdout once it exited 0.
async fn run_sdk_script(script: &str, args: &[&str], limit: Duration) -> String {
    let script = logdist_testing::workspace_root()
        .join("http-gateway/tests")
        .join(script);
    let run = tokio::process::Command::new(python())
        .arg(&script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, run)
        .await
        .expect("the SDK script finished in time")
        .expect("run the venv's python (make tools)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "SDK script failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A subscription to the dead letters, live before this returns.
async fn deadletters(server: &NatsServer) -> async_nats::Subscriber {
    let client = async_nats::connect(server.url()).await.unwrap();
    let subscription = client
        .subscribe(logdist::protocol::names::DEFAULT_DEADLETTER_SUBJECT)
        .await
        .unwrap();
    client.flush().await.unwrap();
    subscription
}

/// The OpenTelemetry Python SDK, logging through Python's `logging`, exports to `/v1/logs`
/// (protobuf with the SDK's exporter, and OTLP/JSON): every record is analyzed under its
/// severity and service, the shares hold, and a malformed body is a 400 and a dead letter.
#[tokio::test]
async fn opentelemetry_python_sdk_logs_are_analyzed_by_severity_and_service() {
    use futures::StreamExt;
    const PER: u64 = 300; // records per service, level and encoding
    let Pipeline { server, base, .. } = &pipeline().await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut deadletters = deadletters(server).await;
    let per = PER.to_string();
    let stdout = run_sdk_script("otel_sdk_logs.py", &[base, &per], Duration::from_secs(180)).await;
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["malformed_status"], 400);

    let (services, levels) = (3, 6);
    let total = 2 * services * levels * PER;
    let counts = analyzed(server, total).await;
    for ((id, messages), target) in counts.iter().zip([50.0, 30.0, 20.0]) {
        let share = 100.0 * *messages as f64 / total as f64;
        // The routing bound: under (k-1) x 5 messages (the SDK's batch) of error out of 10,800.
        assert!(
            (share - target).abs() < 0.1,
            "analyzer {id}: {share:.3}% vs {target}%"
        );
    }
    let js = async_nats::jetstream::new(client.clone());
    let snapshot = StatsSnapshot::read(
        &js.get_key_value(logdist::protocol::names::DEFAULT_STATS_BUCKET)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let mut by_severity = std::collections::BTreeMap::<String, u64>::new();
    let mut by_source = std::collections::BTreeMap::<String, u64>::new();
    for a in &snapshot.analyzers {
        for (severity, n) in &a.by_severity {
            *by_severity.entry(severity.clone()).or_default() += n;
        }
        for s in &a.top_sources {
            *by_source.entry(s.source.clone()).or_default() += s.messages;
        }
    }
    let per_severity = 2 * services * PER;
    let expected: std::collections::BTreeMap<String, u64> =
        ["DEBUG", "ERROR", "FATAL", "INFO", "TRACE", "WARN"]
            .iter()
            .map(|s| (s.to_string(), per_severity))
            .collect();
    assert_eq!(by_severity, expected);
    let per_source = 2 * levels * PER;
    let expected: std::collections::BTreeMap<String, u64> = ["checkout", "payments", "search"]
        .iter()
        .map(|s| (s.to_string(), per_source))
        .collect();
    assert_eq!(by_source, expected);

    // The malformed body, and nothing else, was dead-lettered.
    let dead = tokio::time::timeout(Duration::from_secs(10), deadletters.next())
        .await
        .expect("a dead letter for the malformed body")
        .unwrap();
    let code = dead
        .headers
        .as_ref()
        .unwrap()
        .get(logdist::protocol::headers::ERROR_CODE);
    assert_eq!(code.map(|c| c.as_str()), Some("bad_protobuf"));
    let more = tokio::time::timeout(Duration::from_millis(300), deadletters.next()).await;
    assert!(more.is_err(), "one dead letter only");
}

/// The OpenTelemetry Python SDK exports one request of 10,100 records, 10,000 of which logdist
/// refuses (a severity it cannot read): one dead letter carries all 10,000 (the request whole,
/// their report being over the 1 MiB limit), and the 100 others are analyzed; a request of 110
/// with 100 refused gets one dead letter listing each. Before, each refused record was a dead
/// letter of its own.
#[tokio::test]
async fn opentelemetry_python_sdk_10000_refused_records_cost_one_dead_letter() {
    use futures::StreamExt;
    use logdist::protocol::headers;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message as _;
    // max_payload as in nats.conf, so the request fits in one message whole.
    let Pipeline { server, base, .. } =
        &pipeline_on(NatsServer::with_config("max_payload: 8MB")).await;
    let mut deadletters = deadletters(server).await;
    run_sdk_script(
        "otel_sdk_refused.py",
        &[base, "10000", "100", "100", "10"],
        Duration::from_secs(120),
    )
    .await;

    let mut letters = Vec::new();
    for _ in 0..2 {
        let dead = tokio::time::timeout(Duration::from_secs(10), deadletters.next())
            .await
            .expect("a dead letter per request")
            .unwrap();
        letters.push(dead);
    }
    let more = tokio::time::timeout(Duration::from_millis(500), deadletters.next()).await;
    assert!(more.is_err(), "one dead letter per request, no more");
    let h = |m: &async_nats::Message, name: &str| {
        m.headers.as_ref().unwrap().get(name).unwrap().to_string()
    };
    let bad = |i: usize| format!("bad {i}");

    let whole = &letters[0];
    assert_eq!(h(whole, headers::ERROR_CODE), "invalid_elements");
    assert_eq!(h(whole, headers::PAYLOAD), "packet");
    assert_eq!(h(whole, headers::INVALID_COUNT), "10000");
    assert_eq!(h(whole, headers::CONTENT_TYPE), "application/x-protobuf");
    assert_eq!(h(whole, headers::SUBJECT), "logs.ingest.otlp");
    let request = ExportLogsServiceRequest::decode(&whole.payload[..]).unwrap();
    let loud: Vec<String> = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .filter(|r| r.severity_text == "LOUD")
        .map(|r| match r.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                s.clone()
            }
            other => panic!("body {other:?}"),
        })
        .collect();
    assert_eq!(loud, (0..10_000).map(bad).collect::<Vec<_>>());

    let listed = &letters[1];
    assert_eq!(h(listed, headers::PAYLOAD), "elements");
    assert_eq!(h(listed, headers::INVALID_COUNT), "100");
    assert_eq!(h(listed, headers::CONTENT_TYPE), "application/json");
    let report: Vec<serde_json::Value> = serde_json::from_slice(&listed.payload).unwrap();
    let bodies: Vec<String> = report
        .iter()
        .map(|e| {
            assert_eq!(e["code"], "unknown_severity");
            assert_eq!(e["element"]["severityText"], "LOUD");
            e["element"]["body"]["stringValue"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(bodies, (0..100).map(bad).collect::<Vec<_>>());

    // The valid records of both requests are analyzed.
    analyzed(server, 110).await;
}
