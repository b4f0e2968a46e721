//! [`LogThrottle`]: at most a few log lines per kind of bad input per time window, so a flood of
//! rejected control messages or dead-lettered packets costs O(1) log lines, not one each.
//!
//! Every rejection is still counted exactly in the stats (`bad_heartbeats`, `deadletter_*`); the
//! throttle only decides which ones also get a log line, and says how many it left out. Pure
//! logic: time is passed in, so it is unit-tested without sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Default window: each kind gets [`DEFAULT_BURST`] lines per this much time.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Default lines per kind and window.
pub const DEFAULT_BURST: u32 = 5;

#[derive(Debug)]
struct Slot {
    window_start: Instant,
    logged: u32,
    /// Occurrences not logged since the last line that reported them.
    suppressed: u64,
}

/// Decides, per kind (a reason code), whether an occurrence gets a log line.
#[derive(Debug)]
pub struct LogThrottle {
    window: Duration,
    burst: u32,
    kinds: BTreeMap<&'static str, Slot>,
}

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` earlier occurrences of this kind were not logged (say so).
    Log { suppressed: u64 },
    /// Do not log it (it is counted, and reported by a later line).
    Suppress,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new(DEFAULT_WINDOW, DEFAULT_BURST)
    }
}

impl LogThrottle {
    /// `burst` lines per kind in each `window` (at least 1).
    pub fn new(window: Duration, burst: u32) -> Self {
        LogThrottle {
            window,
            burst: burst.max(1),
            kinds: BTreeMap::new(),
        }
    }

    /// One occurrence of `kind` at `now`.
    pub fn check(&mut self, kind: &'static str, now: Instant) -> Verdict {
        let slot = self.kinds.entry(kind).or_insert(Slot {
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(slot.window_start) >= self.window {
            slot.window_start = now;
            slot.logged = 0;
        }
        if slot.logged < self.burst {
            slot.logged += 1;
            let suppressed = std::mem::take(&mut slot.suppressed);
            Verdict::Log { suppressed }
        } else {
            slot.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Kinds with occurrences left unlogged whose window has ended by `now`, and how many each;
    /// their counts restart. Called on a timer, so a flood that stops is still reported.
    pub fn take_suppressed(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for (kind, slot) in &mut self.kinds {
            if slot.suppressed > 0
                && now.saturating_duration_since(slot.window_start) >= self.window
            {
                out.push((*kind, std::mem::take(&mut slot.suppressed)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_a_burst_per_window_and_every_occurrence_is_accounted_for() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut throttle = LogThrottle::new(window, 3);
        let mut logged = 0;
        let mut reported = 0;
        for i in 0..100_000u64 {
            match throttle.check("bad_weight", t0 + Duration::from_micros(i)) {
                Verdict::Log { suppressed } => {
                    logged += 1;
                    reported += suppressed;
                }
                Verdict::Suppress => {}
            }
        }
        assert_eq!(logged, 3);
        // Nothing reported before the window ends; then the rest, once.
        assert!(throttle
            .take_suppressed(t0 + Duration::from_secs(9))
            .is_empty());
        let late = throttle.take_suppressed(t0 + window);
        assert_eq!(late, vec![("bad_weight", 99_997)]);
        reported += late[0].1;
        assert_eq!(logged + reported, 100_000);
        assert!(throttle.take_suppressed(t0 + window * 2).is_empty());
    }

    #[test]
    fn kinds_are_throttled_apart_and_a_new_window_reports_what_it_left_out() {
        let t0 = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(1), 1);
        assert_eq!(throttle.check("a", t0), Verdict::Log { suppressed: 0 });
        assert_eq!(throttle.check("a", t0), Verdict::Suppress);
        assert_eq!(throttle.check("a", t0), Verdict::Suppress);
        // Another kind has its own burst.
        assert_eq!(throttle.check("b", t0), Verdict::Log { suppressed: 0 });
        // The next window's first line carries the count.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(throttle.check("a", t1), Verdict::Log { suppressed: 2 });
        assert!(throttle
            .take_suppressed(t1 + Duration::from_secs(5))
            .is_empty());
    }
}
