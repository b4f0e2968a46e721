//! The `--metrics ADDR` listener of every binary: `GET /metrics` (the Prometheus text format),
//! `GET /healthz` (the process is alive: always 200) and `GET /readyz` (200 once the process can
//! do its work, 503 naming what it still waits for), for Prometheus and container orchestrators.
//!
//! [`Telemetry`] holds what the endpoints report: a `prometheus-client` registry of collectors
//! (see [`crate::metrics`]) and the [`Readiness`] conditions. [`Telemetry::router`] builds the
//! routes apart from binding them, so the HTTP gateway serves them on its own address too and
//! tests drive them without a socket; [`serve`] binds and serves until shutdown. It is meant to
//! start before the first NATS connect, so `/readyz` answers 503 while NATS is unreachable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_nats::connection::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A check `/readyz` runs on every request.
type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// The conditions a process must meet before `/readyz` answers 200, each with the words
/// `/readyz` uses when it is not met.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(&'static str, Check)>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("unmet", &self.unmet())
            .finish()
    }
}

/// A condition the process sets itself once met, e.g. "membership loaded".
#[derive(Debug, Clone, Default)]
pub struct Condition(Arc<AtomicBool>);

impl Condition {
    pub fn set(&self, met: bool) {
        self.0.store(met, Ordering::Relaxed);
    }
}

/// The "connected to NATS" condition: met while the client handed to it is connected (so it
/// turns unmet again while the client reconnects).
#[derive(Debug, Clone, Default)]
pub struct NatsCondition(Arc<OnceLock<async_nats::Client>>);

impl NatsCondition {
    /// The client to watch, once the first connect succeeded.
    pub fn connected(&self, client: &async_nats::Client) {
        let _ = self.0.set(client.clone());
    }
}

impl Readiness {
    /// Adds a condition, unmet until [`Condition::set`].
    pub fn condition(&self, description: &'static str) -> Condition {
        let condition = Condition::default();
        let flag = condition.0.clone();
        self.add(description, Box::new(move || flag.load(Ordering::Relaxed)));
        condition
    }

    /// Adds "connected to NATS".
    pub fn nats(&self) -> NatsCondition {
        let condition = NatsCondition::default();
        let cell = condition.0.clone();
        self.add(
            "connected to NATS",
            Box::new(move || {
                cell.get()
                    .is_some_and(|c| c.connection_state() == State::Connected)
            }),
        );
        condition
    }

    fn add(&self, description: &'static str, check: Check) {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((description, check));
    }

    /// The conditions not met now, in the order they were added (empty: ready).
    pub fn unmet(&self) -> Vec<&'static str> {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, check)| !check())
            .map(|(description, _)| *description)
            .collect()
    }
}

/// What the endpoints report: the metrics registry and the readiness conditions.
#[derive(Clone)]
pub struct Telemetry {
    registry: Arc<Registry>,
    readiness: Readiness,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new(registry: Registry, readiness: Readiness) -> Self {
        Telemetry {
            registry: Arc::new(registry),
            readiness,
        }
    }

    /// The exposition in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// `/metrics`, `/healthz` and `/readyz`.
    pub fn router(&self) -> Router {
        self.metrics_and_readiness()
            .route("/healthz", get(|| async { "ok\n" }))
    }

    /// `/metrics` and `/readyz` alone, for a server with a `/healthz` of its own (the HTTP
    /// gateway).
    pub fn metrics_and_readiness(&self) -> Router {
        let metrics = self.clone();
        let ready = self.readiness.clone();
        Router::new()
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            )],
                            metrics.render(),
                        )
                    }
                }),
            )
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move { readyz(&ready) }
                }),
            )
    }
}

fn readyz(readiness: &Readiness) -> Response {
    let unmet = readiness.unmet();
    if unmet.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready: {}\n", unmet.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source} (--metrics)")]
pub struct ServeError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// A running listener: its bound address (useful with port 0) and its task.
#[derive(Debug)]
pub struct RunningTelemetry {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `addr` and serves [`Telemetry::router`] until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
) -> Result<RunningTelemetry, ServeError> {
    let error = |source| ServeError { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(error)?;
    let local_addr = listener.local_addr().map_err(error)?;
    tracing::info!(%local_addr, "serving /metrics, /healthz and /readyz");
    let router = telemetry.router();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok(RunningTelemetry { local_addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_lists_what_is_unmet_in_order() {
        let readiness = Readiness::default();
        let nats = readiness.nats();
        let loaded = readiness.condition("membership loaded");
        assert_eq!(
            readiness.unmet(),
            ["connected to NATS", "membership loaded"]
        );
        loaded.set(true);
        assert_eq!(readiness.unmet(), ["connected to NATS"]);
        drop(nats);
        let response = readyz(&readiness);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn no_conditions_is_ready() {
        assert_eq!(readyz(&Readiness::default()).status(), StatusCode::OK);
    }
}
