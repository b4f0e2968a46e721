//! What agent-sim prints on stdout at the end: the send summary and, with `--verify`, the share
//! table; as text for people or as JSON (`--json`) for scripts.

use std::fmt::Write;

use serde::Serialize;

use crate::config::PublishMode;
use crate::progress::thousands;
use crate::sender::SendTotals;
use crate::verify::Verification;

/// The whole outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub sent: SendTotals,
    pub verification: Option<Verification>,
}

impl Report {
    /// True unless a verification ran and failed, or (--publish jetstream) a packet could not be
    /// stored.
    pub fn passed(&self) -> bool {
        self.sent.failed_packets == 0 && self.verification.as_ref().is_none_or(|v| v.passed)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    pub fn to_text(&self) -> String {
        let s = &self.sent;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "sent {} messages in {} packets ({} malformed on purpose) in {:.1} s: {} msg/s, {:.1} MB/s",
            thousands(s.messages),
            thousands(s.packets),
            thousands(s.invalid_packets),
            s.seconds,
            thousands(s.messages_per_sec as u64),
            s.megabytes_per_sec
        );
        if s.publish == PublishMode::Jetstream {
            let _ = writeln!(
                out,
                "stored by JetStream{}: {} retries, {} re-publishes the stream already had",
                s.stream
                    .as_deref()
                    .map(|name| format!(" (stream {name})"))
                    .unwrap_or_default(),
                thousands(s.retries),
                thousands(s.duplicate_acks),
            );
            if s.failed_packets > 0 {
                let _ = writeln!(
                    out,
                    "publish: FAILED: {} packets ({} messages) were never stored (retried for \
                     --retry-timeout, or interrupted); last error: {}",
                    thousands(s.failed_packets),
                    thousands(s.failed_messages),
                    s.last_publish_error.as_deref().unwrap_or("-"),
                );
            }
        }
        let Some(v) = &self.verification else {
            return out;
        };
        let _ = writeln!(
            out,
            "\n{:<12} {:>8} {:>9} {:>11} {:>10} {:>12} {:>9} {:>9}",
            "analyzer", "weight", "target %", "received %", "deviation", "messages", "p50", "p99"
        );
        for row in &v.analyzers {
            let _ = writeln!(
                out,
                "{:<12} {:>8.3} {:>9.2} {:>11.2} {:>+8.3}pp {:>12} {:>9} {:>9}",
                row.id,
                row.weight,
                row.target_pct,
                row.received_pct,
                row.deviation_pp,
                thousands(row.messages),
                micros(row.p50_us),
                micros(row.p99_us),
            );
        }
        let _ = writeln!(
            out,
            "\nsent {}  received {}  lost {} ({:.3}%)  dead-lettered {} of {} malformed{}",
            thousands(v.sent),
            thousands(v.received),
            thousands(v.lost),
            v.loss_pct,
            thousands(v.deadlettered),
            thousands(v.invalid_sent),
            if v.extra_are_duplicates {
                format!("  extra {} (duplicates)", thousands(v.extra))
            } else if v.extra > 0 {
                format!("  extra {}", thousands(v.extra))
            } else {
                String::new()
            },
        );
        if v.distributor_dropped_packets > 0 {
            let _ = writeln!(
                out,
                "the distributors dropped {} packets they could not keep up with (ingest_dropped_packets)",
                thousands(v.distributor_dropped_packets)
            );
        }
        if let Some(c) = &v.stream {
            let _ = match (c.packets_left, &c.error) {
                (Some(0), _) => writeln!(
                    out,
                    "stream {}: every packet of this run was acknowledged by an analyzer",
                    c.stream
                ),
                (Some(left), _) => writeln!(
                    out,
                    "stream {}: {} packets of this run still stored",
                    c.stream,
                    thousands(left)
                ),
                (None, error) => writeln!(
                    out,
                    "stream {}: not checked ({})",
                    c.stream,
                    error.as_deref().unwrap_or("no answer")
                ),
            };
        }
        if v.passed {
            let _ = writeln!(
                out,
                "verify: OK (max deviation {:.3} pp)",
                v.max_abs_deviation_pp
            );
        } else {
            for failure in &v.failures {
                let _ = writeln!(out, "verify: FAILED: {failure}");
            }
        }
        out
    }
}

fn micros(value: Option<u64>) -> String {
    match value {
        None => "-".into(),
        Some(us) if us >= 10_000 => format!("{:.1}ms", us as f64 / 1000.0),
        Some(us) => format!("{us}µs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PublishMode;

    #[test]
    fn packets_never_stored_fail_the_run_and_are_reported() {
        let mut report = Report {
            sent: SendTotals {
                messages: 900,
                packets: 9,
                publish: PublishMode::Jetstream,
                retries: 40,
                stream: Some("LOGS".into()),
                ..Default::default()
            },
            verification: None,
        };
        assert!(report.passed());
        assert!(report
            .to_text()
            .contains("stored by JetStream (stream LOGS): 40 retries"));
        report.sent.failed_packets = 2;
        report.sent.failed_messages = 150;
        report.sent.last_publish_error = Some("timed out".into());
        assert!(!report.passed());
        let text = report.to_text();
        assert!(
            text.contains("publish: FAILED: 2 packets (150 messages) were never stored")
                && text.contains("last error: timed out"),
            "{text}"
        );
        assert!(report.to_json().contains("\"failed_packets\": 2"));
    }
}
