//! The simulated agents: one task per agent, spread over a few shared NATS connections, each
//! publishing packets to `<ingest>.<agent-id>` with the `Logdist-Agent`, `Logdist-Seq` and
//! `Logdist-Sent-At` headers, paced to the requested total message rate.
//!
//! Content is generated ahead into a small pool per agent and re-stamped when older than a
//! second, so the generator does not cap the send rate on a small machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
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
}

impl SendCounters {
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
    pub fn invalid_packets(&self) -> u64 {
        self.invalid_packets.load(Ordering::Relaxed)
    }
}

/// What was sent, once all agents are done.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SendTotals {
    pub packets: u64,
    /// Valid log messages sent.
    pub messages: u64,
    pub bytes: u64,
    pub invalid_packets: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub megabytes_per_sec: f64,
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
    let per_agent_rate = config.rate as f64 / config.agents as f64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..config.agents {
        let agent = Agent {
            id: format!("{}-{n}", config.agent_prefix),
            subject: async_nats::Subject::from(config.subject.clone().unwrap_or_else(|| {
                config
                    .names
                    .agent_ingest_subject(&format!("{}-{n}", config.agent_prefix))
            })),
            client: clients[n as usize % clients.len()].clone(),
            generator: LogGenerator::new(config.seed.wrapping_add(n as u64), config.packet_size),
            invalid_ratio: config.invalid_ratio,
            per_agent_rate,
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
    for client in clients {
        client.flush().await?;
    }
    counters.done.store(true, Ordering::Relaxed);
    if let Some(e) = first_error {
        return Err(e);
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
    })
}

struct Agent {
    id: String,
    /// Cheap to clone (shared bytes), once per publish.
    subject: async_nats::Subject,
    client: Client,
    generator: LogGenerator,
    invalid_ratio: f64,
    per_agent_rate: f64,
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
    async fn run(mut self, start: Instant) -> anyhow::Result<()> {
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
                let due = start + Duration::from_secs_f64(sent_here as f64 / self.per_agent_rate);
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
            headers.insert(logdist::headers::AGENT, self.id.as_str());
            headers.insert(logdist::headers::SEQ, seq.to_string().as_str());
            headers.insert(
                logdist::headers::SENT_AT,
                logdist::headers::unix_nanos_now().to_string().as_str(),
            );
            let len = payload.len() as u64;
            self.client
                .publish_with_headers(self.subject.clone(), headers, payload)
                .await?;
            sent_here += messages.max(1) as u64;
            if self.per_agent_rate == 0.0 && seq % 8 == 0 {
                // Unpaced, publish rarely waits: let the other agents on this worker run too.
                tokio::task::yield_now().await;
            }
            self.counters.packets.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(len, Ordering::Relaxed);
            if invalid {
                self.counters
                    .invalid_packets
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters
                    .messages
                    .fetch_add(messages as u64, Ordering::Relaxed);
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
    logdist::stats::unix_millis_now()
}
