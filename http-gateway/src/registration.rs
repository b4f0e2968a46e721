//! The old service's analyzer registration, unchanged for its analyzers:
//!
//! | endpoint | body | answer |
//! | --- | --- | --- |
//! | `POST /analyzer/register` | `{"id": "7", "weight": 0.3, "port": 5001}` | `200 {"registered":"7","url":"http://<caller>:5001/message/process"}` |
//! | `POST /analyzer/deregister` | `{"id": "7"}` | `200 {"deregistered":"7"}`, or 404 when it is not registered |
//!
//! A registration is stored in the KV bucket of registrations (key: the id) with the URL its
//! messages go to: the caller's address (or the distributor's `--bridge-host`) and `port`. The
//! distributor replicas watch that bucket and bridge each registered analyzer (see the
//! distributor's `bridges` module); the gateway only records. `id` and `port` may be JSON numbers
//! or strings, as the old service took them.

use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream::kv;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ApiError, Gateway};

/// Path the old service's analyzers receive messages on.
pub const PROCESS_PATH: &str = "/message/process";

/// Where the gateway records registrations.
#[derive(Clone)]
pub struct Registrations {
    pub store: kv::Store,
    /// Host of the bridges' URLs instead of the caller's address (e.g. when the analyzers sit
    /// behind a NAT, or register through a proxy).
    pub bridge_host: Option<String>,
}

impl std::fmt::Debug for Registrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrations")
            .field("bucket", &self.store.name)
            .field("bridge_host", &self.bridge_host)
            .finish()
    }
}

/// One registered analyzer, as stored in the bucket (the value of key `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub id: String,
    pub weight: f64,
    /// Where its messages are POSTed, one per request, `{"data": <log object>}`.
    pub url: String,
    pub registered_at_ms: u64,
}

#[derive(Debug, Serialize)]
struct Registered {
    registered: String,
    url: String,
}

#[derive(Debug, Serialize)]
struct Deregistered {
    deregistered: String,
}

pub(crate) async fn register(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let registrations = registrations(&gw)?;
        let fields = object(body)?;
        let id = id_field(&fields)?;
        let weight = match fields.get("weight") {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| bad("weight", "`weight` must be a number"))?;
        logdist::protocol::control::validate_weight(weight)
            .map_err(|e| bad("weight", e.to_string()))?;
        let port = match fields.get("port") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| bad("port", "`port` must be a TCP port, 1 to 65535"))?;
        let host = match &registrations.bridge_host {
            Some(host) => host.clone(),
            None => match caller.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => format!("[{ip}]"),
                },
            },
        };
        let registration = Registration {
            url: format!("http://{host}:{port}{PROCESS_PATH}"),
            id: id.clone(),
            weight,
            registered_at_ms: logdist::protocol::stats::unix_millis_now(),
        };
        let value = serde_json::to_vec(&registration).expect("a registration serializes");
        registrations
            .store
            .put(&id, value.into())
            .await
            .map_err(|e| unavailable(&registrations.store, e))?;
        tracing::info!(analyzer_id = %id, url = %registration.url, weight, "analyzer registered");
        Ok::<_, ApiError>(
            Json(Registered {
                registered: id,
                url: registration.url,
            })
            .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn deregister(
    State(gw): State<Arc<Gateway>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let registrations = registrations(&gw)?;
        let id = id_field(&object(body)?)?;
        let known = registrations
            .store
            .get(&id)
            .await
            .map_err(|e| unavailable(&registrations.store, e))?;
        if known.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_registered",
                format!("analyzer {id:?} is not registered"),
            ));
        }
        registrations
            .store
            .delete(&id)
            .await
            .map_err(|e| unavailable(&registrations.store, e))?;
        tracing::info!(analyzer_id = %id, "analyzer deregistered");
        Ok::<_, ApiError>(Json(Deregistered { deregistered: id }).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn registrations(gw: &Gateway) -> Result<&Registrations, ApiError> {
    gw.registrations.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "registration_disabled",
            "this gateway does not take analyzer registrations",
        )
    })
}

fn object(body: Result<Bytes, BytesRejection>) -> Result<serde_json::Map<String, Value>, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "wrong_shape",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_json",
            format!("the body is not JSON: {e}"),
        )),
    }
}

fn id_field(fields: &serde_json::Map<String, Value>) -> Result<String, ApiError> {
    let id = match fields.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(bad("id", "`id` must be a string or a number")),
    };
    logdist::protocol::control::validate_name("id", &id).map_err(|e| bad("id", e.to_string()))?;
    Ok(id)
}

fn bad(field: &'static str, reason: impl Into<String>) -> ApiError {
    let mut api = ApiError::new(StatusCode::BAD_REQUEST, "bad_registration", reason);
    api.body.field = Some(field);
    api
}

fn unavailable(store: &kv::Store, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "registrations_unavailable",
        format!(
            "cannot write the registrations bucket {:?}: {e}",
            store.name
        ),
    )
}
