//! Value schemas of the KV buckets (see `docs/protocol.md`):
//!
//! - `analyzers` (membership): key `<analyzer-id>` → [`MemberRecord`], put when an analyzer joins
//!   or changes weight, deleted when it leaves.
//! - `logdist_weights` (operator overrides): key `<analyzer-id>` → the weight as a decimal number
//!   (`0.05`; `0` drains the analyzer), read by every distributor replica (no struct: the value
//!   is the number's text).
//! - `logdist_stats` (live counters): key `distributor.<replica>` → [`DistributorStats`], written
//!   by each distributor replica; key `analyzer.<id>.<instance>` → [`AnalyzerStats`], written by
//!   each analyzer instance. Every writer owns its keys, so replicas never overwrite each other's
//!   counts and a reader adds them up.
//!
//! All other values are JSON; counters are cumulative since the writer started.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Key prefix of distributor records in the stats bucket.
pub const DISTRIBUTOR_KEY_PREFIX: &str = "distributor";
/// Key prefix of analyzer records in the stats bucket.
pub const ANALYZER_KEY_PREFIX: &str = "analyzer";

/// Stats key of a distributor replica: `distributor.<replica>`.
pub fn distributor_key(replica: &str) -> String {
    format!("{DISTRIBUTOR_KEY_PREFIX}.{replica}")
}

/// Stats key of an analyzer instance: `analyzer.<id>.<instance>`.
pub fn analyzer_key(id: &str, instance: &str) -> String {
    format!("{ANALYZER_KEY_PREFIX}.{id}.{instance}")
}

/// Turns any string into a valid KV key token (letters, digits, `-`, `_`), e.g. a host name.
pub fn key_token(raw: &str) -> String {
    let token: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_string()
    } else {
        token
    }
}

/// Membership record of one analyzer online now (bucket `analyzers`, key = analyzer id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: String,
    /// Weight in force (the newest instance's announcement).
    pub weight: f64,
    /// Instances heartbeating for this id.
    pub instances: Vec<String>,
    /// Heartbeat interval announced by the newest instance, in milliseconds.
    pub interval_ms: u64,
    /// When the analyzer came online, unix milliseconds.
    pub since_ms: u64,
    /// When this record was written, unix milliseconds.
    pub updated_at_ms: u64,
}

/// Live counters of one distributor replica (bucket `logdist_stats`, key `distributor.<replica>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DistributorStats {
    pub replica: String,
    /// `at-most-once` or `at-least-once`.
    pub delivery: String,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    /// Payloads taken from the ingest subjects.
    pub received_packets: u64,
    /// Log messages in them (invalid elements included; whole-payload rejects count 0).
    pub received_messages: u64,
    pub received_bytes: u64,
    /// Packets published to an analyzer (a mixed packet's valid part counts once).
    pub routed_packets: u64,
    pub routed_messages: u64,
    /// Dead-letter publications (whole payloads and single invalid elements).
    pub deadletter_packets: u64,
    /// Log messages dead-lettered (a whole-payload reject counts as one).
    pub deadletter_messages: u64,
    /// Dead-letter publications by reason code.
    pub deadletter_reasons: BTreeMap<String, u64>,
    /// Packets held now because no analyzer is online (gauge).
    pub held_packets: u64,
    pub held_messages: u64,
    pub held_bytes: u64,
    /// Packets that ever had to be held (counter).
    pub held_total: u64,
    /// Packets dead-lettered because the hold queue was full (counter).
    pub held_overflow: u64,
    /// Packets sent again to another analyzer after a failure (at-least-once mode).
    pub redelivered: u64,
    /// At-most-once: packets the ingest connection dropped because the router fell behind
    /// (its buffer, `--ingest-buffer`, was full). A lower bound while running (packets still
    /// in the buffer are not counted as dropped until they could be), exact in the final stats.
    pub ingest_dropped_packets: u64,
    /// NATS messages to analyzers that carried a batch of two packets or more (coalescing,
    /// `--linger`); `batched_packets` / `batches_sent` is the mean packets per batch. Packets
    /// not in a batch went alone (`routed_packets` counts both).
    pub batches_sent: u64,
    /// Packets that went in those batches.
    pub batched_packets: u64,
    pub slow_consumer_events: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    /// Control messages rejected (bad weight, interval, id…).
    pub bad_heartbeats: u64,
    /// Entries of the weight-overrides bucket refused (not a weight, or not an analyzer id).
    pub refused_weight_overrides: u64,
    /// At-least-once: packets sent to analyzers and not yet acknowledged (gauge; 0 at-most-once).
    pub in_flight_packets: u64,
    /// At-least-once: their payload bytes (gauge).
    pub in_flight_bytes: u64,
    /// Routed log messages per second over the last stats interval.
    pub messages_per_sec: f64,
    /// Membership changes seen since start; shares restart at each change.
    pub epoch: u64,
    pub epoch_started_ms: u64,
    /// Key affinity (`--affinity`): `none`, `agent`, `header:NAME` or `field:NAME`.
    pub affinity: String,
    /// `--affinity-slack` (ε); 0 without affinity.
    pub affinity_slack: f64,
    /// With affinity: packets that had no key (balanced without affinity).
    pub keyless_packets: u64,
    /// With affinity: more distinct keys came this epoch than the replica counts (100,000), so
    /// `keys_held` is a lower bound.
    pub keys_saturated: bool,
    /// Per-analyzer routing counters of this replica, by analyzer id.
    pub analyzers: BTreeMap<String, RouteStats>,
}

/// What one distributor replica routed to one analyzer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteStats {
    /// Online now (an analyzer that left keeps its all-time counts here).
    pub online: bool,
    /// The effective weight routing uses: the operator's override if any, else the announced
    /// weight; 0 while drained or offline.
    pub weight: f64,
    /// The weight the analyzer announces (0 when offline).
    pub announced_weight: f64,
    /// weight / sum of weights online now (0 when offline).
    pub target_share: f64,
    pub messages: u64,
    pub packets: u64,
    pub bytes: u64,
    /// messages / all messages this replica routed.
    pub actual_share: f64,
    /// Since the last membership change.
    pub epoch_messages: u64,
    pub epoch_packets: u64,
    pub epoch_share: f64,
    /// With affinity: distinct keys seen this epoch whose first choice is this analyzer.
    pub keys_held: u64,
    /// With affinity: packets (delivered anywhere) whose key ranks this analyzer first.
    pub keyed_packets: u64,
    /// With affinity: of `keyed_packets`, those delivered here.
    pub kept_packets: u64,
    /// With affinity: `kept_packets / keyed_packets` ("affinity kept"); absent before any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_kept: Option<f64>,
}

/// Live counters of one analyzer instance (bucket `logdist_stats`, key `analyzer.<id>.<instance>`):
/// what it actually received, as opposed to what was routed to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalyzerStats {
    pub id: String,
    pub instance: String,
    pub weight: f64,
    /// `up` while running, `down` after it withdrew.
    pub state: String,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    /// Log messages analyzed (after de-duplication).
    pub messages: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Packets dropped as repeats of one already analyzed (at-least-once mode).
    pub duplicates: u64,
    /// NATS messages that were batches of packets (docs/protocol.md, "Batches"); each of their
    /// packets is counted in `packets` as if it had come alone.
    pub batches: u64,
    /// Packets that arrived but did not parse (should be 0: the distributor validates).
    pub invalid_packets: u64,
    /// Messages by canonical severity name (TRACE … FATAL).
    pub by_severity: BTreeMap<String, u64>,
    /// (ERROR + FATAL) / messages.
    pub error_rate: f64,
    /// The busiest sources, most messages first (at most 5).
    pub top_sources: Vec<SourceCount>,
    /// Messages per second over the last report interval.
    pub messages_per_sec: f64,
    /// End-to-end latency from `Logdist-Sent-At`, when agents set it.
    pub latency: Option<LatencySummary>,
    /// HTTP analyzers (`--forward-http`) only: what the requests to the endpoint did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardStats>,
}

/// What an HTTP analyzer sent to its endpoint (or a process analyzer to its child), cumulative
/// since it started. `url` is the endpoint, or `exec: <command>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardStats {
    pub url: String,
    /// `packet`, `ndjson` or `message`.
    pub format: String,
    /// Whether the endpoint is healthy now (the analyzer is announced only while it is).
    pub healthy: bool,
    /// Requests sent, retries included.
    pub attempts: u64,
    /// Of those, retries (after a connection error, a time-out, a 5xx or a 429).
    pub retries: u64,
    /// Requests answered 2xx.
    pub delivered_requests: u64,
    /// Requests the endpoint refused (4xx): dead-lettered with the status.
    pub rejected_requests: u64,
    /// Requests given up after `--forward-retry-for`.
    pub failed_requests: u64,
    /// Log messages this analyzer published to the dead-letter subject.
    pub deadletter_messages: u64,
    /// Packets sent to the endpoint and not settled yet (gauge).
    pub in_flight_packets: u64,
    /// Process analyzers (`--exec`): lines written to the child.
    pub lines: u64,
    /// Process analyzers: children started again after one ended.
    pub restarts: u64,
    /// Process analyzers: packets the child did not take (or acknowledge) before it ended.
    pub failed_packets: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCount {
    pub source: String,
    pub messages: u64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Packets measured.
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Current time as unix milliseconds.
pub fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(distributor_key("host-1_42"), "distributor.host-1_42");
        assert_eq!(analyzer_key("2", "x9"), "analyzer.2.x9");
        assert_eq!(key_token("web.example.com-17"), "web_example_com-17");
        assert_eq!(key_token(""), "_");
    }

    #[test]
    fn distributor_stats_round_trip() {
        let mut stats = DistributorStats {
            replica: "r1".into(),
            delivery: "at-most-once".into(),
            received_packets: 10,
            received_messages: 100,
            ..Default::default()
        };
        stats.deadletter_reasons.insert("not_json".into(), 2);
        stats.analyzers.insert(
            "1".into(),
            RouteStats {
                online: true,
                weight: 0.5,
                target_share: 1.0,
                messages: 98,
                packets: 9,
                ..Default::default()
            },
        );
        let json = serde_json::to_vec(&stats).unwrap();
        let back: DistributorStats = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, stats);
    }

    #[test]
    fn analyzer_stats_round_trip_and_tolerates_missing_fields() {
        let mut stats = AnalyzerStats {
            id: "1".into(),
            instance: "i".into(),
            messages: 5,
            latency: Some(LatencySummary {
                count: 1,
                p50_us: 10,
                p99_us: 20,
                max_us: 30,
            }),
            top_sources: vec![SourceCount {
                source: "db".into(),
                messages: 5,
            }],
            ..Default::default()
        };
        stats.by_severity.insert("INFO".into(), 5);
        let json = serde_json::to_vec(&stats).unwrap();
        assert_eq!(
            serde_json::from_slice::<AnalyzerStats>(&json).unwrap(),
            stats
        );
        // Readers accept records written by an older or newer writer.
        let old: AnalyzerStats =
            serde_json::from_str(r#"{"id":"1","messages":3,"new_field":1}"#).unwrap();
        assert_eq!(old.messages, 3);
    }

    #[test]
    fn member_record_round_trip() {
        let rec = MemberRecord {
            id: "1".into(),
            weight: 0.4,
            instances: vec!["a".into()],
            interval_ms: 1000,
            since_ms: 1,
            updated_at_ms: 2,
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<MemberRecord>(&json).unwrap(), rec);
    }
}
