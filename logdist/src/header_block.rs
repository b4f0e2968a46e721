//! Whether the NATS client can read a message's header block (the `NATS/1.0` lines of an
//! `HMSG`), checked on the raw bytes, the way async-nats 0.51 reads them when a message arrives.
//!
//! nats-server passes header blocks on as publishers wrote them. async-nats rejects some as a
//! read error (it drops the connection and reconnects) and *panics* on one kind: a header value
//! that holds a bare carriage return (`a\rb`) fails an `assert!` in `HeaderValue::from`, which
//! ends the client's connection task for good (nats-io/nats.rs#1612). A message in a JetStream
//! stream can be read without that parser, through the stream's message-get API (JSON, the
//! header block in base64): [`check_header_block`] says whether the client could read it, and
//! [`readable_headers`] keeps the lines it could, for a dead letter.

use std::fmt;
use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::StatusCode;

/// Why async-nats cannot read a header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnreadableHeaders {
    /// The block is not UTF-8 (a read error).
    NotUtf8,
    /// The first line does not begin with `NATS/1.0` (a read error).
    NoVersionLine,
    /// The version line's status is not a status code (a read error).
    BadStatus(String),
    /// A header line has no `:` (a read error).
    NoColon(String),
    /// A header name the client refuses (a read error).
    BadName(String),
    /// The value of header `name` holds a bare carriage return: async-nats 0.51 panics and its
    /// connection task stops.
    CarriageReturn { name: String },
}

impl fmt::Display for UnreadableHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotUtf8 => write!(f, "the header block is not UTF-8"),
            Self::NoVersionLine => {
                write!(f, "the header block does not begin with `NATS/1.0`")
            }
            Self::BadStatus(status) => {
                write!(f, "the header status {status:?} is not a status code")
            }
            Self::NoColon(line) => write!(f, "the header line {line:?} has no `:`"),
            Self::BadName(name) => write!(f, "the header name {name:?} is not valid"),
            Self::CarriageReturn { name } => write!(
                f,
                "the value of header {name:?} holds a bare carriage return, on which async-nats \
                 0.51 stops its connection (nats-io/nats.rs#1612)"
            ),
        }
    }
}

/// One header line (continuations joined) as the client splits it.
struct Line {
    name: HeaderName,
    value: String,
}

/// Walks the block the way async-nats 0.51's `HMSG` reader does; `on_line` sees each header
/// line's name and value. Returns the first thing the client cannot read.
fn walk(block: &[u8], mut on_line: impl FnMut(Line)) -> Result<(), UnreadableHeaders> {
    let text = std::str::from_utf8(block).map_err(|_| UnreadableHeaders::NotUtf8)?;
    let mut lines = text.lines().peekable();
    let version = lines.next().ok_or(UnreadableHeaders::NoVersionLine)?;
    let suffix = version
        .strip_prefix("NATS/1.0")
        .map(str::trim)
        .ok_or(UnreadableHeaders::NoVersionLine)?;
    let status = suffix.split_once(' ').map_or(suffix, |(s, _)| s.trim());
    if !status.is_empty() && StatusCode::from_str(status).is_err() {
        return Err(UnreadableHeaders::BadStatus(status.to_owned()));
    }
    let mut first_error = None;
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        // After a bare carriage return the client has already stopped: that is the reason.
        let Some((name, value)) = line.split_once(':') else {
            return Err(first_error.unwrap_or(UnreadableHeaders::NoColon(line.to_owned())));
        };
        let Ok(header) = HeaderName::from_str(name) else {
            return Err(first_error.unwrap_or(UnreadableHeaders::BadName(name.to_owned())));
        };
        let mut value = value.trim_start().to_owned();
        while let Some(more) = lines.next_if(|s| s.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        value.truncate(value.trim_end().len());
        // `lines` split at every '\n', so only a '\r' can be left inside.
        if value.contains('\r') {
            // The client stops here; the lines after it are still worth keeping in a dead
            // letter, so the walk goes on.
            first_error.get_or_insert(UnreadableHeaders::CarriageReturn {
                name: name.to_owned(),
            });
            continue;
        }
        on_line(Line {
            name: header,
            value,
        });
    }
    first_error.map_or(Ok(()), Err)
}

/// `Ok` when async-nats 0.51 reads `block` without error, else why not.
pub fn check_header_block(block: &[u8]) -> Result<(), UnreadableHeaders> {
    walk(block, |_| {})
}

/// The headers of `block` the client could read, in order (all of them when
/// [`check_header_block`] is `Ok`; an empty map when the block is cut short before any).
pub fn readable_headers(block: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let _ = walk(block, |line| {
        headers.append(line.name, HeaderValue::from(line.value))
    });
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_as_clients_write_it_is_readable() {
        let mut headers = HeaderMap::new();
        headers.insert("Logdist-Agent", "a1");
        headers.append("X-Two", "one");
        headers.append("X-Two", "two");
        let block = b"NATS/1.0\r\nLogdist-Agent: a1\r\nX-Two: one\r\nX-Two: two\r\n\r\n";
        assert_eq!(check_header_block(block), Ok(()));
        assert_eq!(readable_headers(block), headers);
        assert_eq!(check_header_block(b"NATS/1.0 503\r\n\r\n"), Ok(()));
        assert_eq!(check_header_block(b"NATS/1.0\r\n\r\n"), Ok(()));
    }

    #[test]
    fn a_bare_carriage_return_in_a_value_is_the_kind_that_stops_the_connection() {
        let block = b"NATS/1.0\r\nLogdist-Agent: a\rb\r\nLogdist-Seq: 7\r\n\r\n";
        let error = check_header_block(block).unwrap_err();
        assert_eq!(
            error,
            UnreadableHeaders::CarriageReturn {
                name: "Logdist-Agent".into()
            }
        );
        assert!(error.to_string().contains("\"Logdist-Agent\""), "{error}");
        // The readable lines are kept, the bad one is not.
        let kept = readable_headers(block);
        assert_eq!(kept.get("Logdist-Seq").unwrap().as_str(), "7");
        assert!(kept.get("Logdist-Agent").is_none());
    }

    #[test]
    fn a_carriage_return_at_the_end_of_a_value_is_trimmed_as_the_client_does() {
        assert_eq!(check_header_block(b"NATS/1.0\r\nA: b \r\r\n\r\n"), Ok(()));
        // A continuation line joins its value; a carriage return inside it still counts.
        assert_eq!(
            check_header_block(b"NATS/1.0\r\nA: b\r\n c\rd\r\n\r\n"),
            Err(UnreadableHeaders::CarriageReturn { name: "A".into() })
        );
    }

    #[test]
    fn the_read_errors_are_told_apart_from_the_panic() {
        let cases: [(&[u8], UnreadableHeaders); 5] = [
            (b"NATS/1.0\r\nA: \xff\r\n\r\n", UnreadableHeaders::NotUtf8),
            (b"HTTP/1.1\r\n\r\n", UnreadableHeaders::NoVersionLine),
            (
                b"NATS/1.0 abc\r\n\r\n",
                UnreadableHeaders::BadStatus("abc".into()),
            ),
            (
                b"NATS/1.0\r\nno colon\r\n\r\n",
                UnreadableHeaders::NoColon("no colon".into()),
            ),
            (
                b"NATS/1.0\r\nbad name: x\r\n\r\n",
                UnreadableHeaders::BadName("bad name".into()),
            ),
        ];
        for (block, expected) in cases {
            let error = check_header_block(block).unwrap_err();
            assert_eq!(error, expected);
        }
    }

    /// The one kind this module says stops the connection is the kind async-nats panics on:
    /// the value the client would build fails its `HeaderValue::from`.
    #[test]
    fn the_client_panics_on_the_value_this_module_calls_fatal() {
        let value = "a\rb".to_owned();
        let outcome = std::panic::catch_unwind(|| HeaderValue::from(value));
        assert!(
            outcome.is_err(),
            "async-nats no longer panics on a bare carriage return: revisit this module, \
             docs/security.md and the distributor's stream scan"
        );
    }
}
