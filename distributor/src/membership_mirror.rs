//! [`MembershipMirror`]: mirrors membership changes into the `analyzers` KV bucket (put on join
//! or weight/instance change, delete on leave), so `nats kv watch analyzers` shows them live and a
//! starting replica can route at once. It runs as a task of its own, fed in order through a
//! channel, so KV round trips never stall routing and the writes to one key keep their order.
//!
//! Also reads the bucket at start ([`read_members`]).

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use logdist::protocol::stats::MemberRecord;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Description given to the membership bucket when a distributor creates it.
pub(crate) const MEMBERSHIP_BUCKET_DESCRIPTION: &str =
    "logdist: analyzers online now (one key per analyzer id)";

enum Op {
    Put(MemberRecord),
    Delete(String),
}

/// Handle of the mirror task.
pub struct MembershipMirror {
    tx: mpsc::UnboundedSender<Op>,
    task: JoinHandle<()>,
}

impl MembershipMirror {
    pub fn spawn(store: kv::Store) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Op>();
        let task = tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                let (key, result) = match op {
                    Op::Put(record) => {
                        let json = serde_json::to_vec(&record).expect("member records serialize");
                        let result = store.put(&record.id, json.into()).await.map(|_| ());
                        (record.id, result.map_err(|e| e.to_string()))
                    }
                    Op::Delete(id) => {
                        let result = store.delete(&id).await;
                        (id, result.map_err(|e| e.to_string()))
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(analyzer_id = %key, error = %e, "cannot update the membership bucket");
                }
            }
        });
        MembershipMirror { tx, task }
    }

    /// Records that analyzer `record.id` is online with this record.
    pub fn put(&self, record: MemberRecord) {
        let _ = self.tx.send(Op::Put(record));
    }

    /// Records that analyzer `id` went offline.
    pub fn delete(&self, id: &str) {
        let _ = self.tx.send(Op::Delete(id.to_string()));
    }

    /// Waits (at most `timeout`) for the queued writes.
    pub async fn finish(self, timeout: Duration) {
        let MembershipMirror { tx, task } = self;
        drop(tx);
        if tokio::time::timeout(timeout, task).await.is_err() {
            tracing::warn!(?timeout, "membership bucket updates not finished in time");
        }
    }
}

/// Every record in the membership bucket; undecodable ones are skipped with a warning.
pub async fn read_members(store: &kv::Store) -> Result<Vec<MemberRecord>, String> {
    let mut keys = store.keys().await.map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        let Some(value) = store.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        match serde_json::from_slice::<MemberRecord>(&value) {
            Ok(record) if record.id == key => records.push(record),
            Ok(record) => {
                tracing::warn!(key = %key, id = %record.id, "membership record under the wrong key; ignored")
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "undecodable membership record; ignored")
            }
        }
    }
    Ok(records)
}
