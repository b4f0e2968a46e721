//! The async shell around [`Analysis`]: connect, subscribe, announce, analyze, report, and shut
//! down in the order the protocol needs.
//!
//! Three tasks run:
//! - this one owns the subscription and the counters (so the hot path takes no lock), acks each
//!   request-style packet after analyzing it, and snapshots the counters every report interval;
//! - the heartbeat task ([`crate::heartbeat`]) keeps the instance in the distributors' routing;
//! - the stats publisher writes the latest snapshot to the stats bucket, so a slow or unreachable
//!   JetStream never stalls the analysis (a snapshot that is overtaken is simply skipped).
//!
//! Start-up: subscribe `<prefix>.<id>` in queue group `<prefix>.<id>`, flush (the server now
//! knows the subscription), and only then announce, so no packet is routed here before we listen.
//!
//! Shutdown (SIGINT/SIGTERM): stop heartbeating, send the withdrawal and flush it, so distributors
//! stop routing here first; then drain the subscription (unsubscribe, and analyze everything
//! already delivered), print the final summary, write the final stats with state `down`.

use std::io::{self, Stdout, Write};
use std::time::Instant;

use async_nats::{Client, HeaderName, Message};
use futures::StreamExt;
use logdist::buckets::{self, BucketError};
use logdist::connect::{self, ConnectError};
use logdist::control::Heartbeat;
use logdist::headers;
use logdist::stats::{analyzer_key, AnalyzerStats};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::analysis::{Analysis, PacketMeta, PacketOutcome};
use crate::config::AnalyzerConfig;
use crate::heartbeat::{self, ControlPublishError};
use crate::latency::parse_sent_at;
use crate::printer::RecordPrinter;
use crate::report::{summary_line, Reporter, STATE_DOWN, STATE_UP};
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
    #[error("shutdown was not clean: {}", .0.join("; "))]
    UncleanShutdown(Vec<String>),
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
    let connection = match connect::connect(&config.nats, &client_name, &shutdown).await {
        Ok(connection) => connection,
        Err(ConnectError::Cancelled { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let client = connection.client;
    let started = Instant::now();

    let jetstream = async_nats::jetstream::new(client.clone());
    let stats_bucket = buckets::open_or_create(
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
    client
        .flush()
        .await
        .map_err(|e| ServiceError::SubscribeFlush {
            subject: subject.clone(),
            detail: e.to_string(),
        })?;

    let heartbeat_stop = CancellationToken::new();
    let heartbeats = tokio::spawn(heartbeat::run_heartbeats(
        client.clone(),
        config.names.control_subject.clone(),
        Heartbeat {
            id: id.to_string(),
            weight: config.weight,
            instance: instance.to_string(),
            interval_ms: config.heartbeat_interval.as_millis() as u64,
        },
        config.heartbeat_interval,
        heartbeat_stop.clone(),
    ));

    let mut reporter = Reporter::new(id, instance, config.weight, started);
    let mut handler = PacketHandler::new(client.clone(), config);
    let (stats_tx, stats_rx) =
        watch::channel(reporter.snapshot(&handler.analysis, STATE_UP, started));
    let stats_publisher = tokio::spawn(publish_stats(
        stats_bucket,
        analyzer_key(id, instance),
        stats_rx,
    ));
    tracing::info!(
        analyzer_id = %id,
        instance = %instance,
        weight = config.weight,
        subject = %subject,
        "analyzer online"
    );

    let mut report_ticks = tokio::time::interval_at(
        (started + config.report_interval).into(),
        config.report_interval,
    );
    report_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut subscription_closed = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = report_ticks.tick() => {
                let stats = reporter.snapshot(&handler.analysis, STATE_UP, Instant::now());
                print_summary(&stats);
                stats_tx.send_replace(stats);
            }
            message = subscriber.next() => match message {
                Some(message) => handler.handle(message).await,
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
    heartbeat_stop.cancel();
    let _ = heartbeats.await;
    let withdrawal = heartbeat::withdraw(&client, &config.names.control_subject, id, instance);
    match tokio::time::timeout(limit, withdrawal).await {
        Ok(Ok(())) => tracing::info!(analyzer_id = %id, instance = %instance, "withdrawn"),
        Ok(Err(e)) => problems.push(e.to_string()),
        Err(_) => problems.push(
            ControlPublishError::Flush {
                subject: config.names.control_subject.clone(),
                detail: format!("no answer from the server within {limit:?}"),
            }
            .to_string(),
        ),
    }
    // The withdrawal's flush also proved that every packet the server sent before it has been
    // read into the subscription's queue; the drain below hands those over, then ends the stream.
    if !subscription_closed {
        if let Err(e) = subscriber.drain().await {
            problems.push(format!("cannot drain {subject:?}: {e}"));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, subscriber.next()).await {
                Ok(Some(message)) => handler.handle(message).await,
                Ok(None) => break,
                Err(_) => {
                    problems.push(format!(
                        "draining {subject:?} did not finish within {limit:?}"
                    ));
                    break;
                }
            }
        }
    }
    handler.finish();
    let final_stats = reporter.snapshot(&handler.analysis, STATE_DOWN, Instant::now());
    print_summary(&final_stats);
    stats_tx.send_replace(final_stats.clone());
    drop(stats_tx);
    match tokio::time::timeout(limit, stats_publisher).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => problems.push(e),
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

/// Handles one delivered packet at a time: analysis, optional printing, simulated work, ack.
struct PacketHandler {
    client: Client,
    analysis: Analysis,
    work: SimulatedWork,
    printer: Option<RecordPrinter<Stdout>>,
    // Header names built once: looking up by `&str` would allocate a name per packet.
    packet_id_header: HeaderName,
    sent_at_header: HeaderName,
    invalid_logged: bool,
}

impl PacketHandler {
    fn new(client: Client, config: &AnalyzerConfig) -> Self {
        PacketHandler {
            client,
            analysis: Analysis::new(config.dedup_window),
            work: SimulatedWork::new(config.work_per_message),
            printer: config.print.then(|| RecordPrinter::new(io::stdout())),
            packet_id_header: headers::PACKET_ID
                .parse()
                .expect("the contract's header names are valid"),
            sent_at_header: headers::SENT_AT
                .parse()
                .expect("the contract's header names are valid"),
            invalid_logged: false,
        }
    }

    /// Analyzes `message`, then acknowledges it if it asks for a reply: the ack promises the
    /// packet was analyzed, so it is sent last (duplicates and invalid packets are acked too,
    /// since redelivering them cannot change the outcome).
    async fn handle(&mut self, message: Message) {
        let message_headers = message.headers.as_ref();
        let meta = PacketMeta {
            packet_id: message_headers
                .and_then(|h| h.get(self.packet_id_header.clone()))
                .map(|v| v.as_str()),
            sent_at_ns: message_headers
                .and_then(|h| h.get(self.sent_at_header.clone()))
                .and_then(|v| parse_sent_at(v.as_str())),
        };
        let now_ns = headers::unix_nanos_now();
        let outcome = match self.printer.as_mut() {
            Some(printer) => {
                let outcome = self.analysis.analyze(&message.payload, meta, now_ns, |r| {
                    let _ = printer.print(r);
                });
                let _ = printer.flush();
                outcome
            }
            None => self
                .analysis
                .analyze(&message.payload, meta, now_ns, |_| {}),
        };
        match outcome {
            PacketOutcome::Analyzed { messages } => {
                if let Some(until) = self.work.add(messages, Instant::now()) {
                    tokio::time::sleep_until(until.into()).await;
                }
            }
            PacketOutcome::Duplicate => {
                tracing::debug!(packet_id = ?meta.packet_id, "duplicate packet dropped");
            }
            PacketOutcome::Invalid(error) => {
                // Counted in the stats; logged once so a stream of bad packets cannot flood logs.
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
        }
        if let Some(reply) = message.reply {
            if let Err(e) = self.client.publish(reply, bytes::Bytes::new()).await {
                tracing::warn!(error = %e, "cannot acknowledge packet");
            }
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

/// Writes the newest stats snapshot to `key` whenever one is sent, until the sender is dropped
/// (after which the last snapshot is still written). Returns the last write's error, if any.
async fn publish_stats(
    bucket: async_nats::jetstream::kv::Store,
    key: String,
    mut snapshots: watch::Receiver<AnalyzerStats>,
) -> Result<(), String> {
    loop {
        let stats = snapshots.borrow_and_update().clone();
        let value = serde_json::to_vec(&stats).expect("stats always serialize");
        let result = match bucket.put(&key, value.into()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "cannot write stats");
                Err(format!("cannot write stats key {key:?}: {e}"))
            }
        };
        if snapshots.changed().await.is_err() {
            return result;
        }
    }
}

/// Prints a report's summary line on stdout (what the user runs the analyzer to see).
fn print_summary(stats: &AnalyzerStats) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", summary_line(stats));
    let _ = out.flush();
}
