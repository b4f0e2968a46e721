//! The analyzer binary against a real nats-server: announce and heartbeats, withdrawal and drain
//! on SIGTERM, queue-group sharing, KV stats, latency, acks, de-duplication, reconnection, and
//! usage errors. Every wait is bounded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Store;
use async_nats::{Client, HeaderMap, Subscriber};
use futures::StreamExt;
use logdist::protocol::control::{ControlMessage, Heartbeat, Withdraw};
use logdist::protocol::headers;
use logdist::protocol::stats::{analyzer_key, AnalyzerStats, SourceCount};
use logdist_testing::{wait_until, NatsServer, Process, WAIT};

/// Every analyzer's control subject (`logdist.control.<id>`).
const CONTROL: &str = "logdist.control.*";
const STATS_BUCKET: &str = logdist::protocol::names::DEFAULT_STATS_BUCKET;
const SEVERITY_SPELLINGS: [(&str, &str); 8] = [
    ("trace", "TRACE"),
    ("DEBUG", "DEBUG"),
    ("Info", "INFO"),
    ("WARN", "WARN"),
    ("warning", "WARN"),
    ("ERROR", "ERROR"),
    ("fatal", "FATAL"),
    ("CRITICAL", "FATAL"),
];

/// Starts an analyzer `id`/`instance` on `server` with 100 ms heartbeats and reports.
fn spawn_analyzer(server: &NatsServer, id: &str, instance: &str, extra: &[&str]) -> Process {
    let url = server.url();
    let mut args = vec![
        "--nats-url",
        &url,
        "--id",
        id,
        "--weight",
        "0.5",
        "--instance",
        instance,
        "--heartbeat-interval",
        "100ms",
        "--report-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    Process::spawn("analyzer", &args, &[])
}

async fn connect(server: &NatsServer) -> Client {
    async_nats::connect(server.url())
        .await
        .expect("test client connects")
}

/// Waits for the next control message about `instance`.
async fn next_control(
    control: &mut Subscriber,
    instance: &str,
    process: &Process,
) -> ControlMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, control.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no control message from {instance} within {WAIT:?}; stderr:\n{}",
                    process.stderr()
                )
            })
            .expect("control subscription open");
        let parsed = ControlMessage::parse(&message.payload).unwrap_or_else(|e| {
            panic!(
                "invalid control message {:?}: {e}",
                String::from_utf8_lossy(&message.payload)
            )
        });
        let about = match &parsed {
            ControlMessage::Up(hb) => &hb.instance,
            ControlMessage::Down(w) => &w.instance,
        };
        if about == instance {
            // Each analyzer speaks on its own subject, about itself only.
            assert_eq!(
                message.subject.as_str(),
                format!("logdist.control.{}", parsed.id()),
                "control message on the wrong subject"
            );
            return parsed;
        }
    }
}

/// Waits until `instance` has announced itself (so it is subscribed), and returns the heartbeat.
async fn wait_online(control: &mut Subscriber, instance: &str, process: &Process) -> Heartbeat {
    match next_control(control, instance, process).await {
        ControlMessage::Up(hb) => hb,
        other => panic!("expected an announcement, got {other:?}"),
    }
}

async fn stats_bucket(client: &Client) -> Store {
    async_nats::jetstream::new(client.clone())
        .get_key_value(STATS_BUCKET)
        .await
        .expect("the analyzer created the stats bucket")
}

async fn read_stats(bucket: &Store, id: &str, instance: &str) -> Option<AnalyzerStats> {
    let value = bucket.get(analyzer_key(id, instance)).await.ok()??;
    Some(serde_json::from_slice(&value).expect("stats value is AnalyzerStats JSON"))
}

/// What a test published, counted independently of the analyzer's code.
#[derive(Debug, Default)]
struct Expected {
    messages: u64,
    packets: u64,
    bytes: u64,
    by_severity: BTreeMap<String, u64>,
    by_source: BTreeMap<String, u64>,
}

impl Expected {
    fn new() -> Self {
        let mut expected = Expected::default();
        for (_, canonical) in SEVERITY_SPELLINGS {
            expected.by_severity.insert(canonical.to_string(), 0);
        }
        expected
    }

    /// Packet `i` with `n` messages (a single object when `n` is 1), recorded as published.
    fn packet(&mut self, i: usize, n: usize) -> String {
        let mut records = Vec::with_capacity(n);
        for j in 0..n {
            let (spelling, canonical) = SEVERITY_SPELLINGS[(i * 7 + j) % SEVERITY_SPELLINGS.len()];
            let source = format!("src-{}", (i + j * j) % 9);
            records.push(format!(
                r#"{{"timestamp":{},"severity":"{spelling}","source":"{source}","message":"packet {i} message {j}","host":"h{}"}}"#,
                1_764_064_800 + i,
                j % 3
            ));
            *self.by_severity.get_mut(canonical).unwrap() += 1;
            *self.by_source.entry(source).or_default() += 1;
        }
        let payload = if n == 1 {
            records.pop().unwrap()
        } else {
            format!("[{}]", records.join(","))
        };
        self.messages += n as u64;
        self.packets += 1;
        self.bytes += payload.len() as u64;
        payload
    }

    fn top_sources(&self) -> Vec<SourceCount> {
        let mut sources: Vec<(&String, &u64)> = self.by_source.iter().collect();
        sources.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        sources
            .into_iter()
            .take(5)
            .map(|(source, &messages)| SourceCount {
                source: source.clone(),
                messages,
            })
            .collect()
    }

    fn error_rate(&self) -> f64 {
        (self.by_severity["ERROR"] + self.by_severity["FATAL"]) as f64 / self.messages as f64
    }

    fn assert_matches(&self, stats: &AnalyzerStats) {
        assert_eq!(stats.messages, self.messages, "messages");
        assert_eq!(stats.packets, self.packets, "packets");
        assert_eq!(stats.bytes, self.bytes, "bytes");
        assert_eq!(stats.by_severity, self.by_severity, "by_severity");
        assert_eq!(stats.top_sources, self.top_sources(), "top_sources");
        assert!(
            (stats.error_rate - self.error_rate()).abs() < 1e-9,
            "error_rate {} != {}",
            stats.error_rate,
            self.error_rate()
        );
    }
}

async fn publish_packets(
    client: &Client,
    subject: &str,
    expected: &mut Expected,
    count: usize,
    size: usize,
) {
    route_packets(client, subject, None, expected, count, size).await
}

/// Publishes `count` packets of `size` messages to `subject`, with the `Logdist-Distributor`
/// header of replica `replica` when given (as a distributor routes them).
async fn route_packets(
    client: &Client,
    subject: &str,
    replica: Option<&str>,
    expected: &mut Expected,
    count: usize,
    size: usize,
) {
    for i in 0..count {
        let payload = expected.packet(i, size);
        let mut routed = HeaderMap::new();
        if let Some(replica) = replica {
            routed.insert(headers::DISTRIBUTOR, replica);
        }
        client
            .publish_with_headers(subject.to_string(), routed, payload.into())
            .await
            .expect("publish packet");
    }
    client.flush().await.expect("flush packets");
}

#[tokio::test]
async fn heartbeats_at_the_interval_then_withdraw_on_sigterm() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut analyzer = spawn_analyzer(&server, "hb", "hb-1", &[]);

    let first = wait_online(&mut control, "hb-1", &analyzer).await;
    let expected = Heartbeat {
        id: "hb".into(),
        weight: 0.5,
        instance: "hb-1".into(),
        interval_ms: 100,
        batch: logdist::protocol::batch::BATCH_VERSION,
    };
    assert_eq!(first, expected);

    // One second of heartbeats at 100 ms: about 10 (scheduling jitter allowed).
    let window = Duration::from_secs(1);
    let start = Instant::now();
    let mut count = 0;
    while start.elapsed() < window {
        let left = window.saturating_sub(start.elapsed());
        let Ok(Some(message)) = tokio::time::timeout(left, control.next()).await else {
            break;
        };
        match ControlMessage::parse(&message.payload).unwrap() {
            ControlMessage::Up(hb) => {
                assert_eq!(hb, expected);
                count += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (7..=13).contains(&count),
        "{count} heartbeats in {window:?}"
    );

    analyzer.signal("TERM");
    // Heartbeats may still be in flight; the withdrawal must follow, and nothing after it.
    loop {
        match next_control(&mut control, "hb-1", &analyzer).await {
            ControlMessage::Up(_) => continue,
            ControlMessage::Down(w) => {
                assert_eq!(
                    w,
                    Withdraw {
                        id: "hb".into(),
                        instance: "hb-1".into()
                    }
                );
                break;
            }
        }
    }
    let status = analyzer.wait(WAIT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", analyzer.stderr());
    let after = tokio::time::timeout(Duration::from_millis(300), control.next()).await;
    assert!(
        after.is_err(),
        "control message after the withdrawal: {after:?}"
    );
    let stdout = analyzer.stdout();
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("analyzer hb/hb-1 down: 0 msgs"),
        "{stdout}"
    );
}

#[tokio::test]
async fn sigterm_right_after_publishing_counts_every_delivered_message() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut analyzer = spawn_analyzer(&server, "drain", "d1", &[]);
    wait_online(&mut control, "d1", &analyzer).await;

    let mut expected = Expected::new();
    publish_packets(
        &client,
        &logdist::Names::default().analyzer_subject("drain"),
        &mut expected,
        3_000,
        10,
    )
    .await;
    let status = analyzer.terminate(WAIT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", analyzer.stderr());

    let bucket = stats_bucket(&client).await;
    let stats = read_stats(&bucket, "drain", "d1")
        .await
        .expect("final stats");
    assert_eq!(stats.state, "down");
    assert_eq!(
        (stats.id.as_str(), stats.instance.as_str()),
        ("drain", "d1")
    );
    expected.assert_matches(&stats);
    assert_eq!((stats.duplicates, stats.invalid_packets), (0, 0));
    assert!(
        analyzer
            .stdout()
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("analyzer drain/d1 down: 30000 msgs 3000 pkts"),
        "{}",
        analyzer.stdout()
    );
}

/// A withdrawing instance keeps its subscription until each distributor replica that routed to
/// it has confirmed the withdrawal, however late: packets a busy replica routes between the
/// withdrawal and its confirmation are analyzed. With `--withdraw-grace 0s` the quiet-period rule
/// alone would unsubscribe at once and lose them. A replica that never confirms is named in a
/// warning when `--drain-timeout` runs out.
#[tokio::test]
async fn a_withdrawal_waits_until_each_replica_that_routed_here_confirms() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut analyzer = spawn_analyzer(
        &server,
        "wc",
        "wc-1",
        &["--withdraw-grace", "0s", "--drain-timeout", "3s"],
    );
    wait_online(&mut control, "wc-1", &analyzer).await;

    // Two replicas route here; "silent" will never confirm.
    let mut expected = Expected::new();
    route_packets(
        &client,
        &logdist::Names::default().analyzer_subject("wc"),
        Some("busy"),
        &mut expected,
        10,
        3,
    )
    .await;
    route_packets(
        &client,
        &logdist::Names::default().analyzer_subject("wc"),
        Some("silent"),
        &mut expected,
        10,
        3,
    )
    .await;
    let bucket = stats_bucket(&client).await;
    wait_until("20 packets analyzed", WAIT, || async {
        read_stats(&bucket, "wc", "wc-1")
            .await
            .is_some_and(|s| s.packets == 20)
    })
    .await;

    analyzer.signal("TERM");
    while !matches!(
        next_control(&mut control, "wc-1", &analyzer).await,
        ControlMessage::Down(_)
    ) {}
    // "busy" takes half a second to get to the withdrawal, routing 50 more packets meanwhile,
    // then confirms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    route_packets(
        &client,
        &logdist::Names::default().analyzer_subject("wc"),
        Some("busy"),
        &mut expected,
        50,
        3,
    )
    .await;
    let confirmation = logdist::protocol::control::WithdrawalConfirmed {
        id: "wc".into(),
        instance: "wc-1".into(),
        distributor: "busy".into(),
    };
    client
        .publish(
            logdist::Names::default().withdrawn_subject("wc"),
            serde_json::to_vec(&confirmation).unwrap().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    let status = analyzer.wait(WAIT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", analyzer.stderr());
    let stats = read_stats(&bucket, "wc", "wc-1")
        .await
        .expect("final stats");
    assert_eq!(stats.state, "down");
    expected.assert_matches(&stats);
    let log = analyzer.stderr();
    assert!(
        log.contains("no withdrawal confirmation") && log.contains("silent"),
        "{log}"
    );
}

#[tokio::test]
async fn live_kv_stats_equal_what_was_published() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut analyzer = spawn_analyzer(&server, "kv", "k1", &[]);
    wait_online(&mut control, "k1", &analyzer).await;

    let mut expected = Expected::new();
    publish_packets(
        &client,
        &logdist::Names::default().analyzer_subject("kv"),
        &mut expected,
        40,
        25,
    )
    .await;
    // Single-object packets, and one payload that bypassed the distributor and is not a packet.
    for i in 40..60 {
        let payload = expected.packet(i, 1);
        client
            .publish(
                logdist::Names::default().analyzer_subject("kv"),
                payload.into(),
            )
            .await
            .unwrap();
    }
    client
        .publish(
            logdist::Names::default().analyzer_subject("kv"),
            "not a packet".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    let bucket = stats_bucket(&client).await;
    wait_until("live stats to count every message", WAIT, || async {
        read_stats(&bucket, "kv", "k1")
            .await
            .is_some_and(|s| s.messages == expected.messages && s.invalid_packets == 1)
    })
    .await;
    let stats = read_stats(&bucket, "kv", "k1").await.unwrap();
    assert_eq!(stats.state, "up");
    assert_eq!(stats.weight, 0.5);
    expected.assert_matches(&stats);
    assert_eq!(stats.latency, None, "no Logdist-Sent-At was set");
    assert!(stats.updated_at_ms >= stats.started_at_ms);

    let status = analyzer.terminate(WAIT).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", analyzer.stderr());
    let last = read_stats(&bucket, "kv", "k1").await.unwrap();
    assert_eq!(last.state, "down");
    expected.assert_matches(&last);
    assert!(
        analyzer.stderr().contains("invalid packet"),
        "the first invalid packet is logged"
    );
}

#[tokio::test]
async fn two_instances_of_one_id_share_its_traffic_without_duplicates() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut first = spawn_analyzer(&server, "shared", "a", &[]);
    let mut second = spawn_analyzer(&server, "shared", "b", &[]);
    wait_online(&mut control, "a", &first).await;
    wait_online(&mut control, "b", &second).await;

    let mut expected = Expected::new();
    publish_packets(
        &client,
        &logdist::Names::default().analyzer_subject("shared"),
        &mut expected,
        600,
        5,
    )
    .await;
    assert_eq!(first.terminate(WAIT).await.code(), Some(0));
    assert_eq!(second.terminate(WAIT).await.code(), Some(0));

    let bucket = stats_bucket(&client).await;
    let a = read_stats(&bucket, "shared", "a").await.unwrap();
    let b = read_stats(&bucket, "shared", "b").await.unwrap();
    assert!(
        a.messages > 0 && b.messages > 0,
        "a {} b {}",
        a.messages,
        b.messages
    );
    assert_eq!(a.messages + b.messages, expected.messages);
    assert_eq!(a.packets + b.packets, expected.packets);
    assert_eq!(a.bytes + b.bytes, expected.bytes);
    for (severity, count) in &expected.by_severity {
        assert_eq!(
            a.by_severity[severity] + b.by_severity[severity],
            *count,
            "{severity}"
        );
    }
}

#[tokio::test]
async fn latency_figures_are_plausible_when_sent_at_is_set() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut analyzer = spawn_analyzer(&server, "lat", "l1", &[]);
    wait_online(&mut control, "l1", &analyzer).await;

    let mut expected = Expected::new();
    // 200 packets sent now, 5 that claim to have been sent one second ago.
    for i in 0..205 {
        let sent_at = if i < 200 {
            headers::unix_nanos_now()
        } else {
            headers::unix_nanos_now() - 1_000_000_000
        };
        let mut packet_headers = HeaderMap::new();
        packet_headers.insert(headers::SENT_AT, sent_at.to_string().as_str());
        client
            .publish_with_headers(
                logdist::Names::default().analyzer_subject("lat"),
                packet_headers,
                expected.packet(i, 3).into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let bucket = stats_bucket(&client).await;
    wait_until("205 latency measurements", WAIT, || async {
        read_stats(&bucket, "lat", "l1")
            .await
            .and_then(|s| s.latency)
            .is_some_and(|l| l.count == 205)
    })
    .await;
    let latency = read_stats(&bucket, "lat", "l1")
        .await
        .unwrap()
        .latency
        .unwrap();
    assert!(
        latency.p50_us > 0 && latency.p50_us < 500_000,
        "p50 of local packets: {latency:?}"
    );
    // 5 of 205 packets (2.4 %) took a second or more: they set p99 and max.
    assert!(latency.p99_us >= 990_000, "{latency:?}");
    assert!(
        latency.max_us >= 1_000_000 && latency.max_us < 10_000_000,
        "{latency:?}"
    );
    assert!(latency.max_us >= latency.p99_us && latency.p99_us >= latency.p50_us);
    assert_eq!(analyzer.terminate(WAIT).await.code(), Some(0));
}

#[tokio::test]
async fn request_style_packets_are_acknowledged_after_analysis() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    // 5 messages at 100 ms each: the analysis of one packet takes half a second.
    let mut analyzer = spawn_analyzer(&server, "ack", "r1", &["--work-per-message", "100ms"]);
    wait_online(&mut control, "r1", &analyzer).await;

    let mut expected = Expected::new();
    let sent = Instant::now();
    let reply = tokio::time::timeout(
        WAIT,
        client.request(
            logdist::Names::default().analyzer_subject("ack"),
            expected.packet(0, 5).into(),
        ),
    )
    .await
    .expect("ack within the time limit")
    .expect("ack received");
    let waited = sent.elapsed();
    assert!(reply.payload.is_empty(), "the ack is an empty message");
    assert!(
        waited >= Duration::from_millis(450),
        "acked after {waited:?}, before the 500 ms of analysis were done"
    );

    assert_eq!(analyzer.terminate(WAIT).await.code(), Some(0));
    let stats = read_stats(&stats_bucket(&client).await, "ack", "r1")
        .await
        .unwrap();
    expected.assert_matches(&stats);
}

/// Sends 200 request-style packets of `messages` log messages each to an analyzer whose
/// checkpoint interval (10 s) and reports (30 s) are far beyond the test, with `bound` (the
/// early-checkpoint flag and its value); returns how many were acknowledged within 3 s, after
/// checking the analyzer counted every packet.
async fn acknowledged_by_early_checkpoints(bound: [&str; 2], messages: usize) -> usize {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let url = server.url();
    let mut args = vec![
        "--nats-url",
        &url,
        "--id",
        "early",
        "--weight",
        "0.5",
        "--instance",
        "e1",
        "--heartbeat-interval",
        "100ms",
        "--report-interval",
        "30s",
        "--checkpoint-interval",
        "10s",
    ];
    args.extend(bound);
    let mut analyzer = Process::spawn("analyzer", &args, &[]);
    wait_online(&mut control, "e1", &analyzer).await;

    let mut expected = Expected::new();
    let subject = logdist::Names::default().analyzer_subject("early");
    let requests: Vec<_> = (0..200)
        .map(|i| client.request(subject.clone(), expected.packet(i, messages).into()))
        .collect();
    let replies = futures::future::join_all(
        requests
            .into_iter()
            .map(|r| tokio::time::timeout(Duration::from_secs(3), r)),
    )
    .await;
    let acked = replies.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();

    assert_eq!(analyzer.terminate(WAIT).await.code(), Some(0));
    let stats = read_stats(&stats_bucket(&client).await, "early", "e1")
        .await
        .unwrap();
    expected.assert_matches(&stats);
    acked
}

#[tokio::test]
async fn acknowledgements_go_out_after_checkpoint_packets_without_waiting_for_the_interval() {
    // The interval's first tick lets out what is pending at once; then one checkpoint per 50
    // packets: at most the last 49 wait for the next tick, 10 s away.
    let acked = acknowledged_by_early_checkpoints(["--checkpoint-packets", "50"], 1).await;
    assert!(
        acked >= 150,
        "{acked} of 200 packets acknowledged within 3 s, with --checkpoint-interval 10s"
    );
}

#[tokio::test]
async fn acknowledgements_of_large_packets_go_out_after_checkpoint_messages() {
    // 10 messages a packet and the packet bound (256) above the test's 200: a checkpoint every
    // 50 packets, by the message count alone.
    let acked = acknowledged_by_early_checkpoints(["--checkpoint-messages", "500"], 10).await;
    assert!(
        acked >= 150,
        "{acked} of 200 packets of 10 messages acknowledged within 3 s, with --checkpoint-interval 10s"
    );
}

#[tokio::test]
async fn a_repeated_packet_id_is_counted_once_and_still_acknowledged() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut analyzer = spawn_analyzer(&server, "dup", "u1", &[]);
    wait_online(&mut control, "u1", &analyzer).await;

    let mut expected = Expected::new();
    let first = expected.packet(0, 4);
    let second = expected.packet(1, 4);
    for (id, payload) in [("17", &first), ("17", &first), ("18", &second)] {
        let mut packet_headers = HeaderMap::new();
        packet_headers.insert(headers::PACKET_ID, id);
        let ack = tokio::time::timeout(
            WAIT,
            client.request_with_headers(
                logdist::Names::default().analyzer_subject("dup"),
                packet_headers,
                payload.clone().into(),
            ),
        )
        .await
        .expect("ack within the time limit")
        .expect("every packet is acknowledged, repeats included");
        assert!(ack.payload.is_empty());
    }

    assert_eq!(analyzer.terminate(WAIT).await.code(), Some(0));
    let stats = read_stats(&stats_bucket(&client).await, "dup", "u1")
        .await
        .unwrap();
    expected.assert_matches(&stats);
    assert_eq!(stats.duplicates, 1);
}

#[tokio::test]
async fn heartbeats_resume_and_packets_flow_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    let mut analyzer = spawn_analyzer(&server, "rc", "c1", &[]);
    wait_online(&mut control, "c1", &analyzer).await;
    drop(control);
    drop(client);

    server.restart();
    let client = connect(&server).await;
    let mut control = client.subscribe(CONTROL).await.unwrap();
    client.flush().await.unwrap();
    wait_online(&mut control, "c1", &analyzer).await;

    // The analyzer's subscription came back with its connection.
    let mut expected = Expected::new();
    let bucket = stats_bucket(&client).await;
    publish_packets(
        &client,
        &logdist::Names::default().analyzer_subject("rc"),
        &mut expected,
        20,
        5,
    )
    .await;
    wait_until("packets after the restart to be counted", WAIT, || async {
        read_stats(&bucket, "rc", "c1")
            .await
            .is_some_and(|s| s.messages == expected.messages)
    })
    .await;
    assert_eq!(analyzer.terminate(WAIT).await.code(), Some(0));
}

/// A bad command line: flags, environment, and the flag the error must name.
type UsageCase = (
    Vec<&'static str>,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

#[tokio::test]
async fn bad_flag_values_exit_2_naming_the_flag_without_a_server() {
    // Nothing listens on port 1: an analyzer that tried to connect would retry, not exit 2.
    let base = ["--nats-url", "nats://127.0.0.1:1"];
    let cases: Vec<UsageCase> = vec![
        (vec!["--id", "1", "--weight", "0"], vec![], "--weight"),
        (vec!["--id", "1", "--weight", "-1"], vec![], "--weight"),
        (vec!["--id", "1", "--weight", "NaN"], vec![], "--weight"),
        (vec!["--id", "1", "--weight", "inf"], vec![], "--weight"),
        (vec!["--id", "1", "--weight", "abc"], vec![], "--weight"),
        (vec!["--id", "1", "--weight", ""], vec![], "--weight"),
        (vec!["--id", "", "--weight", "1"], vec![], "--id"),
        (vec!["--id", "a.b", "--weight", "1"], vec![], "--id"),
        (
            vec!["--id", "1"],
            vec![("ANALYZER_WEIGHT", "abc")],
            "--weight",
        ),
        (vec!["--weight", "1"], vec![("ANALYZER_ID", "x y")], "--id"),
        (vec!["--weight", "1"], vec![], "--id"),
        (
            vec!["--id", "1", "--weight", "1", "--heartbeat-interval", "5ms"],
            vec![],
            "--heartbeat-interval",
        ),
        (
            vec!["--id", "1", "--weight", "1", "--instance", "a.b"],
            vec![],
            "--instance",
        ),
    ];
    let mut processes: Vec<(Process, String, &str)> = cases
        .iter()
        .map(|(args, envs, flag)| {
            let all: Vec<&str> = base.iter().chain(args.iter()).copied().collect();
            (
                Process::spawn("analyzer", &all, envs),
                format!("{args:?} {envs:?}"),
                *flag,
            )
        })
        .collect();
    for (process, case, flag) in &mut processes {
        let status = process.wait(WAIT).await;
        let stderr = process.stderr();
        assert_eq!(status.code(), Some(2), "{case}: {stderr}");
        assert!(stderr.contains(*flag), "{case}: {stderr}");
        assert!(
            !stderr.contains("NATS"),
            "{case} touched the network: {stderr}"
        );
    }
}
