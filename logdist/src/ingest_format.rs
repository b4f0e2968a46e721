//! Ingest formats: the records of common log shippers, mapped to the canonical log message of
//! the wire contract (`timestamp`, `severity`, `source`, `message`; docs/protocol.md) so analyzers
//! see one contract whatever sent the packet.
//!
//! Each ingest subject has a format ([`IngestFormats`], from `--ingest-format <pattern>=<format>`,
//! first matching pattern wins):
//!
//! - `logdist` (the default): the contract itself, validated and forwarded byte for byte; nothing
//!   here runs for it.
//! - `fluent-bit`: Fluent Bit's NATS output, `[[<unix time>, {record}], …]` (also the
//!   `[[<time>, {metadata}], {record}]` pairs of Fluent Bit 2's event format).
//! - `vector`: Vector's NATS sink with the JSON codec, one event object per message (or an array
//!   of them), `message`, `timestamp`, `host`, and no severity.
//! - `fields`: any JSON object (or array of them), read through a field map (`--field
//!   message=log --field source=host …`).
//!
//! A mapped record becomes `{"timestamp", "severity", "source", "message", …}` followed by the
//! record's other fields; the fields it was mapped from are consumed, and an unconsumed field
//! that has a canonical name is kept as `original_<name>`. What cannot be mapped is an
//! [`UnmappedRecord`] with a reason that names the missing or wrong field and the format: an entry
//! of its payload's one dead letter. [`Mapping::map`] is the one entry point.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::Severity;

/// How the payloads of an ingest subject are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestFormat {
    Logdist,
    FluentBit,
    Vector,
    Fields,
}

impl IngestFormat {
    pub const ALL: [IngestFormat; 4] = [
        IngestFormat::Logdist,
        IngestFormat::FluentBit,
        IngestFormat::Vector,
        IngestFormat::Fields,
    ];

    /// The name used on the command line and in dead-letter reasons.
    pub fn name(self) -> &'static str {
        match self {
            IngestFormat::Logdist => "logdist",
            IngestFormat::FluentBit => "fluent-bit",
            IngestFormat::Vector => "vector",
            IngestFormat::Fields => "fields",
        }
    }
}

impl fmt::Display for IngestFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IngestFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IngestFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown ingest format {s:?}; use logdist, fluent-bit, vector or fields")
            })
    }
}

/// One `--ingest-format` rule: payloads on subjects matching `pattern` are read as `format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatRule {
    /// A NATS subject, `*` and a trailing `>` allowed.
    pub pattern: String,
    pub format: IngestFormat,
}

impl FromStr for FormatRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (pattern, format) = s.rsplit_once('=').ok_or_else(|| {
            format!("{s:?} is not <subject>=<format>, e.g. 'logs.fluentbit.>=fluent-bit'")
        })?;
        let pattern = pattern.trim();
        let tokens: Vec<&str> = pattern.split('.').collect();
        let valid = !pattern.is_empty()
            && tokens.iter().enumerate().all(|(i, t)| {
                !t.is_empty()
                    && !t.contains(char::is_whitespace)
                    && (*t != ">" || i == tokens.len() - 1)
                    && (t.len() == 1 || !t.contains(['*', '>']))
            });
        if !valid {
            return Err(format!(
                "{pattern:?} is not a NATS subject pattern (dot-separated tokens, `*` for one \
                 token, `>` for the rest at the end)"
            ));
        }
        Ok(FormatRule {
            pattern: pattern.to_string(),
            format: format.parse()?,
        })
    }
}

/// Whether `subject` matches the NATS subject `pattern` (`*` one token, `>` one or more).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether some subject matches both patterns.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether every subject `inner` matches is also matched by `outer`.
pub fn pattern_within(inner: &str, outer: &str) -> bool {
    let (mut i, mut o) = (inner.split('.'), outer.split('.'));
    loop {
        match (i.next(), o.next()) {
            (None, None) => return true,
            (Some(_), Some(">")) => return true,
            (Some(x), Some("*")) if x != ">" => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// Parses a `--default-severity` value: a name of the severity table, any case.
pub fn parse_severity(s: &str) -> Result<Severity, String> {
    Severity::parse(s.trim()).ok_or_else(|| {
        format!(
            "{s:?} is not a severity; use TRACE, DEBUG, INFO, WARN, ERROR, FATAL or a syslog name \
             (docs/protocol.md)"
        )
    })
}

/// A canonical field a record can be mapped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonicalField {
    Timestamp,
    Severity,
    Source,
    Message,
}

impl CanonicalField {
    const ALL: [CanonicalField; 4] = [
        CanonicalField::Timestamp,
        CanonicalField::Severity,
        CanonicalField::Source,
        CanonicalField::Message,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CanonicalField::Timestamp => "timestamp",
            CanonicalField::Severity => "severity",
            CanonicalField::Source => "source",
            CanonicalField::Message => "message",
        }
    }
}

/// One `--field <canonical>=<record field>` assignment of the `fields` format. The record field
/// is a key, or a dotted path into nested objects (`kubernetes.pod_name`); a key that itself
/// contains dots (`log.level`) is found first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldAssignment {
    pub field: CanonicalField,
    pub path: String,
}

impl FromStr for FieldAssignment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not <field>=<record field>, e.g. message=log"))?;
        let field = CanonicalField::ALL
            .into_iter()
            .find(|f| f.name() == name.trim())
            .ok_or_else(|| {
                format!("{name:?} is not a log field; map timestamp, severity, source or message")
            })?;
        let path = path.trim();
        if path.is_empty() {
            return Err(format!("--field {name}= needs a record field name"));
        }
        Ok(FieldAssignment {
            field,
            path: path.to_string(),
        })
    }
}

/// Where one canonical field comes from in one format: candidate record fields in order, and
/// what to do when none is there.
#[derive(Debug, Clone)]
struct FieldSource {
    candidates: Vec<String>,
}

impl FieldSource {
    fn new(candidates: &[&str]) -> FieldSource {
        FieldSource {
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// "`log` (nor `message`)", for reasons.
    fn describe(&self) -> String {
        let mut names = self.candidates.iter().map(|c| format!("`{c}`"));
        let first = names.next().unwrap_or_default();
        let rest: Vec<String> = names.collect();
        if rest.is_empty() {
            first
        } else {
            format!("{first} (nor {})", rest.join(", "))
        }
    }
}

/// How one mapped format reads a record.
#[derive(Debug, Clone)]
struct Spec {
    format: IngestFormat,
    message: FieldSource,
    source: FieldSource,
    severity: FieldSource,
    /// Record fields of the timestamp; empty when the envelope carries it (Fluent Bit).
    timestamp: FieldSource,
    /// A timestamp field the user mapped explicitly must be there; otherwise the time the
    /// distributor received the record stands in.
    timestamp_required: bool,
    default_severity: Option<Severity>,
    default_source: Option<String>,
}

/// The ingest formats of every subject, the field map and the defaults; built once from the
/// flags, then asked per payload.
#[derive(Debug, Clone)]
pub struct Mapping {
    rules: Vec<FormatRule>,
    fluent_bit: Spec,
    vector: Spec,
    fields: Spec,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping::new(Vec::new(), &[], None, None)
    }
}

/// Severity of records of the `fluent-bit` and `vector` formats that carry none, unless
/// `--default-severity` says otherwise.
pub const PRESET_DEFAULT_SEVERITY: Severity = Severity::Info;

impl Mapping {
    /// `rules` in order (first match wins); `fields` the `--field` assignments of the `fields`
    /// format (unassigned canonical fields are read from the field of the same name);
    /// `default_severity` and `default_source` stand in for a field a record of any mapped
    /// format lacks.
    pub fn new(
        rules: Vec<FormatRule>,
        fields: &[FieldAssignment],
        default_severity: Option<Severity>,
        default_source: Option<String>,
    ) -> Mapping {
        let assigned = |field: CanonicalField| {
            let paths: Vec<&str> = fields
                .iter()
                .filter(|a| a.field == field)
                .map(|a| a.path.as_str())
                .collect();
            if paths.is_empty() {
                FieldSource::new(&[field.name()])
            } else {
                FieldSource::new(&paths)
            }
        };
        let preset_severity = Some(default_severity.unwrap_or(PRESET_DEFAULT_SEVERITY));
        Mapping {
            rules,
            fluent_bit: Spec {
                format: IngestFormat::FluentBit,
                message: FieldSource::new(&["log", "message"]),
                source: FieldSource::new(&["host", "hostname", "tag"]),
                severity: FieldSource::new(&["level", "severity"]),
                timestamp: FieldSource::new(&[]),
                timestamp_required: false,
                default_severity: preset_severity,
                default_source: default_source.clone(),
            },
            vector: Spec {
                format: IngestFormat::Vector,
                message: FieldSource::new(&["message"]),
                source: FieldSource::new(&["host", "hostname"]),
                severity: FieldSource::new(&["level", "severity"]),
                timestamp: FieldSource::new(&["timestamp"]),
                timestamp_required: false,
                default_severity: preset_severity,
                default_source: default_source.clone(),
            },
            fields: Spec {
                format: IngestFormat::Fields,
                message: assigned(CanonicalField::Message),
                source: assigned(CanonicalField::Source),
                severity: assigned(CanonicalField::Severity),
                timestamp: assigned(CanonicalField::Timestamp),
                timestamp_required: fields.iter().any(|a| a.field == CanonicalField::Timestamp),
                default_severity,
                default_source,
            },
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[FormatRule] {
        &self.rules
    }

    /// The patterns a distributor must subscribe to besides the ingest subjects (`ingest` and
    /// `ingest_wildcard`): each rule pattern outside them, minus those inside another. A pattern
    /// that overlaps the ingest subjects, or another extra pattern, without lying inside it would
    /// deliver a payload twice, so it is an error.
    pub fn extra_subscriptions(
        &self,
        ingest: &str,
        ingest_wildcard: &str,
    ) -> Result<Vec<String>, String> {
        let inside_ingest = |p: &str| p == ingest || pattern_within(p, ingest_wildcard);
        let outside: Vec<&str> = self
            .rules
            .iter()
            .map(|r| r.pattern.as_str())
            .filter(|p| !inside_ingest(p))
            .collect();
        for p in &outside {
            if patterns_overlap(p, ingest) || patterns_overlap(p, ingest_wildcard) {
                return Err(format!(
                    "--ingest-format pattern {p:?} overlaps the ingest subjects ({ingest}, \
                     {ingest_wildcard}) without lying inside them; use a pattern under \
                     {ingest}. or one disjoint from it"
                ));
            }
        }
        let mut extra: Vec<String> = Vec::new();
        for (i, p) in outside.iter().enumerate() {
            let covered = outside
                .iter()
                .enumerate()
                .any(|(j, q)| j != i && pattern_within(p, q) && (p != q || j < i));
            if covered {
                continue;
            }
            if let Some(q) = extra.iter().find(|q| patterns_overlap(p, q)) {
                return Err(format!(
                    "--ingest-format patterns {q:?} and {p:?} overlap without one lying inside \
                     the other; a payload would be taken twice"
                ));
            }
            extra.push(p.to_string());
        }
        Ok(extra)
    }

    /// True when every subject is `logdist` (no rule names another format), so callers can skip
    /// the lookup entirely.
    pub fn is_all_logdist(&self) -> bool {
        self.rules.iter().all(|r| r.format == IngestFormat::Logdist)
    }

    /// The format of payloads on `subject`: the first matching rule's, else `logdist`.
    pub fn format_for(&self, subject: &str) -> IngestFormat {
        self.rules
            .iter()
            .find(|r| subject_matches(&r.pattern, subject))
            .map_or(IngestFormat::Logdist, |r| r.format)
    }

    /// Maps one payload of a mapped format (not `logdist`: validate those with
    /// [`PacketValidator`](crate::PacketValidator)). `received_at_nanos` (unix nanoseconds)
    /// stands in for a record without a timestamp.
    pub fn map<'a>(
        &self,
        format: IngestFormat,
        payload: &'a [u8],
        received_at_nanos: i128,
    ) -> Result<Mapped<'a>, MapError> {
        let spec = match format {
            IngestFormat::Logdist => {
                return Err(MapError {
                    code: "wrong_format",
                    reason: "the logdist format is validated, not mapped".into(),
                })
            }
            IngestFormat::FluentBit => &self.fluent_bit,
            IngestFormat::Vector => &self.vector,
            IngestFormat::Fields => &self.fields,
        };
        let text = std::str::from_utf8(payload).map_err(|e| MapError {
            code: "not_utf8",
            reason: format!(
                "{format} payload is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        })?;
        let not_json = |e: serde_json::Error| MapError {
            code: "not_json",
            reason: format!("{format} payload is not JSON: {e}"),
        };
        let first = text.bytes().find(|b| !b.is_ascii_whitespace());
        let elements: Vec<&RawValue> = match (first, format) {
            (Some(b'['), _) => serde_json::from_str(text).map_err(not_json)?,
            (Some(b'{'), IngestFormat::Vector | IngestFormat::Fields) => {
                vec![serde_json::from_str(text).map_err(not_json)?]
            }
            _ => {
                let found = serde_json::from_str::<Value>(text)
                    .map(|v| json_kind(&v))
                    .map_err(not_json)?;
                let expected = if format == IngestFormat::FluentBit {
                    "an array of [time, record] pairs"
                } else {
                    "an event object or an array of them"
                };
                return Err(MapError {
                    code: "wrong_shape",
                    reason: format!("{format} payload is JSON {found}, expected {expected}"),
                });
            }
        };
        if elements.is_empty() {
            return Err(MapError {
                code: "empty_packet",
                reason: format!("{format} payload is an empty array"),
            });
        }
        let mut packet = Vec::with_capacity(payload.len() + 64 * elements.len());
        let mut messages = 0;
        let mut invalid = Vec::new();
        for (index, element) in elements.iter().enumerate() {
            let raw = element.get();
            match spec.map_element(raw, received_at_nanos) {
                Ok(message) => {
                    packet.push(if messages == 0 { b'[' } else { b',' });
                    serde_json::to_writer(&mut packet, &message)
                        .expect("serializing to memory cannot fail");
                    messages += 1;
                }
                Err((code, reason)) => invalid.push(UnmappedRecord {
                    index,
                    raw,
                    code,
                    reason,
                }),
            }
        }
        if messages > 0 {
            packet.push(b']');
        }
        Ok(Mapped {
            packet: (messages > 0).then_some(packet),
            messages,
            invalid,
        })
    }
}

/// One payload of a mapped format, mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped<'a> {
    /// The mapped records as one packet in the canonical shape (a JSON array), or `None` when
    /// no record could be mapped.
    pub packet: Option<Vec<u8>>,
    /// Log messages in `packet`.
    pub messages: usize,
    /// The records that could not be mapped, in payload order.
    pub invalid: Vec<UnmappedRecord<'a>>,
}

/// A record that could not be mapped: an entry of its payload's one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmappedRecord<'a> {
    /// Position in the payload.
    pub index: usize,
    /// The element's exact JSON text.
    pub raw: &'a str,
    /// The dead-letter code (`missing_field`, `wrong_type`, `unknown_severity`,
    /// `bad_timestamp`, `not_an_object`).
    pub code: &'static str,
    /// Names the field and the format.
    pub reason: String,
}

impl crate::protocol::deadletter::RejectedElement for UnmappedRecord<'_> {
    fn index(&self) -> usize {
        self.index
    }
    fn code(&self) -> &'static str {
        self.code
    }
    fn reason(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(&self.reason)
    }
    fn element(&self) -> &str {
        self.raw.trim()
    }
}

/// A payload that is not a packet of its format at all: dead-lettered whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct MapError {
    /// The dead-letter code (`not_utf8`, `not_json`, `wrong_shape`, `empty_packet`).
    pub code: &'static str,
    pub reason: String,
}

/// A mapped log message: the canonical fields first, then the rest of the record.
#[derive(Serialize)]
struct Canonical {
    timestamp: Value,
    severity: &'static str,
    source: String,
    message: String,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

type ElementError = (&'static str, String);

impl Spec {
    fn map_element(&self, raw: &str, received_at_nanos: i128) -> Result<Canonical, ElementError> {
        let format = self.format;
        let not_an_object = |found: &str| {
            let expected = if format == IngestFormat::FluentBit {
                "a [time, record] pair"
            } else {
                "an object"
            };
            (
                "not_an_object",
                format!("{format} record is {found}, expected {expected}"),
            )
        };
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| ("malformed", format!("{format} record: {e}")))?;
        let (envelope_time, record) = if format == IngestFormat::FluentBit {
            let Value::Array(mut pair) = value else {
                return Err(not_an_object(json_kind(&value)));
            };
            if pair.len() != 2 {
                return Err(not_an_object("an array that is not a pair"));
            }
            let record = pair.pop().unwrap_or(Value::Null);
            // Fluent Bit 2's event format puts [time, metadata] where the time was.
            let time = match pair.pop().unwrap_or(Value::Null) {
                Value::Array(mut time_and_metadata) if !time_and_metadata.is_empty() => {
                    time_and_metadata.swap_remove(0)
                }
                time => time,
            };
            (Some(time), record)
        } else {
            (None, value)
        };
        let Value::Object(mut record) = record else {
            return Err(not_an_object(json_kind(&record)));
        };

        let message = match take(&mut record, &self.message) {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => return Err(self.missing(&self.message, "")),
        };
        let source = match take(&mut record, &self.source) {
            Some(Value::String(s)) if !s.trim().is_empty() => s,
            Some(Value::String(_)) if self.default_source.is_none() => {
                return Err((
                    "empty_source",
                    format!("{format} record has an empty {}", self.source.describe()),
                ))
            }
            Some(
                other @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_)),
            ) => return Err(self.wrong_type(&self.source, &other, "a string")),
            _ => match &self.default_source {
                Some(default) => default.clone(),
                None => return Err(self.missing(&self.source, " (or set --default-source)")),
            },
        };
        let severity = match take(&mut record, &self.severity) {
            Some(Value::String(s)) => Severity::parse(s.trim()).ok_or_else(|| {
                (
                    "unknown_severity",
                    format!(
                        "{format} record's {} is {s:?}, not a severity logdist knows \
                         (docs/protocol.md)",
                        self.severity.describe()
                    ),
                )
            })?,
            None | Some(Value::Null) => match self.default_severity {
                Some(default) => default,
                None => return Err(self.missing(&self.severity, " (or set --default-severity)")),
            },
            Some(other) => return Err(self.wrong_type(&self.severity, &other, "a string")),
        };
        let timestamp = match envelope_time.or_else(|| take(&mut record, &self.timestamp)) {
            Some(Value::Number(n)) if n.as_i64().is_some() && format != IngestFormat::FluentBit => {
                Value::Number(n)
            }
            Some(Value::Number(n)) => {
                // Fractional (or Fluent Bit's) epoch seconds.
                epoch_seconds_to_nanos(&n)
                    .and_then(rfc3339)
                    .ok_or_else(|| self.bad_timestamp(&n.to_string()))?
            }
            Some(Value::String(s)) => {
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| self.bad_timestamp(&s))?;
                Value::String(s)
            }
            None | Some(Value::Null) if !self.timestamp_required => {
                rfc3339(received_at_nanos).unwrap_or(Value::Null)
            }
            None | Some(Value::Null) => return Err(self.missing(&self.timestamp, "")),
            Some(other) => {
                return Err(self.wrong_type(
                    &self.timestamp,
                    &other,
                    "epoch seconds or an RFC 3339 string",
                ))
            }
        };
        for field in CanonicalField::ALL {
            if let Some(value) = record.remove(field.name()) {
                record.insert(format!("original_{}", field.name()), value);
            }
        }
        Ok(Canonical {
            timestamp,
            severity: severity.as_str(),
            source,
            message,
            rest: record,
        })
    }

    fn missing(&self, field: &FieldSource, hint: &str) -> ElementError {
        (
            "missing_field",
            format!(
                "{} record has no {} field{hint}",
                self.format,
                field.describe()
            ),
        )
    }

    fn wrong_type(&self, field: &FieldSource, found: &Value, expected: &str) -> ElementError {
        (
            "wrong_type",
            format!(
                "{} record's {} must be {expected}, got {}",
                self.format,
                field.describe(),
                json_kind(found)
            ),
        )
    }

    fn bad_timestamp(&self, value: &str) -> ElementError {
        (
            "bad_timestamp",
            format!(
                "{} record's timestamp {value:?} is neither epoch seconds nor an RFC 3339 date-time",
                self.format
            ),
        )
    }
}

/// Removes and returns the first candidate field the record has (a key, else a dotted path).
fn take(record: &mut Map<String, Value>, field: &FieldSource) -> Option<Value> {
    field.candidates.iter().find_map(|path| {
        if let Some(value) = record.remove(path.as_str()) {
            return Some(value);
        }
        let (parents, last) = path.rsplit_once('.')?;
        let mut object = &mut *record;
        for key in parents.split('.') {
            object = object.get_mut(key)?.as_object_mut()?;
        }
        object.remove(last)
    })
}

/// Epoch seconds (an integer or a fraction) as unix nanoseconds. The decimal digits of the
/// number's shortest form are taken as written (`1764590400.123` is .123 s exactly, which the
/// binary double alone would not give).
fn epoch_seconds_to_nanos(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i) * 1_000_000_000);
    }
    let text = n.to_string();
    if text.contains(['e', 'E']) {
        let nanos = (n.as_f64()? * 1e9).round();
        return nanos.is_finite().then_some(nanos as i128);
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let mut nanos: i128 = whole.parse::<i128>().ok()?.checked_mul(1_000_000_000)?;
    let mut scale = 100_000_000;
    for d in fraction.bytes().take(9) {
        nanos += i128::from(d.checked_sub(b'0')?) * scale;
        scale /= 10;
    }
    Some(if negative { -nanos } else { nanos })
}

/// Unix nanoseconds as an RFC 3339 string (UTC), if in range.
fn rfc3339(unix_nanos: i128) -> Option<Value> {
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_nanos)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
        .map(Value::String)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PacketValidator;

    const NOW: i128 = 1_764_590_400_000_000_000; // 2025-12-01T12:00:00Z

    fn mapped(mapping: &Mapping, format: IngestFormat, payload: &str) -> Vec<Value> {
        let m = mapping.map(format, payload.as_bytes(), NOW).unwrap();
        assert!(m.invalid.is_empty(), "{:?}", m.invalid);
        let packet = m.packet.unwrap();
        // Every mapped packet passes the contract's fast path.
        assert_eq!(
            PacketValidator::default().count_if_valid(&packet),
            Some(m.messages)
        );
        serde_json::from_slice(&packet).unwrap()
    }

    #[test]
    fn rules_parse_and_match_like_nats_subjects() {
        let rule: FormatRule = "logs.fluentbit.>=fluent-bit".parse().unwrap();
        assert_eq!(rule.format, IngestFormat::FluentBit);
        assert!("logs.>=Vector".parse::<FormatRule>().is_ok());
        for bad in [
            "logs.x",
            "=vector",
            "logs..x=vector",
            "a.>.b=vector",
            "a b=vector",
            "x=yaml",
            "l*gs=vector",
        ] {
            assert!(bad.parse::<FormatRule>().is_err(), "{bad}");
        }
        assert!(subject_matches("logs.fluentbit.>", "logs.fluentbit.web.1"));
        assert!(!subject_matches("logs.fluentbit.>", "logs.fluentbit"));
        assert!(subject_matches("logs.*.vector", "logs.a.vector"));
        assert!(!subject_matches("logs.*.vector", "logs.a.b.vector"));
        assert!(subject_matches("logs.ingest", "logs.ingest"));
        assert!(!subject_matches("logs.ingest", "logs.ingest.x"));

        let mapping = Mapping::new(
            vec![
                "logs.ingest.fb=fluent-bit".parse().unwrap(),
                "logs.ingest.*=vector".parse().unwrap(),
            ],
            &[],
            None,
            None,
        );
        assert_eq!(
            mapping.format_for("logs.ingest.fb"),
            IngestFormat::FluentBit
        );
        assert_eq!(mapping.format_for("logs.ingest.v1"), IngestFormat::Vector);
        assert_eq!(mapping.format_for("logs.ingest"), IngestFormat::Logdist);
        assert!(!mapping.is_all_logdist());
        assert!(Mapping::default().is_all_logdist());
    }

    #[test]
    fn extra_subscriptions_outside_the_ingest_subjects() {
        let rules = |rs: &[&str]| {
            Mapping::new(
                rs.iter().map(|r| r.parse().unwrap()).collect(),
                &[],
                None,
                None,
            )
            .extra_subscriptions("logs.ingest", "logs.ingest.>")
        };
        assert_eq!(
            rules(&["logs.ingest.fb=fluent-bit", "logs.ingest.*=vector"]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            rules(&[
                "logs.fluentbit.>=fluent-bit",
                "logs.fluentbit.web=vector",
                "logs.vector=vector"
            ])
            .unwrap(),
            ["logs.fluentbit.>", "logs.vector"]
        );
        assert!(rules(&["logs.*.fb=fluent-bit"])
            .unwrap_err()
            .contains("overlaps the ingest subjects"));
        assert!(rules(&["logs.>=vector"]).is_err());
        assert!(rules(&["a.*.c=vector", "a.b.*=fields"])
            .unwrap_err()
            .contains("overlap"));
        assert!(patterns_overlap("a.*", "a.b") && !patterns_overlap("a.b", "a.c"));
        assert!(
            pattern_within("a.b.c", "a.>")
                && !pattern_within("a.>", "a.*")
                && pattern_within("a.b", "a.*")
        );
    }

    /// Fluent Bit's NATS output as its documentation shows it, with a tail input's `log` field.
    #[test]
    fn fluent_bit_pairs() {
        let payload = r#"[
            [1457108504,{"tag":"fluentbit","cpu_p":1.5,"user_p":1,"system_p":0.5,"log":"cpu sample"}],
            [1764590400.25,{"tag":"web.access","log":"GET /","level":"warning","host":"node-1","timestamp":"x"}],
            [[1764590401,{"trace":"t"}],{"tag":"app","message":"v2 event","severity":"err"}]
        ]"#;
        let m = mapped(&Mapping::default(), IngestFormat::FluentBit, payload);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["timestamp"], "2016-03-04T16:21:44Z");
        assert_eq!(m[0]["severity"], "INFO", "the preset's default");
        assert_eq!(m[0]["source"], "fluentbit", "the tag, without a host");
        assert_eq!(m[0]["message"], "cpu sample");
        assert_eq!(m[0]["cpu_p"], 1.5);
        assert_eq!(m[1]["timestamp"], "2025-12-01T12:00:00.25Z");
        assert_eq!(m[1]["severity"], "WARN");
        assert_eq!(m[1]["source"], "node-1");
        assert_eq!(m[1]["tag"], "web.access", "unconsumed fields are kept");
        assert_eq!(m[1]["original_timestamp"], "x");
        assert_eq!(m[2]["timestamp"], "2025-12-01T12:00:01Z");
        assert_eq!(m[2]["message"], "v2 event");
    }

    /// Vector's NATS sink with `encoding.codec = "json"`: one event per message.
    #[test]
    fn vector_events() {
        let event = r#"{"host":"web-3","message":"GET /index.html 200","source_type":"file","file":"/var/log/nginx/access.log","timestamp":"2025-12-01T12:00:00.123456Z"}"#;
        let m = mapped(&Mapping::default(), IngestFormat::Vector, event);
        assert_eq!(m[0]["timestamp"], "2025-12-01T12:00:00.123456Z");
        assert_eq!(m[0]["severity"], "INFO");
        assert_eq!(m[0]["source"], "web-3");
        assert_eq!(m[0]["source_type"], "file");
        let with_default = Mapping::new(vec![], &[], Some(Severity::Debug), None);
        let m = mapped(
            &with_default,
            IngestFormat::Vector,
            &format!("[{event},{event}]"),
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[1]["severity"], "DEBUG");
    }

    #[test]
    fn field_map_with_nested_paths_and_defaults() {
        let fields: Vec<FieldAssignment> = [
            "message=log",
            "source=kubernetes.pod_name",
            "severity=log.level",
            "timestamp=date",
        ]
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
        let mapping = Mapping::new(vec![], &fields, None, None);
        let record = r#"{"log":"ready","log.level":"Notice","date":1764590400,"kubernetes":{"pod_name":"api-7","ns":"prod"}}"#;
        let m = mapped(&mapping, IngestFormat::Fields, record);
        assert_eq!(m[0]["message"], "ready");
        assert_eq!(m[0]["source"], "api-7");
        assert_eq!(
            m[0]["timestamp"], 1764590400,
            "an integer epoch stays as it is"
        );
        assert_eq!(m[0]["kubernetes"]["ns"], "prod");
        assert!(m[0]["kubernetes"].get("pod_name").is_none(), "consumed");

        // Missing mapped fields: dead letters naming the field and the format.
        let payload = r#"[{"log":"x","date":1,"kubernetes":{"pod_name":"p"}},{"date":1,"kubernetes":{"pod_name":"p"},"log.level":"info"},{"log":"x","log.level":"info","kubernetes":{"pod_name":"p"}}]"#;
        let m = mapping
            .map(IngestFormat::Fields, payload.as_bytes(), NOW)
            .unwrap();
        assert_eq!(m.messages, 0);
        let reasons: Vec<_> = m
            .invalid
            .iter()
            .map(|i| (i.index, i.code, i.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    0,
                    "missing_field",
                    "fields record has no `log.level` field (or set --default-severity)"
                ),
                (1, "missing_field", "fields record has no `log` field"),
                (2, "missing_field", "fields record has no `date` field"),
            ]
        );
        // With defaults, the record without severity is mapped.
        let mapping = Mapping::new(
            vec![],
            &fields,
            Some(Severity::Warn),
            Some("unknown".into()),
        );
        let m = mapping
            .map(IngestFormat::Fields, payload.as_bytes(), NOW)
            .unwrap();
        assert_eq!(m.messages, 1);
        assert_eq!(m.invalid.len(), 2);
    }

    #[test]
    fn unmappable_records_say_why() {
        let m = Mapping::default();
        let cases = [
            (IngestFormat::Vector, r#"{"host":"h"}"#, "missing_field", "vector record has no `message` field"),
            (IngestFormat::Vector, r#"{"message":"m"}"#, "missing_field", "vector record has no `host` (nor `hostname`) field (or set --default-source)"),
            (IngestFormat::Vector, r#"{"message":"m","host":"h","level":"LOUD"}"#, "unknown_severity", "vector record's `level` (nor `severity`) is \"LOUD\", not a severity logdist knows (docs/protocol.md)"),
            (IngestFormat::Vector, r#"{"message":"m","host":7}"#, "wrong_type", "vector record's `host` (nor `hostname`) must be a string, got a number"),
            (IngestFormat::Vector, r#"{"message":"m","host":"h","timestamp":"yesterday"}"#, "bad_timestamp", "vector record's timestamp \"yesterday\" is neither epoch seconds nor an RFC 3339 date-time"),
            (IngestFormat::FluentBit, r#"[{"log":"m"}]"#, "not_an_object", "fluent-bit record is an object, expected a [time, record] pair"),
            (IngestFormat::FluentBit, r#"[[1,"m"]]"#, "not_an_object", "fluent-bit record is a string, expected a [time, record] pair"),
        ];
        for (format, payload, code, reason) in cases {
            let payload = if format == IngestFormat::FluentBit {
                payload.to_string()
            } else {
                format!("[{payload}]")
            };
            let mapped = m.map(format, payload.as_bytes(), NOW).unwrap();
            assert_eq!(mapped.invalid.len(), 1, "{payload}");
            let bad = &mapped.invalid[0];
            assert_eq!((bad.code, bad.reason.as_str()), (code, reason), "{payload}");
        }
        let err = m
            .map(IngestFormat::FluentBit, br#"{"log":"m"}"#, NOW)
            .unwrap_err();
        assert_eq!(err.code, "wrong_shape");
        assert!(err.reason.starts_with("fluent-bit payload"), "{err}");
        assert_eq!(
            m.map(IngestFormat::Vector, b"nope", NOW).unwrap_err().code,
            "not_json"
        );
        assert_eq!(
            m.map(IngestFormat::Vector, b"[]", NOW).unwrap_err().code,
            "empty_packet"
        );
    }

    #[test]
    fn epoch_seconds_keep_their_decimal_digits() {
        let nanos = |s: &str| epoch_seconds_to_nanos(&serde_json::from_str(s).unwrap());
        assert_eq!(nanos("1764590400.123"), Some(1_764_590_400_123_000_000));
        // A double holds ~16 digits: the shortest form keeps what the double has.
        assert_eq!(
            nanos("1764590400.123456789"),
            Some(1_764_590_400_123_456_700)
        );
        assert_eq!(nanos("1457108504"), Some(1_457_108_504_000_000_000));
        assert_eq!(nanos("-1.5"), Some(-1_500_000_000));
        assert_eq!(nanos("1.5e3"), Some(1_500_000_000_000));
    }

    #[test]
    fn a_missing_timestamp_is_the_time_of_receipt() {
        let m = mapped(
            &Mapping::default(),
            IngestFormat::Vector,
            r#"{"message":"m","host":"h"}"#,
        );
        assert_eq!(m[0]["timestamp"], "2025-12-01T12:00:00Z");
    }
}
