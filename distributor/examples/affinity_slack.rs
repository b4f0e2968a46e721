//! Measures what `--affinity-slack` (ε) costs and buys, without NATS: the figures behind its
//! default (docs/distributor.md, "Affinity").
//!
//! 1,000 keys with Zipf-like volumes, weights 0.5 / 0.3 / 0.2, 20,000 packets of 1–50 messages
//! drawn by volume, ten key sets per row. For each ε: the share of packets and of messages that
//! went to their key's first choice ("affinity kept"), and the largest deviation of an
//! analyzer's message share from its target, in percentage points (mean and worst of the ten).
//!
//! ```text
//! cargo run -p distributor --example affinity_slack
//! ```

use distributor::{AffinityRule, KeyHash, WeightedSelector};

const KEYS: usize = 1_000;
const PACKETS: usize = 20_000;
const RUNS: u64 = 10;
const ANALYZERS: [(&str, f64); 3] = [("an-a", 0.5), ("an-b", 0.3), ("an-c", 0.2)];

/// SplitMix64: a fixed, seedable generator, so every run prints the same table.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Outcome {
    kept_packets: f64,
    kept_messages: f64,
    max_deviation_pp: f64,
}

fn run(slack: f64, zipf: f64, seed: u64) -> Outcome {
    let mut rule = AffinityRule::new(slack);
    rule.set_analyzers(ANALYZERS);
    let mut selector = WeightedSelector::new();
    selector.set_weights(&ANALYZERS.map(|(_, w)| w));
    let keys: Vec<KeyHash> = (0..KEYS)
        .map(|i| KeyHash::of(format!("agent-{seed}-{i}").as_bytes()))
        .collect();
    let volumes: Vec<f64> = (1..=KEYS).map(|r| (r as f64).powf(-zipf)).collect();
    let sum: f64 = volumes.iter().sum();
    let cumulative: Vec<f64> = volumes
        .iter()
        .scan(0.0, |acc, v| {
            *acc += v / sum;
            Some(*acc)
        })
        .collect();
    let mut rng = SplitMix(seed);
    let (mut kept_packets, mut kept_messages) = (0u64, 0u64);
    for _ in 0..PACKETS {
        let u = rng.unit();
        let key = keys[cumulative.partition_point(|&c| c < u).min(KEYS - 1)];
        let n = 1 + rng.next() % 50;
        let choice = rule
            .choose(key, n, &selector, &[])
            .expect("analyzers online");
        selector.assign(choice.index, n);
        if choice.kept() {
            kept_packets += 1;
            kept_messages += n;
        }
    }
    let total = selector.total() as f64;
    let max_deviation_pp = (0..selector.len())
        .map(|i| (selector.assigned(i) as f64 / total - selector.target_share(i)).abs() * 100.0)
        .fold(0.0, f64::max);
    Outcome {
        kept_packets: kept_packets as f64 / PACKETS as f64,
        kept_messages: kept_messages as f64 / total,
        max_deviation_pp,
    }
}

fn main() {
    for zipf in [0.8, 1.0] {
        let heaviest = 1.0 / (1..=KEYS).map(|r| (r as f64).powf(-zipf)).sum::<f64>();
        println!(
            "Zipf exponent {zipf}: heaviest key {:.1} % of messages; {RUNS} key sets per row",
            heaviest * 100.0
        );
        println!(
            "  slack ε   kept, packets (mean / least)  kept, messages  max deviation pp (mean / worst)"
        );
        for slack in [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1e9] {
            let outcomes: Vec<Outcome> = (1..=RUNS).map(|seed| run(slack, zipf, seed)).collect();
            let mean = |f: fn(&Outcome) -> f64| outcomes.iter().map(f).sum::<f64>() / RUNS as f64;
            let worst = outcomes
                .iter()
                .map(|o| o.max_deviation_pp)
                .fold(0.0, f64::max);
            let least = outcomes.iter().map(|o| o.kept_packets).fold(1.0, f64::min);
            let label = if slack >= 1e9 {
                "∞ (none)".to_string()
            } else {
                slack.to_string()
            };
            println!(
                "  {label:<9} {:>17.1} % / {:>4.1} % {:>13.1} %  {:>14.2} / {:.2}",
                mean(|o| o.kept_packets) * 100.0,
                least * 100.0,
                mean(|o| o.kept_messages) * 100.0,
                mean(|o| o.max_deviation_pp),
                worst
            );
        }
    }
}
