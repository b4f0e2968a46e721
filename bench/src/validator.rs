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

/// One way to validate: the number of valid messages of a payload (0 if it is not valid).
type Validate<'a> = &'a dyn Fn(&[u8]) -> usize;

/// Timed repetitions of each figure; the fastest is reported (the others waited for the CPU).
/// The paths take turns within each repetition, so load on a shared machine falls on all,
/// and each turn starts one path later, so no path is always timed first. (It was
/// `count_if_valid`, which read 86 ns in one `make bench` against 68–69 for the same code
/// with its kernel pinned: the same calls, the same instruction count under callgrind.)
const REPETITIONS: usize = 40;

/// Nanoseconds per message of each of `paths` over `payload` (of `messages` messages), each
/// the fastest of [`REPETITIONS`], the paths taking turns.
fn ns_per_message(paths: &[Validate<'_>], payload: &str, messages: usize) -> Vec<f64> {
    // 100,000 messages a timing: ~6 ms for the scanner, short enough that some timings of
    // each path run without another process taking the core, even with others busy.
    let rounds = 100_000 / messages;
    let mut best = vec![f64::INFINITY; paths.len()];
    for repetition in 0..REPETITIONS {
        for turn in 0..paths.len() {
            let i = (turn + repetition) % paths.len();
            let (validate, best) = (&paths[i], &mut best[i]);
            let start = std::time::Instant::now();
            let mut seen = 0;
            for _ in 0..rounds {
                seen += validate(std::hint::black_box(payload.as_bytes()));
            }
            assert_eq!(seen, messages * rounds, "every payload is valid");
            *best = best.min(start.elapsed().as_nanos() as f64 / seen as f64);
        }
    }
    best
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
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let parse = |p: &[u8]| validator.parse(p).map_or(0, |p| p.records.len());
    let serde = |p: &[u8]| validator.count_if_valid_serde(p).unwrap_or(0);
    let fast = |p: &[u8]| validator.count_if_valid(p).unwrap_or(0);
    let kernels = ScanKernel::available();
    let pinned: Vec<_> = kernels
        .iter()
        .map(|&kernel| move |p: &[u8]| validator.count_if_valid_using(kernel, p).unwrap_or(0))
        .collect();
    let mut paths: Vec<Validate<'_>> = vec![&fast, &serde, &parse];
    paths.extend(pinned.iter().map(|f| f as Validate<'_>));
    let in_packets = ns_per_message(&paths, &packet, 100);
    let single = ns_per_message(&paths, RECORD, 1);
    let [fast_packet, serde_packet, parse_packet] = [in_packets[0], in_packets[1], in_packets[2]];
    let [fast_single, serde_single, parse_single] = [single[0], single[1], single[2]];
    let kernels: Vec<String> = kernels
        .iter()
        .enumerate()
        .map(|(i, kernel)| {
            format!(
                "{} {:.0} / {:.0}",
                kernel.name(),
                in_packets[3 + i],
                single[3 + i]
            )
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
        "`count_if_valid` (distributor, structural scanner, builds nothing; kernel `{}` on this CPU): {fast_packet:.0} ns per message in 100-message packets ({:.1} M messages/s), {fast_single:.0} ns per single-message payload (each kernel, packets / single: {}); `count_if_valid_serde` (the same verdict by serde_json, the validator before the scanner): {serde_packet:.0} ns in packets, {serde_single:.0} ns single ({:.1}× / {:.1}× the scanner's); `parse` (analyzers, builds the records): {parse_packet:.0} ns in packets, {parse_single:.0} ns single. Fastest of {REPETITIONS} timed repetitions taken in turns (each turn starting one path later), one core, load average {load} at the start. {callgrind}",
        ScanKernel::detect().name(),
        1e3 / fast_packet,
        kernels.join(", "),
        serde_packet / fast_packet,
        serde_single / fast_single,
    )
}
