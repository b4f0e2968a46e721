//! Periodic reports: the [`AnalyzerStats`] record written to the stats bucket under
//! `analyzer.<id>.<instance>`, and the one-line summary printed to stdout, both built from the
//! same snapshot so they never disagree.

use std::fmt::Write as _;
use std::time::Instant;

use logdist::protocol::stats::{unix_millis_now, AnalyzerStats};
use logdist::Severity;

use crate::analysis::{Analysis, TOP_SOURCES};

/// `state` of a running instance.
pub const STATE_UP: &str = "up";
/// `state` of an instance that withdrew.
pub const STATE_DOWN: &str = "down";

/// Who is reporting, and the rate since the previous report.
#[derive(Debug, Clone)]
pub struct Reporter {
    id: String,
    instance: String,
    weight: f64,
    started_at_ms: u64,
    previous: Instant,
    previous_messages: u64,
    /// The rate of the last [`snapshot`](Reporter::snapshot), repeated by checkpoints.
    last_rate: f64,
}

impl Reporter {
    pub fn new(id: &str, instance: &str, weight: f64, started: Instant) -> Self {
        Reporter {
            id: id.to_string(),
            instance: instance.to_string(),
            weight,
            started_at_ms: unix_millis_now(),
            previous: started,
            previous_messages: 0,
            last_rate: 0.0,
        }
    }

    /// The stats record of `analysis` at `now`; `messages_per_sec` covers the time since the
    /// previous call.
    pub fn snapshot(&mut self, analysis: &Analysis, state: &str, now: Instant) -> AnalyzerStats {
        let elapsed = now.saturating_duration_since(self.previous).as_secs_f64();
        let new_messages = analysis.messages().saturating_sub(self.previous_messages);
        let messages_per_sec = if elapsed > 0.0 {
            new_messages as f64 / elapsed
        } else {
            0.0
        };
        self.previous = now;
        self.previous_messages = analysis.messages();
        self.last_rate = messages_per_sec;
        self.record(analysis, state, messages_per_sec)
    }

    /// The stats record of `analysis` now, for a checkpoint between two reports: the counters are
    /// current, `messages_per_sec` is the last report's (so it keeps meaning "over the report
    /// interval").
    pub fn checkpoint(&self, analysis: &Analysis, state: &str) -> AnalyzerStats {
        self.record(analysis, state, self.last_rate)
    }

    fn record(&self, analysis: &Analysis, state: &str, messages_per_sec: f64) -> AnalyzerStats {
        AnalyzerStats {
            id: self.id.clone(),
            instance: self.instance.clone(),
            weight: self.weight,
            state: state.to_string(),
            started_at_ms: self.started_at_ms,
            updated_at_ms: unix_millis_now(),
            messages: analysis.messages(),
            packets: analysis.packets(),
            bytes: analysis.bytes(),
            duplicates: analysis.duplicates(),
            batches: analysis.batches(),
            invalid_packets: analysis.invalid_packets(),
            by_severity: Severity::ALL
                .iter()
                .map(|&s| (s.as_str().to_string(), analysis.severity_count(s)))
                .collect(),
            error_rate: analysis.error_rate(),
            top_sources: analysis.top_sources(TOP_SOURCES),
            messages_per_sec,
            latency: analysis.latency().summary(),
            forward: None,
        }
    }
}

/// The one-line summary of a stats record, e.g.
///
/// ```text
/// analyzer 1/k3f9 up: 120000 msgs 1200 pkts 14.2 MB | 24000.0 msg/s | errors 3.10% | TRACE 0 DEBUG 12000 INFO 90000 WARN 14280 ERROR 3600 FATAL 120 | top db 50000, web 40000 | latency p50 850us p99 2.1ms max 5.0ms | dup 0 invalid 0
/// ```
pub fn summary_line(stats: &AnalyzerStats) -> String {
    let mut line = format!(
        "analyzer {}/{} {}: {} msgs {} pkts {} | {:.1} msg/s | errors {:.2}% |",
        stats.id,
        stats.instance,
        stats.state,
        stats.messages,
        stats.packets,
        human_bytes(stats.bytes),
        stats.messages_per_sec,
        stats.error_rate * 100.0,
    );
    for severity in Severity::ALL {
        let count = stats
            .by_severity
            .get(severity.as_str())
            .copied()
            .unwrap_or(0);
        let _ = write!(line, " {severity} {count}");
    }
    line.push_str(" | top");
    if stats.top_sources.is_empty() {
        line.push_str(" -");
    }
    for (i, source) in stats.top_sources.iter().enumerate() {
        let separator = if i == 0 { " " } else { ", " };
        let _ = write!(line, "{separator}{} {}", source.source, source.messages);
    }
    match &stats.latency {
        Some(latency) => {
            let _ = write!(
                line,
                " | latency p50 {} p99 {} max {}",
                human_micros(latency.p50_us),
                human_micros(latency.p99_us),
                human_micros(latency.max_us)
            );
        }
        None => line.push_str(" | latency -"),
    }
    let _ = write!(
        line,
        " | dup {} invalid {}",
        stats.duplicates, stats.invalid_packets
    );
    line
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

fn human_micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::analysis::PacketMeta;

    fn analysis_with(payloads: &[&str]) -> Analysis {
        let mut analysis = Analysis::new(10);
        for payload in payloads {
            let meta = PacketMeta {
                packet_id: None,
                sent_at_ns: Some(1_000_000_000),
            };
            analysis.analyze(payload.as_bytes(), meta, 1_000_850_000, |_| {});
        }
        analysis
    }

    const DB_ERROR: &str = r#"{"timestamp":1,"severity":"ERROR","source":"db","message":"x"}"#;
    const WEB_INFO: &str = r#"{"timestamp":1,"severity":"info","source":"web","message":"y"}"#;

    #[test]
    fn snapshot_carries_every_counter_and_the_interval_rate() {
        let started = Instant::now();
        let mut reporter = Reporter::new("1", "k3f9", 0.5, started);
        let payload = format!("[{DB_ERROR},{WEB_INFO},{WEB_INFO}]");
        let analysis = analysis_with(&[&payload, "garbage"]);
        let stats = reporter.snapshot(&analysis, STATE_UP, started + Duration::from_secs(2));
        assert_eq!((stats.id.as_str(), stats.instance.as_str()), ("1", "k3f9"));
        assert_eq!(stats.weight, 0.5);
        assert_eq!(stats.state, "up");
        assert_eq!(stats.messages, 3);
        assert_eq!(stats.packets, 1);
        assert_eq!(stats.bytes, payload.len() as u64);
        assert_eq!(stats.invalid_packets, 1);
        assert_eq!(stats.by_severity.len(), 6);
        assert_eq!(stats.by_severity["ERROR"], 1);
        assert_eq!(stats.by_severity["INFO"], 2);
        assert_eq!(stats.by_severity["FATAL"], 0);
        assert!((stats.error_rate - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(stats.messages_per_sec, 1.5);
        assert_eq!(stats.top_sources[0].source, "web");
        assert_eq!(stats.latency.as_ref().unwrap().count, 1);
        assert!(stats.started_at_ms > 0 && stats.updated_at_ms >= stats.started_at_ms);

        // A checkpoint repeats the report's rate.
        let checkpoint = reporter.checkpoint(&analysis, STATE_UP);
        assert_eq!(checkpoint.messages_per_sec, 1.5);
        assert_eq!(checkpoint.messages, 3);

        // Nothing new in the next interval: the rate drops to 0, the counters stay.
        let stats = reporter.snapshot(&analysis, STATE_DOWN, started + Duration::from_secs(3));
        assert_eq!(stats.messages_per_sec, 0.0);
        assert_eq!(stats.messages, 3);
        assert_eq!(stats.state, "down");
    }

    #[test]
    fn summary_line_names_every_figure() {
        let started = Instant::now();
        let mut reporter = Reporter::new("1", "k3f9", 0.5, started);
        let payload = format!("[{DB_ERROR},{WEB_INFO},{WEB_INFO}]");
        let analysis = analysis_with(&[&payload]);
        let stats = reporter.snapshot(&analysis, STATE_UP, started + Duration::from_secs(1));
        assert_eq!(
            summary_line(&stats),
            format!(
                "analyzer 1/k3f9 up: 3 msgs 1 pkts {} B | 3.0 msg/s | errors 33.33% | \
                 TRACE 0 DEBUG 0 INFO 2 WARN 0 ERROR 1 FATAL 0 | top web 2, db 1 | \
                 latency p50 850us p99 850us max 850us | dup 0 invalid 0",
                payload.len()
            )
        );
        let empty =
            Reporter::new("1", "k3f9", 0.5, started).snapshot(&Analysis::new(1), STATE_UP, started);
        let line = summary_line(&empty);
        assert!(line.contains("| top - | latency - |"), "{line}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(14_200_000), "14.2 MB");
        assert_eq!(human_micros(850), "850us");
        assert_eq!(human_micros(2_100), "2.1ms");
        assert_eq!(human_micros(3_250_000), "3.25s");
    }
}
