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
use logdist_testing::{
    free_port, wait_until, workspace_root, AnalyzerOptions, DistributorOptions, NatsServer, Process,
};

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
        (format!("{p}_batches_sent_total"), r.batches_sent),
        (format!("{p}_batched_packets_total"), r.batched_packets),
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
    if !r.affinity.is_empty() && r.affinity != "none" {
        out.push((format!("{p}_keyless_packets_total"), r.keyless_packets));
        for (id, route) in &r.analyzers {
            for (what, n) in [("keyed", route.keyed_packets), ("kept", route.kept_packets)] {
                out.push((
                    format!("{p}_analyzer_{what}_packets_total{{analyzer=\"{id}\"}}"),
                    n,
                ));
            }
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

/// A pipeline with `--metrics` on every binary: distributor replica `m1` (its stats every
/// 200 ms, `distributor_args` added) and analyzers 1 (weight 0.7) and 2 (0.3), all ready, the
/// distributor routing to both.
struct MonitoredPipeline {
    server: NatsServer,
    distributor: Process,
    _analyzers: Vec<Process>,
    distributor_port: u16,
    analyzer_ports: [u16; 2],
    stats: jetstream::kv::Store,
}

const TARGETS: [(&str, f64); 2] = [("1", 0.7), ("2", 0.3)];

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

impl MonitoredPipeline {
    async fn start(distributor_args: &[&str]) -> MonitoredPipeline {
        let server = NatsServer::start();
        let url = server.url();
        let distributor_port = free_port();
        let analyzer_ports = [free_port(), free_port()];
        let analyzers: Vec<Process> = TARGETS
            .iter()
            .zip(analyzer_ports)
            .map(|((id, weight), port)| {
                AnalyzerOptions::new(&url, id, *weight)
                    .heartbeat_interval(Duration::from_millis(100))
                    .report_interval(Duration::from_millis(200))
                    .args(&["--metrics", &loopback(port)])
                    .spawn()
            })
            .collect();
        let metrics = loopback(distributor_port);
        let distributor = DistributorOptions::new(&url)
            .replica("m1")
            .stats_interval(Duration::from_millis(200))
            .args(&["--metrics", &metrics])
            .args(distributor_args)
            .spawn();
        wait_status(&format!("http://{metrics}/readyz"), 200, &distributor).await;
        for (analyzer, port) in analyzers.iter().zip(analyzer_ports) {
            wait_status(&format!("http://{}/readyz", loopback(port)), 200, analyzer).await;
        }
        logdist_testing::wait_for_members(&url, 2, WAIT).await;
        let client = async_nats::connect(&url).await.unwrap();
        let stats = jetstream::new(client)
            .get_key_value("logdist_stats")
            .await
            .unwrap();
        MonitoredPipeline {
            server,
            distributor,
            _analyzers: analyzers,
            distributor_port,
            analyzer_ports,
            stats,
        }
    }

    fn metrics_url(&self) -> String {
        format!("http://{}/metrics", loopback(self.distributor_port))
    }

    /// Prometheus' jobs for this pipeline.
    fn scrape_jobs(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![
            ("logdist-distributor", vec![loopback(self.distributor_port)]),
            (
                "logdist-analyzer",
                self.analyzer_ports.iter().map(|p| loopback(*p)).collect(),
            ),
        ]
    }

    async fn record(&self) -> Option<DistributorStats> {
        let value = self.stats.get(distributor_key("m1")).await.ok()??;
        serde_json::from_slice::<DistributorStats>(&value).ok()
    }

    /// agent-sim against the pipeline for 5 s at 4,000 messages/s, 2 % of the packets
    /// malformed (so dead letters have reasons), with `args` added.
    fn agent_sim(&self, args: &[&str]) -> Process {
        let url = self.server.url();
        let mut all = vec![
            "--nats-url",
            &url,
            "--packet-size",
            "1..20",
            "--rate",
            "4000",
            "--duration",
            "5s",
            "--invalid-ratio",
            "0.02",
        ];
        all.extend_from_slice(args);
        Process::spawn("agent-sim", &all, &[])
    }

    /// While `sim` runs: each scrape renders the newest record handed to the KV writer, so it
    /// is never older than a record read before it, and the counters of a scrape and a record
    /// with the same timestamp are equal. Then waits for `sim` to succeed.
    async fn scrape_under_load(&self, sim: &mut Process) {
        let metrics_url = self.metrics_url();
        let (mut same_record, mut scrapes) = (0, 0);
        while sim.try_wait().is_none() && scrapes < 40 {
            let before = self.record().await.expect("the distributor's record");
            let (_, text) = get(&metrics_url).await.expect("scrape");
            let after = self.record().await.unwrap();
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
    }

    /// At rest (the analyzers counted every routed message): a scrape, checked by both parsers,
    /// and the KV record, whose counters it equals.
    async fn at_rest(&self) -> (Parsed, DistributorStats) {
        // The record of the moment before: at rest means two records in a row received the
        // same, so a record written while the distributor still drained its ingest queue (and
        // analyzers whose counts had not yet moved past it) is not taken for rest.
        let previous = std::cell::Cell::new(None);
        wait_until(
            "the distributor received nothing more and the analyzers counted every routed message",
            WAIT,
            || async {
                let Some(r) = self.record().await else {
                    return false;
                };
                let before = previous.replace(Some((r.updated_at_ms, r.received_messages)));
                let settled = before.is_some_and(|(at, received)| {
                    at < r.updated_at_ms && received == r.received_messages
                });
                let analyzed: u64 = scrape_analyzer_messages(&self.analyzer_ports).await;
                settled && r.routed_messages > 0 && analyzed == r.routed_messages
            },
        )
        .await;
        let parsed = scrape(&self.metrics_url()).await;
        let last = self.record().await.unwrap();
        assert_eq!(distributor_counters(&parsed), record_counters(&last));
        assert!(
            !last.deadletter_reasons.is_empty(),
            "the malformed packets were not dead-lettered"
        );
        for port in self.analyzer_ports {
            scrape(&format!("http://{}/metrics", loopback(port))).await;
        }
        (parsed, last)
    }
}

/// Per analyzer, the scrape's shares are the record's, and the epoch share is within
/// `tolerance` of the target.
fn assert_shares(parsed: &Parsed, last: &DistributorStats, tolerance: f64) {
    for (id, target) in TARGETS {
        let share = |window: &str| {
            parsed.get(&format!(
                "logdist_distributor_analyzer_actual_share_ratio{{analyzer=\"{id}\",window=\"{window}\"}}"
            ))
        };
        let kv_route = &last.analyzers[id];
        let target_share = parsed.get(&format!(
            "logdist_distributor_analyzer_target_share_ratio{{analyzer=\"{id}\"}}"
        ));
        for (scraped, record) in [
            (share("all"), kv_route.actual_share),
            (share("epoch"), kv_route.epoch_share),
            (target_share, kv_route.target_share),
        ] {
            assert!(
                same_float(scraped, record),
                "analyzer {id}: scraped {scraped}, recorded {record}"
            );
        }
        assert!((kv_route.target_share - target).abs() < 1e-12);
        assert!(
            (share("epoch") - target).abs() < tolerance,
            "analyzer {id}: {} against {target}",
            share("epoch")
        );
    }
}

#[tokio::test]
async fn a_loaded_pipeline_scrapes_as_its_kv_stats_and_the_shares_converge_in_both() {
    let pipeline = MonitoredPipeline::start(&[]).await;
    let mut sim = pipeline.agent_sim(&["--agents", "4"]);
    pipeline.scrape_under_load(&mut sim).await;
    let (parsed, last) = pipeline.at_rest().await;
    assert!(
        !parsed
            .types
            .contains_key("logdist_distributor_affinity_info"),
        "affinity families without --affinity"
    );
    assert_shares(&parsed, &last, 0.005);
}

#[tokio::test]
async fn affinity_figures_scrape_as_their_kv_stats_and_prometheus_answers_every_dashboard_query() {
    let pipeline = MonitoredPipeline::start(&["--affinity", "agent"]).await;
    let prometheus = Prometheus::start(&pipeline.scrape_jobs()).await;
    // 200 agents of Zipf-like volumes: keys of every size on both analyzers.
    let mut sim = pipeline.agent_sim(&["--agents", "200", "--agent-skew", "0.8"]);
    // Under load the affinity counters are among those a scrape and its record must share.
    pipeline.scrape_under_load(&mut sim).await;
    let (parsed, last) = pipeline.at_rest().await;
    assert_eq!(
        parsed.get(r#"logdist_distributor_affinity_info{mode="agent",slack="0.01"}"#),
        1.0
    );
    assert_eq!(parsed.get("logdist_distributor_keys_saturated"), 0.0);
    assert_eq!(parsed.get("logdist_distributor_keyless_packets_total"), 0.0);
    let (mut keyed, mut held) = (0, 0);
    for (id, _) in TARGETS {
        let route = &last.analyzers[id];
        let series =
            |name: &str| format!("logdist_distributor_analyzer_{name}{{analyzer=\"{id}\"}}");
        assert_eq!(parsed.get(&series("keys_held")), route.keys_held as f64);
        let kept = parsed.get(&series("kept_packets_total"));
        let keyed_here = parsed.get(&series("keyed_packets_total"));
        // The ratio docs/metrics.md gives for "affinity kept" is the record's.
        assert!(
            route
                .affinity_kept
                .is_some_and(|r| same_float(kept / keyed_here, r)),
            "analyzer {id}: {kept} / {keyed_here} against {:?}",
            route.affinity_kept
        );
        assert!(
            route.keys_held > 0 && kept > 0.0,
            "analyzer {id}: {route:?}"
        );
        keyed += route.keyed_packets;
        held += route.keys_held;
    }
    // Every routed packet had an agent key, and each key has one first choice.
    assert_eq!(keyed, last.routed_packets);
    assert!(held <= 200, "{held} keys held of 200 agents");
    // Affinity keeps shares within its slack (ε = 0.01 of 0.7 is 0.7 pp) and a packet or two.
    assert_shares(&parsed, &last, 0.01);

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
    // The dashboard's all-time "affinity kept" is the record's, once Prometheus has scraped
    // the record at rest.
    let (_, kept_expr) = queries
        .iter()
        .find(|(panel, expr)| panel.starts_with("Affinity kept") && !expr.contains("rate("))
        .expect("an all-time affinity-kept query in the dashboard");
    wait_until(
        "Prometheus' affinity kept is the record's",
        WAIT,
        || async {
            let series = prometheus.query(kept_expr).await;
            TARGETS.iter().all(|(id, _)| {
                series.iter().any(|s| {
                    s["metric"]["analyzer"] == *id
                        && s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .zip(last.analyzers[*id].affinity_kept)
                            .is_some_and(|(v, r)| same_float(v, r))
                })
            })
        },
    )
    .await;
    drop(pipeline.distributor);
}

/// A scraped float is the record's, up to the last bits: serde_json's float parsing (without
/// its `float_roundtrip` feature) may read the record's value a unit in the last place off.
fn same_float(scraped: f64, record: f64) -> bool {
    (scraped - record).abs() <= 4.0 * f64::EPSILON * record.abs()
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
