//! Which distributor replicas an instance must hear from before it stops: the replicas that
//! routed packets here recently, each until it confirms the withdrawal.
//!
//! A replica confirms a withdrawal on `<prefix>.<id>.withdrawn` right after applying it, on the
//! connection it routes packets on, so every packet it routed here before is already in this
//! instance's subscription when its confirmation arrives. Once every replica that routed here in
//! the last [`RECENT`] has confirmed, draining the subscription analyzes all of them: nothing
//! routed before the withdrawal is lost, however late a busy replica gets to it. A replica that
//! routed nothing for [`RECENT`] is not waited for (it may be long gone); one that died just now
//! never confirms, and the caller's time limit ends the wait.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Replicas that routed a packet here within this time are waited for.
pub const RECENT: Duration = Duration::from_secs(30);

/// Replicas seen routing to this instance, and those that confirmed its withdrawal.
#[derive(Debug, Default)]
pub struct RoutingReplicas {
    last_seen: HashMap<String, Instant>,
    confirmed: BTreeSet<String>,
}

impl RoutingReplicas {
    /// Notes a packet routed here by `replica` (its `Logdist-Distributor` header).
    pub fn saw(&mut self, replica: &str, now: Instant) {
        match self.last_seen.get_mut(replica) {
            Some(at) => *at = now,
            None => {
                self.last_seen.insert(replica.to_string(), now);
            }
        }
    }

    /// Notes `replica`'s confirmation of this instance's withdrawal.
    pub fn confirmed(&mut self, replica: &str) {
        self.confirmed.insert(replica.to_string());
    }

    /// Whether any replica routed here within [`RECENT`] of `now`.
    pub fn any_recent(&self, now: Instant) -> bool {
        self.last_seen
            .values()
            .any(|&at| now.saturating_duration_since(at) <= RECENT)
    }

    /// Replicas that routed here within [`RECENT`] of `now` and have not confirmed yet, sorted.
    pub fn awaiting(&self, now: Instant) -> Vec<&str> {
        let mut waiting: Vec<&str> = self
            .last_seen
            .iter()
            .filter(|(replica, &at)| {
                now.saturating_duration_since(at) <= RECENT && !self.confirmed.contains(*replica)
            })
            .map(|(replica, _)| replica.as_str())
            .collect();
        waiting.sort_unstable();
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_each_recent_replica_until_it_confirms() {
        let t0 = Instant::now();
        let mut replicas = RoutingReplicas::default();
        assert!(!replicas.any_recent(t0));
        assert!(replicas.awaiting(t0).is_empty());
        replicas.saw("d2", t0);
        replicas.saw("d1", t0);
        replicas.saw("d2", t0 + Duration::from_secs(1));
        let now = t0 + Duration::from_secs(2);
        assert!(replicas.any_recent(now));
        assert_eq!(replicas.awaiting(now), ["d1", "d2"]);
        replicas.confirmed("d2");
        // A confirmation from a replica that never routed here changes nothing.
        replicas.confirmed("d9");
        assert_eq!(replicas.awaiting(now), ["d1"]);
        replicas.confirmed("d1");
        assert!(replicas.awaiting(now).is_empty());
    }

    #[test]
    fn a_replica_silent_for_longer_than_recent_is_not_waited_for() {
        let t0 = Instant::now();
        let mut replicas = RoutingReplicas::default();
        replicas.saw("gone", t0);
        replicas.saw("busy", t0 + RECENT);
        let now = t0 + RECENT + Duration::from_millis(1);
        assert_eq!(replicas.awaiting(now), ["busy"]);
        assert!(replicas.any_recent(now));
        assert!(!replicas.any_recent(now + RECENT));
    }
}
