//! The distributor's validation fast path, [`PacketValidator::count_if_valid`], over a fixed
//! payload a fixed number of times: a workload for instruction counts, which are stable on a
//! shared machine where seconds are not.
//!
//! ```sh
//! cargo build --release -p logdist --example count_if_valid
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/count_if_valid.out \
//!     target/release/examples/count_if_valid 2000 fast packet
//! ```
//!
//! Arguments: rounds (default 2000); the path: `fast` (what `count_if_valid` picks on this CPU),
//! `portable` or `avx2` (one stage-1 kernel pinned), `serde` (serde_json reading the fields, the
//! validator before the scanner); the payload: `packet` (the `make bench` record in a
//! 100-message packet), `mixed` (the same with every severity spelling of the contract, so a
//! change to severity parsing shows) or `single` (one record alone). `logdist-bench --only
//! validator` runs it under callgrind twice, with different rounds, and reports the difference
//! per message, so start-up costs cancel out.

use logdist::protocol::packet::ScanKernel;
use logdist::PacketValidator;

/// One of the validator's paths, as a function of the payload.
type Validate<'a> = Box<dyn Fn(&[u8]) -> Option<usize> + 'a>;

/// The record `make bench` sends, with a severity given.
fn record(severity: &str) -> String {
    format!(
        r#"{{"timestamp":1764064800000,"severity":"{severity}","source":"api-gateway","message":"GET /api/v1/orders 200 17 ms","host":"node-3"}}"#
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args
        .next()
        .map(|n| n.parse().expect("rounds: a whole number"))
        .unwrap_or(2000);
    let path = args.next().unwrap_or_else(|| "fast".into());
    let shape = args.next().unwrap_or_else(|| "packet".into());
    let spellings = [
        "TRACE", "debug", "INFO", "Warn", "WARNING", "error", "FATAL", "critical",
    ];
    let payload = match shape.as_str() {
        "packet" => format!("[{}]", vec![record("INFO"); 100].join(",")),
        "mixed" => {
            let records: Vec<String> = (0..100)
                .map(|i| record(spellings[i % spellings.len()]))
                .collect();
            format!("[{}]", records.join(","))
        }
        "single" => record("INFO"),
        other => panic!("payload: packet, mixed or single, not {other:?}"),
    };
    let validator = PacketValidator::default();
    let kernel = |name: &str| {
        ScanKernel::available()
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| panic!("this CPU has no {name} kernel"))
    };
    let count: Validate<'_> = match path.as_str() {
        "fast" => Box::new(|p| validator.count_if_valid(p)),
        "serde" => Box::new(|p| validator.count_if_valid_serde(p)),
        name => {
            let kernel = kernel(name);
            Box::new(move |p| validator.count_if_valid_using(kernel, p))
        }
    };
    let start = std::time::Instant::now();
    let mut messages = 0usize;
    for _ in 0..rounds {
        messages += count(std::hint::black_box(payload.as_bytes())).expect("the payload is valid");
    }
    let ns = start.elapsed().as_nanos() as f64 / messages as f64;
    println!("{messages} messages validated, {ns:.1} ns a message");
}
