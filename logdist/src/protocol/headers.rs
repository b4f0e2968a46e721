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

/// A header map for a writer that builds a packet's headers itself (the HTTP gateway), with room
/// for seven headers: so that adding the distributor's `Logdist-Count` and
/// `Logdist-Distributor`, when the packet leaves alone, does not grow it. A map from
/// `HeaderMap::new` grows on its fourth name, re-hashing every name with SipHash.
///
/// Callgrind, `scripts/callgrind-distributor.sh http 20000 10`: adding the two cost 2,656
/// instructions a packet with the growth, 1,283 without; the gateway's `publish` costs 204 more
/// a request (2,309 → 2,513), most of it the clone. So it pays where at least one packet in
/// seven leaves alone: at low rates nearly all do, with `--linger 0` all.
///
/// The map holds `Logdist-Agent`, `Logdist-Sent-At` and the distributor's two with no value,
/// the fewest names that get a table of eight buckets: a clone costs ~100 instructions a name
/// (611 with these four, 812 with six). An entry without a value is not on the wire
/// (async-nats writes one line per value), `get` finds nothing in it, and
/// [`coalescable`](super::batch::coalescable) lets it pass.
pub fn packet_headers_with_room() -> async_nats::HeaderMap {
    static TEMPLATE: std::sync::LazyLock<async_nats::HeaderMap> =
        std::sync::LazyLock::new(|| map_with_room_for(&[AGENT, SENT_AT, COUNT, DISTRIBUTOR]));
    TEMPLATE.clone()
}

/// An empty header map whose table has room for `names` without growing, to be cloned for each
/// map that gets them. A stand-in for the `HeaderMap::with_capacity` async-nats (0.51) does not
/// have: drop it for that once the client offers it.
///
/// async-nats' `HeaderMap` is a `HashMap`; a clone keeps its table's size, so each `insert` of
/// one of `names` is one hash and no growth. The map is the one the public API can make with
/// room and nothing in it: the names with an empty list of values each, read from JSON
/// (async-nats' own `Deserialize`, whose table grows as the entries come in and ends as big as
/// they need). Reading it costs ~26,000 instructions: build it once per process.
pub(crate) fn map_with_room_for(names: &[&str]) -> async_nats::HeaderMap {
    let json = format!(
        "{{{}}}",
        names
            .iter()
            .map(|n| format!("\"{n}\":[]"))
            .collect::<Vec<_>>()
            .join(",")
    );
    // Constant, valid names: this cannot fail; were it to, maps still build, only with the
    // growths.
    serde_json::from_str(&json).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_with_room_has_no_values_and_its_entries_take_one() {
        let mut headers = packet_headers_with_room();
        assert!(headers.get(name::AGENT).is_none());
        assert!(headers.iter().all(|(_, values)| values.is_empty()));
        headers.insert(name::AGENT, "a1");
        headers.insert(name::COUNT, "3");
        assert_eq!(headers.get(name::AGENT).unwrap().as_str(), "a1");
        assert_eq!(headers.get(name::COUNT).unwrap().as_str(), "3");
        let with_values = headers.iter().filter(|(_, v)| !v.is_empty()).count();
        assert_eq!(with_values, 2, "{headers:?}");
    }
}
