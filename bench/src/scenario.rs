//! One benchmark run: a fresh nats-server on free loopback ports, the receivers (real analyzer
//! processes, the same counting receivers in every scenario), a distributor where the scenario has
//! one, and agent-sim as the load; the result is read from agent-sim's `--verify` report, the
//! analyzers' counters sampled over time, and the distributor's `/proc` figures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use logdist::StatsSnapshot;
use logdist_testing::{NatsServer, Process};

/// What routes the packets from agent-sim to the analyzers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// agent-sim publishes straight to `analyzer.1`: the broker's ceiling on this machine.
    RawNats,
    /// nats-server maps `logs.ingest` to `analyzer.1/2/3` at 50/30/20 %, random per packet.
    WeightedMapping,
    /// agent-sim → distributor (at-most-once) → three analyzers.
    LogdistAtMostOnce,
    /// The same with `--linger 0`: one NATS message per packet (no coalescing), the baseline
    /// that shows what coalescing buys in the same run.
    LogdistAtMostOnceLinger0,
    /// agent-sim → JetStream stream → distributor (at-least-once) → three analyzers.
    LogdistAtLeastOnce,
    /// HTTP clients in the bench → the distributor's HTTP gateway → distributor (at-most-once)
    /// → three analyzers; the old service's way in.
    LogdistHttp,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::RawNats,
        Scenario::WeightedMapping,
        Scenario::LogdistAtMostOnce,
        Scenario::LogdistAtMostOnceLinger0,
        Scenario::LogdistAtLeastOnce,
        Scenario::LogdistHttp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::RawNats => "raw NATS (1 subscriber)",
            Scenario::WeightedMapping => "nats-server weighted mapping",
            Scenario::LogdistAtMostOnce => "logdist at-most-once (default: --linger 1ms)",
            Scenario::LogdistAtMostOnceLinger0 => "logdist at-most-once, --linger 0",
            Scenario::LogdistAtLeastOnce => "logdist at-least-once",
            Scenario::LogdistHttp => "logdist via HTTP gateway",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Scenario::RawNats => "raw",
            Scenario::WeightedMapping => "mapping",
            Scenario::LogdistAtMostOnce => "logdist-amo",
            Scenario::LogdistAtMostOnceLinger0 => "logdist-amo-linger0",
            Scenario::LogdistAtLeastOnce => "logdist-alo",
            Scenario::LogdistHttp => "logdist-http",
        }
    }

    /// Whether the share plot has a panel for it (a half-rate run with packets, observed).
    pub fn plotted(self) -> bool {
        matches!(
            self,
            Scenario::WeightedMapping | Scenario::LogdistAtMostOnce
        )
    }

    fn analyzers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Scenario::RawNats => &[("1", "1")],
            _ => &[("1", "0.5"), ("2", "0.3"), ("3", "0.2")],
        }
    }

    fn has_distributor(self) -> bool {
        matches!(
            self,
            Scenario::LogdistAtMostOnce
                | Scenario::LogdistAtMostOnceLinger0
                | Scenario::LogdistAtLeastOnce
                | Scenario::LogdistHttp
        )
    }

    /// Server config beyond the harness's own lines.
    fn server_config(self) -> String {
        let mut config = String::from("max_payload: 8MB\nmax_pending: 256MB\n");
        if self == Scenario::WeightedMapping {
            config.push_str(
                "mappings = {\n  \"logs.ingest\": [\n    { destination: \"analyzer.1\", weight: 50% },\n    \
                 { destination: \"analyzer.2\", weight: 30% },\n    { destination: \"analyzer.3\", weight: 20% }\n  ]\n}\n",
            );
        }
        config
    }
}

/// The payload shape of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One log message (~150 B) per publish.
    Single,
    /// 100 log messages per packet.
    Packet100,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Single, Shape::Packet100];

    /// Its name for `--shapes`.
    pub fn short(self) -> &'static str {
        match self {
            Shape::Single => "single",
            Shape::Packet100 => "packets",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Shape::Single => "single messages",
            Shape::Packet100 => "100-message packets",
        }
    }

    fn packet_size(self) -> &'static str {
        match self {
            Shape::Single => "1",
            Shape::Packet100 => "100",
        }
    }

    fn messages_per_packet(self) -> u64 {
        match self {
            Shape::Single => 1,
            Shape::Packet100 => 100,
        }
    }
}

/// Where the release binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// The folder of this executable (`target/release`), where `cargo build --release` put the
    /// other binaries too.
    pub fn next_to_me() -> anyhow::Result<Binaries> {
        let me = std::env::current_exe().context("locating logdist-bench")?;
        let dir = me
            .parent()
            .context("executable has a folder")?
            .to_path_buf();
        for name in ["distributor", "analyzer", "agent-sim"] {
            if !dir.join(name).is_file() {
                bail!(
                    "{} is missing: build with `cargo build --release --bins` (make bench does)",
                    dir.join(name).display()
                );
            }
        }
        Ok(Binaries { dir })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub sent: u64,
    pub received: u64,
    /// Seconds from the first to the last message counted by the analyzers.
    pub active_seconds: f64,
    pub bytes_sent: u64,
    pub loss_pct: f64,
    pub max_deviation_pp: f64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Distributor CPU seconds (user + system) over the run, when there is a distributor.
    pub distributor_cpu_s: Option<f64>,
    /// CPU seconds of the other processes over the same span: what limits the whole box.
    pub others_cpu: OthersCpu,
    /// Where the packets went (and where the lost ones were lost), at the end of the run.
    pub flow: Flow,
    pub distributor_peak_rss_mib: Option<f64>,
    /// (seconds since start, messages per analyzer id 1..=3) samples, for the plot.
    pub series: Vec<(f64, Vec<u64>)>,
}

/// Packets counted along the way at the end of a run: with `sent` and `received` (messages,
/// agent-sim's), it says where a lost packet was lost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    /// The distributor's counts (zero without one): packets it read from its ingest
    /// subscriptions, dropped there because it was behind, routed; NATS messages to analyzers
    /// that held two packets or more, and the packets in them.
    pub distributor_received: u64,
    pub distributor_dropped: u64,
    pub distributor_routed: u64,
    pub batches_sent: u64,
    pub batched_packets: u64,
    /// Packets the analyzers counted, and the batches among the NATS messages they read.
    pub analyzer_packets: u64,
    pub analyzer_batches: u64,
    /// nats-server's slow-consumer events (`/varz`): connections it dropped messages for.
    pub server_slow_consumers: u64,
    /// nats-server's stalls of fast producers (`/varz` `stalled_clients`): times it paused
    /// reading a publisher because a connection it delivers to was far behind.
    pub server_stalled_clients: u64,
}

/// CPU seconds (user + system) over a run of everything on the box besides the distributor.
#[derive(Debug, Clone, Copy, Default)]
pub struct OthersCpu {
    pub server: f64,
    /// The analyzer processes together.
    pub analyzers: f64,
    /// agent-sim, or the bench's own HTTP clients in the HTTP scenario.
    pub load: f64,
}

impl RunResult {
    /// End-to-end delivered log messages per second.
    pub fn messages_per_sec(&self) -> f64 {
        self.received as f64 / self.active_seconds.max(1e-3)
    }

    pub fn megabytes_per_sec(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        let bytes_delivered = self.bytes_sent as f64 * self.received as f64 / self.sent as f64;
        bytes_delivered / 1e6 / self.active_seconds.max(1e-3)
    }
}

/// Runs `scenario` with `shape` at `rate` messages/s (0 = as fast as possible) for `seconds`.
/// With `observe`, the bench also subscribes to every analyzer subject and counts the messages
/// routed to each as they go by, for an exact share-over-time series. That subscriber receives
/// every message a second time, so it is used only on the plot's own run, never on a run whose
/// rate or latency is reported.
pub async fn run(
    bins: &Binaries,
    scenario: Scenario,
    shape: Shape,
    rate: u64,
    seconds: u64,
    observe: bool,
) -> anyhow::Result<RunResult> {
    let monitor_port = logdist_testing::free_port();
    let server = NatsServer::with_config(&format!(
        "{}http: \"127.0.0.1:{monitor_port}\"\n",
        scenario.server_config()
    ));
    let url = server.url();
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client);
    let stats = logdist::open_or_create_bucket(
        &js,
        logdist::protocol::names::DEFAULT_STATS_BUCKET,
        "stats",
    )
    .await?;

    let processes = spawn_analyzers(bins, &url, scenario.analyzers());
    let http_addr = format!("127.0.0.1:{}", logdist_testing::free_port());
    let distributor = if scenario.has_distributor() {
        let delivery = match scenario {
            Scenario::LogdistAtLeastOnce => "at-least-once",
            _ => "at-most-once",
        };
        let mut args = vec![
            "run",
            "--nats-url",
            &url,
            "--replica-id",
            "bench",
            "--delivery",
            delivery,
        ];
        if scenario == Scenario::LogdistHttp {
            args.extend(["--http", &http_addr]);
        }
        if scenario == Scenario::LogdistAtMostOnceLinger0 {
            args.extend(["--linger", "0"]);
        }
        Some(Process::spawn_at(
            &bins.path("distributor"),
            &args,
            &[("RUST_LOG", "warn")],
        ))
    } else {
        None
    };

    let wanted = scenario.analyzers().len();
    wait_ready(
        &js,
        &stats,
        wanted,
        scenario.has_distributor(),
        &processes,
        scenario.label(),
    )
    .await?;

    let observed: Arc<Vec<AtomicU64>> = Arc::new((0..wanted).map(|_| AtomicU64::new(0)).collect());
    let observer = if observe {
        let client = async_nats::connect(&url).await?;
        let mut sub = client.subscribe("analyzer.*").await?;
        client.flush().await?;
        let counts = observed.clone();
        let per_packet = shape.messages_per_packet();
        Some(tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                let id = msg
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .and_then(|i| i.parse::<usize>().ok());
                let messages = observed_messages(msg.headers.as_ref(), per_packet);
                if let Some(i) = id.filter(|i| (1..=counts.len()).contains(i)) {
                    counts[i - 1].fetch_add(messages, Ordering::Relaxed);
                }
            }
        }))
    } else {
        None
    };

    let pid = distributor.as_ref().and_then(|d| d.id());
    let cpu_before = pid.map(cpu_seconds).transpose()?;
    let others_before = others_cpu(&server, &processes, scenario)?;
    let mut args: Vec<String> = [
        "--nats-url",
        &url,
        "--agents",
        "4",
        "--connections",
        "2",
        "--packet-size",
        shape.packet_size(),
        "--rate",
        &rate.to_string(),
        "--duration",
        &format!("{seconds}s"),
        "--verify",
        "--quiet-period",
        "2s",
        "--max-loss",
        "100",
        "--max-deviation",
        "100",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match scenario {
        Scenario::RawNats => args.extend([
            "--subject".into(),
            logdist::Names::default().analyzer_subject("1"),
        ]),
        Scenario::WeightedMapping => args.extend([
            "--subject".into(),
            logdist::protocol::names::DEFAULT_INGEST_SUBJECT.into(),
        ]),
        _ => {}
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut load = if scenario == Scenario::LogdistHttp {
        Load::Http(tokio::spawn(http_load(
            http_addr.clone(),
            shape,
            rate,
            Duration::from_secs(seconds),
        )))
    } else {
        Load::AgentSim(Box::new(Process::spawn_at(
            &bins.path("agent-sim"),
            &arg_refs,
            &[("RUST_LOG", "warn")],
        )))
    };
    let mut http_sent: Option<(u64, u64)> = None;
    let mut quiet_since: Option<Instant> = None;
    // Sample the analyzers' counters while the run goes on, until agent-sim exits.
    let mut series = Vec::new();
    let mut first_active: Option<f64> = None;
    let mut last_change: f64 = 0.0;
    let mut last_total = 0u64;
    let status = loop {
        let snapshot = StatsSnapshot::read(&stats).await?;
        let t = start.elapsed().as_secs_f64();
        let mut per_id = vec![0u64; wanted];
        for a in &snapshot.analyzers {
            if let Ok(i) = a.id.parse::<usize>() {
                if (1..=wanted).contains(&i) {
                    per_id[i - 1] += a.messages;
                }
            }
        }
        let total: u64 = per_id.iter().sum();
        if total > 0 && first_active.is_none() {
            first_active = Some(t);
        }
        if total != last_total {
            last_total = total;
            last_change = t;
        }
        if observe {
            series.push((
                t,
                observed.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            ));
        } else {
            series.push((t, per_id));
        }
        match &mut load {
            Load::AgentSim(sim) => {
                if let Some(status) = sim.try_wait() {
                    break status;
                }
            }
            Load::Http(task) => {
                if http_sent.is_none() && task.is_finished() {
                    http_sent = Some(task.await??);
                }
                // Quiet: all counted, or nothing moved for 2 s after the load ended.
                if let Some((sent, _)) = http_sent {
                    let moved = last_change > t - 2.0;
                    if total >= sent || (!moved && quiet_since.is_some()) {
                        break std::process::ExitStatus::default();
                    }
                    quiet_since.get_or_insert_with(Instant::now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if start.elapsed() > Duration::from_secs(seconds + 120) {
            bail!("the load did not finish in time");
        }
    };
    let cpu_after = pid.map(cpu_seconds).transpose()?;
    let others_after = others_cpu(&server, &processes, scenario)?;
    let peak_rss = pid.map(peak_rss_mib).transpose()?;
    let report = match &load {
        Load::AgentSim(sim) => {
            if !status.success() {
                bail!("agent-sim failed: {}\n{}", sim.stdout(), sim.stderr());
            }
            serde_json::from_str(&sim.stdout()).context("agent-sim's JSON report")?
        }
        Load::Http(_) => {
            let (sent, bytes) = http_sent.unwrap_or_default();
            http_report(&StatsSnapshot::read(&stats).await?, scenario, sent, bytes)
        }
    };
    let flow = flow(&stats, monitor_port).await?;
    let v = &report["verification"];
    let rows = v["analyzers"].as_array().cloned().unwrap_or_default();
    let max_of = |key: &str| rows.iter().filter_map(|r| r[key].as_u64()).max();
    // The samples are 200 ms apart (the analyzers' report interval): the first sample that saw
    // traffic was taken up to one interval after it began.
    let active_seconds = (last_change - first_active.unwrap_or(0.0) + 0.2).max(0.2);
    let result = RunResult {
        sent: v["sent"].as_u64().unwrap_or(0),
        received: v["received"].as_u64().unwrap_or(0),
        active_seconds,
        bytes_sent: report["sent"]["bytes"].as_u64().unwrap_or(0),
        loss_pct: v["loss_pct"].as_f64().unwrap_or(0.0),
        max_deviation_pp: v["max_abs_deviation_pp"].as_f64().unwrap_or(0.0),
        p50_us: max_of("p50_us"),
        p99_us: max_of("p99_us"),
        distributor_cpu_s: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        others_cpu: OthersCpu {
            server: others_after.server - others_before.server,
            analyzers: others_after.analyzers - others_before.analyzers,
            load: others_after.load - others_before.load,
        },
        distributor_peak_rss_mib: peak_rss,
        flow,
        series,
    };
    if let Some(task) = observer {
        task.abort();
    }
    drop(distributor);
    drop(processes);
    drop(server);
    Ok(result)
}

/// Starts one analyzer process per `(id, weight)`, heartbeating and reporting every 200 ms.
pub(crate) fn spawn_analyzers(
    bins: &Binaries,
    url: &str,
    analyzers: &[(&str, &str)],
) -> Vec<Process> {
    let mut processes = Vec::new();
    for (id, weight) in analyzers {
        processes.push(Process::spawn_at(
            &bins.path("analyzer"),
            &[
                "--nats-url",
                url,
                "--id",
                id,
                "--weight",
                weight,
                "--instance",
                &format!("b{id}"),
                "--heartbeat-interval",
                "200ms",
                "--report-interval",
                "200ms",
            ],
            &[("RUST_LOG", "warn")],
        ));
    }
    processes
}

/// Waits until every analyzer wrote its stats and, with a distributor, the membership bucket
/// lists them all (at most 30 s).
pub(crate) async fn wait_ready(
    js: &async_nats::jetstream::Context,
    stats: &async_nats::jetstream::kv::Store,
    wanted: usize,
    has_distributor: bool,
    processes: &[Process],
    label: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = StatsSnapshot::read(stats).await?;
        let mut ready = snapshot.analyzers.len() >= wanted;
        if has_distributor {
            let members = match js
                .get_key_value(logdist::protocol::names::DEFAULT_MEMBERSHIP_BUCKET)
                .await
            {
                Ok(kv) => logdist::member_ids(&kv).await?.len(),
                Err(_) => 0,
            };
            ready &= members >= wanted;
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = processes.iter().map(|p| p.stderr()).collect();
            bail!("{} did not get ready in 30 s: {logs:?}", label);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Log messages in one NATS message the observer saw: a distributor's message says how many it
/// carries (`Logdist-Count`; a batch holds several packets), the mapping's are the agents'
/// packets as sent (`per_packet`).
fn observed_messages(headers: Option<&async_nats::HeaderMap>, per_packet: u64) -> u64 {
    headers
        .and_then(|h| h.get(logdist::protocol::headers::COUNT))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .unwrap_or(per_packet)
}

/// What drives a run: agent-sim over NATS, or HTTP clients inside the bench.
enum Load {
    AgentSim(Box<Process>),
    Http(tokio::task::JoinHandle<anyhow::Result<(u64, u64)>>),
}

/// Keep-alive HTTP/1.1 connections of the HTTP scenario, each with one request in flight (like
/// as many agents, each posting and waiting for its answer; no pipelining).
pub(crate) const HTTP_CONNECTIONS: u64 = 64;

/// Posts the shape's body over [`HTTP_CONNECTIONS`] concurrent keep-alive connections for
/// `duration` at `rate` messages/s in all (0 = as fast as they can): one log message per
/// `POST /message/send`, 100 per `POST /messages`; every answer is read, and anything but a 2xx
/// that accepted the request's messages fails the run. The client is the bench's own
/// ([`crate::http_load`]: one write a request, the answer checked in place), so that the load
/// generator, on the same two cores, costs as little as it can. Returns (messages, bytes)
/// answered 2xx.
async fn http_load(
    addr: String,
    shape: Shape,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<(u64, u64)> {
    let per_request = shape.messages_per_packet();
    let record = |i: u64| {
        format!(
            r#"{{"timestamp":{i},"severity":"INFO","source":"bench","message":"GET /api/v1/orders 200 17 ms from client {i} with a typical length"}}"#
        )
    };
    let (path, body) = match shape {
        Shape::Single => ("/message/send", record(0)),
        Shape::Packet100 => (
            "/messages",
            format!("[{}]", (0..100).map(record).collect::<Vec<_>>().join(",")),
        ),
    };
    let target = Arc::new(crate::http_load::Target {
        addr,
        path,
        body: bytes::Bytes::from(body),
        accepted: per_request,
    });
    let interval = (rate > 0).then(|| {
        Duration::from_secs_f64(HTTP_CONNECTIONS as f64 * per_request as f64 / rate as f64)
    });
    let requests =
        crate::http_load::run(target.clone(), HTTP_CONNECTIONS, interval, duration).await?;
    Ok((requests * per_request, requests * target.body.len() as u64))
}

/// The fields of agent-sim's JSON report that a run reads, computed from the analyzers' counters
/// for an HTTP run (fresh analyzers: their counts are the run's).
fn http_report(
    snapshot: &StatsSnapshot,
    scenario: Scenario,
    sent: u64,
    bytes: u64,
) -> serde_json::Value {
    let weights: Vec<(String, f64)> = scenario
        .analyzers()
        .iter()
        .map(|(id, w)| (id.to_string(), w.parse().unwrap_or(0.0)))
        .collect();
    let weight_sum: f64 = weights.iter().map(|(_, w)| w).sum();
    let received: u64 = snapshot.analyzers.iter().map(|a| a.messages).sum();
    let mut max_dev: f64 = 0.0;
    let mut rows = Vec::new();
    for (id, weight) in &weights {
        let records = snapshot.analyzers.iter().filter(|a| &a.id == id);
        let messages: u64 = records.clone().map(|a| a.messages).sum();
        let share = 100.0 * messages as f64 / received.max(1) as f64;
        max_dev = max_dev.max((share - 100.0 * weight / weight_sum).abs());
        let p50 = records
            .clone()
            .filter_map(|a| a.latency.as_ref().map(|l| l.p50_us))
            .max();
        let p99 = records
            .filter_map(|a| a.latency.as_ref().map(|l| l.p99_us))
            .max();
        rows.push(serde_json::json!({"id": id, "p50_us": p50, "p99_us": p99}));
    }
    let lost = sent.saturating_sub(received);
    serde_json::json!({
        "sent": {"bytes": bytes},
        "verification": {
            "sent": sent,
            "received": received,
            "loss_pct": 100.0 * lost as f64 / sent.max(1) as f64,
            "max_abs_deviation_pp": max_dev,
            "analyzers": rows,
        }
    })
}

/// The counts of [`Flow`] from the stats bucket and the server's monitoring port, once the
/// load is over. The analyzers report every 200 ms, the distributor every second: its record
/// is waited for (3 s at most) until it was written after this call, so it counts every
/// packet the analyzers did.
async fn flow(stats: &async_nats::jetstream::kv::Store, monitor_port: u16) -> anyhow::Result<Flow> {
    let called_ms = unix_ms();
    let deadline = Instant::now() + Duration::from_secs(3);
    let snapshot = loop {
        let snapshot = StatsSnapshot::read(stats).await?;
        let fresh = snapshot
            .distributors
            .iter()
            .all(|d| d.updated_at_ms > called_ms);
        if fresh || Instant::now() > deadline {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // HTTP/1.0 by hand: the server closes the connection after its answer.
    let varz = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", monitor_port)).await?;
        stream.write_all(b"GET /varz HTTP/1.0\r\n\r\n").await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let answer = String::from_utf8(answer)?;
        let (_, body) = answer.split_once("\r\n\r\n").context("an HTTP answer")?;
        anyhow::Ok(serde_json::from_str::<serde_json::Value>(body)?)
    };
    let varz = tokio::time::timeout(Duration::from_secs(5), varz);
    let varz = match varz.await.unwrap_or_else(|_| Err(anyhow!("timed out"))) {
        Ok(varz) => varz,
        Err(e) => {
            eprintln!("bench: cannot read nats-server's /varz: {e:#}");
            serde_json::Value::Null
        }
    };
    let mut flow = Flow {
        server_slow_consumers: varz["slow_consumers"].as_u64().unwrap_or(0),
        server_stalled_clients: varz["stalled_clients"].as_u64().unwrap_or(0),
        ..Flow::default()
    };
    for d in &snapshot.distributors {
        flow.distributor_received += d.received_packets;
        flow.distributor_dropped += d.ingest_dropped_packets;
        flow.distributor_routed += d.routed_packets;
        flow.batches_sent += d.batches_sent;
        flow.batched_packets += d.batched_packets;
    }
    for a in &snapshot.analyzers {
        flow.analyzer_packets += a.packets;
        flow.analyzer_batches += a.batches;
    }
    Ok(flow)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// User + system CPU seconds of a process so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    proc_stat_seconds(&pid.to_string(), 11)
}

/// The sum of fields `at` and `at + 1` (after the command name) of `/proc/<pid>/stat`, in
/// seconds: 11 is a process's own user + system time, 13 that of its children it has waited
/// for.
fn proc_stat_seconds(pid: &str, at: usize) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").context("proc stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = fields[at].parse()?;
    let system: f64 = fields[at + 1].parse()?;
    Ok((user + system) / clock_ticks_per_second())
}

/// The other processes' CPU seconds so far. agent-sim has exited (and been waited for) by the
/// end of a run, so its time is read as the bench's children's time, which only it adds to
/// while the run goes on; the HTTP scenario's load is the bench process itself.
fn others_cpu(
    server: &NatsServer,
    analyzers: &[Process],
    scenario: Scenario,
) -> anyhow::Result<OthersCpu> {
    let server = server.pid().map(cpu_seconds).transpose()?.unwrap_or(0.0);
    let mut analyzer_total = 0.0;
    for pid in analyzers.iter().filter_map(Process::id) {
        analyzer_total += cpu_seconds(pid)?;
    }
    let load = match scenario {
        Scenario::LogdistHttp => proc_stat_seconds("self", 11)?,
        _ => proc_stat_seconds("self", 13)?,
    };
    Ok(OthersCpu {
        server,
        analyzers: analyzer_total,
        load,
    })
}

/// Asked once: `getconf` is a child process, whose time would count as agent-sim's.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM in /proc status")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// The workspace root, for output paths.
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observer_counts_a_batch_by_its_messages() {
        let mut batch = async_nats::HeaderMap::new();
        batch.insert(logdist::protocol::headers::COUNT, "300");
        assert_eq!(observed_messages(Some(&batch), 100), 300);
        let mut agent = async_nats::HeaderMap::new();
        agent.insert(logdist::protocol::headers::SEQ, "7");
        assert_eq!(observed_messages(Some(&agent), 100), 100);
        assert_eq!(observed_messages(None, 1), 1);
    }
}
