//! The HTTP scenario's load generator: a lean HTTP/1.1 client over plain keep-alive TCP
//! connections, each with one request in flight (no pipelining, as real agents post and wait).
//!
//! It shares the two cores with the system under test, so it does as little as a client can:
//! the request is formatted once (the body does not change from request to request; the
//! gateway stamps `Logdist-Sent-At` itself) and written with one write, and the answer is read
//! into a buffer kept for the connection and checked in place — status 2xx, the whole
//! `Content-Length` body, the number of messages it accepted, the connection kept alive. Any
//! other answer fails the run.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// What one connection posts, and what each answer must accept.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of the gateway.
    pub addr: String,
    /// The request path (`/message/send`, `/messages`).
    pub path: &'static str,
    /// The JSON body of every request.
    pub body: bytes::Bytes,
    /// Messages each 2xx answer must say it accepted.
    pub accepted: u64,
}

/// Headers an answer may have: the gateway sends four or five.
const MAX_HEADERS: usize = 16;

/// Read buffer of a connection: the gateway's answers to a valid request are ~150 bytes.
const READ_BUFFER: usize = 4096;

/// Longest wait for one answer: a gateway that stops answering fails the run with what it
/// sent so far, not only by the scenario's overall time-out.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete answer at the start of the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// Bytes of the buffer it took (head and body).
    pub len: usize,
    /// Whether it said `Connection: close`: the load needs keep-alive, so the run fails, but
    /// only after [`check_answer`] has reported a status that is not 2xx (a 413 or 503 the
    /// server closes after says more than the close).
    pub close: bool,
}

/// Why an answer is not one the load can count.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("HTTP response without Content-Length (the gateway always sends one)")]
    NoContentLength,
    #[error("HTTP response of {0} bytes, over the load's buffer of {READ_BUFFER}")]
    TooLong(usize),
}

/// Parses the answer at the start of `buf`: `Ok(None)` while it is incomplete (read more).
pub fn parse_answer(buf: &[u8]) -> Result<Option<Answer<'_>>, AnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) if buf.len() >= READ_BUFFER => {
            return Err(AnswerError::TooLong(buf.len()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(AnswerError::Malformed(e.to_string())),
    };
    let status = response.code.expect("a complete response has a status");
    let mut content_length = None;
    let mut close = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    AnswerError::Malformed(format!(
                        "Content-Length {:?}",
                        String::from_utf8_lossy(header.value)
                    ))
                })?;
            content_length = Some(value);
        } else if header.name.eq_ignore_ascii_case("connection")
            && header.value.eq_ignore_ascii_case(b"close")
        {
            close = true;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(AnswerError::NoContentLength);
        }
    }
    let content_length = content_length.ok_or(AnswerError::NoContentLength)?;
    let len = head + content_length;
    if len > READ_BUFFER {
        return Err(AnswerError::TooLong(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Answer {
        status,
        body: &buf[head..len],
        len,
        close,
    }))
}

/// The part of the gateway's 200 answer the load checks.
#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

/// Checks a complete answer: a 2xx that accepted `expected` messages.
pub fn check_answer(answer: &Answer<'_>, expected: u64) -> anyhow::Result<()> {
    let accepted = serde_json::from_slice::<Accepted>(answer.body)
        .map(|a| a.accepted)
        .ok();
    if !(200..300).contains(&answer.status) || accepted != Some(expected) {
        bail!(
            "gateway answered {}: {}",
            answer.status,
            String::from_utf8_lossy(answer.body)
        );
    }
    Ok(())
}

/// The request, formatted once for the connection's life.
fn request_bytes(target: &Target) -> Vec<u8> {
    let mut request = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        target.path,
        target.addr,
        target.body.len()
    )
    .into_bytes();
    request.extend_from_slice(&target.body);
    request
}

/// Runs `connections` connections to `target` for `duration` on a thread of their own with a
/// single-threaded runtime, like wrk's one thread: the connections' wake-ups then never cross
/// threads (no futex wake, no work stealing), and the load takes at most one core. `interval` is
/// each connection's time between requests (`None`: as fast as answers come). Returns the
/// requests answered 2xx.
pub async fn run(
    target: std::sync::Arc<Target>,
    connections: u64,
    interval: Option<Duration>,
    duration: Duration,
) -> anyhow::Result<u64> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP load's runtime")?;
        runtime.block_on(async {
            let deadline = Instant::now() + duration;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..connections {
                let target = target.clone();
                tasks.spawn(async move { connection(&target, interval, deadline).await });
            }
            let mut requests = 0;
            while let Some(result) = tasks.join_next().await {
                requests += result??;
            }
            Ok(requests)
        })
    })
    .await?
}

/// One connection: posts until `deadline`, one request every `interval` if given (as fast as
/// answers come otherwise). Returns the requests answered 2xx.
pub async fn connection(
    target: &Target,
    interval: Option<Duration>,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut stream = tokio::net::TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("cannot connect to the gateway at {}", target.addr))?;
    stream.set_nodelay(true)?;
    let request = request_bytes(target);
    let mut buf = vec![0u8; READ_BUFFER];
    let mut answered = 0u64;
    let mut next = Instant::now();
    while Instant::now() < deadline {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next).await;
            next += interval;
        }
        let answer_due = Instant::now() + ANSWER_TIMEOUT;
        tokio::time::timeout_at(answer_due, stream.write_all(&request))
            .await
            .with_context(|| {
                format!("the gateway took no request for {ANSWER_TIMEOUT:?} (request {answered} of this connection)")
            })??;
        let mut filled = 0;
        loop {
            let n = tokio::time::timeout_at(answer_due, stream.read(&mut buf[filled..]))
                .await
                .with_context(|| {
                    format!(
                        "no whole answer within {ANSWER_TIMEOUT:?} (request {answered} of this connection, {filled} bytes of it: {:?})",
                        String::from_utf8_lossy(&buf[..filled])
                    )
                })??;
            if n == 0 {
                bail!(
                    "the gateway closed the connection with {filled} bytes of an answer: {:?}",
                    String::from_utf8_lossy(&buf[..filled])
                );
            }
            filled += n;
            if let Some(answer) = parse_answer(&buf[..filled])? {
                check_answer(&answer, target.accepted)?;
                if answer.close {
                    bail!(
                        "the gateway answered with Connection: close (the load needs keep-alive)"
                    );
                }
                if answer.len != filled {
                    bail!(
                        "the gateway sent {} bytes after its answer to a request in flight alone",
                        filled - answer.len
                    );
                }
                break;
            }
        }
        answered += 1;
    }
    Ok(answered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 29\r\ndate: Tue, 01 Dec 2026 23:40:00 GMT\r\n\r\n{\"accepted\":1,\"stored\":false}";

    #[test]
    fn a_good_answer_is_complete_and_accepted() {
        let answer = parse_answer(GOOD).unwrap().unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, br#"{"accepted":1,"stored":false}"#);
        assert_eq!(answer.len, GOOD.len());
        check_answer(&answer, 1).unwrap();
        // The same answer does not count for a packet of 100.
        assert!(check_answer(&answer, 100).is_err());
    }

    #[test]
    fn every_prefix_of_a_good_answer_is_incomplete() {
        for end in 0..GOOD.len() {
            assert_eq!(
                parse_answer(&GOOD[..end]),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn a_non_2xx_answer_fails_with_its_status_and_body() {
        let body = br#"{"error":"overloaded","reason":"the distributor's router is behind"}"#;
        let raw = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nretry-after: 1\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(body)
        );
        let answer = parse_answer(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(answer.status, 503);
        let error = check_answer(&answer, 1).unwrap_err().to_string();
        assert!(
            error.contains("503") && error.contains("overloaded"),
            "{error}"
        );
    }

    #[test]
    fn a_2xx_that_is_not_the_gateways_answer_fails() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let answer = parse_answer(raw).unwrap().unwrap();
        assert!(check_answer(&answer, 1).is_err());
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(matches!(
            parse_answer(b"HTTX/1.1 200 OK\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}"),
            Err(AnswerError::NoContentLength)
        );
        assert_eq!(
            parse_answer(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            ),
            Err(AnswerError::NoContentLength)
        );
        // Connection: close is kept for after the status is checked, so a 503 that closes is
        // reported as the 503 it is.
        let closing =
            b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}";
        let answer = parse_answer(closing).unwrap().unwrap();
        assert!(answer.close);
        assert!(check_answer(&answer, 1)
            .unwrap_err()
            .to_string()
            .contains("503"));
        // A 2xx that closes passes the check but is flagged: `connection` fails the run on it.
        let answer = parse_answer(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 14\r\n\r\n{\"accepted\":1}",
        )
        .unwrap()
        .unwrap();
        assert!(answer.close);
        check_answer(&answer, 1).unwrap();
        let endless_head = [b'x'; READ_BUFFER];
        let mut head = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
        head.extend_from_slice(&endless_head);
        assert!(matches!(
            parse_answer(&head[..READ_BUFFER]),
            Err(AnswerError::TooLong(_))
        ));
    }

    /// A server on 127.0.0.1 that reads one request at a time and writes `answers` in turn,
    /// then closes the connection.
    async fn canned_server(answers: Vec<Vec<u8>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; READ_BUFFER];
            for answer in answers {
                if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                stream.write_all(&answer).await.unwrap();
            }
        });
        addr
    }

    fn target(addr: String) -> Target {
        Target {
            addr,
            path: "/message/send",
            body: bytes::Bytes::from_static(b"{}"),
            accepted: 1,
        }
    }

    #[tokio::test]
    async fn a_run_stops_at_the_first_non_2xx_answer() {
        let overloaded = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 24\r\n\r\n{\"error\":\"overloaded\"}  ";
        let addr = canned_server(vec![GOOD.to_vec(), GOOD.to_vec(), overloaded.to_vec()]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = connection(&target(addr), None, deadline)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("503"), "{error}");
    }

    #[tokio::test]
    async fn a_connection_closed_mid_answer_fails_the_run() {
        let addr = canned_server(vec![GOOD.to_vec(), GOOD[..40].to_vec()]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = connection(&target(addr), None, deadline)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("closed the connection with 40 bytes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn good_answers_are_counted_until_the_deadline() {
        let addr = canned_server(vec![GOOD.to_vec(); 1000]).await;
        let deadline = Instant::now() + Duration::from_millis(200);
        // Paced at one request every 50 ms, a connection sends at most 5 before its deadline
        // (at 0, 50, 100, 150 and 200 ms); unpaced it would use up the 1000 answers and fail
        // when the server closes.
        let answered = connection(&target(addr), Some(Duration::from_millis(50)), deadline)
            .await
            .unwrap();
        assert!((1..=5).contains(&answered), "{answered} answered");
    }

    #[test]
    fn the_request_is_one_post_with_its_length() {
        let target = Target {
            addr: "127.0.0.1:3000".into(),
            path: "/message/send",
            body: bytes::Bytes::from_static(b"{\"a\":1}"),
            accepted: 1,
        };
        let request = request_bytes(&target);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let head = match parsed.parse(&request).unwrap() {
            httparse::Status::Complete(head) => head,
            httparse::Status::Partial => panic!("incomplete request"),
        };
        assert_eq!(parsed.method, Some("POST"));
        assert_eq!(parsed.path, Some("/message/send"));
        assert_eq!(&request[head..], b"{\"a\":1}");
        let length = parsed
            .headers
            .iter()
            .find(|h| h.name == "content-length")
            .unwrap();
        assert_eq!(length.value, b"7");
    }
}
