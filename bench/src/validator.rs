//! The validator alone, in process: nanoseconds per message of `PacketValidator::parse` (the
//! analyzers, which build the records), of `count_if_valid` (the distributor's structural
//! scanner, with each stage-1 kernel this CPU has) and of `count_if_valid_serde` (serde_json
//! reading the fields: the validator before the scanner, the baseline in the same run), for
//! 100-message packets and single-message payloads; and callgrind's instructions per message
//! for the scanner and the serde path, which are stable where seconds are not.

use std::path::{Path, PathBuf};
use std::process::Command;

use logdist::protocol::packet::ScanKernel;
use logdist::PacketValidator;

/// The record agent-sim sends (and `logdist/examples/count_if_valid.rs`, which callgrind runs).
const RECORD: &str = r#"{"timestamp":1764064800000,"severity":"INFO","source":"api-gateway","message":"GET /api/v1/orders 200 17 ms","host":"node-3"}"#;

/// Timed repetitions of each figure; the fastest is reported (the others waited for the CPU).
const REPETITIONS: usize = 5;

/// Nanoseconds per message of `validate` over `payload`, fastest of [`REPETITIONS`].
fn ns_per_message(validate: &dyn Fn(&[u8]) -> usize, payload: &str, messages: usize) -> f64 {
    let rounds = 2_000_000 / messages;
    (0..REPETITIONS)
        .map(|_| {
            let start = std::time::Instant::now();
            let mut seen = 0;
            for _ in 0..rounds {
                seen += validate(std::hint::black_box(payload.as_bytes()));
            }
            assert_eq!(seen, messages * rounds, "every payload is valid");
            start.elapsed().as_nanos() as f64 / seen as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Instructions per message of the example `count_if_valid` under callgrind, for `path`
/// (fast, portable, avx2, serde) and `shape` (packet, single): the difference between two runs
/// of different lengths, so start-up costs cancel out. `None` without valgrind or the example.
fn instructions_per_message(example: &Path, path: &str, shape: &str) -> Option<f64> {
    let messages_per_round = if shape == "single" { 1.0 } else { 100.0 };
    let collected = |rounds: usize| -> Option<f64> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(example)
            .args([&rounds.to_string(), path, shape])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let log = String::from_utf8_lossy(&out.stderr);
        let line = log.lines().find(|l| l.contains("Collected :"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    };
    let (short, long) = (200, 1200);
    let difference = collected(long)? - collected(short)?;
    Some(difference / ((long - short) as f64 * messages_per_round))
}

/// Where `cargo build --release -p logdist --example count_if_valid` puts the example.
fn example_binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let path = me.parent()?.join("examples").join("count_if_valid");
    path.is_file().then_some(path)
}

/// The "Validation alone" sentence of BENCHMARKS.md.
pub fn cost() -> String {
    let packet = format!("[{}]", vec![RECORD; 100].join(","));
    let validator = PacketValidator::default();
    let parse = |p: &[u8]| validator.parse(p).map_or(0, |p| p.records.len());
    let serde = |p: &[u8]| validator.count_if_valid_serde(p).unwrap_or(0);
    let fast = |p: &[u8]| validator.count_if_valid(p).unwrap_or(0);
    let figures = |validate: &dyn Fn(&[u8]) -> usize| {
        (
            ns_per_message(validate, &packet, 100),
            ns_per_message(validate, RECORD, 1),
        )
    };
    let (parse_packet, parse_single) = figures(&parse);
    let (serde_packet, serde_single) = figures(&serde);
    let (fast_packet, fast_single) = figures(&fast);
    let kernels: Vec<String> = ScanKernel::available()
        .into_iter()
        .map(|kernel| {
            let pinned = move |p: &[u8]| validator.count_if_valid_using(kernel, p).unwrap_or(0);
            let (packet_ns, single_ns) = figures(&pinned);
            format!("{} {packet_ns:.0} / {single_ns:.0}", kernel.name())
        })
        .collect();
    let callgrind = match example_binary() {
        None => "callgrind: not measured (build `cargo build --release -p logdist --example count_if_valid`; make bench does)".to_string(),
        Some(example) => {
            let figure = |path: &str, shape: &str| {
                instructions_per_message(&example, path, shape)
                    .map_or("-".to_string(), |n| format!("{n:.0}"))
            };
            format!(
                "callgrind instructions per message (`valgrind --tool=callgrind target/release/examples/count_if_valid ROUNDS PATH SHAPE`, the difference of 1200 and 200 rounds): `count_if_valid` {} in 100-message packets, {} single; `count_if_valid_serde` {} in packets, {} single",
                figure("fast", "packet"),
                figure("fast", "single"),
                figure("serde", "packet"),
                figure("serde", "single"),
            )
        }
    };
    format!(
        "`count_if_valid` (distributor, structural scanner, builds nothing; kernel `{}` on this CPU): {fast_packet:.0} ns per message in 100-message packets ({:.1} M messages/s), {fast_single:.0} ns per single-message payload (each kernel, packets / single: {}); `count_if_valid_serde` (the same verdict by serde_json, the validator before the scanner): {serde_packet:.0} ns in packets, {serde_single:.0} ns single ({:.1}× / {:.1}× the scanner's); `parse` (analyzers, builds the records): {parse_packet:.0} ns in packets, {parse_single:.0} ns single. Fastest of {REPETITIONS} timed repetitions, one core. {callgrind}",
        ScanKernel::detect().name(),
        1e3 / fast_packet,
        kernels.join(", "),
        serde_packet / fast_packet,
        serde_single / fast_single,
    )
}
