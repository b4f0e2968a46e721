//! The running distributor (`distributor run`): connects, opens the buckets, subscribes, and runs
//! the one event loop that owns every piece of routing state.
//!
//! One task, no locks: a `tokio::select!` over the control subscription, the membership expiry
//! timer, the stats ticker and the two ingest subscriptions (`<ingest>` and `<ingest>.>`, queue
//! group `distributors`). It is `biased` so a control message is always handled before ingest
//! messages that arrived after it: a withdrawal stops traffic to that analyzer at once. KV writes
//! (stats, membership mirror) go to tasks of their own so a KV round trip never stalls routing.
//! Publishing is buffered by the client; the loop never flushes per packet.
//!
//! With `--delivery at-most-once` (the default) a packet is published once to one analyzer and
//! forgotten. With `--delivery at-least-once` the ingest subscriptions are replaced by a JetStream
//! consumer and the loop of [`crate::at_least_once`], which shares this module's validation,
//! membership and stats. See `docs/delivery.md` for what each mode can lose or duplicate.
//!
//! At-most-once shutdown (SIGINT/SIGTERM): the ingest subscriptions are drained (unsubscribed, then what the
//! client already buffered is still routed), packets still held are dead-lettered
//! (`no_analyzer_online`), the client is flushed, the final stats are written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::HeaderValue;
use async_nats::jetstream;
use async_nats::{Client, Message, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use logdist::buckets::{self, BucketError};
use logdist::connect::{ConnectError, ConnectionEvents};
use logdist::control::{ControlMessage, Withdraw, WithdrawalConfirmed};
use logdist::names::DISTRIBUTOR_QUEUE_GROUP;
use logdist::stats::{distributor_key, unix_millis_now, DistributorStats};
use logdist::PacketValidator;
use tokio_util::sync::CancellationToken;

use crate::at_least_once;
use crate::config::{Delivery, RunArgs};
use crate::hold_queue::HoldQueue;
use crate::membership::{Membership, MembershipEvent};
use crate::membership_mirror::{read_members, MembershipMirror};
use crate::outgoing::{self, Outgoing, Reason, NO_ANALYZER_ONLINE};
use crate::router::Router;
use crate::stats_publisher::StatsPublisher;

/// How long shutdown waits for the drained subscriptions to hand over their last messages.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the flush and the final KV writes.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the distributor could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("cannot subscribe to {subject}: {detail}")]
    Subscribe { subject: String, detail: String },
    #[error(transparent)]
    Http(#[from] logdist_http::StartError),
}

/// Runs the distributor until `shutdown` is cancelled, then shuts down cleanly.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let replica = args.replica_id();
    let names = &args.names;
    let connection =
        match logdist::connect(&args.nats, &format!("distributor {replica}"), &shutdown).await {
            Ok(c) => c,
            Err(ConnectError::Cancelled { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    let client = connection.client.clone();
    let js = jetstream::new(client.clone());
    let members_kv = buckets::open_or_create(
        &js,
        &names.membership_bucket,
        "logdist: analyzers online now (one key per analyzer id)",
    )
    .await?;
    let stats_kv = buckets::open_or_create(
        &js,
        &names.stats_bucket,
        "logdist: live counters of distributors and analyzers",
    )
    .await?;

    // Control first, so no heartbeat falls between reading the bucket and listening.
    let subscribe_err = |subject: &str, e: async_nats::SubscribeError| RunError::Subscribe {
        subject: subject.to_string(),
        detail: e.to_string(),
    };
    let mut control = client
        .subscribe(names.control_subject.clone())
        .await
        .map_err(|e| subscribe_err(&names.control_subject, e))?;

    let mut distributor = Distributor::new(&args, &replica, client.clone(), connection.events);
    match read_members(&members_kv).await {
        Ok(records) => {
            let events = distributor.membership.seed(&records, Instant::now());
            for event in &events {
                if let MembershipEvent::Joined { id, weight } = event {
                    tracing::info!(analyzer_id = %id, weight, "analyzer from the membership bucket (provisional until it heartbeats)");
                }
            }
            distributor.sync_routes();
        }
        Err(e) => tracing::warn!(bucket = %names.membership_bucket, error = %e,
            "cannot read the membership bucket; waiting for heartbeats"),
    }

    // The HTTP gateway publishes to the ingest subject like any agent, so its packets take the
    // same path; it stops taking requests at shutdown, before the ingest side drains.
    let http = match args.http {
        Some(listen) => Some(
            logdist_http::start(
                logdist_http::GatewayConfig {
                    listen,
                    names: names.clone(),
                    max_body_bytes: args.http_max_body_bytes,
                    acknowledged: args.delivery == Delivery::AtLeastOnce,
                },
                client.clone(),
                shutdown.child_token(),
            )
            .await?,
        ),
        None => None,
    };

    let publisher = StatsPublisher::spawn(stats_kv, distributor_key(&replica));
    // Seeded analyzers are already in the bucket: mirror only what changes from now on.
    distributor.mirror = Some(MembershipMirror::spawn(members_kv));
    match args.delivery {
        Delivery::AtMostOnce => {
            run_at_most_once(&args, &mut distributor, &mut control, &publisher, &shutdown).await?
        }
        Delivery::AtLeastOnce => {
            tracing::info!(
                replica = %replica,
                stream = %args.at_least_once.stream,
                consumer = %args.at_least_once.consumer,
                delivery = args.delivery.as_str(),
                analyzers_online = distributor.membership.len(),
                "distributor running"
            );
            at_least_once::run(
                &args,
                &js,
                &mut distributor,
                &mut control,
                &publisher,
                &shutdown,
            )
            .await;
        }
    }
    if let Some(http) = http {
        // Requests in progress finish (graceful shutdown) before the final flush.
        if tokio::time::timeout(FINAL_WRITE_TIMEOUT, http.task)
            .await
            .is_err()
        {
            tracing::warn!("HTTP gateway did not finish its requests in time");
        }
    }
    if tokio::time::timeout(FINAL_WRITE_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("flush to NATS did not finish in time");
    }
    if let Some(mirror) = distributor.mirror.take() {
        mirror.finish(FINAL_WRITE_TIMEOUT).await;
    }
    let last = distributor.snapshot();
    tracing::info!(
        received_packets = last.received_packets,
        routed_messages = last.routed_messages,
        deadletter_packets = last.deadletter_packets,
        redelivered = last.redelivered,
        "writing final stats"
    );
    publisher.finish(last, FINAL_WRITE_TIMEOUT).await;
    tracing::info!("distributor stopped");
    Ok(())
}

/// At-most-once: the core-NATS queue subscriptions on the ingest subjects, until shutdown, then
/// their drain.
async fn run_at_most_once(
    args: &RunArgs,
    distributor: &mut Distributor,
    control: &mut Subscriber,
    publisher: &StatsPublisher,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let names = &args.names;
    // The ingest subscriptions get a connection of their own, with a bounded buffer: under a
    // flood its client task reads and drops what the router cannot take, while the main
    // connection's task keeps sending the routed packets (on one connection the incoming flood
    // starves the outgoing publishes), and the two connections' work runs on two threads.
    let name = format!("distributor {} ingest", distributor.replica);
    let connection = match logdist::connect::connect_with_capacity(
        &args.nats,
        &name,
        args.ingest_buffer,
        shutdown,
    )
    .await
    {
        Ok(c) => c,
        Err(ConnectError::Cancelled { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let client = connection.client.clone();
    distributor.ingest = Some(IngestConnection::new(connection, args.ingest_buffer));
    let subscribe_err = |subject: &str, e: async_nats::SubscribeError| RunError::Subscribe {
        subject: subject.to_string(),
        detail: e.to_string(),
    };
    let wildcard = names.ingest_wildcard();
    let mut ingest = client
        .queue_subscribe(names.ingest_subject.clone(), DISTRIBUTOR_QUEUE_GROUP.into())
        .await
        .map_err(|e| subscribe_err(&names.ingest_subject, e))?;
    let mut ingest_agents = client
        .queue_subscribe(wildcard.clone(), DISTRIBUTOR_QUEUE_GROUP.into())
        .await
        .map_err(|e| subscribe_err(&wildcard, e))?;
    tracing::info!(
        replica = %distributor.replica,
        ingest = %names.ingest_subject,
        delivery = args.delivery.as_str(),
        analyzers_online = distributor.membership.len(),
        "distributor running"
    );
    distributor
        .event_loop(
            control,
            &mut ingest,
            &mut ingest_agents,
            publisher,
            args.stats_interval,
            shutdown,
        )
        .await;

    // Shutdown: take no new packets, route what is in hand. Every step is bounded: with the
    // server gone (a node going down with us) an unsubscribe or a publish can wait forever for
    // room in the client's command queue.
    tracing::info!("draining the ingest subscriptions");
    let drained = tokio::time::timeout(
        DRAIN_TIMEOUT,
        distributor.drain(control, &mut ingest, &mut ingest_agents),
    )
    .await;
    let ingest = distributor.ingest.as_mut().expect("set above");
    match drained {
        Ok(()) => ingest.drained = true,
        Err(_) => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "ingest subscriptions did not drain in time")
        }
    }
    let dropped = ingest.dropped();
    if dropped > 0 {
        tracing::warn!(
            packets = dropped,
            ingest_buffer = args.ingest_buffer,
            "the ingest connection dropped packets while the router was behind (add replicas or raise --ingest-buffer for bursts)"
        );
    }
    if tokio::time::timeout(FINAL_WRITE_TIMEOUT, distributor.deadletter_held())
        .await
        .is_err()
    {
        tracing::warn!(
            packets = distributor.hold.len(),
            "could not dead-letter the held packets in time (is NATS reachable?)"
        );
    }
    Ok(())
}

/// Counters owned by the event loop (plain integers: one task owns them).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    received_packets: u64,
    received_messages: u64,
    received_bytes: u64,
    pub(crate) routed_packets: u64,
    deadletter_packets: u64,
    deadletter_messages: u64,
    deadletter_reasons: BTreeMap<&'static str, u64>,
    held_total: u64,
    held_overflow: u64,
    pub(crate) redelivered: u64,
}

/// The at-most-once ingest connection (see `run_at_most_once`), and what it takes to count the
/// packets it dropped: its client counts every message it reads, the router counts what it
/// takes, and the difference was dropped or still waits in one of the two subscription buffers.
struct IngestConnection {
    client: Client,
    events: Arc<ConnectionEvents>,
    /// `--ingest-buffer`: the most packets each of the two subscriptions can hold.
    buffer: usize,
    /// Packets the router took from the ingest subscriptions.
    taken: u64,
    /// Both subscriptions ended: nothing waits in their buffers any more.
    drained: bool,
    /// Dropped packets as last reported (never decreases).
    dropped: u64,
}

impl IngestConnection {
    fn new(connection: logdist::Connection, buffer: usize) -> Self {
        IngestConnection {
            client: connection.client,
            events: connection.events,
            buffer,
            taken: 0,
            drained: false,
            dropped: 0,
        }
    }

    /// Packets dropped so far: a lower bound until the subscriptions are drained (up to
    /// 2 × `buffer` may still be waiting), then exact; never decreases.
    fn dropped(&mut self) -> u64 {
        let read = self
            .client
            .statistics()
            .in_messages
            .load(std::sync::atomic::Ordering::Relaxed);
        let waiting = if self.drained {
            0
        } else {
            2 * self.buffer as u64
        };
        let dropped = read.saturating_sub(self.taken).saturating_sub(waiting);
        self.dropped = self.dropped.max(dropped);
        self.dropped
    }
}

/// All routing state of one replica, owned by the event loop.
pub(crate) struct Distributor {
    pub(crate) client: Client,
    delivery: Delivery,
    validator: PacketValidator,
    deadletter_subject: Subject,
    names: logdist::Names,
    replica: String,
    replica_header: HeaderValue,
    pub(crate) membership: Membership,
    pub(crate) router: Router,
    hold: HoldQueue<Outgoing>,
    pub(crate) counters: Counters,
    events: Arc<ConnectionEvents>,
    /// The at-most-once ingest connection (`None` in at-least-once mode).
    ingest: Option<IngestConnection>,
    mirror: Option<MembershipMirror>,
    started_at_ms: u64,
    rate_mark: (Instant, u64),
    messages_per_sec: f64,
}

impl Distributor {
    fn new(args: &RunArgs, replica: &str, client: Client, events: Arc<ConnectionEvents>) -> Self {
        Distributor {
            client,
            delivery: args.delivery,
            validator: PacketValidator::new(args.max_packet_bytes),
            deadletter_subject: Subject::from(args.names.deadletter_subject.clone()),
            names: args.names.clone(),
            replica: replica.to_string(),
            replica_header: HeaderValue::from(replica),
            membership: Membership::new(args.heartbeat_timeout_factor),
            router: Router::new(&args.names.analyzer_prefix),
            hold: HoldQueue::new(args.hold_max_packets, args.hold_max_bytes),
            counters: Counters::default(),
            events,
            ingest: None,
            mirror: None,
            started_at_ms: unix_millis_now(),
            rate_mark: (Instant::now(), 0),
            messages_per_sec: 0.0,
        }
    }

    async fn event_loop(
        &mut self,
        control: &mut Subscriber,
        ingest: &mut Subscriber,
        ingest_agents: &mut Subscriber,
        publisher: &StatsPublisher,
        stats_interval: Duration,
        shutdown: &CancellationToken,
    ) {
        let mut stats_tick = tokio::time::interval(stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = tokio::time::sleep_until(self.expiry_deadline());
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                Some(message) = control.next() => {
                    self.on_control(&message.payload).await;
                    expiry.as_mut().reset(self.expiry_deadline());
                }
                () = &mut expiry => {
                    let events = self.membership.expire(Instant::now());
                    self.apply_events(events).await;
                    expiry.as_mut().reset(self.expiry_deadline());
                }
                _ = stats_tick.tick() => publisher.offer(self.snapshot()),
                Some(message) = ingest.next() => self.on_ingest(message).await,
                Some(message) = ingest_agents.next() => self.on_ingest(message).await,
                else => {
                    tracing::error!("every subscription closed; stopping");
                    return;
                }
            }
        }
    }

    /// Unsubscribes the ingest subscriptions and routes what the client already received for
    /// them, until both streams end (the caller bounds it by [`DRAIN_TIMEOUT`]).
    async fn drain(
        &mut self,
        control: &mut Subscriber,
        ingest: &mut Subscriber,
        ingest_agents: &mut Subscriber,
    ) {
        for sub in [&mut *ingest, &mut *ingest_agents] {
            if let Err(e) = sub.drain().await {
                tracing::warn!(error = %e, "cannot drain an ingest subscription");
            }
        }
        let (mut open, mut agents_open) = (true, true);
        while open || agents_open {
            tokio::select! {
                biased;
                Some(message) = control.next() => self.on_control(&message.payload).await,
                message = ingest.next(), if open => match message {
                    Some(message) => self.on_ingest(message).await,
                    None => open = false,
                },
                message = ingest_agents.next(), if agents_open => match message {
                    Some(message) => self.on_ingest(message).await,
                    None => agents_open = false,
                },
            }
        }
    }

    pub(crate) fn expiry_deadline(&self) -> tokio::time::Instant {
        let next = self
            .membership
            .next_deadline()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::time::Instant::from_std(next)
    }

    /// One payload from an ingest subject: validate, then route, hold or dead-letter.
    async fn on_ingest(&mut self, message: Message) {
        let Message {
            subject,
            payload,
            headers,
            ..
        } = message;
        if let Some(ingest) = &mut self.ingest {
            ingest.taken += 1;
        }
        if let Some(out) = self.validate(subject, headers, payload).await {
            self.forward(out).await;
        }
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
        let validator = self.validator;
        // The common case in one pass that builds nothing; anything else takes the careful path,
        // which finds each invalid element and its reason.
        if let Some(messages) = validator.count_if_valid(&payload) {
            let messages = messages as u64;
            self.counters.received_messages += messages;
            let headers = outgoing::forward_headers(headers, messages, &self.replica_header);
            return Some(Outgoing {
                subject,
                headers,
                payload,
                messages,
            });
        }
        match validator.parse(&payload) {
            Ok(packet) if packet.is_fully_valid() => {
                let messages = packet.len() as u64;
                self.counters.received_messages += messages;
                drop(packet);
                let headers = outgoing::forward_headers(headers, messages, &self.replica_header);
                Some(Outgoing {
                    subject,
                    headers,
                    payload,
                    messages,
                })
            }
            Ok(packet) => {
                self.counters.received_messages += packet.len() as u64;
                for invalid in &packet.invalid {
                    let text = invalid.error.to_string();
                    let reason = Reason {
                        code: invalid.error.code(),
                        text: &text,
                    };
                    let element = payload.slice_ref(invalid.raw.as_bytes());
                    self.deadletter(
                        &subject,
                        headers.as_ref(),
                        element,
                        1,
                        reason,
                        Some(invalid.index),
                    )
                    .await;
                }
                if packet.records.is_empty() {
                    return None;
                }
                let messages = packet.records.len() as u64;
                let valid = Bytes::from(packet.valid_json_array());
                let headers = outgoing::forward_headers(headers, messages, &self.replica_header);
                Some(Outgoing {
                    subject,
                    headers,
                    payload: valid,
                    messages,
                })
            }
            Err(error) => {
                let text = error.to_string();
                let reason = Reason {
                    code: error.code(),
                    text: &text,
                };
                self.deadletter(&subject, headers.as_ref(), payload.clone(), 1, reason, None)
                    .await;
                None
            }
        }
    }

    /// Routes a valid packet, or holds it while no analyzer is online, or dead-letters it when
    /// the hold queue is full.
    async fn forward(&mut self, out: Outgoing) {
        if self.router.is_empty() {
            let (bytes, messages) = (out.payload.len(), out.messages);
            match self.hold.push(out, bytes, messages) {
                Ok(()) => self.counters.held_total += 1,
                Err(out) => {
                    self.counters.held_overflow += 1;
                    let reason = Reason {
                        code: NO_ANALYZER_ONLINE,
                        text: "no analyzer online and the hold queue is full",
                    };
                    self.deadletter_outgoing(out, reason).await;
                }
            }
            return;
        }
        self.publish(out).await;
    }

    /// Publishes to the analyzer the selector picks (the router is not empty).
    async fn publish(&mut self, out: Outgoing) {
        let Some(subject) = self.router.route(out.messages, out.payload.len()) else {
            unreachable!("publish is only called with an analyzer online");
        };
        let subject = subject.clone();
        self.counters.routed_packets += 1;
        if let Err(e) = self
            .client
            .publish_with_headers(subject, out.headers, out.payload)
            .await
        {
            tracing::error!(error = %e, "cannot publish a packet to an analyzer");
        }
    }

    pub(crate) async fn deadletter_outgoing(&mut self, out: Outgoing, reason: Reason<'_>) {
        let Outgoing {
            subject,
            headers,
            payload,
            messages,
        } = out;
        self.deadletter(&subject, Some(&headers), payload, messages, reason, None)
            .await;
    }

    /// Publishes rejected bytes to the dead-letter subject with the contract's headers.
    pub(crate) async fn deadletter(
        &mut self,
        subject: &Subject,
        original: Option<&async_nats::HeaderMap>,
        payload: Bytes,
        messages: u64,
        reason: Reason<'_>,
        index: Option<usize>,
    ) {
        self.counters.deadletter_packets += 1;
        self.counters.deadletter_messages += messages;
        *self
            .counters
            .deadletter_reasons
            .entry(reason.code)
            .or_insert(0) += 1;
        tracing::debug!(code = reason.code, reason = reason.text, subject = %subject, ?index, "dead letter");
        let headers =
            outgoing::deadletter_headers(original, reason, subject, index, &self.replica_header);
        if let Err(e) = self
            .client
            .publish_with_headers(self.deadletter_subject.clone(), headers, payload)
            .await
        {
            tracing::error!(error = %e, "cannot publish a dead letter");
        }
    }

    /// Packets still held when the distributor stops are dead-lettered, not dropped.
    async fn deadletter_held(&mut self) {
        if !self.hold.is_empty() {
            tracing::warn!(
                packets = self.hold.len(),
                "stopping with packets held and no analyzer online: dead-lettering them"
            );
        }
        while let Some(out) = self.hold.pop() {
            let reason = Reason {
                code: NO_ANALYZER_ONLINE,
                text: "no analyzer online when the distributor stopped",
            };
            self.deadletter_outgoing(out, reason).await;
        }
    }

    pub(crate) async fn on_control(&mut self, payload: &[u8]) {
        let message = match self.membership.parse_payload(payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(
                    code = e.code(),
                    error = %e,
                    payload = %String::from_utf8_lossy(&payload[..payload.len().min(200)]),
                    "rejected control message"
                );
                return;
            }
        };
        let withdrawn = match &message {
            ControlMessage::Down(withdraw) => Some(withdraw.clone()),
            ControlMessage::Up(_) => None,
        };
        let events = self.membership.apply(message, Instant::now());
        self.apply_events(events).await;
        if let Some(withdraw) = withdrawn {
            self.confirm_withdrawal(withdraw).await;
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
    /// and releases held packets.
    pub(crate) async fn apply_events(&mut self, events: Vec<MembershipEvent>) {
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
        if routing_changed {
            self.sync_routes();
            self.release_held().await;
        }
    }

    fn mirror_put(&self, id: &str) {
        if let (Some(mirror), Some(record)) = (&self.mirror, self.membership.record(id)) {
            mirror.put(record);
        }
    }

    /// Rebuilds the routing table from the membership (a new epoch).
    fn sync_routes(&mut self) {
        self.router.set_members(self.membership.online());
        tracing::debug!(
            epoch = self.router.epoch(),
            analyzers = self.membership.len(),
            "new routing epoch"
        );
    }

    /// Delivers held packets in arrival order once an analyzer is online.
    async fn release_held(&mut self) {
        if self.router.is_empty() || self.hold.is_empty() {
            return;
        }
        tracing::info!(
            packets = self.hold.len(),
            "analyzer online: delivering held packets"
        );
        while !self.router.is_empty() {
            let Some(out) = self.hold.pop() else { break };
            self.publish(out).await;
        }
    }

    /// The replica's stats now.
    pub(crate) fn snapshot(&mut self) -> DistributorStats {
        let now = Instant::now();
        let routed = self.router.routed_messages();
        let (mark, mark_routed) = self.rate_mark;
        let elapsed = now.duration_since(mark).as_secs_f64();
        if elapsed >= 0.05 {
            self.messages_per_sec = (routed - mark_routed) as f64 / elapsed;
            self.rate_mark = (now, routed);
        }
        let ingest_dropped = self.ingest.as_mut().map_or(0, IngestConnection::dropped);
        // Client events of both connections.
        let events = |count: fn(&ConnectionEvents) -> u64| {
            count(&self.events) + self.ingest.as_ref().map_or(0, |i| count(&i.events))
        };
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
            held_packets: self.hold.len() as u64,
            held_messages: self.hold.messages(),
            held_bytes: self.hold.bytes() as u64,
            held_total: c.held_total,
            held_overflow: c.held_overflow,
            redelivered: c.redelivered,
            ingest_dropped_packets: ingest_dropped,
            slow_consumer_events: events(ConnectionEvents::slow_consumer_events),
            disconnects: events(ConnectionEvents::disconnects),
            reconnects: events(ConnectionEvents::reconnects),
            bad_heartbeats: self.membership.bad_heartbeats(),
            messages_per_sec: self.messages_per_sec,
            epoch: self.router.epoch(),
            epoch_started_ms: self.router.epoch_started_ms(),
            analyzers: self.router.route_stats(),
        }
    }
}
