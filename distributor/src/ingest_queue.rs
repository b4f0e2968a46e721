//! [`IngestQueue`]: the at-most-once packets taken off the ingest subscriptions ahead of the
//! router, bounded in packets and in bytes; what does not fit is shed and counted.
//!
//! async-nats bounds a subscription's buffer by messages only, and every payload it buffers is a
//! slice of the socket read it came in (`--ingest-read-buffer`, 16 KiB): under a flood, where the
//! rest of a read is dropped, each buffered packet pins a whole read, whatever its size. So the
//! router's loop empties the client's buffers into this queue on every turn
//! ([`IngestQueue::FILL_MAX`] at most), and the queue keeps at most `--ingest-buffer` packets and
//! `--ingest-buffer-bytes` bytes of memory; past either bound a packet is dropped at once, before
//! any JSON is read, and counted ([`IngestQueue::shed`], part of `ingest_dropped_packets`). What a
//! packet costs is what it keeps alive: a payload under [`IngestQueue::COPY_BELOW`] is copied out
//! of its read (so the read is freed) and counts its size; a larger one stays a slice and counts
//! at least a whole read. The first [`IngestQueue::COPY_AFTER`] packets of the queue are not
//! copied (a copy costs ~300 instructions, 3 % of a single message, and a short queue is the
//! common case: the router keeps up): they may keep up to that many reads alive beyond the bound,
//! 1 MiB with 16 KiB reads. A packet larger than the byte bound is still taken when the
//! queue is empty: the server's `max_payload` bounds it, and it is not dropped for its size alone.
//! Pure logic over [`Message`]s, unit-tested without a server.

use std::collections::VecDeque;

use async_nats::Message;
use bytes::Bytes;

/// The ingest queue (see the module documentation).
#[derive(Debug)]
pub(crate) struct IngestQueue {
    /// Each packet with the bytes it counts against `max_bytes`.
    packets: VecDeque<(Message, usize)>,
    bytes: usize,
    max_packets: usize,
    max_bytes: usize,
    /// `--ingest-read-buffer`: what a payload left in its read keeps alive, at least.
    read_buffer: usize,
    shed: u64,
}

impl IngestQueue {
    /// The most messages one turn of the loop moves from the client's buffers into the queue (or
    /// sheds): a turn stays short however far the router is behind.
    pub(crate) const FILL_MAX: usize = 256;

    /// Payloads shorter than this are copied out of the read they came in when queued behind
    /// [`COPY_AFTER`](Self::COPY_AFTER) others.
    pub(crate) const COPY_BELOW: usize = 4096;

    /// Packets queued before small payloads are copied (see the module documentation).
    pub(crate) const COPY_AFTER: usize = 64;

    pub(crate) fn new(max_packets: usize, max_bytes: usize, read_buffer: usize) -> Self {
        IngestQueue {
            packets: VecDeque::new(),
            bytes: 0,
            max_packets: max_packets.max(1),
            max_bytes,
            read_buffer,
            shed: 0,
        }
    }

    /// Queues `message` if it fits both bounds (or the queue is empty), else drops it and counts
    /// it. Returns whether it was queued.
    pub(crate) fn offer(&mut self, mut message: Message) -> bool {
        let small = message.payload.len() < Self::COPY_BELOW;
        // Subject and headers are the client's own allocations; the payload may pin a read.
        let cost = if small {
            message.length
        } else {
            message.length.max(self.read_buffer)
        };
        let fits = self.packets.len() < self.max_packets
            && (self.packets.is_empty() || self.bytes + cost <= self.max_bytes);
        if !fits {
            self.shed += 1;
            return false;
        }
        if small && self.packets.len() >= Self::COPY_AFTER {
            message.payload = Bytes::copy_from_slice(&message.payload);
        }
        self.bytes += cost;
        self.packets.push_back((message, cost));
        true
    }

    /// The oldest queued packet.
    pub(crate) fn pop(&mut self) -> Option<Message> {
        let (message, cost) = self.packets.pop_front()?;
        self.bytes -= cost;
        Some(message)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.packets.len()
    }

    /// Bytes queued now, as counted against the bound.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Packets dropped so far because the queue was full.
    pub(crate) fn shed(&self) -> u64 {
        self.shed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: usize = 16384;

    fn message(n: u8, length: usize) -> Message {
        Message {
            subject: "logs.ingest".into(),
            reply: None,
            payload: vec![n; length].into(),
            headers: None,
            status: None,
            description: None,
            length,
        }
    }

    fn payloads(queue: &mut IngestQueue) -> Vec<u8> {
        std::iter::from_fn(|| queue.pop())
            .map(|m| m.payload[0])
            .collect()
    }

    #[test]
    fn keeps_arrival_order_and_counts_bytes() {
        let mut queue = IngestQueue::new(10, 1000, READ);
        for n in 0..3 {
            assert!(queue.offer(message(n, 100)));
        }
        assert_eq!((queue.len(), queue.bytes(), queue.shed()), (3, 300, 0));
        assert_eq!(queue.pop().map(|m| m.payload[0]), Some(0));
        assert_eq!(queue.bytes(), 200);
        assert_eq!(payloads(&mut queue), [1, 2]);
        assert_eq!((queue.len(), queue.bytes()), (0, 0));
    }

    #[test]
    fn sheds_past_the_byte_bound_and_takes_again_once_there_is_room() {
        let mut queue = IngestQueue::new(100, 250, READ);
        assert!(queue.offer(message(0, 100)));
        assert!(queue.offer(message(1, 100)));
        // 300 bytes would pass the bound of 250: shed, while a smaller one still fits.
        assert!(!queue.offer(message(2, 100)));
        assert!(queue.offer(message(3, 50)));
        assert!(!queue.offer(message(4, 1)));
        assert_eq!((queue.len(), queue.bytes(), queue.shed()), (3, 250, 2));
        queue.pop();
        assert!(queue.offer(message(5, 100)));
        assert_eq!(payloads(&mut queue), [1, 3, 5]);
        assert_eq!(queue.shed(), 2);
    }

    #[test]
    fn sheds_past_the_packet_bound() {
        let mut queue = IngestQueue::new(2, usize::MAX, READ);
        assert!(queue.offer(message(0, 1)));
        assert!(queue.offer(message(1, 1)));
        assert!(!queue.offer(message(2, 1)));
        assert_eq!((queue.len(), queue.shed()), (2, 1));
        assert_eq!(payloads(&mut queue), [0, 1]);
    }

    #[test]
    fn a_packet_larger_than_the_bound_is_taken_into_an_empty_queue_only() {
        let mut queue = IngestQueue::new(10, 100, READ);
        assert!(queue.offer(message(0, 500)));
        assert!(!queue.offer(message(1, 10)), "the queue is past its bound");
        assert!(!queue.offer(message(2, 500)));
        assert_eq!(payloads(&mut queue), [0]);
        assert!(queue.offer(message(3, 500)));
        assert_eq!((queue.len(), queue.bytes(), queue.shed()), (1, 500, 2));
    }

    #[test]
    fn a_small_payload_behind_others_is_copied_out_of_its_read_and_a_large_one_counts_a_whole_read()
    {
        let read = Bytes::from(vec![7u8; READ]);
        let mut queue = IngestQueue::new(1000, 1 << 20, READ);
        // The first COPY_AFTER packets stay slices of their reads.
        for _ in 0..IngestQueue::COPY_AFTER {
            let small = Message {
                payload: read.slice(0..100),
                ..message(0, 100)
            };
            assert!(queue.offer(small));
        }
        let kept: Vec<Message> = std::iter::from_fn(|| queue.pop()).collect();
        assert!(kept.iter().all(|m| m.payload.as_ptr() == read.as_ptr()));
        for _ in 0..IngestQueue::COPY_AFTER {
            assert!(queue.offer(message(1, 100)));
        }
        let behind = IngestQueue::COPY_AFTER * 100;
        let small = Message {
            payload: read.slice(0..140),
            ..message(0, 140)
        };
        assert!(queue.offer(small));
        assert_eq!(queue.bytes(), behind + 140);
        let large = Message {
            payload: read.slice(0..5000),
            ..message(0, 5000)
        };
        assert!(queue.offer(large));
        assert_eq!(
            queue.bytes(),
            behind + 140 + READ,
            "a slice keeps its whole read alive"
        );
        assert!(queue.offer(message(1, 20_000)));
        assert_eq!(
            queue.bytes(),
            behind + 140 + READ + 20_000,
            "a read as large as the packet"
        );
        for _ in 0..IngestQueue::COPY_AFTER {
            queue.pop();
        }
        let small = queue.pop().unwrap();
        assert_eq!(&small.payload[..], &[7u8; 140][..]);
        assert_ne!(small.payload.as_ptr(), read.as_ptr(), "copied");
        assert_eq!(
            queue.pop().unwrap().payload.as_ptr(),
            read.as_ptr(),
            "not copied"
        );
        assert_eq!(queue.bytes(), 20_000);
    }
}
