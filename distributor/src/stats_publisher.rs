//! [`StatsPublisher`]: writes this replica's [`DistributorStats`] to the stats bucket under
//! `distributor.<replica>`, from a task of its own so a slow KV round trip never stalls routing.
//!
//! The event loop hands over a snapshot every `--stats-interval`; if the writer is still busy
//! with the previous one the new snapshot waits in a one-slot channel and later ones are skipped
//! (the next tick carries newer numbers anyway). The final snapshot at shutdown is always written.
//!
//! With `--metrics`, every snapshot offered is also what `/metrics` renders from then on (see
//! `logdist::metrics`), handed over before the KV write: a scrape is never older than the
//! record in the bucket, and a scrape and a record of the same `updated_at_ms` are the same.

use std::time::Duration;

use async_nats::jetstream::kv;
use logdist::metrics::LatestSnapshot;
use logdist::protocol::stats::DistributorStats;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Handle of the writer task.
pub struct StatsPublisher {
    tx: mpsc::Sender<DistributorStats>,
    task: JoinHandle<()>,
    metrics: Option<LatestSnapshot<DistributorStats>>,
}

impl StatsPublisher {
    /// Starts the writer for key `key` in `store`.
    pub fn spawn(store: kv::Store, key: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<DistributorStats>(1);
        let task = tokio::spawn(async move {
            while let Some(stats) = rx.recv().await {
                let json = match serde_json::to_vec(&stats) {
                    Ok(json) => json,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serialize stats");
                        continue;
                    }
                };
                if let Err(e) = store.put(&key, json.into()).await {
                    tracing::warn!(key = %key, error = %e, "cannot write stats to KV");
                }
            }
        });
        StatsPublisher {
            tx,
            task,
            metrics: None,
        }
    }

    /// Also hands every snapshot to `/metrics`.
    pub fn with_metrics(mut self, latest: LatestSnapshot<DistributorStats>) -> Self {
        self.metrics = Some(latest);
        self
    }

    fn publish_metrics(&self, stats: &DistributorStats) {
        if let Some(latest) = &self.metrics {
            latest.publish(stats.clone());
        }
    }

    /// Offers a periodic snapshot; skipped when the writer is behind.
    pub fn offer(&self, stats: DistributorStats) {
        self.publish_metrics(&stats);
        if self.tx.try_send(stats).is_err() {
            tracing::debug!("stats writer busy; skipping a snapshot");
        }
    }

    /// Writes the final snapshot and waits (at most `timeout`) for every write to finish.
    pub async fn finish(self, stats: DistributorStats, timeout: Duration) {
        self.publish_metrics(&stats);
        let StatsPublisher { tx, task, .. } = self;
        let done = async move {
            let _ = tx.send(stats).await;
            drop(tx);
            let _ = task.await;
        };
        if tokio::time::timeout(timeout, done).await.is_err() {
            tracing::warn!(?timeout, "final stats not written in time");
        }
    }
}
