//! The analyzer's command line: one `clap` derive struct, every flag with an env fallback.
//!
//! Each value is checked while it is parsed (weight, id, instance, durations), so a bad value is
//! a usage error from clap — a message naming the flag and exit code 2 — before anything touches
//! the network.

use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::Parser;
use logdist::protocol::control::{self, MAX_INTERVAL_MS, MIN_INTERVAL_MS};
use logdist::{Names, NatsArgs};

use crate::forward::{
    EndpointSettings, ForwardFormat, ForwardSettings, HttpSettings, ProcessSettings,
};

/// Default number of recent `Logdist-Packet-Id`s remembered for de-duplication.
pub const DEFAULT_DEDUP_WINDOW: usize = 100_000;

/// Receives its share of log packets on `<prefix>.<id>`, analyzes them (severities, sources,
/// error rate, end-to-end latency), announces itself to the distributors with heartbeats, and
/// writes its own counters to the stats bucket under `analyzer.<id>.<instance>`.
///
/// Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 on a runtime failure, 2 on bad usage.
#[derive(Debug, Clone, Parser)]
#[command(name = "analyzer", version)]
pub struct AnalyzerConfig {
    /// Analyzer id: the distributors route to `<prefix>.<id>`, and every instance started with
    /// the same id shares that traffic. 1-64 characters of A-Z a-z 0-9 - _.
    #[arg(long, env = "ANALYZER_ID", value_name = "ID", value_parser = parse_id)]
    pub id: String,

    /// Relative weight of this analyzer: its share of log messages is its weight divided by the
    /// sum of the weights online. A finite number > 0, at most 1000000.
    #[arg(
        long,
        env = "ANALYZER_WEIGHT",
        value_name = "WEIGHT",
        allow_negative_numbers = true,
        value_parser = parse_weight
    )]
    pub weight: f64,

    /// Name of this instance, unique among the instances of one id (part of its stats key).
    /// Default: a random 8-character name.
    #[arg(long, env = "ANALYZER_INSTANCE", value_name = "NAME", value_parser = parse_instance)]
    pub instance: Option<String>,

    /// How often to heartbeat on the control subject (10ms to 1h, e.g. `500ms`, `2s`). The
    /// distributors drop an instance silent for 3 intervals.
    #[arg(
        long,
        env = "ANALYZER_HEARTBEAT_INTERVAL",
        value_name = "DURATION",
        allow_negative_numbers = true,
        default_value = "1s",
        value_parser = parse_heartbeat_interval
    )]
    pub heartbeat_interval: Duration,

    /// How often to print a summary line and write the counters to the stats bucket (at least
    /// 10ms).
    #[arg(
        long,
        env = "ANALYZER_REPORT_INTERVAL",
        value_name = "DURATION",
        allow_negative_numbers = true,
        default_value = "5s",
        value_parser = parse_report_interval
    )]
    pub report_interval: Duration,

    /// Print each log message to stdout as it arrives (for manual tests; slow under load).
    #[arg(long, env = "ANALYZER_PRINT")]
    pub print: bool,

    /// Simulated analysis cost per log message (e.g. `50us`), for load tests: the analyzer then
    /// handles at most one message per this duration. Default 0: no added cost.
    #[arg(
        long,
        env = "ANALYZER_WORK_PER_MESSAGE",
        value_name = "DURATION",
        allow_negative_numbers = true,
        default_value = "0s",
        value_parser = parse_duration
    )]
    pub work_per_message: Duration,

    /// How many recent `Logdist-Packet-Id`s to remember for dropping redelivered packets
    /// (at-least-once mode). The oldest is forgotten first.
    #[arg(
        long,
        env = "ANALYZER_DEDUP_WINDOW",
        value_name = "PACKETS",
        default_value_t = DEFAULT_DEDUP_WINDOW,
        value_parser = clap::value_parser!(usize)
    )]
    pub dedup_window: usize,

    /// How often, while acknowledgements are pending, the counters are written to the stats
    /// bucket before the acknowledgements go out (10ms to 10s). A request-style packet
    /// (at-least-once mode) is acknowledged only once a write that counts it succeeded, so an
    /// analyzer killed at any moment never loses a count it acknowledged. Keep it well below the
    /// distributors' --request-timeout.
    #[arg(
        long,
        env = "ANALYZER_CHECKPOINT_INTERVAL",
        value_name = "DURATION",
        allow_negative_numbers = true,
        default_value = "200ms",
        value_parser = parse_checkpoint_interval
    )]
    pub checkpoint_interval: Duration,

    /// A checkpoint is also written as soon as this many packets were handled since the last
    /// one while acknowledgements are pending, without waiting for --checkpoint-interval. Under
    /// load that keeps the acknowledgements coming every few milliseconds, so a distributor's
    /// --analyzer-window of packets in flight is not spent waiting for the interval; at a low
    /// rate the interval decides.
    #[arg(
        long,
        env = "ANALYZER_CHECKPOINT_PACKETS",
        value_name = "PACKETS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub checkpoint_packets: u64,

    /// A checkpoint is also written as soon as this many log messages were analyzed since the
    /// last one while acknowledgements are pending. With large packets the packet count alone
    /// lets a whole --checkpoint-interval of messages wait, and the distributors' in-flight
    /// packets and the stream's pending acknowledgements with them, which lengthens the tail
    /// latency of the whole pipeline (BENCHMARKS.md).
    #[arg(
        long,
        env = "ANALYZER_CHECKPOINT_MESSAGES",
        value_name = "MESSAGES",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub checkpoint_messages: u64,

    /// On shutdown, the limit of each step: the withdrawal, waiting for the distributors to
    /// confirm it, handing over and analyzing the packets already delivered, the final stats
    /// write.
    #[arg(
        long,
        env = "ANALYZER_DRAIN_TIMEOUT",
        value_name = "DURATION",
        allow_negative_numbers = true,
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub drain_timeout: Duration,

    /// On shutdown, after the withdrawal is sent, the analyzer waits for every distributor
    /// replica that routed here in the last 30 s to confirm it (their packets have all arrived
    /// then). When none did, it waits instead until no packet has arrived for this long, then
    /// unsubscribes (at most --drain-timeout; 0s unsubscribes at once).
    #[arg(
        long,
        env = "ANALYZER_WITHDRAW_GRACE",
        value_name = "DURATION",
        allow_negative_numbers = true,
        default_value = "250ms",
        value_parser = parse_duration
    )]
    pub withdraw_grace: Duration,

    /// Threads of the async runtime. Default: one per core. 1 runs everything on one thread,
    /// which spends about 20 % less CPU per packet on a machine shared with nats-server (no
    /// cross-thread wake-ups), but control messages then wait behind the packets being handled:
    /// use it only with heartbeat intervals far above the time a burst of packets takes.
    #[arg(long, env = "ANALYZER_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024).map(|v| v as usize))]
    pub worker_threads: Option<usize>,

    /// Serve Prometheus metrics (`/metrics`) and the probes `/healthz` (alive) and `/readyz`
    /// (connected to NATS, subscribed and announced) on this address, e.g. `0.0.0.0:9102`. Off
    /// by default. The metrics are the counters of the stats record (see docs/metrics.md).
    #[arg(long, env = "ANALYZER_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// HTTP analyzer: instead of analyzing packets here, POST each one to this endpoint
    /// (`http://host:port/path`), with the same lifecycle (heartbeats, withdrawal, drain, stats).
    /// The analyzer announces itself only while the endpoint is healthy. In at-least-once mode a
    /// packet is acknowledged only after every request for it got a 2xx; a 4xx is dead-lettered
    /// with the status. See docs/analyzer.md.
    #[arg(long, env = "ANALYZER_FORWARD_HTTP", value_name = "URL", value_parser = parse_http_url,
          help_heading = "HTTP analyzer", conflicts_with_all = ["print", "work_per_message"])]
    pub forward_http: Option<String>,

    /// Body of the requests: `packet` (the packet as it arrived, a JSON array, one request per
    /// packet), `ndjson` (one log object per line, one request per packet), `message` (one
    /// request per log message, `{"data": <log object>}`, the old service's analyzers).
    #[arg(
        long,
        env = "ANALYZER_FORWARD_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "packet",
        help_heading = "HTTP analyzer"
    )]
    pub forward_format: ForwardFormat,

    /// Time-out of one request (connecting, sending, and reading the whole answer).
    #[arg(long, env = "ANALYZER_FORWARD_TIMEOUT", value_name = "DURATION", default_value = "10s",
          allow_negative_numbers = true, value_parser = parse_positive_duration,
          help_heading = "HTTP analyzer")]
    pub forward_timeout: Duration,

    /// Most requests (and most packets) out to the endpoint at once (with --exec: packets written
    /// to the process and not acknowledged yet); further packets wait in the subscription, so a
    /// slow endpoint slows its share instead of growing memory. 1 to 10000.
    #[arg(long, env = "ANALYZER_FORWARD_MAX_IN_FLIGHT", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=10000).map(|v| v as usize),
          help_heading = "HTTP analyzer")]
    pub forward_max_in_flight: usize,

    /// How long a request is retried after connection errors, time-outs, 5xx and 429 (back-off
    /// 100ms doubling to 5s, or the answer's Retry-After). Then, in at-least-once mode, the
    /// packet is not acknowledged (the distributor re-routes it); in at-most-once mode it is
    /// dead-lettered (`forward_failed`).
    #[arg(long, env = "ANALYZER_FORWARD_RETRY_FOR", value_name = "DURATION", default_value = "30s",
          allow_negative_numbers = true, value_parser = parse_duration,
          help_heading = "HTTP analyzer")]
    pub forward_retry_for: Duration,

    /// Health URL of the endpoint (`GET`, 2xx is healthy), polled every --health-interval.
    /// Default: judge by the requests (--unhealthy-after failures in a row withdraw the analyzer;
    /// while withdrawn, `HEAD <--forward-http URL>` is probed and any answer but 5xx/429 brings it
    /// back).
    #[arg(long, env = "ANALYZER_HEALTH_URL", value_name = "URL", value_parser = parse_http_url,
          requires = "forward_http", help_heading = "HTTP analyzer")]
    pub health_url: Option<String>,

    /// How often the health URL (or, while withdrawn, the endpoint) is probed.
    #[arg(long, env = "ANALYZER_HEALTH_INTERVAL", value_name = "DURATION", default_value = "1s",
          allow_negative_numbers = true, value_parser = parse_positive_duration,
          help_heading = "HTTP analyzer")]
    pub health_interval: Duration,

    /// Failed request attempts in a row (connection errors, time-outs, 5xx, 429) after which the
    /// endpoint counts as unhealthy and the analyzer withdraws. 1 to 1000.
    #[arg(long, env = "ANALYZER_UNHEALTHY_AFTER", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000), help_heading = "HTTP analyzer")]
    pub unhealthy_after: u32,

    /// Process analyzer: instead of analyzing packets here, write every log object as one line
    /// (NDJSON) to the stdin of this command (run with `sh -c`), which is restarted with
    /// back-off when it exits (the analyzer is withdrawn while it is down). See docs/analyzer.md.
    #[arg(long, env = "ANALYZER_EXEC", value_name = "COMMAND", help_heading = "Process analyzer",
          conflicts_with_all = ["print", "work_per_message", "forward_http"],
          value_parser = parse_command)]
    pub exec: Option<String>,

    /// The --exec child acknowledges: it writes a line `ack` on stdout for each input line it has
    /// finished with, in order (other stdout lines are passed through). A packet is delivered
    /// (and, at-least-once, acknowledged) only when all its lines are; packets the child did not
    /// acknowledge before it died are re-routed (at-least-once) or dead-lettered. Without it, a
    /// packet counts as delivered once written to the pipe, and a dying child loses what it had
    /// not processed.
    #[arg(
        long,
        env = "ANALYZER_EXEC_ACK",
        requires = "exec",
        help_heading = "Process analyzer"
    )]
    pub exec_ack: bool,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub names: Names,
}

impl AnalyzerConfig {
    /// The forwarding settings, for an HTTP analyzer.
    pub fn forward_settings(&self) -> Option<ForwardSettings> {
        if let Some(command) = &self.exec {
            return Some(ForwardSettings::Process {
                settings: ProcessSettings {
                    command: command.clone(),
                    ack: self.exec_ack,
                },
                max_in_flight: self.forward_max_in_flight,
            });
        }
        let url = self.forward_http.clone()?;
        Some(ForwardSettings::Http(HttpSettings {
            endpoint: EndpointSettings {
                url,
                health_url: self.health_url.clone(),
                timeout: self.forward_timeout,
                max_in_flight: self.forward_max_in_flight,
                retry_for: self.forward_retry_for,
            },
            format: self.forward_format,
            health_interval: self.health_interval,
            unhealthy_after: self.unhealthy_after,
        }))
    }

    /// The instance name: the one given, or a fresh random one. Call once and keep the result.
    pub fn instance_name(&self) -> String {
        self.instance.clone().unwrap_or_else(random_instance_name)
    }
}

/// A random instance name: 8 characters of a fresh NUID's random prefix (62^8 possibilities).
/// A new generator each time, because the global one keeps its prefix for the whole process.
pub fn random_instance_name() -> String {
    nuid::NUID::new().next().as_str()[..8].to_string()
}

fn parse_id(value: &str) -> Result<String, String> {
    control::validate_name("id", value)
        .map(|()| value.to_string())
        .map_err(|e| e.to_string())
}

fn parse_instance(value: &str) -> Result<String, String> {
    control::validate_name("instance", value)
        .map(|()| value.to_string())
        .map_err(|e| e.to_string())
}

fn parse_weight(value: &str) -> Result<f64, String> {
    let weight: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    control::validate_weight(weight).map_err(|e| e.to_string())?;
    Ok(weight)
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("{e} (write a duration such as 500ms, 2s, 1m)"))
}

fn parse_command(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("the command is empty".to_string());
    }
    Ok(value.to_string())
}

fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err("must be more than 0".to_string());
    }
    Ok(duration)
}

/// An `http://` URL with a host. `https://` is refused with the reason: this build has no TLS
/// stack for the forwarding client.
fn parse_http_url(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value.trim()).map_err(|e| {
        format!("{value:?} is not a URL: {e} (write e.g. http://127.0.0.1:8080/ingest)")
    })?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(
                "https is not supported: the forwarding client is built without TLS; \
                 put the endpoint behind a local TLS-terminating proxy and give its http:// URL"
                    .to_string(),
            )
        }
        other => {
            return Err(format!(
                "scheme {other:?} is not supported: write an http:// URL"
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{value:?} has no host"));
    }
    Ok(url.to_string())
}

fn parse_heartbeat_interval(value: &str) -> Result<Duration, String> {
    let interval = parse_duration(value)?;
    let ms = interval.as_millis();
    if ms < u128::from(MIN_INTERVAL_MS) || ms > u128::from(MAX_INTERVAL_MS) {
        return Err(format!(
            "must be between {MIN_INTERVAL_MS}ms and {}h",
            MAX_INTERVAL_MS / 3_600_000
        ));
    }
    Ok(interval)
}

fn parse_checkpoint_interval(value: &str) -> Result<Duration, String> {
    let interval = parse_duration(value)?;
    if interval < Duration::from_millis(10) || interval > Duration::from_secs(10) {
        return Err("must be between 10ms and 10s".to_string());
    }
    Ok(interval)
}

fn parse_report_interval(value: &str) -> Result<Duration, String> {
    let interval = parse_duration(value)?;
    if interval < Duration::from_millis(10) {
        return Err("must be at least 10ms".to_string());
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AnalyzerConfig, clap::Error> {
        AnalyzerConfig::try_parse_from(std::iter::once("analyzer").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let config = parse(&["--id", "1", "--weight", "0.5"]).unwrap();
        assert_eq!(config.id, "1");
        assert_eq!(config.weight, 0.5);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.report_interval, Duration::from_secs(5));
        assert_eq!(config.work_per_message, Duration::ZERO);
        assert_eq!(config.dedup_window, DEFAULT_DEDUP_WINDOW);
        assert_eq!(config.checkpoint_interval, Duration::from_millis(200));
        assert_eq!(config.checkpoint_packets, 256);
        assert_eq!(config.checkpoint_messages, 4096);
        assert_eq!(config.withdraw_grace, Duration::from_millis(250));
        assert!(!config.print);
        assert_eq!(config.instance, None);
        assert_eq!(config.names, Names::default());
    }

    #[test]
    fn durations_are_humantime() {
        let config = parse(&[
            "--id=a_b-1",
            "--weight=2",
            "--heartbeat-interval=500ms",
            "--report-interval=2s",
            "--work-per-message=50us",
            "--instance=k3f9",
        ])
        .unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.report_interval, Duration::from_secs(2));
        assert_eq!(config.work_per_message, Duration::from_micros(50));
        assert_eq!(config.instance_name(), "k3f9");
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        for (args, flag) in [
            (&["--id", "1", "--weight", "0"][..], "--weight"),
            (&["--id", "1", "--weight", "-1"], "--weight"),
            (&["--id", "1", "--weight", "NaN"], "--weight"),
            (&["--id", "1", "--weight", "inf"], "--weight"),
            (&["--id", "1", "--weight", "abc"], "--weight"),
            (&["--id", "1", "--weight", ""], "--weight"),
            (&["--id", "1", "--weight", "2e6"], "--weight"),
            (&["--id", "", "--weight", "1"], "--id"),
            (&["--id", "a.b", "--weight", "1"], "--id"),
            (
                &["--id", "1", "--weight", "1", "--instance", "x y"],
                "--instance",
            ),
            (
                &["--id", "1", "--weight", "1", "--heartbeat-interval", "1ms"],
                "--heartbeat-interval",
            ),
            (
                &["--id", "1", "--weight", "1", "--report-interval", "soon"],
                "--report-interval",
            ),
            (
                &["--id", "1", "--weight", "1", "--work-per-message", "-3"],
                "--work-per-message",
            ),
            (
                &["--id", "1", "--weight", "1", "--checkpoint-interval", "1m"],
                "--checkpoint-interval",
            ),
            (
                &["--id", "1", "--weight", "1", "--withdraw-grace", "soon"],
                "--withdraw-grace",
            ),
            (
                &["--id", "1", "--weight", "1", "--forward-http", "https://x/"],
                "--forward-http",
            ),
            (
                &["--id", "1", "--weight", "1", "--forward-http", "ftp://x/"],
                "--forward-http",
            ),
            (
                &["--id", "1", "--weight", "1", "--forward-http", "not a url"],
                "--forward-http",
            ),
            (
                &[
                    "--id=1",
                    "--weight=1",
                    "--forward-http=http://x/",
                    "--forward-format=xml",
                ],
                "--forward-format",
            ),
            (
                &[
                    "--id=1",
                    "--weight=1",
                    "--forward-http=http://x/",
                    "--forward-timeout=0s",
                ],
                "--forward-timeout",
            ),
            (
                &[
                    "--id=1",
                    "--weight=1",
                    "--forward-http=http://x/",
                    "--forward-max-in-flight=0",
                ],
                "--forward-max-in-flight",
            ),
            (
                &[
                    "--id=1",
                    "--weight=1",
                    "--forward-http=http://x/",
                    "--print",
                ],
                "--print",
            ),
            (
                &["--id=1", "--weight=1", "--health-url=http://x/h"],
                "--forward-http",
            ),
            (&["--id=1", "--weight=1", "--exec= "], "--exec"),
            (&["--id=1", "--weight=1", "--exec-ack"], "--exec"),
            (
                &[
                    "--id=1",
                    "--weight=1",
                    "--exec=cat",
                    "--forward-http=http://x/",
                ],
                "--exec",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.to_string();
            assert!(text.contains(flag), "{args:?}: {text}");
        }
    }

    #[test]
    fn forwarding_settings() {
        let config = parse(&["--id=1", "--weight=1"]).unwrap();
        assert!(config.forward_settings().is_none());
        let config = parse(&[
            "--id=7",
            "--weight=0.3",
            "--forward-http=http://127.0.0.1:8080/ingest",
            "--forward-format=message",
            "--health-url=http://127.0.0.1:8080/healthz",
        ])
        .unwrap();
        let Some(ForwardSettings::Http(settings)) = config.forward_settings() else {
            panic!("an HTTP analyzer");
        };
        assert_eq!(settings.endpoint.url, "http://127.0.0.1:8080/ingest");
        assert_eq!(
            settings.endpoint.health_url.as_deref(),
            Some("http://127.0.0.1:8080/healthz")
        );
        assert_eq!(settings.format, ForwardFormat::Message);
        assert_eq!(settings.endpoint.timeout, Duration::from_secs(10));
        assert_eq!(settings.endpoint.retry_for, Duration::from_secs(30));
        assert_eq!(settings.endpoint.max_in_flight, 32);
        assert_eq!(settings.unhealthy_after, 3);
        assert_eq!(settings.health_interval, Duration::from_secs(1));
    }

    #[test]
    fn process_settings() {
        let config = parse(&[
            "--id=8",
            "--weight=0.2",
            "--exec=python3 a.py",
            "--exec-ack",
        ])
        .unwrap();
        let Some(ForwardSettings::Process {
            settings,
            max_in_flight,
        }) = config.forward_settings()
        else {
            panic!("a process analyzer");
        };
        assert_eq!(settings.command, "python3 a.py");
        assert!(settings.ack);
        assert_eq!(max_in_flight, 32);
    }

    #[test]
    fn random_instance_names_are_valid_and_differ() {
        let a = random_instance_name();
        let b = random_instance_name();
        control::validate_name("instance", &a).unwrap();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }
}
