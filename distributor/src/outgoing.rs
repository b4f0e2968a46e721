//! A validated packet on its way to an analyzer, and the headers it is forwarded with, exactly as
//! `docs/protocol.md` specifies them (the dead-letter headers are in
//! [`logdist::protocol::deadletter`]).
//!
//! Header names are `HeaderName` constants ([`logdist::protocol::headers::name`]) so the hot
//! path does not parse them.

use async_nats::header::{HeaderMap, HeaderValue};
use async_nats::Subject;
use bytes::Bytes;
use logdist::protocol::headers::name::{COUNT, DISTRIBUTOR};

use crate::affinity::KeyHash;

/// A validated packet on its way to an analyzer (or held until one is online).
#[derive(Debug)]
pub struct Outgoing {
    /// The ingest subject it came on (for a dead letter, should it end as one).
    pub subject: Subject,
    /// The agent's headers as they came (at-least-once keeps `Logdist-Packet-Id` beside them
    /// and adds it when the packet leaves alone or as a dead letter). The distributor's own
    /// `Logdist-Count` and `Logdist-Distributor` are added only when the packet leaves alone
    /// ([`Outgoing::forwarded_headers`]): in a batch they would be thrown away, and adding the
    /// two to the map cost ~2,700 instructions a packet (callgrind), a tenth of a coalesced
    /// single message's.
    pub headers: HeaderMap,
    /// The original bytes, or the valid elements of a mixed packet.
    pub payload: Bytes,
    /// Log messages in `payload`.
    pub messages: u64,
    /// The packet's affinity key (`None` without `--affinity` or without a key).
    pub key: Option<KeyHash>,
}

impl Outgoing {
    /// The headers the packet leaves with when it goes alone (not in a batch): the agent's plus
    /// `Logdist-Count` and `Logdist-Distributor` (`replica`). Values the agent may have set under
    /// these names are replaced, so analyzers can trust them.
    pub fn forwarded_headers(
        mut headers: HeaderMap,
        messages: u64,
        replica: &HeaderValue,
    ) -> HeaderMap {
        headers.insert(COUNT, HeaderValue::from(messages));
        headers.insert(DISTRIBUTOR, replica.clone());
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_keeps_agent_headers_and_overrides_ours() {
        let mut agent = HeaderMap::new();
        agent.insert(logdist::protocol::headers::AGENT, "a1");
        agent.insert(logdist::protocol::headers::COUNT, "999");
        let h = Outgoing::forwarded_headers(agent, 3, &HeaderValue::from("r1"));
        assert_eq!(
            h.get(logdist::protocol::headers::AGENT).unwrap().as_str(),
            "a1"
        );
        assert_eq!(
            h.get(logdist::protocol::headers::COUNT).unwrap().as_str(),
            "3"
        );
        assert_eq!(
            h.get(logdist::protocol::headers::DISTRIBUTOR)
                .unwrap()
                .as_str(),
            "r1"
        );
        let h = Outgoing::forwarded_headers(HeaderMap::new(), 1, &HeaderValue::from("r1"));
        assert_eq!(h.len(), 2);
    }
}
