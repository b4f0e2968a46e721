//! `--work-per-message`: a simulated analysis cost for load tests. The cost is slept, not spun,
//! so a slow analyzer is slow without stealing the CPU that the rest of a benchmark needs: it
//! handles at most one message per `work_per_message`, like a node with that much work per
//! message would.

use std::time::{Duration, Instant};

/// Sleeps shorter than this are deferred and added up, because timers cannot sleep for a few
/// microseconds; the total cost over time stays exact.
pub const MIN_SLEEP: Duration = Duration::from_millis(1);

/// The analyzer's simulated busy time, as a deadline that each packet pushes back.
#[derive(Debug, Clone)]
pub struct SimulatedWork {
    per_message: Duration,
    busy_until: Option<Instant>,
}

impl SimulatedWork {
    pub fn new(per_message: Duration) -> Self {
        SimulatedWork {
            per_message,
            busy_until: None,
        }
    }

    /// Adds the cost of `messages` handled at `now`; returns when to sleep until, once the
    /// work owed is at least [`MIN_SLEEP`].
    pub fn add(&mut self, messages: usize, now: Instant) -> Option<Instant> {
        if self.per_message.is_zero() || messages == 0 {
            return None;
        }
        let start = self.busy_until.map_or(now, |t| t.max(now));
        let cost = self
            .per_message
            .saturating_mul(u32::try_from(messages).unwrap_or(u32::MAX));
        let busy_until = start + cost;
        self.busy_until = Some(busy_until);
        (busy_until.saturating_duration_since(now) >= MIN_SLEEP).then_some(busy_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cost_never_sleeps() {
        let mut work = SimulatedWork::new(Duration::ZERO);
        assert_eq!(work.add(1_000_000, Instant::now()), None);
    }

    #[test]
    fn small_costs_add_up_until_worth_a_sleep() {
        let now = Instant::now();
        let mut work = SimulatedWork::new(Duration::from_micros(100));
        // 5 messages: 500 us owed, not slept yet.
        assert_eq!(work.add(5, now), None);
        // 5 more at the same instant: 1 ms owed in total.
        assert_eq!(work.add(5, now), Some(now + Duration::from_millis(1)));
    }

    #[test]
    fn time_that_passed_pays_off_the_debt() {
        let now = Instant::now();
        let mut work = SimulatedWork::new(Duration::from_millis(10));
        assert_eq!(work.add(1, now), Some(now + Duration::from_millis(10)));
        // 30 ms later the earlier work is long done: the next one starts now.
        let later = now + Duration::from_millis(30);
        assert_eq!(work.add(2, later), Some(later + Duration::from_millis(20)));
    }
}
