//! `--metrics` of the binaries against a real nats-server, checked with tools we did not write:
//! `promtool check metrics` and the Python prometheus_client text parser read every exposition,
//! the parsed counters are compared with the stats record in the `logdist_stats` bucket, and
//! `/readyz` answers 503 while NATS is unreachable and 200 once it is.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use logdist::protocol::stats::{analyzer_key, distributor_key, AnalyzerStats, DistributorStats};
use logdist_testing::{free_port, wait_until, workspace_root, NatsServer, Process};

const WAIT: Duration = Duration::from_secs(20);

/// `GET url`: status and body; `None` while nothing listens.
async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Waits until `url` answers `status`, and returns the body.
async fn wait_status(url: &str, status: u16, process: &Process) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = get(url).await;
        if let Some((s, body)) = &got {
            if *s == status {
                return body.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not answer {status} within {WAIT:?} (last: {got:?}); stderr:\n{}",
            process.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The interpreter of the test venv (`make tools`), or `$LOGDIST_PYTHON`.
fn python() -> std::path::PathBuf {
    std::env::var_os("LOGDIST_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| workspace_root().join(".tools/venv/bin/python"))
}

/// Runs `program args` with `input` on stdin; returns (success, stdout, stderr).
fn run_with_stdin(program: &std::path::Path, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (make tools): {e}", program.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `promtool check metrics` (Prometheus' own parser and linter) accepts the exposition.
fn assert_promtool_accepts(exposition: &str) {
    let (ok, stdout, stderr) = run_with_stdin(
        std::path::Path::new("promtool"),
        &["check", "metrics"],
        exposition,
    );
    assert!(
        ok && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics refused the exposition:\n{stdout}{stderr}\n---\n{exposition}"
    );
}

/// Every sample of the exposition as parsed by the Python prometheus_client parser, by
/// `name{label="value",…}` (labels sorted), plus each family's type by family name.
struct Parsed {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Parsed {
    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {:?}", self.samples.keys()))
    }
}

const PARSE_SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = {}, {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        samples[s.name + ("{%s}" % labels if labels else "")] = s.value
print(json.dumps({"samples": samples, "types": types}))
"#;

fn parse_with_python(exposition: &str) -> Parsed {
    let (ok, stdout, stderr) = run_with_stdin(&python(), &["-c", PARSE_SCRIPT], exposition);
    assert!(
        ok,
        "prometheus_client could not parse:\n{stderr}\n---\n{exposition}"
    );
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let samples = value["samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let types = value["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    Parsed { samples, types }
}

/// Scrapes `url` and checks it with both parsers, and that docs/metrics.md lists every family.
async fn scrape(url: &str) -> Parsed {
    let (status, text) = get(url).await.expect("metrics listener answers");
    assert_eq!(status, 200, "{text}");
    assert_promtool_accepts(&text);
    let parsed = parse_with_python(&text);
    let docs = std::fs::read_to_string(common::repo_file("docs/metrics.md")).unwrap();
    for family in parsed.types.keys() {
        assert!(
            docs.contains(&format!("`{family}")),
            "docs/metrics.md does not list {family}"
        );
    }
    parsed
}

#[tokio::test]
async fn analyzer_metrics_parse_match_its_kv_record_and_readyz_follows_nats() {
    // The server's port is reserved but nothing listens on it yet.
    let mut server = NatsServer::start();
    server.kill();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{port}");
    let url = server.url();
    let analyzer = Process::spawn(
        "analyzer",
        &[
            "--nats-url",
            &url,
            "--id",
            "7",
            "--weight",
            "0.25",
            "--instance",
            "m1",
            "--heartbeat-interval",
            "100ms",
            "--report-interval",
            "100ms",
            "--metrics",
            &metrics,
        ],
        &[],
    );
    wait_status(&format!("{base}/healthz"), 200, &analyzer).await;
    let body = wait_status(&format!("{base}/readyz"), 503, &analyzer).await;
    assert!(body.contains("connected to NATS"), "{body}");
    let before = scrape(&format!("{base}/metrics")).await;
    assert_eq!(before.get("logdist_nats_connected"), 0.0);

    server.restart();
    wait_status(&format!("{base}/readyz"), 200, &analyzer).await;

    // Traffic straight to the analyzer's subject: packets with send times, one repeated packet
    // id (a duplicate) and one payload that does not parse.
    let client = async_nats::connect(server.url()).await.unwrap();
    let now_ns = logdist::protocol::headers::unix_nanos_now();
    for i in 0..20u32 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            logdist::protocol::headers::SENT_AT,
            (now_ns - 2_000_000).to_string(),
        );
        headers.insert(
            logdist::protocol::headers::PACKET_ID,
            format!("p{}", i.min(18)),
        );
        let severity = if i % 4 == 0 { "ERROR" } else { "INFO" };
        let payload = format!(
            r#"[{{"timestamp":1,"severity":"{severity}","source":"s","message":"a"}},{{"timestamp":2,"severity":"{severity}","source":"s","message":"b"}}]"#
        );
        client
            .publish_with_headers(
                logdist::Names::default().analyzer_subject("7"),
                headers,
                payload.into(),
            )
            .await
            .unwrap();
    }
    client
        .publish(
            logdist::Names::default().analyzer_subject("7"),
            "not json".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    let kv = jetstream::new(client.clone())
        .get_key_value(logdist::protocol::names::DEFAULT_STATS_BUCKET)
        .await
        .unwrap();
    let key = analyzer_key("7", "m1");
    let record = || async {
        let value = kv.get(&key).await.ok()??;
        serde_json::from_slice::<AnalyzerStats>(&value).ok()
    };
    wait_until(
        "the analyzer's record counts every packet",
        WAIT,
        || async {
            record()
                .await
                .is_some_and(|r| r.packets == 19 && r.invalid_packets == 1)
        },
    )
    .await;
    // Each record goes to /metrics before the KV writer, and traffic has stopped: the scrape
    // shows the counts of the record just read.
    let kv_record = record().await.unwrap();
    let parsed = scrape(&format!("{base}/metrics")).await;
    let series =
        |severity: &str| format!("logdist_analyzer_messages_total{{severity=\"{severity}\"}}");
    assert_eq!(
        parsed.get(&series("INFO")),
        kv_record.by_severity["INFO"] as f64
    );
    assert_eq!(
        parsed.get(&series("ERROR")),
        kv_record.by_severity["ERROR"] as f64
    );
    assert_eq!(kv_record.messages, 38);
    assert_eq!(parsed.get(&series("ERROR")), 10.0);
    assert_eq!(parsed.get("logdist_analyzer_packets_total"), 19.0);
    assert_eq!(parsed.get("logdist_analyzer_duplicate_packets_total"), 1.0);
    assert_eq!(parsed.get("logdist_analyzer_invalid_packets_total"), 1.0);
    assert_eq!(
        parsed.get("logdist_analyzer_received_bytes_total"),
        kv_record.bytes as f64
    );
    assert_eq!(parsed.get("logdist_analyzer_weight"), 0.25);
    assert_eq!(parsed.get("logdist_nats_connected"), 1.0);
    assert_eq!(
        parsed.types["logdist_analyzer_latency_seconds"],
        "histogram"
    );
    // 19 packets measured, each ~2 ms old: all at or below 1 s, none at or below 1 ms.
    assert_eq!(parsed.get("logdist_analyzer_latency_seconds_count"), 19.0);
    assert_eq!(
        parsed.get(r#"logdist_analyzer_latency_seconds_bucket{le="1"}"#),
        19.0
    );
    assert_eq!(
        parsed.get(r#"logdist_analyzer_latency_seconds_bucket{le="0.001"}"#),
        0.0
    );
    assert_eq!(
        parsed.get(r#"logdist_analyzer_info{analyzer="7",instance_name="m1"}"#),
        1.0
    );
    drop(analyzer);
}

/// A real Prometheus (Debian's `prometheus` package) on a free loopback port, scraping
/// `targets` (job name → `host:port`s) every second, its store in a temp dir. Killed on drop.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(jobs: &[(&str, Vec<String>)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (make tools installs Debian's prometheus)");
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prometheus.base);
        let deadline = tokio::time::Instant::now() + WAIT;
        while get(&ready).await.map(|(s, _)| s) != Some(200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within {WAIT:?}:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `expr` now through the HTTP API; the result's series.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("prometheus answers");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("JSON answer");
        assert!(
            status.is_success() && body["status"] == "success",
            "prometheus refused {expr}: {body}"
        );
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the Grafana dashboard, with Grafana's `$__rate_interval` replaced
/// by a window that holds several of the test's 1 s scrapes.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(common::repo_file("deploy/grafana/logdist.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap().to_string();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((title.clone(), expr.replace("$__rate_interval", "20s")));
        }
    }
    queries
}

/// The counters a distributor's scrape and its KV record must agree on.
fn distributor_counters(parsed: &Parsed) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = parsed
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("logdist_distributor_") && k.contains("_total"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The same series computed from a KV record, by the names of docs/metrics.md.
fn record_counters(r: &DistributorStats) -> Vec<(String, f64)> {
    let p = "logdist_distributor";
    let mut out = vec![
        (format!("{p}_received_packets_total"), r.received_packets),
        (format!("{p}_received_messages_total"), r.received_messages),
        (format!("{p}_received_bytes_total"), r.received_bytes),
        (format!("{p}_routed_packets_total"), r.routed_packets),
        (format!("{p}_routed_messages_total"), r.routed_messages),
        (
            format!("{p}_deadletter_messages_total"),
            r.deadletter_messages,
        ),
        (format!("{p}_held_packets_total"), r.held_total),
        (format!("{p}_hold_overflow_packets_total"), r.held_overflow),
        (format!("{p}_redelivered_packets_total"), r.redelivered),
        (
            format!("{p}_ingest_dropped_packets_total"),
            r.ingest_dropped_packets,
        ),
        (format!("{p}_bad_control_messages_total"), r.bad_heartbeats),
        (
            format!("{p}_refused_weight_overrides_total"),
            r.refused_weight_overrides,
        ),
    ];
    for (reason, n) in &r.deadletter_reasons {
        out.push((
            format!("{p}_deadletter_packets_total{{reason=\"{reason}\"}}"),
            *n,
        ));
    }
    for (id, route) in &r.analyzers {
        for (what, n) in [
            ("messages", route.messages),
            ("packets", route.packets),
            ("bytes", route.bytes),
        ] {
            out.push((
                format!("{p}_analyzer_routed_{what}_total{{analyzer=\"{id}\"}}"),
                n,
            ));
        }
    }
    let mut out: Vec<(String, f64)> = out.into_iter().map(|(k, v)| (k, v as f64)).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn updated_ms(parsed: &Parsed, binary: &str) -> u64 {
    (parsed.get(&format!("logdist_{binary}_stats_updated_timestamp_seconds")) * 1000.0).round()
        as u64
}

#[tokio::test]
async fn a_loaded_pipeline_scrapes_as_its_kv_stats_and_prometheus_answers_every_dashboard_query() {
    let server = NatsServer::start();
    let url = server.url();
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let (d_port, a1_port, a2_port) = (free_port(), free_port(), free_port());
    let mut analyzers = Vec::new();
    for (id, weight, port) in [("1", "0.7", a1_port), ("2", "0.3", a2_port)] {
        analyzers.push(Process::spawn(
            "analyzer",
            &[
                "--nats-url",
                &url,
                "--id",
                id,
                "--weight",
                weight,
                "--instance",
                &format!("i{id}"),
                "--heartbeat-interval",
                "100ms",
                "--report-interval",
                "200ms",
                "--metrics",
                &addr(port),
            ],
            &[],
        ));
    }
    let distributor = Process::spawn(
        "distributor",
        &[
            "run",
            "--nats-url",
            &url,
            "--replica-id",
            "m1",
            "--stats-interval",
            "200ms",
            "--metrics",
            &addr(d_port),
        ],
        &[],
    );
    wait_status(
        &format!("http://{}/readyz", addr(d_port)),
        200,
        &distributor,
    )
    .await;
    for (analyzer, port) in analyzers.iter().zip([a1_port, a2_port]) {
        wait_status(&format!("http://{}/readyz", addr(port)), 200, analyzer).await;
    }
    logdist_testing::wait_for_members(&url, 2, WAIT).await;
    let prometheus = Prometheus::start(&[
        ("logdist-distributor", vec![addr(d_port)]),
        ("logdist-analyzer", vec![addr(a1_port), addr(a2_port)]),
    ])
    .await;

    // Load with a few malformed packets, so dead letters have reasons.
    let mut sim = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &url,
            "--agents",
            "4",
            "--packet-size",
            "1..20",
            "--rate",
            "4000",
            "--duration",
            "5s",
            "--invalid-ratio",
            "0.02",
        ],
        &[],
    );
    let client = async_nats::connect(&url).await.unwrap();
    let kv = jetstream::new(client.clone())
        .get_key_value("logdist_stats")
        .await
        .unwrap();
    let record = || async {
        let value = kv.get(distributor_key("m1")).await.ok()??;
        serde_json::from_slice::<DistributorStats>(&value).ok()
    };
    let metrics_url = format!("http://{}/metrics", addr(d_port));
    // While the load runs: each scrape renders the newest record handed to the KV writer, so it
    // is never older than a record read before it, and the counters of a scrape and a record
    // with the same timestamp are equal.
    let (mut same_record, mut scrapes) = (0, 0);
    while sim.try_wait().is_none() && scrapes < 40 {
        let before = record().await.expect("the distributor's record");
        let (_, text) = get(&metrics_url).await.expect("scrape");
        let after = record().await.unwrap();
        let parsed = parse_with_python(&text);
        let at = updated_ms(&parsed, "distributor");
        assert!(
            at >= before.updated_at_ms,
            "a scrape older than the KV record"
        );
        for r in [&before, &after] {
            if r.updated_at_ms == at {
                assert_eq!(distributor_counters(&parsed), record_counters(r));
                same_record += 1;
                break;
            }
        }
        scrapes += 1;
    }
    assert!(
        same_record >= 2,
        "only {same_record} of {scrapes} scrapes met a KV record of the same moment"
    );
    let status = sim.wait(WAIT).await;
    assert!(status.success(), "agent-sim failed: {}", sim.stderr());

    // At rest: the last record and the scrape agree, and the shares converged to the targets.
    wait_until(
        "the analyzers counted every routed message",
        WAIT,
        || async {
            let Some(r) = record().await else {
                return false;
            };
            let analyzed: u64 = scrape_analyzer_messages(&[a1_port, a2_port]).await;
            r.routed_messages > 0 && analyzed == r.routed_messages
        },
    )
    .await;
    let parsed = scrape(&metrics_url).await;
    let last = record().await.unwrap();
    assert_eq!(distributor_counters(&parsed), record_counters(&last));
    assert!(
        !last.deadletter_reasons.is_empty(),
        "the malformed packets were not dead-lettered"
    );
    for (id, target) in [("1", 0.7), ("2", 0.3)] {
        let share = |window: &str| {
            parsed.get(&format!(
                "logdist_distributor_analyzer_actual_share_ratio{{analyzer=\"{id}\",window=\"{window}\"}}"
            ))
        };
        let kv_route = &last.analyzers[id];
        assert_eq!(share("all"), kv_route.actual_share);
        assert_eq!(share("epoch"), kv_route.epoch_share);
        assert_eq!(
            parsed.get(&format!(
                "logdist_distributor_analyzer_target_share_ratio{{analyzer=\"{id}\"}}"
            )),
            kv_route.target_share
        );
        assert!((kv_route.target_share - target).abs() < 1e-12);
        assert!(
            (share("epoch") - target).abs() < 0.005,
            "analyzer {id}: {} against {target}",
            share("epoch")
        );
    }
    for port in [a1_port, a2_port] {
        scrape(&format!("http://{}/metrics", addr(port))).await;
    }

    // Prometheus scraped all of it: every query of the dashboard returns series.
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    for (panel, expr) in &queries {
        loop {
            if !prometheus.query(expr).await.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "panel {panel:?}: no series for {expr}\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    drop(distributor);
}

/// Messages analyzed, summed over severities and the analyzers on `ports`, from their metrics.
async fn scrape_analyzer_messages(ports: &[u16]) -> u64 {
    let mut total = 0.0;
    for port in ports {
        let Some((200, text)) = get(&format!("http://127.0.0.1:{port}/metrics")).await else {
            return 0;
        };
        total += text
            .lines()
            .filter(|l| l.starts_with("logdist_analyzer_messages_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total as u64
}

#[tokio::test]
async fn distributor_readyz_is_503_until_nats_is_reachable_and_the_gateway_serves_metrics_too() {
    // Nothing listens on the server's port yet.
    let mut server = NatsServer::start();
    server.kill();
    let url = server.url();
    let (amo_port, alo_port, http_port) = (free_port(), free_port(), free_port());
    let spawn = |replica: &str, delivery: &str, metrics: u16, extra: &[&str]| {
        let metrics = format!("127.0.0.1:{metrics}");
        let mut args = vec![
            "run",
            "--nats-url",
            &url,
            "--replica-id",
            replica,
            "--stats-interval",
            "100ms",
            "--delivery",
            delivery,
            "--metrics",
            &metrics,
        ];
        args.extend_from_slice(extra);
        Process::spawn("distributor", &args, &[])
    };
    let http = format!("127.0.0.1:{http_port}");
    let amo = spawn("r-amo", "at-most-once", amo_port, &["--http", &http]);
    let alo = spawn("r-alo", "at-least-once", alo_port, &[]);
    for (process, port, waits_for) in [
        (&amo, amo_port, "connected to NATS; membership loaded"),
        (
            &alo,
            alo_port,
            "connected to NATS; membership loaded; JetStream consumer bound",
        ),
    ] {
        let base = format!("http://127.0.0.1:{port}");
        wait_status(&format!("{base}/healthz"), 200, process).await;
        let body = wait_status(&format!("{base}/readyz"), 503, process).await;
        assert_eq!(body.trim(), format!("not ready: {waits_for}"));
        let parsed = scrape(&format!("{base}/metrics")).await;
        assert_eq!(parsed.get("logdist_nats_connected"), 0.0);
    }

    server.restart();
    for (process, port) in [(&amo, amo_port), (&alo, alo_port)] {
        let body = wait_status(&format!("http://127.0.0.1:{port}/readyz"), 200, process).await;
        assert_eq!(body.trim(), "ready");
        let parsed = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
        assert_eq!(parsed.get("logdist_nats_connected"), 1.0);
    }
    // With --http the gateway's address serves the same /metrics and /readyz.
    wait_status(&format!("http://{http}/readyz"), 200, &amo).await;
    let parsed = scrape(&format!("http://{http}/metrics")).await;
    assert_eq!(
        parsed.get(r#"logdist_distributor_info{delivery="at-most-once",replica="r-amo"}"#),
        1.0
    );
}
