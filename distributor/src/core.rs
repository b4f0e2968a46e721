//! The core both delivery modes share: the routing state of one replica ([`Distributor`]) and
//! what is done with it the same way in either mode — validating a payload and dead-lettering
//! what is invalid, control messages and membership events, membership expiry, the stats
//! snapshot — plus the event sources every mode's loop listens to first ([`CoreSources`]).
//!
//! One task, no locks: each mode runs one `tokio::select!` loop that owns the [`Distributor`].
//! Its first branch is [`CoreSources::next`], which is `biased` in one fixed order — shutdown,
//! control, weight overrides, membership expiry, stats tick — and only then come the mode's own
//! sources (ingest subscriptions, or the JetStream consumer and requests in flight). So a control message is
//! always handled before packets that arrived after it: a withdrawal stops traffic to that
//! analyzer at once. The order is written here only, once for both modes.
//!
//! What differs between the modes (what happens to packets waiting for an analyzer when the
//! routing table changes, and the mode's part of the stats) a mode supplies as a
//! [`DeliveryMode`]. The modes themselves are the siblings `at_most_once.rs` and
//! `at_least_once.rs`; neither imports the other, and the core imports neither.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_nats::header::HeaderValue;
use async_nats::jetstream::kv;
use async_nats::{Client, Message, Subject, Subscriber};
use bytes::Bytes;
use futures::task::AtomicWaker;
use futures::StreamExt;
use logdist::ingest_format::{IngestFormat, Mapping};
use logdist::protocol::control::{ControlMessage, Withdraw, WithdrawalConfirmed};
use logdist::protocol::deadletter::{
    packet_deadletter_headers, DeadLetterBody, PacketDeadLetter, Reason, RejectedElement,
    SizeLimits,
};
use logdist::protocol::stats::{unix_millis_now, DistributorStats, MemberRecord};
use logdist::telemetry::Condition;
use logdist::{BucketError, ConnectError, ConnectionEvents, PacketValidator};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::affinity::KeyExtractor;
use crate::config::{Delivery, RunArgs};
use crate::log_throttle::{LogThrottle, Verdict};
use crate::membership::{Membership, MembershipEvent};
use crate::membership_mirror::MembershipMirror;
use crate::outgoing::Outgoing;
use crate::round_robin::RoundRobin;
use crate::router::{Member, Router};
use crate::stats_publisher::StatsPublisher;
use crate::weight_overrides::{OverrideChange, OverrideEntry, WeightOverrides};

/// How long shutdown waits for the flush and the final KV writes.
pub(crate) const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the distributor could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("cannot subscribe to {subject}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error(transparent)]
    Http(#[from] logdist_http::StartError),
    /// Flags that do not work together (main checks them first; this is the library's guard).
    #[error("{0}")]
    Config(String),
    #[error("{0} / DISTRIBUTOR_METRICS")]
    Metrics(#[from] logdist::telemetry::ServeError),
    #[error("cannot read the weight overrides in KV bucket {bucket:?}: {detail}")]
    ReadWeights { bucket: String, detail: String },
    /// [`logdist::connection_task_stopped`]: the distributor shut down, as it could route nothing.
    #[error(
        "the NATS client's connection task stopped, so the distributor shut down; restart it \
         (docs/security.md, \"Limits that remain\")"
    )]
    ConnectionTaskStopped,
}

/// Watches the distributor's NATS clients for a connection task that stopped for good
/// ([`logdist::connection_task_stopped`]): then it shuts the distributor down, since it can
/// route nothing, and [`stopped`](Self::stopped) says so, for `run` to end with
/// [`RunError::ConnectionTaskStopped`].
#[derive(Debug, Default)]
pub(crate) struct ConnectionWatch {
    stopped: Arc<AtomicBool>,
}

impl ConnectionWatch {
    /// Watches `client` (`which` names it in the log) until `shutdown` is cancelled.
    pub(crate) fn watch(&self, client: &Client, which: &'static str, shutdown: &CancellationToken) {
        let (client, stop, flag) = (client.clone(), shutdown.clone(), self.stopped.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = logdist::connection_task_stopped(&client) => {
                    tracing::error!(connection = which, "the NATS client's connection task \
                        stopped: it reads no more messages and sends none (async-nats ends it \
                        on a message it cannot read, such as one whose header value holds a \
                        bare carriage return); shutting down");
                    flag.store(true, Ordering::SeqCst);
                    stop.cancel();
                }
            }
        });
    }

    /// Whether a watched client's connection task stopped.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// The control subscriptions, as one stream: every analyzer's own subject (`<control>.*`), and
/// with `--legacy-control-subject` the old shared one.
pub(crate) type ControlSubscriptions = RoundRobin<Subscriber>;

/// Subscribes to the analyzers' control subjects (and the old shared one behind its flag).
pub(crate) async fn subscribe_control(
    client: &Client,
    args: &RunArgs,
) -> Result<ControlSubscriptions, RunError> {
    let names = &args.names;
    let mut subjects = vec![names.control_wildcard()];
    if args.legacy_control_subject {
        tracing::warn!(subject = %names.control_subject,
            "--legacy-control-subject: also trusting control messages on the old shared subject, which carry no identity");
        subjects.push(names.control_subject.clone());
    }
    let mut all = Vec::new();
    for subject in subjects {
        let subscription = client
            .subscribe(subject.clone())
            .await
            .map_err(|source| RunError::Subscribe { subject, source })?;
        all.push(subscription);
    }
    Ok(all.into_iter().collect())
}

/// What a delivery mode adds to the core.
pub(crate) trait DeliveryMode {
    /// Runs after every change of the routing table (a new epoch), before a withdrawal is
    /// confirmed: packets the mode holds for want of an analyzer can go now.
    async fn routing_changed(&mut self, core: &mut Distributor);

    /// Sees the membership events of each change, after the core logged and mirrored them
    /// (at-least-once notes who withdrew, to judge failed deliveries). Default: nothing.
    fn membership_changed(&mut self, _events: &[MembershipEvent]) {}

    /// The mode's part of the stats record now.
    fn stats(&mut self) -> ModeStats;

    /// Sends what the mode gathered and has not sent yet (coalesced packets), before a control
    /// message or an expiry is applied: so a withdrawal's confirmation follows every packet
    /// routed before it, and who reads batches changes only between batches. Default: nothing.
    async fn flush(&mut self, _core: &mut Distributor) {}
}

/// The part of a [`DistributorStats`] record that belongs to a delivery mode: its hold queue
/// and its own connections. Zero where a mode has none.
#[derive(Debug, Default, Clone)]
pub(crate) struct ModeStats {
    pub(crate) held_packets: u64,
    pub(crate) held_messages: u64,
    pub(crate) held_bytes: u64,
    pub(crate) held_total: u64,
    pub(crate) held_overflow: u64,
    pub(crate) ingest_dropped_packets: u64,
    /// NATS messages to analyzers that carried two packets or more, and the packets in them.
    pub(crate) batches_sent: u64,
    pub(crate) batched_packets: u64,
    /// At-least-once: packets (and their bytes) sent and not yet acknowledged.
    pub(crate) in_flight_packets: u64,
    pub(crate) in_flight_bytes: u64,
    /// Client events of the mode's own connections (added to the main connection's).
    pub(crate) slow_consumer_events: u64,
    pub(crate) disconnects: u64,
    pub(crate) reconnects: u64,
}

/// An event of the sources every mode listens to first.
pub(crate) enum CoreEvent {
    Shutdown,
    Control(Message),
    /// A change of the weight-overrides bucket.
    WeightOverride(OverrideUpdate),
    Expiry,
    StatsTick,
}

/// The event sources both modes share: shutdown, the control subscription, the watch on the
/// weight-overrides bucket, the membership expiry timer and the stats ticker, polled in one
/// `biased` order by [`CoreSources::next`].
pub(crate) struct CoreSources<'a> {
    /// Made once: polling it again is a flag check, where a new one each turn of the loop would
    /// register a waiter with the token each time.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    control: &'a mut ControlSubscriptions,
    publisher: &'a StatsPublisher,
    weights: Option<WeightsPoller>,
    expiry: Pin<Box<tokio::time::Sleep>>,
    stats_tick: tokio::time::Interval,
    /// The waker the sources are polled with: it notes that one of them woke (so the next turn
    /// polls them again) and wakes the loop's task.
    woken: Arc<SourcesWoken>,
    waker: Waker,
}

/// Whether a core source woke since the sources were last polled, and the task to wake.
///
/// The loop polls [`CoreSources::next`] on every turn, once a packet, and polling the five
/// sources (a cancellation token, a subscription, a channel, a timer, an interval) cost ~2,100
/// instructions a single-message packet in callgrind, nearly always to find them all pending.
/// A source that returned `Pending` wakes the waker it was polled with once it has something,
/// so until this waker is woken, polling them again would find them all pending still.
struct SourcesWoken {
    /// Set by a wake, cleared before the sources are polled (so a wake during that poll is kept).
    dirty: AtomicBool,
    task: AtomicWaker,
}

impl Wake for SourcesWoken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.dirty.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One change of the weight-overrides bucket: a value put (`value` set) or a key deleted.
#[derive(Debug, Clone)]
pub(crate) struct OverrideUpdate {
    pub(crate) key: String,
    /// The entry's revision (for a delete: the bucket's sequence when it was seen gone).
    pub(crate) revision: u64,
    pub(crate) value: Option<Bytes>,
}

/// Follows the weight-overrides bucket from a task of its own that hands each change over a
/// channel, so the event loop never waits for a KV round trip. The task polls the bucket's
/// stream every [`OVERRIDES_POLL`] and reads the bucket again when its last sequence moved: a
/// bounded request at a time, where a KV watch (an ordered consumer) re-creates itself in a
/// loop while the bucket's node is down, which loaded a cluster enough to delay heartbeats.
pub(crate) struct WeightsPoller {
    updates: mpsc::Receiver<OverrideUpdate>,
    task: JoinHandle<()>,
}

impl Drop for WeightsPoller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often each replica looks for a change of the overrides (well within the 1 s promise).
pub(crate) const OVERRIDES_POLL: Duration = Duration::from_millis(200);
/// Longest wait for one poll or one read of the bucket.
const OVERRIDES_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

impl WeightsPoller {
    /// Follows `store` from the entries the caller read at start (`known`) on.
    pub(crate) fn spawn(store: kv::Store, known: &[OverrideUpdate]) -> WeightsPoller {
        let known = known.iter().map(|u| (u.key.clone(), u.revision)).collect();
        let (tx, updates) = mpsc::channel(256);
        let task = tokio::spawn(poll_overrides(store, known, tx));
        WeightsPoller { updates, task }
    }

    /// Every value of `store` now (the latest of each key that has one).
    pub(crate) async fn read_current(store: &kv::Store) -> Result<Vec<OverrideUpdate>, String> {
        let mut keys = store.keys().await.map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(entry) = store.entry(&key).await.map_err(|e| e.to_string())? {
                if entry.operation == kv::Operation::Put {
                    entries.push(OverrideUpdate {
                        key: entry.key,
                        revision: entry.revision,
                        value: Some(entry.value),
                    });
                }
            }
        }
        Ok(entries)
    }
}

/// The poller task: hands over every put of a new revision and every key gone, until the loop
/// drops its receiver.
async fn poll_overrides(
    store: kv::Store,
    mut known: BTreeMap<String, u64>,
    tx: mpsc::Sender<OverrideUpdate>,
) {
    let mut last_sequence = None;
    let mut tick = tokio::time::interval(OVERRIDES_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return;
        }
        let mut stream = store.stream.clone();
        let sequence = match tokio::time::timeout(OVERRIDES_REQUEST_TIMEOUT, stream.info()).await {
            Ok(Ok(info)) => info.state.last_sequence,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot poll the weight overrides");
                continue;
            }
            Err(_) => continue,
        };
        if last_sequence == Some(sequence) {
            continue;
        }
        let read = tokio::time::timeout(
            OVERRIDES_REQUEST_TIMEOUT,
            WeightsPoller::read_current(&store),
        )
        .await;
        let current = match read {
            Ok(Ok(current)) => current,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the weight overrides");
                continue;
            }
            Err(_) => continue,
        };
        let mut present = BTreeMap::new();
        let mut changes = Vec::new();
        for update in current {
            present.insert(update.key.clone(), update.revision);
            if known.get(&update.key) != Some(&update.revision) {
                changes.push(update);
            }
        }
        for key in known.keys().filter(|k| !present.contains_key(*k)) {
            changes.push(OverrideUpdate {
                key: key.clone(),
                revision: sequence,
                value: None,
            });
        }
        for change in changes {
            if tx.send(change).await.is_err() {
                return;
            }
        }
        known = present;
        last_sequence = Some(sequence);
    }
}

impl<'a> CoreSources<'a> {
    pub(crate) fn new(
        core: &mut Distributor,
        control: &'a mut ControlSubscriptions,
        publisher: &'a StatsPublisher,
        stats_interval: Duration,
        shutdown: &'a CancellationToken,
    ) -> Self {
        let mut stats_tick = tokio::time::interval(stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Dirty at first: nothing was polled yet.
        let woken = Arc::new(SourcesWoken {
            dirty: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        CoreSources {
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            control,
            publisher,
            weights: core.weights_watch.take(),
            expiry: Box::pin(tokio::time::sleep_until(core.expiry_deadline())),
            stats_tick,
            waker: Waker::from(woken.clone()),
            woken,
        }
    }

    /// The next core event, in priority order: shutdown, control, weight overrides, expiry,
    /// stats. Cancel-safe, so a mode's `select!` can put it first and its own sources after it.
    /// The sources are polled only when one of them woke since they were last found pending
    /// (see [`SourcesWoken`]), or after an event (another may be ready too).
    pub(crate) async fn next(&mut self) -> CoreEvent {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<CoreEvent> {
        self.woken.task.register(cx.waker());
        if !self.woken.dirty.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let event = self.poll_sources();
        if event.is_ready() {
            self.woken.dirty.store(true, Ordering::Release);
        }
        event
    }

    /// Polls every source in priority order, with [`SourcesWoken`]'s waker. A stream that ended
    /// (`Ready(None)`) is skipped, as a disabled branch of a `select!` would be.
    fn poll_sources(&mut self) -> Poll<CoreEvent> {
        let mut cx = Context::from_waker(&self.waker);
        if self.shutdown.as_mut().poll(&mut cx).is_ready() {
            return Poll::Ready(CoreEvent::Shutdown);
        }
        if let Poll::Ready(Some(message)) = self.control.poll_next_unpin(&mut cx) {
            return Poll::Ready(CoreEvent::Control(message));
        }
        if let Some(weights) = self.weights.as_mut() {
            if let Poll::Ready(Some(entry)) = weights.updates.poll_recv(&mut cx) {
                return Poll::Ready(CoreEvent::WeightOverride(entry));
            }
        }
        if self.expiry.as_mut().poll(&mut cx).is_ready() {
            return Poll::Ready(CoreEvent::Expiry);
        }
        if self.stats_tick.poll_tick(&mut cx).is_ready() {
            return Poll::Ready(CoreEvent::StatsTick);
        }
        Poll::Pending
    }

    /// The control subscription, for a mode's drain at shutdown (control still goes first).
    /// Polled there with the task's own waker, so [`next`](Self::next) polls every source again.
    pub(crate) fn control(&mut self) -> &mut ControlSubscriptions {
        self.woken.dirty.store(true, Ordering::Release);
        self.control
    }

    fn reset_expiry(&mut self, deadline: tokio::time::Instant) {
        self.expiry.as_mut().reset(deadline);
        // A reset timer is polled again, to wait for its new deadline.
        self.woken.dirty.store(true, Ordering::Release);
    }
}

/// Counters owned by the event loop (plain integers: one task owns them).
#[derive(Debug, Default)]
struct Counters {
    received_packets: u64,
    received_messages: u64,
    received_bytes: u64,
    routed_packets: u64,
    deadletter_packets: u64,
    deadletter_messages: u64,
    deadletter_reasons: BTreeMap<&'static str, u64>,
    redelivered: u64,
}

/// All routing state of one replica, owned by the event loop.
pub(crate) struct Distributor {
    client: Client,
    delivery: Delivery,
    validator: PacketValidator,
    /// Takes each packet's affinity key (`--affinity`).
    affinity: KeyExtractor,
    affinity_slack: f64,
    /// `--ingest-format`: how payloads of each subject are read.
    mapping: Mapping,
    /// False when every subject is `logdist`, so the common path does not even look up the
    /// subject.
    mapped_formats: bool,
    deadletter_subject: Subject,
    /// Largest dead-letter report of one packet (`--deadletter-report-max-bytes`), and the
    /// server's max_payload.
    deadletter_limits: SizeLimits,
    /// A few log lines per kind of bad input; every occurrence is counted regardless.
    log_throttle: LogThrottle,
    names: logdist::Names,
    replica: String,
    replica_header: HeaderValue,
    membership: Membership,
    /// The operators' weight overrides (bucket `logdist_weights`).
    overrides: WeightOverrides,
    /// The poller of that bucket, until a mode's [`CoreSources`] takes it.
    weights_watch: Option<WeightsPoller>,
    router: Router,
    counters: Counters,
    /// Met once the membership is known: the bucket was read, or a control message came.
    membership_loaded: Condition,
    events: Arc<ConnectionEvents>,
    mirror: Option<MembershipMirror>,
    started_at_ms: u64,
    rate_mark: (Instant, u64),
    messages_per_sec: f64,
}

impl Distributor {
    pub(crate) fn new(
        args: &RunArgs,
        mapping: Mapping,
        replica: &str,
        client: Client,
        events: Arc<ConnectionEvents>,
    ) -> Self {
        let deadletter_limits = SizeLimits {
            report_max_bytes: args.deadletter_report_max_bytes,
            max_payload: client.server_info().max_payload,
        };
        Distributor {
            client,
            delivery: args.delivery,
            validator: PacketValidator::new(args.max_packet_bytes),
            affinity: KeyExtractor::new(args.affinity.clone(), &args.names.ingest_subject),
            affinity_slack: args.affinity_slack,
            mapped_formats: !mapping.is_all_logdist(),
            mapping,
            deadletter_subject: Subject::from(args.names.deadletter_subject.clone()),
            deadletter_limits,
            log_throttle: LogThrottle::default(),
            names: args.names.clone(),
            replica: replica.to_string(),
            replica_header: HeaderValue::from(replica),
            membership: Membership::new(args.heartbeat_timeout_factor)
                .with_max_weight(args.max_weight),
            overrides: WeightOverrides::new(),
            weights_watch: None,
            router: if args.affinity.is_none() {
                Router::new(&args.names.analyzer_prefix)
            } else {
                Router::new(&args.names.analyzer_prefix).with_affinity(args.affinity_slack)
            },
            counters: Counters::default(),
            membership_loaded: Condition::default(),
            events,
            mirror: None,
            started_at_ms: unix_millis_now(),
            rate_mark: (Instant::now(), 0),
            messages_per_sec: 0.0,
        }
    }

    /// `/readyz`'s "membership loaded", met from [`seed_members`](Self::seed_members) or the
    /// first control message on.
    pub(crate) fn set_membership_condition(&mut self, condition: Condition) {
        self.membership_loaded = condition;
    }

    /// Applies the overrides read from the bucket at start (before the first routing table, so
    /// it already has them), and keeps `watch` for the event loop.
    pub(crate) fn seed_overrides(&mut self, entries: &[OverrideUpdate], watch: WeightsPoller) {
        for entry in entries {
            self.apply_override(entry);
        }
        self.weights_watch = Some(watch);
    }

    /// Applies one entry of the overrides bucket; true when an online analyzer's effective
    /// weight changed (the routing table must be rebuilt).
    fn apply_override(&mut self, entry: &OverrideUpdate) -> bool {
        let applied = self.overrides.apply(OverrideEntry {
            key: &entry.key,
            revision: entry.revision,
            value: entry.value.as_deref(),
        });
        match applied {
            Ok(OverrideChange::Changed { from, to }) => {
                tracing::info!(analyzer_id = %entry.key, ?from, ?to, "weight override");
                self.membership.is_online(&entry.key)
            }
            Ok(OverrideChange::Unchanged) => false,
            Err(e) => {
                tracing::warn!(error = %e, "refused weight override; the analyzer keeps the weight it had");
                false
            }
        }
    }

    /// Starts from the analyzers in the membership bucket (provisional until they heartbeat).
    pub(crate) fn seed_members(&mut self, records: &[MemberRecord]) {
        self.membership_loaded.set(true);
        let events = self.membership.seed(records, Instant::now());
        for event in &events {
            if let MembershipEvent::Joined { id, weight } = event {
                tracing::info!(analyzer_id = %id, weight, "analyzer from the membership bucket (provisional until it heartbeats)");
            }
        }
        self.sync_routes();
    }

    /// From now on, membership changes are mirrored to the membership bucket.
    pub(crate) fn set_mirror(&mut self, mirror: MembershipMirror) {
        self.mirror = Some(mirror);
    }

    pub(crate) fn take_mirror(&mut self) -> Option<MembershipMirror> {
        self.mirror.take()
    }

    pub(crate) fn replica(&self) -> &str {
        &self.replica
    }

    pub(crate) fn analyzers_online(&self) -> usize {
        self.membership.len()
    }

    /// The main connection: routed packets, dead letters and confirmations go out on it.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The main connection's events (disconnects, reconnections).
    pub(crate) fn connection_events(&self) -> &Arc<ConnectionEvents> {
        &self.events
    }

    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    pub(crate) fn router_mut(&mut self) -> &mut Router {
        &mut self.router
    }

    /// Whether every instance of analyzer `id` reads batches (`logdist::protocol::batch`).
    pub(crate) fn reads_batches(&self, id: &str) -> bool {
        self.membership
            .reads_batches(id, logdist::protocol::batch::BATCH_VERSION)
    }

    /// The `Logdist-Distributor` value of this replica.
    pub(crate) fn replica_header(&self) -> &HeaderValue {
        &self.replica_header
    }

    /// A packet reached an analyzer (published, or acknowledged in at-least-once mode).
    pub(crate) fn count_routed_packet(&mut self) {
        self.counters.routed_packets += 1;
    }

    /// A packet goes round again (at-least-once: retried or back to the stream).
    pub(crate) fn count_redelivered(&mut self) {
        self.counters.redelivered += 1;
    }

    /// Handles one event of the [`CoreSources`]; `Break` at shutdown.
    pub(crate) async fn on_event(
        &mut self,
        event: CoreEvent,
        sources: &mut CoreSources<'_>,
        mode: &mut impl DeliveryMode,
    ) -> ControlFlow<()> {
        match event {
            CoreEvent::Shutdown => return ControlFlow::Break(()),
            CoreEvent::Control(message) => {
                self.membership_loaded.set(true);
                self.on_control(&message, mode).await;
                sources.reset_expiry(self.expiry_deadline());
            }
            CoreEvent::WeightOverride(entry) => {
                // As before a membership change: what was routed under the old weights leaves
                // before the new epoch begins.
                mode.flush(self).await;
                if self.apply_override(&entry) {
                    self.sync_routes();
                    mode.routing_changed(self).await;
                }
            }
            CoreEvent::Expiry => {
                mode.flush(self).await;
                let events = self.membership.expire(Instant::now());
                self.apply_events(events, mode).await;
                sources.reset_expiry(self.expiry_deadline());
            }
            CoreEvent::StatsTick => {
                self.log_suppressed();
                sources.publisher.offer(self.snapshot(&mode.stats()));
            }
        }
        ControlFlow::Continue(())
    }

    fn expiry_deadline(&self) -> tokio::time::Instant {
        let next = self
            .membership
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::time::Instant::from_std(next)
    }

    /// Validates one payload taken from an ingest subject and dead-letters what is invalid.
    /// Returns what is left to forward (the whole payload, or the valid elements of a mixed
    /// packet), with the forwarding headers, or `None` when nothing is valid.
    pub(crate) async fn validate(
        &mut self,
        subject: Subject,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
    ) -> Option<Outgoing> {
        self.counters.received_packets += 1;
        self.counters.received_bytes += payload.len() as u64;
        if self.mapped_formats {
            let format = self.mapping.format_for(&subject);
            if format != IngestFormat::Logdist {
                return self.map_ingest(format, subject, headers, payload).await;
            }
        }
        let validator = self.validator;
        // The common case in one pass that builds nothing; anything else takes the careful path,
        // which finds each invalid element and its reason.
        if let Some(messages) = validator.count_if_valid(&payload) {
            let messages = messages as u64;
            self.counters.received_messages += messages;
            return Some(self.outgoing(subject, headers, payload, messages));
        }
        match validator.parse(&payload) {
            Ok(packet) if packet.is_fully_valid() => {
                let messages = packet.len() as u64;
                self.counters.received_messages += messages;
                drop(packet);
                Some(self.outgoing(subject, headers, payload, messages))
            }
            Ok(packet) => {
                self.counters.received_messages += packet.len() as u64;
                self.deadletter_elements(
                    &subject,
                    headers.as_ref(),
                    &payload,
                    &packet.invalid,
                    packet.len(),
                )
                .await;
                if packet.records.is_empty() {
                    return None;
                }
                let messages = packet.records.len() as u64;
                let valid = Bytes::from(packet.valid_json_array());
                Some(self.outgoing(subject, headers, valid, messages))
            }
            Err(error) => {
                let text = error.to_string();
                let reason = Reason {
                    code: error.code(),
                    text: &text,
                };
                self.deadletter(&subject, headers.as_ref(), payload.clone(), 1, reason)
                    .await;
                None
            }
        }
    }

    /// A packet the HTTP gateway of this process accepted (validated there with the same
    /// validator, `messages` log messages, canonical whatever `--ingest-format` says of
    /// `subject`): counted as received and made ready to forward without a second validation.
    /// One over `--max-packet-bytes` (the gateway's limit is `--http-max-body-bytes`) takes the
    /// careful path and is dead-lettered `too_large`, as when it came through NATS.
    pub(crate) async fn accept_validated(
        &mut self,
        subject: Subject,
        headers: async_nats::HeaderMap,
        payload: Bytes,
        messages: u64,
    ) -> Option<Outgoing> {
        if payload.len() > self.validator.max_bytes() {
            return self.validate(subject, Some(headers), payload).await;
        }
        self.counters.received_packets += 1;
        self.counters.received_bytes += payload.len() as u64;
        self.counters.received_messages += messages;
        Some(self.outgoing(subject, Some(headers), payload, messages))
    }

    /// [`validate`](Self::validate) for a subject of a shipper's format: maps the payload's
    /// records to the canonical shape and dead-letters those that cannot be mapped in one dead
    /// letter (a payload that is not of the format at all, whole). Returns the mapped packet to
    /// forward.
    async fn map_ingest(
        &mut self,
        format: IngestFormat,
        subject: Subject,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
    ) -> Option<Outgoing> {
        let received_at = logdist::protocol::headers::unix_nanos_now() as i128;
        let mapped = match self.mapping.map(format, &payload, received_at) {
            Ok(mapped) => mapped,
            Err(error) => {
                let reason = Reason {
                    code: error.code,
                    text: &error.reason,
                };
                self.deadletter(&subject, headers.as_ref(), payload.clone(), 1, reason)
                    .await;
                return None;
            }
        };
        let elements = mapped.messages + mapped.invalid.len();
        self.counters.received_messages += elements as u64;
        self.deadletter_elements(
            &subject,
            headers.as_ref(),
            &payload,
            &mapped.invalid,
            elements,
        )
        .await;
        let packet = mapped.packet?;
        let messages = mapped.messages as u64;
        if packet.len() > self.validator.max_bytes() {
            let text = format!(
                "the {messages} {format} records make a canonical packet of {} bytes, over the \
                 limit of {} bytes (--max-packet-bytes); send smaller batches",
                packet.len(),
                self.validator.max_bytes()
            );
            let reason = Reason {
                code: "too_large",
                text: &text,
            };
            self.deadletter(&subject, headers.as_ref(), payload, messages, reason)
                .await;
            return None;
        }
        // The key is read from the canonical packet, so `field:NAME` sees the mapped fields.
        let payload = Bytes::from(packet);
        Some(self.outgoing(subject, headers, payload, messages))
    }

    /// A packet accepted for routing: its affinity key (read from the bytes it is forwarded
    /// with) and the headers it is forwarded with.
    fn outgoing(
        &self,
        subject: Subject,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
        messages: u64,
    ) -> Outgoing {
        let key = self.affinity.extract(&subject, headers.as_ref(), &payload);
        let headers = headers.unwrap_or_default();
        Outgoing {
            subject,
            headers,
            payload,
            messages,
            key,
        }
    }

    pub(crate) async fn deadletter_outgoing(&mut self, out: Outgoing, reason: Reason<'_>) {
        let Outgoing {
            subject,
            headers,
            payload,
            messages,
            ..
        } = out;
        // With the headers it would have been forwarded with, as before forwarding was lazy.
        let headers = Outgoing::forwarded_headers(headers, messages, &self.replica_header);
        self.deadletter(&subject, Some(&headers), payload, messages, reason)
            .await;
    }

    /// Publishes a rejected payload (`messages` log messages) whole to the dead-letter subject
    /// with the contract's headers, and counts it.
    async fn deadletter(
        &mut self,
        subject: &Subject,
        original: Option<&async_nats::HeaderMap>,
        payload: Bytes,
        messages: u64,
        reason: Reason<'_>,
    ) {
        self.count_deadletter(messages, [(reason.code, messages)], subject, reason);
        let headers = logdist::protocol::deadletter::deadletter_headers(
            original,
            reason,
            subject,
            None,
            &self.replica_header,
        );
        self.publish_deadletter(headers, payload).await;
    }

    /// The one dead letter of a payload of `elements` elements with `invalid` ones (invalid
    /// elements of a packet, or records of a shipper's format that cannot be mapped; see
    /// [`PacketDeadLetter`]): a report of each, or the payload whole with a summary. Counts
    /// each element.
    async fn deadletter_elements<R: RejectedElement>(
        &mut self,
        subject: &Subject,
        original: Option<&async_nats::HeaderMap>,
        payload: &Bytes,
        invalid: &[R],
        elements: usize,
    ) {
        if invalid.is_empty() {
            return;
        }
        let (max_report, max_payload) = self.deadletter_limits.for_headers(original);
        let letter =
            PacketDeadLetter::build(invalid, elements, payload.len(), max_report, max_payload);
        let reason = Reason {
            code: logdist::protocol::deadletter::INVALID_ELEMENTS,
            text: &letter.summary,
        };
        let by_code: Vec<(&'static str, u64)> =
            letter.by_code.iter().map(|(c, n)| (*c, *n)).collect();
        self.count_deadletter(letter.rejected as u64, by_code, subject, reason);
        let headers = packet_deadletter_headers(original, &letter, subject, &self.replica_header);
        let body = match letter.body {
            DeadLetterBody::Report(report) | DeadLetterBody::Truncated { report, .. } => {
                Bytes::from(report)
            }
            DeadLetterBody::Whole => payload.clone(),
        };
        self.publish_deadletter(headers, body).await;
    }

    /// Counts one packet's dead letter that was written outside the event loop (the stream scan
    /// of `crate::unreadable`), as one message: its payload was never validated.
    pub(crate) fn count_deadlettered_elsewhere(&mut self, subject: &Subject, reason: Reason<'_>) {
        self.count_deadletter(1, [(reason.code, 1)], subject, reason);
    }

    /// Counts one dead letter of `messages` rejected messages (by reason code), and logs it
    /// within the throttle.
    fn count_deadletter(
        &mut self,
        messages: u64,
        by_code: impl IntoIterator<Item = (&'static str, u64)>,
        subject: &Subject,
        reason: Reason<'_>,
    ) {
        self.counters.deadletter_packets += 1;
        self.counters.deadletter_messages += messages;
        for (code, n) in by_code {
            *self.counters.deadletter_reasons.entry(code).or_insert(0) += n;
        }
        if let Verdict::Log { suppressed } = self.log_throttle.check(reason.code, Instant::now()) {
            tracing::warn!(code = reason.code, reason = reason.text, subject = %subject, messages,
                suppressed_before = suppressed, "dead-lettered (counted in deadletter_*)");
        }
    }

    async fn publish_deadletter(&mut self, headers: async_nats::HeaderMap, payload: Bytes) {
        if let Err(e) = self
            .client
            .publish_with_headers(self.deadletter_subject.clone(), headers, payload)
            .await
        {
            tracing::error!(error = %e, "cannot publish a dead letter");
        }
    }

    /// One message from a control subscription: from analyzer `<id>`'s own subject, or (with
    /// `--legacy-control-subject`) the old shared one.
    pub(crate) async fn on_control(&mut self, message: &Message, mode: &mut impl DeliveryMode) {
        mode.flush(self).await;
        let payload = &message.payload[..];
        let speaker = self.names.control_subject_id(message.subject.as_str());
        let message = match self.membership.parse_payload(speaker, payload) {
            Ok(parsed) => parsed,
            Err(e) => {
                if let Verdict::Log { suppressed } =
                    self.log_throttle.check(e.code(), Instant::now())
                {
                    tracing::warn!(
                        code = e.code(),
                        error = %e,
                        subject = %message.subject,
                        payload = %String::from_utf8_lossy(&payload[..payload.len().min(200)]),
                        suppressed_before = suppressed,
                        "rejected control message (counted in bad_heartbeats)"
                    );
                }
                return;
            }
        };
        let withdrawn = match &message {
            ControlMessage::Down(withdraw) => Some(withdraw.clone()),
            ControlMessage::Up(_) => None,
        };
        let events = self.membership.apply(message, Instant::now());
        self.apply_events(events, mode).await;
        if let Some(withdraw) = withdrawn {
            self.confirm_withdrawal(withdraw).await;
        }
    }

    /// Logs how many bad inputs of each kind the throttle left out once their window ended
    /// (called on the stats tick, so a flood that stopped is still reported).
    fn log_suppressed(&mut self) {
        for (code, count) in self.log_throttle.take_suppressed(Instant::now()) {
            tracing::warn!(
                code,
                count,
                "more bad input of this kind was not logged (all of it is counted in the stats)"
            );
        }
    }

    /// Tells the withdrawing instance that this replica will route nothing more to it. Published
    /// on the connection that routes packets, after every packet routed to it so far, so the
    /// instance has them all once it has this (see `WithdrawalConfirmed`). Sent for every
    /// withdrawal, known instance or not: the instance may have been dropped by a timeout first.
    async fn confirm_withdrawal(&mut self, withdraw: Withdraw) {
        let confirmation = WithdrawalConfirmed {
            distributor: self.replica.clone(),
            id: withdraw.id,
            instance: withdraw.instance,
        };
        let subject = self.names.withdrawn_subject(&confirmation.id);
        let payload = serde_json::to_vec(&confirmation).expect("plain strings serialize");
        if let Err(e) = self.client.publish(subject, payload.into()).await {
            tracing::warn!(analyzer_id = %confirmation.id, instance = %confirmation.instance,
                error = %e, "cannot confirm the withdrawal; the instance waits for its timeout");
        }
    }

    /// Logs membership events, mirrors them to KV, and on a routing change starts a new epoch
    /// and lets the mode release what it holds.
    async fn apply_events(&mut self, events: Vec<MembershipEvent>, mode: &mut impl DeliveryMode) {
        let mut routing_changed = false;
        for event in &events {
            routing_changed |= event.changes_routing();
            match event {
                MembershipEvent::Joined { id, weight } => {
                    tracing::info!(analyzer_id = %id, weight, "analyzer joined");
                    self.mirror_put(id);
                }
                MembershipEvent::WeightChanged { id, from, to } => {
                    tracing::info!(analyzer_id = %id, from, to, "analyzer weight changed");
                    self.mirror_put(id);
                }
                MembershipEvent::InstancesChanged { id } => {
                    tracing::debug!(analyzer_id = %id, "analyzer instances changed");
                    self.mirror_put(id);
                }
                MembershipEvent::Left { id, reason } => {
                    tracing::info!(analyzer_id = %id, reason = reason.as_str(), "analyzer left");
                    if let Some(mirror) = &self.mirror {
                        mirror.delete(id);
                    }
                }
                MembershipEvent::WeightConflict {
                    id,
                    chosen,
                    chosen_instance,
                    other,
                    other_instance,
                } => tracing::warn!(
                    analyzer_id = %id,
                    weight = chosen,
                    instance = %chosen_instance,
                    other_weight = other,
                    other_instance = %other_instance,
                    "instances of one analyzer announce different weights; using the newest instance's"
                ),
            }
        }
        mode.membership_changed(&events);
        if routing_changed {
            self.sync_routes();
            mode.routing_changed(self).await;
        }
    }

    fn mirror_put(&self, id: &str) {
        if let (Some(mirror), Some(record)) = (&self.mirror, self.membership.record(id)) {
            mirror.put(record);
        }
    }

    /// Rebuilds the routing table from the membership and the overrides (a new epoch).
    fn sync_routes(&mut self) {
        let overrides = &self.overrides;
        self.router
            .set_weights(self.membership.online().map(|(id, announced)| Member {
                id,
                announced,
                effective: overrides.effective(id, announced),
            }));
        tracing::debug!(
            epoch = self.router.epoch(),
            analyzers = self.membership.len(),
            "new routing epoch"
        );
    }

    /// The replica's stats now, with the mode's part.
    pub(crate) fn snapshot(&mut self, mode: &ModeStats) -> DistributorStats {
        let now = Instant::now();
        let routed = self.router.routed_messages();
        let (mark, mark_routed) = self.rate_mark;
        let elapsed = now.duration_since(mark).as_secs_f64();
        if elapsed >= 0.05 {
            self.messages_per_sec = (routed - mark_routed) as f64 / elapsed;
            self.rate_mark = (now, routed);
        }
        let c = &self.counters;
        DistributorStats {
            replica: self.replica.clone(),
            delivery: self.delivery.as_str().to_string(),
            started_at_ms: self.started_at_ms,
            updated_at_ms: unix_millis_now(),
            received_packets: c.received_packets,
            received_messages: c.received_messages,
            received_bytes: c.received_bytes,
            routed_packets: c.routed_packets,
            routed_messages: routed,
            deadletter_packets: c.deadletter_packets,
            deadletter_messages: c.deadletter_messages,
            deadletter_reasons: c
                .deadletter_reasons
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            held_packets: mode.held_packets,
            held_messages: mode.held_messages,
            held_bytes: mode.held_bytes,
            held_total: mode.held_total,
            held_overflow: mode.held_overflow,
            redelivered: c.redelivered,
            ingest_dropped_packets: mode.ingest_dropped_packets,
            batches_sent: mode.batches_sent,
            batched_packets: mode.batched_packets,
            // Client events of the main connection and of the mode's own.
            slow_consumer_events: self.events.slow_consumer_events() + mode.slow_consumer_events,
            disconnects: self.events.disconnects() + mode.disconnects,
            reconnects: self.events.reconnects() + mode.reconnects,
            bad_heartbeats: self.membership.bad_heartbeats(),
            refused_weight_overrides: self.overrides.refused(),
            in_flight_packets: mode.in_flight_packets,
            in_flight_bytes: mode.in_flight_bytes,
            messages_per_sec: self.messages_per_sec,
            epoch: self.router.epoch(),
            epoch_started_ms: self.router.epoch_started_ms(),
            affinity: self.affinity.key().to_string(),
            affinity_slack: if self.router.has_affinity() {
                self.affinity_slack
            } else {
                0.0
            },
            keyless_packets: self.router.keyless_packets(),
            keys_saturated: self.router.keys_saturated(),
            analyzers: self.router.route_stats(),
        }
    }
}
