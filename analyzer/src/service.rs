//! The async shell around [`Analysis`]: connect, subscribe, announce, analyze, report, and shut
//! down in the order the protocol needs.
//!
//! Three tasks run:
//! - this one owns the subscription and the counters (so the hot path takes no lock), and
//!   snapshots the counters every report interval, and every `--checkpoint-interval` (or
//!   after `--checkpoint-packets` packets) while acknowledgements are pending;
//! - the heartbeat task ([`crate::heartbeat`]) keeps the instance in the distributors' routing;
//! - the stats writer writes each snapshot to the stats bucket, then sends the acknowledgements
//!   that waited for it, so a slow JetStream does not stall the analysis between checkpoints.
//!
//! Acknowledgements (replies to request-style packets, at-least-once mode) are *checkpointed*:
//! a packet is acknowledged only after a stats write that counts it succeeded. An instance that
//! is killed loses its in-memory counters since the last write; the packets they counted were
//! not acknowledged, so the distributor sends them again (to another analyzer), and every
//! acknowledged message stays counted in the bucket. Packets without a reply subject
//! (at-most-once mode) take the same path and simply have nothing to acknowledge. Every write
//! goes through the one writer in order, so the bucket never goes back to older counts.
//!
//! Start-up: subscribe `<prefix>.<id>` in queue group `<prefix>.<id>`, flush (the server now
//! knows the subscription), and only then announce, so no packet is routed here before we listen.
//!
//! Shutdown (SIGINT/SIGTERM): stop heartbeating, send the withdrawal and flush it, so distributors
//! stop routing here first; keep analyzing until every distributor replica that routed here
//! recently has confirmed the withdrawal ([`crate::withdrawal`]; packets routed before a replica
//! processed the withdrawal are still in flight until then); then drain
//! the subscription (unsubscribe, and analyze everything already delivered), print the final
//! summary, write the final stats with state `down`.
//!
//! An HTTP analyzer (`--forward-http`, [`crate::forward`]) runs the same shell: a packet is handed
//! to the [`Forwarder`] instead of being analyzed at once, and counted (and its acknowledgement
//! queued for the next checkpoint) when every request for it is settled. Heartbeats follow the
//! endpoint's health. At shutdown the packets still out get `--drain-timeout` to settle, then
//! their retries end; in at-least-once mode those are not acknowledged (the distributor
//! re-routes them), in at-most-once mode they are dead-lettered (`forward_failed`).

use std::collections::HashMap;
use std::io::{self, Stdout, Write};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderName, Message, Subject};
use futures::StreamExt;
use logdist::metrics::{AnalyzerCollector, AnalyzerSnapshot, LatestSnapshot, NatsCollector};
use logdist::protocol::control::{Heartbeat, WithdrawalConfirmed};
use logdist::protocol::stats::{analyzer_key, AnalyzerStats};
use logdist::protocol::{batch, headers};
use logdist::telemetry::{self, Condition, NatsCondition, Readiness, Telemetry};
use logdist::ConnectError;
use logdist::{open_or_create_bucket, BucketError};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::analysis::{Analysis, PacketMeta, PacketOutcome};
use crate::config::AnalyzerConfig;
use crate::forward::{self, ClientError, Delivery, Forwarded, Forwarder};
use crate::heartbeat::{self, ControlPublishError};
use crate::latency::{parse_sent_at, LatencyHistogram};
use crate::printer::RecordPrinter;
use crate::report::{summary_line, Reporter, STATE_DOWN, STATE_UP};
use crate::withdrawal::RoutingReplicas;
use crate::work::SimulatedWork;

/// Description given to the stats bucket when the analyzer is the first to create it.
const STATS_BUCKET_DESCRIPTION: &str = "logdist live counters of distributors and analyzers";

/// Why the analyzer stopped with a failure (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    StatsBucket(#[from] BucketError),
    #[error("cannot subscribe to {subject:?}: {detail}")]
    Subscribe { subject: String, detail: String },
    #[error("the server did not confirm the subscription to {subject:?}: {detail}")]
    SubscribeFlush { subject: String, detail: String },
    #[error("the subscription to {subject:?} ended unexpectedly (connection closed)")]
    SubscriptionClosed { subject: String },
    #[error(transparent)]
    HttpClient(#[from] ClientError),
    #[error("shutdown was not clean: {}", .0.join("; "))]
    UncleanShutdown(Vec<String>),
    #[error("{0} / ANALYZER_METRICS")]
    Metrics(#[from] telemetry::ServeError),
}

/// What `--metrics` serves, fed by the analyzer: its stats records and readiness.
struct Observed {
    latest: LatestSnapshot<AnalyzerSnapshot>,
    nats: NatsCollector,
    connected: NatsCondition,
    /// Subscribed to its subject and announced; unset again once it withdraws.
    serving: Condition,
}

impl Observed {
    /// Starts the `--metrics` listener (before connecting, so `/readyz` says 503 meanwhile).
    async fn start(
        config: &AnalyzerConfig,
        shutdown: &CancellationToken,
    ) -> Result<Option<Observed>, ServiceError> {
        let Some(addr) = config.metrics else {
            return Ok(None);
        };
        let readiness = Readiness::default();
        let observed = Observed {
            latest: LatestSnapshot::default(),
            nats: NatsCollector::new(true),
            connected: readiness.nats(),
            serving: readiness.condition("subscribed and announced"),
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(AnalyzerCollector {
            latest: observed.latest.clone(),
        }));
        registry.register_collector(Box::new(observed.nats.clone()));
        let telemetry = Telemetry::new(registry, readiness);
        telemetry::serve(addr, &telemetry, shutdown.child_token()).await?;
        Ok(Some(observed))
    }
}

/// Runs the analyzer until `shutdown` is cancelled. Returns the final stats record, or `None`
/// when shutdown came before the first connection (nothing was announced, nothing to withdraw).
pub async fn run(
    config: &AnalyzerConfig,
    instance: &str,
    shutdown: CancellationToken,
) -> Result<Option<AnalyzerStats>, ServiceError> {
    let id = config.id.as_str();
    let client_name = format!("analyzer {id}/{instance}");
    let observed = Observed::start(config, &shutdown).await?;
    let connection = match logdist::connect(&config.nats, &client_name, &shutdown).await {
        Ok(connection) => connection,
        Err(ConnectError::Cancelled { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if let Some(observed) = &observed {
        observed.nats.connected(&connection);
        observed.connected.connected(&connection.client);
    }
    let client = connection.client;
    let started = Instant::now();

    let jetstream = async_nats::jetstream::new(client.clone());
    let stats_bucket = open_or_create_bucket(
        &jetstream,
        &config.names.stats_bucket,
        STATS_BUCKET_DESCRIPTION,
    )
    .await?;

    let subject = config.names.analyzer_subject(id);
    let mut subscriber = client
        .queue_subscribe(subject.clone(), subject.clone())
        .await
        .map_err(|e| ServiceError::Subscribe {
            subject: subject.clone(),
            detail: e.to_string(),
        })?;
    // The distributors' confirmations of this instance's withdrawal (see `withdrawal`).
    let withdrawn_subject = config.names.withdrawn_subject(id);
    let mut confirmations = client
        .subscribe(withdrawn_subject.clone())
        .await
        .map_err(|e| ServiceError::Subscribe {
            subject: withdrawn_subject.clone(),
            detail: e.to_string(),
        })?;
    client
        .flush()
        .await
        .map_err(|e| ServiceError::SubscribeFlush {
            subject: subject.clone(),
            detail: e.to_string(),
        })?;

    // An HTTP analyzer announces itself only while its endpoint is healthy; a native one always.
    let (forwarder, mut forwarded) = match config.forward_settings() {
        Some(settings) => {
            let (forwarder, done) = Forwarder::start(&settings)?;
            (Some(forwarder), Some(done))
        }
        None => (None, None),
    };
    let (_always_healthy, native_health) = watch::channel(true);
    let healthy = forwarder.as_ref().map_or(native_health, |f| f.health());

    // Its own control subject: the server lets this analyzer's user publish only there, and the
    // distributors take a control message only for the id its subject names.
    let control_subject = config.names.analyzer_control_subject(id);
    let heartbeat_stop = CancellationToken::new();
    let heartbeats = tokio::spawn(heartbeat::run_heartbeats(
        client.clone(),
        control_subject.clone(),
        Heartbeat {
            id: id.to_string(),
            weight: config.weight,
            instance: instance.to_string(),
            interval_ms: config.heartbeat_interval.as_millis() as u64,
            batch: logdist::protocol::batch::BATCH_VERSION,
        },
        config.heartbeat_interval,
        heartbeat_stop.clone(),
        healthy,
    ));

    let mut reporter = Reporter::new(id, instance, config.weight, started);
    let mut handler = PacketHandler::new(config, instance, forwarder, client.clone());
    let (stats_tx, stats_rx) = mpsc::channel(CHECKPOINT_QUEUE);
    let stats_tx = StatsFeed {
        tx: stats_tx,
        metrics: observed.as_ref().map(|o| o.latest.clone()),
    };
    let first = handler.report(reporter.snapshot(&handler.analysis, STATE_UP, started));
    stats_tx.publish_metrics(&first, handler.analysis.latency());
    let _ = stats_tx.tx.try_send(Checkpoint {
        stats: first,
        replies: Vec::new(),
    });
    let stats_publisher = tokio::spawn(write_checkpoints(
        stats_bucket,
        analyzer_key(id, instance),
        client.clone(),
        stats_rx,
    ));
    // Replies to packets analyzed since the last checkpoint.
    let mut pending: Vec<Subject> = Vec::new();
    let mut checkpoint_ticks = tokio::time::interval(config.checkpoint_interval);
    checkpoint_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut early = EarlyCheckpoint::new(config.checkpoint_packets, config.checkpoint_messages);
    if let Some(observed) = &observed {
        observed.serving.set(true);
    }
    tracing::info!(
        analyzer_id = %id,
        instance = %instance,
        weight = config.weight,
        subject = %subject,
        forward_http = handler.forward_url().unwrap_or("-"),
        "analyzer online"
    );

    let mut report_ticks = tokio::time::interval_at(
        (started + config.report_interval).into(),
        config.report_interval,
    );
    report_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut subscription_closed = false;
    loop {
        if early.due(&handler, &pending) {
            let stats = handler.report(reporter.checkpoint(&handler.analysis, STATE_UP));
            send_checkpoint(&stats_tx, stats, handler.analysis.latency(), &mut pending).await;
            early.written(&handler);
            checkpoint_ticks.reset();
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = next_forwarded(&mut forwarded) => {
                pending.extend(handler.settle(done).await);
            }
            _ = report_ticks.tick() => {
                let stats = handler.report(reporter.snapshot(&handler.analysis, STATE_UP, Instant::now()));
                print_summary(&stats);
                send_checkpoint(&stats_tx, stats, handler.analysis.latency(), &mut pending).await;
                early.written(&handler);
            }
            _ = checkpoint_ticks.tick(), if !pending.is_empty() => {
                let stats = handler.report(reporter.checkpoint(&handler.analysis, STATE_UP));
                send_checkpoint(&stats_tx, stats, handler.analysis.latency(), &mut pending).await;
                early.written(&handler);
            }
            // Confirmations of withdrawals while the endpoint was unhealthy: only those of the
            // final withdrawal (after this loop) count.
            Some(_) = confirmations.next() => {}
            message = subscriber.next(), if handler.has_room() => match message {
                Some(message) => pending.extend(handler.handle(message).await),
                None => {
                    subscription_closed = true;
                    break;
                }
            },
        }
    }

    // Shutdown, in protocol order. Each step is bounded; a failed step is reported at the end
    // but does not stop the later ones.
    let mut problems = Vec::new();
    let limit = config.drain_timeout;
    if let Some(observed) = &observed {
        observed.serving.set(false);
    }
    heartbeat_stop.cancel();
    let _ = heartbeats.await;
    let withdrawal = heartbeat::withdraw(&client, &control_subject, id, instance);
    match tokio::time::timeout(limit, withdrawal).await {
        Ok(Ok(())) => tracing::info!(analyzer_id = %id, instance = %instance, "withdrawn"),
        Ok(Err(e)) => problems.push(e.to_string()),
        Err(_) => problems.push(
            ControlPublishError::Flush {
                subject: control_subject.clone(),
                detail: format!("no answer from the server within {limit:?}"),
            }
            .to_string(),
        ),
    }
    // Distributors stop routing here only once they have processed the withdrawal; packets they
    // sent before that are still on their way. Keep analyzing (and checkpointing) until every
    // replica that routed here recently has confirmed the withdrawal (its packets are then all
    // in the subscription, see `withdrawal`), at most `--drain-timeout`. When no replica routed
    // here recently, until the subscription has been quiet for `--withdraw-grace`.
    if !subscription_closed {
        let grace = config.withdraw_grace.min(limit);
        let hard_deadline = tokio::time::Instant::now() + limit;
        let quiet = tokio::time::sleep(grace);
        tokio::pin!(quiet);
        let mut late = 0u64;
        let mut confirmed_by = 0usize;
        loop {
            let now = Instant::now();
            let recent = handler.replicas.any_recent(now);
            if recent && handler.replicas.awaiting(now).is_empty() {
                break;
            }
            if early.due(&handler, &pending) {
                let stats = handler.report(reporter.checkpoint(&handler.analysis, STATE_UP));
                send_checkpoint(&stats_tx, stats, handler.analysis.latency(), &mut pending).await;
                early.written(&handler);
                checkpoint_ticks.reset();
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(hard_deadline) => {
                    let awaiting = handler.replicas.awaiting(Instant::now()).join(", ");
                    tracing::warn!(
                        replicas = %awaiting,
                        timeout = ?limit,
                        "no withdrawal confirmation from these distributor replicas (gone, or an older version); at-most-once, packets they still route here are lost"
                    );
                    break;
                }
                () = &mut quiet, if !recent => break,
                Some(message) = confirmations.next() => {
                    match serde_json::from_slice::<WithdrawalConfirmed>(&message.payload) {
                        Ok(c) if c.id == id && c.instance == instance => {
                            confirmed_by += 1;
                            handler.replicas.confirmed(&c.distributor);
                        }
                        Ok(_) => {} // another instance of this id withdrew
                        Err(e) => tracing::warn!(subject = %message.subject, error = %e,
                            "ignoring a malformed withdrawal confirmation"),
                    }
                }
                _ = checkpoint_ticks.tick(), if !pending.is_empty() => {
                    let stats = handler.report(reporter.checkpoint(&handler.analysis, STATE_UP));
                    send_checkpoint(&stats_tx, stats, handler.analysis.latency(), &mut pending).await;
                    early.written(&handler);
                }
                Some(done) = next_forwarded(&mut forwarded) => {
                    pending.extend(handler.settle(done).await);
                }
                message = subscriber.next(), if handler.has_room() => match message {
                    Some(message) => {
                        late += 1;
                        pending.extend(handler.handle(message).await);
                        let until = (tokio::time::Instant::now() + grace).min(hard_deadline);
                        quiet.as_mut().reset(until);
                    }
                    None => {
                        subscription_closed = true;
                        break;
                    }
                },
            }
        }
        tracing::info!(
            packets = late,
            confirmations = confirmed_by,
            "packets that arrived after the withdrawal were analyzed"
        );
    }
    // The drain hands over what is already in the subscription's queue, then ends the stream.
    if !subscription_closed {
        if let Err(e) = subscriber.drain().await {
            problems.push(format!("cannot drain {subject:?}: {e}"));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                biased;
                Some(done) = next_forwarded(&mut forwarded) => {
                    pending.extend(handler.settle(done).await);
                }
                () = tokio::time::sleep_until(deadline) => {
                    problems.push(format!(
                        "draining {subject:?} did not finish within {limit:?}"
                    ));
                    break;
                }
                message = subscriber.next(), if handler.has_room() => match message {
                    Some(message) => pending.extend(handler.handle(message).await),
                    None => break,
                },
            }
        }
    }
    // An HTTP analyzer's packets still out: `limit` to settle, then their retries end.
    if handler.forward_in_flight() > 0 {
        let waiting = handler.forward_in_flight();
        tracing::info!(packets = waiting, timeout = ?limit, "waiting for the packets still out to the endpoint");
        let mut deadline = tokio::time::Instant::now() + limit;
        let mut gave_up = false;
        while handler.forward_in_flight() > 0 {
            tokio::select! {
                Some(done) = next_forwarded(&mut forwarded) => {
                    pending.extend(handler.settle(done).await);
                }
                () = tokio::time::sleep_until(deadline) => {
                    if gave_up {
                        problems.push(format!(
                            "{} packets still out to the endpoint after the retries were stopped",
                            handler.forward_in_flight()
                        ));
                        break;
                    }
                    tracing::warn!(packets = handler.forward_in_flight(), "packets not delivered within --drain-timeout; stopping their retries (at-least-once: not acknowledged, the distributor re-routes them; at-most-once: dead-lettered)");
                    handler.give_up();
                    gave_up = true;
                    deadline = tokio::time::Instant::now() + limit;
                }
            }
        }
    }
    // A process analyzer's child gets the end of its input and exits.
    if let Some(f) = handler.forward.as_mut() {
        f.forwarder.close(limit).await;
    }
    handler.finish();
    let final_stats =
        handler.report(reporter.snapshot(&handler.analysis, STATE_DOWN, Instant::now()));
    print_summary(&final_stats);
    // The final write also checkpoints the last packets, then acknowledges them.
    send_checkpoint(
        &stats_tx,
        final_stats.clone(),
        handler.analysis.latency(),
        &mut pending,
    )
    .await;
    drop(stats_tx.tx);
    match tokio::time::timeout(limit, stats_publisher).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("stats publisher failed: {e}")),
        Err(_) => problems.push(format!(
            "final stats not written within {limit:?} (stats bucket {:?})",
            config.names.stats_bucket
        )),
    }
    // Acks of the last packets must leave before the process does.
    if !matches!(
        tokio::time::timeout(limit, client.flush()).await,
        Ok(Ok(()))
    ) {
        problems.push("the last acknowledgements may not have reached the server".to_string());
    }

    if subscription_closed {
        return Err(ServiceError::SubscriptionClosed { subject });
    }
    if !problems.is_empty() {
        return Err(ServiceError::UncleanShutdown(problems));
    }
    Ok(Some(final_stats))
}

/// Handles one delivered packet at a time: analysis, optional printing, simulated work.
struct PacketHandler {
    analysis: Analysis,
    work: SimulatedWork,
    printer: Option<RecordPrinter<Stdout>>,
    // Header names built once: looking up by `&str` would allocate a name per packet.
    packet_id_header: HeaderName,
    sent_at_header: HeaderName,
    distributor_header: HeaderName,
    /// The replicas that route here, for the confirmed withdrawal.
    replicas: RoutingReplicas,
    invalid_logged: bool,
    /// HTTP analyzers only.
    forward: Option<Forwarding>,
    /// HTTP and process analyzers: batches whose packets are still out, by reply subject.
    batches: HashMap<String, BatchAck>,
}

/// A batch (at-least-once) whose packets an HTTP or process analyzer is still delivering.
struct BatchAck {
    remaining: usize,
    /// A packet failed for good: the batch is not acknowledged.
    failed: bool,
}

/// A packet of a batch as a message of its own, for the HTTP and process analyzers to hand on:
/// the batch's subject and reply, the packet's headers ([`batch::BatchPart::headers`]) and its
/// slice of the payload.
struct Part;

impl Part {
    fn of(batch_message: &Message, part: &batch::BatchPart<'_>) -> Message {
        let payload = batch_message.payload.slice(part.range.clone());
        let headers = batch_message
            .headers
            .as_ref()
            .map(|h| part.headers(h))
            .unwrap_or_default();
        Message {
            subject: batch_message.subject.clone(),
            reply: batch_message.reply.clone(),
            length: payload.len(),
            payload,
            headers: Some(headers),
            status: None,
            description: None,
        }
    }
}

/// What an HTTP analyzer needs besides the counters: the forwarder, and what it takes to publish
/// dead letters.
struct Forwarding {
    forwarder: Forwarder,
    client: Client,
    deadletter_subject: String,
    /// `<id>.<instance>`, in `Logdist-Analyzer`.
    analyzer: String,
    deadletter_messages: u64,
    /// At-least-once packets not acknowledged because a request failed for good (logged once).
    failed_logged: bool,
}

impl PacketHandler {
    fn new(
        config: &AnalyzerConfig,
        instance: &str,
        forwarder: Option<Forwarder>,
        client: Client,
    ) -> Self {
        PacketHandler {
            forward: forwarder.map(|forwarder| Forwarding {
                forwarder,
                client,
                deadletter_subject: config.names.deadletter_subject.clone(),
                analyzer: format!("{}.{instance}", config.id),
                deadletter_messages: 0,
                failed_logged: false,
            }),
            analysis: Analysis::new(config.dedup_window),
            work: SimulatedWork::new(config.work_per_message),
            printer: config.print.then(|| RecordPrinter::new(io::stdout())),
            packet_id_header: headers::PACKET_ID
                .parse()
                .expect("the contract's header names are valid"),
            sent_at_header: headers::SENT_AT
                .parse()
                .expect("the contract's header names are valid"),
            distributor_header: headers::DISTRIBUTOR
                .parse()
                .expect("the contract's header names are valid"),
            replicas: RoutingReplicas::default(),
            invalid_logged: false,
            batches: HashMap::new(),
        }
    }

    /// Analyzes `message` and returns its reply subject, if it asks for an acknowledgement: the
    /// caller sends it after the next checkpoint (duplicates and invalid packets are acked too,
    /// since redelivering them cannot change the outcome).
    async fn handle(&mut self, message: Message) -> Option<Subject> {
        let message_headers = message.headers.as_ref();
        if let Some(replica) = message_headers.and_then(|h| h.get(self.distributor_header.clone()))
        {
            self.replicas.saw(replica.as_str(), Instant::now());
        }
        match batch::split(message_headers, message.payload.len()) {
            Ok(None) => {}
            Ok(Some(parts)) => {
                self.analysis.count_batch();
                if self.forward.is_none() {
                    self.analyze_batch(&message, &parts).await;
                    return message.reply;
                }
                let parts = parts.into_iter().map(|p| Part::of(&message, &p)).collect();
                return self.forward_batch(message, parts);
            }
            Err(error) => {
                self.analysis.count_invalid();
                if !self.invalid_logged {
                    tracing::warn!(subject = %message.subject, code = error.code(), %error,
                        "unreadable batch (counted in invalid_packets; further ones are logged at debug level)");
                    self.invalid_logged = true;
                }
                return message.reply;
            }
        }
        if let Some(forward) = self.forward.as_mut() {
            // A repeat of a packet already delivered is not posted again.
            let packet_id = message_headers
                .and_then(|h| h.get(self.packet_id_header.clone()))
                .map(|v| v.as_str());
            if packet_id.is_some_and(|id| self.analysis.seen(id)) {
                self.analysis.count_duplicate();
                return message.reply;
            }
            forward.forwarder.dispatch(message);
            return None;
        }
        let meta = self.meta(&message);
        let packet_id = meta.packet_id;
        let outcome = self.analyze(&message.payload, meta);
        self.settle_analyzed(outcome, packet_id, &message).await;
        message.reply
    }

    /// What follows a packet's analysis by the built-in analysis: the simulated work for its
    /// messages (`--work-per-message`), or a log line for a repeat (`packet_id`) or an invalid
    /// packet (logged with `message`'s subject: the packet's own, or its batch's).
    async fn settle_analyzed(
        &mut self,
        outcome: PacketOutcome,
        packet_id: Option<&str>,
        message: &Message,
    ) {
        match outcome {
            PacketOutcome::Analyzed { messages } => {
                if let Some(until) = self.work.add(messages, Instant::now()) {
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            PacketOutcome::Duplicate => {
                tracing::debug!(packet_id = ?packet_id, "duplicate packet dropped");
            }
            PacketOutcome::Invalid(error) => self.log_invalid(message, &error),
        }
    }

    /// A native analyzer's batch: its packets analyzed one by one, as if each had come alone,
    /// read straight from the batch (its payload's slices, its per-packet lists). Making each
    /// packet a message of its own ([`Part::of`]), with a header map, cost 4,994 instructions a
    /// packet; without it the whole analyzer took 415 M instructions for 20,000 single
    /// messages instead of 557 M (`scripts/callgrind-analyzer.sh 20000 10`). The forwarding
    /// analyzers still need the messages.
    async fn analyze_batch(&mut self, message: &Message, parts: &[batch::BatchPart<'_>]) {
        for part in parts {
            let payload = &message.payload[part.range.clone()];
            let meta = PacketMeta {
                packet_id: part.packet_id,
                sent_at_ns: part.sent_at.and_then(parse_sent_at),
            };
            let outcome = self.analyze(payload, meta);
            self.settle_analyzed(outcome, part.packet_id, message).await;
        }
    }

    /// An HTTP or process analyzer's batch: its packets forwarded one by one, as if each had
    /// come alone (the caller checks there is a forwarder; a native analyzer reads its batches
    /// in place, [`analyze_batch`](Self::analyze_batch)). The batch's reply is returned at once
    /// if nothing was dispatched, else by [`settle`](Self::settle) when the last packet is
    /// settled. In at-least-once mode a batch with a packet that failed for good is not
    /// acknowledged: the distributor re-routes its packets one by one (those delivered are then
    /// repeats, dropped by packet id here, or delivered again elsewhere, as at-least-once
    /// allows).
    fn forward_batch(&mut self, message: Message, parts: Vec<Message>) -> Option<Subject> {
        let Some(forward) = self.forward.as_mut() else {
            return message.reply;
        };
        let mut dispatched = 0;
        for part in parts {
            let packet_id = part
                .headers
                .as_ref()
                .and_then(|h| h.get(self.packet_id_header.clone()))
                .map(|v| v.as_str());
            if packet_id.is_some_and(|id| self.analysis.seen(id)) {
                self.analysis.count_duplicate();
                continue;
            }
            forward.forwarder.dispatch(part);
            dispatched += 1;
        }
        match message.reply {
            Some(reply) if dispatched > 0 => {
                self.batches.insert(
                    reply.to_string(),
                    BatchAck {
                        remaining: dispatched,
                        failed: false,
                    },
                );
                None
            }
            reply => reply,
        }
    }

    /// What the transport tells about `message`.
    fn meta<'m>(&self, message: &'m Message) -> PacketMeta<'m> {
        let message_headers = message.headers.as_ref();
        PacketMeta {
            packet_id: message_headers
                .and_then(|h| h.get(self.packet_id_header.clone()))
                .map(|v| v.as_str()),
            sent_at_ns: message_headers
                .and_then(|h| h.get(self.sent_at_header.clone()))
                .and_then(|v| parse_sent_at(v.as_str())),
        }
    }

    /// Analyzes `payload` (all of `message`'s, or the part an HTTP analyzer delivered) with
    /// `message`'s headers, printing it with `--print`.
    fn count(&mut self, payload: &[u8], message: &Message) -> PacketOutcome {
        let meta = self.meta(message);
        self.analyze(payload, meta)
    }

    /// Analyzes `payload` with what the transport told about it, printing it with `--print`.
    fn analyze(&mut self, payload: &[u8], meta: PacketMeta<'_>) -> PacketOutcome {
        let now_ns = headers::unix_nanos_now();
        match self.printer.as_mut() {
            Some(printer) => {
                let outcome = self.analysis.analyze(payload, meta, now_ns, |r| {
                    let _ = printer.print(r);
                });
                let _ = printer.flush();
                outcome
            }
            None => self.analysis.analyze(payload, meta, now_ns, |_| {}),
        }
    }

    /// Packets handled so far, however they ended (analyzed, repeats, invalid), and the log
    /// messages analyzed in them.
    fn handled(&self) -> Handled {
        Handled {
            packets: self.analysis.packets()
                + self.analysis.duplicates()
                + self.analysis.invalid_packets(),
            messages: self.analysis.messages(),
        }
    }

    /// Whether another packet may be taken (an HTTP analyzer bounds the packets out).
    fn has_room(&self) -> bool {
        self.forward.as_ref().is_none_or(|f| f.forwarder.has_room())
    }

    fn forward_in_flight(&self) -> usize {
        self.forward.as_ref().map_or(0, |f| f.forwarder.in_flight())
    }

    fn forward_url(&self) -> Option<&str> {
        self.forward.as_ref().map(|f| f.forwarder.url())
    }

    fn give_up(&self) {
        if let Some(f) = self.forward.as_ref() {
            f.forwarder.give_up();
        }
    }

    /// `stats` with the forwarding counters of an HTTP analyzer.
    fn report(&self, mut stats: AnalyzerStats) -> AnalyzerStats {
        stats.forward = self
            .forward
            .as_ref()
            .map(|f| f.forwarder.stats(f.deadletter_messages));
        stats
    }

    /// An HTTP analyzer's packet is settled: dead-letter what the endpoint refused (and, in
    /// at-most-once mode, what could not be delivered), count what it took, and return the
    /// reply subject to acknowledge. In at-least-once mode a packet with a request that failed
    /// for good is neither counted nor acknowledged: the distributor re-routes it whole.
    async fn settle(&mut self, done: Forwarded) -> Option<Subject> {
        let reply = done.message.reply.clone();
        let settled = self.settle_packet(done).await;
        let Some(reply) = reply else {
            return settled;
        };
        let Some(batch) = self.batches.get_mut(reply.as_str()) else {
            return settled;
        };
        batch.remaining -= 1;
        batch.failed |= settled.is_none();
        if batch.remaining > 0 {
            return None;
        }
        let batch = self.batches.remove(reply.as_str()).expect("present");
        (!batch.failed).then_some(reply)
    }

    /// [`settle`](Self::settle) for one packet (alone, or of a batch).
    async fn settle_packet(&mut self, done: Forwarded) -> Option<Subject> {
        let forward = self.forward.as_mut()?;
        forward.forwarder.settled();
        let Forwarded { message, outcome } = done;
        let deliveries = match outcome {
            Ok(deliveries) => deliveries,
            Err(_) => {
                // Not JSON at all (never from a distributor): counted as invalid and acked.
                if let PacketOutcome::Invalid(error) = self.count(&message.payload, &message) {
                    self.log_invalid(&message, &error);
                }
                return message.reply;
            }
        };
        let at_least_once = message.reply.is_some();
        if at_least_once
            && deliveries
                .iter()
                .any(|(_, d)| matches!(d, Delivery::Failed { .. }))
        {
            if !forward.failed_logged {
                tracing::warn!(url = %forward.forwarder.url(), "packets not delivered within --forward-retry-for are not acknowledged; the distributor re-routes them (further ones at debug level)");
                forward.failed_logged = true;
            }
            return None;
        }
        if deliveries.iter().all(|(_, d)| *d == Delivery::Delivered) {
            let outcome = self.count(&message.payload, &message);
            if let PacketOutcome::Invalid(error) = outcome {
                self.log_invalid(&message, &error);
            }
            return message.reply;
        }
        // Some requests were refused (or, at-most-once, failed): those go to the dead letters.
        let url = forward.forwarder.url().to_string();
        let elements = forward::elements(&message.payload).unwrap_or_default();
        let mut delivered = Vec::new();
        let mut published_all = true;
        for (index, delivery) in &deliveries {
            let (code, reason, status) = match delivery {
                Delivery::Delivered => {
                    if let Some(element) = index.and_then(|i| elements.get(i)) {
                        delivered.push(element.get());
                    }
                    continue;
                }
                Delivery::Rejected { status, answer } => (
                    forward::CODE_HTTP_REJECTED,
                    format!("HTTP {status} from {url}: {answer}"),
                    Some(*status),
                ),
                Delivery::Failed {
                    attempts,
                    last_error,
                } => (
                    forward::CODE_FORWARD_FAILED,
                    format!("not delivered to {url} in {attempts} attempts (--forward-retry-for): {last_error}"),
                    None,
                ),
            };
            let (payload, messages) = match index.and_then(|i| elements.get(i)) {
                Some(element) => (bytes::Bytes::copy_from_slice(element.get().as_bytes()), 1),
                None => (message.payload.clone(), elements.len().max(1) as u64),
            };
            let dead_letter = forward::deadletter_headers(
                message.headers.as_ref(),
                code,
                &reason,
                message.subject.as_str(),
                *index,
                status,
                &forward.analyzer,
            );
            match forward
                .client
                .publish_with_headers(forward.deadletter_subject.clone(), dead_letter, payload)
                .await
            {
                Ok(()) => {
                    forward.deadletter_messages += messages;
                    tracing::debug!(code, reason = %reason, "dead-lettered");
                }
                Err(e) => {
                    published_all = false;
                    tracing::warn!(error = %e, subject = %forward.deadletter_subject, "cannot publish a dead letter");
                }
            }
        }
        if !published_all && at_least_once {
            // Not acknowledged: the distributor sends the packet again.
            return None;
        }
        if delivered.is_empty() {
            if let Some(id) = self.meta(&message).packet_id {
                let id = id.to_string();
                self.analysis.mark_seen(&id);
            }
        } else {
            let part = format!("[{}]", delivered.join(","));
            self.count(part.as_bytes(), &message);
        }
        message.reply
    }

    /// Counted in the stats; logged once so a stream of bad packets cannot flood logs.
    fn log_invalid(&mut self, message: &Message, error: &logdist::PacketError) {
        if !self.invalid_logged {
            tracing::warn!(
                subject = %message.subject,
                code = error.code(),
                %error,
                "invalid packet (counted in invalid_packets; further ones are logged at debug level)"
            );
            self.invalid_logged = true;
        } else {
            tracing::debug!(code = error.code(), %error, "invalid packet");
        }
    }

    fn finish(&mut self) {
        if let Some(printer) = self.printer.as_mut() {
            let _ = printer.flush();
        }
        let latency = self.analysis.latency();
        if latency.clock_skewed() > 0 {
            tracing::warn!(
                packets = latency.clock_skewed(),
                "packets had a Logdist-Sent-At in the future (clock skew between hosts); their latency was recorded as 0"
            );
        }
        if self.analysis.untracked_source_messages() > 0 {
            tracing::warn!(
                messages = self.analysis.untracked_source_messages(),
                "messages came from sources beyond the tracked limit; they are not in top_sources"
            );
        }
    }
}

/// The next settled packet of an HTTP analyzer; never ready for a native one.
async fn next_forwarded(
    forwarded: &mut Option<mpsc::UnboundedReceiver<Forwarded>>,
) -> Option<Forwarded> {
    match forwarded {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// `--checkpoint-packets` and `--checkpoint-messages`: a checkpoint before the interval is over
/// once that many packets were handled, or that many log messages analyzed, since the last one
/// and acknowledgements wait. Under load the acknowledgements then flow every few milliseconds
/// instead of every `--checkpoint-interval`, so the distributors' windows of packets in flight
/// keep moving; the writer merges checkpoints queued while it writes, so the writes never outrun
/// the KV store. The message bound is for large packets: 256 packets of 100 messages are a
/// whole interval's worth at a rate the packet bound alone never cuts short.
struct EarlyCheckpoint {
    every_packets: u64,
    every_messages: u64,
    /// Packets and messages handled when the last checkpoint was handed to the writer.
    mark: Handled,
}

/// What a [`PacketHandler`] has handled so far.
#[derive(Clone, Copy, Default)]
struct Handled {
    packets: u64,
    messages: u64,
}

impl EarlyCheckpoint {
    fn new(every_packets: u64, every_messages: u64) -> Self {
        EarlyCheckpoint {
            every_packets,
            every_messages,
            mark: Handled::default(),
        }
    }

    fn due(&self, handler: &PacketHandler, pending: &[Subject]) -> bool {
        !pending.is_empty() && self.due_at(handler.handled())
    }

    fn due_at(&self, now: Handled) -> bool {
        now.packets - self.mark.packets >= self.every_packets
            || now.messages - self.mark.messages >= self.every_messages
    }

    fn written(&mut self, handler: &PacketHandler) {
        self.mark = handler.handled();
    }
}

/// Checkpoints the writer may queue before the analysis waits for it (back-pressure on a slow
/// KV store instead of unbounded memory).
const CHECKPOINT_QUEUE: usize = 16;

/// One stats write, and the acknowledgements that may go out once it succeeded.
struct Checkpoint {
    stats: AnalyzerStats,
    replies: Vec<Subject>,
}

/// Where each stats record goes: the KV writer, and `/metrics` when it is on.
struct StatsFeed {
    tx: mpsc::Sender<Checkpoint>,
    metrics: Option<LatestSnapshot<AnalyzerSnapshot>>,
}

impl StatsFeed {
    /// Makes `stats` (with the latency histogram of the same moment) what `/metrics` renders.
    fn publish_metrics(&self, stats: &AnalyzerStats, latency: &LatencyHistogram) {
        if let Some(latest) = &self.metrics {
            latest.publish(AnalyzerSnapshot {
                stats: stats.clone(),
                latency: latency.buckets(),
            });
        }
    }
}

/// Hands `stats` and the pending replies to the writer, and the same record to `/metrics`. A
/// report with nothing to acknowledge is skipped when the writer is behind (the next one carries
/// newer numbers); one with replies waits for room.
async fn send_checkpoint(
    feed: &StatsFeed,
    stats: AnalyzerStats,
    latency: &LatencyHistogram,
    pending: &mut Vec<Subject>,
) {
    feed.publish_metrics(&stats, latency);
    let tx = &feed.tx;
    let checkpoint = Checkpoint {
        stats,
        replies: std::mem::take(pending),
    };
    if checkpoint.replies.is_empty() {
        let _ = tx.try_send(checkpoint);
    } else if tx.send(checkpoint).await.is_err() {
        tracing::warn!(
            "stats writer stopped; acknowledgements dropped (the packets will be redelivered)"
        );
    }
}

/// Writes each checkpoint's stats to `key`, in order, and after a successful write sends the
/// replies that waited for it. Queued checkpoints are merged (newest stats, every reply). When a
/// write fails it is retried soon (with the newest stats queued by then) until it succeeds; its
/// replies wait for that. Runs until the sender is dropped and the last write succeeded; the
/// caller bounds the wait for it at shutdown.
async fn write_checkpoints(
    bucket: async_nats::jetstream::kv::Store,
    key: String,
    client: Client,
    mut checkpoints: mpsc::Receiver<Checkpoint>,
) {
    let mut unacknowledged: Vec<Subject> = Vec::new();
    while let Some(Checkpoint { mut stats, replies }) = checkpoints.recv().await {
        unacknowledged.extend(replies);
        let mut retry_in = WRITE_RETRY_MIN;
        let mut failures = 0u32;
        loop {
            while let Ok(newer) = checkpoints.try_recv() {
                stats = newer.stats;
                unacknowledged.extend(newer.replies);
            }
            let value = serde_json::to_vec(&stats).expect("stats always serialize");
            let error = match tokio::time::timeout(WRITE_TIMEOUT, bucket.put(&key, value.into()))
                .await
            {
                Ok(Ok(_)) => {
                    if failures > 0 {
                        tracing::info!(key = %key, failures, "stats written again; sending the acknowledgements that waited");
                    }
                    for reply in unacknowledged.drain(..) {
                        if let Err(e) = client.publish(reply, bytes::Bytes::new()).await {
                            tracing::warn!(error = %e, "cannot acknowledge packet");
                        }
                    }
                    break;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {WRITE_TIMEOUT:?}"),
            };
            if failures == 0 {
                tracing::warn!(key = %key, error = %error, pending_acks = unacknowledged.len(), "cannot write stats; retrying, acknowledgements wait for a successful write");
            }
            failures += 1;
            // JetStream is electing a leader or the client is reconnecting: retry soon (with
            // newer counts, if any), so the replies are not held past the distributors'
            // --request-timeout for longer than the outage itself. The caller bounds the wait at
            // shutdown.
            tokio::time::sleep(retry_in).await;
            retry_in = (retry_in * 2).min(WRITE_RETRY_MAX);
        }
    }
}

/// Longest wait for one stats write: a write during a JetStream leader election can otherwise
/// hang for the client's whole request time-out (5 s) before it is retried.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Back-off between retries of a failed stats write: 50 ms, doubling, at most 500 ms.
const WRITE_RETRY_MIN: Duration = Duration::from_millis(50);
const WRITE_RETRY_MAX: Duration = Duration::from_millis(500);

/// Prints a report's summary line on stdout (what the user runs the analyzer to see).
fn print_summary(stats: &AnalyzerStats) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", summary_line(stats));
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::{EarlyCheckpoint, Handled};

    fn handled(packets: u64, messages: u64) -> Handled {
        Handled { packets, messages }
    }

    #[test]
    fn an_early_checkpoint_is_due_after_either_bound() {
        let mut early = EarlyCheckpoint::new(256, 4096);
        assert!(!early.due_at(handled(255, 255)));
        assert!(early.due_at(handled(256, 256)), "256 single messages");
        assert!(!early.due_at(handled(40, 4000)));
        assert!(
            early.due_at(handled(41, 4100)),
            "41 packets of 100 messages"
        );
        early.mark = handled(41, 4100);
        assert!(
            !early.due_at(handled(81, 8100)),
            "counted from the last checkpoint"
        );
        assert!(early.due_at(handled(82, 8200)));
    }
}
