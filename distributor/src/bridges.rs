//! Bridges for the old service's analyzers: the HTTP gateway records each
//! `POST /analyzer/register` in the KV bucket of registrations (see `logdist_http::registration`);
//! every distributor replica watches that bucket and, for each registered analyzer, runs an
//! HTTP analyzer in-process ([`analyzer::run`] with `--forward-http <its URL>
//! --forward-format message`), as instance `<replica id>` of analyzer `<id>`.
//!
//! So the bridge has the whole lifecycle of an analyzer: it heartbeats for the registered analyzer
//! while its endpoint answers, withdraws while it does not, counts its messages in
//! `logdist_stats`, and acknowledges only after a 2xx in at-least-once mode. With several replicas
//! every replica bridges every registration, all in the queue group `analyzer.<id>`, so each
//! packet is posted once; a replica that dies takes only its own instance away, and the
//! registration stays in the bucket. A distributor that restarts resumes the registrations it
//! finds there. A deregistration deletes the key: each replica's bridge withdraws at once.

use std::collections::HashMap;
use std::time::Duration;

use analyzer::AnalyzerConfig;
use async_nats::jetstream::kv::{self, Operation};
use clap::Parser as _;
use futures::StreamExt;
use logdist::{Names, NatsArgs};
use logdist_http::Registration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What every bridge of this replica shares.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    pub nats: NatsArgs,
    pub names: Names,
    /// The bridges' instance name: this replica's id.
    pub instance: String,
    /// Heartbeat interval of the bridged analyzers.
    pub heartbeat_interval: Duration,
}

struct Bridge {
    registration: Registration,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// How long one bridge gets for each step of its shutdown (its analyzer's --drain-timeout).
pub const BRIDGE_DRAIN: Duration = Duration::from_secs(5);

/// Starts watching `bucket` and bridging its registrations. Returns the token the replica's
/// routing must stop on: cancelled once `shutdown` is and every bridge has withdrawn and drained,
/// so this replica is still routing (and confirms their withdrawals) while they stop.
pub fn spawn(
    bucket: kv::Store,
    settings: BridgeSettings,
    shutdown: &CancellationToken,
) -> CancellationToken {
    let routing = CancellationToken::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(bucket, settings, stop.clone(), BRIDGE_DRAIN));
    let (shutdown, routing_stop) = (shutdown.clone(), routing.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stop.cancel();
        if tokio::time::timeout(BRIDGE_DRAIN * 5, task).await.is_err() {
            tracing::warn!("the bridges of registered analyzers did not stop in time");
        }
        routing_stop.cancel();
    });
    routing
}

/// Watches `bucket` until `shutdown`, running one bridge per registration; then stops them all
/// (each withdraws and drains), waiting at most `drain` for them.
pub async fn run(
    bucket: kv::Store,
    settings: BridgeSettings,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let mut bridges: HashMap<String, Bridge> = HashMap::new();
    let mut retry_in = Duration::from_millis(250);
    'watching: loop {
        // With history: the current registrations first (a restarted replica resumes them), then changes.
        let mut watch = match bucket.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry_in, "cannot watch the analyzer registrations; retrying");
                tokio::select! {
                    () = tokio::time::sleep(retry_in) => {}
                    () = shutdown.cancelled() => break 'watching,
                }
                retry_in = (retry_in * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        retry_in = Duration::from_millis(250);
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                () = shutdown.cancelled() => break 'watching,
            };
            let entry = match entry {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the watch of the analyzer registrations failed; watching again");
                    continue 'watching;
                }
                None => continue 'watching,
            };
            match entry.operation {
                Operation::Put => match serde_json::from_slice::<Registration>(&entry.value) {
                    Ok(registration) => {
                        if bridges
                            .get(&entry.key)
                            .is_some_and(|b| b.registration == registration)
                        {
                            continue;
                        }
                        if let Some(old) = bridges.remove(&entry.key) {
                            stop(old, drain).await;
                        }
                        match bridge_config(&registration, &settings) {
                            Ok(config) => {
                                bridges.insert(
                                    entry.key.clone(),
                                    start(registration, config, &settings),
                                );
                            }
                            Err(e) => {
                                tracing::warn!(key = %entry.key, error = %e.render(), "ignoring an invalid analyzer registration")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "ignoring a malformed analyzer registration")
                    }
                },
                Operation::Delete | Operation::Purge => {
                    if let Some(old) = bridges.remove(&entry.key) {
                        tracing::info!(analyzer_id = %entry.key, "analyzer deregistered: its bridge withdraws");
                        stop(old, drain).await;
                    }
                }
            }
        }
    }
    let stops: Vec<_> = bridges.into_values().map(|b| stop(b, drain)).collect();
    futures::future::join_all(stops).await;
}

fn start(registration: Registration, config: AnalyzerConfig, settings: &BridgeSettings) -> Bridge {
    let stop = CancellationToken::new();
    let instance = settings.instance.clone();
    let token = stop.clone();
    tracing::info!(analyzer_id = %registration.id, url = %registration.url, weight = registration.weight, "bridging a registered analyzer");
    let task = tokio::spawn(async move {
        let mut retry_in = Duration::from_millis(500);
        while !token.is_cancelled() {
            match analyzer::run(&config, &instance, token.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(analyzer_id = %config.id, error = %e, retry_in = ?retry_in, "bridge failed; starting it again")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry_in) => {}
                () = token.cancelled() => return,
            }
            retry_in = (retry_in * 2).min(Duration::from_secs(10));
        }
    });
    Bridge {
        registration,
        stop,
        task,
    }
}

async fn stop(bridge: Bridge, drain: Duration) {
    bridge.stop.cancel();
    // The analyzer bounds each shutdown step by its --drain-timeout; this bounds them all.
    if tokio::time::timeout(drain * 4, bridge.task).await.is_err() {
        tracing::warn!(analyzer_id = %bridge.registration.id, "bridge did not stop in time");
    }
}

/// The analyzer settings of one bridge: an HTTP analyzer in the old service's `message` format.
fn bridge_config(
    registration: &Registration,
    settings: &BridgeSettings,
) -> Result<AnalyzerConfig, clap::Error> {
    let weight = registration.weight.to_string();
    let heartbeat = format!("{}ms", settings.heartbeat_interval.as_millis());
    let mut config = AnalyzerConfig::try_parse_from([
        "analyzer",
        "--id",
        &registration.id,
        "--weight",
        &weight,
        "--forward-http",
        &registration.url,
        "--forward-format",
        "message",
        "--heartbeat-interval",
        &heartbeat,
        // The old stats endpoint reads the bridges' counts from their stats records.
        "--report-interval",
        "1s",
    ])?;
    config.nats = settings.nats.clone();
    config.names = settings.names.clone();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Nats {
        #[command(flatten)]
        nats: NatsArgs,
    }

    fn settings() -> BridgeSettings {
        BridgeSettings {
            nats: Nats::parse_from(["x", "--nats-url", "nats://127.0.0.1:4333"]).nats,
            names: Names::default(),
            instance: "d1".into(),
            heartbeat_interval: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_bridge_is_an_http_analyzer_in_the_old_format() {
        let registration = Registration {
            id: "7".into(),
            weight: 0.3,
            url: "http://10.0.0.5:5001/message/process".into(),
            registered_at_ms: 1,
        };
        let config = bridge_config(&registration, &settings()).unwrap();
        assert_eq!((config.id.as_str(), config.weight), ("7", 0.3));
        assert_eq!(
            config.forward_http.as_deref(),
            Some("http://10.0.0.5:5001/message/process")
        );
        assert_eq!(config.forward_format, analyzer::ForwardFormat::Message);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.nats, settings().nats);
    }

    #[test]
    fn an_invalid_registration_is_an_error_not_a_panic() {
        for (id, weight, url) in [
            ("a.b", 1.0, "http://x:1/"),
            ("7", -1.0, "http://x:1/"),
            ("7", 1.0, "ftp://x"),
        ] {
            let registration = Registration {
                id: id.into(),
                weight,
                url: url.into(),
                registered_at_ms: 1,
            };
            assert!(
                bridge_config(&registration, &settings()).is_err(),
                "{id} {weight} {url}"
            );
        }
    }
}
