//! Realistic log content: a plausible severity mix (mostly INFO, some WARN, few ERROR/FATAL), a
//! few dozen sources, message templates with variable parts, and current timestamps; plus
//! deliberately malformed packets for the dead-letter path.

use std::fmt::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::PacketSize;

/// Severity mix, in per-mille: TRACE 5, DEBUG 80, INFO 800, WARN 80, ERROR 30, FATAL 5.
const SEVERITIES: [(&str, u32); 6] = [
    ("TRACE", 5),
    ("DEBUG", 80),
    ("INFO", 800),
    ("WARN", 80),
    ("ERROR", 30),
    ("FATAL", 5),
];

const SOURCES: [&str; 36] = [
    "api-gateway",
    "auth",
    "billing",
    "cart",
    "catalog",
    "checkout",
    "cron",
    "db-primary",
    "db-replica",
    "dns",
    "email",
    "frontend",
    "geo",
    "image-resizer",
    "inventory",
    "kafka-bridge",
    "ledger",
    "loadbalancer",
    "metrics",
    "notifications",
    "orders",
    "payments",
    "pricing",
    "queue-worker",
    "rate-limiter",
    "recommendations",
    "redis",
    "reports",
    "search",
    "session",
    "shipping",
    "sso",
    "storage",
    "tax",
    "users",
    "webhooks",
];

const PATHS: [&str; 8] = [
    "/api/v1/orders",
    "/api/v1/users",
    "/login",
    "/cart/items",
    "/search",
    "/health",
    "/api/v2/payments",
    "/static/app.js",
];

/// Makes log packets as JSON bytes. Deterministic for a given seed.
pub struct LogGenerator {
    rng: StdRng,
    size: PacketSize,
}

impl LogGenerator {
    pub fn new(seed: u64, size: PacketSize) -> Self {
        LogGenerator {
            rng: StdRng::seed_from_u64(seed),
            size,
        }
    }

    /// Draws a packet size from the configured range.
    pub fn packet_len(&mut self) -> u32 {
        self.rng.random_range(self.size.min..=self.size.max)
    }

    /// A JSON array of `len` log objects stamped with `timestamp_ms` (unix milliseconds).
    pub fn packet(&mut self, len: u32, timestamp_ms: u64) -> Vec<u8> {
        let mut out = String::with_capacity(len as usize * 160 + 2);
        out.push('[');
        for i in 0..len {
            if i > 0 {
                out.push(',');
            }
            self.record(&mut out, timestamp_ms);
        }
        out.push(']');
        out.into_bytes()
    }

    fn record(&mut self, out: &mut String, timestamp_ms: u64) {
        let severity = self.severity();
        let source = SOURCES[self.rng.random_range(0..SOURCES.len())];
        let _ = write!(
            out,
            r#"{{"timestamp":{timestamp_ms},"severity":"{severity}","source":"{source}","message":""#
        );
        self.message(out, severity);
        let _ = write!(
            out,
            r#"","host":"node-{}"}}"#,
            self.rng.random_range(1..=24)
        );
    }

    fn severity(&mut self) -> &'static str {
        let mut roll = self.rng.random_range(0..1000);
        for (name, weight) in SEVERITIES {
            if roll < weight {
                return name;
            }
            roll -= weight;
        }
        "INFO"
    }

    fn message(&mut self, out: &mut String, severity: &str) {
        let r = &mut self.rng;
        let _ = match severity {
            "ERROR" | "FATAL" => match r.random_range(0..3) {
                0 => write!(
                    out,
                    "connection to db-{} refused after {} retries",
                    r.random_range(1..9),
                    r.random_range(1..6)
                ),
                1 => write!(
                    out,
                    "request {:08x} failed: upstream timeout after {} ms",
                    r.random::<u32>(),
                    r.random_range(1000..30000)
                ),
                _ => write!(
                    out,
                    "unhandled exception in worker {}: index out of range",
                    r.random_range(1..64)
                ),
            },
            "WARN" => match r.random_range(0..3) {
                0 => write!(
                    out,
                    "slow query took {} ms on table orders",
                    r.random_range(200..5000)
                ),
                1 => write!(
                    out,
                    "retrying publish to queue {} (attempt {})",
                    r.random_range(1..16),
                    r.random_range(2..5)
                ),
                _ => write!(out, "memory usage at {}% of limit", r.random_range(80..99)),
            },
            _ => match r.random_range(0..4) {
                0 => write!(
                    out,
                    "GET {} {} {} ms",
                    PATHS[r.random_range(0..PATHS.len())],
                    [200, 200, 200, 201, 204, 304, 404][r.random_range(0..7)],
                    r.random_range(1..400)
                ),
                1 => write!(
                    out,
                    "user {} logged in from 10.{}.{}.{}",
                    r.random_range(1000..99999),
                    r.random_range(0..255),
                    r.random_range(0..255),
                    r.random_range(1..255)
                ),
                2 => write!(
                    out,
                    "order {} created with {} items, total {}.{:02} EUR",
                    r.random_range(100000..999999),
                    r.random_range(1..12),
                    r.random_range(1..900),
                    r.random_range(0..100)
                ),
                _ => write!(
                    out,
                    "cache hit ratio {}.{}% over {} keys",
                    r.random_range(50..100),
                    r.random_range(0..10),
                    r.random_range(100..100000)
                ),
            },
        };
    }

    /// A payload that the distributor must reject as a whole (each counts as one dead letter).
    pub fn invalid_packet(&mut self, timestamp_ms: u64) -> Vec<u8> {
        match self.rng.random_range(0..4) {
            0 => b"this is not json".to_vec(),
            1 => format!(r#"{{"timestamp":{timestamp_ms},"severity":"LOUD","source":"sim","message":"unknown severity"}}"#).into_bytes(),
            2 => format!(r#"{{"timestamp":{timestamp_ms},"severity":"INFO","message":"no source"}}"#).into_bytes(),
            _ => b"[]".to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdist::{PacketValidator, Severity};

    #[test]
    fn packets_are_valid_and_sized() {
        let mut generator = LogGenerator::new(7, PacketSize { min: 1, max: 50 });
        let validator = PacketValidator::default();
        for _ in 0..200 {
            let len = generator.packet_len();
            assert!((1..=50).contains(&len));
            let bytes = generator.packet(len, 1_764_064_800_000);
            let packet = validator
                .parse(&bytes)
                .expect("generated packets are valid");
            assert_eq!(packet.records.len(), len as usize);
            assert!(packet.is_fully_valid());
        }
    }

    #[test]
    fn severity_mix_is_plausible() {
        let mut generator = LogGenerator::new(3, PacketSize::fixed(1000));
        let bytes = generator.packet(1000, 0);
        let packet = PacketValidator::default().parse(&bytes).unwrap();
        let count = |s: Severity| packet.records.iter().filter(|r| r.severity == s).count();
        assert!(count(Severity::Info) > 700, "mostly INFO");
        assert!(count(Severity::Warn) > 40 && count(Severity::Warn) < 130);
        assert!(count(Severity::Error) + count(Severity::Fatal) < 80);
        let sources: std::collections::HashSet<_> = packet
            .records
            .iter()
            .map(|r| r.source.to_string())
            .collect();
        assert!(
            sources.len() > 30,
            "a few dozen sources, got {}",
            sources.len()
        );
    }

    #[test]
    fn invalid_packets_are_rejected_by_the_validator() {
        let mut generator = LogGenerator::new(11, PacketSize::fixed(1));
        for _ in 0..50 {
            let bytes = generator.invalid_packet(0);
            assert!(PacketValidator::default().parse(&bytes).is_err());
        }
    }
}
