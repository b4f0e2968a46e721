//! The redelivery policy of at-least-once mode: whose fault a failed delivery is, and when a
//! packet is tried again. Pure synchronous logic (time is passed in), unit-tested without NATS;
//! the pipeline in `at_least_once` feeds it what it sees and acts on its [`Verdict`]s.
//!
//! A failed request to an analyzer is one of three things (`docs/delivery.md`, "Which failures
//! count as the analyzer's fault, and why"):
//! - the **infrastructure**'s: this replica is (or was, while the request was out) cut off from
//!   NATS, came back less than `--reconnect-grace` ago, its JetStream consumer was lost or came
//!   back that recently, several analyzers fail at once with no acknowledgement from anyone in
//!   between, or nobody else is seen answering to compare with. The packet goes back to the
//!   stream with a growing delay ([`nak_delay`]); no attempt is counted, so it is never
//!   dead-lettered for that;
//! - an analyzer that **withdrew** while the request was out: sent elsewhere at once, no attempt;
//! - **this analyzer**'s: no responders or a time-out while others answer, or a time-out of an
//!   analyzer that never acknowledged anything. One attempt is counted, and the packet is sent
//!   to another analyzer after [`RetryPolicy::retry_delay`] (100 ms doubling by default), so
//!   `--max-attempts` spans seconds, not one burst; then it is `undeliverable`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How recently another analyzer must have acknowledged something for a "no responders" to be
/// this analyzer's fault: "no responders" comes back within a round trip, so "since the request
/// was sent" would be an empty window.
pub const ANSWER_WINDOW: Duration = Duration::from_secs(1);

/// `first` doubled `n` times, at most `max`, without overflow.
fn doubled(first: Duration, n: u32, max: Duration) -> Duration {
    first
        .checked_mul(1u32 << n.min(20))
        .map_or(max, |d| d.min(max))
}

/// How long JetStream should wait before redelivering a packet sent back to the stream (no
/// analyzer online, or an infrastructure failure), by how often it was delivered already:
/// 250 ms, doubling, at most 5 s.
pub fn nak_delay(delivered: i64) -> Duration {
    let doublings = (delivered.clamp(1, 32) - 1) as u32;
    doubled(
        Duration::from_millis(250),
        doublings,
        Duration::from_secs(5),
    )
}

/// When a packet that an analyzer failed is tried again, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failures that were the analyzers' fault before the packet is `undeliverable`.
    pub max_attempts: u32,
    /// Delay before the retry after the first such failure (`--retry-delay`).
    pub first_delay: Duration,
    /// Longest delay between two attempts (`--retry-max-delay`).
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Delay before the next attempt once `attempts` failures were counted: the first delay
    /// after one, doubling with each further one, at most the maximum.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        doubled(self.first_delay, attempts.saturating_sub(1), self.max_delay)
    }

    /// Whether `attempts` failures use up the packet's attempts.
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }

    /// The least time from a packet's first failure to its last attempt (the delays only; each
    /// attempt adds its own request time). What the docs quote.
    #[cfg(test)]
    fn span(&self) -> Duration {
        (1..self.max_attempts).map(|n| self.retry_delay(n)).sum()
    }
}

/// How a request to an analyzer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server says nobody subscribes to the analyzer's subject now.
    NoResponders,
    /// No reply within `--request-timeout`.
    TimedOut,
    /// The request could not be sent (the client's connection or buffer failed).
    NotSent,
}

/// One failed request, as the pipeline saw it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub analyzer: &'a str,
    pub kind: FailureKind,
    /// When the request was sent.
    pub sent: Instant,
    /// The client was connected to NATS when the request was sent.
    pub sent_connected: bool,
    /// The client is connected to NATS now.
    pub connected: bool,
    pub now: Instant,
}

/// Why a failure is not the analyzer's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Disconnected,
    SentWhileDisconnected,
    NotSent,
    Reconnected,
    ConsumerUnavailable,
    SeveralAnalyzers,
    NoOtherAnalyzerAnswering,
    NoAnalyzerAnswering,
}

impl Cause {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Disconnected => "not connected to NATS",
            Cause::SentWhileDisconnected => "sent while not connected to NATS",
            Cause::NotSent => "the request could not be sent",
            Cause::Reconnected => "within --reconnect-grace of this replica's reconnection",
            Cause::ConsumerUnavailable => {
                "the JetStream consumer was unavailable meanwhile or came back within --reconnect-grace"
            }
            Cause::SeveralAnalyzers => {
                "several analyzers failed with no acknowledgement from any analyzer in between"
            }
            Cause::NoOtherAnalyzerAnswering => {
                "no other analyzer acknowledged anything within the last second"
            }
            Cause::NoAnalyzerAnswering => {
                "no analyzer acknowledged anything since the request was sent"
            }
        }
    }
}

/// What to do with a packet whose request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Back to the stream with a delay ([`nak_delay`]); no attempt counted.
    Infrastructure(Cause),
    /// The analyzer withdrew while the request was out: send the packet elsewhere at once, no
    /// attempt counted.
    Withdrawn,
    /// This analyzer failed the packet: count an attempt, retry elsewhere after
    /// [`RetryPolicy::retry_delay`].
    Analyzer,
}

/// What the pipeline knows about the health of NATS, JetStream and the analyzers, kept to judge
/// each failure ([`FaultJudge::judge`]).
#[derive(Debug)]
pub struct FaultJudge {
    /// `--reconnect-grace`.
    grace: Duration,
    reconnected_at: Option<Instant>,
    /// Since when the consumer is unavailable (`None` while its message stream is open).
    consumer_down_since: Option<Instant>,
    /// When the consumer came back after being lost (not its first opening).
    consumer_back_at: Option<Instant>,
    /// Last acknowledgement by each analyzer; an analyzer in here worked before.
    acked: HashMap<Arc<str>, Instant>,
    /// Last acknowledgement by any analyzer.
    last_ack: Option<Instant>,
    /// Last failure (no responders or a time-out) of each analyzer.
    failed: HashMap<Arc<str>, Instant>,
    /// Analyzers that withdrew and have not come back.
    withdrawn: HashMap<Arc<str>, Instant>,
}

impl FaultJudge {
    /// A judge for a pipeline whose consumer is not open yet.
    pub fn new(grace: Duration, now: Instant) -> Self {
        FaultJudge {
            grace,
            reconnected_at: None,
            consumer_down_since: Some(now),
            consumer_back_at: None,
            acked: HashMap::new(),
            last_ack: None,
            failed: HashMap::new(),
            withdrawn: HashMap::new(),
        }
    }

    /// The client reconnected to NATS at `at`.
    pub fn reconnected(&mut self, at: Instant) {
        self.reconnected_at = Some(self.reconnected_at.map_or(at, |r| r.max(at)));
    }

    /// The consumer's message stream failed.
    pub fn consumer_lost(&mut self, now: Instant) {
        self.consumer_down_since.get_or_insert(now);
    }

    /// The consumer's message stream is open (again).
    pub fn consumer_open(&mut self, now: Instant) {
        // The first opening is the start, not a recovery: no grace for it.
        if self.consumer_down_since.take().is_some() && self.last_ack.is_some() {
            self.consumer_back_at = Some(now);
        }
    }

    /// `analyzer` acknowledged a packet.
    pub fn acked(&mut self, analyzer: &Arc<str>, now: Instant) {
        match self.acked.get_mut(analyzer) {
            Some(at) => *at = now,
            None => {
                self.acked.insert(analyzer.clone(), now);
            }
        }
        self.last_ack = Some(now);
    }

    /// `analyzer` withdrew (its last instance sent its withdrawal).
    pub fn withdrawn(&mut self, analyzer: &str, now: Instant) {
        self.withdrawn.insert(analyzer.into(), now);
    }

    /// `analyzer` is online again.
    pub fn joined(&mut self, analyzer: &str) {
        self.withdrawn.remove(analyzer);
    }

    /// Whose fault `f` is (see the module docs); remembers it for judging the next ones.
    pub fn judge(&mut self, f: &Failure<'_>) -> Verdict {
        let verdict = self.verdict(f);
        if matches!(f.kind, FailureKind::NoResponders | FailureKind::TimedOut) {
            match self.failed.get_mut(f.analyzer) {
                Some(at) => *at = f.now,
                None => {
                    self.failed.insert(f.analyzer.into(), f.now);
                }
            }
        }
        verdict
    }

    fn within_grace(&self, at: Option<Instant>, f: &Failure<'_>) -> bool {
        at.is_some_and(|at| at >= f.sent || f.now.saturating_duration_since(at) < self.grace)
    }

    fn verdict(&self, f: &Failure<'_>) -> Verdict {
        use Verdict::Infrastructure as Infra;
        if !f.connected {
            return Infra(Cause::Disconnected);
        }
        if !f.sent_connected {
            return Infra(Cause::SentWhileDisconnected);
        }
        if f.kind == FailureKind::NotSent {
            return Infra(Cause::NotSent);
        }
        // Right after a reconnection the analyzers' subscriptions are not all back on the server
        // (each client reconnects on its own schedule, up to seconds later).
        if self.within_grace(self.reconnected_at, f) {
            return Infra(Cause::Reconnected);
        }
        // A lost consumer means the server or the cluster is in trouble (a restart, a leader
        // lost): the analyzers' clients and checkpoints are likely affected too.
        if self.consumer_down_since.is_some() || self.within_grace(self.consumer_back_at, f) {
            return Infra(Cause::ConsumerUnavailable);
        }
        if self.withdrawn.contains_key(f.analyzer) {
            return Verdict::Withdrawn;
        }
        // Another analyzer failed too, and nobody acknowledged anything since: they fail
        // together, so the cause is what they share.
        let several = self
            .failed
            .iter()
            .any(|(id, &at)| **id != *f.analyzer && self.last_ack.is_none_or(|ack| at > ack));
        if several {
            return Infra(Cause::SeveralAnalyzers);
        }
        match f.kind {
            FailureKind::NoResponders => {
                let others_answer = self.acked.iter().any(|(id, &at)| {
                    **id != *f.analyzer && f.now.saturating_duration_since(at) <= ANSWER_WINDOW
                });
                if others_answer {
                    Verdict::Analyzer
                } else {
                    Infra(Cause::NoOtherAnalyzerAnswering)
                }
            }
            FailureKind::TimedOut => {
                // Others (or this one) acknowledged other packets meanwhile: this analyzer, or
                // this packet, is the problem. One that never acknowledged anything is broken.
                let answered_since = self.last_ack.is_some_and(|ack| ack >= f.sent);
                if answered_since || !self.acked.contains_key(f.analyzer) {
                    Verdict::Analyzer
                } else {
                    Infra(Cause::NoAnalyzerAnswering)
                }
            }
            FailureKind::NotSent => unreachable!("handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            first_delay: 100 * MS,
            max_delay: Duration::from_secs(2),
        }
    }

    #[test]
    fn retry_delay_doubles_from_the_first_and_is_capped() {
        let p = policy();
        let delays: Vec<_> = (1..=7).map(|n| p.retry_delay(n)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 2000, 2000].map(|ms| ms * MS)
        );
        assert_eq!(p.retry_delay(0), 100 * MS);
        assert_eq!(p.retry_delay(u32::MAX), Duration::from_secs(2));
        // The default five attempts are spread over at least 1.5 s.
        assert_eq!(p.span(), 1500 * MS);
        assert!(!p.exhausted(4) && p.exhausted(5) && p.exhausted(6));
        let long = RetryPolicy {
            max_attempts: 10,
            ..p
        };
        assert_eq!(
            long.span(),
            Duration::from_millis(100 + 200 + 400 + 800 + 1600 + 4 * 2000)
        );
    }

    #[test]
    fn nak_delay_grows_and_is_capped() {
        assert_eq!(nak_delay(0), 250 * MS);
        assert_eq!(nak_delay(1), 250 * MS);
        assert_eq!(nak_delay(2), 500 * MS);
        assert_eq!(nak_delay(5), Duration::from_secs(4));
        assert_eq!(nak_delay(6), Duration::from_secs(5));
        assert_eq!(nak_delay(i64::MAX), Duration::from_secs(5));
    }

    /// A running pipeline: consumer open, analyzers `a` and `b` acknowledged at `t0`.
    fn healthy(t0: Instant) -> FaultJudge {
        let mut j = FaultJudge::new(Duration::from_secs(5), t0 - Duration::from_secs(60));
        j.consumer_open(t0 - Duration::from_secs(60));
        j.acked(&"a".into(), t0);
        j.acked(&"b".into(), t0);
        j
    }

    fn failure(analyzer: &str, kind: FailureKind, sent: Instant, now: Instant) -> Failure<'_> {
        Failure {
            analyzer,
            kind,
            sent,
            sent_connected: true,
            connected: true,
            now,
        }
    }

    #[test]
    fn one_analyzer_failing_while_others_answer_is_its_fault() {
        let t0 = Instant::now();
        let mut j = healthy(t0);
        // Gone: no responders, while b answered just now.
        let f = failure("a", FailureKind::NoResponders, t0 + MS, t0 + 2 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
        // Hung: a time-out, while b answered after the request went out.
        j.acked(&"b".into(), t0 + 500 * MS);
        let f = failure("a", FailureKind::TimedOut, t0 + 10 * MS, t0 + 1010 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
        // A packet that every analyzer times out on while they answer the others.
        j.acked(&"a".into(), t0 + 1500 * MS);
        let f = failure("b", FailureKind::TimedOut, t0 + 1100 * MS, t0 + 2100 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
    }

    #[test]
    fn an_analyzer_that_never_answered_is_broken() {
        let t0 = Instant::now();
        let mut j = FaultJudge::new(Duration::from_secs(5), t0);
        j.consumer_open(t0);
        // Nobody answered anything yet: the mute analyzer's time-outs count.
        for n in 1..=3 {
            let sent = t0 + n * 200 * MS;
            let f = failure("mute", FailureKind::TimedOut, sent, sent + 100 * MS);
            assert_eq!(j.judge(&f), Verdict::Analyzer, "attempt {n}");
        }
    }

    #[test]
    fn several_analyzers_failing_with_no_acknowledgement_between_is_the_infrastructure() {
        let t0 = Instant::now();
        let mut j = healthy(t0);
        let f = failure("a", FailureKind::NoResponders, t0 + MS, t0 + 2 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
        let f = failure("b", FailureKind::NoResponders, t0 + 3 * MS, t0 + 4 * MS);
        assert_eq!(
            j.judge(&f),
            Verdict::Infrastructure(Cause::SeveralAnalyzers)
        );
        // ... and a again, now that b failed too.
        let f = failure("a", FailureKind::NoResponders, t0 + 5 * MS, t0 + 6 * MS);
        assert_eq!(
            j.judge(&f),
            Verdict::Infrastructure(Cause::SeveralAnalyzers)
        );
        // An acknowledgement ends it: a single analyzer failing again is its own fault.
        j.acked(&"b".into(), t0 + 10 * MS);
        let f = failure("a", FailureKind::NoResponders, t0 + 11 * MS, t0 + 12 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
    }

    #[test]
    fn nobody_answering_is_the_infrastructure() {
        let t0 = Instant::now();
        let mut j = healthy(t0);
        // Every analyzer's checkpoint stalls (a KV leader election): a, which worked, times out
        // with no acknowledgement from anyone since.
        let f = failure("a", FailureKind::TimedOut, t0 + MS, t0 + 1001 * MS);
        assert_eq!(
            j.judge(&f),
            Verdict::Infrastructure(Cause::NoAnalyzerAnswering)
        );
        // The only analyzer that answered lately is gone: nobody to compare with.
        let mut j = healthy(t0);
        let later = t0 + 2 * ANSWER_WINDOW;
        let f = failure("a", FailureKind::NoResponders, later, later + MS);
        assert_eq!(
            j.judge(&f),
            Verdict::Infrastructure(Cause::NoOtherAnalyzerAnswering)
        );
    }

    #[test]
    fn connection_trouble_is_the_infrastructure_whatever_the_error() {
        let t0 = Instant::now();
        for kind in [
            FailureKind::NoResponders,
            FailureKind::TimedOut,
            FailureKind::NotSent,
        ] {
            let mut j = healthy(t0);
            let f = Failure {
                connected: false,
                ..failure("a", kind, t0 + MS, t0 + 2 * MS)
            };
            assert_eq!(j.judge(&f), Verdict::Infrastructure(Cause::Disconnected));
            let f = Failure {
                sent_connected: false,
                ..failure("a", kind, t0 + MS, t0 + 2 * MS)
            };
            assert_eq!(
                j.judge(&f),
                Verdict::Infrastructure(Cause::SentWhileDisconnected)
            );
        }
        let mut j = healthy(t0);
        let f = failure("a", FailureKind::NotSent, t0 + MS, t0 + 2 * MS);
        assert_eq!(j.judge(&f), Verdict::Infrastructure(Cause::NotSent));
    }

    #[test]
    fn the_grace_period_after_a_reconnection() {
        let t0 = Instant::now();
        let mut j = healthy(t0);
        let back = t0 + Duration::from_secs(10);
        j.reconnected(back);
        // The analyzers' subscriptions are not back yet: no responders from a, b answered
        // before the outage less than a second ago... not counted.
        j.acked(&"b".into(), back - 100 * MS);
        let f = failure("a", FailureKind::NoResponders, back + MS, back + 2 * MS);
        assert_eq!(j.judge(&f), Verdict::Infrastructure(Cause::Reconnected));
        // A request sent before the reconnection, failing long after it.
        let f = failure(
            "b",
            FailureKind::TimedOut,
            back - MS,
            back + Duration::from_secs(6),
        );
        assert_eq!(j.judge(&f), Verdict::Infrastructure(Cause::Reconnected));
        // After the grace period, a failure of one analyzer while another answers counts.
        let after = back + Duration::from_secs(7);
        j.acked(&"b".into(), after);
        let f = failure("a", FailureKind::NoResponders, after + MS, after + 2 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
    }

    #[test]
    fn the_consumer_lost_or_just_back() {
        let t0 = Instant::now();
        let mut j = healthy(t0);
        j.consumer_lost(t0 + MS);
        let f = failure("a", FailureKind::TimedOut, t0, t0 + 500 * MS);
        assert_eq!(
            j.judge(&f),
            Verdict::Infrastructure(Cause::ConsumerUnavailable)
        );
        let back = t0 + Duration::from_secs(3);
        j.consumer_open(back);
        j.acked(&"b".into(), back + MS);
        let f = failure("a", FailureKind::NoResponders, back + 2 * MS, back + 3 * MS);
        assert_eq!(
            j.judge(&f),
            Verdict::Infrastructure(Cause::ConsumerUnavailable)
        );
        let after = back + Duration::from_secs(5);
        j.acked(&"b".into(), after);
        let f = failure("a", FailureKind::NoResponders, after + MS, after + 2 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
    }

    #[test]
    fn the_first_consumer_opening_has_no_grace() {
        let t0 = Instant::now();
        let mut j = FaultJudge::new(Duration::from_secs(5), t0);
        let f = failure("a", FailureKind::TimedOut, t0, t0 + MS);
        assert_eq!(
            j.judge(&f),
            Verdict::Infrastructure(Cause::ConsumerUnavailable)
        );
        j.consumer_open(t0 + 10 * MS);
        let f = failure("a", FailureKind::TimedOut, t0 + 20 * MS, t0 + 120 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
    }

    #[test]
    fn a_withdrawal_in_flight_costs_no_attempt() {
        let t0 = Instant::now();
        let mut j = healthy(t0);
        j.withdrawn("a", t0 + MS);
        let f = failure("a", FailureKind::NoResponders, t0, t0 + 2 * MS);
        assert_eq!(j.judge(&f), Verdict::Withdrawn);
        j.joined("a");
        j.acked(&"b".into(), t0 + 3 * MS);
        let f = failure("a", FailureKind::NoResponders, t0 + 4 * MS, t0 + 5 * MS);
        assert_eq!(j.judge(&f), Verdict::Analyzer);
    }
}
