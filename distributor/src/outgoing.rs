//! What the distributor publishes besides routing decisions: the headers of a forwarded packet
//! and of a dead letter, exactly as `docs/protocol.md` specifies them.
//!
//! Header names are `HeaderName::from_static` constants so the hot path does not parse them.

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::Subject;
use bytes::Bytes;
use logdist::headers;

pub const COUNT: HeaderName = HeaderName::from_static(headers::COUNT);
pub const DISTRIBUTOR: HeaderName = HeaderName::from_static(headers::DISTRIBUTOR);
pub const ERROR: HeaderName = HeaderName::from_static(headers::ERROR);
pub const ERROR_CODE: HeaderName = HeaderName::from_static(headers::ERROR_CODE);
pub const SUBJECT: HeaderName = HeaderName::from_static(headers::SUBJECT);
pub const INDEX: HeaderName = HeaderName::from_static(headers::INDEX);

/// Reason code of a packet dead-lettered because no analyzer was online and the hold queue was
/// full (or the distributor stopped while holding it).
pub const NO_ANALYZER_ONLINE: &str = "no_analyzer_online";

/// A validated packet on its way to an analyzer (or held until one is online).
#[derive(Debug)]
pub struct Outgoing {
    /// The ingest subject it came on (for a dead letter, should it end as one).
    pub subject: Subject,
    /// The agent's headers plus `Logdist-Count` and `Logdist-Distributor`.
    pub headers: HeaderMap,
    /// The original bytes, or the valid elements of a mixed packet.
    pub payload: Bytes,
    /// Log messages in `payload`.
    pub messages: u64,
}

/// The agent's headers (if any) plus `Logdist-Count` and `Logdist-Distributor`. Values the agent
/// may have set under these names are replaced, so analyzers can trust them.
pub fn forward_headers(
    original: Option<HeaderMap>,
    messages: u64,
    replica: &HeaderValue,
) -> HeaderMap {
    let mut headers = original.unwrap_or_default();
    headers.insert(COUNT, HeaderValue::from(messages));
    headers.insert(DISTRIBUTOR, replica.clone());
    headers
}

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

    #[test]
    fn forward_keeps_agent_headers_and_overrides_ours() {
        let mut agent = HeaderMap::new();
        agent.insert(logdist::headers::AGENT, "a1");
        agent.insert(logdist::headers::COUNT, "999");
        let h = forward_headers(Some(agent), 3, &HeaderValue::from("r1"));
        assert_eq!(h.get(logdist::headers::AGENT).unwrap().as_str(), "a1");
        assert_eq!(h.get(logdist::headers::COUNT).unwrap().as_str(), "3");
        assert_eq!(h.get(logdist::headers::DISTRIBUTOR).unwrap().as_str(), "r1");
        let h = forward_headers(None, 1, &HeaderValue::from("r1"));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn deadletter_headers_follow_the_contract() {
        let mut agent = HeaderMap::new();
        agent.insert(logdist::headers::SEQ, "7");
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
        assert_eq!(h.get(logdist::headers::SEQ).unwrap().as_str(), "7");
        assert_eq!(
            h.get(logdist::headers::ERROR).unwrap().as_str(),
            "payload is not JSON: line 2"
        );
        assert_eq!(
            h.get(logdist::headers::ERROR_CODE).unwrap().as_str(),
            "not_json"
        );
        assert_eq!(
            h.get(logdist::headers::SUBJECT).unwrap().as_str(),
            "logs.ingest.a"
        );
        assert_eq!(h.get(logdist::headers::INDEX).unwrap().as_str(), "4");
        assert_eq!(h.get(logdist::headers::DISTRIBUTOR).unwrap().as_str(), "r");
        let whole = deadletter_headers(None, reason, "logs.ingest", None, &HeaderValue::from("r"));
        assert!(whole.get(logdist::headers::INDEX).is_none());
        let mut forged = HeaderMap::new();
        forged.insert(logdist::headers::INDEX, "1");
        forged.insert(logdist::headers::AGENT, "a");
        let h = deadletter_headers(Some(&forged), reason, "x", None, &HeaderValue::from("r"));
        assert!(h.get(logdist::headers::INDEX).is_none());
        assert_eq!(h.get(logdist::headers::AGENT).unwrap().as_str(), "a");
    }
}
