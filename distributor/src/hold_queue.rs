//! [`HoldQueue`]: the bounded FIFO that keeps packets while no analyzer is online, so a short gap
//! (all analyzers restarting) loses nothing; the packets go out in arrival order as soon as an
//! analyzer appears. It is bounded both in packets and in bytes so a long outage cannot exhaust
//! memory: a packet that does not fit is refused and the caller dead-letters it
//! (`no_analyzer_online`).

use std::collections::VecDeque;

/// Default `--hold-max-packets`.
pub const DEFAULT_MAX_PACKETS: usize = 10_000;
/// Default `--hold-max-bytes` (64 MiB).
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// A bounded FIFO of items with a byte size and a message count each.
#[derive(Debug)]
pub struct HoldQueue<T> {
    items: VecDeque<Held<T>>,
    max_packets: usize,
    max_bytes: usize,
    bytes: usize,
    messages: u64,
}

#[derive(Debug)]
struct Held<T> {
    item: T,
    bytes: usize,
    messages: u64,
}

impl<T> HoldQueue<T> {
    /// A queue that holds at most `max_packets` items and `max_bytes` bytes.
    pub fn new(max_packets: usize, max_bytes: usize) -> Self {
        HoldQueue {
            items: VecDeque::new(),
            max_packets,
            max_bytes,
            bytes: 0,
            messages: 0,
        }
    }

    /// Appends `item` if both limits still hold afterwards; otherwise gives it back.
    pub fn push(&mut self, item: T, bytes: usize, messages: u64) -> Result<(), T> {
        if self.items.len() >= self.max_packets || self.bytes + bytes > self.max_bytes {
            return Err(item);
        }
        self.bytes += bytes;
        self.messages += messages;
        self.items.push_back(Held {
            item,
            bytes,
            messages,
        });
        Ok(())
    }

    /// Removes the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        let held = self.items.pop_front()?;
        self.bytes -= held.bytes;
        self.messages -= held.messages;
        Some(held.item)
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Log messages held now.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_and_gauges() {
        let mut q = HoldQueue::new(10, 1000);
        for i in 0..5u32 {
            q.push(i, 10, 2).unwrap();
        }
        assert_eq!((q.len(), q.bytes(), q.messages()), (5, 50, 10));
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!((q.len(), q.bytes(), q.messages()), (0, 0, 0));
    }

    #[test]
    fn packet_limit_refuses_the_newcomer() {
        let mut q = HoldQueue::new(2, 1000);
        q.push("a", 1, 1).unwrap();
        q.push("b", 1, 1).unwrap();
        assert_eq!(q.push("c", 1, 1), Err("c"));
        assert_eq!(q.pop(), Some("a"));
        q.push("c", 1, 1).unwrap();
    }

    #[test]
    fn byte_limit_counts_the_packet_being_added() {
        let mut q = HoldQueue::new(100, 100);
        q.push("a", 60, 1).unwrap();
        assert_eq!(q.push("b", 41, 1), Err("b"));
        q.push("c", 40, 1).unwrap();
        assert_eq!(q.bytes(), 100);
        // A packet larger than the whole budget is never held.
        let mut q = HoldQueue::new(100, 100);
        assert_eq!(q.push("big", 101, 1), Err("big"));
    }
}
