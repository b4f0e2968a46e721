//! Reading what the processes under test wrote to the KV buckets (default names, see
//! [`logdist::Names`]): one distributor replica's or analyzer instance's stats record, one
//! membership record.

use async_nats::jetstream::{self, kv};
use logdist::protocol::stats::{
    analyzer_key, distributor_key, AnalyzerStats, DistributorStats, MemberRecord,
};
use logdist::Names;

use crate::wait_until;
use crate::WAIT;

/// The stats bucket, once a distributor or analyzer has created it.
pub async fn stats_bucket(js: &jetstream::Context) -> kv::Store {
    js.get_key_value(Names::default().stats_bucket)
        .await
        .expect("stats bucket")
}

/// The membership bucket, once a distributor has created it.
pub async fn membership_bucket(js: &jetstream::Context) -> kv::Store {
    js.get_key_value(Names::default().membership_bucket)
        .await
        .expect("membership bucket")
}

/// Distributor replica `replica`'s stats record now, if it wrote one.
pub async fn distributor_stats(stats: &kv::Store, replica: &str) -> Option<DistributorStats> {
    let value = stats.get(distributor_key(replica)).await.ok()??;
    serde_json::from_slice(&value).ok()
}

/// The stats record of analyzer `id`'s instance `i<id>` (the default instance of
/// [`AnalyzerOptions`](crate::AnalyzerOptions)) now, if it wrote one.
pub async fn analyzer_stats(stats: &kv::Store, id: &str) -> Option<AnalyzerStats> {
    let value = stats
        .get(analyzer_key(id, &format!("i{id}")))
        .await
        .ok()??;
    serde_json::from_slice(&value).ok()
}

/// Analyzer `id`'s membership record now, if it is online.
pub async fn member_record(members: &kv::Store, id: &str) -> Option<MemberRecord> {
    let value = members.get(id).await.ok()??;
    serde_json::from_slice(&value).ok()
}

/// Waits until replica `replica`'s stats satisfy `check`, and returns them.
pub async fn wait_distributor_stats(
    stats: &kv::Store,
    replica: &str,
    what: &str,
    check: impl Fn(&DistributorStats) -> bool,
) -> DistributorStats {
    let check = &check;
    wait_until(what, WAIT, || async move {
        distributor_stats(stats, replica)
            .await
            .is_some_and(|s| check(&s))
    })
    .await;
    distributor_stats(stats, replica).await.unwrap()
}
