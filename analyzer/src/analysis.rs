//! The per-packet analysis and its counters: pure, synchronous, and owned by one task, so the hot
//! path takes no lock and allocates nothing per message (a source name is copied only the first
//! time it is seen).
//!
//! For each packet [`Analysis::analyze`] drops repeats of a `Logdist-Packet-Id` already analyzed,
//! parses the payload with the wire contract's [`PacketValidator`], and counts messages by
//! severity and by source, bytes, and end-to-end latency from `Logdist-Sent-At`. A payload that
//! does not parse is counted in `invalid_packets` and otherwise ignored; in a packet that is only
//! partly valid (which the distributor never forwards) the invalid elements are skipped and
//! counted in [`Analysis::skipped_records`].

use std::collections::HashMap;

use logdist::protocol::stats::SourceCount;
use logdist::{LogRecord, PacketError, PacketValidator, Severity};

use crate::dedup::PacketIdWindow;
use crate::latency::LatencyHistogram;

/// How many distinct sources are counted one by one. Past it, messages of new sources are only
/// counted in [`Analysis::untracked_source_messages`], so a flood of unique source names cannot
/// exhaust memory.
pub const MAX_TRACKED_SOURCES: usize = 100_000;

/// How many sources a report lists.
pub const TOP_SOURCES: usize = 5;

/// What the transport tells about a packet besides its payload (from its headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketMeta<'a> {
    /// `Logdist-Packet-Id`, set in at-least-once mode.
    pub packet_id: Option<&'a str>,
    /// `Logdist-Sent-At`, unix nanoseconds, set by agents that measure latency.
    pub sent_at_ns: Option<u128>,
}

/// What became of one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketOutcome {
    /// Counted: it held this many valid log messages.
    Analyzed { messages: usize },
    /// Its packet id was analyzed before; nothing counted but `duplicates`.
    Duplicate,
    /// The payload is not a packet (or has no valid message); counted in `invalid_packets`.
    Invalid(PacketError),
}

/// Cumulative counters of one analyzer instance since it started.
#[derive(Debug, Clone)]
pub struct Analysis {
    validator: PacketValidator,
    dedup: PacketIdWindow,
    messages: u64,
    packets: u64,
    bytes: u64,
    duplicates: u64,
    batches: u64,
    invalid_packets: u64,
    skipped_records: u64,
    by_severity: [u64; Severity::ALL.len()],
    sources: HashMap<String, u64>,
    untracked_source_messages: u64,
    latency: LatencyHistogram,
}

impl Analysis {
    /// Empty counters; `dedup_window` packet ids are remembered for de-duplication.
    pub fn new(dedup_window: usize) -> Self {
        Analysis {
            validator: PacketValidator::default(),
            dedup: PacketIdWindow::new(dedup_window),
            messages: 0,
            packets: 0,
            bytes: 0,
            duplicates: 0,
            batches: 0,
            invalid_packets: 0,
            skipped_records: 0,
            by_severity: [0; Severity::ALL.len()],
            sources: HashMap::new(),
            untracked_source_messages: 0,
            latency: LatencyHistogram::default(),
        }
    }

    /// Analyzes one packet received at `now_ns` (unix nanoseconds), calling `on_record` for each
    /// valid log message (e.g. to print it).
    pub fn analyze(
        &mut self,
        payload: &[u8],
        meta: PacketMeta<'_>,
        now_ns: u128,
        mut on_record: impl FnMut(&LogRecord<'_>),
    ) -> PacketOutcome {
        if let Some(id) = meta.packet_id {
            if !self.dedup.insert(id) {
                self.duplicates += 1;
                return PacketOutcome::Duplicate;
            }
        }
        let packet = match self.validator.parse(payload) {
            Ok(packet) if !packet.records.is_empty() => packet,
            Ok(packet) => {
                // Every element invalid: report the first reason.
                self.invalid_packets += 1;
                let reason = packet.invalid.into_iter().next().map(|i| i.error);
                return PacketOutcome::Invalid(match reason {
                    Some(error) => PacketError::Record(error),
                    None => PacketError::Empty,
                });
            }
            Err(error) => {
                self.invalid_packets += 1;
                return PacketOutcome::Invalid(error);
            }
        };
        self.packets += 1;
        self.bytes += payload.len() as u64;
        self.skipped_records += packet.invalid.len() as u64;
        for record in &packet.records {
            self.by_severity[record.severity.index()] += 1;
            self.count_source(&record.source);
            on_record(record);
        }
        self.messages += packet.records.len() as u64;
        if let Some(sent_at_ns) = meta.sent_at_ns {
            self.latency.record(sent_at_ns, now_ns);
        }
        PacketOutcome::Analyzed {
            messages: packet.records.len(),
        }
    }

    /// Whether a packet with this id was analyzed (within the de-duplication window).
    pub fn seen(&self, packet_id: &str) -> bool {
        self.dedup.contains(packet_id)
    }

    /// Counts a NATS message that was a batch (its packets are analyzed one by one).
    pub fn count_batch(&mut self) {
        self.batches += 1;
    }

    /// Batches received.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// A message that says it is a batch but cannot be read as one: counted as invalid.
    pub fn count_invalid(&mut self) {
        self.invalid_packets += 1;
    }

    /// Counts a repeat of an analyzed packet without looking at it.
    pub fn count_duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// Remembers `packet_id` as handled without counting messages (every message of it was
    /// dead-lettered), so a redelivery is dropped as a duplicate.
    pub fn mark_seen(&mut self, packet_id: &str) {
        self.dedup.insert(packet_id);
    }

    fn count_source(&mut self, source: &str) {
        if let Some(count) = self.sources.get_mut(source) {
            *count += 1;
        } else if self.sources.len() < MAX_TRACKED_SOURCES {
            self.sources.insert(source.to_owned(), 1);
        } else {
            self.untracked_source_messages += 1;
        }
    }

    /// Log messages analyzed (duplicates and invalid packets excluded).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Packets analyzed.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Payload bytes of the packets analyzed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Packets dropped as repeats of an analyzed packet id.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Payloads that were not packets, or had no valid message.
    pub fn invalid_packets(&self) -> u64 {
        self.invalid_packets
    }

    /// Invalid elements skipped inside otherwise valid packets.
    pub fn skipped_records(&self) -> u64 {
        self.skipped_records
    }

    /// Messages from sources first seen after [`MAX_TRACKED_SOURCES`] were already tracked.
    pub fn untracked_source_messages(&self) -> u64 {
        self.untracked_source_messages
    }

    /// Messages of one severity.
    pub fn severity_count(&self, severity: Severity) -> u64 {
        self.by_severity[severity.index()]
    }

    /// (ERROR + FATAL) / messages; 0 before the first message.
    pub fn error_rate(&self) -> f64 {
        if self.messages == 0 {
            return 0.0;
        }
        let errors = self.severity_count(Severity::Error) + self.severity_count(Severity::Fatal);
        errors as f64 / self.messages as f64
    }

    /// The `n` busiest sources, most messages first; ties in name order so reports are stable.
    pub fn top_sources(&self, n: usize) -> Vec<SourceCount> {
        let mut top: Vec<(&str, u64)> = Vec::with_capacity(n + 1);
        for (source, &messages) in &self.sources {
            let ranks_before =
                |&(s, m): &(&str, u64)| m > messages || (m == messages && s < source.as_str());
            let position = top.partition_point(ranks_before);
            if position < n {
                top.insert(position, (source, messages));
                top.truncate(n);
            }
        }
        top.into_iter()
            .map(|(source, messages)| SourceCount {
                source: source.to_string(),
                messages,
            })
            .collect()
    }

    /// Distinct sources counted.
    pub fn distinct_sources(&self) -> usize {
        self.sources.len()
    }

    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(severity: &str, source: &str) -> String {
        format!(r#"{{"timestamp":1,"severity":"{severity}","source":"{source}","message":"m"}}"#)
    }

    fn packet(records: &[(&str, &str)]) -> String {
        let items: Vec<String> = records.iter().map(|(s, src)| record(s, src)).collect();
        format!("[{}]", items.join(","))
    }

    fn analyze(analysis: &mut Analysis, payload: &str) -> PacketOutcome {
        analysis.analyze(payload.as_bytes(), PacketMeta::default(), 0, |_| {})
    }

    #[test]
    fn counts_messages_by_severity_and_source() {
        let mut analysis = Analysis::new(10);
        let first = packet(&[("INFO", "web"), ("error", "db"), ("WARNING", "web")]);
        let second = record("critical", "db");
        assert_eq!(
            analyze(&mut analysis, &first),
            PacketOutcome::Analyzed { messages: 3 }
        );
        assert_eq!(
            analyze(&mut analysis, &second),
            PacketOutcome::Analyzed { messages: 1 }
        );
        assert_eq!(analysis.messages(), 4);
        assert_eq!(analysis.packets(), 2);
        assert_eq!(analysis.bytes(), (first.len() + second.len()) as u64);
        assert_eq!(analysis.severity_count(Severity::Info), 1);
        assert_eq!(analysis.severity_count(Severity::Warn), 1);
        assert_eq!(analysis.severity_count(Severity::Error), 1);
        assert_eq!(analysis.severity_count(Severity::Fatal), 1);
        assert_eq!(analysis.severity_count(Severity::Debug), 0);
        assert_eq!(analysis.error_rate(), 0.5);
        assert_eq!(analysis.distinct_sources(), 2);
    }

    #[test]
    fn invalid_payloads_are_counted_not_analyzed() {
        let mut analysis = Analysis::new(10);
        for payload in ["not json", "[]", "42", "[1, 2]", &record("LOUD", "s")] {
            assert!(
                matches!(analyze(&mut analysis, payload), PacketOutcome::Invalid(_)),
                "{payload}"
            );
        }
        let outcome = analysis.analyze(b"\xff\xfe", PacketMeta::default(), 0, |_| {});
        assert!(matches!(
            outcome,
            PacketOutcome::Invalid(PacketError::NotUtf8 { .. })
        ));
        assert_eq!(analysis.invalid_packets(), 6);
        assert_eq!(analysis.messages(), 0);
        assert_eq!(analysis.packets(), 0);
        assert_eq!(analysis.bytes(), 0);
        assert_eq!(analysis.error_rate(), 0.0);
    }

    #[test]
    fn partly_valid_packets_count_their_valid_messages() {
        let mut analysis = Analysis::new(10);
        let payload = format!("[{}, 7, {}]", record("INFO", "a"), record("DEBUG", "b"));
        assert_eq!(
            analyze(&mut analysis, &payload),
            PacketOutcome::Analyzed { messages: 2 }
        );
        assert_eq!(analysis.skipped_records(), 1);
        assert_eq!(analysis.messages(), 2);
    }

    #[test]
    fn repeated_packet_ids_are_counted_once() {
        let mut analysis = Analysis::new(10);
        let payload = packet(&[("INFO", "a"), ("INFO", "b")]);
        let meta = |id| PacketMeta {
            packet_id: Some(id),
            sent_at_ns: None,
        };
        let mut seen = 0;
        for id in ["7", "7", "8", "7"] {
            analysis.analyze(payload.as_bytes(), meta(id), 0, |_| seen += 1);
        }
        assert_eq!(analysis.packets(), 2);
        assert_eq!(analysis.messages(), 4);
        assert_eq!(analysis.duplicates(), 2);
        assert_eq!(seen, 4, "duplicates are not handed to the record callback");
        // Packets without an id are never de-duplicated.
        analyze(&mut analysis, &payload);
        analyze(&mut analysis, &payload);
        assert_eq!(analysis.packets(), 4);
    }

    #[test]
    fn records_are_handed_to_the_callback_in_order() {
        let mut analysis = Analysis::new(10);
        let payload = packet(&[("INFO", "a"), ("ERROR", "b"), ("DEBUG", "c")]);
        let mut sources = Vec::new();
        analysis.analyze(payload.as_bytes(), PacketMeta::default(), 0, |r| {
            sources.push(r.source.to_string())
        });
        assert_eq!(sources, ["a", "b", "c"]);
    }

    #[test]
    fn top_sources_are_the_busiest_with_stable_ties() {
        let mut analysis = Analysis::new(10);
        let counts = [
            ("a", 1),
            ("b", 7),
            ("c", 3),
            ("d", 7),
            ("e", 2),
            ("f", 5),
            ("g", 3),
        ];
        for (source, n) in counts {
            let records: Vec<(&str, &str)> = (0..n).map(|_| ("INFO", source)).collect();
            analyze(&mut analysis, &packet(&records));
        }
        let top: Vec<(String, u64)> = analysis
            .top_sources(TOP_SOURCES)
            .into_iter()
            .map(|s| (s.source, s.messages))
            .collect();
        let expected = [("b", 7), ("d", 7), ("f", 5), ("c", 3), ("g", 3)];
        assert_eq!(
            top,
            expected
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect::<Vec<_>>()
        );
        assert_eq!(analysis.top_sources(0), vec![]);
        assert_eq!(analysis.top_sources(100).len(), 7);
    }

    #[test]
    fn latency_is_measured_only_when_sent_at_is_present() {
        let mut analysis = Analysis::new(10);
        let payload = record("INFO", "a");
        analyze(&mut analysis, &payload);
        assert!(analysis.latency().summary().is_none());
        let meta = PacketMeta {
            packet_id: None,
            sent_at_ns: Some(1_000_000_000),
        };
        analysis.analyze(payload.as_bytes(), meta, 1_003_000_000, |_| {});
        let summary = analysis.latency().summary().unwrap();
        assert_eq!(summary.count, 1);
        assert!((2_990..=3_010).contains(&summary.p50_us), "{summary:?}");
    }

    #[test]
    fn escaped_source_names_are_counted_by_their_value() {
        let mut analysis = Analysis::new(10);
        let escaped = r#"{"timestamp":1,"severity":"INFO","source":"d\u0062","message":""}"#;
        analyze(&mut analysis, escaped);
        analyze(&mut analysis, &record("INFO", "db"));
        assert_eq!(analysis.top_sources(1)[0].messages, 2);
    }
}
