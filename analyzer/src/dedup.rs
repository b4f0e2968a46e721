//! De-duplication of redelivered packets (at-least-once mode): a bounded window of the most recent
//! `Logdist-Packet-Id`s. A packet whose id is in the window was already analyzed and is only
//! counted as a duplicate. The oldest id is forgotten first, so memory stays bounded; a
//! redelivery older than the whole window would be analyzed again (the distributor redelivers
//! within seconds, far inside a window of 100k packets).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// The last `capacity` packet ids seen, with FIFO eviction.
#[derive(Debug, Clone)]
pub struct PacketIdWindow {
    capacity: usize,
    // One allocation per id, shared by the set (lookup) and the queue (eviction order).
    seen: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
}

impl PacketIdWindow {
    /// A window remembering up to `capacity` ids; 0 turns de-duplication off.
    pub fn new(capacity: usize) -> Self {
        PacketIdWindow {
            capacity,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id`; returns `false` when it was already in the window (a repeat).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(id.clone());
        self.order.push_back(id);
        true
    }

    /// Whether `id` is in the window (without recording it).
    pub fn contains(&self, id: &str) -> bool {
        self.capacity > 0 && self.seen.contains(id)
    }

    /// Ids remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_detected() {
        let mut window = PacketIdWindow::new(10);
        assert!(window.insert("1"));
        assert!(window.insert("2"));
        assert!(!window.insert("1"));
        assert!(!window.insert("2"));
        assert_eq!(window.len(), 2);
    }

    #[test]
    fn oldest_ids_are_evicted_first() {
        let mut window = PacketIdWindow::new(3);
        for id in ["1", "2", "3", "4"] {
            assert!(window.insert(id));
        }
        assert_eq!(window.len(), 3);
        // "1" was evicted, so it counts as new again; "2".."4" are still remembered.
        assert!(!window.insert("4"));
        assert!(!window.insert("2"));
        assert!(window.insert("1"));
        // Inserting "1" evicted "2".
        assert!(window.insert("2"));
        assert!(!window.insert("4"));
    }

    #[test]
    fn zero_capacity_disables_it() {
        let mut window = PacketIdWindow::new(0);
        assert!(window.insert("1"));
        assert!(window.insert("1"));
        assert!(window.is_empty());
    }
}
