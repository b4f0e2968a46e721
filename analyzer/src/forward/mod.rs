//! Analyzers that are not our code: HTTP analyzers (`--forward-http URL`) and process analyzers
//! (`--exec 'cmd'`). The analyzer keeps its whole lifecycle (subscription, heartbeats, confirmed
//! withdrawal, drain, stats, checkpointed acknowledgements) and, instead of analyzing a packet
//! itself, POSTs it to an HTTP endpoint or writes it to a child process.
//!
//! - [`format`]: the request bodies of one packet in each `--forward-format`;
//! - [`endpoint`]: the HTTP client — keep-alive pool, bounded requests in flight, time-out,
//!   retries with back-off, what each status means, health probes;
//! - [`health`]: whether the endpoint is healthy; the heartbeat task announces the analyzer only
//!   while it is;
//! - [`process`]: the child process — NDJSON on its stdin with backpressure, restarts with
//!   back-off, the `ack` convention on its stdout;
//! - [`Forwarder`] (here): one task per packet, at most `max_in_flight` packets at once, each
//!   reporting a [`Forwarded`] when every request for it is settled. The service counts a packet
//!   and queues its acknowledgement only then, so in at-least-once mode a packet is acknowledged
//!   only after every request for it got a 2xx (or was refused and dead-lettered).
//!
//! The distributor's bridges for the old service's analyzers run this same code.

mod endpoint;
mod format;
mod health;
mod process;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use logdist::protocol::deadletter::{self, Reason};
use logdist::protocol::headers;
use logdist::protocol::stats::ForwardStats;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use endpoint::Endpoint;
pub use endpoint::{ClientError, Delivery, EndpointSettings};
pub use format::{elements, ForwardFormat, NotAPacket};
use format::{request_bodies, RequestBody};
use health::{Health, HealthMonitor};
pub use process::ProcessSettings;

pub use deadletter::{FORWARD_FAILED as CODE_FORWARD_FAILED, HTTP_REJECTED as CODE_HTTP_REJECTED};

/// Where the packets go, as the command line sets it.
#[derive(Debug, Clone)]
pub enum ForwardSettings {
    Http(HttpSettings),
    Process {
        settings: ProcessSettings,
        max_in_flight: usize,
    },
}

/// An HTTP analyzer's settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub endpoint: EndpointSettings,
    pub format: ForwardFormat,
    pub health_interval: Duration,
    pub unhealthy_after: u32,
}

/// A packet whose requests are all settled.
#[derive(Debug)]
pub struct Forwarded {
    pub message: Message,
    pub outcome: Result<Vec<(Option<usize>, Delivery)>, NotAPacket>,
}

/// Sends packets to the endpoint (one task per packet) or the process, and hands back their
/// outcomes.
pub struct Forwarder {
    backend: Backend,
    in_flight: usize,
    max_in_flight: usize,
    done_tx: mpsc::UnboundedSender<Forwarded>,
    /// Ends the retries of the packets still out (shutdown).
    cancel: CancellationToken,
}

enum Backend {
    Http {
        endpoint: Arc<Endpoint>,
        format: ForwardFormat,
        probes: JoinHandle<()>,
    },
    Process {
        sink: Option<process::ProcessSink>,
        description: String,
    },
}

impl Forwarder {
    /// Sets up the client and starts the health probes, or starts the process; returns the
    /// receiver of outcomes (kept apart so the caller can wait on it while it uses the
    /// forwarder).
    pub fn start(
        settings: &ForwardSettings,
    ) -> Result<(Forwarder, mpsc::UnboundedReceiver<Forwarded>), ClientError> {
        let settings = match settings {
            ForwardSettings::Http(http) => http,
            ForwardSettings::Process {
                settings,
                max_in_flight,
            } => {
                let (done_tx, done_rx) = mpsc::unbounded_channel();
                let cancel = CancellationToken::new();
                let sink =
                    process::ProcessSink::start(settings.clone(), done_tx.clone(), cancel.clone());
                return Ok((
                    Forwarder {
                        backend: Backend::Process {
                            sink: Some(sink),
                            description: format!("exec: {}", settings.command),
                        },
                        in_flight: 0,
                        max_in_flight: (*max_in_flight).max(1),
                        done_tx,
                        cancel,
                    },
                    done_rx,
                ));
            }
        };
        let health = Arc::new(HealthMonitor::new(
            Health::new(
                settings.unhealthy_after,
                settings.endpoint.health_url.is_some(),
            ),
            &settings.endpoint.url,
        ));
        let endpoint = Arc::new(Endpoint::new(
            settings.endpoint.clone(),
            settings.format.content_type(),
            health,
        )?);
        let cancel = CancellationToken::new();
        let probes = tokio::spawn(
            endpoint
                .clone()
                .run_probes(settings.health_interval, cancel.clone()),
        );
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok((
            Forwarder {
                backend: Backend::Http {
                    endpoint,
                    format: settings.format,
                    probes,
                },
                in_flight: 0,
                max_in_flight: settings.endpoint.max_in_flight.max(1),
                done_tx,
                cancel,
            },
            done_rx,
        ))
    }

    /// Follows the endpoint's health, or whether the process runs (the heartbeat task announces
    /// only while it is true).
    pub fn health(&self) -> watch::Receiver<bool> {
        match &self.backend {
            Backend::Http { endpoint, .. } => endpoint.health.subscribe(),
            Backend::Process { sink, .. } => sink
                .as_ref()
                .map_or_else(|| watch::channel(false).1, |s| s.health.clone()),
        }
    }

    /// The endpoint's URL, or `exec: <command>`.
    pub fn url(&self) -> &str {
        match &self.backend {
            Backend::Http { endpoint, .. } => endpoint.url(),
            Backend::Process { description, .. } => description,
        }
    }

    /// Whether another packet may be taken now (otherwise it waits in the subscription: a slow
    /// endpoint slows its share instead of growing memory).
    pub fn has_room(&self) -> bool {
        self.in_flight < self.max_in_flight
    }

    /// Packets sent and not settled yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Starts delivering `message`; its [`Forwarded`] comes on the receiver.
    pub fn dispatch(&mut self, message: Message) {
        self.in_flight += 1;
        let (endpoint, format) = match &self.backend {
            Backend::Http {
                endpoint, format, ..
            } => (endpoint.clone(), *format),
            Backend::Process { sink, .. } => {
                if let Some(sink) = sink {
                    sink.send(message);
                }
                return;
            }
        };
        let cancel = self.cancel.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = match request_bodies(format, &message.payload) {
                Ok(bodies) => {
                    let requests = bodies.into_iter().map(|RequestBody { body, index }| {
                        let endpoint = &endpoint;
                        let cancel = &cancel;
                        async move { (index, endpoint.deliver(body, cancel).await) }
                    });
                    // The endpoint's semaphore bounds the requests out at once.
                    Ok(futures::future::join_all(requests).await)
                }
                Err(e) => Err(e),
            };
            let _ = done.send(Forwarded { message, outcome });
        });
    }

    /// The caller took one [`Forwarded`] off the receiver.
    pub fn settled(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Stops retrying: the packets still out settle as failed as soon as their current attempt
    /// ends (shutdown, after the drain time-out).
    pub fn give_up(&self) {
        self.cancel.cancel();
    }

    /// A process analyzer's child: close its stdin and wait for it to exit (killed after
    /// `limit`). Nothing to do for an HTTP analyzer.
    pub async fn close(&mut self, limit: Duration) {
        if let Backend::Process { sink, .. } = &mut self.backend {
            if let Some(sink) = sink.take() {
                sink.close(limit).await;
            }
        }
    }

    /// The counters for the stats record.
    pub fn stats(&self, deadletter_messages: u64) -> ForwardStats {
        let mut stats = ForwardStats {
            url: self.url().to_string(),
            deadletter_messages,
            in_flight_packets: self.in_flight as u64,
            ..ForwardStats::default()
        };
        match &self.backend {
            Backend::Http {
                endpoint, format, ..
            } => {
                let c = &endpoint.counters;
                stats.format = format.as_str().to_string();
                stats.healthy = endpoint.health.is_healthy();
                stats.attempts = c.attempts.load(Ordering::Relaxed);
                stats.retries = c.retries.load(Ordering::Relaxed);
                stats.delivered_requests = c.delivered.load(Ordering::Relaxed);
                stats.rejected_requests = c.rejected.load(Ordering::Relaxed);
                stats.failed_requests = c.failed.load(Ordering::Relaxed);
            }
            Backend::Process { sink, .. } => {
                stats.format = "ndjson".to_string();
                if let Some(sink) = sink {
                    let c = &sink.counters;
                    stats.healthy = *sink.health.borrow();
                    stats.lines = c.lines.load(Ordering::Relaxed);
                    stats.restarts = c.restarts.load(Ordering::Relaxed);
                    stats.failed_packets = c.failed.load(Ordering::Relaxed);
                }
            }
        }
        stats
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Backend::Http { probes, .. } = &self.backend {
            probes.abort();
        }
    }
}

/// The headers of a dead letter for a payload that arrived with `original` headers on `subject`:
/// the contract's ([`deadletter::deadletter_headers`]; `Logdist-Distributor` stays the replica
/// that routed it), plus the HTTP status when the endpoint answered, and
/// `Logdist-Analyzer: <id>.<instance>` (who dead-lettered it).
pub fn deadletter_headers(
    original: Option<&HeaderMap>,
    code: &'static str,
    reason: &str,
    subject: &str,
    index: Option<usize>,
    status: Option<u16>,
    analyzer: &str,
) -> HeaderMap {
    let routed_by = original
        .and_then(|h| h.get(headers::DISTRIBUTOR))
        .cloned()
        .unwrap_or_else(|| "".into());
    let text = endpoint::printable(reason);
    let mut out = deadletter::deadletter_headers(
        original,
        Reason { code, text: &text },
        subject,
        index,
        &routed_by,
    );
    if let Some(status) = status {
        out.insert(headers::HTTP_STATUS, status.to_string().as_str());
    }
    out.insert(headers::ANALYZER, analyzer);
    out
}
