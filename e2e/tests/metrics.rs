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
use logdist::protocol::stats::{analyzer_key, AnalyzerStats};
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

/// Scrapes `url` and checks it with both parsers.
async fn scrape(url: &str) -> Parsed {
    let (status, text) = get(url).await.expect("metrics listener answers");
    assert_eq!(status, 200, "{text}");
    assert_promtool_accepts(&text);
    parse_with_python(&text)
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
