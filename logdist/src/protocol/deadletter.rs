//! Dead letters on the dead-letter subject (`logs.deadletter`, see `docs/protocol.md`): the
//! rejected bytes, with the agent's headers plus `Logdist-Error`, `Logdist-Error-Code`,
//! `Logdist-Subject`, `Logdist-Index` (the HTTP gateway's single OTLP records only) and
//! `Logdist-Distributor`.
//!
//! A packet with invalid elements costs one dead letter ([`PacketDeadLetter`]), however many:
//! a JSON report of every invalid element (index, reason code, reason, the element's own JSON),
//! or, when that report would pass a size limit, the packet itself, whole, with a summary. The
//! distributor writes it for a packet of the contract and for a shipper's payload with records
//! it cannot map; the HTTP gateway for an OTLP request with records it refuses. Each of those
//! rejected things is a [`RejectedElement`].
//!
//! ```json
//! [{"index":1,"code":"unknown_severity","error":"field `severity` is \"LOUD\", …","element":{"severity":"LOUD"}},
//!  {"index":2,"code":"not_an_object","error":"log message is JSON number, expected an object","element":7}]
//! ```
//!
//! Reason codes are stable: counters (`deadletter_reasons` in the stats bucket) and users'
//! filters match on them. Validation codes come from
//! [`PacketError::code`](super::packet::PacketError::code) and
//! [`RecordError::code`](super::packet::RecordError::code); the delivery codes are here.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;

use async_nats::header::{HeaderMap, HeaderValue};

use super::headers::name::{
    DISTRIBUTOR, ERROR, ERROR_CODE, INDEX, INVALID_COUNT, PAYLOAD, SUBJECT,
};
use super::packet::InvalidRecord;

/// Reason code of a packet dead-lettered because no analyzer was online and the hold queue was
/// full (or the distributor stopped while holding it).
pub const NO_ANALYZER_ONLINE: &str = "no_analyzer_online";

/// Reason code of a packet that no analyzer acknowledged within `--max-attempts`.
pub const UNDELIVERABLE: &str = "undeliverable";

/// Reason code of a stream message (at-least-once) whose header block the NATS client cannot
/// read, such as a value with a bare carriage return: it is dead-lettered with the headers that
/// can be read and deleted from the stream.
pub const UNREADABLE_HEADERS: &str = "unreadable_headers";

/// Reason code of an OTLP request body (HTTP gateway, `POST /v1/logs`) that is not a protobuf
/// `ExportLogsServiceRequest`.
pub const BAD_PROTOBUF: &str = "bad_protobuf";

/// Reason code of an OTLP request body (HTTP gateway, `POST /v1/logs`) that is not an OTLP/JSON
/// `ExportLogsServiceRequest`.
pub const BAD_OTLP_JSON: &str = "bad_otlp_json";

/// An HTTP analyzer's endpoint refused the payload (a 4xx); `Logdist-Http-Status` holds the
/// status.
pub const HTTP_REJECTED: &str = "http_rejected";
/// At-most-once: an HTTP analyzer could not deliver the payload within `--forward-retry-for`, or a
/// process analyzer's child ended before acknowledging it.
pub const FORWARD_FAILED: &str = "forward_failed";
/// Reason code of the one dead letter of a packet with invalid elements; the elements' own codes
/// are in its report and in the stats' `deadletter_reasons`.
pub const INVALID_ELEMENTS: &str = "invalid_elements";

/// `Logdist-Payload` value: the payload is the JSON report of the invalid elements.
pub const PAYLOAD_ELEMENTS: &str = "elements";

/// `Logdist-Payload` value: the payload is the original packet, whole.
pub const PAYLOAD_PACKET: &str = "packet";

/// Why something is dead-lettered: a stable code and a sentence for people.
#[derive(Debug, Clone, Copy)]
pub struct Reason<'a> {
    pub code: &'static str,
    pub text: &'a str,
}

/// Headers of a dead letter: the original ones plus `Logdist-Error`, `Logdist-Error-Code`,
/// `Logdist-Subject`, `Logdist-Index` (single records only) and `Logdist-Distributor`. Values the
/// sender set under the names of a packet's dead letter (`Logdist-Payload`,
/// `Logdist-Invalid-Count`) are dropped, so a reader can trust them.
pub fn deadletter_headers(
    original: Option<&HeaderMap>,
    reason: Reason<'_>,
    subject: &str,
    index: Option<usize>,
    replica: &HeaderValue,
) -> HeaderMap {
    let drop_index = index.is_none();
    let mut headers = match original {
        // A whole payload has no index, even if the agent sent a header by that name; and only
        // a distributor says what a packet's dead letter holds.
        Some(h)
            if (drop_index && h.get(INDEX).is_some())
                || h.get(PAYLOAD).is_some()
                || h.get(INVALID_COUNT).is_some() =>
        {
            without_ours(h, drop_index)
        }
        Some(h) => h.clone(),
        None => HeaderMap::new(),
    };
    // Header values cannot hold line breaks; reasons quote user input, so flatten them.
    headers.insert(ERROR, HeaderValue::from(one_line(reason.text)));
    headers.insert(ERROR_CODE, HeaderValue::from(reason.code));
    headers.insert(SUBJECT, HeaderValue::from(subject));
    if let Some(i) = index {
        headers.insert(INDEX, HeaderValue::from(i));
    }
    headers.insert(DISTRIBUTOR, replica.clone());
    headers
}

/// Headers of the one dead letter of a packet with invalid elements: [`deadletter_headers`]
/// with code [`INVALID_ELEMENTS`] and the summary, plus `Logdist-Payload` and
/// `Logdist-Invalid-Count`.
pub fn packet_deadletter_headers(
    original: Option<&HeaderMap>,
    letter: &PacketDeadLetter,
    subject: &str,
    replica: &HeaderValue,
) -> HeaderMap {
    let reason = Reason {
        code: INVALID_ELEMENTS,
        text: &letter.summary,
    };
    let mut headers = deadletter_headers(original, reason, subject, None, replica);
    insert_packet_headers(&mut headers, letter);
    headers
}

/// Sets the headers that make `headers` those of `letter`: `Logdist-Error` (the summary),
/// `Logdist-Error-Code` ([`INVALID_ELEMENTS`]), `Logdist-Payload` and `Logdist-Invalid-Count`.
/// For a writer that builds the rest of its headers itself (the HTTP gateway).
pub fn insert_packet_headers(headers: &mut HeaderMap, letter: &PacketDeadLetter) {
    headers.insert(ERROR, HeaderValue::from(one_line(&letter.summary)));
    headers.insert(ERROR_CODE, HeaderValue::from(INVALID_ELEMENTS));
    headers.insert(PAYLOAD, HeaderValue::from(letter.payload_kind()));
    headers.insert(INVALID_COUNT, HeaderValue::from(letter.rejected));
}

fn without_ours(headers: &HeaderMap, drop_index: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (key, values) in headers.iter() {
        let ours = *key == PAYLOAD || *key == INVALID_COUNT || (drop_index && *key == INDEX);
        if ours {
            continue;
        }
        for value in values {
            out.append(key.clone(), value.clone());
        }
    }
    out
}

/// Default `--deadletter-report-max-bytes`: 1 MiB.
pub const DEFAULT_REPORT_MAX_BYTES: usize = 1 << 20;

/// Fewest bytes a report entry takes besides its element: the field names, the shortest code
/// and reason, punctuation. A lower bound, to skip building a report that cannot fit.
const MIN_ENTRY_OVERHEAD: usize = 40;

/// Most bytes the headers a dead letter adds take (names, codes, the subject, the summary,
/// whose quoted reason is cut to [`SUMMARY_REASON_CHARS`]).
pub const OWN_HEADERS_ROOM: usize = 4096;

/// Longest reason quoted in a summary, in characters.
pub const SUMMARY_REASON_CHARS: usize = 200;

/// How large one dead letter may be: NATS refuses a message (headers and payload) over the
/// server's `max_payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// The largest report wanted (`--deadletter-report-max-bytes`).
    pub report_max_bytes: usize,
    /// The server's `max_payload` (`Client::server_info().max_payload`).
    pub max_payload: usize,
}

impl SizeLimits {
    /// `(largest report, largest payload)` of a dead letter that carries the `original` headers
    /// beside its own: the room the server leaves, and the report no larger than wanted.
    pub fn for_headers(&self, original: Option<&HeaderMap>) -> (usize, usize) {
        let theirs = original.map_or(0, header_bytes);
        let payload = self.max_payload.saturating_sub(OWN_HEADERS_ROOM + theirs);
        (self.report_max_bytes.min(payload), payload)
    }
}

/// The size of `headers` on the wire (`NATS/1.0\r\n`, `Name: value\r\n` each, `\r\n`).
fn header_bytes(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n\r\n".len() + lines
}

/// One rejected element of a packet, as its dead letter reports it: where it was, why, and its
/// JSON text. The distributor's invalid elements and unmapped records and the gateway's refused
/// OTLP records all are.
pub trait RejectedElement {
    /// Position in its packet or request, from 0.
    fn index(&self) -> usize;
    /// The reason code (the element codes of docs/protocol.md).
    fn code(&self) -> &'static str;
    /// The reason, for people.
    fn reason(&self) -> Cow<'_, str>;
    /// The element as JSON text (valid JSON: it goes into the report as it is).
    fn element(&self) -> &str;
}

impl RejectedElement for InvalidRecord<'_> {
    fn index(&self) -> usize {
        self.index
    }
    fn code(&self) -> &'static str {
        self.error.code()
    }
    fn reason(&self) -> Cow<'_, str> {
        Cow::Owned(self.error.to_string())
    }
    fn element(&self) -> &str {
        self.raw.trim()
    }
}

/// What the payload of a packet's dead letter is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterBody {
    /// The JSON report of every rejected element (`Logdist-Payload: elements`).
    Report(Vec<u8>),
    /// The packet (or request) as it came, whole (`Logdist-Payload: packet`).
    Whole,
    /// The report of the first `listed` rejected elements only (`Logdist-Payload: elements`,
    /// fewer entries than `Logdist-Invalid-Count`): neither the full report nor the packet fit
    /// in one NATS message. Only a gateway request larger than the server's max_payload gets it.
    Truncated { report: Vec<u8>, listed: usize },
}

/// What to publish for one packet's invalid elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketDeadLetter {
    /// How many elements were rejected.
    pub rejected: usize,
    /// The payload: the report, or the packet whole.
    pub body: DeadLetterBody,
    /// The `Logdist-Error` text: how many elements of how many, by reason, and (for a whole
    /// packet) why the report was not sent and the first element's reason.
    pub summary: String,
    /// Invalid elements, by reason code: what the stats count.
    pub by_code: BTreeMap<&'static str, u64>,
}

impl PacketDeadLetter {
    /// The dead letter of a packet of `elements` elements and `packet_bytes` bytes whose
    /// rejected ones are `invalid` (at least one): the report if it takes at most
    /// `max_report_bytes`, else the packet whole if it takes at most `max_payload_bytes`, else
    /// as much of the report as fits in `max_report_bytes` (see [`SizeLimits::for_headers`]).
    pub fn build<R: RejectedElement>(
        invalid: &[R],
        elements: usize,
        packet_bytes: usize,
        max_report_bytes: usize,
        max_payload_bytes: usize,
    ) -> Self {
        let mut by_code: BTreeMap<&'static str, u64> = BTreeMap::new();
        for record in invalid {
            *by_code.entry(record.code()).or_insert(0) += 1;
        }
        let counts = by_code
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let head = format!(
            "{} of {elements} elements are invalid ({counts})",
            invalid.len()
        );
        let first = || {
            invalid
                .first()
                .map(|r| {
                    let reason = r.reason();
                    let cut: String = reason.chars().take(SUMMARY_REASON_CHARS).collect();
                    let more = if cut.len() < reason.len() { "…" } else { "" };
                    format!("; the first, at index {}: {cut}{more}", r.index())
                })
                .unwrap_or_default()
        };
        let (body, summary) = if let Some(report) = report(invalid, max_report_bytes) {
            (
                DeadLetterBody::Report(report),
                format!("{head}; the payload lists each with its index and reason"),
            )
        } else if packet_bytes <= max_payload_bytes {
            (
                DeadLetterBody::Whole,
                format!(
                    "{head}; their report would exceed {max_report_bytes} bytes, so the payload \
                     is the packet, whole{}",
                    first()
                ),
            )
        } else {
            let (report, listed) = truncated_report(invalid, max_report_bytes);
            let summary = format!(
                "{head}; neither their report nor the packet ({packet_bytes} bytes) fits in one \
                 message of at most {max_payload_bytes} bytes, so the payload lists the first \
                 {listed} only{}",
                first()
            );
            (DeadLetterBody::Truncated { report, listed }, summary)
        };
        PacketDeadLetter {
            rejected: invalid.len(),
            body,
            summary,
            by_code,
        }
    }

    /// The report, or `None` for "the original packet, whole".
    pub fn report(&self) -> Option<&[u8]> {
        match &self.body {
            DeadLetterBody::Report(report) | DeadLetterBody::Truncated { report, .. } => {
                Some(report)
            }
            DeadLetterBody::Whole => None,
        }
    }

    /// The `Logdist-Payload` header value.
    pub fn payload_kind(&self) -> &'static str {
        match self.body {
            DeadLetterBody::Whole => PAYLOAD_PACKET,
            _ => PAYLOAD_ELEMENTS,
        }
    }
}

/// The JSON array of `invalid`, or `None` when it would exceed `limit` bytes.
fn report<R: RejectedElement>(invalid: &[R], limit: usize) -> Option<Vec<u8>> {
    // Cheap lower bound first, so a flood of tiny elements never builds a report it drops.
    let at_least: usize = invalid
        .iter()
        .map(|r| r.element().len() + MIN_ENTRY_OVERHEAD)
        .sum();
    if at_least > limit {
        return None;
    }
    let (report, listed) = truncated_report(invalid, limit);
    (listed == invalid.len()).then_some(report)
}

/// The JSON array of as many of `invalid`, from the first, as fit in `limit` bytes, and how
/// many that is.
fn truncated_report<R: RejectedElement>(invalid: &[R], limit: usize) -> (Vec<u8>, usize) {
    let estimate: usize = invalid
        .iter()
        .map(|r| r.element().len() + 2 * MIN_ENTRY_OVERHEAD)
        .sum();
    let mut out = Vec::with_capacity(estimate.min(limit) + 2);
    out.push(b'[');
    let mut entry = Vec::new();
    let mut listed = 0;
    for record in invalid {
        entry.clear();
        if listed > 0 {
            entry.push(b',');
        }
        write!(
            entry,
            r#"{{"index":{},"code":"{}","error":"#,
            record.index(),
            record.code()
        )
        .expect("writing to a Vec cannot fail");
        serde_json::to_writer(&mut entry, record.reason().as_ref())
            .expect("a string always serializes");
        entry.extend_from_slice(b",\"element\":");
        // The element's exact text: valid JSON (it was parsed as one element of the array).
        entry.extend_from_slice(record.element().as_bytes());
        entry.push(b'}');
        // The closing bracket must fit too.
        if out.len() + entry.len() + 1 > limit {
            break;
        }
        out.extend_from_slice(&entry);
        listed += 1;
    }
    out.push(b']');
    (out, listed)
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::headers;
    use serde_json::Value;

    const OK: &str = r#"{"timestamp":1,"severity":"INFO","source":"s","message":"m"}"#;

    #[test]
    fn a_mixed_packet_gets_one_report_of_every_invalid_element() {
        let bad = r#"{"timestamp":1,"severity":"LOUD","source":"s","message":"m\"q"}"#;
        let payload = format!("[{OK},{bad},7,{OK},{{}}]");
        let packet = crate::PacketValidator::new(1 << 20)
            .parse(payload.as_bytes())
            .unwrap();
        let letter = PacketDeadLetter::build(
            &packet.invalid,
            packet.len(),
            payload.len(),
            1 << 20,
            1 << 20,
        );
        assert_eq!(letter.payload_kind(), PAYLOAD_ELEMENTS);
        assert_eq!(
            letter.summary,
            "3 of 5 elements are invalid (missing_field 1, not_an_object 1, unknown_severity 1); the payload lists each with its index and reason"
        );
        let report: Vec<Value> = serde_json::from_slice(letter.report().unwrap()).unwrap();
        let indexes: Vec<u64> = report
            .iter()
            .map(|e| e["index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [1, 2, 4]);
        assert_eq!(report[0]["code"], "unknown_severity");
        assert!(report[0]["error"].as_str().unwrap().contains("LOUD"));
        // The element itself, as JSON, exactly as sent.
        assert_eq!(
            report[0]["element"],
            serde_json::from_str::<Value>(bad).unwrap()
        );
        assert_eq!(report[1]["element"], 7);
        assert_eq!(report[2]["element"], serde_json::json!({}));
        assert_eq!(letter.by_code["missing_field"], 1);
    }

    #[test]
    fn past_the_limit_the_packet_goes_whole_with_a_summary() {
        let payload = format!("[{}]", vec!["{}"; 100_000].join(","));
        let packet = crate::PacketValidator::new(8 << 20)
            .parse(payload.as_bytes())
            .unwrap();
        let letter = PacketDeadLetter::build(
            &packet.invalid,
            packet.len(),
            payload.len(),
            1 << 20,
            8 << 20,
        );
        assert_eq!(letter.body, DeadLetterBody::Whole);
        assert_eq!(letter.payload_kind(), PAYLOAD_PACKET);
        assert_eq!(
            letter.summary,
            "100000 of 100000 elements are invalid (missing_field 100000); their report would exceed 1048576 bytes, so the payload is the packet, whole; the first, at index 0: log message has no `timestamp` field"
        );
        assert_eq!(letter.by_code["missing_field"], 100_000);
    }

    #[test]
    fn a_report_is_never_larger_than_the_limit() {
        let payload = format!("[{}]", vec!["7"; 50].join(","));
        let packet = crate::PacketValidator::new(1 << 20)
            .parse(payload.as_bytes())
            .unwrap();
        let build = |report, max_payload| {
            PacketDeadLetter::build(&packet.invalid, 50, payload.len(), report, max_payload)
        };
        let full = build(1 << 20, 1 << 20).report().unwrap().to_vec();
        // Exactly the size fits; a byte less sends the packet whole.
        let fits = build(full.len(), 1 << 20);
        assert_eq!(fits.body, DeadLetterBody::Report(full.clone()));
        assert_eq!(build(full.len() - 1, 1 << 20).body, DeadLetterBody::Whole);
        // Neither fits: the first entries that do, and the summary says how many.
        let limit = full.len() / 2;
        let cut = build(limit, payload.len() - 1);
        let DeadLetterBody::Truncated { report, listed } = &cut.body else {
            panic!("{:?}", cut.body);
        };
        assert!(
            report.len() <= limit && *listed > 0 && *listed < 50,
            "{listed}"
        );
        let entries: Vec<Value> = serde_json::from_slice(report).unwrap();
        assert_eq!(entries.len(), *listed);
        assert_eq!(entries[*listed - 1]["index"], *listed as u64 - 1);
        assert_eq!(cut.rejected, 50);
        assert_eq!(cut.payload_kind(), PAYLOAD_ELEMENTS);
        assert!(
            cut.summary
                .contains(&format!("lists the first {listed} only")),
            "{}",
            cut.summary
        );
    }

    #[test]
    fn limits_leave_room_for_every_header() {
        let limits = SizeLimits {
            report_max_bytes: 1 << 20,
            max_payload: 1 << 20,
        };
        let (report, payload) = limits.for_headers(None);
        assert_eq!(payload, (1 << 20) - OWN_HEADERS_ROOM);
        assert_eq!(report, payload);
        let mut agent = HeaderMap::new();
        agent.insert(headers::AGENT, "a1");
        agent.append(headers::SEQ, "7");
        // "NATS/1.0\r\n" "Logdist-Agent: a1\r\n" "Logdist-Seq: 7\r\n" "\r\n"
        let wire = "NATS/1.0\r\nLogdist-Agent: a1\r\nLogdist-Seq: 7\r\n\r\n".len();
        assert_eq!(limits.for_headers(Some(&agent)).1, payload - wire);
        let small = SizeLimits {
            report_max_bytes: 4096,
            max_payload: 8 << 20,
        };
        assert_eq!(
            small.for_headers(None),
            (4096, (8 << 20) - OWN_HEADERS_ROOM)
        );
    }

    #[test]
    fn a_summary_quotes_at_most_a_short_reason() {
        let long = format!(
            r#"[{{"timestamp":1,"severity":"{}","source":"s","message":"m"}}]"#,
            "X".repeat(5000)
        );
        let packet = crate::PacketValidator::new(1 << 20)
            .parse(long.as_bytes())
            .unwrap();
        let letter = PacketDeadLetter::build(&packet.invalid, 1, long.len(), 100, 1 << 20);
        assert_eq!(letter.body, DeadLetterBody::Whole);
        assert!(letter.summary.len() < 600, "{}", letter.summary);
        assert!(letter.summary.ends_with('…'), "{}", letter.summary);
    }

    #[test]
    fn a_packet_dead_letter_says_what_its_payload_is_and_drops_forged_values() {
        let payload = "[7,{}]";
        let packet = crate::PacketValidator::new(1 << 20)
            .parse(payload.as_bytes())
            .unwrap();
        let letter = PacketDeadLetter::build(&packet.invalid, packet.len(), 6, 1 << 20, 1 << 20);
        let mut agent = HeaderMap::new();
        agent.insert(headers::PAYLOAD, "packet");
        agent.insert(headers::INVALID_COUNT, "0");
        agent.insert(headers::INDEX, "3");
        agent.insert(headers::AGENT, "a");
        let h = packet_deadletter_headers(
            Some(&agent),
            &letter,
            "logs.ingest",
            &HeaderValue::from("r"),
        );
        assert_eq!(
            h.get(headers::ERROR_CODE).unwrap().as_str(),
            "invalid_elements"
        );
        assert_eq!(h.get_all(headers::PAYLOAD).count(), 1);
        assert_eq!(h.get(headers::PAYLOAD).unwrap().as_str(), "elements");
        assert_eq!(h.get(headers::INVALID_COUNT).unwrap().as_str(), "2");
        assert!(h.get(headers::INDEX).is_none());
        assert_eq!(h.get(headers::AGENT).unwrap().as_str(), "a");
        assert!(h
            .get(headers::ERROR)
            .unwrap()
            .as_str()
            .starts_with("2 of 2 elements are invalid"));
    }

    #[test]
    fn deadletter_headers_follow_the_contract() {
        let mut agent = HeaderMap::new();
        agent.insert(headers::SEQ, "7");
        let reason = Reason {
            code: "not_json",
            text: "payload is not JSON:\nline 2",
        };
        let h = deadletter_headers(
            Some(&agent),
            reason,
            "logs.ingest.a",
            Some(4),
            &HeaderValue::from("r"),
        );
        assert_eq!(h.get(headers::SEQ).unwrap().as_str(), "7");
        assert_eq!(
            h.get(headers::ERROR).unwrap().as_str(),
            "payload is not JSON: line 2"
        );
        assert_eq!(h.get(headers::ERROR_CODE).unwrap().as_str(), "not_json");
        assert_eq!(h.get(headers::SUBJECT).unwrap().as_str(), "logs.ingest.a");
        assert_eq!(h.get(headers::INDEX).unwrap().as_str(), "4");
        assert_eq!(h.get(headers::DISTRIBUTOR).unwrap().as_str(), "r");
        let whole = deadletter_headers(None, reason, "logs.ingest", None, &HeaderValue::from("r"));
        assert!(whole.get(headers::INDEX).is_none());
        let mut forged = HeaderMap::new();
        forged.insert(headers::INDEX, "1");
        forged.insert(headers::AGENT, "a");
        let h = deadletter_headers(Some(&forged), reason, "x", None, &HeaderValue::from("r"));
        assert!(h.get(headers::INDEX).is_none());
        assert_eq!(h.get(headers::AGENT).unwrap().as_str(), "a");
    }
}
