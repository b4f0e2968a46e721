//! [`Coalescer`]: packets already routed to an analyzer, gathered per analyzer into batches
//! (`logdist::protocol::batch`, docs/protocol.md "Batches") so that many small packets to one
//! analyzer cost one NATS message.
//!
//! Routing is not its business: each packet is routed (and counted, by message count) before
//! it comes here, so shares and the selector's bound are exactly those without coalescing. The
//! coalescer only decides when what an analyzer was given leaves:
//! - a batch is sent when the next packet would take it past `--batch-max-bytes` or
//!   `--batch-max-messages` (that packet starts the next one; a packet is never split), when it
//!   reaches `--batch-max-messages`, and otherwise on [`flush`](Coalescer::flush), which the
//!   mode calls when no further packet is waiting, after `--linger`, and before anything that
//!   must follow the packets routed so far (a withdrawal's confirmation, a routing change);
//! - a batch of one packet is sent as that packet, unchanged; so is every packet for an
//!   analyzer that does not announce batches, or whose headers a batch cannot carry
//!   ([`coalescable`]). Packets to one analyzer leave in the order they were routed.
//!
//! Pure and synchronous: the mode publishes what [`push`](Coalescer::push) and
//! [`flush`](Coalescer::flush) hand back.

use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, HeaderValue};
use async_nats::Subject;
use bytes::Bytes;
use logdist::protocol::batch::{coalescable, BatchBuilder};

use crate::config::CoalesceArgs;
use crate::outgoing::Outgoing;

/// A NATS message for an analyzer, ready to publish.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) subject: Subject,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    /// Packets in it (1: a packet alone).
    pub(crate) packets: usize,
}

/// The packets waiting for one analyzer.
#[derive(Debug)]
struct Slot {
    subject: Subject,
    reads_batches: bool,
    /// The first packet, kept whole until a second one comes (so a lone packet leaves as it is).
    first: Option<Outgoing>,
    /// From the second packet on: all of them, the first included.
    batch: BatchBuilder,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.first.is_none() && self.batch.packets() == 0
    }

    fn bytes(&self) -> usize {
        self.first
            .as_ref()
            .map_or(self.batch.bytes(), |f| f.payload.len())
    }

    fn messages(&self) -> u64 {
        self.first
            .as_ref()
            .map_or(self.batch.messages(), |f| f.messages)
    }

    fn take(&mut self, replica: &HeaderValue) -> Option<Ready> {
        if let Some(first) = self.first.take() {
            return Some(Ready {
                subject: self.subject.clone(),
                headers: Outgoing::forwarded_headers(first.headers, first.messages, replica),
                payload: first.payload,
                packets: 1,
            });
        }
        let packets = self.batch.packets();
        if packets == 0 {
            return None;
        }
        let (headers, payload) = self.batch.finish(replica);
        Some(Ready {
            subject: self.subject.clone(),
            headers,
            payload,
            packets,
        })
    }
}

/// Batches and their counters; see the module docs.
#[derive(Debug)]
pub(crate) struct Coalescer {
    linger: Duration,
    max_bytes: usize,
    max_messages: u64,
    replica: HeaderValue,
    /// One per analyzer of the routing epoch `epoch`, by the router's index.
    slots: Vec<Slot>,
    epoch: Option<u64>,
    /// Which analyzers read batches must be asked again (membership changed).
    stale: bool,
    /// Slots with packets waiting.
    open: usize,
    /// When the oldest waiting packet came (the linger runs from it).
    since: Option<Instant>,
    counts: Counts,
}

/// What went out in batches.
#[derive(Debug, Default)]
struct Counts {
    batches_sent: u64,
    batched_packets: u64,
}

impl Counts {
    fn add(&mut self, ready: &Ready) {
        if ready.packets > 1 {
            self.batches_sent += 1;
            self.batched_packets += ready.packets as u64;
        }
    }
}

impl Coalescer {
    pub(crate) fn new(args: &CoalesceArgs, replica: HeaderValue) -> Self {
        Coalescer {
            linger: args.linger,
            max_bytes: args.batch_max_bytes,
            max_messages: args.batch_max_messages,
            replica,
            slots: Vec::new(),
            epoch: None,
            stale: true,
            open: 0,
            since: None,
            counts: Counts::default(),
        }
    }

    /// False with `--linger 0`: every packet is published alone, at once.
    pub(crate) fn enabled(&self) -> bool {
        !self.linger.is_zero()
    }

    /// Whether packets are waiting.
    pub(crate) fn is_pending(&self) -> bool {
        self.open > 0
    }

    /// When the waiting packets must leave at the latest.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.linger)
    }

    /// Whether the slots must be rebuilt before the next [`push`](Self::push): the routing
    /// epoch is not theirs, or the membership changed. [`flush`](Self::flush) first.
    pub(crate) fn needs_refresh(&self, epoch: u64) -> bool {
        self.stale || self.epoch != Some(epoch)
    }

    /// The membership changed: who reads batches is asked again before the next packet.
    pub(crate) fn membership_changed(&mut self) {
        self.stale = true;
    }

    /// Rebuilds the slots for routing epoch `epoch`: analyzer `i` is reached at `subjects[i]`
    /// and reads batches when `reads_batches(i)`. Only when nothing waits (after a flush).
    pub(crate) fn refresh(
        &mut self,
        epoch: u64,
        subjects: impl IntoIterator<Item = (Subject, bool)>,
    ) {
        debug_assert_eq!(self.open, 0, "refresh only after a flush");
        self.slots = subjects
            .into_iter()
            .map(|(subject, reads_batches)| Slot {
                subject,
                reads_batches,
                first: None,
                batch: BatchBuilder::new(),
            })
            .collect();
        self.epoch = Some(epoch);
        self.stale = false;
    }

    /// Takes a packet routed to the analyzer at `index` (of the epoch of the last
    /// [`refresh`](Self::refresh)) at `now`; what must leave now is appended to `out`, in order.
    pub(crate) fn push(
        &mut self,
        index: usize,
        packet: Outgoing,
        now: Instant,
        out: &mut Vec<Ready>,
    ) {
        let slot = &mut self.slots[index];
        if !slot.reads_batches || !coalescable(&packet.headers) {
            // Alone, after what was routed to the same analyzer before it.
            if let Some(ready) = slot.take(&self.replica) {
                self.open -= 1;
                self.counts.add(&ready);
                out.push(ready);
            }
            out.push(Ready {
                subject: slot.subject.clone(),
                headers: Outgoing::forwarded_headers(
                    packet.headers,
                    packet.messages,
                    &self.replica,
                ),
                payload: packet.payload,
                packets: 1,
            });
            self.settle_since(now);
            return;
        }
        let fits = slot.bytes() + packet.payload.len() <= self.max_bytes
            && slot.messages() + packet.messages <= self.max_messages;
        if !slot.is_empty() && !fits {
            let ready = slot.take(&self.replica).expect("not empty");
            self.open -= 1;
            self.counts.add(&ready);
            out.push(ready);
        }
        if slot.is_empty() {
            self.open += 1;
            slot.first = Some(packet);
        } else {
            if let Some(first) = slot.first.take() {
                slot.batch
                    .push(&first.headers, &first.payload, first.messages);
            }
            slot.batch
                .push(&packet.headers, &packet.payload, packet.messages);
        }
        let full = slot.messages() >= self.max_messages || slot.bytes() >= self.max_bytes;
        if full {
            let ready = slot.take(&self.replica).expect("not empty");
            self.open -= 1;
            self.counts.add(&ready);
            out.push(ready);
        }
        self.settle_since(now);
    }

    /// Everything waiting, appended to `out`.
    pub(crate) fn flush(&mut self, out: &mut Vec<Ready>) {
        if self.open == 0 {
            return;
        }
        for slot in &mut self.slots {
            if let Some(ready) = slot.take(&self.replica) {
                self.counts.add(&ready);
                out.push(ready);
            }
        }
        self.open = 0;
        self.since = None;
    }

    /// Keeps `since` the arrival of the oldest waiting packet (approximately: the first packet
    /// since the coalescer was last empty, so the linger can only end early, never late).
    fn settle_since(&mut self, now: Instant) {
        if self.open == 0 {
            self.since = None;
        } else if self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// NATS messages that carried two packets or more.
    pub(crate) fn batches_sent(&self) -> u64 {
        self.counts.batches_sent
    }

    /// Packets that went in those batches.
    pub(crate) fn batched_packets(&self) -> u64 {
        self.counts.batched_packets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdist::protocol::batch::split;
    use logdist::protocol::headers::name;

    fn args(linger_ms: u64, max_bytes: usize, max_messages: u64) -> CoalesceArgs {
        CoalesceArgs {
            linger: Duration::from_millis(linger_ms),
            batch_max_bytes: max_bytes,
            batch_max_messages: max_messages,
        }
    }

    fn packet(seq: u64, messages: u64, len: usize) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert(name::SEQ, HeaderValue::from(seq));
        Outgoing {
            subject: Subject::from("logs.ingest"),
            headers,
            payload: Bytes::from(vec![b'x'; len]),
            messages,
            key: None,
        }
    }

    fn coalescer(args: &CoalesceArgs, reads: [bool; 2]) -> Coalescer {
        let mut c = Coalescer::new(args, HeaderValue::from("r1"));
        c.refresh(
            1,
            [
                (Subject::from("analyzer.a"), reads[0]),
                (Subject::from("analyzer.b"), reads[1]),
            ],
        );
        c
    }

    fn seqs(ready: &Ready) -> Vec<String> {
        match split(Some(&ready.headers), ready.payload.len()).unwrap() {
            Some(parts) => parts.iter().map(|p| p.seq.unwrap().to_string()).collect(),
            None => vec![ready.headers.get(name::SEQ).unwrap().to_string()],
        }
    }

    #[test]
    fn packets_for_one_analyzer_go_out_together_bounded_by_messages() {
        let mut c = coalescer(&args(5, 1 << 20, 3), [true, true]);
        let now = Instant::now();
        let mut out = Vec::new();
        for seq in 0..7 {
            c.push((seq % 2) as usize, packet(seq, 1, 10), now, &mut out);
        }
        // a got 0,2,4 (full at 3 messages), 6 waits; b got 1,3,5 (full), nothing waits.
        assert_eq!(out.len(), 2);
        assert_eq!(seqs(&out[0]), ["0", "2", "4"]);
        assert_eq!(out[0].subject.as_str(), "analyzer.a");
        assert_eq!(seqs(&out[1]), ["1", "3", "5"]);
        assert!(c.is_pending());
        assert_eq!(c.deadline(), Some(now + Duration::from_millis(5)));
        out.clear();
        c.flush(&mut out);
        // A batch of one is the packet itself: no batch headers, but the distributor's own
        // (added only now that it leaves alone).
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].packets, 1);
        assert!(out[0]
            .headers
            .get(logdist::protocol::batch::BATCH)
            .is_none());
        assert_eq!(out[0].headers.get(name::COUNT).unwrap().as_str(), "1");
        assert_eq!(
            out[0].headers.get(name::DISTRIBUTOR).unwrap().as_str(),
            "r1"
        );
        assert_eq!(seqs(&out[0]), ["6"]);
        assert!(!c.is_pending());
        assert_eq!(c.deadline(), None);
        assert_eq!((c.batches_sent(), c.batched_packets()), (2, 6));
    }

    #[test]
    fn a_packet_is_never_split_and_bytes_bound_a_batch() {
        let mut c = coalescer(&args(5, 100, 1000), [true, true]);
        let now = Instant::now();
        let mut out = Vec::new();
        c.push(0, packet(0, 1, 60), now, &mut out);
        c.push(0, packet(1, 1, 60), now, &mut out);
        // 120 bytes would pass 100: the first leaves alone, the second waits.
        assert_eq!(out.len(), 1);
        assert_eq!(seqs(&out[0]), ["0"]);
        c.push(0, packet(2, 1, 500), now, &mut out);
        // Larger than the bound: the waiting one leaves, then this one, alone and whole.
        assert_eq!(out.len(), 3);
        assert_eq!(seqs(&out[1]), ["1"]);
        assert_eq!(out[2].payload.len(), 500);
        assert!(!c.is_pending());
        c.push(0, packet(3, 1, 40), now, &mut out);
        c.push(0, packet(4, 1, 40), now, &mut out);
        c.flush(&mut out);
        assert_eq!(seqs(&out[3]), ["3", "4"]);
        assert_eq!(out[3].payload.len(), 80);
        assert_eq!(
            out[3].headers.get(name::COUNT).unwrap().as_str(),
            "2",
            "Logdist-Count is the batch's messages"
        );
    }

    #[test]
    fn analyzers_without_batches_and_foreign_headers_get_single_packets_in_order() {
        let mut c = coalescer(&args(5, 1 << 20, 1000), [false, true]);
        let now = Instant::now();
        let mut out = Vec::new();
        for seq in 0..3 {
            c.push(0, packet(seq, 1, 10), now, &mut out);
        }
        assert_eq!(out.len(), 3, "analyzer a does not read batches");
        assert!(out.iter().all(|r| r.packets == 1));
        assert!(out
            .iter()
            .all(|r| r.headers.get(name::COUNT).unwrap().as_str() == "1"
                && r.headers.get(name::DISTRIBUTOR).unwrap().as_str() == "r1"));
        out.clear();
        c.push(1, packet(10, 1, 10), now, &mut out);
        c.push(1, packet(11, 1, 10), now, &mut out);
        let mut traced = packet(12, 1, 10);
        traced.headers.insert("Traceparent", "00-abc");
        c.push(1, traced, now, &mut out);
        // 10 and 11 leave first (as a batch), then 12 alone with its header.
        assert_eq!(out.len(), 2);
        assert_eq!(seqs(&out[0]), ["10", "11"]);
        assert_eq!(
            out[1].headers.get("Traceparent").unwrap().as_str(),
            "00-abc"
        );
        assert_eq!(
            out[1].headers.get(name::DISTRIBUTOR).unwrap().as_str(),
            "r1"
        );
        assert!(!c.is_pending());
    }

    #[test]
    fn stale_until_refreshed() {
        let mut c = Coalescer::new(&args(5, 100, 100), HeaderValue::from("r1"));
        assert!(c.needs_refresh(1));
        c.refresh(1, [(Subject::from("analyzer.a"), true)]);
        assert!(!c.needs_refresh(1));
        assert!(c.needs_refresh(2));
        c.membership_changed();
        assert!(c.needs_refresh(1));
        assert!(!Coalescer::new(&args(0, 100, 100), HeaderValue::from("r")).enabled());
    }
}
