//! Dead letters on the dead-letter subject (`logs.deadletter`, see `docs/protocol.md`): the
//! rejected bytes, with the agent's headers plus `Logdist-Error`, `Logdist-Error-Code`,
//! `Logdist-Subject`, `Logdist-Index` (single elements only) and `Logdist-Distributor`.
//!
//! Reason codes are stable: counters (`deadletter_reasons` in the stats bucket) and users'
//! filters match on them. Validation codes come from
//! [`PacketError::code`](super::packet::PacketError::code) and
//! [`RecordError::code`](super::packet::RecordError::code); the delivery codes are here.

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};

use super::headers::name::{DISTRIBUTOR, ERROR, ERROR_CODE, INDEX, SUBJECT};

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

/// Why something is dead-lettered: a stable code and a sentence for people.
#[derive(Debug, Clone, Copy)]
pub struct Reason<'a> {
    pub code: &'static str,
    pub text: &'a str,
}

/// Headers of a dead letter: the original ones plus `Logdist-Error`, `Logdist-Error-Code`,
/// `Logdist-Subject`, `Logdist-Index` (single elements only) and `Logdist-Distributor`.
pub fn deadletter_headers(
    original: Option<&HeaderMap>,
    reason: Reason<'_>,
    subject: &str,
    index: Option<usize>,
    replica: &HeaderValue,
) -> HeaderMap {
    let mut headers = match original {
        // A whole payload has no index, even if the agent sent a header by that name.
        Some(h) if index.is_none() && h.get(INDEX).is_some() => without(h, &INDEX),
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

fn without(headers: &HeaderMap, name: &HeaderName) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (key, values) in headers.iter().filter(|(k, _)| *k != name) {
        for value in values {
            out.append(key.clone(), value.clone());
        }
    }
    out
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
