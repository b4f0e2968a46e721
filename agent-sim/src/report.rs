//! What agent-sim prints on stdout at the end: the send summary and, with `--verify`, the share
//! table; as text for people or as JSON (`--json`) for scripts.

use std::fmt::Write;

use serde::Serialize;

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
    /// True unless a verification ran and failed.
    pub fn passed(&self) -> bool {
        self.verification.as_ref().is_none_or(|v| v.passed)
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
            if v.extra > 0 {
                format!("  extra {}", thousands(v.extra))
            } else {
                String::new()
            },
        );
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
