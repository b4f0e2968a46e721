//! Whether an HTTP analyzer's endpoint is healthy, from the outcomes of its requests and probes:
//! the analyzer announces itself only while it is, so distributors stop routing into a dead
//! endpoint and re-balance, and route to it again once it answers.
//!
//! - Without `--health-url`, the endpoint is judged by its requests: `unhealthy_after` failed
//!   attempts in a row (connection errors, time-outs, 5xx, 429) make it unhealthy, one success
//!   makes it healthy. While it is unhealthy a probe (`HEAD <url>`) runs every health interval,
//!   since no request may come to tell; any answer but 5xx or 429 counts as healthy.
//! - With `--health-url`, the health URL decides (`GET`, 2xx is healthy), polled every health
//!   interval; failed requests can still make the endpoint unhealthy at once, but only the
//!   health URL brings it back.
//!
//! It starts unhealthy: the first probe decides whether the analyzer announces itself.

use std::sync::Mutex;

use tokio::sync::watch;

/// The pure state: no I/O, no clock.
#[derive(Debug, Clone)]
pub struct Health {
    healthy: bool,
    failures_in_a_row: u32,
    unhealthy_after: u32,
    by_health_url: bool,
}

impl Health {
    /// Unhealthy until the first success (or successful probe).
    pub fn new(unhealthy_after: u32, by_health_url: bool) -> Self {
        Health {
            healthy: false,
            failures_in_a_row: 0,
            unhealthy_after: unhealthy_after.max(1),
            by_health_url,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// A request got an answer that is not a server failure; returns the new state if it changed.
    pub fn request_succeeded(&mut self) -> Option<bool> {
        self.failures_in_a_row = 0;
        if self.by_health_url {
            return None;
        }
        self.set(true)
    }

    /// A request attempt failed (connection, time-out, 5xx, 429).
    pub fn request_failed(&mut self) -> Option<bool> {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        if self.failures_in_a_row >= self.unhealthy_after {
            return self.set(false);
        }
        None
    }

    /// A probe answered (`ok`) or not.
    pub fn probed(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures_in_a_row = 0;
        }
        self.set(ok)
    }

    /// Whether a probe is due: always with a health URL, else only while unhealthy.
    pub fn wants_probe(&self) -> bool {
        self.by_health_url || !self.healthy
    }

    fn set(&mut self, healthy: bool) -> Option<bool> {
        if self.healthy == healthy {
            return None;
        }
        self.healthy = healthy;
        Some(healthy)
    }
}

/// [`Health`] shared by the request tasks and the prober, publishing each change on a `watch`
/// channel (the heartbeat task follows it).
#[derive(Debug)]
pub struct HealthMonitor {
    state: Mutex<Health>,
    changes: watch::Sender<bool>,
    url: String,
}

impl HealthMonitor {
    pub fn new(health: Health, url: &str) -> Self {
        let (changes, _) = watch::channel(health.is_healthy());
        HealthMonitor {
            state: Mutex::new(health),
            changes,
            url: url.to_string(),
        }
    }

    /// Follows the healthy state (true: announce, false: withdraw).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    pub fn is_healthy(&self) -> bool {
        self.lock().is_healthy()
    }

    pub fn wants_probe(&self) -> bool {
        self.lock().wants_probe()
    }

    pub fn request_succeeded(&self) {
        let change = self.lock().request_succeeded();
        self.publish(change, "a request succeeded");
    }

    pub fn request_failed(&self, error: &str) {
        let change = self.lock().request_failed();
        self.publish(change, error);
    }

    pub fn probed(&self, ok: bool, detail: &str) {
        let change = self.lock().probed(ok);
        self.publish(change, detail);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, change: Option<bool>, why: &str) {
        let Some(healthy) = change else { return };
        if healthy {
            tracing::info!(url = %self.url, reason = why, "endpoint healthy: announcing the analyzer");
        } else {
            tracing::warn!(url = %self.url, reason = why, "endpoint unhealthy: withdrawing the analyzer until it answers again");
        }
        self.changes.send_replace(healthy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_requests_failures_in_a_row_withdraw_and_one_success_returns() {
        let mut h = Health::new(3, false);
        assert!(!h.is_healthy() && h.wants_probe());
        assert_eq!(h.request_succeeded(), Some(true));
        assert!(!h.wants_probe());
        assert_eq!(h.request_failed(), None);
        assert_eq!(h.request_failed(), None);
        // A success in between resets the run.
        assert_eq!(h.request_succeeded(), None);
        assert_eq!(h.request_failed(), None);
        assert_eq!(h.request_failed(), None);
        assert_eq!(h.request_failed(), Some(false));
        assert_eq!(h.request_failed(), None);
        assert!(h.wants_probe());
        assert_eq!(h.probed(false), None);
        assert_eq!(h.probed(true), Some(true));
    }

    #[test]
    fn by_health_url_only_the_probe_brings_it_back() {
        let mut h = Health::new(2, true);
        assert_eq!(h.request_succeeded(), None);
        assert!(!h.is_healthy());
        assert_eq!(h.probed(true), Some(true));
        assert!(h.wants_probe());
        assert_eq!(h.request_failed(), None);
        assert_eq!(h.request_failed(), Some(false));
        assert_eq!(h.request_succeeded(), None);
        assert!(!h.is_healthy());
        assert_eq!(h.probed(true), Some(true));
        assert_eq!(h.probed(false), Some(false));
    }

    #[test]
    fn the_monitor_publishes_changes() {
        let monitor = HealthMonitor::new(Health::new(1, false), "http://x");
        let mut changes = monitor.subscribe();
        assert!(!*changes.borrow_and_update());
        monitor.request_succeeded();
        assert!(changes.has_changed().unwrap());
        assert!(*changes.borrow_and_update());
        monitor.request_failed("refused");
        assert!(!*changes.borrow_and_update());
    }
}
