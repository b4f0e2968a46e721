//! OTLP/HTTP logs: `POST /v1/logs`, so OpenTelemetry SDKs and Collectors send to logdist with
//! their own OTLP exporters (see docs/http.md and docs/agents.md).
//!
//! A request body is an `ExportLogsServiceRequest`, binary protobuf (`application/x-protobuf`) or
//! OTLP/JSON (`application/json`), optionally gzip-compressed; the types are the OpenTelemetry
//! project's own (`opentelemetry-proto`). [`to_packet`] turns one request into **one packet** of
//! log messages in the canonical shape of docs/protocol.md, one per `LogRecord`:
//!
//! | canonical field | from |
//! | --- | --- |
//! | `timestamp` | `time_unix_nano`, else `observed_time_unix_nano`, else the time the gateway received it; RFC 3339 with nanoseconds |
//! | `severity` | `severity_number` in the OTLP ranges 1–4 TRACE, 5–8 DEBUG, 9–12 INFO, 13–16 WARN, 17–20 ERROR, 21–24 FATAL; else `severity_text` read as a logdist severity name; INFO when the record has neither |
//! | `source` | the resource's `service.name`; without one `unknown_service:<process.executable.name>`, or `unknown_service` (the OpenTelemetry SDKs' own fallback) |
//! | `message` | a string body as it is; any other body as its JSON text; `""` without a body |
//! | `attributes`, `resource` | the record's and the resource's attributes, as a JSON object (omitted when empty) |
//! | `trace_id`, `span_id` | lower-case hex (omitted when empty) |
//! | `scope`, `event_name` | the instrumentation scope's name and the record's event name (omitted when empty) |
//!
//! The answer follows the OTLP specification: 200 with an `ExportLogsServiceResponse` (with
//! `partial_success` and the rejected count when some records were refused); 400 for a body that
//! does not decode; 413 over the size limit; 415 for another content type; 503 when NATS does not
//! take the packet — the only retryable one. Error bodies are a `google.rpc.Status`, in the
//! request's encoding. The client drops what a 400/413 or a partial success refuses, so the
//! gateway keeps the copy: one dead letter on the dead-letter subject per request, with the
//! reason — for refused records, the one `invalid_elements` dead letter of docs/protocol.md
//! (a report of each refused record as OTLP/JSON, or past the report limit the body whole).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use logdist::protocol::deadletter::{RejectedElement, BAD_OTLP_JSON, BAD_PROTOBUF};
use logdist::Severity;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord as OtlpLogRecord;
use prost::Message as _;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::{ApiError, Gateway};

/// The agent name of OTLP ingest: its packets go to `<ingest-subject>.otlp` with
/// `Logdist-Agent: otlp`.
pub const AGENT: &str = "otlp";

/// The resource attribute that names the service a record came from.
pub const SERVICE_NAME: &str = "service.name";

/// The source of records whose resource has no `service.name` (the OpenTelemetry resource
/// conventions' own fallback; `:<process.executable.name>` is appended when that is known).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Severity of records that carry neither a severity number nor a severity text.
pub const DEFAULT_SEVERITY: Severity = Severity::Info;

/// One export request, converted.
#[derive(Debug)]
pub struct Converted {
    /// The accepted records as one packet (a JSON array in the canonical shape), or `None` when
    /// the request carried no record that could be accepted.
    pub packet: Option<Vec<u8>>,
    /// Log messages in `packet`.
    pub accepted: usize,
    /// The records refused, each with its reason.
    pub rejected: Vec<RejectedRecord>,
}

/// A log record that cannot become a log message.
#[derive(Debug)]
pub struct RejectedRecord {
    /// Position of the record in the request, counting every record of every resource and scope.
    pub index: usize,
    /// The record as OTLP/JSON, for its entry in the request's dead letter.
    pub otlp_json: String,
    /// Stable reason code (docs/protocol.md's dead-letter codes).
    pub code: &'static str,
    pub reason: String,
}

impl RejectedElement for RejectedRecord {
    fn index(&self) -> usize {
        self.index
    }
    fn code(&self) -> &'static str {
        self.code
    }
    fn reason(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.reason)
    }
    fn element(&self) -> &str {
        &self.otlp_json
    }
}

/// Converts one export request into one packet; see the module docs for the mapping.
/// `received_at_nanos` stands in for a record that has neither timestamp.
pub fn to_packet(request: &ExportLogsServiceRequest, received_at_nanos: u64) -> Converted {
    let mut packet = Vec::new();
    let mut accepted = 0;
    let mut rejected = Vec::new();
    let mut index = 0;
    for resource_logs in &request.resource_logs {
        let resource: &[KeyValue] = resource_logs
            .resource
            .as_ref()
            .map_or(&[], |r| r.attributes.as_slice());
        let source = source_of(resource);
        for scope_logs in &resource_logs.scope_logs {
            let scope = scope_logs.scope.as_ref().map_or("", |s| s.name.as_str());
            for record in &scope_logs.log_records {
                match severity_of(record) {
                    Ok(severity) => {
                        packet.push(if accepted == 0 { b'[' } else { b',' });
                        let message = Canonical {
                            timestamp: rfc3339(timestamp_of(record, received_at_nanos)),
                            severity: severity.as_str(),
                            source: &source,
                            message: message_of(record.body.as_ref()),
                            attributes: Attributes(&record.attributes),
                            resource: Attributes(resource),
                            trace_id: hex(&record.trace_id),
                            span_id: hex(&record.span_id),
                            scope,
                            event_name: &record.event_name,
                        };
                        serde_json::to_writer(&mut packet, &message)
                            .expect("serializing to memory cannot fail");
                        accepted += 1;
                    }
                    Err(reason) => rejected.push(RejectedRecord {
                        index,
                        // Valid JSON either way: it goes into the report as it is.
                        otlp_json: serde_json::to_string(record).unwrap_or_else(|_| "null".into()),
                        code: "unknown_severity",
                        reason,
                    }),
                }
                index += 1;
            }
        }
    }
    if accepted > 0 {
        packet.push(b']');
    }
    Converted {
        packet: (accepted > 0).then_some(packet),
        accepted,
        rejected,
    }
}

/// One log message in the canonical shape, with the OTLP record's context as extra fields.
#[derive(Serialize)]
struct Canonical<'a> {
    timestamp: String,
    severity: &'static str,
    source: &'a str,
    message: Cow<'a, str>,
    #[serde(skip_serializing_if = "Attributes::is_empty")]
    attributes: Attributes<'a>,
    #[serde(skip_serializing_if = "Attributes::is_empty")]
    resource: Attributes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    event_name: &'a str,
}

/// The source of every record of one resource.
fn source_of(resource: &[KeyValue]) -> Cow<'_, str> {
    let string = |key: &str| {
        resource.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) if !s.trim().is_empty() => Some(s.as_str()),
                _ => None,
            }
        })
    };
    match (string(SERVICE_NAME), string("process.executable.name")) {
        (Some(service), _) => Cow::Borrowed(service),
        (None, Some(executable)) => Cow::Owned(format!("{UNKNOWN_SERVICE}:{executable}")),
        (None, None) => Cow::Borrowed(UNKNOWN_SERVICE),
    }
}

/// The canonical severity of a record, or why it has none.
fn severity_of(record: &OtlpLogRecord) -> Result<Severity, String> {
    let by_number = match record.severity_number {
        1..=4 => Some(Severity::Trace),
        5..=8 => Some(Severity::Debug),
        9..=12 => Some(Severity::Info),
        13..=16 => Some(Severity::Warn),
        17..=20 => Some(Severity::Error),
        21..=24 => Some(Severity::Fatal),
        _ => None,
    };
    let text = record.severity_text.trim();
    if let Some(severity) = by_number.or_else(|| Severity::parse(text)) {
        return Ok(severity);
    }
    if record.severity_number == 0 && text.is_empty() {
        return Ok(DEFAULT_SEVERITY);
    }
    Err(format!(
        "OTLP log record has severity_number {} (expected 1-24, or 0 for none) and severity_text \
         {:?} (not a severity name logdist knows); see docs/protocol.md",
        record.severity_number, record.severity_text
    ))
}

fn timestamp_of(record: &OtlpLogRecord, received_at_nanos: u64) -> u64 {
    [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|&t| t != 0)
        .unwrap_or(received_at_nanos)
}

/// Unix nanoseconds as an RFC 3339 date-time in UTC with nanoseconds (every u64 is in range).
fn rfc3339(unix_nanos: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

fn message_of(body: Option<&AnyValue>) -> Cow<'_, str> {
    match body.and_then(|b| b.value.as_ref()) {
        None => Cow::Borrowed(""),
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s),
        Some(_) => Cow::Owned(
            serde_json::to_string(&Json(body)).expect("serializing to memory cannot fail"),
        ),
    }
}

fn hex(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    Some(out)
}

/// OTLP attributes as one JSON object, values as [`Json`].
struct Attributes<'a>(&'a [KeyValue]);

impl Attributes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Attributes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for kv in self.0 {
            map.serialize_entry(&kv.key, &Json(kv.value.as_ref()))?;
        }
        map.end()
    }
}

/// An OTLP `AnyValue` as plain JSON: strings, booleans and numbers as themselves, arrays as
/// arrays, key-value lists as objects, bytes as base64 (as OTLP/JSON writes them), nothing as
/// `null`.
struct Json<'a>(Option<&'a AnyValue>);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use any_value::Value;
        match self.0.and_then(|v| v.value.as_ref()) {
            None | Some(Value::StringValueStrindex(_)) => serializer.serialize_unit(),
            Some(Value::StringValue(s)) => serializer.serialize_str(s),
            Some(Value::BoolValue(b)) => serializer.serialize_bool(*b),
            Some(Value::IntValue(i)) => serializer.serialize_i64(*i),
            Some(Value::DoubleValue(d)) => serializer.serialize_f64(*d),
            Some(Value::ArrayValue(array)) => {
                let mut seq = serializer.serialize_seq(Some(array.values.len()))?;
                for value in &array.values {
                    seq.serialize_element(&Json(Some(value)))?;
                }
                seq.end()
            }
            Some(Value::KvlistValue(list)) => Attributes(&list.values).serialize(serializer),
            Some(Value::BytesValue(bytes)) => {
                serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        }
    }
}

/// The two OTLP/HTTP encodings; the answer uses the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        })
    }
}

/// `google.rpc.Status`, the body of every OTLP/HTTP error (only the fields OTLP uses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC status codes, for `Status.code` (OTLP clients go by the HTTP status; this is for people).
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

/// An OTLP error answer.
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    fn into_response(self, encoding: Encoding) -> Response {
        let code = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => UNAVAILABLE,
            StatusCode::PAYLOAD_TOO_LARGE => RESOURCE_EXHAUSTED,
            _ => INVALID_ARGUMENT,
        };
        let body = match encoding {
            Encoding::Protobuf => Status {
                code,
                message: self.message,
            }
            .encode_to_vec(),
            Encoding::Json => {
                serde_json::to_vec(&serde_json::json!({"code": code, "message": self.message}))
                    .expect("serializing to memory cannot fail")
            }
        };
        (
            self.status,
            [(header::CONTENT_TYPE, encoding.content_type())],
            body,
        )
            .into_response()
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::new(e.status, e.body.reason)
    }
}

/// `ExportLogsServiceResponse`: empty on full success, `partial_success` with the count and the
/// reason when records were refused.
fn success(encoding: Encoding, rejected: &[RejectedRecord]) -> Response {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    let partial_success = rejected.first().map(|first| ExportLogsPartialSuccess {
        rejected_log_records: rejected.len() as i64,
        error_message: format!(
            "{} log records rejected (dead-lettered); the first, record {}: {}",
            rejected.len(),
            first.index,
            first.reason
        ),
    });
    let body = match encoding {
        Encoding::Protobuf => ExportLogsServiceResponse { partial_success }.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&match partial_success {
            None => serde_json::json!({}),
            Some(p) => serde_json::json!({"partialSuccess": {
                "rejectedLogRecords": p.rejected_log_records.to_string(),
                "errorMessage": p.error_message,
            }}),
        })
        .expect("serializing to memory cannot fail"),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// `POST /v1/logs`.
pub(crate) async fn export_logs(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let encoding = match media.as_str() {
        "application/x-protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            gw.counters
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
            return Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {media:?} is not OTLP/HTTP; use application/x-protobuf or \
                     application/json"
                ),
            )
            .into_response(Encoding::Json);
        }
    };
    match export(&gw, &headers, body, encoding).await {
        Ok(rejected) => {
            gw.counters
                .accepted_requests
                .fetch_add(1, Ordering::Relaxed);
            success(encoding, &rejected)
        }
        Err(failure) => {
            gw.counters
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(status = %failure.status, reason = %failure.message, "OTLP export rejected");
            failure.into_response(encoding)
        }
    }
}

/// Decodes, converts, dead-letters what is refused and publishes the packet; returns the
/// records refused (for the partial-success answer).
async fn export(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    encoding: Encoding,
) -> Result<Vec<RejectedRecord>, Failure> {
    let body = gw.body(headers, body)?;
    let decoded = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(&body[..]).map_err(|e| {
            (
                BAD_PROTOBUF,
                format!("body is not a protobuf ExportLogsServiceRequest: {e}"),
            )
        }),
        Encoding::Json => serde_json::from_slice::<ExportLogsServiceRequest>(&body).map_err(|e| {
            (
                BAD_OTLP_JSON,
                format!("body is not an OTLP/JSON ExportLogsServiceRequest: {e}"),
            )
        }),
    };
    let request = match decoded {
        Ok(request) => request,
        Err((code, reason)) => {
            // The client must not retry a 400 and drops the data: keep it as a dead letter.
            let media = encoding.content_type();
            gw.deadletter(AGENT, body, media.to_str().unwrap_or(""), code, &reason)
                .await?;
            return Err(Failure::new(StatusCode::BAD_REQUEST, reason));
        }
    };
    let received_at =
        u64::try_from(logdist::protocol::headers::unix_nanos_now()).unwrap_or(u64::MAX);
    let converted = to_packet(&request, received_at);
    if let Some(packet) = &converted.packet {
        if packet.len() > gw.validator.max_bytes() {
            let reason = format!(
                "the request's {} log records make a packet of {} bytes, over the limit of {} \
                 bytes (--http-max-body-bytes); export smaller batches",
                converted.accepted,
                packet.len(),
                gw.validator.max_bytes()
            );
            let media = encoding.content_type();
            gw.deadletter(
                AGENT,
                body,
                media.to_str().unwrap_or(""),
                "too_large",
                &reason,
            )
            .await?;
            return Err(Failure::new(StatusCode::PAYLOAD_TOO_LARGE, reason));
        }
    }
    // The dead letter first: should NATS fail now, the 503 makes the client send it all again.
    // One for the request, however many records it refuses.
    if !converted.rejected.is_empty() {
        let media = encoding.content_type();
        gw.elements_deadletter(
            AGENT,
            &body,
            media.to_str().unwrap_or(""),
            &converted.rejected,
            converted.accepted + converted.rejected.len(),
        )
        .await?;
    }
    if let Some(packet) = converted.packet {
        gw.publish(
            &gw.otlp_subject,
            AGENT,
            Bytes::from(packet),
            converted.accepted as u64,
        )
        .await?;
    }
    Ok(converted.rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn string(s: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    }

    fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, records: Vec<OtlpLogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.module".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn messages(converted: &Converted) -> Vec<serde_json::Value> {
        serde_json::from_slice(converted.packet.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn a_record_becomes_a_canonical_message_with_its_context() {
        let record = OtlpLogRecord {
            time_unix_nano: 1_764_590_400_123_456_789,
            observed_time_unix_nano: 1,
            severity_number: 13,
            severity_text: "WARN".into(),
            body: string("disk almost full"),
            attributes: vec![kv("disk", string("/dev/sda1"))],
            trace_id: vec![
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c,
            ],
            span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74],
            ..Default::default()
        };
        let req = request(vec![kv("service.name", string("checkout"))], vec![record]);
        let converted = to_packet(&req, 7);
        assert_eq!(converted.accepted, 1);
        assert!(converted.rejected.is_empty());
        let m = &messages(&converted)[0];
        assert_eq!(m["timestamp"], "2025-12-01T12:00:00.123456789Z");
        assert_eq!(m["severity"], "WARN");
        assert_eq!(m["source"], "checkout");
        assert_eq!(m["message"], "disk almost full");
        assert_eq!(m["attributes"]["disk"], "/dev/sda1");
        assert_eq!(m["resource"]["service.name"], "checkout");
        assert_eq!(m["trace_id"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(m["span_id"], "eee19b7ec3c1b174");
        assert_eq!(m["scope"], "app.module");
        // The packet passes the same validator as NATS ingest, on its fast path.
        let packet = converted.packet.unwrap();
        assert_eq!(
            logdist::PacketValidator::default().count_if_valid(&packet),
            Some(1)
        );
    }

    #[test]
    fn severity_numbers_by_range_then_text_then_the_default() {
        let cases = [
            (1, "", Ok(Severity::Trace)),
            (4, "", Ok(Severity::Trace)),
            (5, "", Ok(Severity::Debug)),
            (9, "", Ok(Severity::Info)),
            (12, "", Ok(Severity::Info)),
            (13, "", Ok(Severity::Warn)),
            (17, "", Ok(Severity::Error)),
            (20, "", Ok(Severity::Error)),
            (21, "", Ok(Severity::Fatal)),
            (24, "", Ok(Severity::Fatal)),
            // The number is the normalised one and wins over the text.
            (9, "ERROR", Ok(Severity::Info)),
            (0, "warning", Ok(Severity::Warn)),
            (25, "Error", Ok(Severity::Error)),
            (0, "", Ok(DEFAULT_SEVERITY)),
            (0, "LOUD", Err(())),
            (30, "", Err(())),
            (-1, "", Err(())),
        ];
        for (number, text, expected) in cases {
            let record = OtlpLogRecord {
                severity_number: number,
                severity_text: text.into(),
                ..Default::default()
            };
            assert_eq!(
                severity_of(&record).map_err(|_| ()),
                expected,
                "{number} {text:?}"
            );
        }
    }

    #[test]
    fn timestamps_fall_back_to_observed_then_receipt() {
        let observed = OtlpLogRecord {
            observed_time_unix_nano: 1_000_000_000,
            ..Default::default()
        };
        assert_eq!(timestamp_of(&observed, 5), 1_000_000_000);
        assert_eq!(timestamp_of(&OtlpLogRecord::default(), 5), 5);
        assert_eq!(rfc3339(1_000_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }

    #[test]
    fn source_falls_back_to_unknown_service() {
        assert_eq!(source_of(&[kv("service.name", string("web"))]), "web");
        assert_eq!(
            source_of(&[
                kv("service.name", string(" ")),
                kv("process.executable.name", string("python3"))
            ]),
            "unknown_service:python3"
        );
        assert_eq!(source_of(&[]), "unknown_service");
        assert_eq!(
            source_of(&[kv(
                "service.name",
                Some(AnyValue {
                    value: Some(any_value::Value::IntValue(3))
                })
            )]),
            "unknown_service"
        );
    }

    #[test]
    fn non_string_bodies_become_their_json() {
        let v = |value| Some(AnyValue { value: Some(value) });
        use any_value::Value;
        let body = v(Value::KvlistValue(KeyValueList {
            values: vec![
                kv("user", string("ann")),
                kv("ok", v(Value::BoolValue(true))),
                kv("n", v(Value::IntValue(-3))),
                kv(
                    "list",
                    v(Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(Value::DoubleValue(1.5)),
                            },
                            AnyValue {
                                value: Some(Value::BytesValue(vec![1, 2, 3])),
                            },
                        ],
                    })),
                ),
                kv("none", None),
            ],
        }));
        assert_eq!(
            message_of(body.as_ref()),
            r#"{"user":"ann","ok":true,"n":-3,"list":[1.5,"AQID"],"none":null}"#
        );
        assert_eq!(message_of(v(Value::IntValue(42)).as_ref()), "42");
        assert_eq!(message_of(None), "");
        assert_eq!(
            message_of(string("as is \"quoted\"").as_ref()),
            "as is \"quoted\""
        );
    }

    #[test]
    fn refused_records_are_counted_and_the_rest_forwarded() {
        let record = |n: i32, text: &str| OtlpLogRecord {
            severity_number: n,
            severity_text: text.into(),
            body: string("m"),
            ..Default::default()
        };
        let req = request(
            vec![],
            vec![
                record(9, ""),
                record(0, "LOUD"),
                record(17, ""),
                record(99, ""),
            ],
        );
        let converted = to_packet(&req, 1);
        assert_eq!(converted.accepted, 2);
        let indexes: Vec<_> = converted.rejected.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [1, 3]);
        assert_eq!(converted.rejected[0].code, "unknown_severity");
        assert!(converted.rejected[0].reason.contains("\"LOUD\""));
        // The dead letter is the record itself, as OTLP/JSON.
        let back: OtlpLogRecord = serde_json::from_str(&converted.rejected[0].otlp_json).unwrap();
        assert_eq!(back, record(0, "LOUD"));
        let m = messages(&converted);
        assert_eq!(
            (m[0]["severity"].as_str(), m[1]["severity"].as_str()),
            (Some("INFO"), Some("ERROR"))
        );
        assert_eq!(m[0]["source"], "unknown_service");

        let empty = to_packet(&ExportLogsServiceRequest::default(), 1);
        assert!(empty.packet.is_none() && empty.rejected.is_empty());
    }
}
