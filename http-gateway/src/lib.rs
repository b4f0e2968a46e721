//! The HTTP ingest gateway (`distributor --http 127.0.0.1:3000`): lets agents that speak HTTP —
//! curl, scripts written for the old Python service, Fluent Bit's and Vector's HTTP outputs —
//! send to logdist unchanged.
//!
//! | endpoint | body |
//! | --- | --- |
//! | `POST /message/send` | one JSON log object (the old service's body) |
//! | `POST /messages` | a JSON array (a packet), or NDJSON with `Content-Type: application/x-ndjson`; optionally `Content-Encoding: gzip`; `?format=fluent-bit\|vector\|fields` for shippers' records, mapped by [`Mapping`] |
//! | `GET /analyzer/stats` | the old service's stats view: per analyzer `id`, `weight`, `messages` |
//! | `POST /v1/logs` | OTLP/HTTP logs, protobuf or JSON ([`otlp`]: one export request, one packet) |
//! | `GET /healthz` | 200 while connected to NATS, 503 otherwise |
//! | `POST /analyzer/register`, `POST /analyzer/deregister` | the old service's analyzer registration ([`registration`]) |
//! | `GET /metrics`, `GET /readyz` | the distributor's metrics and readiness, as on its `--metrics` address (docs/metrics.md) |
//!
//! Each accepted body is validated with the same [`PacketValidator`] as NATS ingest and takes the
//! same routing, shares and guarantees as any packet from `<ingest-subject>.http`. Where it goes:
//! with a [`LocalRouter`] (the distributor's at-most-once mode) straight into the router of the
//! same process, through a bounded queue — no NATS round trip to itself; with `acknowledged`
//! (at-least-once) through JetStream, the response waiting for the stream's ack (a 200 means
//! stored); otherwise published to `<ingest-subject>.http`. A request is accepted whole or not at
//! all: 400 (invalid, with the field and reason), 413 (over the size limit), 415 (content type),
//! 503 (NATS unreachable, or the router's queue full: `overloaded`, with `Retry-After`) — never a
//! 200 for something that was dropped. `/v1/logs` answers as the OTLP specification asks instead
//! (see [`otlp`]).

pub mod otlp;

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use bytes::Bytes;
use logdist::ingest_format::{IngestFormat, Mapping};
use logdist::protocol::packet::{PacketForm, RecordError};
use logdist::StatsSnapshot;
use logdist::{Names, PacketError, PacketValidator};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

mod registration;

pub use registration::{Registration, Registrations, PROCESS_PATH};

/// Default largest request body (after gzip decompression): 8 MiB, the distributor's default
/// packet limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = logdist::protocol::packet::DEFAULT_MAX_PACKET_BYTES;

/// Default KV bucket of the old service's analyzer registrations.
pub const DEFAULT_REGISTRATIONS_BUCKET: &str = "analyzer_registrations";

/// How the gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub names: Names,
    /// Largest body accepted, compressed or not (413 above).
    pub max_body_bytes: usize,
    /// Publish through JetStream and answer only after the stream's ack (at-least-once mode).
    pub acknowledged: bool,
    /// How `POST /messages?format=…` maps shippers' records (the distributor's
    /// `--ingest-format`, `--field`, `--default-*` flags).
    pub mapping: Mapping,
    /// Hand accepted packets to the router of this process instead of publishing them (ignored
    /// with `acknowledged`: at-least-once, the stream is the guarantee).
    pub local_router: Option<LocalRouter>,
    /// Largest report of one OTLP request's refused records (the distributor's
    /// `--deadletter-report-max-bytes`; within the server's max_payload).
    pub deadletter_report_max_bytes: usize,
    /// Also serve `/metrics` and `/readyz` of the process (see `logdist::telemetry`).
    pub telemetry: Option<logdist::telemetry::Telemetry>,
}

/// A packet the gateway accepted, for the router of the same process: what it would have
/// published to the ingest subject, already validated.
#[derive(Debug)]
pub struct LocalPacket {
    /// The ingest subject it stands for (`<ingest>.http`, `<ingest>.otlp`): dead letters and
    /// `--affinity` read it as if it had come from there.
    pub subject: async_nats::Subject,
    /// `Logdist-Agent` and `Logdist-Sent-At`, as on a published packet.
    pub headers: async_nats::HeaderMap,
    /// A canonical packet that passed [`PacketValidator`].
    pub payload: Bytes,
    /// Log messages in `payload`.
    pub messages: u64,
}

/// The bounded queue into the router of the same process (at-most-once): a request waits at most
/// `max_wait` for room, then is refused with 503 `overloaded` and `Retry-After`, so a router that
/// falls behind pushes back on HTTP clients instead of buffering without bound.
#[derive(Debug, Clone)]
pub struct LocalRouter {
    pub queue: tokio::sync::mpsc::Sender<LocalPacket>,
    pub max_wait: Duration,
}

/// Default length of the router's queue of HTTP packets (`--http-queue`).
pub const DEFAULT_LOCAL_QUEUE: usize = 256;

/// How long a request waits for room in a full router queue before its 503.
pub const DEFAULT_LOCAL_MAX_WAIT: Duration = Duration::from_millis(200);

/// Counters of what the gateway did, for the distributor's logs and tests.
#[derive(Debug, Default)]
pub struct GatewayCounters {
    pub accepted_requests: AtomicU64,
    pub accepted_messages: AtomicU64,
    pub rejected_requests: AtomicU64,
    /// Requests refused with 503 `overloaded`: the router's queue stayed full (also counted in
    /// `rejected_requests`).
    pub overloaded_requests: AtomicU64,
    /// Dead letters the gateway published itself (OTLP requests it refused, and one per request
    /// for the records it refused).
    pub deadletters: AtomicU64,
    /// OTLP log records refused one by one (each counted; one dead letter carries a request's).
    pub rejected_records: AtomicU64,
}

struct Gateway {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subject: async_nats::Subject,
    /// Where OTLP packets go: `<ingest-subject>.otlp`.
    otlp_subject: async_nats::Subject,
    names: Names,
    validator: PacketValidator,
    max_body_bytes: usize,
    acknowledged: bool,
    /// `None` in acknowledged mode, whatever the config says.
    local_router: Option<LocalRouter>,
    mapping: Mapping,
    /// Largest dead-letter report, and the server's max_payload.
    deadletter_limits: logdist::protocol::deadletter::SizeLimits,
    counters: Arc<GatewayCounters>,
    registrations: Option<Registrations>,
}

/// A running gateway: its bound address and a handle to wait for it after shutdown.
pub struct RunningGateway {
    pub local_addr: SocketAddr,
    pub counters: Arc<GatewayCounters>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {source} (--http / DISTRIBUTOR_HTTP)")]
pub struct StartError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `config.listen` and serves until `shutdown` is cancelled (then finishes the requests in
/// progress).
pub async fn start(
    config: GatewayConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<RunningGateway, StartError> {
    start_with_registrations(config, client, shutdown, None).await
}

/// [`start`], also serving the old service's `POST /analyzer/register` and
/// `POST /analyzer/deregister`, recorded in `registrations` (the distributor bridges them).
pub async fn start_with_registrations(
    config: GatewayConfig,
    client: async_nats::Client,
    shutdown: CancellationToken,
    registrations: Option<Registrations>,
) -> Result<RunningGateway, StartError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError {
        addr: config.listen,
        source,
    })?;
    let counters = Arc::new(GatewayCounters::default());
    let deadletter_limits = logdist::protocol::deadletter::SizeLimits {
        report_max_bytes: config.deadletter_report_max_bytes,
        max_payload: client.server_info().max_payload,
    };
    let gateway = Arc::new(Gateway {
        jetstream: jetstream::new(client.clone()),
        subject: config.names.agent_ingest_subject("http").into(),
        otlp_subject: config.names.agent_ingest_subject(otlp::AGENT).into(),
        client,
        names: config.names.clone(),
        validator: PacketValidator::new(config.max_body_bytes),
        max_body_bytes: config.max_body_bytes,
        acknowledged: config.acknowledged,
        local_router: config.local_router.filter(|_| !config.acknowledged),
        mapping: config.mapping,
        deadletter_limits,
        counters: counters.clone(),
        registrations,
    });
    let router = Router::new()
        .route("/message/send", post(send_one))
        .route("/messages", post(send_many))
        .route("/v1/logs", post(otlp::export_logs))
        .route("/analyzer/stats", get(analyzer_stats))
        .route("/healthz", get(healthz))
        .route("/analyzer/register", post(registration::register))
        .route("/analyzer/deregister", post(registration::deregister))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(gateway.clone());
    let router = match &config.telemetry {
        Some(telemetry) => router.merge(telemetry.metrics_and_readiness()),
        None => router,
    };
    tracing::info!(%local_addr, acknowledged = config.acknowledged, "HTTP ingest gateway listening");
    let task = tokio::spawn(async move {
        // Each answer is one write, sent at once (no Nagle wait for the client's ACK).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
            }
        });
        axum::serve(listener, MakeConnectionService { gateway, router })
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok(RunningGateway {
        local_addr,
        counters,
        task,
    })
}

/// Makes the [`ConnectionService`] of each accepted connection.
#[derive(Clone)]
struct MakeConnectionService {
    gateway: Arc<Gateway>,
    router: Router,
}

impl<'a, L> tower_service::Service<axum::serve::IncomingStream<'a, L>> for MakeConnectionService
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Response = ConnectionService;
    type Error = Infallible;
    type Future = std::future::Ready<Result<ConnectionService, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: axum::serve::IncomingStream<'a, L>) -> Self::Future {
        std::future::ready(Ok(ConnectionService {
            gateway: self.gateway.clone(),
            router: self.router.clone(),
            remote: *incoming.remote_addr(),
        }))
    }
}

/// One connection's requests: `POST /message/send`, one request per log message and so the hot
/// path, goes straight to its handler; everything else through the router, with the caller's
/// address as [`ConnectInfo`](axum::extract::ConnectInfo) (the default host of a registered
/// analyzer's URL). The router's matching, its layers and the per-request extension cost
/// ~4,600 instructions a request (callgrind, `scripts/callgrind-distributor.sh http 2000|4000
/// 10`: 47,388 through the router, 42,760 straight to the handler).
#[derive(Clone)]
struct ConnectionService {
    gateway: Arc<Gateway>,
    router: Router,
    remote: SocketAddr,
}

impl tower_service::Service<axum::extract::Request> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: axum::extract::Request) -> Self::Future {
        if request.method() == axum::http::Method::POST && request.uri().path() == "/message/send" {
            let gateway = self.gateway.clone();
            return Box::pin(async move { Ok(send_one(State(gateway), request).await) });
        }
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.remote));
        let mut router = self.router.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                <Router as tower_service::Service<axum::extract::Request>>::poll_ready(
                    &mut router,
                    cx,
                )
            })
            .await?;
            <Router as tower_service::Service<axum::extract::Request>>::call(&mut router, request)
                .await
        })
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
struct ErrorBody {
    /// Machine-readable reason (the dead-letter codes of docs/protocol.md, or an HTTP one).
    error: &'static str,
    /// For people.
    reason: String,
    /// The log field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    /// Per-message problems of a packet: nothing of the request was accepted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    invalid: Vec<InvalidMessage>,
}

#[derive(Debug, Serialize)]
struct InvalidMessage {
    index: usize,
    error: &'static str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Seconds for a `Retry-After` header (503 `overloaded`).
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error,
                reason: reason.into(),
                field: None,
                invalid: Vec::new(),
            },
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The field a record error is about.
fn field_of(error: &RecordError) -> Option<&'static str> {
    match error {
        RecordError::MissingField { field } | RecordError::WrongType { field, .. } => Some(field),
        RecordError::UnknownSeverity { .. } => Some("severity"),
        RecordError::EmptySource => Some("source"),
        RecordError::BadTimestamp { .. } => Some("timestamp"),
        RecordError::NotAnObject { .. } | RecordError::Malformed { .. } => None,
    }
}

impl From<PacketError> for ApiError {
    fn from(e: PacketError) -> Self {
        let status = match e {
            PacketError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let field = match &e {
            PacketError::Record(r) => field_of(r),
            _ => None,
        };
        let mut api = ApiError::new(status, e.code(), e.to_string());
        api.body.field = field;
        api
    }
}

/// `POST /message/send`, the one request per log message, so the hot path: the request is taken
/// whole (its headers are read in place, not cloned by an extractor) and the body read within
/// the limit here.
async fn send_one(State(gw): State<Arc<Gateway>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let result = async {
        let body = gw.read_body(body).await?;
        let body = gw.decode(headers, body)?;
        gw.require_content_type(headers, &["application/json"])?;
        // The common case in one pass that builds nothing; the careful path says what is wrong.
        let object = body.trim_ascii_start().first() == Some(&b'{');
        if object && gw.validator.count_if_valid(&body) == Some(1) {
            return gw.publish(&gw.subject, "http", body, 1).await;
        }
        let packet = gw.validator.parse(&body)?;
        if packet.form != PacketForm::Object {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "wrong_shape",
                "POST /message/send takes one JSON log object; send arrays to POST /messages",
            ));
        }
        gw.publish(&gw.subject, "http", body, 1).await
    }
    .await;
    gw.respond(result)
}

/// The query of `POST /messages`.
#[derive(Debug, Deserialize)]
struct MessagesQuery {
    /// The ingest format of the body; the wire contract (`logdist`) when absent.
    format: Option<String>,
}

async fn send_many(
    State(gw): State<Arc<Gateway>>,
    Query(query): Query<MessagesQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let format = match query.format {
            None => IngestFormat::Logdist,
            Some(name) => name
                .parse()
                .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, "unknown_format", e))?,
        };
        let body = gw.body(&headers, body)?;
        let ndjson = gw
            .require_content_type(&headers, &["application/json", "application/x-ndjson"])?
            == "application/x-ndjson";
        let payload = if ndjson {
            ndjson_to_array(&body)?
        } else {
            body
        };
        if format != IngestFormat::Logdist {
            return gw.send_mapped(format, payload).await;
        }
        if let Some(count) = gw.validator.count_if_valid(&payload) {
            return gw.publish(&gw.subject, "http", payload, count as u64).await;
        }
        let packet = gw.validator.parse(&payload)?;
        if !packet.invalid.is_empty() {
            let mut api = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_messages",
                format!(
                    "{} of {} log messages are invalid; nothing was accepted",
                    packet.invalid.len(),
                    packet.len()
                ),
            );
            api.body.invalid = packet
                .invalid
                .iter()
                .map(|i| InvalidMessage {
                    index: i.index,
                    error: i.error.code(),
                    reason: i.error.to_string(),
                    field: field_of(&i.error),
                })
                .collect();
            return Err(api);
        }
        let count = packet.records.len() as u64;
        gw.publish(&gw.subject, "http", payload, count).await
    }
    .await;
    gw.respond(result)
}

/// NDJSON (one JSON value per line, blank lines ignored) as a JSON array, so it is one packet.
/// A line that is not JSON is reported with its line number.
fn ndjson_to_array(body: &[u8]) -> Result<Bytes, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::from(PacketError::NotUtf8 {
            offset: e.valid_up_to(),
        })
    })?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(b'[');
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_json",
                format!("NDJSON line {} is not JSON: {e}", n + 1),
            ));
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(line.as_bytes());
    }
    out.push(b']');
    Ok(Bytes::from(out))
}

#[derive(Debug, Serialize)]
struct Accepted {
    accepted: u64,
    /// True when the stream stored it (at-least-once mode); false when published at most once.
    stored: bool,
}

impl IntoResponse for Accepted {
    /// The 200 answer; that of one message (`POST /message/send`) is a constant, not serialized
    /// per request.
    fn into_response(self) -> Response {
        let body: &'static [u8] = match self {
            Accepted {
                accepted: 1,
                stored: false,
            } => br#"{"accepted":1,"stored":false}"#,
            Accepted {
                accepted: 1,
                stored: true,
            } => br#"{"accepted":1,"stored":true}"#,
            other => return Json(other).into_response(),
        };
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Bytes::from_static(body),
        )
            .into_response()
    }
}

impl Gateway {
    /// The request body, decompressed if gzip, within the size limit.
    fn body(
        &self,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Bytes, ApiError> {
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                self.too_large()
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_body", rejection.body_text())
            }
        })?;
        self.decode(headers, body)
    }

    /// The whole request body, within the limit (413 above it). A body that comes in one frame,
    /// as a small request's does, is that frame's bytes: neither copied nor gathered into a list
    /// first, as `axum::body::to_bytes` would (~800 instructions a request, callgrind).
    async fn read_body(&self, mut body: axum::body::Body) -> Result<Bytes, ApiError> {
        use http_body_util::BodyExt;
        let mut first: Option<Bytes> = None;
        let mut joined: Vec<u8> = Vec::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.body_error(&e))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers: nothing of the body
            };
            len += data.len();
            if len > self.max_body_bytes {
                return Err(self.too_large());
            }
            match &first {
                None => first = Some(data),
                Some(head) => {
                    if joined.is_empty() {
                        joined.extend_from_slice(head);
                    }
                    joined.extend_from_slice(&data);
                }
            }
        }
        Ok(if joined.is_empty() {
            first.unwrap_or_default()
        } else {
            Bytes::from(joined)
        })
    }

    /// A body that could not be read whole because the connection failed (400), as the `Bytes`
    /// extractor answers; the limit is `read_body`'s own count (413, [`Self::too_large`]).
    fn body_error(&self, error: &axum::Error) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("Failed to buffer the request body: {}", with_causes(error)),
        )
    }

    fn too_large(&self) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "request body is over the limit of {} bytes (--http-max-body-bytes)",
                self.max_body_bytes
            ),
        )
    }

    /// `body` decompressed if its `Content-Encoding` is gzip, within the size limit.
    fn decode(&self, headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
        match headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
        {
            None | Some("identity") => Ok(body),
            Some(enc) if enc.eq_ignore_ascii_case("gzip") => {
                let mut decoded = Vec::new();
                let limit = self.max_body_bytes as u64 + 1;
                flate2::read::GzDecoder::new(&body[..])
                    .take(limit)
                    .read_to_end(&mut decoded)
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_gzip",
                            format!(
                                "Content-Encoding is gzip but the body does not decompress: {e}"
                            ),
                        )
                    })?;
                if decoded.len() > self.max_body_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!(
                            "decompressed body is over the limit of {} bytes (--http-max-body-bytes)",
                            self.max_body_bytes
                        ),
                    ));
                }
                Ok(Bytes::from(decoded))
            }
            Some(other) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {other:?} is not supported; use gzip or none"),
            )),
        }
    }

    /// The request's media type if it is one of `allowed` (a missing Content-Type counts as the
    /// first, as curl's `-d` with JSON is common); 415 otherwise.
    fn require_content_type(
        &self,
        headers: &HeaderMap,
        allowed: &[&'static str],
    ) -> Result<&'static str, ApiError> {
        media_type_in(headers, allowed)
    }

    /// Hands one packet of `count` log messages, meant for `subject` as agent `agent`, to where
    /// accepted packets go: the local router's queue, JetStream (acknowledged mode: only `Ok`
    /// once the stream stored it) or a plain publish.
    async fn publish(
        &self,
        subject: &async_nats::Subject,
        agent: &str,
        payload: Bytes,
        count: u64,
    ) -> Result<Accepted, ApiError> {
        self.require_connected()?;
        // Typed names (no parsing, no copy of the name); for the local router a map with room
        // for the two the distributor adds when the packet leaves alone (a map from
        // `HeaderMap::new` would grow on the fourth; over NATS the distributor gets a map of
        // its client's making anyway); the time formatted straight into its value (`From<u64>`
        // does not scan the text for line breaks as `From<String>` does). Per request this map
        // is most of what the gateway allocates.
        let mut headers = if self.local_router.is_some() {
            logdist::protocol::headers::packet_headers_with_room()
        } else {
            async_nats::HeaderMap::new()
        };
        headers.insert(logdist::protocol::headers::name::AGENT, agent);
        let sent_at = logdist::protocol::headers::unix_nanos_now() as u64;
        headers.insert(
            logdist::protocol::headers::name::SENT_AT,
            async_nats::HeaderValue::from(sent_at),
        );
        if let Some(local) = &self.local_router {
            self.queue_locally(local, subject, headers, payload, count)
                .await?;
        } else if self.acknowledged {
            let ack = self
                .jetstream
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| nats_unavailable(e.to_string()))?;
            ack.await.map_err(|e| nats_unavailable(e.to_string()))?;
        } else {
            self.client
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| nats_unavailable(e.to_string()))?;
        }
        self.counters
            .accepted_messages
            .fetch_add(count, Ordering::Relaxed);
        Ok(Accepted {
            accepted: count,
            stored: self.acknowledged,
        })
    }

    /// Puts a packet in the local router's queue, waiting at most `max_wait` for room; a queue
    /// still full is a 503 `overloaded` with `Retry-After`, and nothing was accepted.
    async fn queue_locally(
        &self,
        local: &LocalRouter,
        subject: &async_nats::Subject,
        headers: async_nats::HeaderMap,
        payload: Bytes,
        messages: u64,
    ) -> Result<(), ApiError> {
        let permit = match local.queue.try_reserve() {
            Ok(permit) => permit,
            Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
                match tokio::time::timeout(local.max_wait, local.queue.reserve()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(router_stopped()),
                    Err(_) => {
                        self.counters
                            .overloaded_requests
                            .fetch_add(1, Ordering::Relaxed);
                        let mut api = ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "overloaded",
                            format!(
                                "the distributor's router is behind: its queue of {} HTTP packets \
                                 stayed full for {} ms; nothing was accepted, retry later",
                                local.queue.max_capacity(),
                                local.max_wait.as_millis()
                            ),
                        );
                        api.retry_after = Some(1);
                        return Err(api);
                    }
                }
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return Err(router_stopped()),
        };
        permit.send(LocalPacket {
            subject: subject.clone(),
            headers,
            payload,
            messages,
        });
        Ok(())
    }

    /// `POST /messages?format=…`: maps the records to the canonical shape and publishes them as
    /// one packet, or refuses the request whole (400) naming each record that cannot be mapped.
    async fn send_mapped(
        &self,
        format: IngestFormat,
        payload: Bytes,
    ) -> Result<Accepted, ApiError> {
        let received_at = logdist::protocol::headers::unix_nanos_now() as i128;
        let mapped = self
            .mapping
            .map(format, &payload, received_at)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code, e.reason))?;
        if !mapped.invalid.is_empty() {
            let mut api = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_messages",
                format!(
                    "{} of {} {format} records cannot be mapped; nothing was accepted",
                    mapped.invalid.len(),
                    mapped.invalid.len() + mapped.messages
                ),
            );
            api.body.invalid = mapped
                .invalid
                .into_iter()
                .map(|i| InvalidMessage {
                    index: i.index,
                    error: i.code,
                    reason: i.reason,
                    field: None,
                })
                .collect();
            return Err(api);
        }
        let packet = mapped.packet.unwrap_or_default();
        if packet.len() > self.max_body_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the {} mapped records make a packet of {} bytes, over the limit of {} bytes \
                     (--http-max-body-bytes)",
                    mapped.messages,
                    packet.len(),
                    self.max_body_bytes
                ),
            ));
        }
        self.publish(
            &self.subject,
            "http",
            Bytes::from(packet),
            mapped.messages as u64,
        )
        .await
    }

    fn require_connected(&self) -> Result<(), ApiError> {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(nats_unavailable("not connected".into()))
        }
    }

    /// Publishes `payload`, refused by the gateway itself, to the dead-letter subject with the
    /// headers of docs/protocol.md (`Logdist-Subject` is the ingest subject it was meant for,
    /// `Content-Type` the payload's media type).
    /// An error means the copy was not kept, so the request must not be answered as final.
    async fn deadletter(
        &self,
        agent: &str,
        payload: Bytes,
        content_type: &str,
        code: &'static str,
        reason: &str,
    ) -> Result<(), ApiError> {
        let mut headers = self.deadletter_headers(agent, content_type);
        // Header values cannot hold line breaks; reasons may quote user input.
        headers.insert(
            logdist::protocol::headers::ERROR,
            reason.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert(logdist::protocol::headers::ERROR_CODE, code);
        self.publish_deadletter(headers, payload).await
    }

    /// The one dead letter of a request whose `invalid` elements (of `elements`) were refused
    /// ([`PacketDeadLetter`]): their report as JSON, or past the report limit `body` whole, of
    /// media type `content_type`. Counts each refused element.
    ///
    /// [`PacketDeadLetter`]: logdist::protocol::deadletter::PacketDeadLetter
    async fn elements_deadletter<R: logdist::protocol::deadletter::RejectedElement>(
        &self,
        agent: &str,
        body: &Bytes,
        content_type: &str,
        invalid: &[R],
        elements: usize,
    ) -> Result<(), ApiError> {
        use logdist::protocol::deadletter::{DeadLetterBody, PacketDeadLetter};
        // The headers are ours alone (the request's are not forwarded).
        let (max_report, max_payload) = self.deadletter_limits.for_headers(None);
        let letter =
            PacketDeadLetter::build(invalid, elements, body.len(), max_report, max_payload);
        let (payload, content_type) = match letter.body {
            DeadLetterBody::Whole => (body.clone(), content_type),
            DeadLetterBody::Report(ref report) | DeadLetterBody::Truncated { ref report, .. } => {
                (Bytes::copy_from_slice(report), "application/json")
            }
        };
        let mut headers = self.deadletter_headers(agent, content_type);
        logdist::protocol::deadletter::insert_packet_headers(&mut headers, &letter);
        self.publish_deadletter(headers, payload).await?;
        self.counters
            .rejected_records
            .fetch_add(invalid.len() as u64, Ordering::Relaxed);
        if let DeadLetterBody::Truncated { listed, .. } = letter.body {
            tracing::warn!(agent, rejected = invalid.len(), listed, body_bytes = body.len(),
                "a request's refused records do not fit in one dead letter; its report lists the first");
        }
        Ok(())
    }

    fn deadletter_headers(&self, agent: &str, content_type: &str) -> async_nats::HeaderMap {
        let subject = self.names.agent_ingest_subject(agent);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(logdist::protocol::headers::AGENT, agent);
        headers.insert(logdist::protocol::headers::SUBJECT, subject.as_str());
        headers.insert(logdist::protocol::headers::CONTENT_TYPE, content_type);
        headers
    }

    async fn publish_deadletter(
        &self,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) -> Result<(), ApiError> {
        self.require_connected()?;
        self.client
            .publish_with_headers(self.names.deadletter_subject.clone(), headers, payload)
            .await
            .map_err(|e| nats_unavailable(e.to_string()))?;
        self.counters.deadletters.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn respond(&self, result: Result<Accepted, ApiError>) -> Response {
        match result {
            Ok(accepted) => {
                self.counters
                    .accepted_requests
                    .fetch_add(1, Ordering::Relaxed);
                accepted.into_response()
            }
            Err(e) => {
                self.counters
                    .rejected_requests
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(status = %e.status, error = e.body.error, reason = %e.body.reason, "HTTP request rejected");
                e.into_response()
            }
        }
    }
}

/// The router stopped taking packets: the distributor is shutting down.
fn router_stopped() -> ApiError {
    let mut api = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "stopping",
        "the distributor is shutting down; nothing was accepted, retry later",
    );
    api.retry_after = Some(1);
    api
}

fn nats_unavailable(e: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "nats_unavailable",
        format!("NATS did not take the message: {e}; nothing was accepted, retry later"),
    )
}

/// One analyzer in the old service's stats view.
#[derive(Debug, Serialize, PartialEq)]
struct AnalyzerView {
    id: String,
    weight: f64,
    /// Log messages the analyzer received (its own counters, all instances added up).
    messages: u64,
    online: bool,
}

async fn analyzer_stats(State(gw): State<Arc<Gateway>>) -> Response {
    let result = async {
        let stats = gw
            .jetstream
            .get_key_value(&gw.names.stats_bucket)
            .await
            .map_err(|e| e.to_string())?;
        let snapshot = StatsSnapshot::read(&stats)
            .await
            .map_err(|e| with_causes(&e))?;
        let membership = gw
            .jetstream
            .get_key_value(&gw.names.membership_bucket)
            .await
            .map_err(|e| e.to_string())?;
        let online = logdist::member_ids(&membership)
            .await
            .map_err(|e| with_causes(&e))?;
        let mut by_id: std::collections::BTreeMap<String, AnalyzerView> = Default::default();
        for a in snapshot.analyzers {
            let view = by_id.entry(a.id.clone()).or_insert_with(|| AnalyzerView {
                online: online.contains(&a.id),
                id: a.id.clone(),
                weight: a.weight,
                messages: 0,
            });
            view.messages += a.messages;
            view.weight = a.weight;
        }
        Ok::<_, String>(by_id.into_values().collect::<Vec<_>>())
    }
    .await;
    match result {
        Ok(views) => Json(views).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stats_unavailable",
            format!("cannot read the stats bucket: {e}"),
        )
        .into_response(),
    }
}

/// `error` and its causes, `: `-separated: a JSON error message carries no chain of its own.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn healthz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.client.connection_state() == async_nats::connection::State::Connected {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS disconnected\n").into_response()
    }
}

/// The request's media type if it is one of `allowed` (a missing Content-Type counts as the
/// first, as curl's `-d` with JSON is common); 415 otherwise. Parameters (`; charset=…`) and
/// case do not matter.
fn media_type_in(headers: &HeaderMap, allowed: &[&'static str]) -> Result<&'static str, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(allowed[0]);
    };
    // Compared in place, without lowering a copy: this runs on every request.
    let raw = value.as_bytes();
    let media = raw.split(|b| *b == b';').next().unwrap_or(raw).trim_ascii();
    // curl -d sends this by default; the body is still JSON.
    if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        return Ok(allowed[0]);
    }
    allowed
        .iter()
        .find(|a| media.eq_ignore_ascii_case(a.as_bytes()))
        .copied()
        .ok_or_else(|| {
            let media = String::from_utf8_lossy(media).to_ascii_lowercase();
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {media:?} is not supported here; use {}",
                    allowed.join(" or ")
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_read_without_case_or_parameters() {
        let json = &["application/json", "application/x-ndjson"];
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            media_type_in(&headers, json)
        };
        assert_eq!(
            media_type_in(&HeaderMap::new(), json).ok(),
            Some("application/json")
        );
        assert_eq!(with("application/json").ok(), Some("application/json"));
        assert_eq!(
            with(" Application/X-NDJSON ; charset=utf-8").ok(),
            Some("application/x-ndjson")
        );
        assert_eq!(
            with("application/x-www-form-urlencoded").ok(),
            Some("application/json")
        );
        let refused = with("Text/Plain; charset=utf-8").err().unwrap();
        assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            refused.body.reason.contains("\"text/plain\""),
            "{}",
            refused.body.reason
        );
    }

    #[test]
    fn ndjson_becomes_one_packet() {
        let body = b"{\"a\":1}\n\n  {\"b\":2}  \r\n";
        assert_eq!(
            &ndjson_to_array(body).ok().unwrap()[..],
            b"[{\"a\":1},{\"b\":2}]"
        );
        let err = ndjson_to_array(b"{\"a\":1}\nnope\n").err().unwrap();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.body.reason.contains("line 2"), "{}", err.body.reason);
    }

    #[test]
    fn record_errors_name_their_field() {
        assert_eq!(field_of(&RecordError::EmptySource), Some("source"));
        assert_eq!(
            field_of(&RecordError::MissingField { field: "timestamp" }),
            Some("timestamp")
        );
        assert_eq!(field_of(&RecordError::NotAnObject { found: "null" }), None);
    }
}
