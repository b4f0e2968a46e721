//! The distributor's batch building, [`BatchBuilder`] `push` and `finish`, over packets with the
//! headers agent-sim sends (`Logdist-Agent`, `Logdist-Seq`, `Logdist-Sent-At`): a workload for
//! instruction counts, which are stable on a shared machine where seconds are not, and which do
//! not depend, as a whole distributor's do, on how valgrind's timing groups packets in batches.
//!
//! ```sh
//! cargo build --release -p logdist --example batch_build
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/batch_build.out \
//!     target/release/examples/batch_build 1000 30
//! ```
//!
//! Arguments: batches (default 1000) and packets a batch (default 30, about what the bench's
//! single-message rows get). Run it with two numbers of batches and take the difference per
//! batch, so start-up costs cancel out; `callgrind_annotate --inclusive=yes` gives
//! `BatchBuilder::finish` and `push` per call directly.

use async_nats::header::{HeaderMap, HeaderValue};
use bytes::Bytes;
use logdist::protocol::batch::BatchBuilder;
use logdist::protocol::headers::name;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |what: &str, default: u64| -> u64 {
        args.next()
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("{what}: a whole number"))
            })
            .unwrap_or(default)
    };
    let batches = number("batches", 1000);
    let packets = number("packets a batch", 30).max(1);
    let payload = Bytes::from_static(
        br#"{"timestamp":1764064800000,"severity":"INFO","source":"api-gateway","message":"GET /api/v1/orders 200 17 ms from client 0 with a typical length"}"#,
    );
    // Made once, as async-nats hands them over: building maps is not what is measured.
    let headers: Vec<HeaderMap> = (0..packets)
        .map(|seq| {
            let mut h = HeaderMap::new();
            h.insert(name::AGENT, "agent-3");
            h.insert(name::SEQ, HeaderValue::from(100_000 + seq));
            h.insert(
                name::SENT_AT,
                HeaderValue::from(1_764_064_800_123_456_789u64 + seq),
            );
            h
        })
        .collect();
    let replica = HeaderValue::from("r1");
    let mut builder = BatchBuilder::new();
    let mut bytes = 0;
    for _ in 0..batches {
        for h in &headers {
            builder.push(h, &payload, 1);
        }
        let (batch, joined) = builder.finish(&replica);
        bytes += joined.len() + batch.len();
    }
    println!("{batches} batches of {packets} packets, {bytes} bytes");
}
