//! The log-packet wire contract: what agents publish on the ingest subjects and how it is
//! validated (see `docs/protocol.md`).
//!
//! A payload is one JSON log object or a JSON array of them (a *packet*). A log object has
//! `timestamp` (integer epoch or RFC 3339 string), `severity` (TRACE, DEBUG, INFO, WARN, ERROR,
//! FATAL, their aliases and the syslog keywords, any case: [`Severity::parse`]), `source`
//! (non-empty string) and `message` (string); any other field is allowed and kept, because
//! payload bytes are forwarded unchanged.
//!
//! [`PacketValidator::parse`] checks a payload once and borrows everything from it: valid records
//! carry their raw JSON bytes so a distributor can forward them untouched, invalid ones carry
//! their index and a [`RecordError`] so they can be dead-lettered one by one. A payload that cannot
//! be read as a packet at all is a [`PacketError`]. Every error has a stable machine-readable
//! [`code`](PacketError::code) (for counters and the `Logdist-Error-Code` header) and a sentence
//! for people (its `Display`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

pub use super::structural::Kernel as ScanKernel;

/// Default largest payload, in bytes, that a distributor accepts: 8 MiB, the `max_payload` that
/// `nats.conf` sets, so any packet the server accepts is also accepted here.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 8 * 1024 * 1024;

/// Severity of one log message: the six levels analyzers count. [`Severity::parse`] reads the
/// canonical names, the aliases common log libraries emit (`WARNING`, `CRITICAL`) and syslog's
/// keywords, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

/// `| LOWER` lower-cases the ASCII letters of a word of 8 bytes.
const LOWER: u64 = 0x2020_2020_2020_2020;

/// A severity name of at most 8 bytes as the lower-cased word [`Severity::parse`] compares.
const fn word(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut padded = [0u8; 8];
    let mut i = 0;
    while i < bytes.len() {
        padded[i] = bytes[i];
        i += 1;
    }
    u64::from_le_bytes(padded) | LOWER
}

const TRACE: u64 = word("trace");
const DEBUG: u64 = word("debug");
const INFO: u64 = word("info");
const NOTICE: u64 = word("notice");
const WARN: u64 = word("warn");
const WARNING: u64 = word("warning");
const ERROR: u64 = word("error");
const ERR: u64 = word("err");
const FATAL: u64 = word("fatal");
const CRITICAL: u64 = word("critical");
const CRIT: u64 = word("crit");
const ALERT: u64 = word("alert");
const EMERG: u64 = word("emerg");
const PANIC: u64 = word("panic");

impl Severity {
    /// All severities, least severe first (the order of analyzer reports).
    pub const ALL: [Severity; 6] = [
        Severity::Trace,
        Severity::Debug,
        Severity::Info,
        Severity::Warn,
        Severity::Error,
        Severity::Fatal,
    ];

    /// Parses a severity name, ignoring ASCII case: the six canonical names, their aliases
    /// WARNING and CRITICAL, and the syslog keywords of RFC 5424 with their common spellings
    /// (docs/protocol.md, "Severities", has the table). `None` for anything else.
    pub fn parse(name: &str) -> Option<Severity> {
        Severity::parse_bytes(name.as_bytes())
    }

    /// [`Severity::parse`] of a name's bytes (the fast validator has bytes, not a `str`; no
    /// severity name has a non-ASCII byte, so none matches one).
    pub(crate) fn parse_bytes(bytes: &[u8]) -> Option<Severity> {
        use Severity::*;
        if bytes.len() > 8 {
            return [
                ("emergency", Fatal),
                ("information", Info),
                ("informational", Info),
            ]
            .into_iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(bytes))
            .map(|(_, s)| s);
        }
        // Up to 8 bytes as one lower-cased word, matched against constants: a few instructions
        // per message on the validator's fast path, whatever the case or the name (callgrind:
        // logdist/examples/count_if_valid.rs). `| 0x20` lower-cases a letter and turns no other
        // byte into a letter, so a match means every byte is that letter in some case.
        // The word is built from two loads that overlap (of 2 or 4 bytes: the first ones and
        // the last ones, shifted into place), not copied into a zeroed buffer and loaded whole:
        // that copy of a variable length, then a load of 8 bytes over it, stalled the load
        // until the copy's stores were done. Bytes past the name stay 0, as in [`word`].
        let len = bytes.len();
        let word = match len {
            3 => u64::from(u16::from_le_bytes([bytes[0], bytes[1]])) | u64::from(bytes[2]) << 16,
            4..=8 => {
                let first = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                let last = u32::from_le_bytes([
                    bytes[len - 4],
                    bytes[len - 3],
                    bytes[len - 2],
                    bytes[len - 1],
                ]);
                u64::from(first) | u64::from(last) << (8 * (len - 4))
            }
            // No severity name is shorter than 3 bytes.
            _ => return None,
        } | LOWER;
        match (len, word) {
            (5, TRACE) => Some(Trace),
            (5, DEBUG) => Some(Debug),
            (4, INFO) | (6, NOTICE) => Some(Info),
            (4, WARN) | (7, WARNING) => Some(Warn),
            (5, ERROR) | (3, ERR) => Some(Error),
            (5, FATAL) | (8, CRITICAL) | (4, CRIT) | (5, ALERT) | (5, EMERG) | (5, PANIC) => {
                Some(Fatal)
            }
            _ => None,
        }
    }

    /// The canonical upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Trace => "TRACE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Warn => "WARN",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }

    /// Position in [`Severity::ALL`], for per-severity counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a log message happened, as the agent wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// An integer epoch (the unit is the agent's: seconds, milliseconds…; not interpreted).
    Epoch(i64),
    /// An RFC 3339 date-time, as unix nanoseconds.
    UnixNanos(i128),
}

/// One valid log message, borrowed from the payload it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    pub timestamp: Timestamp,
    pub severity: Severity,
    pub source: Cow<'a, str>,
    pub message: Cow<'a, str>,
}

/// Why a whole payload is not a packet. Nothing in such a payload is routed: it is dead-lettered
/// whole with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("payload is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("payload is not JSON: {detail}")]
    NotJson { detail: String },
    #[error("payload is JSON {found}, expected a log object or an array of log objects")]
    WrongShape { found: &'static str },
    #[error("payload is an empty array: a packet needs at least one log message")]
    Empty,
    /// A payload that is a single log object, and that object is invalid.
    #[error("{0}")]
    Record(RecordError),
}

impl PacketError {
    /// Stable short name of the reason, for counters and the `Logdist-Error-Code` header.
    pub fn code(&self) -> &'static str {
        match self {
            PacketError::TooLarge { .. } => "too_large",
            PacketError::NotUtf8 { .. } => "not_utf8",
            PacketError::NotJson { .. } => "not_json",
            PacketError::WrongShape { .. } => "wrong_shape",
            PacketError::Empty => "empty_packet",
            PacketError::Record(e) => e.code(),
        }
    }
}

/// Why one log object (alone or inside a packet) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("log message is JSON {found}, expected an object")]
    NotAnObject { found: &'static str },
    #[error("log message has no `{field}` field")]
    MissingField { field: &'static str },
    #[error("field `{field}` must be {expected}, got {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("field `severity` is {value:?}, expected TRACE, DEBUG, INFO, WARN, ERROR, FATAL or an alias of docs/protocol.md (WARNING, CRITICAL, and syslog's emerg, alert, crit, err, notice, informational, …)")]
    UnknownSeverity { value: String },
    #[error("field `source` is empty")]
    EmptySource,
    #[error("field `timestamp` is {value:?}, which is not an RFC 3339 date-time")]
    BadTimestamp { value: String },
    #[error("log message is not valid JSON: {detail}")]
    Malformed { detail: String },
}

impl RecordError {
    /// Stable short name of the reason, for counters and the `Logdist-Error-Code` header.
    pub fn code(&self) -> &'static str {
        match self {
            RecordError::NotAnObject { .. } => "not_an_object",
            RecordError::MissingField { .. } => "missing_field",
            RecordError::WrongType { .. } => "wrong_type",
            RecordError::UnknownSeverity { .. } => "unknown_severity",
            RecordError::EmptySource => "empty_source",
            RecordError::BadTimestamp { .. } => "bad_timestamp",
            RecordError::Malformed { .. } => "malformed",
        }
    }
}

/// One element of a packet that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord<'a> {
    /// Position in the packet (0 for a single-object payload).
    pub index: usize,
    /// The element's exact JSON text.
    pub raw: &'a str,
    pub error: RecordError,
}

/// Whether the payload was one object or an array; a distributor forwards a fully valid payload
/// as it came, whatever its form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketForm {
    Object,
    Array,
}

/// A payload that is a packet: its valid records and its invalid elements, in payload order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub form: PacketForm,
    pub records: Vec<LogRecord<'a>>,
    pub invalid: Vec<InvalidRecord<'a>>,
    /// The exact JSON text of each valid record, extra fields included; kept only for a packet
    /// with invalid elements (a fully valid one is forwarded as it came).
    valid_raw: Vec<&'a str>,
    /// The whole payload's text.
    text: &'a str,
}

impl<'a> Packet<'a> {
    /// Number of elements in the payload, valid or not.
    pub fn len(&self) -> usize {
        self.records.len() + self.invalid.len()
    }

    /// Always false: an empty array is a [`PacketError::Empty`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every element is valid, so the payload can be forwarded byte for byte.
    pub fn is_fully_valid(&self) -> bool {
        self.invalid.is_empty()
    }

    /// The valid records as a JSON array of their original text, for forwarding the valid part
    /// of a mixed packet. For a fully valid packet this is the payload itself.
    pub fn valid_json_array(&self) -> String {
        if self.is_fully_valid() {
            return self.text.trim().to_string();
        }
        let len = self.valid_raw.iter().map(|r| r.len() + 1).sum::<usize>() + 2;
        let mut out = String::with_capacity(len);
        out.push('[');
        for (i, raw) in self.valid_raw.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(raw);
        }
        out.push(']');
        out
    }
}

/// Validates payloads against the wire contract. Cheap to copy; holds only the size limit.
#[derive(Debug, Clone, Copy)]
pub struct PacketValidator {
    max_bytes: usize,
}

impl Default for PacketValidator {
    fn default() -> Self {
        PacketValidator::new(DEFAULT_MAX_PACKET_BYTES)
    }
}

impl PacketValidator {
    /// A validator that rejects payloads larger than `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        PacketValidator { max_bytes }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The number of log messages in `payload` when it is a packet whose every element is
    /// valid, or `None` (then [`parse`](Self::parse) tells what is wrong). Builds nothing: a
    /// structural scanner in the manner of simdjson (`structural.rs`, `packet_scan.rs`), with
    /// AVX2 where the CPU has it; what a router needs, several times cheaper than `parse`
    /// (BENCHMARKS.md). Its verdict is that of [`count_if_valid_serde`](Self::count_if_valid_serde)
    /// on every input (property-tested).
    pub fn count_if_valid(&self, payload: &[u8]) -> Option<usize> {
        self.count_if_valid_using(ScanKernel::detect(), payload)
    }

    /// [`count_if_valid`](Self::count_if_valid) with the stage-1 kernel given (see
    /// [`ScanKernel::available`]): for tests and benchmarks that pin one.
    pub fn count_if_valid_using(&self, kernel: ScanKernel, payload: &[u8]) -> Option<usize> {
        if payload.len() > self.max_bytes {
            return None;
        }
        super::packet_scan::count_valid(payload, kernel)
    }

    /// The same verdict as [`count_if_valid`](Self::count_if_valid), by serde_json reading the
    /// four fields (the validator before the scanner): the reference the scanner is
    /// property-tested against and benchmarked beside.
    pub fn count_if_valid_serde(&self, payload: &[u8]) -> Option<usize> {
        if payload.len() > self.max_bytes {
            return None;
        }
        let text = std::str::from_utf8(payload).ok()?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let count = ValidCount.deserialize(&mut deserializer).ok()?;
        deserializer.end().ok()?;
        (count > 0).then_some(count)
    }

    /// Parses and validates one payload. See the module docs for the rules.
    pub fn parse<'a>(&self, payload: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        if payload.len() > self.max_bytes {
            return Err(PacketError::TooLarge {
                size: payload.len(),
                limit: self.max_bytes,
            });
        }
        let text = std::str::from_utf8(payload).map_err(|e| PacketError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        let first = text
            .bytes()
            .find(|b| !b.is_ascii_whitespace())
            .ok_or_else(|| PacketError::NotJson {
                detail: "payload is empty".to_string(),
            })?;
        match first {
            b'{' => {
                // One pass for the common valid case; the exact reason comes from the careful
                // path below, which tells a syntax error from a bad record.
                if let Ok(fields) = serde_json::from_str::<RecordFields<'_>>(text) {
                    if let Ok(record) = validate_fields(fields) {
                        return Ok(Packet {
                            form: PacketForm::Object,
                            records: vec![record],
                            invalid: Vec::new(),
                            valid_raw: Vec::new(),
                            text,
                        });
                    }
                }
                let raw: &RawValue = serde_json::from_str(text).map_err(not_json)?;
                match parse_record(raw.get()) {
                    Ok(record) => Ok(Packet {
                        form: PacketForm::Object,
                        records: vec![record],
                        invalid: Vec::new(),
                        valid_raw: Vec::new(),
                        text,
                    }),
                    Err(error) => Err(PacketError::Record(error)),
                }
            }
            b'[' => {
                // Fast path, one pass: every element straight into its fields. Any problem (a
                // syntax error, a non-object element, an invalid record) falls back to the
                // element-by-element path, which finds each reason and each element's text.
                if let Ok(all) = serde_json::from_str::<Vec<RecordFields<'_>>>(text) {
                    if !all.is_empty() {
                        let records: Result<Vec<_>, _> =
                            all.into_iter().map(validate_fields).collect();
                        if let Ok(records) = records {
                            return Ok(Packet {
                                form: PacketForm::Array,
                                records,
                                invalid: Vec::new(),
                                valid_raw: Vec::new(),
                                text,
                            });
                        }
                    }
                }
                let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(not_json)?;
                if elements.is_empty() {
                    return Err(PacketError::Empty);
                }
                let mut records = Vec::with_capacity(elements.len());
                let mut valid_raw = Vec::with_capacity(elements.len());
                let mut invalid = Vec::new();
                for (index, element) in elements.iter().enumerate() {
                    let raw = element.get();
                    match parse_record(raw) {
                        Ok(record) => {
                            records.push(record);
                            valid_raw.push(raw);
                        }
                        Err(error) => invalid.push(InvalidRecord { index, raw, error }),
                    }
                }
                if invalid.is_empty() {
                    valid_raw.clear();
                }
                Ok(Packet {
                    form: PacketForm::Array,
                    records,
                    invalid,
                    valid_raw,
                    text,
                })
            }
            _ => {
                // Not an object or array: tell which JSON kind it is, or that it is not JSON.
                let value: serde_json::Value = serde_json::from_str(text).map_err(not_json)?;
                Err(PacketError::WrongShape {
                    found: json_kind(&value),
                })
            }
        }
    }
}

fn not_json(e: serde_json::Error) -> PacketError {
    PacketError::NotJson {
        detail: e.to_string(),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Validates one element's JSON text (already known to be well-formed JSON).
fn parse_record(raw: &str) -> Result<LogRecord<'_>, RecordError> {
    let first = raw.as_bytes().first().copied().unwrap_or(b' ');
    if first != b'{' {
        let found = match first {
            b'[' => "an array",
            b'"' => "a string",
            b'n' => "null",
            b't' | b'f' => "a boolean",
            _ => "a number",
        };
        return Err(RecordError::NotAnObject { found });
    }
    let fields: RecordFields<'_> =
        serde_json::from_str(raw).map_err(|e| RecordError::Malformed {
            detail: e.to_string(),
        })?;
    validate_fields(fields)
}

/// Applies the contract's rules to the four fields of one log object.
fn validate_fields(fields: RecordFields<'_>) -> Result<LogRecord<'_>, RecordError> {
    let timestamp = match fields.timestamp {
        Scalar::Absent => return Err(RecordError::MissingField { field: "timestamp" }),
        Scalar::Int(n) => Timestamp::Epoch(n),
        Scalar::Str(s) => {
            let parsed =
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| RecordError::BadTimestamp {
                        value: s.clone().into_owned(),
                    })?;
            Timestamp::UnixNanos(parsed.unix_timestamp_nanos())
        }
        other => {
            return Err(RecordError::WrongType {
                field: "timestamp",
                expected: "an integer epoch or an RFC 3339 string",
                found: other.kind(),
            })
        }
    };
    let severity = match fields.severity {
        Scalar::Absent => return Err(RecordError::MissingField { field: "severity" }),
        Scalar::Str(s) => Severity::parse(&s).ok_or_else(|| RecordError::UnknownSeverity {
            value: s.into_owned(),
        })?,
        other => {
            return Err(RecordError::WrongType {
                field: "severity",
                expected: "a string",
                found: other.kind(),
            })
        }
    };
    let source = expect_string("source", fields.source)?;
    if source.is_empty() {
        return Err(RecordError::EmptySource);
    }
    let message = expect_string("message", fields.message)?;
    Ok(LogRecord {
        timestamp,
        severity,
        source,
        message,
    })
}

fn expect_string<'a>(field: &'static str, value: Scalar<'a>) -> Result<Cow<'a, str>, RecordError> {
    match value {
        Scalar::Absent => Err(RecordError::MissingField { field }),
        Scalar::Str(s) => Ok(s),
        other => Err(RecordError::WrongType {
            field,
            expected: "a string",
            found: other.kind(),
        }),
    }
}

/// The four contract fields of a log object; other fields are skipped without being built.
/// Only a JSON object decodes into it (serde's derive would also take an array, by position).
#[derive(Default)]
struct RecordFields<'a> {
    timestamp: Scalar<'a>,
    severity: Scalar<'a>,
    source: Scalar<'a>,
    message: Scalar<'a>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RecordFields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Reads the four contract fields of one JSON object, skipping the others.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = RecordFields<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RecordFields::default();
        while let Some(key) = map.next_key::<FieldName>()? {
            let slot = match key {
                FieldName::Timestamp => &mut fields.timestamp,
                FieldName::Severity => &mut fields.severity,
                FieldName::Source => &mut fields.source,
                FieldName::Message => &mut fields.message,
                FieldName::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if !matches!(slot, Scalar::Absent) {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    key.name()
                )));
            }
            *slot = map.next_value()?;
        }
        Ok(fields)
    }
}

/// Counts the log messages of a payload whose every element is valid, building nothing; any
/// problem is an error without detail (the careful path finds the reason).
struct ValidCount;

impl<'de> DeserializeSeed<'de> for ValidCount {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValidCount {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log object or an array of log objects")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<usize, A::Error> {
        let fields = FieldsVisitor.visit_map(map)?;
        validate_fields(fields).map_err(|_| de::Error::custom("invalid log object"))?;
        Ok(1)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while let Some(fields) = seq.next_element::<RecordFields<'de>>()? {
            validate_fields(fields).map_err(|_| de::Error::custom("invalid log object"))?;
            count += 1;
        }
        Ok(count)
    }
}

/// A key of a log object, as far as validation cares.
#[derive(Clone, Copy)]
enum FieldName {
    Timestamp,
    Severity,
    Source,
    Message,
    Other,
}

impl FieldName {
    fn name(self) -> &'static str {
        match self {
            FieldName::Timestamp => "timestamp",
            FieldName::Severity => "severity",
            FieldName::Source => "source",
            FieldName::Message => "message",
            FieldName::Other => "",
        }
    }
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldName, E> {
                Ok(match v {
                    "timestamp" => FieldName::Timestamp,
                    "severity" => FieldName::Severity,
                    "source" => FieldName::Source,
                    "message" => FieldName::Message,
                    _ => FieldName::Other,
                })
            }
        }
        deserializer.deserialize_identifier(NameVisitor)
    }
}

/// Any JSON value, reduced to what validation needs: integers and strings kept, the rest only
/// named (so a wrong-typed field gets a precise reason without building the value). `Absent` is
/// a field the object does not have (unlike `null`, which is a wrong type).
#[derive(Default)]
enum Scalar<'a> {
    #[default]
    Absent,
    Int(i64),
    Str(Cow<'a, str>),
    Other(&'static str),
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Absent => "nothing",
            Scalar::Int(_) => "an integer",
            Scalar::Str(_) => "a string",
            Scalar::Other(kind) => kind,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v)
                    .map(Scalar::Int)
                    .unwrap_or(Scalar::Other("an integer out of range")))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Other("a fractional number"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other("a boolean"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other("null"))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an object"))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str =
        r#"{"timestamp":1020,"severity":"WARN","source":"app","message":"hello world!"}"#;

    fn parse(payload: &str) -> Result<Packet<'_>, PacketError> {
        PacketValidator::default().parse(payload.as_bytes())
    }

    /// `count_if_valid` says "valid, n messages" exactly when `parse` finds a packet of n
    /// elements with none invalid, for every shape of payload, good and bad.
    #[test]
    fn count_if_valid_agrees_with_parse() {
        let v = PacketValidator::new(4096);
        let big = format!("[{}]", vec![HELLO; 60].join(","));
        let cases: Vec<String> = vec![
            HELLO.into(),
            format!(" [{HELLO}, {HELLO}] "),
            format!("[{HELLO}]"),
            big,
            "[]".into(),
            "".into(),
            "   ".into(),
            "null".into(),
            "17".into(),
            r#""text""#.into(),
            "[1,2]".into(),
            format!("[{HELLO},1]"),
            format!("[{HELLO},{{}}]"),
            format!("[{HELLO}"),
            format!("{HELLO} x"),
            format!("{HELLO}{HELLO}"),
            r#"{"timestamp":"2026-11-25T10:00:00Z","severity":"info","source":"web","message":"GET /","extra":[1,{"a":null}]}"#.into(),
            r#"{"timestamp":"yesterday","severity":"info","source":"web","message":""}"#.into(),
            r#"{"timestamp":1.5,"severity":"info","source":"web","message":""}"#.into(),
            r#"{"timestamp":1,"severity":"LOUD","source":"web","message":""}"#.into(),
            r#"{"timestamp":1,"severity":"info","source":"","message":""}"#.into(),
            r#"{"timestamp":1,"severity":"info","source":"web"}"#.into(),
            r#"{"timestamp":1,"severity":"info","source":"web","message":3}"#.into(),
            r#"{"timestamp":1,"timestamp":2,"severity":"info","source":"web","message":""}"#.into(),
            r#"{"timestamp":1,"severity":"info","source":"w\u00e9b\n","message":"\"q\""}"#.into(),
            r#"{"timestamp":1,"severity":"info","source":"web","message":"\ud800"}"#.into(),
            "[[1]]".into(),
            format!("[{HELLO},[{HELLO}]]"),
        ];
        for case in &cases {
            let expected = match v.parse(case.as_bytes()) {
                Ok(p) if p.is_fully_valid() => Some(p.len()),
                _ => None,
            };
            assert_eq!(
                v.count_if_valid(case.as_bytes()),
                expected,
                "payload {case:?}"
            );
        }
        let mut not_utf8 = HELLO.as_bytes().to_vec();
        not_utf8[40] = 0xff;
        assert_eq!(v.count_if_valid(&not_utf8), None);
        assert_eq!(
            PacketValidator::new(10).count_if_valid(HELLO.as_bytes()),
            None
        );
    }

    fn record_error(payload: &str) -> RecordError {
        match parse(payload) {
            Err(PacketError::Record(e)) => e,
            other => panic!("expected a record error for {payload}, got {other:?}"),
        }
    }

    #[test]
    fn single_object_is_a_one_message_packet() {
        let packet = parse(HELLO).unwrap();
        assert_eq!(packet.form, PacketForm::Object);
        assert_eq!(packet.len(), 1);
        let r = &packet.records[0];
        assert_eq!(r.timestamp, Timestamp::Epoch(1020));
        assert_eq!(r.severity, Severity::Warn);
        assert_eq!(r.source, "app");
        assert_eq!(r.message, "hello world!");
        assert_eq!(packet.valid_json_array(), HELLO);
    }

    #[test]
    fn array_of_objects_keeps_order_and_raw_text() {
        let payload = format!("[{HELLO}, {HELLO} ]");
        let packet = parse(&payload).unwrap();
        assert_eq!(packet.form, PacketForm::Array);
        assert_eq!(packet.records.len(), 2);
        assert!(packet.is_fully_valid());
        // A fully valid packet is its payload, byte for byte.
        assert_eq!(packet.valid_json_array(), payload);
        let mixed = format!("[{HELLO}, 1, {HELLO} ]");
        assert_eq!(
            parse(&mixed).unwrap().valid_json_array(),
            format!("[{HELLO},{HELLO}]")
        );
    }

    #[test]
    fn empty_array_is_rejected() {
        assert_eq!(parse("[]").unwrap_err(), PacketError::Empty);
        assert_eq!(parse(" [ ] ").unwrap_err().code(), "empty_packet");
    }

    #[test]
    fn extra_fields_are_kept_in_raw() {
        let payload = r#"{"timestamp":1,"severity":"info","source":"a","message":"m","host":"h1","tags":{"k":[1,2]}}"#;
        let packet = parse(payload).unwrap();
        assert_eq!(packet.records[0].severity, Severity::Info);
        // Kept byte for byte when the valid part of a mixed packet is forwarded.
        let mixed = format!("[{payload}, 7]");
        let packet = parse(&mixed).unwrap();
        assert_eq!(packet.valid_json_array(), format!("[{payload}]"));
    }

    #[test]
    fn rfc3339_timestamps_and_escaped_strings() {
        let payload = r#"{"timestamp":"2026-11-25T10:00:00.5+01:00","severity":"Critical","source":"db\n1","message":"quote \" here"}"#;
        let r = &parse(payload).unwrap().records[0];
        assert_eq!(r.timestamp, Timestamp::UnixNanos(1_795_597_200_500_000_000));
        assert_eq!(r.severity, Severity::Fatal);
        assert_eq!(r.source, "db\n1");
        assert_eq!(r.message, "quote \" here");
    }

    /// The table of docs/protocol.md ("Severities"), row by row, in several cases.
    #[test]
    fn syslog_keywords_map_to_their_documented_levels() {
        let table = [
            (Severity::Trace, &["trace"][..]),
            (Severity::Debug, &["debug"]),
            (
                Severity::Info,
                &["info", "informational", "information", "notice"],
            ),
            (Severity::Warn, &["warn", "warning"]),
            (Severity::Error, &["error", "err"]),
            (
                Severity::Fatal,
                &[
                    "fatal",
                    "critical",
                    "crit",
                    "alert",
                    "emerg",
                    "emergency",
                    "panic",
                ],
            ),
        ];
        for (level, names) in table {
            for name in names {
                let mixed: String = name
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i % 2 == 0 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect();
                for spelling in [name.to_string(), name.to_ascii_uppercase(), mixed] {
                    assert_eq!(Severity::parse(&spelling), Some(level), "{spelling}");
                }
            }
        }
        for unknown in [
            "",
            "LOUD",
            "warnings",
            "in",
            "informationall",
            "e rr",
            "emerg ",
            "7",
        ] {
            assert_eq!(Severity::parse(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn severity_names_match_in_any_case_and_nothing_else_does() {
        use Severity::*;
        let names = [
            ("trace", Trace),
            ("debug", Debug),
            ("info", Info),
            ("notice", Info),
            ("information", Info),
            ("informational", Info),
            ("warn", Warn),
            ("warning", Warn),
            ("error", Error),
            ("err", Error),
            ("fatal", Fatal),
            ("critical", Fatal),
            ("crit", Fatal),
            ("alert", Fatal),
            ("emerg", Fatal),
            ("emergency", Fatal),
            ("panic", Fatal),
        ];
        let reference = |bytes: &[u8]| {
            names
                .iter()
                .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(bytes))
                .map(|&(_, s)| s)
        };
        let mut tried = 0;
        for (name, expected) in names {
            let upper = name.to_ascii_uppercase();
            let title = format!("{}{}", &upper[..1], &name[1..]);
            for spelling in [name.to_string(), upper, title] {
                assert_eq!(Severity::parse_bytes(spelling.as_bytes()), Some(expected));
            }
            // Every prefix, every one-byte change (letters of the other case, near letters,
            // bytes that `| 0x20` maps onto a letter's bits) and one byte more.
            let bytes = name.as_bytes();
            for len in 0..bytes.len() {
                let prefix = &bytes[..len];
                assert_eq!(
                    Severity::parse_bytes(prefix),
                    reference(prefix),
                    "{prefix:?}"
                );
                tried += 1;
            }
            for at in 0..bytes.len() {
                for replacement in [
                    b'x',
                    b'\0',
                    b'@',
                    b'[',
                    b'{',
                    bytes[at] ^ 0x20,
                    bytes[at] + 1,
                ] {
                    let mut changed = bytes.to_vec();
                    changed[at] = replacement;
                    assert_eq!(
                        Severity::parse_bytes(&changed),
                        reference(&changed),
                        "{changed:?}"
                    );
                    tried += 1;
                }
            }
            let longer = [bytes, b"s"].concat();
            assert_eq!(
                Severity::parse_bytes(&longer),
                reference(&longer),
                "{longer:?}"
            );
        }
        assert!(tried > 500);
    }

    #[test]
    fn every_severity_spelling_is_accepted() {
        for (name, expected) in [
            ("trace", Severity::Trace),
            ("DEBUG", Severity::Debug),
            ("Info", Severity::Info),
            ("warn", Severity::Warn),
            ("WARNING", Severity::Warn),
            ("error", Severity::Error),
            ("FATAL", Severity::Fatal),
            ("critical", Severity::Fatal),
        ] {
            let payload =
                format!(r#"{{"timestamp":1,"severity":"{name}","source":"s","message":"m"}}"#);
            assert_eq!(parse(&payload).unwrap().records[0].severity, expected);
        }
    }

    #[test]
    fn not_utf8() {
        let err = PacketValidator::default()
            .parse(b"{\"a\":\"\xff\"}")
            .unwrap_err();
        assert_eq!(err, PacketError::NotUtf8 { offset: 6 });
        assert_eq!(err.code(), "not_utf8");
    }

    #[test]
    fn not_json() {
        for payload in ["hello", "{", "[1,", "", "   ", "{\"timestamp\":1}}"] {
            let err = parse(payload).unwrap_err();
            assert_eq!(err.code(), "not_json", "{payload:?} gave {err}");
        }
    }

    #[test]
    fn wrong_shapes_name_what_they_are() {
        for (payload, found) in [
            ("42", "a number"),
            ("\"text\"", "a string"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            assert_eq!(
                parse(payload).unwrap_err(),
                PacketError::WrongShape { found },
                "{payload}"
            );
        }
    }

    #[test]
    fn nested_arrays_and_non_objects_in_a_packet_are_invalid_elements() {
        let payload = format!(r#"[[{HELLO}], 7, {HELLO}, "x", null]"#);
        let packet = parse(&payload).unwrap();
        assert_eq!(packet.records.len(), 1);
        let found: Vec<_> = packet
            .invalid
            .iter()
            .map(|i| (i.index, i.error.clone()))
            .collect();
        assert_eq!(
            found,
            vec![
                (0, RecordError::NotAnObject { found: "an array" }),
                (1, RecordError::NotAnObject { found: "a number" }),
                (3, RecordError::NotAnObject { found: "a string" }),
                (4, RecordError::NotAnObject { found: "null" }),
            ]
        );
        assert_eq!(packet.invalid[0].raw, format!("[{HELLO}]"));
    }

    #[test]
    fn missing_fields() {
        for field in ["timestamp", "severity", "source", "message"] {
            let mut value: serde_json::Value = serde_json::from_str(HELLO).unwrap();
            value.as_object_mut().unwrap().remove(field);
            let err = record_error(&value.to_string());
            assert_eq!(err, RecordError::MissingField { field });
            assert_eq!(
                err.to_string(),
                format!("log message has no `{field}` field")
            );
        }
    }

    #[test]
    fn wrong_typed_fields() {
        let cases = [
            (
                r#"{"timestamp":1.5,"severity":"INFO","source":"s","message":"m"}"#,
                "timestamp",
                "a fractional number",
            ),
            (
                r#"{"timestamp":true,"severity":"INFO","source":"s","message":"m"}"#,
                "timestamp",
                "a boolean",
            ),
            (
                r#"{"timestamp":1,"severity":3,"source":"s","message":"m"}"#,
                "severity",
                "an integer",
            ),
            (
                r#"{"timestamp":1,"severity":"INFO","source":null,"message":"m"}"#,
                "source",
                "null",
            ),
            (
                r#"{"timestamp":1,"severity":"INFO","source":"s","message":{"a":1}}"#,
                "message",
                "an object",
            ),
            (
                r#"{"timestamp":1,"severity":"INFO","source":"s","message":["a"]}"#,
                "message",
                "an array",
            ),
        ];
        for (payload, field, found) in cases {
            match record_error(payload) {
                RecordError::WrongType {
                    field: f, found: k, ..
                } => {
                    assert_eq!((f, k), (field, found), "{payload}")
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_severity_empty_source_bad_timestamp() {
        let err = record_error(r#"{"timestamp":1,"severity":"LOUD","source":"s","message":"m"}"#);
        assert_eq!(
            err,
            RecordError::UnknownSeverity {
                value: "LOUD".into()
            }
        );
        assert_eq!(err.code(), "unknown_severity");
        let err = record_error(r#"{"timestamp":1,"severity":"INFO","source":"","message":"m"}"#);
        assert_eq!(err, RecordError::EmptySource);
        let err = record_error(
            r#"{"timestamp":"yesterday","severity":"INFO","source":"s","message":"m"}"#,
        );
        assert_eq!(err.code(), "bad_timestamp");
    }

    #[test]
    fn over_the_size_limit() {
        let err = PacketValidator::new(10)
            .parse(HELLO.as_bytes())
            .unwrap_err();
        assert_eq!(
            err,
            PacketError::TooLarge {
                size: HELLO.len(),
                limit: 10
            }
        );
        assert_eq!(err.code(), "too_large");
    }

    #[test]
    fn mixed_packet_keeps_valid_records_and_indexes_invalid_ones() {
        let bad = r#"{"timestamp":1,"severity":"NOPE","source":"s","message":"m"}"#;
        let payload = format!("[{HELLO},{bad},{HELLO}]");
        let packet = parse(&payload).unwrap();
        assert_eq!(packet.records.len(), 2);
        assert_eq!(packet.invalid.len(), 1);
        assert_eq!(packet.invalid[0].index, 1);
        assert_eq!(packet.invalid[0].raw, bad);
        assert_eq!(packet.valid_json_array(), format!("[{HELLO},{HELLO}]"));
    }

    #[test]
    fn every_reason_has_a_distinct_code() {
        let codes = [
            PacketError::TooLarge { size: 2, limit: 1 }.code(),
            PacketError::NotUtf8 { offset: 0 }.code(),
            PacketError::NotJson {
                detail: String::new(),
            }
            .code(),
            PacketError::WrongShape { found: "null" }.code(),
            PacketError::Empty.code(),
            RecordError::NotAnObject { found: "null" }.code(),
            RecordError::MissingField { field: "source" }.code(),
            RecordError::WrongType {
                field: "source",
                expected: "",
                found: "",
            }
            .code(),
            RecordError::UnknownSeverity {
                value: String::new(),
            }
            .code(),
            RecordError::EmptySource.code(),
            RecordError::BadTimestamp {
                value: String::new(),
            }
            .code(),
            RecordError::Malformed {
                detail: String::new(),
            }
            .code(),
        ];
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
    }

    #[test]
    fn an_array_element_is_never_read_as_a_record_by_position() {
        let payload = format!(r#"[[1,"INFO","s","m"],{HELLO}]"#);
        let packet = parse(&payload).unwrap();
        assert_eq!(packet.records.len(), 1);
        assert_eq!(
            packet.invalid[0].error,
            RecordError::NotAnObject { found: "an array" }
        );
        assert_eq!(
            parse(r#"[[1,"INFO","s","m"]]"#).unwrap().invalid.len(),
            1,
            "not valid on the one-pass path either"
        );
    }

    #[test]
    fn duplicate_fields_are_malformed() {
        let err = record_error(
            r#"{"timestamp":1,"severity":"INFO","source":"a","source":"b","message":"m"}"#,
        );
        assert_eq!(err.code(), "malformed");
        assert!(
            err.to_string().contains("duplicate field `source`"),
            "{err}"
        );
    }

    #[test]
    fn one_pass_and_element_paths_agree() {
        // The same records, once all valid (one pass) and once beside an invalid element.
        let records = [
            HELLO,
            r#"{"message":"m","source":"db\u00e9","extra":[1,{"a":null}],"severity":"error","timestamp":"2026-01-01T00:00:00Z"}"#,
            r#"{"timestamp":-5,"severity":"Trace","source":"x","message":""}"#,
        ];
        let valid_text = format!("[{}]", records.join(","));
        let valid = parse(&valid_text).unwrap();
        let mixed_text = format!("[{},null]", records.join(","));
        let mixed = parse(&mixed_text).unwrap();
        assert_eq!(valid.records, mixed.records);
        assert_eq!(mixed.invalid.len(), 1);
        assert_eq!(mixed.valid_json_array(), format!("[{}]", records.join(",")));
        assert_eq!(valid.records[1].source, "db\u{e9}");
    }
}
