//! What the tests of analyzers that are not our own code need: a real HTTP endpoint (axum on its
//! own runtime, so a test can kill it with every connection), a distributor and analyzers as
//! processes on a real nats-server, packets with a unique id per log message, and the ids each
//! side saw.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use logdist_testing::{wait_until, workspace_root, Process};

pub const WAIT: Duration = Duration::from_secs(60);

/// `$LOGDIST_PYTHON`, else the venv `make tools` builds.
pub fn python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("LOGDIST_PYTHON") {
        return path.into();
    }
    let venv = workspace_root().join(".tools/venv/bin/python");
    assert!(
        venv.is_file(),
        "no {}: run `make tools` (or set LOGDIST_PYTHON)",
        venv.display()
    );
    venv
}

/// What a test endpoint received, and how it answers.
#[derive(Debug, Default)]
pub struct Received {
    pub requests: AtomicU64,
    pub messages: AtomicU64,
    /// The `message` field of every log message received with a 2xx.
    pub ids: Mutex<BTreeSet<String>>,
    /// Answer 503 to everything (probes included) while set.
    pub failing: AtomicBool,
    /// Request bodies seen, by the form they came in: `packet`, `ndjson`, `message`.
    pub forms: Mutex<BTreeSet<&'static str>>,
}

impl Received {
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::SeqCst)
    }

    pub fn ids(&self) -> BTreeSet<String> {
        self.ids.lock().unwrap().clone()
    }
}

/// A real HTTP endpoint: `POST /ingest` takes a JSON array, one log object, NDJSON or
/// `{"data": <log object>}`; a log message whose `message` contains `reject-me` gets a 400 for
/// its whole request. `HEAD /ingest` answers 200 (503 while failing).
pub struct TestEndpoint {
    pub received: Arc<Received>,
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestEndpoint {
    pub fn start() -> TestEndpoint {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("endpoint runtime");
        let received = Arc::new(Received::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test endpoint");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/ingest", post(ingest).head(probe))
            .with_state(received.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app).await
        });
        TestEndpoint {
            received,
            port,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    /// The endpoint dies for good: the listener and every open connection are closed.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestEndpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn probe(State(received): State<Arc<Received>>) -> StatusCode {
    if received.failing.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn ingest(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    received.requests.fetch_add(1, Ordering::SeqCst);
    if received.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy\n".into());
    }
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-ndjson");
    let (form, records) = match parse(&body, ndjson) {
        Ok(parsed) => parsed,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("unreadable body: {e}")),
    };
    let mut ids = Vec::new();
    for record in &records {
        let Some(id) = record["message"].as_str() else {
            return (
                StatusCode::BAD_REQUEST,
                "a log object without `message`".into(),
            );
        };
        if id.contains("reject-me") {
            return (
                StatusCode::BAD_REQUEST,
                format!("field message: {id:?} is not allowed here\nsecond line"),
            );
        }
        ids.push(id.to_string());
    }
    received.forms.lock().unwrap().insert(form);
    received
        .messages
        .fetch_add(ids.len() as u64, Ordering::SeqCst);
    received.ids.lock().unwrap().extend(ids);
    (StatusCode::OK, "ok".into())
}

fn parse(body: &[u8], ndjson: bool) -> Result<(&'static str, Vec<serde_json::Value>), String> {
    if ndjson {
        let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
        assert!(text.ends_with('\n'), "NDJSON ends with a newline");
        let records = text
            .lines()
            .map(|line| serde_json::from_str(line).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        return Ok(("ndjson", records));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match value {
        serde_json::Value::Array(records) => Ok(("packet", records)),
        serde_json::Value::Object(mut object) if object.contains_key("data") => {
            Ok(("message", vec![object.remove("data").unwrap()]))
        }
        object => Ok(("packet", vec![object])),
    }
}

/// A distributor in `delivery` mode with fast stats and a 1 s request time-out.
pub fn distributor(url: &str, replica: &str, delivery: &str) -> Process {
    distributor_with(url, replica, delivery, "1s")
}

/// [`distributor`] with another `--request-timeout`.
pub fn distributor_with(
    url: &str,
    replica: &str,
    delivery: &str,
    request_timeout: &str,
) -> Process {
    Process::spawn(
        "distributor",
        &[
            "run",
            "--nats-url",
            url,
            "--replica-id",
            replica,
            "--stats-interval",
            "200ms",
            "--delivery",
            delivery,
            "--ack-wait",
            "2s",
            "--request-timeout",
            request_timeout,
        ],
        &[],
    )
}

/// An at-most-once distributor `d1` that coalesces with a long `--linger` (batches form for
/// certain from packets it held), and the stats bucket once its first record is in (it is then
/// subscribed to the ingest subjects).
pub async fn coalescing_distributor(url: &str) -> (Process, async_nats::jetstream::kv::Store) {
    let process = Process::spawn(
        "distributor",
        &[
            "run",
            "--nats-url",
            url,
            "--replica-id",
            "d1",
            "--stats-interval",
            "100ms",
            "--linger",
            "100ms",
        ],
        &[],
    );
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let deadline = std::time::Instant::now() + WAIT;
    let stats = loop {
        if let Ok(store) = js.get_key_value("logdist_stats").await {
            break store;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no stats bucket after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    logdist_testing::wait_distributor_stats(&stats, "d1", "the distributor running", |_| true)
        .await;
    (process, stats)
}

/// The lines of a file (none while it does not exist).
pub fn file_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// An analyzer `id` (instance `i<id>`) with fast heartbeats and reports, and `extra` flags.
pub fn analyzer(url: &str, id: &str, weight: &str, extra: &[&str]) -> Process {
    let instance = format!("i{id}");
    let mut args = vec![
        "--nats-url",
        url,
        "--id",
        id,
        "--weight",
        weight,
        "--instance",
        &instance,
        "--report-interval",
        "200ms",
    ];
    if !extra.contains(&"--heartbeat-interval") {
        args.extend_from_slice(&["--heartbeat-interval", "100ms"]);
    }
    args.extend_from_slice(extra);
    Process::spawn("analyzer", &args, &[])
}

/// The payload of packet `n`: `n % 10 + 1` log messages whose `message` is `<tag>-<n>-<k>`.
pub fn packet(tag: &str, n: usize) -> (String, usize) {
    let size = n % 10 + 1;
    let records: Vec<String> = (0..size)
        .map(|k| {
            let severity = ["INFO", "WARN", "ERROR", "debug"][(n + k) % 4];
            format!(
                r#"{{"timestamp":{n},"severity":"{severity}","source":"svc-{}","message":"{tag}-{n}-{k}","host":"h1"}}"#,
                k % 3
            )
        })
        .collect();
    (format!("[{}]", records.join(",")), size)
}

/// Publishes packets `range` of `tag` on the ingest subject, `per_flush` at a time, pausing
/// `pause` after each flush; returns the log message ids sent.
pub async fn publish(
    client: &async_nats::Client,
    tag: &str,
    range: std::ops::Range<usize>,
    per_flush: usize,
    pause: Duration,
) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for n in range {
        let (payload, size) = packet(tag, n);
        client
            .publish("logs.ingest.test", payload.into())
            .await
            .expect("publish");
        ids.extend((0..size).map(|k| format!("{tag}-{n}-{k}")));
        if (n + 1) % per_flush == 0 {
            client.flush().await.expect("flush");
            tokio::time::sleep(pause).await;
        }
    }
    client.flush().await.expect("flush");
    ids
}

/// Log message ids an analyzer started with `--print` printed (`<ts> <SEV> <source>: <id>`).
pub fn printed_ids(process: &Process) -> BTreeSet<String> {
    process
        .stdout()
        .lines()
        .filter_map(|line| line.rsplit_once(": ").map(|(_, id)| id.to_string()))
        .collect()
}

/// Messages counted by analyzer `id` (instance `i<id>`) in the stats bucket.
pub async fn counted(stats: &async_nats::jetstream::kv::Store, id: &str) -> u64 {
    let Ok(Some(value)) = stats
        .get(logdist::protocol::stats::analyzer_key(
            id,
            &format!("i{id}"),
        ))
        .await
    else {
        return 0;
    };
    serde_json::from_slice::<logdist::protocol::stats::AnalyzerStats>(&value)
        .map_or(0, |s| s.messages)
}

/// Waits until `condition` holds, polling (bounded by [`WAIT`]).
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until(what, WAIT, condition).await
}

/// Waits until the at-least-once consumer has nothing pending and nothing un-acked, and the
/// stream is empty: every packet was acknowledged by an analyzer (or dead-lettered).
pub async fn wait_consumer_drained(js: &async_nats::jetstream::Context) {
    use async_nats::jetstream::consumer::pull;
    eventually("every packet in the stream acknowledged", || async {
        let Ok(mut stream) = js.get_stream("LOGS").await else {
            return false;
        };
        let Ok(info) = stream.info().await.cloned() else {
            return false;
        };
        let Ok(mut consumer) = stream.get_consumer::<pull::Config>("distributors").await else {
            return false;
        };
        let Ok(c) = consumer.info().await else {
            return false;
        };
        c.num_pending == 0 && c.num_ack_pending == 0 && info.state.messages == 0
    })
    .await;
}

/// Whether analyzer `id` is in the membership bucket (a distributor routes to it).
pub async fn is_member(js: &async_nats::jetstream::Context, id: &str) -> bool {
    logdist_testing::kv_keys(js, "analyzers")
        .await
        .iter()
        .any(|k| k == id)
}
