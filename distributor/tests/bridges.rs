//! The old service's analyzers, unchanged: a Python analyzer that makes exactly the old calls
//! (register, `POST /message/process` per message, deregister) gets its share through the
//! distributor's bridge, survives a distributor restart (registration resumed from KV), has each
//! message posted once with two replicas, and leaves at once when it deregisters.

mod pipeline;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logdist_testing::{free_port, wait_until, workspace_root, NatsServer, Process};
use pipeline::{jetstream, stats_bucket, WAIT};

/// `$LOGDIST_PYTHON`, else the venv `make tools` builds.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("LOGDIST_PYTHON") {
        return path.into();
    }
    let venv = workspace_root().join(".tools/venv/bin/python");
    assert!(venv.is_file(), "no {}: run `make tools`", venv.display());
    venv
}

fn distributor(url: &str, replica: &str, http: &str) -> Process {
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
            "--http",
            http,
        ],
        &[],
    )
}

/// A native analyzer with 1 s heartbeats (a membership change mid-round would move the shares).
fn native(url: &str, id: &str, weight: &str) -> Process {
    let instance = format!("i{id}");
    Process::spawn(
        "analyzer",
        &[
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
        ],
        &[],
    )
}

fn received(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The stats records of every instance of analyzer `id`.
async fn records(
    stats: &async_nats::jetstream::kv::Store,
    id: &str,
) -> Vec<logdist::protocol::stats::AnalyzerStats> {
    // A key listing can fail for a while when the server is busy (seen once in a full run,
    // right after a distributor restart): retry within the suite's one wait bound, and show
    // the whole cause chain if it never works.
    let deadline = Instant::now() + WAIT;
    let snapshot = loop {
        match logdist::StatsSnapshot::read(stats).await {
            Ok(snapshot) => break snapshot,
            Err(e) => {
                let mut chain = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    chain.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                assert!(
                    Instant::now() < deadline,
                    "cannot read the stats bucket: {chain}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    snapshot
        .analyzers
        .into_iter()
        .filter(|a| a.id == id)
        .collect()
}

/// Messages counted in the stats bucket by every instance of analyzer `id`.
async fn counted(stats: &async_nats::jetstream::kv::Store, id: &str) -> u64 {
    records(stats, id).await.iter().map(|a| a.messages).sum()
}

/// Instances of analyzer `id` in the membership bucket.
async fn instances(js: &async_nats::jetstream::Context, id: &str) -> usize {
    let Ok(kv) = js.get_key_value("analyzers").await else {
        return 0;
    };
    let Ok(Some(value)) = kv.get(id).await else {
        return 0;
    };
    serde_json::from_slice::<serde_json::Value>(&value)
        .ok()
        .and_then(|v| v["instances"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Publishes `n` packets of 1–10 messages tagged `tag`; returns the message ids.
async fn publish(client: &async_nats::Client, tag: &str, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for p in 0..n {
        let size = p % 10 + 1;
        let records: Vec<String> = (0..size)
            .map(|k| {
                ids.insert(format!("{tag}-{p}-{k}"));
                format!(r#"{{"timestamp":{p},"severity":"INFO","source":"s","message":"{tag}-{p}-{k}"}}"#)
            })
            .collect();
        let payload = format!("[{}]", records.join(","));
        client
            .publish("logs.ingest.t", payload.into())
            .await
            .unwrap();
        if p % 200 == 199 {
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    client.flush().await.unwrap();
    ids
}

/// Sends a round of `n` packets and waits until every message is counted: by the native
/// analyzers' stats and by what the old analyzer recorded. Returns the old analyzer's share.
async fn round(
    client: &async_nats::Client,
    stats: &async_nats::jetstream::kv::Store,
    file: &Path,
    tag: &str,
    n: usize,
) -> f64 {
    let natives = counted(stats, "1").await + counted(stats, "2").await;
    let before = received(file).len() as u64;
    let started = Instant::now();
    let sent = publish(client, tag, n).await.len() as u64;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = counted(stats, "1").await + counted(stats, "2").await;
        let old = received(file).len() as u64;
        if now + old == sent + natives + before {
            break;
        }
        if Instant::now() >= deadline {
            // What the bridges' requests did says where the missing messages went.
            let bridges: Vec<String> = records(stats, "old")
                .await
                .iter()
                .map(|a| {
                    format!(
                        "{}: {}",
                        a.instance,
                        serde_json::to_string(&a.forward).unwrap()
                    )
                })
                .collect();
            panic!(
                "round {tag}: after {WAIT:?}, {} of {sent} messages counted (native analyzers {}, \
                 the old analyzer {}); the bridges' requests:\n{}",
                (now + old).saturating_sub(natives + before),
                now.saturating_sub(natives),
                old.saturating_sub(before),
                bridges.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let share = (received(file).len() as u64 - before) as f64 / sent as f64;
    eprintln!(
        "round {tag}: old analyzer {:.3}% of {sent} messages, all counted in {:?}",
        100.0 * share,
        started.elapsed()
    );
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_services_analyzer_works_unchanged() {
    let server = NatsServer::start();
    let url = server.url();
    let http1 = format!("127.0.0.1:{}", free_port());
    let mut d1 = distributor(&url, "d1", &http1);
    let _one = native(&url, "1", "0.5");
    let _two = native(&url, "2", "0.2");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("received.txt");
    let script = workspace_root().join("distributor/tests/fixtures/old_analyzer.py");
    let js = jetstream(&url).await;
    let js = &js;
    // The gateway listens once d1 is up.
    wait_until("d1's gateway", WAIT, || async {
        std::net::TcpStream::connect(&http1).is_ok()
    })
    .await;
    let mut old = Process::spawn_at(
        &python(),
        &[
            script.to_str().unwrap(),
            &format!("http://{http1}"),
            "old",
            "0.3",
            file.to_str().unwrap(),
        ],
        &[],
    );
    wait_until("the old analyzer bridged", WAIT, || async move {
        instances(js, "old").await == 1
    })
    .await;
    let client = async_nats::connect(&url).await.unwrap();
    let stats = stats_bucket(js).await;

    let share = round(&client, &stats, &file, "a", 3_000).await;
    assert!((share - 0.3).abs() <= 0.001, "share {share}");
    // The old stats endpoint counts its messages like any analyzer's.
    let received_a = received(&file).len() as u64;
    wait_until("GET /analyzer/stats to count them", WAIT, || {
        let http1 = http1.clone();
        async move {
            let Ok(views) = reqwest::get(format!("http://{http1}/analyzer/stats")).await else {
                return false;
            };
            let views: serde_json::Value = views.json().await.unwrap_or_default();
            views.as_array().is_some_and(|v| {
                v.iter()
                    .any(|a| a["id"] == "old" && a["messages"] == received_a && a["online"] == true)
            })
        }
    })
    .await;

    // A distributor restart: the registration is resumed from KV.
    assert!(d1.terminate(WAIT).await.success(), "{}", d1.stderr());
    let restarted = logdist::protocol::stats::unix_millis_now();
    let mut d1 = distributor(&url, "d1", &http1);
    let stats_ref = &stats;
    let resumed = || async move {
        let Ok(Some(value)) = stats_ref.get("analyzer.old.d1").await else {
            return false;
        };
        let record: logdist::protocol::stats::AnalyzerStats =
            serde_json::from_slice(&value).unwrap();
        // Subscribed (its first record), and announced again.
        record.started_at_ms >= restarted && instances(js, "old").await == 1
    };
    let deadline = Instant::now() + WAIT;
    while !resumed().await {
        assert!(
            Instant::now() < deadline,
            "the bridge did not resume after the restart; registrations {:?}; d1:\n{}",
            logdist_testing::kv_keys(js, "analyzer_registrations").await,
            d1.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let share = round(&client, &stats, &file, "b", 2_000).await;
    assert!(
        (share - 0.3).abs() <= 0.001,
        "after the restart: share {share}"
    );

    // Two replicas: both bridge, each message is posted once.
    let http2 = format!("127.0.0.1:{}", free_port());
    let mut d2 = distributor(&url, "d2", &http2);
    wait_until("both replicas bridge it", WAIT, || async move {
        instances(js, "old").await == 2
    })
    .await;
    let share = round(&client, &stats, &file, "c", 2_000).await;
    assert!((share - 0.3).abs() <= 0.01, "two replicas: share {share}");
    let all = received(&file);
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a message was posted twice");

    // Deregistration at exit: withdrawn at once, from both replicas.
    old.signal("TERM");
    let asked = Instant::now();
    wait_until("the deregistered analyzer gone", WAIT, || async move {
        instances(js, "old").await == 0
    })
    .await;
    let gone_after = asked.elapsed();
    eprintln!("gone {gone_after:?} after SIGTERM");
    assert!(
        gone_after < Duration::from_secs(3),
        "not at once: {gone_after:?} (heartbeat time-out 3 s)"
    );
    assert!(old.wait(WAIT).await.success(), "{}", old.stderr());
    assert!(
        old.stdout().contains("'deregistered': 'old'"),
        "{}",
        old.stdout()
    );
    assert!(d1.terminate(WAIT).await.success(), "{}", d1.stderr());
    assert!(d2.terminate(WAIT).await.success(), "{}", d2.stderr());
}
