//! Command-line configuration of agent-sim: one `clap` derive struct, every flag with an env
//! fallback, plus the value types it parses (`PacketSize`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use logdist::{Names, NatsArgs};

/// Simulates many log agents publishing realistic log packets to logdist, shows live progress,
/// and (with --verify) checks what the pipeline did with them.
#[derive(Debug, Clone, Parser)]
#[command(name = "agent-sim", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 ok (and, with --verify, within limits); 1 runtime failure \
or --verify found loss or deviation over the limits; 2 bad usage.\n\n\
Example: agent-sim --agents 50 --packet-size 1..200 --rate 50000 --duration 30s --verify"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub names: Names,

    /// Number of simulated agents; each publishes to `<ingest-subject>.<agent-id>`.
    #[arg(long, env = "SIM_AGENTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub agents: u32,

    /// Skew of the agents' volumes: agent n (0, 1, …) sends a share of --rate proportional to
    /// (n+1)^-S, a Zipf-like law (1.0: agent 0 sends twice agent 1's volume). 0, the default,
    /// gives every agent the same rate. Needs --rate > 0.
    #[arg(long, env = "SIM_AGENT_SKEW", value_name = "S", default_value_t = 0.0, value_parser = parse_skew)]
    pub agent_skew: f64,

    /// Messages per packet: a number (`100`) or an inclusive range (`1..200`), drawn uniformly.
    #[arg(long, env = "SIM_PACKET_SIZE", default_value = "100")]
    pub packet_size: PacketSize,

    /// Total log messages per second over all agents; 0 sends as fast as possible.
    #[arg(long, env = "SIM_RATE", default_value_t = 10_000)]
    pub rate: u64,

    /// How long to send (e.g. `30s`, `2m`). Ignored when --count is given.
    #[arg(long, env = "SIM_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Send exactly this many log messages, then stop (instead of --duration).
    #[arg(long, env = "SIM_COUNT")]
    pub count: Option<u64>,

    /// Share of packets (0 to 1) sent malformed on purpose, to exercise the dead-letter path.
    #[arg(long, env = "SIM_INVALID_RATIO", default_value_t = 0.0, value_parser = parse_ratio)]
    pub invalid_ratio: f64,

    /// NATS connections shared by the agents (agents are spread over them round-robin).
    #[arg(long, env = "SIM_CONNECTIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,

    /// Publish every packet to this exact subject instead of `<ingest-subject>.<agent-id>` (for
    /// benchmarks that bypass the distributor, e.g. straight to `analyzer.1`).
    #[arg(long, env = "SIM_SUBJECT", value_name = "SUBJECT")]
    pub subject: Option<String>,

    /// How packets are published. `core`: a fire-and-forget core-NATS publish, as most agents do;
    /// what is in flight when a server dies, or sent while the stream has no leader (a cluster
    /// fail-over), is lost. `jetstream`: publish through JetStream and wait for the stream's
    /// acknowledgement, retrying (with a `Nats-Msg-Id` so the stream drops a re-publish of a
    /// stored packet) until the packet is stored or --retry-timeout passes; then it is counted as
    /// failed and the run exits 1. Needs a stream that captures the subjects: `distributor run
    /// --delivery at-least-once` creates LOGS.
    #[arg(long, env = "SIM_PUBLISH", value_enum, default_value_t = PublishMode::Core)]
    pub publish: PublishMode,

    /// With --publish jetstream: packets per agent published and awaiting their acknowledgement
    /// at once; an agent whose window is full waits.
    #[arg(long, env = "SIM_ACK_WINDOW", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ack_window: u32,

    /// With --publish jetstream: wait this long for one acknowledgement before publishing the
    /// packet again.
    #[arg(long, env = "SIM_ACK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,

    /// With --publish jetstream: retry a packet (short back-off, 100 ms doubling to 2 s) for at
    /// most this long; then it counts as failed.
    #[arg(long, env = "SIM_RETRY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_timeout: Duration,

    /// Prefix of agent ids: agents are `<prefix>-0`, `<prefix>-1`, …
    #[arg(long, env = "SIM_AGENT_PREFIX", default_value = "sim")]
    pub agent_prefix: String,

    /// After sending, wait until the pipeline is quiet, read the analyzers' own counters and
    /// report shares, loss and dead letters.
    #[arg(long, env = "SIM_VERIFY")]
    pub verify: bool,

    /// With --verify: the largest acceptable loss, in percent of valid messages sent.
    #[arg(long, env = "SIM_MAX_LOSS", default_value_t = 0.0)]
    pub max_loss: f64,

    /// With --verify: the largest acceptable |received % − target %| of any analyzer, in
    /// percentage points.
    #[arg(long, env = "SIM_MAX_DEVIATION", default_value_t = 0.5)]
    pub max_deviation: f64,

    /// With --verify: the pipeline counts as quiet when no counter moved for this long. Make it
    /// longer than the analyzers' --report-interval.
    #[arg(long, env = "SIM_QUIET_PERIOD", default_value = "6s", value_parser = humantime::parse_duration)]
    pub quiet_period: Duration,

    /// With --verify: give up waiting for the counters after this long.
    #[arg(long, env = "SIM_VERIFY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub verify_timeout: Duration,

    /// Print the final report as JSON on stdout (progress still goes to stderr).
    #[arg(long, env = "SIM_JSON")]
    pub json: bool,

    /// Seed of the content generator, for repeatable runs.
    #[arg(long, env = "SIM_SEED", default_value_t = 1)]
    pub seed: u64,
}

fn parse_skew(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=10.0).contains(&v) => Ok(v),
        _ => Err(format!("skew must be a number from 0 to 10, got {raw:?}")),
    }
}

impl Config {
    /// Each agent's share of --rate: (n+1)^-S normalised (equal shares without skew).
    pub fn agent_shares(&self) -> Vec<f64> {
        let volumes: Vec<f64> = (1..=self.agents)
            .map(|r| f64::from(r).powf(-self.agent_skew))
            .collect();
        let sum: f64 = volumes.iter().sum();
        volumes.into_iter().map(|v| v / sum).collect()
    }

    /// Checks what clap cannot: the agent prefix becomes part of a subject.
    pub fn validate(&self) -> Result<(), String> {
        logdist::protocol::control::validate_name("agent prefix", &self.agent_prefix)
            .map_err(|e| format!("--agent-prefix: {e}"))?;
        if self.agent_skew > 0.0 && self.rate == 0 {
            return Err("--agent-skew needs a paced run: give --rate > 0".into());
        }
        if self.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if self.ack_timeout.is_zero() {
            return Err("--ack-timeout must be longer than 0".into());
        }
        if self.retry_timeout.is_zero() {
            return Err("--retry-timeout must be longer than 0".into());
        }
        if !(self.max_loss.is_finite() && self.max_loss >= 0.0) {
            return Err(format!(
                "--max-loss must be a percentage >= 0, got {}",
                self.max_loss
            ));
        }
        if !(self.max_deviation.is_finite() && self.max_deviation >= 0.0) {
            return Err(format!(
                "--max-deviation must be percentage points >= 0, got {}",
                self.max_deviation
            ));
        }
        Ok(())
    }
}

/// How agents publish (`--publish`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Core-NATS publish, fire and forget.
    #[default]
    Core,
    /// JetStream publish, acknowledged by the stream, retried until stored.
    Jetstream,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

/// Messages per packet: fixed, or drawn uniformly from an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSize {
    pub min: u32,
    pub max: u32,
}

impl PacketSize {
    pub fn fixed(n: u32) -> Self {
        PacketSize { min: n, max: n }
    }
}

impl fmt::Display for PacketSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max)
        }
    }
}

impl FromStr for PacketSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| -> Result<u32, String> {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?} is not a whole number"))
        };
        let (min, max) = match text.split_once("..") {
            Some((a, b)) => (number(a)?, number(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let n = number(text)?;
                (n, n)
            }
        };
        if min == 0 {
            return Err("packets need at least 1 message".into());
        }
        if min > max {
            return Err(format!("range {min}..{max} is empty"));
        }
        if max > 100_000 {
            return Err(format!(
                "{max} messages per packet is over the limit of 100000"
            ));
        }
        Ok(PacketSize { min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_size_forms() {
        assert_eq!("100".parse::<PacketSize>().unwrap(), PacketSize::fixed(100));
        assert_eq!(
            "1..200".parse::<PacketSize>().unwrap(),
            PacketSize { min: 1, max: 200 }
        );
        assert_eq!(
            "5..=9".parse::<PacketSize>().unwrap(),
            PacketSize { min: 5, max: 9 }
        );
        for bad in ["0", "10..2", "x", "1..", "200000"] {
            assert!(bad.parse::<PacketSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_parse_and_validate() {
        let config = Config::try_parse_from(["agent-sim"]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.agents, 10);
        assert_eq!(config.nats.nats_url, logdist::DEFAULT_NATS_URL);
        assert_eq!(config.publish, PublishMode::Core);
        let js = Config::try_parse_from(["agent-sim", "--publish", "jetstream"]).unwrap();
        assert_eq!(js.publish, PublishMode::Jetstream);
        assert_eq!(js.ack_window, 256);
    }

    #[test]
    fn agent_skew_gives_zipf_shares() {
        let flat = Config::try_parse_from(["agent-sim", "--agents", "4"]).unwrap();
        assert_eq!(flat.agent_shares(), vec![0.25; 4]);
        let zipf =
            Config::try_parse_from(["agent-sim", "--agents", "3", "--agent-skew", "1"]).unwrap();
        zipf.validate().unwrap();
        let shares = zipf.agent_shares();
        // 1 : 1/2 : 1/3 over 11/6.
        assert!((shares[0] - 6.0 / 11.0).abs() < 1e-12);
        assert!((shares[2] - 2.0 / 11.0).abs() < 1e-12);
        let unpaced =
            Config::try_parse_from(["agent-sim", "--agent-skew", "1", "--rate", "0"]).unwrap();
        assert!(unpaced.validate().unwrap_err().contains("--agent-skew"));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            vec!["agent-sim", "--invalid-ratio", "1.5"],
            vec!["agent-sim", "--agents", "0"],
            vec!["agent-sim", "--packet-size", "0"],
            vec!["agent-sim", "--duration", "soon"],
            vec!["agent-sim", "--publish", "acked"],
            vec!["agent-sim", "--ack-window", "0"],
            vec!["agent-sim", "--agent-skew", "-1"],
        ] {
            let err = Config::try_parse_from(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        let config = Config::try_parse_from(["agent-sim", "--agent-prefix", "a.b"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--agent-prefix"));
        let config = Config::try_parse_from(["agent-sim", "--ack-timeout", "0s"]).unwrap();
        assert!(config.validate().unwrap_err().contains("--ack-timeout"));
    }
}
