//! Prometheus metrics of the distributor and the analyzer, rendered from the very stats records
//! they write to the `logdist_stats` bucket, so a scrape and a KV read of the same moment can
//! never disagree.
//!
//! Each binary keeps the newest record it handed to its KV writer in a [`LatestSnapshot`]; the
//! collectors here ([`DistributorCollector`], [`AnalyzerCollector`]) turn that record into
//! Prometheus families at scrape time, through `prometheus-client`'s [`Collector`] API. Nothing
//! is counted twice, and the hot paths touch no metric at all: they keep their plain counters,
//! and a scrape costs one record's worth of formatting. The one live value is the NATS
//! connection state ([`NatsCollector`]), which a stats record cannot carry.
//!
//! Names follow the Prometheus conventions (`logdist_<binary>_<what>_<unit>_total` for counters,
//! base units, low-cardinality labels: `analyzer`, `reason`, `severity`, `window`). Every metric
//! is listed in `docs/metrics.md`.

use std::sync::{Arc, Mutex};

use async_nats::connection::State;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::connect::{Connection, ConnectionEvents};
use crate::protocol::stats::{AnalyzerStats, DistributorStats};

/// The newest stats record of a process, shared between the loop that makes it and the scrapes.
/// Publishing replaces the pointer under a short lock; a scrape clones the `Arc`.
#[derive(Debug)]
pub struct LatestSnapshot<T>(Arc<Mutex<Option<Arc<T>>>>);

impl<T> Clone for LatestSnapshot<T> {
    fn clone(&self) -> Self {
        LatestSnapshot(self.0.clone())
    }
}

impl<T> Default for LatestSnapshot<T> {
    fn default() -> Self {
        LatestSnapshot(Arc::new(Mutex::new(None)))
    }
}

impl<T> LatestSnapshot<T> {
    /// Makes `record` the one the next scrape renders.
    pub fn publish(&self, record: T) {
        let record = Arc::new(record);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// The newest record, or `None` before the first.
    pub fn get(&self) -> Option<Arc<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Upper bounds (seconds) of the analyzer's latency histogram buckets: 100 µs to 60 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// End-to-end latency as a Prometheus histogram: packets per bucket of
/// [`LATENCY_BUCKETS_SECONDS`] (not cumulative; the last entry counts everything above the last
/// bound), and the sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyBuckets {
    /// `LATENCY_BUCKETS_SECONDS.len() + 1` counts.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl LatencyBuckets {
    /// Packets measured.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What an analyzer's scrape renders: the stats record it writes to KV, and the latency
/// histogram taken at the same moment (the record keeps only its percentiles).
#[derive(Debug, Clone, Default)]
pub struct AnalyzerSnapshot {
    pub stats: AnalyzerStats,
    pub latency: LatencyBuckets,
}

/// Writes families through a [`DescriptorEncoder`]; names are given without `_total`, which
/// the encoder adds to counters.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let counter = ConstCounter::new(value);
        let metric = self
            .0
            .encode_descriptor(name, help, None, counter.metric_type())?;
        counter.encode(metric)
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let gauge = ConstGauge::new(value);
        let metric = self
            .0
            .encode_descriptor(name, help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }

    /// One family; `samples` yields (label set, value).
    fn family<L: EncodeLabelSet, V>(
        &mut self,
        name: &str,
        help: &str,
        metric_type: MetricType,
        samples: impl IntoIterator<Item = (L, V)>,
        encode: impl Fn(V, MetricEncoder) -> std::fmt::Result,
    ) -> std::fmt::Result {
        let mut metric = self.0.encode_descriptor(name, help, None, metric_type)?;
        for (labels, value) in samples {
            encode(value, metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A counter family with one label; `samples` yields (label value, value).
    fn labelled_counter<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        samples: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> std::fmt::Result {
        let samples = samples.into_iter().map(|(v, n)| ([(label, v)], n));
        self.family(name, help, MetricType::Counter, samples, |n, m| {
            ConstCounter::new(n).encode(m)
        })
    }

    /// A gauge family with one label; `samples` yields (label value, value).
    fn labelled_gauge<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        samples: impl IntoIterator<Item = (&'v str, f64)>,
    ) -> std::fmt::Result {
        let samples = samples.into_iter().map(|(v, x)| ([(label, v)], x));
        self.family(name, help, MetricType::Gauge, samples, |x, m| {
            ConstGauge::new(x).encode(m)
        })
    }

    /// `<name>{k1="v1",k2="v2"} 1`: who is reporting, as labels (the Prometheus "info" idiom).
    fn info(&mut self, name: &str, help: &str, labels: &[(&str, &str)]) -> std::fmt::Result {
        let samples = [(labels.to_vec(), 1i64)];
        self.family(name, help, MetricType::Gauge, samples, |x, m| {
            ConstGauge::new(x).encode(m)
        })
    }
}

fn millis_to_seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Renders a distributor replica's [`DistributorStats`] (the newest one offered to the stats
/// bucket). Before the first record it renders nothing.
#[derive(Debug, Clone, Default)]
pub struct DistributorCollector {
    pub latest: LatestSnapshot<DistributorStats>,
}

impl Collector for DistributorCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = self.latest.get() else {
            return Ok(());
        };
        encode_distributor(&mut Families(encoder), &s)
    }
}

fn encode_distributor(f: &mut Families, s: &DistributorStats) -> std::fmt::Result {
    const P: &str = "logdist_distributor";
    f.info(
        &format!("{P}_info"),
        "This replica: its id and delivery mode.",
        &[("replica", &s.replica), ("delivery", &s.delivery)],
    )?;
    f.gauge(
        &format!("{P}_start_time_seconds"),
        "When this replica started, unix seconds.",
        millis_to_seconds(s.started_at_ms),
    )?;
    f.gauge(
        &format!("{P}_stats_updated_timestamp_seconds"),
        "When the stats record rendered here was taken (the same record is in the logdist_stats bucket), unix seconds.",
        millis_to_seconds(s.updated_at_ms),
    )?;
    f.counter(
        &format!("{P}_received_packets"),
        "Payloads taken from the ingest subjects.",
        s.received_packets,
    )?;
    f.counter(
        &format!("{P}_received_messages"),
        "Log messages in the payloads taken (invalid elements included).",
        s.received_messages,
    )?;
    f.counter(
        &format!("{P}_received_bytes"),
        "Payload bytes taken from the ingest subjects.",
        s.received_bytes,
    )?;
    f.counter(
        &format!("{P}_routed_packets"),
        "Packets published to an analyzer.",
        s.routed_packets,
    )?;
    f.counter(
        &format!("{P}_routed_messages"),
        "Log messages routed to analyzers (at-least-once: acknowledged by them).",
        s.routed_messages,
    )?;
    f.labelled_counter(
        &format!("{P}_deadletter_packets"),
        "Dead-letter publications (whole payloads and single invalid elements), by reason code.",
        "reason",
        s.deadletter_reasons.iter().map(|(k, v)| (k.as_str(), *v)),
    )?;
    f.counter(
        &format!("{P}_deadletter_messages"),
        "Log messages dead-lettered (a whole-payload reject counts as one).",
        s.deadletter_messages,
    )?;
    f.gauge(
        &format!("{P}_hold_queue_packets"),
        "Packets held now because no analyzer is online.",
        s.held_packets as f64,
    )?;
    f.gauge(
        &format!("{P}_hold_queue_messages"),
        "Log messages in the packets held now.",
        s.held_messages as f64,
    )?;
    f.gauge(
        &format!("{P}_hold_queue_bytes"),
        "Payload bytes held now.",
        s.held_bytes as f64,
    )?;
    f.counter(
        &format!("{P}_held_packets"),
        "Packets that ever had to be held.",
        s.held_total,
    )?;
    f.counter(
        &format!("{P}_hold_overflow_packets"),
        "Packets dead-lettered because the hold queue was full.",
        s.held_overflow,
    )?;
    f.counter(
        &format!("{P}_redelivered_packets"),
        "Packets sent again to another analyzer after a failed delivery (at-least-once).",
        s.redelivered,
    )?;
    f.gauge(
        &format!("{P}_in_flight_packets"),
        "At-least-once: packets sent to analyzers and not yet acknowledged.",
        s.in_flight_packets as f64,
    )?;
    f.gauge(
        &format!("{P}_in_flight_bytes"),
        "At-least-once: payload bytes sent to analyzers and not yet acknowledged.",
        s.in_flight_bytes as f64,
    )?;
    f.counter(
        &format!("{P}_batches_sent"),
        "NATS messages to analyzers that carried two packets or more (coalescing).",
        s.batches_sent,
    )?;
    f.counter(
        &format!("{P}_batched_packets"),
        "Packets sent to analyzers inside batches (divide by batches_sent for packets per batch).",
        s.batched_packets,
    )?;
    f.counter(
        &format!("{P}_ingest_dropped_packets"),
        "At-most-once: packets the ingest connection dropped because the router fell behind.",
        s.ingest_dropped_packets,
    )?;
    f.counter(
        &format!("{P}_bad_control_messages"),
        "Control messages rejected (bad weight, interval, id...).",
        s.bad_heartbeats,
    )?;
    f.counter(
        &format!("{P}_refused_weight_overrides"),
        "Entries of the weight-overrides bucket refused (not a weight, or not an analyzer id).",
        s.refused_weight_overrides,
    )?;
    f.gauge(
        &format!("{P}_membership_epoch"),
        "Routing epochs since start: one per membership or weight change.",
        s.epoch as f64,
    )?;
    f.gauge(
        &format!("{P}_epoch_start_time_seconds"),
        "When the current routing epoch began, unix seconds.",
        millis_to_seconds(s.epoch_started_ms),
    )?;
    let online: Vec<_> = s.analyzers.iter().filter(|(_, r)| r.online).collect();
    f.gauge(
        &format!("{P}_analyzers_online"),
        "Analyzers online now, as this replica sees them.",
        online.len() as f64,
    )?;
    let all = || s.analyzers.iter().map(|(id, r)| (id.as_str(), r));
    let on = || online.iter().map(|(id, r)| (id.as_str(), *r));
    f.labelled_gauge(
        &format!("{P}_analyzer_online"),
        "1 while the analyzer is online, 0 after it left (its all-time counts stay).",
        "analyzer",
        all().map(|(id, r)| (id, if r.online { 1.0 } else { 0.0 })),
    )?;
    f.labelled_gauge(
        &format!("{P}_analyzer_weight"),
        "Weight the analyzer announces in its heartbeats.",
        "analyzer",
        on().map(|(id, r)| (id, r.announced_weight)),
    )?;
    f.labelled_gauge(
        &format!("{P}_analyzer_effective_weight"),
        "Weight routing uses: the operator's override from the weights bucket, else the announced weight; 0 drains.",
        "analyzer",
        on().map(|(id, r)| (id, r.weight)),
    )?;
    f.labelled_gauge(
        &format!("{P}_analyzer_target_share_ratio"),
        "Share of log messages the analyzer should receive: its weight over the sum online.",
        "analyzer",
        on().map(|(id, r)| (id, r.target_share)),
    )?;
    f.family(
        &format!("{P}_analyzer_actual_share_ratio"),
        "Share of this replica's routed log messages the analyzer received: window=all since start, window=epoch since the current epoch began.",
        MetricType::Gauge,
        on().flat_map(|(id, r)| {
            [
                ([("analyzer", id), ("window", "all")], r.actual_share),
                ([("analyzer", id), ("window", "epoch")], r.epoch_share),
            ]
        }),
        |x, m| ConstGauge::new(x).encode(m),
    )?;
    f.labelled_counter(
        &format!("{P}_analyzer_routed_messages"),
        "Log messages this replica routed to the analyzer (at-least-once: acknowledged).",
        "analyzer",
        all().map(|(id, r)| (id, r.messages)),
    )?;
    f.labelled_counter(
        &format!("{P}_analyzer_routed_packets"),
        "Packets this replica routed to the analyzer.",
        "analyzer",
        all().map(|(id, r)| (id, r.packets)),
    )?;
    f.labelled_counter(
        &format!("{P}_analyzer_routed_bytes"),
        "Payload bytes this replica routed to the analyzer.",
        "analyzer",
        all().map(|(id, r)| (id, r.bytes)),
    )?;
    if !s.affinity.is_empty() && s.affinity != "none" {
        encode_affinity(f, s)?;
    }
    nats_event_counters(f, s.disconnects, s.reconnects, s.slow_consumer_events)?;
    Ok(())
}

/// The families of `--affinity` (only rendered by a replica that routes with it).
fn encode_affinity(f: &mut Families, s: &DistributorStats) -> std::fmt::Result {
    const P: &str = "logdist_distributor";
    f.info(
        &format!("{P}_affinity_info"),
        "Key affinity of this replica: where keys come from (--affinity) and the slack (--affinity-slack).",
        &[
            ("mode", &s.affinity),
            ("slack", &s.affinity_slack.to_string()),
        ],
    )?;
    f.counter(
        &format!("{P}_keyless_packets"),
        "Packets routed without an affinity key (balanced without affinity).",
        s.keyless_packets,
    )?;
    let on = || s.analyzers.iter().filter(|(_, r)| r.online);
    f.labelled_gauge(
        &format!("{P}_analyzer_keys_held"),
        "Distinct keys this epoch whose first choice is the analyzer (a lower bound when logdist_distributor_keys_saturated is 1).",
        "analyzer",
        on().map(|(id, r)| (id.as_str(), r.keys_held as f64)),
    )?;
    f.gauge(
        &format!("{P}_keys_saturated"),
        "1 when more distinct keys came this epoch than the replica counts (100,000).",
        if s.keys_saturated { 1.0 } else { 0.0 },
    )?;
    let all = || s.analyzers.iter().map(|(id, r)| (id.as_str(), r));
    f.labelled_counter(
        &format!("{P}_analyzer_keyed_packets"),
        "Packets (delivered anywhere) whose key ranks the analyzer first.",
        "analyzer",
        all().map(|(id, r)| (id, r.keyed_packets)),
    )?;
    f.labelled_counter(
        &format!("{P}_analyzer_kept_packets"),
        "Of the packets whose key ranks the analyzer first, those it received (affinity kept).",
        "analyzer",
        all().map(|(id, r)| (id, r.kept_packets)),
    )?;
    Ok(())
}

/// Renders an analyzer instance's [`AnalyzerSnapshot`]. Before the first record it renders
/// nothing.
#[derive(Debug, Clone, Default)]
pub struct AnalyzerCollector {
    pub latest: LatestSnapshot<AnalyzerSnapshot>,
}

impl Collector for AnalyzerCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = self.latest.get() else {
            return Ok(());
        };
        encode_analyzer(&mut Families(encoder), &s)
    }
}

fn encode_analyzer(f: &mut Families, snapshot: &AnalyzerSnapshot) -> std::fmt::Result {
    const P: &str = "logdist_analyzer";
    let s = &snapshot.stats;
    f.info(
        &format!("{P}_info"),
        "This analyzer instance: its analyzer id and instance name.",
        &[("analyzer", &s.id), ("instance_name", &s.instance)],
    )?;
    f.gauge(
        &format!("{P}_weight"),
        "Weight this instance announces.",
        s.weight,
    )?;
    f.gauge(
        &format!("{P}_start_time_seconds"),
        "When this instance started, unix seconds.",
        millis_to_seconds(s.started_at_ms),
    )?;
    f.gauge(
        &format!("{P}_stats_updated_timestamp_seconds"),
        "When the stats record rendered here was taken (the same record is in the logdist_stats bucket), unix seconds.",
        millis_to_seconds(s.updated_at_ms),
    )?;
    f.labelled_counter(
        &format!("{P}_messages"),
        "Log messages analyzed (after de-duplication), by severity.",
        "severity",
        s.by_severity.iter().map(|(k, v)| (k.as_str(), *v)),
    )?;
    f.counter(
        &format!("{P}_packets"),
        "Packets analyzed (after de-duplication).",
        s.packets,
    )?;
    f.counter(
        &format!("{P}_received_bytes"),
        "Payload bytes analyzed.",
        s.bytes,
    )?;
    f.counter(
        &format!("{P}_received_batches"),
        "NATS messages that were batches of packets (each packet also counts as received).",
        s.batches,
    )?;
    f.counter(
        &format!("{P}_duplicate_packets"),
        "Packets dropped as repeats of one already analyzed (at-least-once).",
        s.duplicates,
    )?;
    f.counter(
        &format!("{P}_invalid_packets"),
        "Packets that arrived but did not parse.",
        s.invalid_packets,
    )?;
    let latency = &snapshot.latency;
    let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_SECONDS
        .iter()
        .zip(&latency.counts)
        .map(|(le, n)| (*le, *n))
        .collect();
    buckets.push((f64::INFINITY, latency.counts.last().copied().unwrap_or(0)));
    let name = format!("{P}_latency_seconds");
    let mut metric = f.0.encode_descriptor(
        &name,
        "End-to-end latency of packets, from the agent's Logdist-Sent-At to their analysis.",
        None,
        MetricType::Histogram,
    )?;
    metric.encode_histogram::<NoLabelSet>(latency.sum_seconds, latency.count(), &buckets, None)
}

/// The live state of the process's NATS connection and, for a process whose stats record does
/// not carry them (the analyzer), its connection events.
#[derive(Clone)]
pub struct NatsCollector {
    connection: Arc<std::sync::OnceLock<Connection>>,
    with_events: bool,
}

impl std::fmt::Debug for NatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCollector")
            .field("connected", &self.connection.get().is_some())
            .field("with_events", &self.with_events)
            .finish()
    }
}

impl NatsCollector {
    /// Renders `logdist_nats_connected` (0 until [`connected`](Self::connected)); with
    /// `with_events`, also the connection's event counters.
    pub fn new(with_events: bool) -> Self {
        NatsCollector {
            connection: Arc::default(),
            with_events,
        }
    }

    /// The connection to report on, once the first connect succeeded.
    pub fn connected(&self, connection: &Connection) {
        let _ = self.connection.set(connection.clone());
    }
}

impl Collector for NatsCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut f = Families(encoder);
        let connection = self.connection.get();
        let connected = connection.is_some_and(|c| c.client.connection_state() == State::Connected);
        f.gauge(
            "logdist_nats_connected",
            "1 while connected to NATS, 0 before the first connect and while reconnecting.",
            if connected { 1.0 } else { 0.0 },
        )?;
        if self.with_events {
            let events = connection.map(|c| &*c.events);
            let count = |read: fn(&ConnectionEvents) -> u64| events.map_or(0, read);
            nats_event_counters(
                &mut f,
                count(ConnectionEvents::disconnects),
                count(ConnectionEvents::reconnects),
                count(ConnectionEvents::slow_consumer_events),
            )?;
        }
        Ok(())
    }
}

fn nats_event_counters(
    f: &mut Families,
    disconnects: u64,
    reconnects: u64,
    slow_consumers: u64,
) -> std::fmt::Result {
    f.counter(
        "logdist_nats_disconnects",
        "Times the NATS connection was lost.",
        disconnects,
    )?;
    f.counter(
        "logdist_nats_reconnects",
        "Reconnections to NATS after a disconnect.",
        reconnects,
    )?;
    f.counter(
        "logdist_nats_slow_consumer_events",
        "Messages the client dropped because this process fell behind (slow consumer).",
        slow_consumers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::stats::RouteStats;
    use prometheus_client::registry::Registry;

    fn render(collector: impl Collector) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    fn sample(exposition: &str, series: &str) -> f64 {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn nothing_before_the_first_record() {
        assert_eq!(render(DistributorCollector::default()), "");
        assert_eq!(render(AnalyzerCollector::default()), "");
    }

    #[test]
    fn distributor_record_renders_every_counter_and_share() {
        let collector = DistributorCollector::default();
        let mut stats = DistributorStats {
            replica: "r1".into(),
            delivery: "at-most-once".into(),
            updated_at_ms: 1_500,
            received_packets: 10,
            received_messages: 100,
            routed_messages: 97,
            deadletter_packets: 3,
            epoch: 4,
            disconnects: 2,
            ..Default::default()
        };
        stats.deadletter_reasons.insert("not_json".into(), 2);
        stats.deadletter_reasons.insert("too_large".into(), 1);
        stats.analyzers.insert(
            "a".into(),
            RouteStats {
                online: true,
                weight: 0.6,
                announced_weight: 0.3,
                target_share: 0.75,
                messages: 97,
                actual_share: 1.0,
                epoch_share: 0.5,
                ..Default::default()
            },
        );
        stats.analyzers.insert("gone".into(), RouteStats::default());
        collector.latest.publish(stats);
        let text = render(collector);
        assert!(text.contains("# TYPE logdist_distributor_received_packets_total counter"));
        assert_eq!(
            sample(&text, "logdist_distributor_received_packets_total"),
            10.0
        );
        assert_eq!(
            sample(&text, "logdist_distributor_routed_messages_total"),
            97.0
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_distributor_deadletter_packets_total{reason="not_json"}"#
            ),
            2.0
        );
        assert_eq!(sample(&text, "logdist_distributor_membership_epoch"), 4.0);
        assert_eq!(sample(&text, "logdist_distributor_analyzers_online"), 1.0);
        assert_eq!(
            sample(&text, "logdist_distributor_stats_updated_timestamp_seconds"),
            1.5
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_distributor_analyzer_target_share_ratio{analyzer="a"}"#
            ),
            0.75
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_distributor_analyzer_actual_share_ratio{analyzer="a",window="epoch"}"#
            ),
            0.5
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_distributor_analyzer_online{analyzer="gone"}"#
            ),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_distributor_analyzer_weight{analyzer="a"}"#
            ),
            0.3
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_distributor_analyzer_effective_weight{analyzer="a"}"#
            ),
            0.6
        );
        // An analyzer that left keeps its counts but has no weight or target any more.
        assert!(!text.contains(r#"logdist_distributor_analyzer_weight{analyzer="gone"}"#));
        assert_eq!(
            sample(
                &text,
                r#"logdist_distributor_info{replica="r1",delivery="at-most-once"}"#
            ),
            1.0
        );
        assert_eq!(sample(&text, "logdist_nats_disconnects_total"), 2.0);
        assert!(
            !text.contains("affinity"),
            "no affinity families without it"
        );
    }

    #[test]
    fn affinity_families_render_keys_and_kept_packets() {
        let collector = DistributorCollector::default();
        let mut stats = DistributorStats {
            replica: "r1".into(),
            affinity: "agent".into(),
            affinity_slack: 0.01,
            keyless_packets: 3,
            ..Default::default()
        };
        stats.analyzers.insert(
            "a".into(),
            RouteStats {
                online: true,
                keys_held: 12,
                keyed_packets: 100,
                kept_packets: 93,
                ..Default::default()
            },
        );
        collector.latest.publish(stats);
        let text = render(collector);
        let value = |series: &str| sample(&text, series);
        assert_eq!(
            value(r#"logdist_distributor_affinity_info{mode="agent",slack="0.01"}"#),
            1.0
        );
        assert_eq!(value("logdist_distributor_keyless_packets_total"), 3.0);
        assert_eq!(
            value(r#"logdist_distributor_analyzer_keys_held{analyzer="a"}"#),
            12.0
        );
        assert_eq!(
            value(r#"logdist_distributor_analyzer_kept_packets_total{analyzer="a"}"#),
            93.0
        );
        assert_eq!(
            value(r#"logdist_distributor_analyzer_keyed_packets_total{analyzer="a"}"#),
            100.0
        );
        assert_eq!(value("logdist_distributor_keys_saturated"), 0.0);
    }

    #[test]
    fn analyzer_record_renders_severities_and_a_cumulative_histogram() {
        let collector = AnalyzerCollector::default();
        let mut stats = AnalyzerStats {
            id: "1".into(),
            instance: "i7".into(),
            packets: 3,
            duplicates: 1,
            ..Default::default()
        };
        stats.by_severity.insert("INFO".into(), 5);
        stats.by_severity.insert("ERROR".into(), 1);
        let mut counts = vec![0; LATENCY_BUCKETS_SECONDS.len() + 1];
        counts[3] = 2; // <= 1 ms
        counts[LATENCY_BUCKETS_SECONDS.len()] = 1; // above 60 s
        collector.latest.publish(AnalyzerSnapshot {
            stats,
            latency: LatencyBuckets {
                counts,
                sum_seconds: 100.5,
            },
        });
        let text = render(collector);
        assert_eq!(
            sample(&text, r#"logdist_analyzer_messages_total{severity="INFO"}"#),
            5.0
        );
        assert_eq!(
            sample(&text, "logdist_analyzer_duplicate_packets_total"),
            1.0
        );
        assert!(text.contains("# TYPE logdist_analyzer_latency_seconds histogram"));
        assert_eq!(
            sample(
                &text,
                r#"logdist_analyzer_latency_seconds_bucket{le="0.0005"}"#
            ),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_analyzer_latency_seconds_bucket{le="0.001"}"#
            ),
            2.0
        );
        assert_eq!(
            sample(&text, r#"logdist_analyzer_latency_seconds_bucket{le="60"}"#),
            2.0
        );
        assert_eq!(
            sample(
                &text,
                r#"logdist_analyzer_latency_seconds_bucket{le="+Inf"}"#
            ),
            3.0
        );
        assert_eq!(sample(&text, "logdist_analyzer_latency_seconds_count"), 3.0);
        assert_eq!(sample(&text, "logdist_analyzer_latency_seconds_sum"), 100.5);
    }

    #[test]
    fn nats_state_before_connecting() {
        let text = render(NatsCollector::new(true));
        assert_eq!(sample(&text, "logdist_nats_connected"), 0.0);
        assert_eq!(sample(&text, "logdist_nats_reconnects_total"), 0.0);
        assert!(!render(NatsCollector::new(false)).contains("reconnects"));
    }
}
