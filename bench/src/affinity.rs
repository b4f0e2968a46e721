//! The affinity rows of `make bench`: the same keyed, skewed load (agent-sim, 1,000 agents with
//! Zipf-like volumes, `--agent-skew 0.8`: the heaviest sends 6.5 % of the messages) through one
//! distributor with `--affinity agent` and with the default (`none`), to three analyzers
//! weighted 0.5 / 0.3 / 0.2. It reports what affinity buys (packets on their key's usual
//! analyzer, seen on the wire; and the distributor's own "affinity kept", packets on their key's
//! first choice) and what it costs (the largest deviation of a share from its target, from
//! agent-sim's `--verify`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use logdist_testing::{NatsServer, Process};

use crate::scenario::{spawn_analyzers, wait_ready, Binaries};

/// Agents of the load.
pub const AGENTS: u32 = 1_000;
/// `--agent-skew` of the load.
pub const SKEW: &str = "0.8";
/// Offered load, log messages per second: well below what the pipeline sustains, so shares and
/// affinity are measured without drops.
pub const RATE: u64 = 20_000;

/// What one affinity run measured.
#[derive(Debug, Clone)]
pub struct AffinityResult {
    /// The `--affinity` value.
    pub mode: &'static str,
    pub packets: u64,
    /// Largest |share − target| over the analyzers, percentage points.
    pub max_deviation_pp: f64,
    /// Packets that reached the analyzer that got most of their key's packets, percent.
    pub usual_pct: f64,
    /// The distributor's affinity kept (packets on their key's first choice), percent; `None`
    /// without affinity.
    pub kept_pct: Option<f64>,
    pub loss_pct: f64,
}

/// One run with `--affinity mode` for `seconds` of load.
pub async fn run(
    bins: &Binaries,
    mode: &'static str,
    seconds: u64,
) -> anyhow::Result<AffinityResult> {
    let server = NatsServer::with_config("max_payload: 8MB\n");
    let url = server.url();
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stats = logdist::open_or_create_bucket(
        &js,
        logdist::protocol::names::DEFAULT_STATS_BUCKET,
        "stats",
    )
    .await?;
    let analyzers = [("1", "0.5"), ("2", "0.3"), ("3", "0.2")];
    let processes = spawn_analyzers(bins, &url, &analyzers);
    let distributor = Process::spawn_at(
        &bins.path("distributor"),
        &[
            "run",
            "--nats-url",
            &url,
            "--replica-id",
            "bench",
            "--affinity",
            mode,
            "--stats-interval",
            "200ms",
        ],
        &[("RUST_LOG", "warn")],
    );
    wait_ready(&js, &stats, analyzers.len(), true, &processes, "affinity").await?;

    // Packets per (agent, analyzer), from the forwarded packets' `Logdist-Agent` headers.
    let seen: Arc<Mutex<HashMap<(String, String), u64>>> = Arc::default();
    let mut sub = client.subscribe("analyzer.*").await?;
    client.flush().await?;
    let sink = seen.clone();
    let observer = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let agent = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(logdist::protocol::headers::AGENT))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            let analyzer = msg.subject.as_str().rsplit('.').next().unwrap_or("");
            *sink
                .lock()
                .unwrap()
                .entry((agent, analyzer.to_string()))
                .or_default() += 1;
        }
    });

    let args = [
        "--nats-url".to_string(),
        url.clone(),
        "--agents".into(),
        AGENTS.to_string(),
        "--agent-skew".into(),
        SKEW.into(),
        "--packet-size".into(),
        "1..20".into(),
        "--rate".into(),
        RATE.to_string(),
        "--duration".into(),
        format!("{seconds}s"),
        "--verify".into(),
        "--quiet-period".into(),
        "2s".into(),
        "--max-loss".into(),
        "100".into(),
        "--max-deviation".into(),
        "100".into(),
        "--json".into(),
    ];
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sim = Process::spawn_at(&bins.path("agent-sim"), &arg_refs, &[("RUST_LOG", "warn")]);
    let deadline = Instant::now() + Duration::from_secs(seconds + 120);
    let status = loop {
        if let Some(status) = sim.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            bail!("agent-sim did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !status.success() {
        bail!("agent-sim failed: {}\n{}", sim.stdout(), sim.stderr());
    }
    let report: serde_json::Value =
        serde_json::from_str(&sim.stdout()).context("agent-sim's JSON report")?;
    let v = &report["verification"];

    // The distributor's own counters, once they account for every packet it routed.
    let mut kept_pct = None;
    if mode != "none" {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let record: serde_json::Value = match stats.get("distributor.bench").await? {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => serde_json::Value::Null,
            };
            let sum = |field: &str| -> u64 {
                record["analyzers"]
                    .as_object()
                    .map(|a| a.values().filter_map(|r| r[field].as_u64()).sum())
                    .unwrap_or(0)
            };
            let (keyed, kept) = (sum("keyed_packets"), sum("kept_packets"));
            if keyed > 0 && keyed == record["routed_packets"].as_u64().unwrap_or(0) {
                kept_pct = Some(100.0 * kept as f64 / keyed as f64);
                break;
            }
            if Instant::now() > deadline {
                bail!("the distributor's stats never counted every packet as keyed: {record}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    observer.abort();
    let seen = seen.lock().unwrap().clone();
    let mut usual: HashMap<&str, u64> = HashMap::new();
    for ((agent, _), n) in &seen {
        let best = usual.entry(agent.as_str()).or_default();
        *best = (*best).max(*n);
    }
    let packets: u64 = seen.values().sum();
    drop(distributor);
    drop(processes);
    drop(server);
    Ok(AffinityResult {
        mode,
        packets,
        max_deviation_pp: v["max_abs_deviation_pp"].as_f64().unwrap_or(f64::NAN),
        usual_pct: 100.0 * usual.values().sum::<u64>() as f64 / packets.max(1) as f64,
        kept_pct,
        loss_pct: v["loss_pct"].as_f64().unwrap_or(f64::NAN),
    })
}

/// The Markdown table of the affinity rows.
pub fn render(rows: &[AffinityResult]) -> String {
    let mut out = String::from(
        "| --affinity | packets | max share dev. pp | on key's usual analyzer % | affinity kept (first choice) % | loss % |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.1} | {} | {:.2} |\n",
            r.mode,
            r.packets,
            r.max_deviation_pp,
            r.usual_pct,
            r.kept_pct.map_or("-".into(), |k| format!("{k:.1}")),
            r.loss_pct
        ));
    }
    out
}
