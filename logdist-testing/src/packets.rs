//! Log packets of the wire contract for tests: valid messages with predictable content, and the
//! agent headers that let a test check order and uniqueness.

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
