//! One HTTP endpoint that receives an analyzer's packets: a keep-alive connection pool, at most
//! `max_in_flight` requests out at once, a time-out per request, retries with back-off, and the
//! probes of [`crate::forward::health`].
//!
//! What an answer means ([`classify`]):
//! - 2xx: delivered;
//! - 5xx, 429, a connection error or a time-out: the endpoint cannot take it *now*: retried after
//!   100 ms, doubling to 5 s (or the answer's `Retry-After` seconds, at most 30 s), until
//!   `retry_for` has passed since the first attempt;
//! - any other status (4xx; 1xx/3xx, which a POST endpoint never sends): the endpoint refuses
//!   *this payload*; retrying cannot help, so it is not retried and the caller dead-letters it
//!   with the status and the start of the answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::health::HealthMonitor;

/// First pause before a retry; it doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// How much of a refusing answer is kept for the dead letter.
pub const ANSWER_START_BYTES: usize = 200;

/// How the endpoint is reached.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub url: String,
    /// `GET` this for health instead of judging by the requests.
    pub health_url: Option<String>,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub retry_for: Duration,
}

/// What became of one request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx.
    Delivered,
    /// The endpoint refused the payload: its status and the start of its answer.
    Rejected { status: u16, answer: String },
    /// Every attempt failed for `retry_for` (or shutdown came first).
    Failed { attempts: u32, last_error: String },
}

/// What one answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Delivered,
    /// Try again later.
    Retry,
    /// Refused for good.
    Rejected,
}

/// The meaning of `status` (see the module docs).
pub fn classify(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Delivered,
        429 | 500..=599 => Answer::Retry,
        _ => Answer::Rejected,
    }
}

/// Counters of the requests, for the analyzer's stats.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Attempts sent (retries included).
    pub attempts: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// Requests answered 2xx.
    pub delivered: AtomicU64,
    /// Requests refused (4xx…).
    pub rejected: AtomicU64,
    /// Requests given up after `retry_for`.
    pub failed: AtomicU64,
}

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// The endpoint, shared by every packet task.
#[derive(Debug)]
pub struct Endpoint {
    client: reqwest::Client,
    settings: EndpointSettings,
    content_type: &'static str,
    requests: Semaphore,
    pub health: Arc<HealthMonitor>,
    pub counters: EndpointCounters,
}

impl Endpoint {
    pub fn new(
        settings: EndpointSettings,
        content_type: &'static str,
        health: Arc<HealthMonitor>,
    ) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // Keep as many idle connections as requests may be in flight, so steady load reuses
            // them instead of opening one per request.
            .pool_max_idle_per_host(settings.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            // A redirect of a POST would become a GET: treat it as the answer it is.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Endpoint {
            client,
            requests: Semaphore::new(settings.max_in_flight.max(1)),
            settings,
            content_type,
            health,
            counters: EndpointCounters::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// POSTs `body` until it is delivered or refused, or `retry_for` has passed, or `cancel`.
    pub async fn deliver(&self, body: Bytes, cancel: &CancellationToken) -> Delivery {
        let first = Instant::now();
        let mut pause = RETRY_MIN;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            if attempts > 1 {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let attempt = tokio::select! {
                attempt = self.attempt(body.clone()) => attempt,
                () = cancel.cancelled() => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Delivery::Failed { attempts, last_error: "shutdown during the request".to_string() };
                }
            };
            let (error, retry_after) = match attempt {
                Attempt::Delivered => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    self.health.request_succeeded();
                    return Delivery::Delivered;
                }
                Attempt::Rejected { status, answer } => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    // The endpoint answered: it is up, whatever it thinks of this payload.
                    self.health.request_succeeded();
                    return Delivery::Rejected { status, answer };
                }
                Attempt::Retry { error, retry_after } => (error, retry_after),
            };
            self.health.request_failed(&error);
            let wait = retry_after.map_or(pause, |after| after.clamp(pause, RETRY_AFTER_MAX));
            if first.elapsed() + wait > self.settings.retry_for || cancel.is_cancelled() {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                return Delivery::Failed {
                    attempts,
                    last_error: error,
                };
            }
            if attempts == 1 {
                tracing::debug!(url = %self.settings.url, error = %error, "request failed; retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Delivery::Failed { attempts, last_error: format!("{error}; then shutdown") };
                }
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let _permit = self
            .requests
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let sent = self
            .client
            .post(&self.settings.url)
            .header(reqwest::header::CONTENT_TYPE, self.content_type)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                return Attempt::Retry {
                    error: describe(&e),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        match classify(status.as_u16()) {
            Answer::Delivered => {
                // Read the answer to its end, so the connection goes back to the pool.
                loop {
                    match response.chunk().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Attempt::Delivered,
                        Err(e) => {
                            return Attempt::Retry {
                                error: format!(
                                    "{status} but the answer broke off: {}",
                                    describe(&e)
                                ),
                                retry_after: None,
                            }
                        }
                    }
                }
            }
            Answer::Retry => Attempt::Retry {
                retry_after: retry_after(&response),
                error: format!("HTTP {}", status_text(status)),
            },
            Answer::Rejected => Attempt::Rejected {
                status: status.as_u16(),
                answer: answer_start(response).await,
            },
        }
    }

    /// One health probe: `GET <health-url>` must answer 2xx; without a health URL, `HEAD <url>`
    /// must answer anything but 5xx (501, HEAD not implemented, is fine) or 429.
    pub async fn probe(&self) -> (bool, String) {
        let (request, by_health_url) = match &self.settings.health_url {
            Some(url) => (self.client.get(url), true),
            None => (self.client.head(&self.settings.url), false),
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let ok = if by_health_url {
                    status.is_success()
                } else {
                    // 501: a server that does not implement HEAD (Python's http.server) is up.
                    status == StatusCode::NOT_IMPLEMENTED
                        || classify(status.as_u16()) != Answer::Retry
                };
                (ok, format!("probe answered HTTP {}", status_text(status)))
            }
            Err(e) => (false, format!("probe failed: {}", describe(&e))),
        }
    }

    /// Probes every `interval` while a probe is due (see `health`), until `stop`.
    pub async fn run_probes(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        loop {
            if self.health.wants_probe() {
                let (ok, detail) = tokio::select! {
                    result = self.probe() => result,
                    () = stop.cancelled() => return,
                };
                self.health.probed(ok, &detail);
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

enum Attempt {
    Delivered,
    Rejected {
        status: u16,
        answer: String,
    },
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// A client error with its cause chain (reqwest's own text is only the outermost layer).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "time-out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` in seconds (the HTTP-date form is not worth a parser here).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The first [`ANSWER_START_BYTES`] of the answer, as printable text on one line.
async fn answer_start(mut response: reqwest::Response) -> String {
    let mut start = Vec::new();
    while start.len() < ANSWER_START_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            _ => break,
        }
    }
    start.truncate(ANSWER_START_BYTES);
    printable(&String::from_utf8_lossy(&start))
}

/// `text` with control characters escaped, so it fits in a header value.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_status() {
        for status in [200, 201, 204, 299] {
            assert_eq!(classify(status), Answer::Delivered, "{status}");
        }
        for status in [429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(status), Answer::Retry, "{status}");
        }
        for status in [100, 301, 400, 401, 404, 405, 413, 422, 499] {
            assert_eq!(classify(status), Answer::Rejected, "{status}");
        }
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(
            printable("bad\r\nfield\t\u{7}é"),
            "bad\\r\\nfield\\t\\u{7}é"
        );
    }
}
