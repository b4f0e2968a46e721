//! Reading the stats bucket back: one [`StatsSnapshot`] of every distributor replica's and every
//! analyzer instance's record, for the tools that report on the pipeline (`distributor stats`,
//! `agent-sim --verify`).

use async_nats::jetstream::kv;
use futures::TryStreamExt;

use crate::protocol::stats::{
    AnalyzerStats, DistributorStats, ANALYZER_KEY_PREFIX, DISTRIBUTOR_KEY_PREFIX,
};

/// Why the stats bucket could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the stats bucket: {0}")]
pub struct SnapshotError(String);

/// Every record in the stats bucket at one moment. Records that do not parse are counted, not
/// fatal: a newer writer may have added fields an older reader ignores, but garbage is reported.
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    pub distributors: Vec<DistributorStats>,
    pub analyzers: Vec<AnalyzerStats>,
    /// Keys whose value was not the JSON their prefix promises.
    pub unreadable: Vec<String>,
}

impl StatsSnapshot {
    /// Reads all current keys of `store` (the `logdist_stats` bucket).
    pub async fn read(store: &kv::Store) -> Result<StatsSnapshot, SnapshotError> {
        let keys: Vec<String> = match store.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| SnapshotError(e.to_string()))?,
            Err(e) => return Err(SnapshotError(e.to_string())),
        };
        let mut snapshot = StatsSnapshot::default();
        for key in keys {
            let Some(value) = store
                .get(&key)
                .await
                .map_err(|e| SnapshotError(e.to_string()))?
            else {
                continue; // deleted between listing and reading
            };
            let prefix = key.split('.').next().unwrap_or_default();
            let parsed = match prefix {
                DISTRIBUTOR_KEY_PREFIX => serde_json::from_slice(&value)
                    .map(|s| snapshot.distributors.push(s))
                    .is_ok(),
                ANALYZER_KEY_PREFIX => serde_json::from_slice(&value)
                    .map(|s| snapshot.analyzers.push(s))
                    .is_ok(),
                _ => true, // someone else's key: not ours to judge
            };
            if !parsed {
                snapshot.unreadable.push(key);
            }
        }
        Ok(snapshot)
    }
}

/// Analyzer ids in the membership bucket (`analyzers`) now: the analyzers online.
pub async fn member_ids(
    membership: &kv::Store,
) -> Result<std::collections::BTreeSet<String>, SnapshotError> {
    let keys = membership
        .keys()
        .await
        .map_err(|e| SnapshotError(e.to_string()))?;
    keys.try_collect()
        .await
        .map_err(|e| SnapshotError(e.to_string()))
}
