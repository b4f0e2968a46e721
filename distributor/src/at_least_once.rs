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
//!    reservation back and tell the two kinds apart ([`Pipeline::infrastructure_failure`]):
//!    - the *infrastructure* failed (not connected to NATS, the consumer unavailable while the
//!      request was out, or no analyzer answered anything since it was sent, e.g. while a
//!      JetStream leader election holds every analyzer's checkpoint): nak the packet with a
//!      growing delay, so it stays in the stream; it costs no attempt and is never dead-lettered
//!      for that;
//!    - *this analyzer* failed (no responders, a time-out while others answer, or a time-out
//!      of an analyzer that never answered anything): send it to
//!      another analyzer (excluding those that failed it) after telling JetStream the packet is
//!      still being worked on; after `--max-attempts` such failures dead-letter it
//!      (`undeliverable`) and ack it.
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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::header::HeaderValue;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream, AckKind};
use async_nats::{Message, Request, RequestError, RequestErrorKind, Subscriber};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use logdist::protocol::deadletter::{Reason, UNDELIVERABLE};
use logdist::protocol::headers::name::PACKET_ID;
use logdist::Names;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AtLeastOnceArgs, RunArgs};
use crate::core::{CoreSources, DeliveryMode, Distributor, ModeStats};
use crate::outgoing::Outgoing;
use crate::router::Reservation;
use crate::stats_publisher::StatsPublisher;

/// Idle heartbeat asked of the server on pull requests: a consumer that stops answering (server
/// restart, leader lost) shows as an error within about two of these.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Expiry of one pull request; the client renews them.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// Back-off between attempts to get the consumer again after an error: short, because a cluster
/// elects a new leader within seconds and the pipeline is stalled until the consumer is back.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for getting the consumer and opening its message stream; a JetStream API call
/// to a cluster without a leader would otherwise wait for the client's full request time-out.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long JetStream should wait before redelivering a packet nak'ed because no analyzer is
/// online, by how often it was delivered already: 250 ms, doubling, at most 5 s.
pub fn nak_delay(delivered: i64) -> Duration {
    let doublings = delivered.clamp(1, 6) - 1;
    (Duration::from_millis(250) * (1u32 << doublings)).min(Duration::from_secs(5))
}

/// A packet taken from the stream and not yet acked there.
struct Packet {
    message: jetstream::Message,
    out: Outgoing,
    /// Failed deliveries so far.
    attempts: u32,
    /// Analyzers that failed it (skipped while others are online).
    failed: Vec<Arc<str>>,
    /// When the current request was sent.
    sent: Instant,
}

type Delivery = Pin<
    Box<dyn Future<Output = (Packet, Reservation, Result<Message, RequestError>)> + Send + 'static>,
>;

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

/// Gets the consumer and opens its message stream, in a task of its own so the event loop keeps
/// serving acknowledgements and heartbeats meanwhile.
fn open(
    js: jetstream::Context,
    names: Names,
    args: AtLeastOnceArgs,
    extra_subjects: Vec<String>,
) -> JoinHandle<Result<pull::Stream, ConsumerError>> {
    tokio::spawn(async move {
        let opening = async {
            let consumer = open_consumer(&js, &names, &args, &extra_subjects).await?;
            consumer
                .stream()
                .max_messages_per_batch(args.fetch_batch)
                .heartbeat(PULL_HEARTBEAT)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|source| ConsumerError::Pull {
                    consumer: args.consumer.clone(),
                    source,
                })
        };
        tokio::time::timeout(OPEN_TIMEOUT, opening)
            .await
            .unwrap_or(Err(ConsumerError::TimedOut(OPEN_TIMEOUT)))
    })
}

async fn join(
    opening: &mut Option<JoinHandle<Result<pull::Stream, ConsumerError>>>,
) -> Result<pull::Stream, ConsumerError> {
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
    max_attempts: u32,
    window: usize,
    max_in_flight: usize,
    max_in_flight_bytes: usize,
    in_flight: FuturesUnordered<Delivery>,
    /// Payload bytes of the requests in flight.
    in_flight_bytes: usize,
    /// Requests in flight per analyzer id.
    per_analyzer: HashMap<Arc<str>, usize>,
    /// Packets to send (new, or to retry), oldest first.
    ready: VecDeque<Packet>,
    /// Whether "no analyzer online" was logged since the last packet went out.
    idle_logged: bool,
    /// When an analyzer last acknowledged a packet.
    last_reply: Instant,
    /// Analyzers that acknowledged at least one packet: one that never did is broken, not
    /// stalled by an outage.
    answered: std::collections::HashSet<Arc<str>>,
    /// Since when the consumer is unavailable (`None` while its message stream is open).
    consumer_down_since: Option<Instant>,
    /// When the consumer last became available again.
    consumer_up_at: Instant,
    /// Whether an infrastructure failure was logged since the last acknowledgement.
    outage_logged: bool,
}

/// Runs the at-least-once pipeline until `shutdown`, then finishes what is in flight.
pub(crate) async fn run(
    args: &RunArgs,
    js: &jetstream::Context,
    distributor: &mut Distributor,
    control: &mut Subscriber,
    publisher: &StatsPublisher,
    shutdown: &CancellationToken,
) {
    let alo = &args.at_least_once;
    let mut p = Pipeline {
        d: distributor,
        stream: alo.stream.clone(),
        request_timeout: alo.request_timeout,
        max_attempts: alo.max_attempts,
        window: alo.analyzer_window,
        max_in_flight: alo.max_in_flight,
        max_in_flight_bytes: alo.max_in_flight_bytes,
        in_flight: FuturesUnordered::new(),
        in_flight_bytes: 0,
        per_analyzer: HashMap::new(),
        ready: VecDeque::new(),
        idle_logged: false,
        last_reply: Instant::now(),
        answered: Default::default(),
        consumer_down_since: Some(Instant::now()),
        consumer_up_at: Instant::now(),
        outage_logged: false,
    };
    let extra_subjects = args
        .formats
        .mapping_and_subjects(&args.names)
        .map(|(_, extra)| extra)
        .unwrap_or_default();
    let reopen = || {
        open(
            js.clone(),
            args.names.clone(),
            alo.clone(),
            extra_subjects.clone(),
        )
    };
    let mut opening = Some(reopen());
    let mut messages: Option<pull::Stream> = None;
    let mut backoff = MIN_BACKOFF;
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_armed = false;
    let mut sources = CoreSources::new(p.d, control, publisher, args.stats_interval, shutdown);

    loop {
        p.dispatch_ready().await;
        let room = p.ready.is_empty()
            && p.in_flight.len() < p.max_in_flight
            && p.in_flight_bytes < p.max_in_flight_bytes
            && !p.d.router().is_empty()
            && messages.is_some();
        tokio::select! {
            biased;
            event = sources.next() => {
                if p.d.on_event(event, &mut sources, &mut InStream).await.is_break() {
                    break;
                }
            }
            Some(done) = p.in_flight.next() => p.on_done(done).await,
            result = join(&mut opening) => {
                opening = None;
                match result {
                    Ok(stream) => {
                        tracing::info!(stream = %alo.stream, consumer = %alo.consumer, "consuming from JetStream");
                        messages = Some(stream);
                        backoff = MIN_BACKOFF;
                        p.consumer_down_since = None;
                        p.consumer_up_at = Instant::now();
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
                opening = Some(reopen());
            }
            item = next_message(&mut messages), if room => match item {
                Some(Ok(message)) => p.on_message(message).await,
                other => {
                    match other {
                        Some(Err(e)) => tracing::warn!(error = %e, kind = ?e.kind(), retry_in = ?backoff, "JetStream consumer error; getting the consumer again"),
                        _ => tracing::warn!(retry_in = ?backoff, "JetStream message stream ended; getting the consumer again"),
                    }
                    messages = None;
                    p.consumer_down_since.get_or_insert_with(Instant::now);
                    retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                    retry_armed = true;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
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
/// thing every turn), and no hold queue or connection of its own to report.
struct InStream;

impl DeliveryMode for InStream {
    async fn routing_changed(&mut self, _core: &mut Distributor) {}

    fn stats(&mut self) -> ModeStats {
        ModeStats::default()
    }
}

impl Pipeline<'_> {
    /// One message from the stream: validate, dead-letter what is invalid, queue the rest.
    async fn on_message(&mut self, message: jetstream::Message) {
        let sequence = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                // Not a consumer delivery (no ack subject): nothing to ack either.
                tracing::warn!(error = %e, subject = %message.subject, "message without JetStream metadata; skipped");
                return;
            }
        };
        let subject = message.subject.clone();
        let headers = message.headers.clone();
        let payload = message.payload.clone();
        match self.d.validate(subject, headers, payload).await {
            Some(mut out) => {
                let id = format!("{}:{sequence}", self.stream);
                out.headers
                    .insert(PACKET_ID, HeaderValue::from(id.as_str()));
                self.ready.push_back(Packet {
                    message,
                    out,
                    attempts: 0,
                    failed: Vec::new(),
                    sent: Instant::now(),
                });
            }
            // Everything was dead-lettered (published before this ack, on the same connection).
            None => ack(&message, AckKind::Ack).await,
        }
    }

    /// Sends ready packets while analyzers have room in their windows.
    async fn dispatch_ready(&mut self) {
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
                return;
            }
            self.idle_logged = false;
            let reservation = self.d.router_mut().reserve(pick, key, messages);
            *self.per_analyzer.entry(reservation.id.clone()).or_insert(0) += 1;
            self.send(packet, reservation);
        }
    }

    fn send(&mut self, mut packet: Packet, reservation: Reservation) {
        packet.sent = Instant::now();
        self.in_flight_bytes += packet.out.payload.len();
        let request = Request::new()
            .headers(packet.out.headers.clone())
            .payload(packet.out.payload.clone())
            .timeout(Some(self.request_timeout));
        let client = self.d.client().clone();
        self.in_flight.push(Box::pin(async move {
            let result = client
                .send_request(reservation.subject.clone(), request)
                .await;
            (packet, reservation, result)
        }));
    }

    /// A request finished: ack on a reply, otherwise retry elsewhere or dead-letter.
    async fn on_done(&mut self, done: (Packet, Reservation, Result<Message, RequestError>)) {
        let (mut packet, reservation, result) = done;
        self.in_flight_bytes -= packet.out.payload.len();
        if let Some(n) = self.per_analyzer.get_mut(&reservation.id) {
            *n -= 1;
            if *n == 0 {
                self.per_analyzer.remove(&reservation.id);
            }
        }
        let error = match result {
            Ok(_) => {
                self.last_reply = Instant::now();
                self.outage_logged = false;
                if !self.answered.contains(&reservation.id) {
                    self.answered.insert(reservation.id.clone());
                }
                self.d
                    .router_mut()
                    .confirm(&reservation, packet.out.payload.len());
                self.d.count_routed_packet();
                ack(&packet.message, AckKind::Ack).await;
                return;
            }
            Err(e) => e,
        };
        self.d.router_mut().cancel(&reservation);
        if let Some(cause) = self.infrastructure_failure(&error, &reservation.id, packet.sent) {
            if !self.outage_logged {
                tracing::warn!(analyzer_id = %reservation.id, error = %error, cause, "delivery failed for a reason outside the analyzer; packets go back to the stream (no attempt counted)");
                self.outage_logged = true;
            }
            self.d.count_redelivered();
            let delivered = packet.message.info().map_or(1, |i| i.delivered);
            ack(&packet.message, AckKind::Nak(Some(nak_delay(delivered)))).await;
            return;
        }
        packet.attempts += 1;
        if !packet.failed.contains(&reservation.id) {
            packet.failed.push(reservation.id.clone());
        }
        tracing::debug!(analyzer_id = %reservation.id, attempts = packet.attempts, error = %error, "delivery failed");
        if packet.attempts >= self.max_attempts {
            let text = format!(
                "no analyzer acknowledged the packet in {} attempts (last: analyzer {}: {error})",
                packet.attempts, reservation.id
            );
            tracing::warn!(reason = %text, "dead-lettering an undeliverable packet");
            let Packet { message, out, .. } = packet;
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
        // Restart JetStream's ack-wait clock: this replica is still working on the packet.
        ack(&packet.message, AckKind::Progress).await;
        self.ready.push_front(packet);
    }

    /// Why a failed request is not the analyzer's fault, if it is not (see [`outage_cause`]).
    fn infrastructure_failure(
        &self,
        error: &RequestError,
        analyzer: &Arc<str>,
        sent: Instant,
    ) -> Option<&'static str> {
        outage_cause(&RequestHealth {
            connected: self.d.client().connection_state() == State::Connected,
            kind: error.kind(),
            consumer_unavailable: self.consumer_down_since.is_some() || self.consumer_up_at > sent,
            replies_since_sent: self.last_reply >= sent,
            answered_before: self.answered.contains(analyzer),
        })
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
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some((packet, reservation, Ok(_)))) => {
                    self.d
                        .router_mut()
                        .confirm(&reservation, packet.out.payload.len());
                    self.d.count_routed_packet();
                    ack(&packet.message, AckKind::Ack).await;
                }
                // Another replica (or this one, restarted) will deliver it.
                Ok(Some((packet, reservation, Err(_)))) => {
                    self.d.router_mut().cancel(&reservation);
                    ack(&packet.message, AckKind::Nak(None)).await;
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

/// What is known about the pipeline when a request failed.
struct RequestHealth {
    /// The client is connected to NATS now.
    connected: bool,
    kind: RequestErrorKind,
    /// The consumer was unavailable at some time while the request was out.
    consumer_unavailable: bool,
    /// Some analyzer acknowledged a packet after this request was sent.
    replies_since_sent: bool,
    /// This analyzer acknowledged packets before (it worked, so a general stall is not its
    /// fault; one that never answered is broken).
    answered_before: bool,
}

/// Why a failed request is not the analyzer's fault, if it is not: then it must not count as an
/// attempt nor lead to a dead letter (a cluster fail-over would otherwise dead-letter healthy
/// packets); the packet goes back to the stream instead.
fn outage_cause(h: &RequestHealth) -> Option<&'static str> {
    if !h.connected {
        return Some("not connected to NATS");
    }
    match h.kind {
        // The server says nobody listens on the analyzer's subject: that analyzer is gone.
        RequestErrorKind::NoResponders => None,
        RequestErrorKind::TimedOut if h.consumer_unavailable => {
            Some("the JetStream consumer was unavailable meanwhile")
        }
        // Every analyzer is stuck at once, this one included although it worked before: their
        // checkpoints (KV writes) cannot complete, e.g. during a JetStream leader election.
        RequestErrorKind::TimedOut if !h.replies_since_sent && h.answered_before => {
            Some("no analyzer acknowledged anything since the request was sent")
        }
        RequestErrorKind::TimedOut => None,
        // The request could not be sent (e.g. the connection dropped meanwhile).
        _ => Some("the request could not be sent"),
    }
}

/// Acks (or naks, …) a stream message; a failure only delays it (JetStream redelivers).
async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, ?kind, "cannot acknowledge to JetStream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(kind: RequestErrorKind) -> RequestHealth {
        RequestHealth {
            connected: true,
            kind,
            consumer_unavailable: false,
            replies_since_sent: true,
            answered_before: true,
        }
    }

    #[test]
    fn only_analyzer_specific_failures_count_as_attempts() {
        // Others answer while this analyzer times out, or nobody listens on its subject.
        assert_eq!(outage_cause(&health(RequestErrorKind::TimedOut)), None);
        assert_eq!(outage_cause(&health(RequestErrorKind::NoResponders)), None);
        // Every analyzer silent since the request went out.
        let all_silent = RequestHealth {
            replies_since_sent: false,
            ..health(RequestErrorKind::TimedOut)
        };
        assert!(outage_cause(&all_silent).is_some());
        // ... unless this analyzer never answered at all: it is broken, not stalled.
        let never_answered = RequestHealth {
            answered_before: false,
            ..all_silent
        };
        assert_eq!(outage_cause(&never_answered), None);
        // The consumer was lost meanwhile.
        let consumer_lost = RequestHealth {
            consumer_unavailable: true,
            ..health(RequestErrorKind::TimedOut)
        };
        assert!(outage_cause(&consumer_lost).is_some());
        // Disconnected: whatever the error.
        for kind in [
            RequestErrorKind::TimedOut,
            RequestErrorKind::NoResponders,
            RequestErrorKind::Other,
        ] {
            let h = RequestHealth {
                connected: false,
                ..health(kind)
            };
            assert_eq!(outage_cause(&h), Some("not connected to NATS"));
        }
        assert!(outage_cause(&health(RequestErrorKind::Other)).is_some());
    }

    #[test]
    fn nak_delay_grows_and_is_capped() {
        assert_eq!(nak_delay(0), Duration::from_millis(250));
        assert_eq!(nak_delay(1), Duration::from_millis(250));
        assert_eq!(nak_delay(2), Duration::from_millis(500));
        assert_eq!(nak_delay(5), Duration::from_secs(4));
        assert_eq!(nak_delay(6), Duration::from_secs(5));
        assert_eq!(nak_delay(1000), Duration::from_secs(5));
    }
}
