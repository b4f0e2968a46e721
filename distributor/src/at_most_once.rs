//! At-most-once delivery (`--delivery at-most-once`, the default): a packet is published once to
//! one analyzer and forgotten. See `docs/delivery.md` for what this mode can lose.
//!
//! Packets come from two core-NATS queue subscriptions (`<ingest>` and `<ingest>.>`, queue group
//! `distributors`) on an ingest connection of its own, and with `--http` from the gateway of this
//! process, through a bounded queue ([`LocalPacket`]s it validated already: no round trip through
//! NATS to ourselves). The loop is the core's ([`CoreSources`] first: shutdown, control, expiry,
//! stats), then the gateway's queue (its clients wait for their answer, so it is bounded by their
//! concurrency and pushes back with 503 when full), then the two ingest subscriptions. Per packet:
//! validate in the core (what is invalid is dead-lettered), then publish to the analyzer the
//! selector picks; while no analyzer is online, hold it in a bounded FIFO ([`HoldQueue`]) and
//! publish it once one is (a routing change, [`DeliveryMode::routing_changed`]); when the hold
//! queue is full, dead-letter it (`no_analyzer_online`). Publishing is buffered by the client;
//! the loop never flushes per packet.
//!
//! Coalescing (`--linger`, [`Coalescer`]): a routed packet for an analyzer that reads batches
//! waits in its analyzer's batch, which goes out when it is full, when no further packet is
//! waiting (looked at right after each packet, [`AtMostOnce::settle`], so batches form only
//! while packets queue up and a lone packet leaves in the turn that routed it), after
//! `--linger` at the latest, and before every control message or expiry is applied (so a
//! withdrawal's confirmation still follows every packet routed before it). A packet of
//! [`ALONE_BYTES`] or more is not coalesced: what waits leaves, then the packet alone.
//!
//! Shutdown (SIGINT/SIGTERM): the ingest subscriptions are drained (unsubscribed, then what the
//! client already buffered is still routed), so is the gateway's queue (until the gateway has
//! answered its last request), packets still held are dead-lettered
//! (`no_analyzer_online`); the caller flushes and writes the final stats.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_nats::{Client, Message, Subscriber};
use futures::StreamExt;
use logdist::protocol::batch::ALONE_BYTES;
use logdist::protocol::deadletter::{Reason, NO_ANALYZER_ONLINE};
use logdist::protocol::names::DISTRIBUTOR_QUEUE_GROUP;
use logdist::{ConnectError, ConnectionEvents};
use logdist_http::LocalPacket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::coalescer::{Coalescer, Ready};
use crate::config::RunArgs;
use crate::core::{
    ConnectionWatch, ControlSubscriptions, CoreSources, DeliveryMode, Distributor, ModeStats,
    RunError, FINAL_WRITE_TIMEOUT,
};
use crate::hold_queue::HoldQueue;
use crate::outgoing::Outgoing;
use crate::round_robin::RoundRobin;
use crate::stats_publisher::StatsPublisher;

/// How long shutdown waits for the drained subscriptions to hand over their last messages.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The at-most-once ingest connection (see [`run`]), and what it takes to count the packets it
/// dropped: its client counts every message it reads, the router counts what it takes, and the
/// difference was dropped or still waits in one of the two subscription buffers.
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

/// What at-most-once delivery keeps beside the core: the ingest connection and the packets held
/// while no analyzer is online.
struct AtMostOnce {
    ingest: IngestConnection,
    hold: HoldQueue<Outgoing>,
    held_total: u64,
    held_overflow: u64,
    coalescer: Coalescer,
    /// Messages the coalescer handed back, published in order (kept to reuse its memory).
    ready: Vec<Ready>,
    /// Wakes the loop when the oldest coalesced packet's linger is over.
    linger: Pin<Box<tokio::time::Sleep>>,
    /// The deadline `linger` is set to (it is set only when packets are left waiting).
    linger_armed: Option<Instant>,
    /// An ingest packet taken to see whether one more was waiting ([`AtMostOnce::settle`]),
    /// handled on the loop's next turn.
    next_up: Option<Message>,
}

/// Runs at-most-once delivery until `shutdown`, then drains the ingest subscriptions (and the
/// gateway's queue `local`, with `--http`) and dead-letters what is still held. Returns the
/// mode's part of the final stats.
pub(crate) async fn run(
    args: &RunArgs,
    core: &mut Distributor,
    control: &mut ControlSubscriptions,
    mut local: Option<mpsc::Receiver<LocalPacket>>,
    publisher: &StatsPublisher,
    connection_watch: &ConnectionWatch,
    shutdown: &CancellationToken,
) -> Result<ModeStats, RunError> {
    let names = &args.names;
    // The ingest subscriptions get a connection of their own, with a bounded buffer: under a
    // flood its client task reads and drops what the router cannot take, while the main
    // connection's task keeps sending the routed packets (on one connection the incoming flood
    // starves the outgoing publishes), and the two connections' work runs on two threads.
    let name = format!("distributor {} ingest", core.replica());
    let connection = match logdist::connect_with_capacity(
        &args.nats,
        &name,
        args.ingest_buffer,
        args.ingest_read_buffer,
        shutdown,
    )
    .await
    {
        Ok(c) => c,
        Err(ConnectError::Cancelled { .. }) => return Ok(ModeStats::default()),
        Err(e) => return Err(e.into()),
    };
    let client = connection.client.clone();
    connection_watch.watch(&client, "ingest", shutdown);
    let mut mode = AtMostOnce {
        ingest: IngestConnection::new(connection, args.ingest_buffer),
        hold: HoldQueue::new(args.hold_max_packets, args.hold_max_bytes),
        held_total: 0,
        held_overflow: 0,
        coalescer: Coalescer::new(&args.coalesce, core.replica_header().clone()),
        ready: Vec::new(),
        linger: Box::pin(tokio::time::sleep(Duration::ZERO)),
        linger_armed: None,
        next_up: None,
    };
    let subscribe_err = |subject: &str, e: async_nats::SubscribeError| RunError::Subscribe {
        subject: subject.to_string(),
        source: e,
    };
    let wildcard = names.ingest_wildcard();
    let mut ingest = client
        .queue_subscribe(names.ingest_subject.clone(), DISTRIBUTOR_QUEUE_GROUP.into())
        .await
        .map_err(|e| subscribe_err(&names.ingest_subject, e))?;
    // The per-agent wildcard, and the `--ingest-format` patterns outside the ingest subjects:
    // one stream of messages, each taken in the same queue group.
    let (_, extra) = args
        .formats
        .mapping_and_subjects(names)
        .map_err(RunError::Config)?;
    let mut ingest_agents = RoundRobin::new();
    for subject in std::iter::once(wildcard.clone()).chain(extra) {
        let subscription = client
            .queue_subscribe(subject.clone(), DISTRIBUTOR_QUEUE_GROUP.into())
            .await
            .map_err(|e| subscribe_err(&subject, e))?;
        ingest_agents.push(subscription);
    }
    tracing::info!(
        replica = %core.replica(),
        ingest = %names.ingest_subject,
        delivery = args.delivery.as_str(),
        analyzers_online = core.analyzers_online(),
        "distributor running"
    );
    let mut sources = CoreSources::new(core, control, publisher, args.stats_interval, shutdown);
    mode.event_loop(
        core,
        &mut sources,
        &mut local,
        &mut ingest,
        &mut ingest_agents,
    )
    .await;

    // Shutdown: take no new packets, route what is in hand. Every step is bounded: with the
    // server gone (a node going down with us) an unsubscribe or a publish can wait forever for
    // room in the client's command queue.
    tracing::info!("draining the ingest subscriptions");
    let drained = tokio::time::timeout(
        DRAIN_TIMEOUT,
        mode.drain(
            core,
            &mut sources,
            &mut local,
            &mut ingest,
            &mut ingest_agents,
        ),
    )
    .await;
    match drained {
        Ok(()) => mode.ingest.drained = true,
        Err(_) => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "ingest subscriptions did not drain in time")
        }
    }
    // What the coalescer still holds (when the drain above timed out).
    if tokio::time::timeout(FINAL_WRITE_TIMEOUT, mode.flush(core))
        .await
        .is_err()
    {
        tracing::warn!("could not publish the last coalesced packets in time (is NATS reachable?)");
    }
    let dropped = mode.ingest.dropped();
    if dropped > 0 {
        tracing::warn!(
            packets = dropped,
            ingest_buffer = args.ingest_buffer,
            "the ingest connection dropped packets while the router was behind (add replicas or raise --ingest-buffer for bursts)"
        );
    }
    if tokio::time::timeout(FINAL_WRITE_TIMEOUT, mode.deadletter_held(core))
        .await
        .is_err()
    {
        tracing::warn!(
            packets = mode.hold.len(),
            "could not dead-letter the held packets in time (is NATS reachable?)"
        );
    }
    Ok(mode.stats())
}

impl AtMostOnce {
    async fn event_loop(
        &mut self,
        core: &mut Distributor,
        sources: &mut CoreSources<'_>,
        local: &mut Option<mpsc::Receiver<LocalPacket>>,
        ingest: &mut Subscriber,
        ingest_agents: &mut RoundRobin<Subscriber>,
    ) {
        loop {
            tokio::select! {
                biased;
                event = sources.next() => {
                    if core.on_event(event, sources, self).await.is_break() {
                        return;
                    }
                }
                () = &mut self.linger, if self.coalescer.is_pending() => self.flush(core).await,
                Some(packet) = next_local(local) => self.on_local(core, packet).await,
                Some(message) = take(&mut self.next_up) => self.on_taken(core, message).await,
                Some(message) = ingest.next() => self.on_ingest(core, message).await,
                Some(message) = ingest_agents.next() => self.on_ingest(core, message).await,
            }
            self.settle(core, local, ingest, ingest_agents).await;
        }
    }

    /// After a turn of the loop, while the coalescer holds packets: if another packet waits
    /// (the gateway's queue, or one taken from an ingest subscription into `next_up`), they
    /// wait for it, with the linger set; if none does, they leave now. So at a low rate a
    /// packet is published in the turn that routed it, with no timer set and no extra turn
    /// of the loop (~8,600 instructions a packet in callgrind, BENCHMARKS.md). The only place
    /// where "nothing waits" sends a batch: whenever packets stay pending, the linger is set.
    async fn settle(
        &mut self,
        core: &mut Distributor,
        local: &Option<mpsc::Receiver<LocalPacket>>,
        ingest: &mut Subscriber,
        ingest_agents: &mut RoundRobin<Subscriber>,
    ) {
        if !self.coalescer.is_pending() {
            return;
        }
        if self.next_up.is_none() && local.as_ref().is_none_or(|queue| queue.is_empty()) {
            // Polled with this task's context: a message is kept for the next turn, and an
            // empty subscription wakes the task as it would in `select!`.
            self.next_up = std::future::poll_fn(|cx| {
                let ready = |poll: Poll<Option<Message>>| match poll {
                    Poll::Ready(Some(message)) => Some(message),
                    _ => None,
                };
                Poll::Ready(
                    ready(ingest.poll_next_unpin(cx))
                        .or_else(|| ready(ingest_agents.poll_next_unpin(cx))),
                )
            })
            .await;
            if self.next_up.is_none() {
                return self.flush(core).await;
            }
            // Out of the subscription's buffer: counted as taken, not as waiting or dropped.
            self.ingest.taken += 1;
        }
        if let Some(deadline) = self.coalescer.deadline() {
            if self.linger_armed != Some(deadline) {
                self.linger.as_mut().reset(deadline.into());
                self.linger_armed = Some(deadline);
            }
        }
    }

    /// Unsubscribes the ingest subscriptions and routes what the client already received for
    /// them, until both streams end (the caller bounds it by [`DRAIN_TIMEOUT`]).
    async fn drain(
        &mut self,
        core: &mut Distributor,
        sources: &mut CoreSources<'_>,
        local: &mut Option<mpsc::Receiver<LocalPacket>>,
        ingest: &mut Subscriber,
        ingest_agents: &mut RoundRobin<Subscriber>,
    ) {
        if let Some(message) = self.next_up.take() {
            self.on_taken(core, message).await;
        }
        for sub in std::iter::once(&mut *ingest).chain(ingest_agents.iter_mut()) {
            if let Err(e) = sub.drain().await {
                tracing::warn!(error = %e, "cannot drain an ingest subscription");
            }
        }
        let (mut open, mut agents_open) = (true, true);
        while open || agents_open || local.is_some() {
            tokio::select! {
                biased;
                Some(message) = sources.control().next() => core.on_control(&message, self).await,
                // Ends when the gateway has answered its last request (it stops at shutdown too).
                packet = next_local(local), if local.is_some() => match packet {
                    Some(packet) => self.on_local(core, packet).await,
                    None => *local = None,
                },
                message = ingest.next(), if open => match message {
                    Some(message) => self.on_ingest(core, message).await,
                    None => open = false,
                },
                message = ingest_agents.next(), if agents_open => match message {
                    Some(message) => self.on_ingest(core, message).await,
                    None => agents_open = false,
                },
            }
        }
        self.flush(core).await;
    }

    /// One payload from an ingest subject: validate, then route, hold or dead-letter.
    async fn on_ingest(&mut self, core: &mut Distributor, message: Message) {
        self.ingest.taken += 1;
        self.on_taken(core, message).await;
    }

    /// [`on_ingest`](Self::on_ingest) for a payload already counted as taken (`next_up`).
    async fn on_taken(&mut self, core: &mut Distributor, message: Message) {
        let Message {
            subject,
            payload,
            headers,
            ..
        } = message;
        if let Some(out) = core.validate(subject, headers, payload).await {
            self.forward(core, out).await;
        }
    }

    /// One packet from the gateway of this process, validated there: route, hold or dead-letter.
    async fn on_local(&mut self, core: &mut Distributor, packet: LocalPacket) {
        let LocalPacket {
            subject,
            headers,
            payload,
            messages,
        } = packet;
        if let Some(out) = core
            .accept_validated(subject, headers, payload, messages)
            .await
        {
            self.forward(core, out).await;
        }
    }

    /// Routes a valid packet, or holds it while no analyzer is online, or dead-letters it when
    /// the hold queue is full.
    async fn forward(&mut self, core: &mut Distributor, out: Outgoing) {
        if core.router().is_empty() {
            let (bytes, messages) = (out.payload.len(), out.messages);
            match self.hold.push(out, bytes, messages) {
                Ok(()) => self.held_total += 1,
                Err(out) => {
                    self.held_overflow += 1;
                    let reason = Reason {
                        code: NO_ANALYZER_ONLINE,
                        text: "no analyzer online and the hold queue is full",
                    };
                    core.deadletter_outgoing(out, reason).await;
                }
            }
            return;
        }
        self.publish(core, out).await;
    }

    /// Packets still held when the distributor stops are dead-lettered, not dropped.
    async fn deadletter_held(&mut self, core: &mut Distributor) {
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
            core.deadletter_outgoing(out, reason).await;
        }
    }
}

impl DeliveryMode for AtMostOnce {
    /// Delivers held packets in arrival order once an analyzer is online.
    async fn routing_changed(&mut self, core: &mut Distributor) {
        // Coalesced packets of the old epoch leave first, to the analyzers they were routed to.
        self.flush(core).await;
        if core.router().is_empty() || self.hold.is_empty() {
            return;
        }
        tracing::info!(
            packets = self.hold.len(),
            "analyzer online: delivering held packets"
        );
        while !core.router().is_empty() {
            let Some(out) = self.hold.pop() else { break };
            self.publish(core, out).await;
        }
        // Held packets leave together (the next routing change may move their analyzers).
        self.flush(core).await;
    }

    /// Publishes everything the coalescer holds.
    async fn flush(&mut self, core: &mut Distributor) {
        self.coalescer.flush(&mut self.ready);
        send_ready(core, &mut self.ready).await;
    }

    fn membership_changed(&mut self, _events: &[crate::membership::MembershipEvent]) {
        self.coalescer.membership_changed();
    }

    fn stats(&mut self) -> ModeStats {
        let events = &self.ingest.events;
        ModeStats {
            held_packets: self.hold.len() as u64,
            held_messages: self.hold.messages(),
            held_bytes: self.hold.bytes() as u64,
            held_total: self.held_total,
            held_overflow: self.held_overflow,
            slow_consumer_events: events.slow_consumer_events(),
            disconnects: events.disconnects(),
            reconnects: events.reconnects(),
            ingest_dropped_packets: self.ingest.dropped(),
            batches_sent: self.coalescer.batches_sent(),
            batched_packets: self.coalescer.batched_packets(),
            ..ModeStats::default()
        }
    }
}

impl AtMostOnce {
    /// Routes a packet (the router is not empty) and publishes it to the analyzer the selector
    /// picks, or hands it to the coalescer.
    async fn publish(&mut self, core: &mut Distributor, out: Outgoing) {
        if !self.coalescer.enabled() {
            return publish(core, out).await;
        }
        if out.payload.len() >= ALONE_BYTES {
            // What was routed before it leaves first, so each analyzer still gets its packets
            // in the order they were routed.
            self.flush(core).await;
            return publish(core, out).await;
        }
        let epoch = core.router().epoch();
        if self.coalescer.needs_refresh(epoch) {
            // What waits was routed in another epoch: it leaves first, to its own subjects.
            self.flush(core).await;
            let router = core.router();
            let slots: Vec<_> = (0..router.len())
                .map(|i| (router.subject(i).clone(), core.reads_batches(router.id(i))))
                .collect();
            self.coalescer.refresh(epoch, slots);
        }
        let Some(index) = core
            .router_mut()
            .route_index(out.key, out.messages, out.payload.len())
        else {
            unreachable!("publish is only called with an analyzer online");
        };
        core.count_routed_packet();
        self.coalescer
            .push(index, out, Instant::now(), &mut self.ready);
        send_ready(core, &mut self.ready).await;
    }
}

/// Publishes what the coalescer handed back, in order.
async fn send_ready(core: &mut Distributor, ready: &mut Vec<Ready>) {
    for r in ready.drain(..) {
        if let Err(e) = core
            .client()
            .publish_with_headers(r.subject, r.headers, r.payload)
            .await
        {
            tracing::error!(error = %e, packets = r.packets, "cannot publish to an analyzer");
        }
    }
}

/// The packet in `next_up`; never, while there is none.
async fn take(next_up: &mut Option<Message>) -> Option<Message> {
    match next_up.take() {
        Some(message) => Some(message),
        None => std::future::pending().await,
    }
}

/// The next packet in the gateway's queue; never, without `--http`.
async fn next_local(local: &mut Option<mpsc::Receiver<LocalPacket>>) -> Option<LocalPacket> {
    match local {
        Some(queue) => queue.recv().await,
        None => std::future::pending().await,
    }
}

/// Publishes to the analyzer the selector picks (the router is not empty).
async fn publish(core: &mut Distributor, out: Outgoing) {
    let Some(subject) = core
        .router_mut()
        .route(out.key, out.messages, out.payload.len())
    else {
        unreachable!("publish is only called with an analyzer online");
    };
    let subject = subject.clone();
    core.count_routed_packet();
    let headers = Outgoing::forwarded_headers(out.headers, out.messages, core.replica_header());
    if let Err(e) = core
        .client()
        .publish_with_headers(subject, headers, out.payload)
        .await
    {
        tracing::error!(error = %e, "cannot publish a packet to an analyzer");
    }
}
