//! `distributor weights list|set|clear`: the operators' weight overrides in the `logdist_weights`
//! bucket (see [`crate::weight_overrides`]), without the `nats` CLI.
//!
//! `set` checks the value before writing it (a bad one is a usage error, exit 2), `clear`
//! deletes the key, `list` shows every analyzer online and every override: the weight it
//! announces, the override, and the effective weight routing uses. Every replica polls the
//! bucket and applies a change within a second, as a new epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use logdist::protocol::stats::MemberRecord;
use logdist::{open_or_create_bucket, BucketError, ConnectError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{WeightsAction, WeightsArgs};
use crate::core::WeightsPoller;
use crate::membership_mirror::{read_members, MEMBERSHIP_BUCKET_DESCRIPTION};
use crate::weight_overrides::parse_weight;

/// Description given to the overrides bucket when this command creates it.
pub const WEIGHTS_BUCKET_DESCRIPTION: &str =
    "logdist: operator weight overrides (key = analyzer id, value = weight; 0 drains)";

/// Why `distributor weights` failed (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("cannot {action} in KV bucket {bucket:?}: {detail}")]
    Kv {
        action: &'static str,
        bucket: String,
        detail: String,
    },
}

/// One analyzer of `weights list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightRow {
    pub id: String,
    /// In the membership bucket now.
    pub online: bool,
    /// The weight it announces (`None` while offline).
    pub announced: Option<f64>,
    /// The override in `logdist_weights`, if any.
    #[serde(rename = "override")]
    pub override_weight: Option<f64>,
    /// A value in the bucket that the replicas refuse (not a weight), shown as it is.
    pub refused_value: Option<String>,
    /// What routing uses: the override, else the announced weight (`None` while offline).
    pub effective: Option<f64>,
}

/// Joins the membership records and the raw override entries. Pure, for unit tests.
pub fn rows(members: &[MemberRecord], overrides: &BTreeMap<String, String>) -> Vec<WeightRow> {
    let ids: BTreeSet<&str> = members
        .iter()
        .map(|m| m.id.as_str())
        .chain(overrides.keys().map(String::as_str))
        .collect();
    ids.into_iter()
        .map(|id| {
            let announced = members.iter().find(|m| m.id == id).map(|m| m.weight);
            let raw = overrides.get(id);
            let parsed = raw.map(|v| parse_weight(id, v));
            let override_weight = parsed.as_ref().and_then(|p| p.as_ref().ok().copied());
            let refused_value = match (&parsed, raw) {
                (Some(Err(_)), Some(raw)) => Some(raw.clone()),
                _ => None,
            };
            WeightRow {
                id: id.to_string(),
                online: announced.is_some(),
                announced,
                override_weight,
                refused_value,
                effective: announced.map(|a| override_weight.unwrap_or(a)),
            }
        })
        .collect()
}

/// The table of `weights list`.
pub fn render(rows: &[WeightRow]) -> String {
    let mut out = format!(
        "{:<16} {:>7} {:>10} {:>10} {:>10}\n",
        "analyzer", "online", "announced", "override", "effective"
    );
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v}"));
    for row in rows {
        let override_text = match &row.refused_value {
            Some(raw) => format!("refused {raw:?}"),
            None => num(row.override_weight),
        };
        let effective = match row.effective {
            Some(0.0) => "0 (drained)".to_string(),
            other => num(other),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:>10} {:>10} {:>10}",
            row.id,
            if row.online { "yes" } else { "no" },
            num(row.announced),
            override_text,
            effective
        );
    }
    if rows.is_empty() {
        out.push_str("(no analyzer online and no override)\n");
    }
    out
}

/// Runs `distributor weights …`.
pub async fn run(args: WeightsArgs, shutdown: CancellationToken) -> Result<(), WeightsError> {
    let (nats, names) = match &args.action {
        WeightsAction::List { target, .. } => (&target.nats, &target.names),
        WeightsAction::Set { target, .. } | WeightsAction::Clear { target, .. } => {
            (&target.nats, &target.names)
        }
    };
    let connection = match logdist::connect(nats, "distributor weights", &shutdown).await {
        Ok(c) => c,
        Err(ConnectError::Cancelled { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let js = async_nats::jetstream::new(connection.client.clone());
    let bucket = &names.weights_bucket;
    let store = open_or_create_bucket(&js, bucket, WEIGHTS_BUCKET_DESCRIPTION).await?;
    let kv_error = |action: &'static str, e: &dyn std::fmt::Display| WeightsError::Kv {
        action,
        bucket: bucket.clone(),
        detail: e.to_string(),
    };
    match &args.action {
        WeightsAction::Set { id, weight, .. } => {
            store
                .put(id, weight.to_string().into())
                .await
                .map_err(|e| kv_error("write the override", &e))?;
            let what = if *weight == 0.0 {
                "drained (online, routed nothing new)".to_string()
            } else {
                format!("effective weight {weight}")
            };
            println!("analyzer {id}: {what}; every replica applies it within a second");
        }
        WeightsAction::Clear { id, .. } => {
            store
                .delete(id)
                .await
                .map_err(|e| kv_error("delete the override", &e))?;
            println!("analyzer {id}: override cleared; it is routed by the weight it announces");
        }
        WeightsAction::List { json, .. } => {
            let members_kv =
                open_or_create_bucket(&js, &names.membership_bucket, MEMBERSHIP_BUCKET_DESCRIPTION)
                    .await?;
            let members = read_members(&members_kv)
                .await
                .map_err(|e| kv_error("read the membership", &e))?;
            let overrides: BTreeMap<String, String> = WeightsPoller::read_current(&store)
                .await
                .map_err(|e| kv_error("read the overrides", &e))?
                .into_iter()
                .map(|update| {
                    let value = update.value.unwrap_or_default();
                    (update.key, String::from_utf8_lossy(&value).into_owned())
                })
                .collect();
            let rows = rows(&members, &overrides);
            if *json {
                println!(
                    "{}",
                    serde_json::to_string(&rows).expect("plain values serialize")
                );
            } else {
                print!("{}", render(&rows));
            }
        }
    }
    tokio::time::timeout(std::time::Duration::from_secs(5), connection.client.flush())
        .await
        .ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, weight: f64) -> MemberRecord {
        MemberRecord {
            id: id.into(),
            weight,
            instances: vec!["i".into()],
            interval_ms: 1000,
            since_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn rows_join_members_and_overrides() {
        let members = [member("1", 0.5), member("2", 0.3), member("3", 0.2)];
        let overrides: BTreeMap<String, String> =
            [("2", "0"), ("3", "0.05"), ("4", "2"), ("1", "much")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let rows = rows(&members, &overrides);
        let effective: Vec<_> = rows.iter().map(|r| (r.id.as_str(), r.effective)).collect();
        assert_eq!(
            effective,
            [
                ("1", Some(0.5)),
                ("2", Some(0.0)),
                ("3", Some(0.05)),
                ("4", None)
            ]
        );
        assert_eq!(rows[0].refused_value.as_deref(), Some("much"));
        assert_eq!(rows[3].override_weight, Some(2.0));
        let table = render(&rows);
        assert!(table.contains("refused \"much\""), "{table}");
        assert!(table.contains("0 (drained)"), "{table}");
    }
}
