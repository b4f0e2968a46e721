//! The bodies of the requests an HTTP analyzer sends for one packet (`--forward-format`).
//!
//! - `packet`: one request, the payload exactly as it arrived (a JSON array or one object),
//!   `Content-Type: application/json`; the bytes are shared, not copied;
//! - `ndjson`: one request, one log object per line, `Content-Type: application/x-ndjson`;
//! - `message`: one request per log message with the old service's body `{"data": <log object>}`.
//!
//! Log objects keep their exact text, extra fields included. Only an object written over several
//! lines is put on one line for NDJSON (whitespace between tokens is all that changes).

use bytes::Bytes;
use serde_json::value::RawValue;

/// How the packets are put into HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardFormat {
    /// The packet as it arrived: one request per packet, a JSON array (or one object).
    Packet,
    /// One request per packet, one log object per line (application/x-ndjson).
    Ndjson,
    /// One request per log message, `{"data": <log object>}` (the old service's analyzers).
    Message,
}

impl ForwardFormat {
    /// The `Content-Type` of the requests.
    pub fn content_type(self) -> &'static str {
        match self {
            ForwardFormat::Packet | ForwardFormat::Message => "application/json",
            ForwardFormat::Ndjson => "application/x-ndjson",
        }
    }

    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardFormat::Packet => "packet",
            ForwardFormat::Ndjson => "ndjson",
            ForwardFormat::Message => "message",
        }
    }
}

/// One request's body, and what part of the packet it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBody {
    pub body: Bytes,
    /// The log message's position in the packet (`message` format), `None` for the whole packet.
    pub index: Option<usize>,
}

/// Why a payload cannot be forwarded (the distributor only routes valid packets, so this means
/// something published to the analyzer subject directly).
#[derive(Debug, thiserror::Error)]
#[error("payload is not a JSON log object or array of log objects: {0}")]
pub struct NotAPacket(#[from] serde_json::Error);

/// The requests for `payload` in `format`.
pub fn request_bodies(
    format: ForwardFormat,
    payload: &Bytes,
) -> Result<Vec<RequestBody>, NotAPacket> {
    match format {
        ForwardFormat::Packet => Ok(vec![RequestBody {
            body: payload.clone(),
            index: None,
        }]),
        ForwardFormat::Ndjson => {
            let elements = elements(payload)?;
            let len = elements.iter().map(|e| e.get().len() + 1).sum();
            let mut body = Vec::with_capacity(len);
            for element in elements {
                push_one_line(&mut body, element)?;
                body.push(b'\n');
            }
            Ok(vec![RequestBody {
                body: body.into(),
                index: None,
            }])
        }
        ForwardFormat::Message => Ok(elements(payload)?
            .into_iter()
            .enumerate()
            .map(|(index, element)| {
                let raw = element.get();
                let mut body = Vec::with_capacity(raw.len() + 9);
                body.extend_from_slice(b"{\"data\":");
                body.extend_from_slice(raw.as_bytes());
                body.push(b'}');
                RequestBody {
                    body: body.into(),
                    index: Some(index),
                }
            })
            .collect()),
    }
}

/// The exact text of each log object in `payload` (one object, or the elements of an array).
pub fn elements(payload: &[u8]) -> Result<Vec<&RawValue>, NotAPacket> {
    let text =
        std::str::from_utf8(payload).map_err(<serde_json::Error as serde::de::Error>::custom)?;
    if text.trim_start().starts_with('[') {
        Ok(serde_json::from_str::<Vec<&RawValue>>(text)?)
    } else {
        Ok(vec![serde_json::from_str::<&RawValue>(text)?])
    }
}

/// Appends `element` on one line: as it is, unless it spans several lines.
fn push_one_line(out: &mut Vec<u8>, element: &RawValue) -> Result<(), NotAPacket> {
    let raw = element.get();
    if raw.contains(['\n', '\r']) {
        // JSON strings cannot hold raw line breaks, so these are whitespace between tokens.
        let value: serde_json::Value = serde_json::from_str(raw)?;
        serde_json::to_writer(&mut *out, &value)?;
    } else {
        out.extend_from_slice(raw.as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        r#"{"timestamp":1,"severity":"INFO","source":"a","message":"x","extra":[1, 2]}"#;
    const B: &str =
        r#"{"timestamp":"2026-11-25T10:00:00Z","severity":"warn","source":"b","message":"y\nz"}"#;

    fn texts(bodies: &[RequestBody]) -> Vec<String> {
        bodies
            .iter()
            .map(|b| String::from_utf8(b.body.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn packet_is_the_payload_unchanged() {
        let payload = Bytes::from(format!("[{A}, {B}]"));
        let bodies = request_bodies(ForwardFormat::Packet, &payload).unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].body, payload);
        // Shared, not copied.
        assert_eq!(bodies[0].body.as_ptr(), payload.as_ptr());
    }

    #[test]
    fn ndjson_is_one_object_per_line_with_exact_text() {
        let payload = Bytes::from(format!("[{A},\n {B}]"));
        let bodies = request_bodies(ForwardFormat::Ndjson, &payload).unwrap();
        assert_eq!(texts(&bodies), [format!("{A}\n{B}\n")]);
        let single = request_bodies(ForwardFormat::Ndjson, &Bytes::from(A)).unwrap();
        assert_eq!(texts(&single), [format!("{A}\n")]);
    }

    #[test]
    fn ndjson_puts_a_multi_line_object_on_one_line() {
        let payload = Bytes::from(
            "[{\"timestamp\":1,\n \"severity\":\"INFO\",\r\n \"source\":\"a\",\"message\":\"m\"}]",
        );
        let bodies = request_bodies(ForwardFormat::Ndjson, &payload).unwrap();
        let text = texts(&bodies).remove(0);
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(value["source"], "a");
    }

    #[test]
    fn message_is_one_old_service_body_per_log_message() {
        let payload = Bytes::from(format!("[{A},{B}]"));
        let bodies = request_bodies(ForwardFormat::Message, &payload).unwrap();
        assert_eq!(
            texts(&bodies),
            [format!("{{\"data\":{A}}}"), format!("{{\"data\":{B}}}")]
        );
        assert_eq!(bodies[1].index, Some(1));
        for text in texts(&bodies) {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(value["data"]["source"].is_string());
        }
    }

    #[test]
    fn what_is_not_json_is_an_error() {
        for bad in ["", "nope", "[1,", "\u{FFFD}"] {
            assert!(request_bodies(ForwardFormat::Message, &Bytes::from(bad)).is_err());
        }
        assert!(request_bodies(ForwardFormat::Ndjson, &Bytes::from_static(&[0xff])).is_err());
    }
}
