//! Dead letters on the dead-letter subject (`logs.deadletter`, see `docs/protocol.md`): the
//! rejected bytes, with the agent's headers plus `Logdist-Error`, `Logdist-Error-Code`,
//! `Logdist-Subject`, `Logdist-Index` (the HTTP gateway's single OTLP records only) and
//! `Logdist-Distributor`.
//!
//! A packet with invalid elements costs one dead letter ([`PacketDeadLetter`]), however many:
//! a JSON report of every invalid element (index, reason code, reason, the element's own JSON),
//! or, when that report would pass a size limit, the packet itself, whole, with a summary.
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
    headers.insert(PAYLOAD, HeaderValue::from(letter.payload_kind()));
    headers.insert(INVALID_COUNT, HeaderValue::from(letter.rejected));
    headers
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

/// What to publish for one packet's invalid elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketDeadLetter {
    /// How many elements were rejected.
    pub rejected: usize,
    /// The JSON report, or `None` for "the original packet, whole".
    pub report: Option<Vec<u8>>,
    /// The `Logdist-Error` text: how many elements of how many, by reason, and (for a whole
    /// packet) why the report was not sent and the first element's reason.
    pub summary: String,
    /// Invalid elements, by reason code: what the stats count.
    pub by_code: BTreeMap<&'static str, u64>,
}

impl PacketDeadLetter {
    /// The dead letter of a packet of `elements` elements whose invalid ones are `invalid`
    /// (at least one), with a report of at most `max_report_bytes`.
    pub fn build(invalid: &[InvalidRecord<'_>], elements: usize, max_report_bytes: usize) -> Self {
        let mut by_code: BTreeMap<&'static str, u64> = BTreeMap::new();
        for record in invalid {
            *by_code.entry(record.error.code()).or_insert(0) += 1;
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
        match report(invalid, max_report_bytes) {
            Some(report) => PacketDeadLetter {
                rejected: invalid.len(),
                report: Some(report),
                summary: format!("{head}; the payload lists each with its index and reason"),
                by_code,
            },
            None => {
                let first = invalid
                    .first()
                    .map(|r| format!("; the first, at index {}: {}", r.index, r.error))
                    .unwrap_or_default();
                PacketDeadLetter {
                    rejected: invalid.len(),
                    report: None,
                    summary: format!(
                        "{head}; their report would exceed {max_report_bytes} bytes, so the payload is the packet, whole{first}"
                    ),
                    by_code,
                }
            }
        }
    }

    /// The `Logdist-Payload` header value.
    pub fn payload_kind(&self) -> &'static str {
        if self.report.is_some() {
            PAYLOAD_ELEMENTS
        } else {
            PAYLOAD_PACKET
        }
    }
}

/// The JSON array of `invalid`, or `None` when it would exceed `limit` bytes.
fn report(invalid: &[InvalidRecord<'_>], limit: usize) -> Option<Vec<u8>> {
    // Cheap lower bound first, so a flood of tiny elements never builds a report it drops.
    let at_least: usize = invalid
        .iter()
        .map(|r| r.raw.len() + MIN_ENTRY_OVERHEAD)
        .sum();
    if at_least > limit {
        return None;
    }
    let mut out = Vec::with_capacity(at_least + 2);
    out.push(b'[');
    for (i, record) in invalid.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write!(
            out,
            r#"{{"index":{},"code":"{}","error":"#,
            record.index,
            record.error.code()
        )
        .expect("writing to a Vec cannot fail");
        serde_json::to_writer(&mut out, &record.error.to_string())
            .expect("a string always serializes");
        out.extend_from_slice(b",\"element\":");
        // The element's exact text: valid JSON (it was parsed as one element of the array).
        out.extend_from_slice(record.raw.trim().as_bytes());
        out.push(b'}');
        if out.len() + 1 > limit {
            return None;
        }
    }
    out.push(b']');
    Some(out)
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
        let letter = PacketDeadLetter::build(&packet.invalid, packet.len(), 1 << 20);
        assert_eq!(letter.payload_kind(), PAYLOAD_ELEMENTS);
        assert_eq!(
            letter.summary,
            "3 of 5 elements are invalid (missing_field 1, not_an_object 1, unknown_severity 1); the payload lists each with its index and reason"
        );
        let report: Vec<Value> = serde_json::from_slice(letter.report.as_ref().unwrap()).unwrap();
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
        let letter = PacketDeadLetter::build(&packet.invalid, packet.len(), 1 << 20);
        assert_eq!(letter.report, None);
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
        let full = PacketDeadLetter::build(&packet.invalid, 50, 1 << 20)
            .report
            .unwrap();
        // Exactly the size fits; a byte less sends the packet whole.
        let fits = PacketDeadLetter::build(&packet.invalid, 50, full.len());
        assert_eq!(fits.report.as_deref(), Some(full.as_slice()));
        assert_eq!(
            PacketDeadLetter::build(&packet.invalid, 50, full.len() - 1).report,
            None
        );
    }

    #[test]
    fn a_packet_dead_letter_says_what_its_payload_is_and_drops_forged_values() {
        let payload = "[7,{}]";
        let packet = crate::PacketValidator::new(1 << 20)
            .parse(payload.as_bytes())
            .unwrap();
        let letter = PacketDeadLetter::build(&packet.invalid, packet.len(), 1 << 20);
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
