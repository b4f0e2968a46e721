//! The simulated agents: one task per agent, spread over a few shared NATS connections, each
//! publishing packets to `<ingest>.<agent-id>` with the `Logdist-Agent`, `Logdist-Seq` and
//! `Logdist-Sent-At` headers, paced to the requested total message rate.
//!
//! Content is generated ahead into a small pool per agent and re-stamped when older than a
//! second, so the generator does not cap the send rate on a small machine.
//!
//! With `--publish jetstream` each packet is published through JetStream instead and counted as
//! sent only once the stream acknowledged storing it. Each agent keeps at most `--ack-window`
//! packets awaiting their acknowledgement (each in its own task, so they overlap); a packet whose
//! publish or acknowledgement fails is published again after a short back-off until
//! `--retry-timeout`, with the same `Nats-Msg-Id` (`<run>:<agent>:<seq>`), so that the stream's
//! duplicate window drops a re-publish of a packet an earlier attempt stored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{
    GetStreamByNameErrorKind, PublishAckFuture, PublishError, PublishErrorKind,
};
use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PublishMode};
use crate::generator::LogGenerator;

/// Packets generated ahead per agent.
const POOL: usize = 16;
/// A pooled packet older than this is generated again (fresh timestamps).
const POOL_MAX_AGE: Duration = Duration::from_secs(1);

/// Running totals, shared by the agents and read by the progress display.
#[derive(Debug, Default)]
pub struct SendCounters {
    pub packets: AtomicU64,
    /// Log messages in valid packets.
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    /// Malformed packets sent on purpose (--invalid-ratio).
    pub invalid_packets: AtomicU64,
    /// Messages reserved against --count (may run ahead of `messages` by packets in flight).
    reserved: AtomicU64,
    pub done: AtomicBool,
    /// --publish jetstream: publishes after a packet's first.
    pub retries: AtomicU64,
    /// --publish jetstream: acknowledgements saying the stream already had the packet (an
    /// earlier attempt stored it and its acknowledgement was lost).
    pub duplicate_acks: AtomicU64,
    /// --publish jetstream: packets not stored within --retry-timeout (and their valid messages).
    pub failed_packets: AtomicU64,
    pub failed_messages: AtomicU64,
    /// --publish jetstream: the last publish error seen (retried or final).
    last_error: Mutex<Option<String>>,
    /// --publish jetstream: the stream that stored the packets (from the acknowledgements).
    stream: OnceLock<String>,
}

impl SendCounters {
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
    pub fn invalid_packets(&self) -> u64 {
        self.invalid_packets.load(Ordering::Relaxed)
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Counts one packet as sent (core: published; jetstream: stored).
    fn count_sent(&self, bytes: u64, messages: u32, invalid: bool) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if invalid {
            self.invalid_packets.fetch_add(1, Ordering::Relaxed);
        } else {
            self.messages.fetch_add(messages as u64, Ordering::Relaxed);
        }
    }

    fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What was sent, once all agents are done. With `--publish jetstream`, "sent" means stored in
/// the stream (acknowledged); packets that never were are counted in `failed_*`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SendTotals {
    pub packets: u64,
    /// Valid log messages sent.
    pub messages: u64,
    pub bytes: u64,
    pub invalid_packets: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub megabytes_per_sec: f64,
    /// `core` or `jetstream` (--publish).
    pub publish: PublishMode,
    /// JetStream: publishes after a packet's first (0 with core publishing).
    pub retries: u64,
    /// JetStream: re-publishes the stream recognised by `Nats-Msg-Id` and did not store again.
    pub duplicate_acks: u64,
    /// JetStream: packets (and valid messages in them) not stored within --retry-timeout.
    pub failed_packets: u64,
    pub failed_messages: u64,
    /// JetStream: the last publish error seen, retried or final.
    pub last_publish_error: Option<String>,
    /// JetStream: the stream that acknowledged the packets.
    pub stream: Option<String>,
}

/// Runs every agent until the duration or count is reached, or `shutdown` is cancelled; then
/// flushes the connections so everything counted as sent has left this process.
pub async fn send_all(
    config: &Config,
    clients: &[Client],
    counters: Arc<SendCounters>,
    shutdown: CancellationToken,
) -> anyhow::Result<SendTotals> {
    let start = Instant::now();
    let deadline = match config.count {
        Some(_) => None,
        None => Some(start + config.duration),
    };
    let shares = config.agent_shares();
    // With skew, an agent starts at a random point of its first packet interval, so an agent
    // slower than one packet per run does not send its first packet at once.
    let mean_packet = f64::from(config.packet_size.min + config.packet_size.max) / 2.0;
    let acked = match config.publish {
        PublishMode::Core => None,
        PublishMode::Jetstream => Some(Arc::new(Acked::new(
            config,
            clients,
            counters.clone(),
            shutdown.clone(),
        ))),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..config.agents {
        let client = n as usize % clients.len();
        let publisher = match &acked {
            None => Publisher::Core(clients[client].clone()),
            Some(acked) => Publisher::JetStream {
                js: acked.contexts[client].clone(),
                window: Arc::new(Semaphore::new(config.ack_window as usize)),
                window_size: config.ack_window,
                acked: acked.clone(),
            },
        };
        let agent = Agent {
            id: format!("{}-{n}", config.agent_prefix),
            subject: async_nats::Subject::from(config.subject.clone().unwrap_or_else(|| {
                config
                    .names
                    .agent_ingest_subject(&format!("{}-{n}", config.agent_prefix))
            })),
            publisher,
            generator: LogGenerator::new(config.seed.wrapping_add(n as u64), config.packet_size),
            invalid_ratio: config.invalid_ratio,
            per_agent_rate: config.rate as f64 * shares[n as usize],
            start_offset: if config.agent_skew > 0.0 {
                let id = format!("{}-{n}", config.agent_prefix);
                let roll = rand_roll(id.as_bytes()).wrapping_add(config.seed);
                let phase =
                    (roll.wrapping_mul(6364136223846793005) >> 11) as f64 / (1u64 << 53) as f64;
                phase * mean_packet
            } else {
                0.0
            },
            count: config.count,
            deadline,
            counters: counters.clone(),
            shutdown: shutdown.clone(),
        };
        tasks.spawn(agent.run(start));
    }
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.cancel();
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("agent task failed: {e}"));
            }
        }
    }
    counters.done.store(true, Ordering::Relaxed);
    if let Some(error) = acked.as_ref().and_then(|a| a.fatal_error()) {
        return Err(anyhow::anyhow!(error));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Core: what was published must have left this process. JetStream: the acknowledgements
    // already prove more (and a flush would wait for a server that may be gone).
    if acked.is_none() {
        for client in clients {
            client.flush().await?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let messages = counters.messages();
    let bytes = counters.bytes.load(Ordering::Relaxed);
    Ok(SendTotals {
        packets: counters.packets.load(Ordering::Relaxed),
        messages,
        bytes,
        invalid_packets: counters.invalid_packets(),
        seconds,
        messages_per_sec: messages as f64 / seconds.max(1e-9),
        megabytes_per_sec: bytes as f64 / 1e6 / seconds.max(1e-9),
        publish: config.publish,
        retries: counters.retries(),
        duplicate_acks: counters.duplicate_acks.load(Ordering::Relaxed),
        failed_packets: counters.failed_packets.load(Ordering::Relaxed),
        failed_messages: counters.failed_messages.load(Ordering::Relaxed),
        last_publish_error: counters.last_error(),
        stream: counters.stream.get().cloned(),
    })
}

/// How one agent publishes.
enum Publisher {
    /// Core NATS, fire and forget.
    Core(Client),
    /// JetStream with acknowledgements; `window` bounds this agent's packets awaiting one.
    JetStream {
        js: jetstream::Context,
        window: Arc<Semaphore>,
        window_size: u32,
        acked: Arc<Acked>,
    },
}

/// Shared by every agent of a `--publish jetstream` run.
struct Acked {
    /// One JetStream context per connection, its timeout = --ack-timeout.
    contexts: Vec<jetstream::Context>,
    /// Distinguishes this run's `Nats-Msg-Id`s from an earlier run's (same agent ids, same
    /// sequence numbers) inside the stream's duplicate window.
    run_id: String,
    retry_timeout: Duration,
    counters: Arc<SendCounters>,
    shutdown: CancellationToken,
    /// Set when the run cannot go on (no stream captures the subject).
    fatal: CancellationToken,
    fatal_error: Mutex<Option<String>>,
    /// When the stream was last looked up after a "no responders".
    last_stream_check: tokio::sync::Mutex<Option<Instant>>,
    ingest_subject: String,
    /// A warning was logged for the first retry / the first failed packet.
    warned_retry: AtomicBool,
    warned_failure: AtomicBool,
}

/// Back-off before the first retry of a packet; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// "no responders" during a leader election is normal; the stream is looked up at most this often.
const STREAM_CHECK_EVERY: Duration = Duration::from_secs(5);

impl Acked {
    fn new(
        config: &Config,
        clients: &[Client],
        counters: Arc<SendCounters>,
        shutdown: CancellationToken,
    ) -> Acked {
        let agents_per_client = (config.agents as usize).div_ceil(clients.len());
        let contexts = clients
            .iter()
            .map(|client| {
                jetstream::ContextBuilder::new()
                    .timeout(config.ack_timeout)
                    // Never the limit: each agent's window is.
                    .max_ack_inflight(agents_per_client * config.ack_window as usize)
                    .backpressure_on_inflight(true)
                    .build(client.clone())
            })
            .collect();
        let run_id = format!(
            "{:x}-{:x}",
            logdist::protocol::headers::unix_nanos_now(),
            std::process::id()
        );
        Acked {
            contexts,
            run_id,
            retry_timeout: config.retry_timeout,
            counters,
            shutdown,
            fatal: CancellationToken::new(),
            fatal_error: Mutex::new(None),
            last_stream_check: tokio::sync::Mutex::new(None),
            ingest_subject: config.names.ingest_subject.clone(),
            warned_retry: AtomicBool::new(false),
            warned_failure: AtomicBool::new(false),
        }
    }

    fn fatal_error(&self) -> Option<String> {
        self.fatal_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a "no responders": is there a stream for `subject` at all? In a cluster the stream
    /// has no subscriber while it elects a leader, so "no responders" alone proves nothing; the
    /// JetStream API saying that no stream matches the subject does, and ends the run.
    async fn check_stream(&self, js: &jetstream::Context, subject: &str) {
        {
            let mut last = self.last_stream_check.lock().await;
            if last.is_some_and(|t| t.elapsed() < STREAM_CHECK_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match js.stream_by_subject(subject).await {
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                let ingest = &self.ingest_subject;
                let message = format!(
                    "--publish jetstream: no JetStream stream captures {subject} (the publish got \
                     \"no responders\" and the server lists no stream for the subject). Start the \
                     distributor with `--delivery at-least-once`, which creates the stream LOGS \
                     capturing {ingest} and {ingest}.>, before agent-sim; or publish with \
                     --publish core"
                );
                self.fatal_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(message);
                self.fatal.cancel();
                // Stops the other agents too; send_all reports the error above all others.
                self.shutdown.cancel();
            }
            Err(e) => tracing::debug!(error = %e, subject, "stream lookup failed; retrying"),
            Ok(stream) => {
                tracing::debug!(stream, subject, "no responders while the stream exists")
            }
        }
    }
}

/// One packet on its way to the stream.
struct Outgoing {
    subject: async_nats::Subject,
    publish: PublishMessage,
    bytes: u64,
    messages: u32,
    invalid: bool,
}

/// Waits for the acknowledgement of `first` (the packet's first publish) and re-publishes the
/// packet until the stream stored it or --retry-timeout passed; counts the outcome. Holds
/// `_permit` (a slot of the agent's window) until then.
async fn deliver(
    js: jetstream::Context,
    acked: Arc<Acked>,
    packet: Outgoing,
    first: Result<PublishAckFuture, PublishError>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let counters = &acked.counters;
    let mut attempt = first;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = match attempt {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let error = match result {
            Ok(ack) => {
                if ack.duplicate {
                    counters.duplicate_acks.fetch_add(1, Ordering::Relaxed);
                }
                let _ = counters.stream.set(ack.stream);
                counters.count_sent(packet.bytes, packet.messages, packet.invalid);
                return;
            }
            Err(e) => e,
        };
        let permanent = matches!(error.kind(), PublishErrorKind::MaxPayloadExceeded);
        let detail = match error.kind() {
            PublishErrorKind::StreamNotFound => format!(
                "{error} (\"no responders\": no stream captures {}, or it has no leader)",
                packet.subject
            ),
            _ => error.to_string(),
        };
        counters.set_last_error(detail.clone());
        if error.kind() == PublishErrorKind::StreamNotFound {
            acked.check_stream(&js, &packet.subject).await;
        }
        let out_of_time = started.elapsed() + backoff > acked.retry_timeout;
        if permanent || out_of_time || acked.fatal.is_cancelled() || acked.shutdown.is_cancelled() {
            counters.failed_packets.fetch_add(1, Ordering::Relaxed);
            if !packet.invalid {
                counters
                    .failed_messages
                    .fetch_add(packet.messages as u64, Ordering::Relaxed);
            }
            let why = if permanent {
                "it cannot be published"
            } else if out_of_time {
                "gave up after --retry-timeout"
            } else {
                "interrupted"
            };
            // Once per run (the report has the totals); not at all when the run is aborted.
            if (permanent || out_of_time) && !acked.warned_failure.swap(true, Ordering::Relaxed) {
                tracing::warn!(subject = %packet.subject, error = %detail,
                    "a packet was not stored ({why}); the report counts them all");
            }
            return;
        }
        if !acked.warned_retry.swap(true, Ordering::Relaxed) {
            tracing::warn!(subject = %packet.subject, error = %detail,
                "publish not acknowledged; retrying (once stored, retried packets count as sent)");
        }
        tracing::debug!(subject = %packet.subject, error = %detail, ?backoff, "publish failed; retrying");
        // Jitter, so that the packets of a window do not all come back at once.
        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 4);
        tokio::select! {
            _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            _ = acked.fatal.cancelled() => {}
            _ = acked.shutdown.cancelled() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        counters.retries.fetch_add(1, Ordering::Relaxed);
        attempt = js
            .send_publish(packet.subject.clone(), packet.publish.clone())
            .await;
    }
}

struct Agent {
    id: String,
    /// Cheap to clone (shared bytes), once per publish.
    subject: async_nats::Subject,
    publisher: Publisher,
    generator: LogGenerator,
    invalid_ratio: f64,
    per_agent_rate: f64,
    /// Messages' worth of pacing time before this agent's first packet (0 without skew).
    start_offset: f64,
    count: Option<u64>,
    deadline: Option<Instant>,
    counters: Arc<SendCounters>,
    shutdown: CancellationToken,
}

struct Pooled {
    payload: Bytes,
    messages: u32,
    made_at: Instant,
}

impl Agent {
    /// Sends until done, then (JetStream) waits until every packet of this agent is stored or
    /// failed: each is bounded by --retry-timeout plus one --ack-timeout.
    async fn run(mut self, start: Instant) -> anyhow::Result<()> {
        let result = self.send(start).await;
        if let Publisher::JetStream {
            window,
            window_size,
            ..
        } = &self.publisher
        {
            // Every slot back: no packet of this agent is in flight any more.
            let _ = window.acquire_many(*window_size).await;
        }
        result
    }

    async fn send(&mut self, start: Instant) -> anyhow::Result<()> {
        let mut pool: Vec<Pooled> = Vec::with_capacity(POOL);
        let mut seq: u64 = 0;
        let mut next_slot: usize = 0;
        let mut sent_here: u64 = 0; // messages this agent sent, for pacing
        let mut roll = rand_roll(self.id.as_bytes());
        loop {
            if self.shutdown.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            // Pace: this agent's n-th message is due at start + n / rate.
            if self.per_agent_rate > 0.0 {
                let due = start
                    + Duration::from_secs_f64(
                        (sent_here as f64 + self.start_offset) / self.per_agent_rate,
                    );
                if due > Instant::now() {
                    let wake = match self.deadline {
                        Some(d) if d < due => d,
                        _ => due,
                    };
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep_until(wake.into()) => continue,
                    }
                }
            }
            roll = roll
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let invalid = self.invalid_ratio > 0.0
                && ((roll >> 11) as f64 / (1u64 << 53) as f64) < self.invalid_ratio;
            let (payload, messages) = if invalid {
                if !self.reserve(1) {
                    return Ok(());
                }
                (Bytes::from(self.generator.invalid_packet(now_ms())), 0)
            } else {
                let slot = next_slot;
                next_slot = (next_slot + 1) % POOL;
                if pool.len() <= slot || pool[slot].made_at.elapsed() > POOL_MAX_AGE {
                    let len = self.generator.packet_len();
                    let entry = Pooled {
                        payload: Bytes::from(self.generator.packet(len, now_ms())),
                        messages: len,
                        made_at: Instant::now(),
                    };
                    if pool.len() <= slot {
                        pool.push(entry);
                    } else {
                        pool[slot] = entry;
                    }
                }
                let wanted = pool[slot].messages;
                match self.reserve_up_to(wanted) {
                    0 => return Ok(()),
                    n if n == wanted => (pool[slot].payload.clone(), n),
                    n => (Bytes::from(self.generator.packet(n, now_ms())), n),
                }
            };
            seq += 1;
            let mut headers = HeaderMap::new();
            headers.insert(logdist::protocol::headers::AGENT, self.id.as_str());
            headers.insert(logdist::protocol::headers::SEQ, seq.to_string().as_str());
            headers.insert(
                logdist::protocol::headers::SENT_AT,
                logdist::protocol::headers::unix_nanos_now()
                    .to_string()
                    .as_str(),
            );
            let len = payload.len() as u64;
            match &self.publisher {
                Publisher::Core(client) => {
                    client
                        .publish_with_headers(self.subject.clone(), headers, payload)
                        .await?;
                    self.counters.count_sent(len, messages, invalid);
                }
                Publisher::JetStream {
                    js, window, acked, ..
                } => {
                    let permit = tokio::select! {
                        permit = window.clone().acquire_owned() => permit?,
                        _ = acked.fatal.cancelled() => return Ok(()),
                        _ = self.shutdown.cancelled() => return Ok(()),
                    };
                    let id = format!("{}:{}:{seq}", acked.run_id, self.id);
                    let packet = Outgoing {
                        subject: self.subject.clone(),
                        publish: PublishMessage::build()
                            .payload(payload)
                            .headers(headers)
                            .message_id(id),
                        bytes: len,
                        messages,
                        invalid,
                    };
                    // The first publish here, in sequence order; its acknowledgement and any
                    // retries in a task of their own.
                    let first = js
                        .send_publish(packet.subject.clone(), packet.publish.clone())
                        .await;
                    tokio::spawn(deliver(js.clone(), acked.clone(), packet, first, permit));
                }
            }
            sent_here += messages.max(1) as u64;
            if self.per_agent_rate == 0.0 && seq.is_multiple_of(8) {
                // Unpaced, publish rarely waits: let the other agents on this worker run too.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Reserves `n` messages against --count; false when the count is used up.
    fn reserve(&self, n: u32) -> bool {
        self.reserve_up_to(n) == n
    }

    /// Reserves up to `n` messages against --count; returns how many were granted.
    fn reserve_up_to(&self, n: u32) -> u32 {
        let Some(total) = self.count else {
            return n;
        };
        let before = self
            .counters
            .reserved
            .fetch_add(n as u64, Ordering::Relaxed);
        if before >= total {
            0
        } else {
            (total - before).min(n as u64) as u32
        }
    }
}

fn rand_roll(seed: &[u8]) -> u64 {
    seed.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn now_ms() -> u64 {
    logdist::protocol::stats::unix_millis_now()
}
