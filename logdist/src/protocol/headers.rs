//! Names of the NATS headers in the wire contract (see `docs/protocol.md`), as strings and as
//! typed [`name`] constants.
//!
//! Agents may set the `Logdist-Agent`/`-Seq`/`-Sent-At` headers; nothing requires them (a plain
//! `nats pub` sends none). The distributor adds `Logdist-Count` and `Logdist-Distributor` when it
//! forwards, and the dead-letter headers when it rejects.

/// Agent id of the sender (set by agents; optional).
pub const AGENT: &str = "Logdist-Agent";
/// Per-agent sequence number of the packet (set by agents; optional).
pub const SEQ: &str = "Logdist-Seq";
/// When the agent sent the packet, in unix nanoseconds (set by agents; optional). Analyzers use it
/// for end-to-end latency.
pub const SENT_AT: &str = "Logdist-Sent-At";
/// Number of log messages in the forwarded packet (set by the distributor).
pub const COUNT: &str = "Logdist-Count";
/// Replica id of the distributor that routed the packet (set by the distributor).
pub const DISTRIBUTOR: &str = "Logdist-Distributor";
/// Stable id of a packet in at-least-once mode, so analyzers can drop redeliveries.
pub const PACKET_ID: &str = "Logdist-Packet-Id";
/// Dead letters: the human-readable reason.
pub const ERROR: &str = "Logdist-Error";
/// Dead letters: the machine-readable reason code (`not_json`, `missing_field`, …).
pub const ERROR_CODE: &str = "Logdist-Error-Code";
/// Dead letters: the subject the rejected bytes were published on.
pub const SUBJECT: &str = "Logdist-Subject";
/// Dead letters of an HTTP analyzer with `--forward-format message`: position of the rejected
/// message in its packet. A packet's (or an OTLP request's) one dead letter has none: its report
/// gives each element's index.
pub const INDEX: &str = "Logdist-Index";
/// Dead letters from an HTTP analyzer: the status its endpoint answered (e.g. `400`).
pub const HTTP_STATUS: &str = "Logdist-Http-Status";
/// Dead letters from an analyzer: `<id>.<instance>` of the analyzer that dead-lettered it.
pub const ANALYZER: &str = "Logdist-Analyzer";
/// Dead letters of a packet with invalid elements (code `invalid_elements`): what the payload is,
/// `elements` (a JSON report of the invalid elements) or `packet` (the original packet, whole).
pub const PAYLOAD: &str = "Logdist-Payload";
/// Dead letters of a packet with invalid elements: how many of its elements were rejected.
pub const INVALID_COUNT: &str = "Logdist-Invalid-Count";
/// Dead letters of the HTTP gateway's OTLP endpoint: the media type of the payload
/// (`application/x-protobuf` or `application/json` for a request body, `application/json` for a
/// report).
pub const CONTENT_TYPE: &str = "Content-Type";

/// The same names as typed [`HeaderName`](async_nats::header::HeaderName) constants, so a hot
/// path that sets them does not parse them per message.
pub mod name {
    use async_nats::header::HeaderName;

    pub const AGENT: HeaderName = HeaderName::from_static(super::AGENT);
    pub const SEQ: HeaderName = HeaderName::from_static(super::SEQ);
    pub const SENT_AT: HeaderName = HeaderName::from_static(super::SENT_AT);
    pub const COUNT: HeaderName = HeaderName::from_static(super::COUNT);
    pub const DISTRIBUTOR: HeaderName = HeaderName::from_static(super::DISTRIBUTOR);
    pub const PACKET_ID: HeaderName = HeaderName::from_static(super::PACKET_ID);
    pub const ERROR: HeaderName = HeaderName::from_static(super::ERROR);
    pub const ERROR_CODE: HeaderName = HeaderName::from_static(super::ERROR_CODE);
    pub const SUBJECT: HeaderName = HeaderName::from_static(super::SUBJECT);
    pub const INDEX: HeaderName = HeaderName::from_static(super::INDEX);
    pub const PAYLOAD: HeaderName = HeaderName::from_static(super::PAYLOAD);
    pub const INVALID_COUNT: HeaderName = HeaderName::from_static(super::INVALID_COUNT);
}

/// Current time as unix nanoseconds, the unit of [`SENT_AT`].
pub fn unix_nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
