//! Reading the stats bucket back: one [`StatsSnapshot`] of every distributor replica's and every
//! analyzer instance's record, for the tools that report on the pipeline (`distributor stats`,
//! `agent-sim --verify`).

use async_nats::jetstream::kv;
use futures::TryStreamExt;

use crate::protocol::stats::{
    AnalyzerStats, DistributorStats, ANALYZER_KEY_PREFIX, DISTRIBUTOR_KEY_PREFIX,
};

/// Why a bucket could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot list the keys of KV bucket {bucket:?}")]
    Keys {
        bucket: String,
        #[source]
        source: kv::HistoryError,
    },
    #[error("cannot list the keys of KV bucket {bucket:?}")]
    KeyList {
        bucket: String,
        #[source]
        source: kv::WatcherError,
    },
    #[error("cannot read key {key:?} of KV bucket {bucket:?}")]
    Get {
        bucket: String,
        key: String,
        #[source]
        source: kv::EntryError,
    },
}

/// All keys of `store` now.
async fn keys(store: &kv::Store) -> Result<Vec<String>, SnapshotError> {
    let bucket = || store.name.clone();
    let keys = store.keys().await.map_err(|source| SnapshotError::Keys {
        bucket: bucket(),
        source,
    })?;
    keys.try_collect()
        .await
        .map_err(|source| SnapshotError::KeyList {
            bucket: bucket(),
            source,
        })
}

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
        let keys = keys(store).await?;
        let mut snapshot = StatsSnapshot::default();
        for key in keys {
            let Some(value) = store.get(&key).await.map_err(|source| SnapshotError::Get {
                bucket: store.name.clone(),
                key: key.clone(),
                source,
            })?
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
    Ok(keys(membership).await?.into_iter().collect())
}
