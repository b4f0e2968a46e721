//! At-least-once: messages of the stream whose header block the NATS client cannot read, taken
//! out of the stream before the consumer delivers them again.
//!
//! async-nats 0.51 stops its connection task on a header value with a bare carriage return
//! (nats-io/nats.rs#1612, see [`logdist::check_header_block`]), and nats-server stores such a
//! message in `LOGS` as any other. The replica that fetches it stops (the `ConnectionWatch` of
//! `crate::core`, exit status 1), and since the message is never acked, every replica that
//! fetched it after that would stop too, for ever. So before a replica opens its pull, it reads
//! the consumer's unacknowledged range, after the ack floor up to the last delivered sequence,
//! through the stream's message-get API: JSON with the header block in base64, which never
//! meets the client's header parser. Each message the client cannot read is dead-lettered
//! ([`UNREADABLE_HEADERS`], with its payload and the headers that could be read; without the
//! payload when the letter would pass the server's max_payload), then deleted from the stream,
//! which the consumer then skips. Header blocks the client refuses with a read
//! error (it reconnects) go the same way: each would cost a reconnection per redelivery.
//!
//! The scan costs nothing when nothing is unacknowledged (a first start, or a restart after
//! every replica stopped cleanly). Otherwise it reads each unacknowledged message once, also
//! those other replicas hold in flight: at start at most the consumer's `max_ack_pending`
//! ([`Scan::All`]), when the consumer is opened again after an error the oldest 1,000
//! ([`Scan::Oldest`]), and always within [`SCAN_BUDGET`].

use std::time::{Duration, Instant};

use async_nats::client::PublishErrorKind;
use async_nats::header::HeaderValue;
use async_nats::jetstream::consumer;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::RawMessage;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, Subject};
use base64::Engine as _;
use bytes::Bytes;
use logdist::protocol::deadletter::{deadletter_headers, Reason, UNREADABLE_HEADERS};

/// Longest a replica spends scanning the stream before it opens its pull anyway.
const SCAN_BUDGET: Duration = Duration::from_secs(10);
/// Longest wait for the server to confirm a dead letter before the deletion.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// JetStream's answers to deleting a sequence that is no longer in the stream: "sequence <n>
/// not found" (10043, what nats-server 2.15.1 answers for a sequence deleted before), and "no
/// message found" (10037).
const GONE: [ErrorCode; 2] = [ErrorCode(10043), ErrorCode(10037)];

/// Where the scan's dead letters go.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetters {
    pub client: Client,
    pub subject: Subject,
    /// This replica's `Logdist-Distributor`.
    pub replica: HeaderValue,
}

/// A message the scan dead-lettered, for the replica's counters.
#[derive(Debug)]
pub(crate) struct Removed {
    /// The subject it was published on.
    pub subject: Subject,
    /// Why, as in the dead letter's `Logdist-Error`.
    pub reason: String,
}

#[derive(serde::Deserialize)]
struct Stored {
    message: RawMessage,
}

#[derive(serde::Deserialize)]
struct Deleted {
    success: bool,
}

/// How much of the unacknowledged range a scan reads.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scan {
    /// As many messages as the consumer lets be unacknowledged (its `max_ack_pending`): at
    /// start, where a message that stopped a replica may be anywhere in the range.
    All,
    /// The oldest this many: when the consumer is opened again in a running replica.
    Oldest(u64),
}

/// Dead-letters and deletes every message of `stream` in `info`'s unacknowledged range that the
/// client cannot read, as far as `scan` says; returns those it dead-lettered. Failures are
/// logged and end the scan: the replica opens its pull either way.
pub(crate) async fn remove_unreadable(
    js: &jetstream::Context,
    stream: &str,
    info: &consumer::Info,
    scan: Scan,
    letters: &DeadLetters,
) -> Vec<Removed> {
    let mut removed = Vec::new();
    if info.num_ack_pending == 0 {
        return removed;
    }
    // The consumer's own limit, not this replica's flag: another replica may have created it.
    // Zero or below is no limit; SCAN_BUDGET still bounds the scan.
    let pending_limit = u64::try_from(info.config.max_ack_pending)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(u64::MAX);
    let max_messages = match scan {
        Scan::All => pending_limit,
        Scan::Oldest(n) => n.min(pending_limit),
    };
    let last = info.delivered.stream_sequence;
    let mut next = info.ack_floor.stream_sequence + 1;
    let started = Instant::now();
    let mut scanned = 0u64;
    let get = format!("STREAM.MSG.GET.{stream}");
    let scan = async {
        while next <= last && scanned < max_messages {
            // The first message at or after `next`: acked ones are gone from a work-queue
            // stream.
            let request = serde_json::json!({ "seq": next, "next_by_subj": ">" });
            let message = match js
                .request::<_, _, Response<Stored>>(get.clone(), &request)
                .await
            {
                Ok(Response::Ok(Stored { message })) => message,
                Ok(Response::Err { error })
                    if error.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    break;
                }
                Ok(Response::Err { error }) => {
                    tracing::warn!(stream, sequence = next, error = %error,
                        "cannot read the stream to look for unreadable headers");
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        stream,
                        sequence = next,
                        error = &e as &dyn std::error::Error,
                        "cannot read the stream to look for unreadable headers"
                    );
                    break;
                }
            };
            if message.sequence > last {
                break;
            }
            next = message.sequence + 1;
            scanned += 1;
            if let Some(r) = remove_if_unreadable(js, stream, message, letters).await {
                removed.push(r);
            }
        }
    };
    if tokio::time::timeout(SCAN_BUDGET, scan).await.is_err() {
        tracing::warn!(stream, scanned, next, last, budget = ?SCAN_BUDGET,
            "stopped scanning the unacknowledged messages for unreadable headers: out of time");
    }
    if scanned > 0 {
        tracing::info!(stream, scanned, removed = removed.len(), took = ?started.elapsed(),
            "scanned the unacknowledged messages for headers the NATS client cannot read");
    }
    removed
}

async fn remove_if_unreadable(
    js: &jetstream::Context,
    stream: &str,
    message: RawMessage,
    letters: &DeadLetters,
) -> Option<Removed> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let block = match message.headers.as_deref().map(|h| engine.decode(h)) {
        None => return None,
        Some(Ok(block)) => block,
        Some(Err(e)) => {
            tracing::warn!(stream, sequence = message.sequence, error = %e,
                "the stream's message-get answered headers that are not base64");
            return None;
        }
    };
    let problem = logdist::check_header_block(&block).err()?;
    let payload = match engine.decode(&message.payload) {
        Ok(payload) => Bytes::from(payload),
        Err(e) => {
            tracing::warn!(stream, sequence = message.sequence, error = %e,
                "the stream's message-get answered a payload that is not base64");
            return None;
        }
    };
    let text = format!(
        "stream {stream} message {}: {problem}; removed from the stream, since a replica that \
         fetched it could not read it",
        message.sequence
    );
    let readable = logdist::readable_headers(&block);
    let letter_headers = |text: &str| {
        let reason = Reason {
            code: UNREADABLE_HEADERS,
            text,
        };
        deadletter_headers(
            Some(&readable),
            reason,
            &message.subject,
            None,
            &letters.replica,
        )
    };
    // The dead letter first, then the deletion: a replica that stops in between leaves the
    // message in the stream, and the next one writes the letter again. A letter that cannot be
    // written leaves the message too, and the replica that fetches it stops: so a letter whose
    // headers make it pass the server's max_payload goes without the payload.
    let size = payload.len();
    let mut sent = letters
        .client
        .publish_with_headers(letters.subject.clone(), letter_headers(&text), payload)
        .await;
    if matches!(&sent, Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded) {
        let text = format!(
            "{text}; the payload ({size} bytes) is left out: with these headers it would pass \
             the server's max_payload"
        );
        sent = letters
            .client
            .publish_with_headers(letters.subject.clone(), letter_headers(&text), Bytes::new())
            .await;
    }
    if let Err(e) = sent {
        tracing::error!(stream, sequence = message.sequence, error = %e,
            "cannot publish the dead letter of a message with unreadable headers; it stays");
        return None;
    }
    match tokio::time::timeout(FLUSH_TIMEOUT, letters.client.flush()).await {
        Ok(Ok(())) => {}
        outcome => {
            let error = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {FLUSH_TIMEOUT:?}"),
            };
            tracing::error!(
                stream,
                sequence = message.sequence,
                error,
                "cannot flush the dead letter of a message with unreadable headers; it stays"
            );
            return None;
        }
    }
    let delete = serde_json::json!({ "seq": message.sequence });
    match js
        .request::<_, _, Response<Deleted>>(format!("STREAM.MSG.DELETE.{stream}"), &delete)
        .await
    {
        Ok(Response::Ok(Deleted { success: true })) => {}
        // Another replica deleted it meanwhile: its letter is written twice, as at-least-once
        // allows.
        Ok(Response::Err { error }) if GONE.contains(&error.error_code()) => {
            tracing::debug!(stream, sequence = message.sequence, error = %error,
                "a message with unreadable headers was deleted meanwhile");
        }
        other => {
            let error = match other {
                Ok(Response::Err { error }) => error.to_string(),
                Err(e) => e.to_string(),
                Ok(_) => "the server did not confirm".to_owned(),
            };
            tracing::error!(
                stream,
                sequence = message.sequence,
                error,
                "cannot delete a message with unreadable headers from the stream"
            );
        }
    }
    Some(Removed {
        subject: message.subject.into(),
        reason: text,
    })
}
