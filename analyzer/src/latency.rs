//! End-to-end latency of packets: from the agent's `Logdist-Sent-At` (unix nanoseconds) to the
//! moment the analyzer handles the packet, kept in an HDR histogram in microseconds so that
//! percentiles stay accurate (3 significant digits) at any rate with a fixed memory footprint.

use hdrhistogram::Histogram;
use logdist::metrics::{LatencyBuckets, LATENCY_BUCKETS_SECONDS};
use logdist::protocol::stats::LatencySummary;

/// Largest latency recorded, in microseconds (one hour); longer ones are recorded as this.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Latencies of every packet that carried a `Logdist-Sent-At` header, since start.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    /// Packets whose send time was in the future (clock skew between hosts); recorded as 0.
    clock_skewed: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            clock_skewed: 0,
        }
    }
}

impl LatencyHistogram {
    /// Records one packet sent at `sent_at_ns` and handled at `now_ns` (both unix nanoseconds).
    pub fn record(&mut self, sent_at_ns: u128, now_ns: u128) {
        let latency_us = match now_ns.checked_sub(sent_at_ns) {
            Some(ns) => u64::try_from(ns / 1_000).unwrap_or(u64::MAX),
            None => {
                self.clock_skewed += 1;
                0
            }
        };
        self.histogram
            .saturating_record(latency_us.min(MAX_LATENCY_US));
    }

    /// Packets measured.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Packets that claimed to be sent in the future.
    pub fn clock_skewed(&self) -> u64 {
        self.clock_skewed
    }

    /// p50/p99/max in microseconds, or `None` before the first measured packet.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.histogram.is_empty() {
            return None;
        }
        // Quantiles and max are both reported as their bucket's highest equivalent value (3
        // significant digits), so max >= p99 >= p50 always holds.
        Some(LatencySummary {
            count: self.histogram.len(),
            p50_us: self.histogram.value_at_quantile(0.50),
            p99_us: self.histogram.value_at_quantile(0.99),
            max_us: self.histogram.max(),
        })
    }
}

impl LatencyHistogram {
    /// The histogram in the Prometheus buckets of [`LATENCY_BUCKETS_SECONDS`], for `/metrics`.
    /// Each HDR bin goes to the bucket of its highest equivalent value (3 significant digits, so
    /// a packet within 0.1 % of a bound may land in the next bucket); O(bins recorded).
    pub fn buckets(&self) -> LatencyBuckets {
        let mut counts = vec![0u64; LATENCY_BUCKETS_SECONDS.len() + 1];
        let mut sum_seconds = 0.0;
        for bin in self.histogram.iter_recorded() {
            let seconds = bin.value_iterated_to() as f64 / 1e6;
            let n = bin.count_at_value();
            let bucket = LATENCY_BUCKETS_SECONDS
                .iter()
                .position(|&le| seconds <= le)
                .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
            counts[bucket] += n;
            sum_seconds += seconds * n as f64;
        }
        LatencyBuckets {
            counts,
            sum_seconds,
        }
    }
}

/// Parses a `Logdist-Sent-At` header value (decimal unix nanoseconds).
pub fn parse_sent_at(value: &str) -> Option<u128> {
    value.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_NS: u128 = 1_000_000_000;

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(LatencyHistogram::default().summary(), None);
    }

    #[test]
    fn percentiles_in_microseconds() {
        let mut latency = LatencyHistogram::default();
        let now = 1_764_064_800 * SECOND_NS;
        // 98 packets at 1 ms, one at 10 ms, one at 2 s.
        for _ in 0..98 {
            latency.record(now - 1_000_000, now);
        }
        latency.record(now - 10_000_000, now);
        latency.record(now - 2 * SECOND_NS, now);
        let summary = latency.summary().unwrap();
        assert_eq!(summary.count, 100);
        assert!((999..=1001).contains(&summary.p50_us), "{summary:?}");
        assert!((9_990..=10_010).contains(&summary.p99_us), "{summary:?}");
        assert!(
            (1_998_000..=2_002_000).contains(&summary.max_us),
            "{summary:?}"
        );
    }

    #[test]
    fn future_send_times_count_as_zero_and_are_noted() {
        let mut latency = LatencyHistogram::default();
        latency.record(5 * SECOND_NS, 4 * SECOND_NS);
        assert_eq!(latency.clock_skewed(), 1);
        assert_eq!(latency.summary().unwrap().max_us, 0);
    }

    #[test]
    fn huge_latencies_saturate() {
        let mut latency = LatencyHistogram::default();
        latency.record(0, 1_764_064_800 * SECOND_NS);
        let max = latency.summary().unwrap().max_us;
        assert!(max >= MAX_LATENCY_US - MAX_LATENCY_US / 1000, "{max}");
    }

    #[test]
    fn prometheus_buckets_count_each_packet_once() {
        let mut latency = LatencyHistogram::default();
        let now = 1_764_064_800 * SECOND_NS;
        for _ in 0..10 {
            latency.record(now - 200_000, now); // 200 us
        }
        latency.record(now - 3 * SECOND_NS, now);
        latency.record(now - 7200 * SECOND_NS, now); // beyond every bound
        let buckets = latency.buckets();
        assert_eq!(buckets.count(), 12);
        let le = |bound: f64| {
            LATENCY_BUCKETS_SECONDS
                .iter()
                .position(|&b| b == bound)
                .unwrap()
        };
        assert_eq!(buckets.counts[le(0.00025)], 10);
        assert_eq!(buckets.counts[le(10.0)], 1);
        assert_eq!(buckets.counts[LATENCY_BUCKETS_SECONDS.len()], 1);
        assert!((3600.0 + 3.0..3600.0 * 1.01 + 3.1).contains(&buckets.sum_seconds));
        assert_eq!(LatencyHistogram::default().buckets().count(), 0);
    }

    #[test]
    fn sent_at_header_values() {
        assert_eq!(
            parse_sent_at("1764064800000000000"),
            Some(1_764_064_800_000_000_000)
        );
        assert_eq!(parse_sent_at(" 12 "), Some(12));
        assert_eq!(parse_sent_at("-1"), None);
        assert_eq!(parse_sent_at("soon"), None);
    }
}
