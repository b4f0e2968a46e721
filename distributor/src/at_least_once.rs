//! At-least-once delivery (`--delivery at-least-once`): packets come from a JetStream stream
//! through a durable pull consumer shared by every replica, and a packet is acked in the stream
//! only after an analyzer acknowledged it. See `docs/delivery.md` for the guarantee.
//!
//! The same one-task event loop as at-most-once (control first, so a withdrawal takes effect at
//! once), with two more sources: the consumer's message stream, and the requests in flight to
//! analyzers (a `FuturesUnordered`, so thousands are pipelined). Per packet:
//!
//! 1. validate exactly as at-most-once; what is invalid is dead-lettered, a packet with nothing
//!    valid is acked at once;
//! 2. choose an analyzer and *reserve* the packet there (the selector counts it now, so balancing
//!    sees packets in flight), unless that analyzer already has `--analyzer-window` packets in
//!    flight: then the packet waits (and fetching pauses) until one completes, so a slow
//!    analyzer slows the pipeline instead of losing its share;
//! 3. send it as a request with `Logdist-Packet-Id: <stream>:<stream sequence>`;
//! 4. on the reply: count it as routed and ack it in the stream. On a failure, take the
//!    reservation back and ask the [`FaultJudge`] whose fault it was (`crate::redelivery`):
//!    - the *infrastructure*'s (not connected to NATS, reconnected or the consumer back less
//!      than `--reconnect-grace` ago, several analyzers failing with no acknowledgement in
//!      between, nobody answering at all, e.g. while a JetStream leader election holds every
//!      analyzer's checkpoint): nak the packet with a growing delay, so it stays in the stream;
//!      it costs no attempt and is never dead-lettered for that;
//!    - an analyzer that withdrew meanwhile: send it elsewhere at once, no attempt counted;
//!    - *this analyzer*'s (no responders or a time-out while others answer, a time-out of an
//!      analyzer that never answered anything): tell JetStream the packet is still being worked
//!      on and keep it aside for the retry delay (`--retry-delay`, 100 ms doubling), then send
//!      it to another analyzer (excluding those that failed it); after `--max-attempts` such
//!      failures dead-letter it (`undeliverable`) and ack it.
//!
//! With no analyzer online, packets in hand are nak'ed with a growing delay and fetching pauses:
//! they stay in the stream. Errors of the consumer (a server restart, a cluster node lost) drop
//! the message stream; the consumer is looked up again after a short back-off (250 ms doubling
//! to 2 s), without restarting. Requests in flight are unaffected: the client reconnects (to any
//! node given in `--nats-url`) by itself.
//!
//! Shutdown: stop fetching, nak what was not sent, wait (at most `--shutdown-timeout`) for the
//! requests in flight and ack those acknowledged; the rest JetStream redelivers after
//! `--ack-wait`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::header::HeaderValue;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream, AckKind};
use async_nats::{Message, Request, RequestError, RequestErrorKind, Subject};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use logdist::protocol::batch::{coalescable, BatchBuilder, ALONE_BYTES};
use logdist::protocol::deadletter::{Reason, UNDELIVERABLE, UNREADABLE_HEADERS};
use logdist::protocol::headers::name::PACKET_ID;
use logdist::telemetry::Condition;
use logdist::{ConnectionEvents, Names};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AtLeastOnceArgs, RunArgs};
use crate::core::{ControlSubscriptions, CoreSources, DeliveryMode, Distributor, ModeStats};
use crate::membership::{LeaveReason, MembershipEvent};
use crate::outgoing::Outgoing;
use crate::redelivery::{nak_delay, Failure, FailureKind, FaultJudge, RetryPolicy, Verdict};
use crate::router::Reservation;
use crate::stats_publisher::StatsPublisher;
use crate::unreadable::{remove_unreadable, DeadLetters, Removed, Scan};

/// Idle heartbeat asked of the server on pull requests: a consumer that stops answering (server
/// restart, leader lost) shows as an error within about two of these.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Expiry of one pull request; the client renews them.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Back-off between attempts to get the consumer again after an error: short, because a cluster
/// elects a new leader within seconds and the pipeline is stalled until the consumer is back.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for getting the consumer, and again for opening its message stream (the scan
/// between the two has its own bound); a JetStream API call to a cluster without a leader would
/// otherwise wait for the client's full request time-out.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages a reopening of the consumer scans for headers the client cannot read (the oldest
/// unacknowledged ones; see `crate::unreadable`), so that a recovery is not held up by it.
const REOPEN_SCAN: u64 = 1_000;

/// A packet taken from the stream and not yet acked there.
struct Packet {
    message: jetstream::Message,
    out: Outgoing,
    /// Its `Logdist-Packet-Id` (`<stream>:<sequence>`), kept beside `out.headers`, not in
    /// them: as the fourth name in the agent's three-header map it grew the map's table
    /// (4 → 8 buckets, every name re-hashed with SipHash), ~1,100 instructions a packet
    /// (callgrind, `scripts/callgrind-distributor.sh alo 20000 10`). It joins the headers only
    /// when the packet leaves alone or as a dead letter; a batch lists it from here.
    id: HeaderValue,
    /// Failed deliveries so far.
    attempts: u32,
    /// Analyzers that failed it (skipped while others are online).
    failed: Vec<Arc<str>>,
    /// When the current request was sent.
    sent: Instant,
    /// Whether the client was connected to NATS when it was sent.
    sent_connected: bool,
}

/// A packet waiting for its retry, ordered by when it is due (then by arrival).
struct Waiting {
    due: tokio::time::Instant,
    order: u64,
    packet: Packet,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// What one request carried (one packet, or the packets of a batch, each with its reservation)
/// and how it ended.
type Done = (Vec<(Packet, Reservation)>, Result<Message, RequestError>);
type Delivery = Pin<Box<dyn Future<Output = Done> + Send + 'static>>;

/// Why the consumer's message stream could not be opened (the loop retries with a back-off).
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot get or create stream {stream:?}")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot add the --ingest-format subjects to stream {stream:?}")]
    AddSubjects {
        stream: String,
        #[source]
        source: jetstream::context::UpdateStreamError,
    },
    #[error("cannot get stream {stream:?}")]
    GetStream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot get or create consumer {consumer:?} on stream {stream:?}")]
    Consumer {
        consumer: String,
        stream: String,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    #[error("cannot pull from consumer {consumer:?}")]
    Pull {
        consumer: String,
        #[source]
        source: jetstream::consumer::StreamError,
    },
    #[error("JetStream did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("consumer set-up task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Gets (or creates) the stream and the durable consumer.
/// `extra_subjects` are the `--ingest-format` patterns outside the ingest subjects: the stream
/// captures them too, and a stream made before they were given is updated to.
pub async fn open_consumer(
    js: &jetstream::Context,
    names: &Names,
    args: &AtLeastOnceArgs,
    extra_subjects: &[String],
) -> Result<jetstream::consumer::PullConsumer, ConsumerError> {
    let mut subjects = vec![names.ingest_subject.clone(), names.ingest_wildcard()];
    subjects.extend_from_slice(extra_subjects);
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: args.stream.clone(),
            description: Some(
                "logdist: log packets from the ingest subjects (at-least-once delivery)".into(),
            ),
            subjects: subjects.clone(),
            // A packet leaves the stream once acked: the stream holds the backlog only.
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: args.stream_replicas,
            max_age: args.stream_max_age,
            max_bytes: args.stream_max_bytes,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|source| ConsumerError::Stream {
            stream: args.stream.clone(),
            source,
        })?;
    let mut config = stream.cached_info().config.clone();
    let missing: Vec<String> = subjects
        .into_iter()
        .filter(|s| !config.subjects.contains(s))
        .collect();
    if !missing.is_empty() {
        config.subjects.extend(missing);
        js.update_stream(&config)
            .await
            .map_err(|source| ConsumerError::AddSubjects {
                stream: args.stream.clone(),
                source,
            })?;
        stream = js
            .get_stream(&args.stream)
            .await
            .map_err(|source| ConsumerError::GetStream {
                stream: args.stream.clone(),
                source,
            })?;
    }
    stream
        .get_or_create_consumer(
            &args.consumer,
            pull::Config {
                durable_name: Some(args.consumer.clone()),
                description: Some("logdist distributors (shared by every replica)".into()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: args.ack_wait,
                // Never give up on a packet: failures end as dead letters, not as drops.
                max_deliver: -1,
                max_ack_pending: args.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|source| ConsumerError::Consumer {
            consumer: args.consumer.clone(),
            stream: args.stream.clone(),
            source,
        })
}

/// The consumer's message stream, and what the scan before it dead-lettered.
struct Opened {
    messages: pull::Stream,
    removed: Vec<Removed>,
}

/// Gets the consumer, takes the messages whose headers the client cannot read out of the
/// stream (`crate::unreadable`), and opens the consumer's message stream, in a task of its own
/// so the event loop keeps serving acknowledgements and heartbeats meanwhile.
fn open(
    js: jetstream::Context,
    names: Names,
    args: AtLeastOnceArgs,
    extra_subjects: Vec<String>,
    letters: DeadLetters,
    scan: Scan,
) -> JoinHandle<Result<Opened, ConsumerError>> {
    tokio::spawn(async move {
        let consumer = tokio::time::timeout(
            OPEN_TIMEOUT,
            open_consumer(&js, &names, &args, &extra_subjects),
        )
        .await
        .unwrap_or(Err(ConsumerError::TimedOut(OPEN_TIMEOUT)))?;
        // Bounded by its own budget, not by OPEN_TIMEOUT: a long backlog must not keep the
        // consumer from ever opening.
        let removed =
            remove_unreadable(&js, &args.stream, consumer.cached_info(), scan, &letters).await;
        let pulling = consumer
            .stream()
            .max_messages_per_batch(args.fetch_batch)
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages();
        let messages = tokio::time::timeout(OPEN_TIMEOUT, pulling)
            .await
            .map_err(|_| ConsumerError::TimedOut(OPEN_TIMEOUT))?
            .map_err(|source| ConsumerError::Pull {
                consumer: args.consumer.clone(),
                source,
            })?;
        Ok(Opened { messages, removed })
    })
}

async fn join(
    opening: &mut Option<JoinHandle<Result<Opened, ConsumerError>>>,
) -> Result<Opened, ConsumerError> {
    match opening {
        Some(task) => task.await.unwrap_or_else(|e| Err(ConsumerError::Task(e))),
        None => std::future::pending().await,
    }
}

async fn next_message(
    messages: &mut Option<pull::Stream>,
) -> Option<Result<jetstream::Message, pull::MessagesError>> {
    match messages {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The at-least-once pipeline of one replica.
struct Pipeline<'a> {
    d: &'a mut Distributor,
    stream: String,
    request_timeout: Duration,
    policy: RetryPolicy,
    window: usize,
    max_in_flight: usize,
    max_in_flight_bytes: usize,
    in_flight: FuturesUnordered<Delivery>,
    /// Packets in the requests in flight (a batch is one request).
    in_flight_packets: usize,
    /// Payload bytes of the requests in flight.
    in_flight_bytes: usize,
    /// Coalescing (`--linger` > 0): the packets one dispatch sends to one analyzer that reads
    /// batches go as one request, within these bounds.
    coalesce: bool,
    batch_max_bytes: usize,
    batch_max_messages: u64,
    /// Builds every batch request, kept from one to the next so its lists keep their room: a
    /// builder per request grew each list from empty, and a packet's push cost 1,346
    /// instructions against 734 with one builder (callgrind, `scripts/callgrind-distributor.sh
    /// alo 20000 10`).
    batch: BatchBuilder,
    /// Requests in flight per analyzer id.
    per_analyzer: HashMap<Arc<str>, usize>,
    /// Packets to send (new, or to retry), oldest first.
    ready: VecDeque<Packet>,
    /// Packets an analyzer failed, waiting for their retry delay, the soonest first.
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// Payload bytes of the waiting packets.
    waiting_bytes: usize,
    /// Arrival order of the waiting packets (ties of `due`).
    waiting_order: u64,
    /// Whether "no analyzer online" was logged since the last packet went out.
    idle_logged: bool,
    /// The mode's part of the core loop; holds the judge of failed deliveries.
    mode: InStream,
    /// The client's connection events (when it last reconnected).
    events: Arc<ConnectionEvents>,
    /// Whether an infrastructure failure was logged since the last acknowledgement.
    outage_logged: bool,
}

/// Runs the at-least-once pipeline until `shutdown`, then finishes what is in flight.
pub(crate) async fn run(
    args: &RunArgs,
    js: &jetstream::Context,
    distributor: &mut Distributor,
    control: &mut ControlSubscriptions,
    publisher: &StatsPublisher,
    consumer_bound: &Condition,
    shutdown: &CancellationToken,
) {
    let alo = &args.at_least_once;
    let events = distributor.connection_events().clone();
    let mut p = Pipeline {
        d: distributor,
        stream: alo.stream.clone(),
        request_timeout: alo.request_timeout,
        policy: RetryPolicy {
            max_attempts: alo.max_attempts,
            first_delay: alo.retry_delay,
            // A packet waiting longer than --ack-wait would be redelivered by JetStream meanwhile.
            max_delay: alo.retry_max_delay.min(alo.ack_wait / 2),
        },
        window: alo.analyzer_window,
        max_in_flight: alo.max_in_flight,
        max_in_flight_bytes: alo.max_in_flight_bytes,
        in_flight: FuturesUnordered::new(),
        in_flight_packets: 0,
        in_flight_bytes: 0,
        coalesce: !args.coalesce.linger.is_zero(),
        batch_max_bytes: args.coalesce.batch_max_bytes,
        batch_max_messages: args.coalesce.batch_max_messages,
        batch: BatchBuilder::new(),
        per_analyzer: HashMap::new(),
        ready: VecDeque::new(),
        waiting: BinaryHeap::new(),
        waiting_bytes: 0,
        waiting_order: 0,
        idle_logged: false,
        mode: InStream {
            judge: FaultJudge::new(alo.reconnect_grace, Instant::now()),
            batches_sent: 0,
            batched_packets: 0,
            in_flight_packets: 0,
            in_flight_bytes: 0,
        },
        events,
        outage_logged: false,
    };
    let extra_subjects = args
        .formats
        .mapping_and_subjects(&args.names)
        .map(|(_, extra)| extra)
        .unwrap_or_default();
    let letters = DeadLetters {
        client: js.client(),
        subject: Subject::from(args.names.deadletter_subject.clone()),
        replica: p.d.replica_header().clone(),
    };
    // At start the whole unacknowledged range is scanned: a message that stopped the replica
    // before may be anywhere in it. A reopening in the same process (after a consumer error)
    // scans only the oldest few: a message this client stops on would have ended the process,
    // and one it refuses with a read error, never acked, is soon the oldest. (Whether the
    // reconnection such a message causes also ends the consumer's message stream, so that a
    // reopening happens at all, is not tested.)
    let reopen = |scan: Scan| {
        open(
            js.clone(),
            args.names.clone(),
            alo.clone(),
            extra_subjects.clone(),
            letters.clone(),
            scan,
        )
    };
    let mut opening = Some(reopen(Scan::All));
    let mut messages: Option<pull::Stream> = None;
    let mut backoff = MIN_BACKOFF;
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_armed = false;
    let mut sources = CoreSources::new(p.d, control, publisher, args.stats_interval, shutdown);
    let retry_due = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry_due);
    let mut retry_due_at = None;

    loop {
        p.dispatch_ready().await;
        let next_retry = p.waiting.peek().map(|w| w.0.due);
        if let Some(due) = next_retry.filter(|_| next_retry != retry_due_at) {
            retry_due.as_mut().reset(due);
        }
        retry_due_at = next_retry;
        let room = p.ready.is_empty()
            && p.in_flight_packets + p.waiting.len() < p.max_in_flight
            && p.in_flight_bytes + p.waiting_bytes < p.max_in_flight_bytes
            && !p.d.router().is_empty()
            && messages.is_some();
        tokio::select! {
            biased;
            event = sources.next() => {
                p.mode.in_flight_packets = p.in_flight_packets as u64;
                p.mode.in_flight_bytes = p.in_flight_bytes as u64;
                if p.d.on_event(event, &mut sources, &mut p.mode).await.is_break() {
                    break;
                }
            }
            Some(done) = p.in_flight.next() => p.on_done(done).await,
            () = &mut retry_due, if retry_due_at.is_some() => p.retry_due().await,
            result = join(&mut opening) => {
                opening = None;
                match result {
                    Ok(Opened { messages: stream, removed }) => {
                        for r in &removed {
                            let reason = Reason { code: UNREADABLE_HEADERS, text: &r.reason };
                            p.d.count_deadlettered_elsewhere(&r.subject, reason);
                        }
                        tracing::info!(stream = %alo.stream, consumer = %alo.consumer, "consuming from JetStream");
                        messages = Some(stream);
                        consumer_bound.set(true);
                        backoff = MIN_BACKOFF;
                        p.mode.judge.consumer_open(Instant::now());
                    }
                    Err(e) => {
                        tracing::warn!(error = &e as &dyn std::error::Error, retry_in = ?backoff, "JetStream consumer not available");
                        retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                        retry_armed = true;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            () = &mut retry, if retry_armed => {
                retry_armed = false;
                opening = Some(reopen(Scan::Oldest(REOPEN_SCAN)));
            }
            item = next_message(&mut messages), if room => {
                let mut item = item;
                let mut ready_bytes = 0;
                loop {
                    match item {
                        Some(Ok(message)) => {
                            let before = p.ready.len();
                            p.on_message(message).await;
                            if p.ready.len() > before {
                                ready_bytes += p.ready.back().map_or(0, |r| r.out.payload.len());
                            }
                        }
                        other => {
                            match other {
                                Some(Err(e)) => tracing::warn!(error = %e, kind = ?e.kind(), retry_in = ?backoff, "JetStream consumer error; getting the consumer again"),
                                _ => tracing::warn!(retry_in = ?backoff, "JetStream message stream ended; getting the consumer again"),
                            }
                            messages = None;
                            consumer_bound.set(false);
                            p.mode.judge.consumer_lost(Instant::now());
                            retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                            retry_armed = true;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            break;
                        }
                    }
                    // With coalescing, take what JetStream already delivered (never waiting),
                    // so one dispatch can send it to each analyzer as one request.
                    if !p.coalesce || !p.has_room_for_more(alo.fetch_batch, ready_bytes) {
                        break;
                    }
                    match messages.as_mut().and_then(|m| m.next().now_or_never()) {
                        Some(next) => item = next,
                        None => break,
                    }
                }
            }
        }
    }

    tracing::info!(
        in_flight = p.in_flight.len(),
        waiting = p.ready.len(),
        "stopping: no more fetching; finishing the requests in flight"
    );
    drop(messages);
    if let Some(task) = opening {
        task.abort();
    }
    p.finish(alo.shutdown_timeout).await;
}

/// At-least-once keeps the packets that wait for an analyzer in the stream, not in the replica:
/// nothing to release when the routing table changes (the loop dispatches what is ready first
/// thing every turn), and no hold queue or connection of its own to report: only what is in
/// flight. What it takes from membership changes is who withdrew, for judging the failed
/// deliveries.
struct InStream {
    judge: FaultJudge,
    /// Requests that carried a batch, and the packets in them.
    batches_sent: u64,
    batched_packets: u64,
    /// What is in flight, set by the loop before each core event (the stats tick reads it).
    in_flight_packets: u64,
    in_flight_bytes: u64,
}

impl DeliveryMode for InStream {
    async fn routing_changed(&mut self, _core: &mut Distributor) {}

    fn membership_changed(&mut self, events: &[MembershipEvent]) {
        for event in events {
            match event {
                MembershipEvent::Left {
                    id,
                    reason: LeaveReason::Withdrawn,
                } => self.judge.withdrawn(id, Instant::now()),
                MembershipEvent::Joined { id, .. } => self.judge.joined(id),
                _ => {}
            }
        }
    }

    fn stats(&mut self) -> ModeStats {
        ModeStats {
            batches_sent: self.batches_sent,
            batched_packets: self.batched_packets,
            in_flight_packets: self.in_flight_packets,
            in_flight_bytes: self.in_flight_bytes,
            ..ModeStats::default()
        }
    }
}

impl Pipeline<'_> {
    /// Whether another message may be taken from the stream before dispatching: fewer than
    /// `limit` ready, and room in flight for all of them (`ready_bytes`: their payload).
    fn has_room_for_more(&self, limit: usize, ready_bytes: usize) -> bool {
        self.ready.len() < limit
            && self.in_flight_packets + self.waiting.len() + self.ready.len() < self.max_in_flight
            && self.in_flight_bytes + self.waiting_bytes + ready_bytes < self.max_in_flight_bytes
            && !self.d.router().is_empty()
    }

    /// One message from the stream: validate, dead-letter what is invalid, queue the rest.
    async fn on_message(&mut self, mut message: jetstream::Message) {
        let Some(sequence) = message.reply.as_deref().and_then(stream_sequence) else {
            // Not a consumer delivery (no ack subject): nothing to ack either.
            tracing::warn!(subject = %message.subject, reply = ?message.reply, "message without JetStream metadata; skipped");
            return;
        };
        // Built by hand: `format!` cost ~1,000 instructions a packet (callgrind).
        let mut id = String::with_capacity(self.stream.len() + 1 + sequence.len());
        id.push_str(&self.stream);
        id.push(':');
        id.push_str(sequence);
        let subject = message.subject.clone();
        // Only the reply subject is needed from here on (acks, the delivery count): the headers
        // move into the packet instead of being copied.
        let headers = message.message.headers.take();
        let payload = message.payload.clone();
        match self.d.validate(subject, headers, payload).await {
            Some(out) => {
                self.ready.push_back(Packet {
                    message,
                    out,
                    id: HeaderValue::from(id),
                    attempts: 0,
                    failed: Vec::new(),
                    sent: Instant::now(),
                    sent_connected: true,
                });
            }
            // Everything was dead-lettered (published before this ack, on the same connection).
            None => ack(&message, AckKind::Ack).await,
        }
    }

    /// Sends ready packets while analyzers have room in their windows. With coalescing, the
    /// packets this pass reserves for one analyzer that reads batches go as one request (in
    /// the order reserved), bounded by `--batch-max-bytes` and `--batch-max-messages`; a
    /// packet of [`ALONE_BYTES`] or more goes alone.
    async fn dispatch_ready(&mut self) {
        // Per analyzer index (this pass: the routing table cannot change meanwhile).
        let mut open: Vec<Vec<(Packet, Reservation)>> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        while let Some(packet) = self.ready.pop_front() {
            let messages = packet.out.messages;
            let key = packet.out.key;
            let Some(pick) = self.d.router().choose(key, messages, &packet.failed) else {
                self.nak_no_analyzer(packet).await;
                continue;
            };
            let busy = self
                .per_analyzer
                .get(self.d.router().id(pick.index))
                .is_some_and(|&n| n >= self.window);
            if busy {
                self.ready.push_front(packet);
                break;
            }
            self.idle_logged = false;
            let index = pick.index;
            let reservation = self.d.router_mut().reserve(pick, key, messages);
            *self.per_analyzer.entry(reservation.id.clone()).or_insert(0) += 1;
            if !self.coalesce
                || !self.d.reads_batches(&reservation.id)
                || !coalescable(&packet.out.headers)
            {
                self.send(vec![(packet, reservation)]);
                continue;
            }
            if open.len() <= index {
                open.resize_with(index + 1, Vec::new);
            }
            if packet.out.payload.len() >= ALONE_BYTES {
                // Joining it would cost more than the request it saves. What this pass
                // reserved for the analyzer before it leaves first, to keep their order.
                let before = std::mem::take(&mut open[index]);
                if !before.is_empty() {
                    self.send(before);
                }
                self.send(vec![(packet, reservation)]);
                continue;
            }
            let (bytes, count) = open[index].iter().fold((0, 0), |(b, m), (p, _)| {
                (b + p.out.payload.len(), m + p.out.messages)
            });
            let fits = bytes + packet.out.payload.len() <= self.batch_max_bytes
                && count + packet.out.messages <= self.batch_max_messages;
            if !open[index].is_empty() && !fits {
                let full = std::mem::take(&mut open[index]);
                self.send(full);
            }
            if open[index].is_empty() {
                order.push(index);
            }
            open[index].push((packet, reservation));
        }
        for index in order {
            let packets = std::mem::take(&mut open[index]);
            if !packets.is_empty() {
                self.send(packets);
            }
        }
    }

    /// Sends one request: a packet alone, or a batch of packets for one analyzer.
    fn send(&mut self, mut packets: Vec<(Packet, Reservation)>) {
        let now = Instant::now();
        let connected = self.d.client().connection_state() == State::Connected;
        let mut bytes = 0;
        for (packet, _) in &mut packets {
            packet.sent = now;
            packet.sent_connected = connected;
            bytes += packet.out.payload.len();
        }
        self.in_flight_bytes += bytes;
        self.in_flight_packets += packets.len();
        let subject = packets[0].1.subject.clone();
        let request = if packets.len() == 1 {
            let Packet { out, id, .. } = &packets[0].0;
            let mut headers = out.headers.clone();
            headers.insert(PACKET_ID, id.clone());
            Request::new()
                .headers(Outgoing::forwarded_headers(
                    headers,
                    out.messages,
                    self.d.replica_header(),
                ))
                .payload(out.payload.clone())
        } else {
            let batch = &mut self.batch;
            for (packet, _) in &packets {
                batch.push_with_packet_id(
                    &packet.out.headers,
                    &packet.out.payload,
                    packet.out.messages,
                    packet.id.as_str(),
                );
            }
            self.mode.batches_sent += 1;
            self.mode.batched_packets += packets.len() as u64;
            let (headers, payload) = batch.finish(self.d.replica_header());
            Request::new().headers(headers).payload(payload)
        }
        .timeout(Some(self.request_timeout));
        let client = self.d.client().clone();
        self.in_flight.push(Box::pin(async move {
            let result = client.send_request(subject, request).await;
            (packets, result)
        }));
    }

    /// A request finished: on its reply, ack every packet it carried; otherwise each of them
    /// is retried elsewhere or dead-lettered on its own (the rules of one packet, applied to
    /// each).
    async fn on_done(&mut self, done: Done) {
        let (packets, result) = done;
        let analyzer = packets[0].1.id.clone();
        self.in_flight_packets -= packets.len();
        for (packet, _) in &packets {
            self.in_flight_bytes -= packet.out.payload.len();
        }
        if let Some(n) = self.per_analyzer.get_mut(&analyzer) {
            *n -= packets.len();
            if *n == 0 {
                self.per_analyzer.remove(&analyzer);
            }
        }
        let error = match result {
            Ok(_) => {
                self.mode.judge.acked(&analyzer, Instant::now());
                self.outage_logged = false;
                for (packet, reservation) in &packets {
                    self.d
                        .router_mut()
                        .confirm(reservation, packet.out.payload.len());
                    self.d.count_routed_packet();
                }
                // The acks go out together (each one a publish, none awaited on the server).
                for (packet, _) in &packets {
                    ack(&packet.message, AckKind::Ack).await;
                }
                return;
            }
            Err(e) => e,
        };
        for (_, reservation) in &packets {
            self.d.router_mut().cancel(reservation);
        }
        if let Some(at) = self.events.last_reconnect() {
            self.mode.judge.reconnected(at);
        }
        // One failure of one request: one verdict (the same for each of its packets).
        let first = &packets[0].0;
        let verdict = self.mode.judge.judge(&Failure {
            analyzer: &analyzer,
            kind: match error.kind() {
                RequestErrorKind::NoResponders => FailureKind::NoResponders,
                RequestErrorKind::TimedOut => FailureKind::TimedOut,
                _ => FailureKind::NotSent,
            },
            sent: first.sent,
            sent_connected: first.sent_connected,
            connected: self.d.client().connection_state() == State::Connected,
            now: Instant::now(),
        });
        for (packet, reservation) in packets {
            self.on_failed(packet, &reservation, verdict, &error).await;
        }
    }

    /// One packet of a failed request, by the request's verdict.
    async fn on_failed(
        &mut self,
        mut packet: Packet,
        reservation: &Reservation,
        verdict: Verdict,
        error: &RequestError,
    ) {
        if !packet.failed.contains(&reservation.id) {
            packet.failed.push(reservation.id.clone());
        }
        match verdict {
            Verdict::Infrastructure(cause) => {
                if !self.outage_logged {
                    tracing::warn!(analyzer_id = %reservation.id, error = %error, cause = cause.as_str(), "delivery failed for a reason outside the analyzer; packets go back to the stream (no attempt counted)");
                    self.outage_logged = true;
                }
                self.d.count_redelivered();
                let delivered = packet.message.info().map_or(1, |i| i.delivered);
                ack(&packet.message, AckKind::Nak(Some(nak_delay(delivered)))).await;
            }
            Verdict::Withdrawn => {
                self.d.count_redelivered();
                tracing::debug!(analyzer_id = %reservation.id, error = %error, "delivery failed after the analyzer withdrew; sending the packet elsewhere (no attempt counted)");
                self.ready.push_front(packet);
            }
            Verdict::Analyzer => {
                packet.attempts += 1;
                tracing::debug!(analyzer_id = %reservation.id, attempts = packet.attempts, error = %error, "delivery failed");
                if self.policy.exhausted(packet.attempts) {
                    let text = format!(
                        "no analyzer acknowledged the packet in {} attempts (last: analyzer {}: {error})",
                        packet.attempts, reservation.id
                    );
                    tracing::warn!(reason = %text, "dead-lettering an undeliverable packet");
                    let Packet {
                        message,
                        mut out,
                        id,
                        ..
                    } = packet;
                    out.headers.insert(PACKET_ID, id);
                    self.d
                        .deadletter_outgoing(
                            out,
                            Reason {
                                code: UNDELIVERABLE,
                                text: &text,
                            },
                        )
                        .await;
                    ack(&message, AckKind::Ack).await;
                    return;
                }
                self.d.count_redelivered();
                // Restart JetStream's ack-wait clock: this replica is still working on the
                // packet, and keeps it until its retry is due.
                ack(&packet.message, AckKind::Progress).await;
                let due = tokio::time::Instant::now() + self.policy.retry_delay(packet.attempts);
                self.waiting_bytes += packet.out.payload.len();
                self.waiting_order += 1;
                self.waiting.push(Reverse(Waiting {
                    due,
                    order: self.waiting_order,
                    packet,
                }));
            }
        }
    }

    /// Retries whose delay is over go back to the front of the queue (oldest first), JetStream's
    /// ack-wait clock restarted once more.
    async fn retry_due(&mut self) {
        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        while self.waiting.peek().is_some_and(|w| w.0.due <= now) {
            let Reverse(w) = self.waiting.pop().expect("peeked");
            self.waiting_bytes -= w.packet.out.payload.len();
            due.push(w.packet);
        }
        for packet in due.into_iter().rev() {
            ack(&packet.message, AckKind::Progress).await;
            self.ready.push_front(packet);
        }
    }

    /// No analyzer online: the packet goes back to the stream, to be redelivered later.
    async fn nak_no_analyzer(&mut self, packet: Packet) {
        if !self.idle_logged {
            tracing::warn!("no analyzer online: packets stay in the stream until one is");
            self.idle_logged = true;
        }
        let delivered = packet.message.info().map_or(1, |i| i.delivered);
        ack(&packet.message, AckKind::Nak(Some(nak_delay(delivered)))).await;
    }

    /// Shutdown: nak what was not sent, then wait (bounded) for the requests in flight.
    async fn finish(&mut self, timeout: Duration) {
        while let Some(packet) = self.ready.pop_front() {
            ack(&packet.message, AckKind::Nak(None)).await;
        }
        while let Some(Reverse(w)) = self.waiting.pop() {
            ack(&w.packet.message, AckKind::Nak(None)).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some((packets, Ok(_)))) => {
                    for (packet, reservation) in &packets {
                        self.d
                            .router_mut()
                            .confirm(reservation, packet.out.payload.len());
                        self.d.count_routed_packet();
                        ack(&packet.message, AckKind::Ack).await;
                    }
                }
                // Another replica (or this one, restarted) will deliver them.
                Ok(Some((packets, Err(_)))) => {
                    for (packet, reservation) in &packets {
                        self.d.router_mut().cancel(reservation);
                        ack(&packet.message, AckKind::Nak(None)).await;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = self.in_flight.len(),
                        ?timeout,
                        "requests still in flight at the shutdown timeout; JetStream will redeliver them"
                    );
                    break;
                }
            }
        }
    }
}

/// The stream sequence in a consumer delivery's reply subject, `$JS.ACK.<stream>.<consumer>.
/// <delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>`, or with
/// `<domain>.<account hash>.` before the stream and possibly more tokens after (ADR-15). Read
/// here for every packet instead of `Message::info`, which parses every token. Returned as the
/// digits in the subject (checked to be a `u64`), which is how the packet id spells it.
fn stream_sequence(reply: &str) -> Option<&str> {
    let tokens = reply.strip_prefix("$JS.ACK.")?.as_bytes();
    // One pass: where the first tokens start, and how many tokens there are.
    let mut starts = [0usize; 8];
    let mut count = 1;
    for (i, &byte) in tokens.iter().enumerate() {
        if byte == b'.' {
            if let Some(start) = starts.get_mut(count) {
                *start = i + 1;
            }
            count += 1;
        }
    }
    let index = match count {
        7 => 3,
        n if n >= 9 => 5,
        _ => return None,
    };
    let (start, end) = (starts[index], starts[index + 1] - 1);
    let digits = &tokens[start..end];
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let digit = d.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })?;
    // ASCII digits only: a char boundary on both sides.
    Some(&reply["$JS.ACK.".len() + start.."$JS.ACK.".len() + end])
}

/// Acks (or naks, …) a stream message; a failure only delays it (JetStream redelivers).
async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, ?kind, "cannot acknowledge to JetStream");
    }
}

#[cfg(test)]
mod tests {
    use super::stream_sequence;

    #[test]
    fn the_stream_sequence_is_read_from_both_forms_of_the_ack_subject() {
        // The 9-token form a nats-server without a domain sends.
        assert_eq!(
            stream_sequence("$JS.ACK.LOGS.distributors.1.4711.12.1764064800000000000.0"),
            Some("4711")
        );
        // The ADR-15 form: domain ("_" for none) and account hash first, maybe more tokens.
        assert_eq!(
            stream_sequence("$JS.ACK._.ACCHASH.LOGS.distributors.3.99.7.1764064800000000000.5"),
            Some("99")
        );
        assert_eq!(
            stream_sequence("$JS.ACK.hub.H.LOGS.d.1.42.1.1764064800000000000.0.rand"),
            Some("42")
        );
        for bad in [
            "",
            "_INBOX.abc",
            "$JS.ACK.LOGS.distributors.1",
            "$JS.ACK.LOGS.distributors.1.x.1.1.0",
            "$JS.ACK.LOGS.distributors.1.2.3.4.5.6",
            "$JS.ACK.LOGS.distributors.1..1.1.0",
            "$JS.ACK.LOGS.distributors.1.99999999999999999999.1.1.0",
        ] {
            assert_eq!(stream_sequence(bad), None, "{bad:?}");
        }
    }
}
