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
//! change to severity parsing shows), `single` (one record alone), or `varied` (256 different
//! 100-message packets of records that differ as agent-sim's do, in severity, source, message
//! and length, validated in turn: ~3.6 MB, more than a core's L2, and no packet seen again
//! before 255 others, as in the distributor, where each packet is new). `logdist-bench --only
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
    // The payloads validated in turn, one a round.
    let payloads: Vec<Vec<u8>> = match shape.as_str() {
        "packet" => vec![format!("[{}]", vec![record("INFO"); 100].join(","))],
        "mixed" => {
            let records: Vec<String> = (0..100)
                .map(|i| record(spellings[i % spellings.len()]))
                .collect();
            vec![format!("[{}]", records.join(","))]
        }
        "single" => vec![record("INFO")],
        "varied" => {
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            (0..256)
                .map(|_| varied_packet(&mut state, &spellings))
                .collect()
        }
        other => panic!("payload: packet, mixed, single or varied, not {other:?}"),
    }
    .into_iter()
    .map(String::into_bytes)
    .collect();
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
    for round in 0..rounds {
        let payload = &payloads[round % payloads.len()];
        messages += count(std::hint::black_box(payload)).expect("the payload is valid");
    }
    let ns = start.elapsed().as_nanos() as f64 / messages as f64;
    println!("{messages} messages validated, {ns:.1} ns a message");
}

/// A 100-message packet of records that vary as agent-sim's do (mostly INFO, then any of the
/// contract's spellings; source, host, and a message of 2 to 9 words), from a xorshift
/// generator: deterministic, so callgrind runs of different lengths see the same packets.
fn varied_packet(state: &mut u64, severities: &[&str]) -> String {
    let mut next = |bound: u64| {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state % bound
    };
    let sources = ["api-gateway", "auth", "billing", "search-service", "web"];
    let words = [
        "GET",
        "/api/v1/orders",
        "200",
        "user",
        "42",
        "logged",
        "in",
        "from",
        "10.0.3.7",
    ];
    let records: Vec<String> = (0..100)
        .map(|_| {
            let message: Vec<&str> = (0..2 + next(8)).map(|_| words[next(9) as usize]).collect();
            format!(
                r#"{{"timestamp":{},"severity":"{}","source":"{}","message":"{}","host":"node-{}"}}"#,
                1_764_064_800_000 + next(1_000_000),
                if next(10) < 8 {
                    "INFO"
                } else {
                    severities[next(severities.len() as u64) as usize]
                },
                sources[next(sources.len() as u64) as usize],
                message.join(" "),
                1 + next(24)
            )
        })
        .collect();
    format!("[{}]", records.join(","))
}
