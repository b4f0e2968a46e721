//! Batches: several packets routed to one analyzer, coalesced into one NATS message on
//! `analyzer.<id>` (docs/protocol.md, "Batches"). Only analyzers that announce
//! `"batch": 1` in their heartbeats get them; everyone else gets one message per packet.
//!
//! A batch is described entirely by its headers, so reading one needs no JSON: the payload is
//! the packets' payloads back to back, `Logdist-Batch-Lengths` gives their byte lengths in
//! order, and each per-packet header the contract knows (`Logdist-Agent`, `Logdist-Seq`,
//! `Logdist-Sent-At`, `Logdist-Packet-Id`) travels as a comma-separated list with one entry per
//! packet (empty where that packet had none). A packet with any other header, or with a value
//! containing a comma, is never put in a batch: it goes alone, unchanged.
//!
//! [`BatchBuilder`] makes batches (the distributor); [`split`] reads them (analyzers).

use std::ops::Range;
use std::sync::LazyLock;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::{Bytes, BytesMut};

use crate::protocol::headers::name;

/// The batch format version analyzers announce (`"batch": 1` in their heartbeats) and
/// `Logdist-Batch` is written in.
pub const BATCH_VERSION: u32 = 1;

/// A packet of at least this many payload bytes is never put in a batch, in either delivery
/// mode: it goes alone, as with `--linger 0`, even while packets queue up (what waits for the
/// same analyzer leaves first, so the order is kept). It gains nothing from a batch: joining
/// it copies every byte once more in the distributor, which costs at least what the NATS
/// message it saves does (callgrind, 100-message packets of ~14 KB: the join was +15,400
/// instructions a packet against `--linger 0` in at-most-once, and nats-server and the
/// analyzers spent no less CPU on the batches; in at-least-once, where a request and its
/// reply are saved, about even, and the bench's flood delivered more without the join).
/// Single messages (~150 B) are where coalescing pays; sizes between were not measured.
pub const ALONE_BYTES: usize = 8 * 1024;

/// `Logdist-Batch: <packets>`: the message is a batch of this many packets (2 or more).
pub const BATCH: &str = "Logdist-Batch";
/// Byte length of each packet's payload, in order: `120,4077,98`.
pub const LENGTHS: &str = "Logdist-Batch-Lengths";
/// Log messages in each packet, in order (their sum is `Logdist-Count`).
pub const COUNTS: &str = "Logdist-Batch-Counts";
/// Each packet's `Logdist-Agent` (present when at least one packet had one).
pub const AGENTS: &str = "Logdist-Batch-Agents";
/// Each packet's `Logdist-Seq`.
pub const SEQS: &str = "Logdist-Batch-Seqs";
/// Each packet's `Logdist-Sent-At`.
pub const SENT_AT: &str = "Logdist-Batch-Sent-At";
/// Each packet's `Logdist-Packet-Id` (at-least-once mode).
pub const PACKET_IDS: &str = "Logdist-Batch-Packet-Ids";

mod hn {
    use async_nats::header::HeaderName;
    pub const BATCH: HeaderName = HeaderName::from_static(super::BATCH);
    pub const LENGTHS: HeaderName = HeaderName::from_static(super::LENGTHS);
    pub const COUNTS: HeaderName = HeaderName::from_static(super::COUNTS);
    pub const AGENTS: HeaderName = HeaderName::from_static(super::AGENTS);
    pub const SEQS: HeaderName = HeaderName::from_static(super::SEQS);
    pub const SENT_AT: HeaderName = HeaderName::from_static(super::SENT_AT);
    pub const PACKET_IDS: HeaderName = HeaderName::from_static(super::PACKET_IDS);
}

/// Whether a packet forwarded with `headers` can go in a batch: every header is one the batch
/// carries per packet (or the distributor's own `Logdist-Count` / `Logdist-Distributor`), once,
/// and no value contains a comma. Anything else would be lost in a batch, so it goes alone. An
/// entry with no value (from [`packet_headers_with_room`]) is not a header: nothing of it is on
/// the wire.
///
/// [`packet_headers_with_room`]: crate::protocol::headers::packet_headers_with_room
pub fn coalescable(headers: &HeaderMap) -> bool {
    headers.iter().all(|(name, values)| {
        let known = *name == name::AGENT
            || *name == name::SEQ
            || *name == name::SENT_AT
            || *name == name::PACKET_ID
            || *name == name::COUNT
            || *name == name::DISTRIBUTOR;
        match values.as_slice() {
            [] => true,
            [value] => known && !value.as_str().contains(','),
            _ => false,
        }
    })
}

/// One comma-separated per-packet list header being built. Until a packet has a value, only the
/// number of empty entries is kept: a list no packet has a value for (`Logdist-Batch-Packet-Ids`
/// in at-most-once) costs nothing, not a string of commas built and thrown away.
#[derive(Debug, Default)]
struct List {
    text: String,
    /// Packets pushed since the last take (entries in the list).
    entries: usize,
    /// Whether any packet had a value (a list of empty entries is not sent).
    any: bool,
}

impl List {
    fn push(&mut self, value: Option<&str>) {
        match value {
            Some(v) if !self.any => {
                // The empty entries so far, then this one: one separator after each of them.
                self.text.extend(std::iter::repeat_n(',', self.entries));
                self.text.push_str(v);
                self.any = true;
            }
            Some(v) => {
                self.text.push(',');
                self.text.push_str(v);
            }
            None if self.any => self.text.push(','),
            None => {}
        }
        self.entries += 1;
    }

    /// The list's header value, if any packet had a value; the list is empty again, and keeps
    /// its room for the next batch.
    fn take(&mut self) -> Option<HeaderValue> {
        self.entries = 0;
        let value = std::mem::take(&mut self.any).then(|| list_value(&self.text));
        self.text.clear();
        value
    }
}

/// Builds one batch at a time: [`push`](Self::push) packets, then [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct BatchBuilder {
    /// The packets' payloads (shared, not copied), joined once by `finish` into a buffer of
    /// the batch's size: a buffer that grew as packets came copied each payload ~2.5 times
    /// over for a batch of ten 14 KB packets, in reallocations.
    parts: Vec<Bytes>,
    bytes: usize,
    packets: usize,
    messages: u64,
    lengths: String,
    counts: String,
    agents: List,
    seqs: List,
    sent_at: List,
    packet_ids: List,
}

/// An empty header map with a table sized for every batch header, cloned for each batch; built
/// once per process, on first use (77be4c9 built it per builder, which at-least-once then made
/// per request).
///
/// async-nats' `HeaderMap` is a `HashMap`, so a batch's eight or nine headers grew a fresh map
/// twice (4 → 8 → 16 buckets), each growth re-hashing every name with SipHash. With the template
/// `finish` costs 7,374–7,786 instructions a batch against 10,300–10,437 (callgrind,
/// `scripts/callgrind-distributor.sh nats 20000|40000 10`: the inclusive cost of
/// `BatchBuilder::finish` over its calls, batches of ~2.7 single messages). See
/// [`map_with_room_for`](crate::protocol::headers::map_with_room_for) for how the template is
/// made. An entry left empty (a list no packet of the batch had a value for) is not on the wire
/// (the batching tests check what analyzers receive).
static HEADERS_TEMPLATE: LazyLock<HeaderMap> = LazyLock::new(|| {
    crate::protocol::headers::map_with_room_for(&[
        BATCH,
        crate::protocol::headers::COUNT,
        crate::protocol::headers::DISTRIBUTOR,
        LENGTHS,
        COUNTS,
        AGENTS,
        SEQS,
        SENT_AT,
        PACKET_IDS,
    ])
});

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Packets pushed since the last [`finish`](Self::finish).
    pub fn packets(&self) -> usize {
        self.packets
    }

    /// Payload bytes pushed since the last [`finish`](Self::finish).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Log messages pushed since the last [`finish`](Self::finish).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Appends one packet of `messages` log messages that [`coalescable`] accepted.
    pub fn push(&mut self, headers: &HeaderMap, payload: &Bytes, messages: u64) {
        self.append(headers, payload, messages, None);
    }

    /// [`push`](Self::push) for a packet whose `Logdist-Packet-Id` is kept beside its headers
    /// rather than in them; a value under that name in `headers` (an agent's) is ignored.
    pub fn push_with_packet_id(
        &mut self,
        headers: &HeaderMap,
        payload: &Bytes,
        messages: u64,
        packet_id: &str,
    ) {
        self.append(headers, payload, messages, Some(packet_id));
    }

    fn append(
        &mut self,
        headers: &HeaderMap,
        payload: &Bytes,
        messages: u64,
        own_packet_id: Option<&str>,
    ) {
        let first = self.packets == 0;
        if !first {
            self.lengths.push(',');
            self.counts.push(',');
        }
        push_decimal(&mut self.lengths, payload.len() as u64);
        push_decimal(&mut self.counts, messages);
        // One pass over the packet's few headers, comparing names: a look-up by name hashes
        // it (SipHash), ~400 instructions each of the four (callgrind).
        let (mut agent, mut seq, mut sent_at, mut packet_id) = (None, None, None, None);
        for (n, values) in headers.iter() {
            let value = values.first().map(HeaderValue::as_str);
            if *n == name::AGENT {
                agent = value;
            } else if *n == name::SEQ {
                seq = value;
            } else if *n == name::SENT_AT {
                sent_at = value;
            } else if *n == name::PACKET_ID {
                packet_id = value;
            }
        }
        self.agents.push(agent);
        self.seqs.push(seq);
        self.sent_at.push(sent_at);
        self.packet_ids.push(own_packet_id.or(packet_id));
        self.parts.push(payload.clone());
        self.bytes += payload.len();
        self.packets += 1;
        self.messages += messages;
    }

    /// The batch's headers and payload (`distributor` is the `Logdist-Distributor` value); the
    /// builder is empty again afterwards.
    pub fn finish(&mut self, distributor: &HeaderValue) -> (HeaderMap, Bytes) {
        let decimal = |n: u64| {
            let mut text = String::with_capacity(20);
            push_decimal(&mut text, n);
            text
        };
        let mut headers = HEADERS_TEMPLATE.clone();
        headers.insert(hn::BATCH, decimal(self.packets as u64));
        headers.insert(name::COUNT, decimal(self.messages));
        headers.insert(name::DISTRIBUTOR, distributor.clone());
        headers.insert(hn::LENGTHS, list_value(&self.lengths));
        headers.insert(hn::COUNTS, list_value(&self.counts));
        self.lengths.clear();
        self.counts.clear();
        for (n, list) in [
            (hn::AGENTS, &mut self.agents),
            (hn::SEQS, &mut self.seqs),
            (hn::SENT_AT, &mut self.sent_at),
            (hn::PACKET_IDS, &mut self.packet_ids),
        ] {
            if let Some(text) = list.take() {
                headers.insert(n, text);
            }
        }
        let mut payload = BytesMut::with_capacity(self.bytes);
        for part in self.parts.drain(..) {
            payload.extend_from_slice(&part);
        }
        self.packets = 0;
        self.messages = 0;
        self.bytes = 0;
        (headers, payload.freeze())
    }
}

/// A list header's value, copied from the builder's text (which keeps its room, so the next
/// batch's list grows no more): through `HeaderValue`'s `Deserialize`, which takes the text as
/// it is. `HeaderValue::from` would scan it char by char for a line break first, ~6
/// instructions a byte: a batch of ~57 single messages has ~2,300 bytes of lists, and its
/// inserts cost 3,183 instructions each with the scan (callgrind,
/// `scripts/callgrind-distributor.sh nats 40000 10`). The text has no line break to find: it is
/// decimal digits, and packets' header values, each checked for line breaks when it was made
/// (by async-nats' reader, or by `From` in the HTTP gateway), joined by commas. Should a later
/// async-nats refuse text there, the scanning `from` takes it.
fn list_value(text: &str) -> HeaderValue {
    use serde::de::IntoDeserializer;
    use serde::Deserialize;
    let deserializer: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        text.into_deserializer();
    HeaderValue::deserialize(deserializer).unwrap_or_else(|_| HeaderValue::from(text))
}

/// Appends `n` in decimal: `write!` goes through `core::fmt`, a few hundred instructions for
/// each of the two numbers every packet adds.
fn push_decimal(text: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        text.push(char::from(digit));
    }
}

/// One packet of a batch, as [`split`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPart<'a> {
    /// Where its payload is in the batch's payload.
    pub range: Range<usize>,
    /// Log messages in it (`Logdist-Batch-Counts`).
    pub messages: u64,
    pub agent: Option<&'a str>,
    pub seq: Option<&'a str>,
    pub sent_at: Option<&'a str>,
    pub packet_id: Option<&'a str>,
}

impl BatchPart<'_> {
    /// The headers the packet would have had alone: its own per-packet headers, its
    /// `Logdist-Count`, and the batch's `Logdist-Distributor`.
    pub fn headers(&self, batch: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (n, v) in [
            (name::AGENT, self.agent),
            (name::SEQ, self.seq),
            (name::SENT_AT, self.sent_at),
            (name::PACKET_ID, self.packet_id),
        ] {
            if let Some(v) = v {
                out.insert(n, v);
            }
        }
        out.insert(name::COUNT, HeaderValue::from(self.messages));
        if let Some(d) = batch.get(name::DISTRIBUTOR) {
            out.insert(name::DISTRIBUTOR, d.clone());
        }
        out
    }
}

/// Why a message that says it is a batch cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("{header} is missing")]
    Missing { header: &'static str },
    #[error("{header} is not a list of numbers: {value:?}")]
    NotNumbers { header: &'static str, value: String },
    #[error("{header} has {found} entries for {packets} packets")]
    WrongLength {
        header: &'static str,
        found: usize,
        packets: usize,
    },
    #[error("the lengths add up to {lengths} bytes but the payload has {payload}")]
    WrongTotal { lengths: usize, payload: usize },
}

impl BatchError {
    /// Stable short name for counters and dead letters.
    pub fn code(&self) -> &'static str {
        "bad_batch"
    }
}

/// Reads the packets of a batch: `Ok(None)` when the message is not a batch (no
/// `Logdist-Batch`), a packet to read as it is.
pub fn split<'a>(
    headers: Option<&'a HeaderMap>,
    payload_len: usize,
) -> Result<Option<Vec<BatchPart<'a>>>, BatchError> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    let Some(declared) = headers.get(hn::BATCH) else {
        return Ok(None);
    };
    let packets: usize = declared
        .as_str()
        .trim()
        .parse()
        .map_err(|_| BatchError::NotNumbers {
            header: BATCH,
            value: declared.as_str().to_string(),
        })?;
    let numbers = |n: HeaderName, header: &'static str| -> Result<Vec<u64>, BatchError> {
        let value = headers
            .get(n)
            .ok_or(BatchError::Missing { header })?
            .as_str();
        let parsed: Result<Vec<u64>, _> = value.split(',').map(|s| s.trim().parse()).collect();
        let parsed = parsed.map_err(|_| BatchError::NotNumbers {
            header,
            value: value.chars().take(200).collect(),
        })?;
        if parsed.len() != packets {
            return Err(BatchError::WrongLength {
                header,
                found: parsed.len(),
                packets,
            });
        }
        Ok(parsed)
    };
    let lengths = numbers(hn::LENGTHS, LENGTHS)?;
    let counts = numbers(hn::COUNTS, COUNTS)?;
    let list = |n: HeaderName, header: &'static str| -> Result<Vec<Option<&'a str>>, BatchError> {
        let Some(value) = headers.get(n) else {
            return Ok(vec![None; packets]);
        };
        let entries: Vec<Option<&str>> = value
            .as_str()
            .split(',')
            .map(|s| (!s.is_empty()).then_some(s))
            .collect();
        if entries.len() != packets {
            return Err(BatchError::WrongLength {
                header,
                found: entries.len(),
                packets,
            });
        }
        Ok(entries)
    };
    let agents = list(hn::AGENTS, AGENTS)?;
    let seqs = list(hn::SEQS, SEQS)?;
    let sent_at = list(hn::SENT_AT, SENT_AT)?;
    let ids = list(hn::PACKET_IDS, PACKET_IDS)?;
    let total = lengths
        .iter()
        .try_fold(0usize, |sum, &l| sum.checked_add(l as usize));
    if total != Some(payload_len) {
        return Err(BatchError::WrongTotal {
            lengths: total.unwrap_or(usize::MAX),
            payload: payload_len,
        });
    }
    let mut start = 0;
    let parts = (0..packets)
        .map(|i| {
            let end = start + lengths[i] as usize;
            let part = BatchPart {
                range: start..end,
                messages: counts[i],
                agent: agents[i],
                seq: seqs[i],
                sent_at: sent_at[i],
                packet_id: ids[i],
            };
            start = end;
            part
        })
        .collect();
    Ok(Some(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_headers(agent: Option<&str>, sent_at: Option<&str>, id: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = agent {
            h.insert(name::AGENT, a);
        }
        if let Some(s) = sent_at {
            h.insert(name::SENT_AT, s);
        }
        if let Some(i) = id {
            h.insert(name::PACKET_ID, i);
        }
        h.insert(name::COUNT, "1");
        h.insert(name::DISTRIBUTOR, "r1");
        h
    }

    #[test]
    fn a_packet_id_given_beside_the_headers_replaces_the_agents() {
        let p =
            &Bytes::from_static(br#"{"timestamp":1,"severity":"INFO","source":"a","message":"x"}"#);
        let mut b = BatchBuilder::new();
        // The agent's own value under the name, then none at all: ours in both entries.
        b.push_with_packet_id(
            &packet_headers(Some("a1"), None, Some("forged")),
            p,
            1,
            "LOGS:5",
        );
        b.push_with_packet_id(&packet_headers(None, None, None), p, 1, "LOGS:6");
        b.push(&packet_headers(None, None, Some("LOGS:7")), p, 1);
        let (headers, _) = b.finish(&HeaderValue::from("r1"));
        assert_eq!(
            headers.get(PACKET_IDS).unwrap().as_str(),
            "LOGS:5,LOGS:6,LOGS:7"
        );
        assert_eq!(headers.get(AGENTS).unwrap().as_str(), "a1,,");
    }

    #[test]
    fn a_batch_round_trips_per_packet_headers_and_payloads() {
        let mut b = BatchBuilder::new();
        let p1 =
            &Bytes::from_static(br#"{"timestamp":1,"severity":"INFO","source":"a","message":"x"}"#);
        let p2 = &Bytes::from_static(
            br#"[{"timestamp":2,"severity":"WARN","source":"b","message":"y, z"},{"timestamp":3,"severity":"INFO","source":"b","message":""}]"#,
        );
        let p3 = &Bytes::from_static(
            br#"{"timestamp":4,"severity":"ERROR","source":"c","message":"q"}"#,
        );
        b.push(
            &packet_headers(Some("a1"), Some("100"), Some("LOGS:7")),
            p1,
            1,
        );
        b.push(&packet_headers(None, Some("200"), Some("LOGS:9")), p2, 2);
        b.push(&packet_headers(Some("a3"), None, Some("LOGS:8")), p3, 1);
        assert_eq!(b.bytes(), p1.len() + p2.len() + p3.len());
        assert_eq!((b.packets(), b.messages()), (3, 4));
        let (headers, payload) = b.finish(&HeaderValue::from("r1"));
        assert_eq!(b.packets(), 0);
        assert_eq!(headers.get(BATCH).unwrap().as_str(), "3");
        assert_eq!(headers.get(name::COUNT).unwrap().as_str(), "4");
        assert_eq!(headers.get(AGENTS).unwrap().as_str(), "a1,,a3");
        assert_eq!(headers.get(SENT_AT).unwrap().as_str(), "100,200,");
        assert!(headers.get(SEQS).is_none(), "no packet had a Logdist-Seq");
        let parts = split(Some(&headers), payload.len()).unwrap().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(&payload[parts[0].range.clone()], &p1[..]);
        assert_eq!(&payload[parts[1].range.clone()], &p2[..]);
        assert_eq!(&payload[parts[2].range.clone()], &p3[..]);
        assert_eq!(payload.len(), p1.len() + p2.len() + p3.len());
        assert_eq!(parts[1].messages, 2);
        assert_eq!(parts[1].agent, None);
        assert_eq!(parts[2].packet_id, Some("LOGS:8"));
        let alone = parts[0].headers(&headers);
        assert_eq!(alone.get(name::AGENT).unwrap().as_str(), "a1");
        assert_eq!(alone.get(name::SENT_AT).unwrap().as_str(), "100");
        assert_eq!(alone.get(name::PACKET_ID).unwrap().as_str(), "LOGS:7");
        assert_eq!(alone.get(name::COUNT).unwrap().as_str(), "1");
        assert_eq!(alone.get(name::DISTRIBUTOR).unwrap().as_str(), "r1");
        // The builder is reusable.
        b.push(&packet_headers(None, None, None), p1, 1);
        b.push(&packet_headers(None, None, None), p3, 1);
        let (headers, payload) = b.finish(&HeaderValue::from("r1"));
        assert_eq!(b.bytes(), 0);
        assert_eq!(&payload[p1.len()..], &p3[..]);
        assert!(headers.get(AGENTS).is_none());
        assert_eq!(
            split(Some(&headers), payload.len()).unwrap().unwrap().len(),
            2
        );
        // A list whose first values are empty still has one entry per packet.
        b.push(&packet_headers(None, None, None), p1, 1);
        b.push(&packet_headers(None, None, None), p1, 1);
        b.push(&packet_headers(Some("a3"), None, None), p3, 1);
        b.push(&packet_headers(None, None, None), p1, 1);
        let (headers, payload) = b.finish(&HeaderValue::from("r1"));
        assert_eq!(headers.get(AGENTS).unwrap().as_str(), ",,a3,");
        let parts = split(Some(&headers), payload.len()).unwrap().unwrap();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[2].agent, Some("a3"));
        assert_eq!((parts[0].agent, parts[3].agent), (None, None));
    }

    #[test]
    fn batches_of_ten_14_kb_packets_round_trip_one_after_another() {
        // The bench's shape: 100-message packets of ~140-byte messages, ten to a batch.
        let packet = |batch: usize, i: usize| {
            let message = format!(
                r#"{{"timestamp":{batch}{i},"severity":"INFO","source":"s","message":"{}"}}"#,
                "m".repeat(80)
            );
            Bytes::from(format!("[{}]", vec![message; 100].join(",")))
        };
        let mut b = BatchBuilder::new();
        for batch in 0..20 {
            let packets: Vec<Bytes> = (0..10).map(|i| packet(batch, i)).collect();
            for p in &packets {
                b.push(&packet_headers(Some("a"), None, None), p, 100);
            }
            let total: usize = packets.iter().map(Bytes::len).sum();
            assert!(total > 130_000, "{total} bytes");
            assert_eq!(b.bytes(), total);
            let (headers, payload) = b.finish(&HeaderValue::from("r1"));
            assert_eq!(payload.len(), total);
            assert_eq!(headers.get(name::COUNT).unwrap().as_str(), "1000");
            let parts = split(Some(&headers), payload.len()).unwrap().unwrap();
            assert_eq!(parts.len(), 10);
            for (part, p) in parts.iter().zip(&packets) {
                assert_eq!(&payload[part.range.clone()], &p[..]);
            }
        }
    }

    #[test]
    fn the_headers_template_names_every_batch_header_and_holds_no_value() {
        let template = HEADERS_TEMPLATE.clone();
        assert_eq!(template.len(), 9, "{template:?}");
        assert!(template.iter().all(|(_, values)| values.is_empty()));
        for n in [BATCH, LENGTHS, COUNTS, AGENTS, SEQS, SENT_AT, PACKET_IDS] {
            assert!(template.get(n).is_none());
        }
        // A batch's headers: every list the packets had, none they did not.
        let mut b = BatchBuilder::new();
        let p =
            Bytes::from_static(br#"{"timestamp":1,"severity":"INFO","source":"a","message":"m"}"#);
        b.push(&packet_headers(None, Some("100"), None), &p, 1);
        b.push(&packet_headers(None, Some("200"), None), &p, 1);
        let (headers, _) = b.finish(&HeaderValue::from("r1"));
        // The inserts found the template's names: no name is in the map twice.
        assert_eq!(headers.len(), 9, "{headers:?}");
        let mut sent: Vec<&str> = headers
            .iter()
            .filter(|(_, values)| !values.is_empty())
            .map(|(n, _)| n.as_ref())
            .collect();
        sent.sort_unstable();
        assert_eq!(
            sent,
            [
                BATCH,
                COUNTS,
                LENGTHS,
                SENT_AT,
                crate::protocol::headers::COUNT,
                crate::protocol::headers::DISTRIBUTOR
            ]
        );
        assert!(headers.get(AGENTS).is_none() && headers.get(PACKET_IDS).is_none());
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut text = String::from("x");
        for n in [0, 7, 10, 4077, u64::MAX] {
            push_decimal(&mut text, n);
            text.push(',');
        }
        assert_eq!(text, format!("x0,7,10,4077,{},", u64::MAX));
    }

    #[test]
    fn a_list_value_is_its_text_as_it_is() {
        // Through `Deserialize`, with no scan: should async-nats' impl ever stop taking a
        // plain string, this shows it (the fallback keeps the batches right meanwhile).
        use serde::de::IntoDeserializer;
        use serde::Deserialize;
        let text = "1764064800123456789,,agent-3:LOGS:7";
        let direct: Result<HeaderValue, serde::de::value::Error> =
            HeaderValue::deserialize(text.into_deserializer());
        assert_eq!(direct.unwrap().as_str(), text);
        assert_eq!(list_value(text).as_str(), text);
        assert_eq!(list_value("").as_str(), "");
    }

    #[test]
    fn only_packets_whose_headers_a_batch_carries_are_coalescable() {
        assert!(coalescable(&packet_headers(Some("a"), Some("1"), None)));
        assert!(coalescable(&HeaderMap::new()));
        let mut other = packet_headers(Some("a"), None, None);
        other.insert("Trace-Id", "x");
        assert!(!coalescable(&other), "a header the batch cannot carry");
        assert!(!coalescable(&packet_headers(Some("a,b"), None, None)));
        let mut twice = packet_headers(Some("a"), None, None);
        twice.append(name::AGENT, "b");
        assert!(!coalescable(&twice), "a repeated header");
        // The HTTP gateway's map with room: its entries without a value are no headers.
        let mut roomy = crate::protocol::headers::packet_headers_with_room();
        assert!(coalescable(&roomy));
        roomy.insert(name::AGENT, "a");
        roomy.insert(name::SENT_AT, "1");
        assert!(coalescable(&roomy));
        let mut b = BatchBuilder::new();
        let p = &Bytes::from_static(b"{}");
        b.push(&roomy, p, 1);
        b.push(&roomy, p, 1);
        let (headers, _) = b.finish(&HeaderValue::from("r1"));
        assert_eq!(headers.get(AGENTS).unwrap().as_str(), "a,a");
        assert_eq!(headers.get(SENT_AT).unwrap().as_str(), "1,1");
        roomy.insert(name::AGENT, "a,b");
        assert!(!coalescable(&roomy), "a comma, in a map with room");
    }

    #[test]
    fn a_plain_message_is_not_a_batch_and_a_broken_batch_is_an_error() {
        assert_eq!(split(None, 10), Ok(None));
        assert_eq!(split(Some(&packet_headers(None, None, None)), 10), Ok(None));
        let mut h = HeaderMap::new();
        h.insert(BATCH, "2");
        assert_eq!(
            split(Some(&h), 10),
            Err(BatchError::Missing { header: LENGTHS })
        );
        h.insert(LENGTHS, "4,6");
        h.insert(COUNTS, "1");
        assert!(matches!(
            split(Some(&h), 10),
            Err(BatchError::WrongLength { header: COUNTS, .. })
        ));
        h.insert(COUNTS, "1,1");
        assert_eq!(split(Some(&h), 10).unwrap().unwrap().len(), 2);
        assert!(matches!(
            split(Some(&h), 11),
            Err(BatchError::WrongTotal { .. })
        ));
        h.insert(LENGTHS, "4,x");
        assert!(matches!(
            split(Some(&h), 10),
            Err(BatchError::NotNumbers { .. })
        ));
        h.insert(LENGTHS, "4,6");
        h.insert(AGENTS, "a,b,c");
        assert!(matches!(
            split(Some(&h), 10),
            Err(BatchError::WrongLength { header: AGENTS, .. })
        ));
    }
}
