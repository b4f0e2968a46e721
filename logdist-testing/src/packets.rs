//! Log packets of the wire contract for tests: valid messages with predictable content, the
//! agent headers that let a test check order and uniqueness, and raw `HPUB`s with header blocks
//! no NATS client would write.

use async_nats::HeaderMap;
use logdist::protocol::headers;

/// One valid log message: timestamp `i`, severity INFO, source `test`, message `m<i>`.
pub fn message(i: usize) -> String {
    format!(r#"{{"timestamp":{i},"severity":"INFO","source":"test","message":"m{i}"}}"#)
}

/// A packet (JSON array) of `n` valid messages, [`message`]`(0)` to `message(n - 1)`.
pub fn packet(n: usize) -> String {
    let mut out = String::with_capacity(n * 64 + 2);
    out.push('[');
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&message(i));
    }
    out.push(']');
    out
}

/// Headers carrying a `Logdist-Seq` (and an agent id), to check order and uniqueness.
pub fn seq_headers(seq: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::AGENT, "test-agent");
    h.insert(headers::SEQ, seq.to_string().as_str());
    h
}

/// Publishes `payload` on `subject` with the header block `header_block` as written, from a
/// plain TCP socket speaking the NATS protocol to `url` (`nats://host:port`, no auth): for
/// header blocks a NATS client refuses to send, such as a value with a bare carriage return.
/// Returns once the server answered the `PING` after it, so the server has the message.
pub fn publish_raw(url: &str, subject: &str, header_block: &[u8], payload: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let address = url.trim_start_matches("nats://");
    let stream = std::net::TcpStream::connect(address).expect("connect to nats-server");
    stream
        .set_read_timeout(Some(crate::WAIT))
        .expect("set a read time-out");
    let mut reader = BufReader::new(stream.try_clone().expect("clone the socket"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("read INFO");
    assert!(line.starts_with("INFO"), "{line}");
    let mut wire = Vec::new();
    wire.extend_from_slice(b"CONNECT {\"headers\":true,\"verbose\":false}\r\n");
    let (h, total) = (header_block.len(), header_block.len() + payload.len());
    wire.extend_from_slice(format!("HPUB {subject} {h} {total}\r\n").as_bytes());
    wire.extend_from_slice(header_block);
    wire.extend_from_slice(payload);
    wire.extend_from_slice(b"\r\nPING\r\n");
    (&stream).write_all(&wire).expect("write the HPUB");
    line.clear();
    reader.read_line(&mut line).expect("read PONG");
    assert_eq!(line, "PONG\r\n", "the server took the message");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_valid_and_counted() {
        let validator = logdist::PacketValidator::default();
        assert_eq!(validator.count_if_valid(packet(7).as_bytes()), Some(7));
        assert_eq!(validator.count_if_valid(message(3).as_bytes()), Some(1));
    }
}
