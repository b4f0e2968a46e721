//! The distributor's validation fast path, [`PacketValidator::count_if_valid`], over a fixed
//! set of payloads a fixed number of times: a workload for instruction counts, which are stable
//! on a shared machine where seconds are not.
//!
//! ```sh
//! cargo build --release -p logdist --example count_if_valid
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/count_if_valid.out \
//!     target/release/examples/count_if_valid 2000
//! ```
//!
//! The payloads are the `make bench` record in 100-message packets, once with every severity
//! spelling of the contract (so a change to severity parsing shows) and once as single objects.

use logdist::PacketValidator;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("rounds: a whole number"))
        .unwrap_or(2000);
    let record = |severity: &str| {
        format!(
            r#"{{"timestamp":1764064800000,"severity":"{severity}","source":"api-gateway","message":"GET /api/v1/orders 200 17 ms","host":"node-3"}}"#
        )
    };
    let info = record("INFO");
    let spellings = [
        "TRACE", "debug", "INFO", "Warn", "WARNING", "error", "FATAL", "critical",
    ];
    let mixed: Vec<String> = (0..100)
        .map(|i| record(spellings[i % spellings.len()]))
        .collect();
    let payloads = [
        format!("[{}]", vec![info.as_str(); 100].join(",")),
        format!("[{}]", mixed.join(",")),
        info,
    ];
    let validator = PacketValidator::default();
    let mut messages = 0usize;
    for _ in 0..rounds {
        for payload in &payloads {
            messages += validator
                .count_if_valid(std::hint::black_box(payload.as_bytes()))
                .expect("every payload is valid");
        }
    }
    println!("{messages} messages validated");
}
