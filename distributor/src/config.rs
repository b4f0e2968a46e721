//! Command line of the `distributor` binary: one `clap` derive struct per subcommand, every flag
//! with an environment fallback and its default in the help text.
//!
//! `distributor` alone is `distributor run`: the run flags are accepted at the top level too.

use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use logdist::ingest_format::{parse_severity, FieldAssignment, FormatRule, Mapping};
use logdist::{Names, NatsArgs, Severity};

use crate::affinity::AffinityKey;
pub use crate::auth::AuthArgs;
use crate::hold_queue::{DEFAULT_MAX_BYTES, DEFAULT_MAX_PACKETS};
use crate::membership::DEFAULT_TIMEOUT_FACTOR;

/// Default of `--ingest-buffer`: ~20 ms of single-message packets at this replica's full speed,
/// and ~13 MiB of 100-message packets (`make bench` measured the same sustained rates with 1024
/// and 2048, and half the peak RSS with 1024).
pub const DEFAULT_INGEST_BUFFER: usize = 1024;

/// Default of `--ingest-read-buffer`. `make bench`, at-most-once, 100-message packets (~14 KB),
/// runs taken in turns: flood peak RSS 90.0 / 92.0 MiB with 65535 (the client's default), 56.8 /
/// 66.2 with 16384, 73.2 / 59.3 with 4096. Single messages kept their sustained rate (175,545 /
/// 175,361 msg/s with 65535, 173,828 with 16384), at ~5 % more distributor CPU a message
/// (2.15 / 2.12 s per M with 65535, 2.26 with 16384) from the extra reads.
pub const DEFAULT_INGEST_READ_BUFFER: u16 = 16 * 1024;

/// Routes log packets from the ingest subjects to weighted analyzers, balancing log messages.
#[derive(Debug, Parser)]
#[command(
    name = "distributor",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 ok, 1 runtime failure (e.g. NATS refused the credentials), 2 bad usage.\nLogs go to stderr, filtered by RUST_LOG (default info)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Flags of `run`, the default subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

impl Cli {
    /// The subcommand to execute (`run` when none was given).
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Run(self.run))
    }
}

// Built once per process, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the distributor (the default).
    Run(RunArgs),
    /// Print the routing shares of all replicas from the KV buckets.
    Stats(StatsArgs),
    /// Write the NATS users of analyzer ids (one user per id, allowed to speak only as itself)
    /// into a nats-server config, or print them. See docs/security.md.
    Auth(AuthArgs),
    /// Show, set or clear the operators' weight overrides (bucket `logdist_weights`).
    Weights(WeightsArgs),
}

/// Flags of `distributor run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub names: Names,

    /// Replica id: names this replica in `Logdist-Distributor` headers and its stats key
    /// `distributor.<id>`. Letters, digits, `-` and `_`. Default: `<hostname>-<pid>`.
    #[arg(long, env = "DISTRIBUTOR_REPLICA_ID", value_name = "ID", value_parser = parse_replica_id)]
    pub replica_id: Option<String>,

    /// Largest payload accepted, in bytes; larger ones are dead-lettered (`too_large`). The
    /// default, 8 MiB, is the `max_payload` of nats.conf.
    #[arg(long, env = "DISTRIBUTOR_MAX_PACKET_BYTES", value_name = "BYTES",
          default_value_t = logdist::protocol::packet::DEFAULT_MAX_PACKET_BYTES,
          value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub max_packet_bytes: usize,

    /// An analyzer instance is dropped when it sends nothing for this many times its announced
    /// heartbeat interval.
    #[arg(long, env = "DISTRIBUTOR_HEARTBEAT_TIMEOUT_FACTOR", value_name = "N",
          default_value_t = DEFAULT_TIMEOUT_FACTOR,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub heartbeat_timeout_factor: u32,

    /// Largest weight an analyzer may announce. A heartbeat above it is refused: logged with the
    /// reason (`over_weight_cap`), counted in the stats' `bad_heartbeats`, and it changes
    /// nothing (an instance that keeps announcing too much times out). Set it to what your
    /// analyzers really use (e.g. 10 for weights like 0.4 or 3), so that no analyzer can claim
    /// nearly all logs by mistake. Default: the protocol's limit, 1000000.
    #[arg(long, env = "DISTRIBUTOR_MAX_WEIGHT", value_name = "WEIGHT",
          default_value_t = logdist::protocol::control::MAX_WEIGHT, value_parser = parse_max_weight)]
    pub max_weight: f64,

    /// Also read control messages on the old shared subject (--control-subject itself), where
    /// analyzers from before per-id control subjects heartbeat. For a migration period only:
    /// those messages carry no identity (any client allowed to publish there can speak for any
    /// id), so turn it off once every analyzer heartbeats on `<control>.<id>`. Off by default.
    #[arg(long, env = "DISTRIBUTOR_LEGACY_CONTROL_SUBJECT")]
    pub legacy_control_subject: bool,

    /// Largest dead-letter report of one packet, in bytes: the invalid elements of a packet (the
    /// unmappable records of a shipper's payload, the refused records of an OTLP request to
    /// --http) go out as one dead letter listing each (index, reason, element); when that list
    /// would be larger, the packet is dead-lettered whole, once, with a summary of the reasons.
    /// Never more than the server's max_payload allows. The default is 1 MiB.
    #[arg(long, env = "DISTRIBUTOR_DEADLETTER_REPORT_MAX_BYTES", value_name = "BYTES",
          default_value_t = logdist::protocol::deadletter::DEFAULT_REPORT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub deadletter_report_max_bytes: usize,

    /// Most packets held while no analyzer is online; beyond it packets are dead-lettered
    /// (`no_analyzer_online`).
    #[arg(long, env = "DISTRIBUTOR_HOLD_MAX_PACKETS", value_name = "N",
          default_value_t = DEFAULT_MAX_PACKETS,
          value_parser = clap::value_parser!(u64).map(|v| v as usize))]
    pub hold_max_packets: usize,

    /// Most payload bytes held while no analyzer is online; beyond it packets are dead-lettered
    /// (`no_analyzer_online`). The default is 64 MiB.
    #[arg(long, env = "DISTRIBUTOR_HOLD_MAX_BYTES", value_name = "BYTES",
          default_value_t = DEFAULT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).map(|v| v as usize))]
    pub hold_max_bytes: usize,

    /// How often this replica writes its counters to the stats bucket (10ms to 1s; the contract
    /// asks for at least once a second).
    #[arg(long, env = "DISTRIBUTOR_STATS_INTERVAL", value_name = "DURATION",
          default_value = "1s", value_parser = parse_stats_interval)]
    pub stats_interval: Duration,

    /// Delivery guarantee. `at-most-once`: core-NATS queue subscription, publish and forget.
    /// `at-least-once`: a JetStream stream captures the ingest subjects, and a packet is acked
    /// there only after an analyzer acknowledged it (see docs/delivery.md).
    #[arg(long, env = "DISTRIBUTOR_DELIVERY", value_enum, default_value_t = Delivery::AtMostOnce)]
    pub delivery: Delivery,

    #[command(flatten)]
    pub at_least_once: AtLeastOnceArgs,

    #[command(flatten)]
    pub coalesce: CoalesceArgs,

    /// Key affinity: send every packet of one key to the same analyzer while the shares still
    /// follow the weights (see docs/distributor.md, "Affinity"). `none` (default): every packet
    /// may go anywhere. `agent`: the `Logdist-Agent` header, else the agent token of the ingest
    /// subject (`<ingest>.<agent>`). `header:NAME`: that header's value. `field:NAME`: that top-level field of the
    /// packet's first record (for packets from one source). Packets without a key are balanced
    /// as with `none`. Every replica must use the same setting.
    #[arg(
        long,
        env = "DISTRIBUTOR_AFFINITY",
        value_name = "MODE",
        default_value = "none"
    )]
    pub affinity: AffinityKey,

    /// With --affinity: how far (ε, relative) an analyzer may go above its target share of
    /// messages before a key's packets spill to its next choice. Every share stays within
    /// ε·max(p, 1−p) of its target p; larger values keep more packets on their key's first
    /// choice. Default 0.01 (within 1 percentage point), measured with `cargo run -p
    /// distributor --example affinity_slack`.
    #[arg(long, env = "DISTRIBUTOR_AFFINITY_SLACK", value_name = "EPSILON",
          default_value_t = crate::affinity::DEFAULT_SLACK, value_parser = parse_slack)]
    pub affinity_slack: f64,

    #[command(flatten)]
    pub formats: IngestFormatArgs,

    /// Also serve the HTTP ingest gateway on this address (e.g. `127.0.0.1:3000`): the old
    /// service's `POST /message/send`, `POST /messages` (JSON array or NDJSON, optionally gzip;
    /// `?format=fluent-bit|vector|fields` for shippers' records), OTLP/HTTP logs on
    /// `POST /v1/logs`, `GET /analyzer/stats` and `GET /healthz`. Off by default. See
    /// docs/http.md.
    #[arg(long, env = "DISTRIBUTOR_HTTP", value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,

    /// With --http: the old service's analyzers register with `POST /analyzer/register
    /// {"id","weight","port"}`, and every replica bridges them: their messages are POSTed, one
    /// per request as `{"data": …}`, to `http://<this host>:<port>/message/process`. Default: the
    /// address the registration came from. See docs/analyzer.md.
    #[arg(long, env = "DISTRIBUTOR_BRIDGE_HOST", value_name = "HOST")]
    pub bridge_host: Option<String>,

    /// With --http: the KV bucket of the old service's analyzer registrations (one key per
    /// analyzer id), shared by the replicas; a restarted distributor resumes them from it.
    #[arg(long, env = "DISTRIBUTOR_REGISTRATIONS_BUCKET", value_name = "BUCKET",
          default_value = logdist_http::DEFAULT_REGISTRATIONS_BUCKET)]
    pub registrations_bucket: String,

    /// Largest HTTP request body, in bytes, also after gzip decompression (413 above). The
    /// default is 8 MiB.
    #[arg(long, env = "DISTRIBUTOR_HTTP_MAX_BODY_BYTES", value_name = "BYTES",
          default_value_t = logdist_http::DEFAULT_MAX_BODY_BYTES,
          value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub http_max_body_bytes: usize,

    /// With --http, at-most-once: most HTTP packets waiting for this replica's router. The
    /// gateway hands accepted packets to the router of its own process through this queue
    /// (no NATS round trip); a request that finds it full for 200 ms is answered 503
    /// `overloaded` with `Retry-After: 1`, nothing accepted. It bounds memory to this many
    /// request bodies.
    #[arg(long, env = "DISTRIBUTOR_HTTP_QUEUE", value_name = "PACKETS",
          default_value_t = logdist_http::DEFAULT_LOCAL_QUEUE,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576).map(|v| v as usize))]
    pub http_queue: usize,

    /// Serve Prometheus metrics (`/metrics`) and the probes `/healthz` (alive) and `/readyz`
    /// (connected to NATS, membership loaded, at-least-once: the consumer bound) on this
    /// address, e.g. `0.0.0.0:9101`. Off by default. The metrics are the counters of the stats
    /// record (see docs/metrics.md).
    #[arg(long, env = "DISTRIBUTOR_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// At-most-once: most packets this replica's ingest connection buffers between the socket
    /// and the router. It bounds memory when agents publish faster than the replica routes: past
    /// it the client drops what arrives, counted exactly in the stats' `ingest_dropped_packets`
    /// (what would be lost anyway, without holding up to 64 K packets in memory first).
    /// At-least-once needs no such bound: JetStream hands out --fetch-batch packets at a time.
    #[arg(long, env = "DISTRIBUTOR_INGEST_BUFFER", value_name = "PACKETS",
          default_value_t = DEFAULT_INGEST_BUFFER,
          value_parser = clap::value_parser!(u64).range(16..=1_048_576).map(|v| v as usize))]
    pub ingest_buffer: usize,

    /// At-most-once: the most bytes the ingest connection reads from the socket at a time
    /// (1024–65535). Each packet the client buffers (--ingest-buffer) is a slice of the read it
    /// came in, so under overload, where the rest of a read is dropped, every buffered packet
    /// holds a whole read in memory: smaller reads bound the peak memory of a flood of large
    /// packets (`make bench`: 90–92 MiB with 65535, 57–66 MiB with the default), at the cost
    /// of more reads per byte.
    #[arg(long, env = "DISTRIBUTOR_INGEST_READ_BUFFER", value_name = "BYTES",
          default_value_t = DEFAULT_INGEST_READ_BUFFER,
          value_parser = clap::value_parser!(u16).range(1024..))]
    pub ingest_read_buffer: u16,

    /// Threads of the async runtime. Default: one per core. 1 runs everything on one thread (a
    /// packet is read, validated and written on one core, no cross-thread wake-ups) and caps
    /// the distributor at one core. On a 2-core machine shared with nats-server it saved ~8 %
    /// of the CPU per 100-message packet while the machine was overloaded, nothing measurable
    /// otherwise (scripts/cpu-per-packet.sh). Control messages then wait behind the packets
    /// being handled: use it only with heartbeat intervals far above a burst's handling time.
    #[arg(long, env = "DISTRIBUTOR_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024).map(|v| v as usize))]
    pub worker_threads: Option<usize>,
}

/// The delivery guarantee of `distributor run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Delivery {
    AtMostOnce,
    AtLeastOnce,
}

impl Delivery {
    /// The `delivery` field of the stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtMostOnce => "at-most-once",
            Delivery::AtLeastOnce => "at-least-once",
        }
    }
}

/// Flags that only matter with `--delivery at-least-once`.
#[derive(Debug, Clone, Args)]
pub struct AtLeastOnceArgs {
    /// JetStream stream that captures the ingest subjects (created if missing, file storage).
    #[arg(long = "stream", env = "DISTRIBUTOR_STREAM", value_name = "NAME", default_value = "LOGS",
          value_parser = parse_js_name)]
    pub stream: String,

    /// Replicas of the stream when this replica creates it (1, or 3/5 in a cluster).
    #[arg(long, env = "DISTRIBUTOR_STREAM_REPLICAS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=5).map(|v| v as usize))]
    pub stream_replicas: usize,

    /// Oldest packet the stream keeps, acknowledged or not (a backlog older than this is lost).
    #[arg(long, env = "DISTRIBUTOR_STREAM_MAX_AGE", value_name = "DURATION", default_value = "24h",
          value_parser = parse_max_age)]
    pub stream_max_age: Duration,

    /// Largest size of the stream in bytes; past it the oldest packets are discarded. Default
    /// 1 GiB.
    #[arg(long, env = "DISTRIBUTOR_STREAM_MAX_BYTES", value_name = "BYTES",
          default_value_t = 1 << 30, value_parser = clap::value_parser!(i64).range(1..))]
    pub stream_max_bytes: i64,

    /// Durable pull consumer shared by every replica.
    #[arg(long = "consumer", env = "DISTRIBUTOR_CONSUMER", value_name = "NAME",
          default_value = "distributors", value_parser = parse_js_name)]
    pub consumer: String,

    /// JetStream redelivers a packet not acked within this time (e.g. the replica holding it
    /// died). Set when the consumer is created. Should exceed --max-attempts × --request-timeout.
    #[arg(long, env = "DISTRIBUTOR_ACK_WAIT", value_name = "DURATION", default_value = "30s",
          value_parser = parse_ack_wait)]
    pub ack_wait: Duration,

    /// Most packets delivered to the replicas and not yet acked (consumer max_ack_pending).
    #[arg(long, env = "DISTRIBUTOR_MAX_ACK_PENDING", value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub max_ack_pending: i64,

    /// How long to wait for an analyzer's acknowledgement before sending the packet to another
    /// one. Must comfortably exceed the analyzers' --checkpoint-interval; the default also
    /// covers a short JetStream leader election (a time-out while no analyzer answers at all
    /// sends the packet back to the stream without counting an attempt).
    #[arg(long, env = "DISTRIBUTOR_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "5s",
          value_parser = parse_request_timeout)]
    pub request_timeout: Duration,

    /// Failed deliveries per packet that were the analyzers' fault (no responders or a time-out
    /// while other analyzers answer, or a time-out of an analyzer that never answered) before
    /// it is dead-lettered (`undeliverable`) and acked. The attempts are spread in time (see
    /// --retry-delay): with the defaults over at least 1.5 s. Failures of NATS or JetStream, or
    /// of several analyzers at once, do not count: the packet goes back to the stream
    /// (docs/delivery.md, "Which failures count as the analyzer's fault").
    #[arg(long, env = "DISTRIBUTOR_MAX_ATTEMPTS", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Wait before the next attempt of a packet that an analyzer failed (it goes to another
    /// analyzer then), doubling with each further failure of that packet, at most
    /// --retry-max-delay.
    #[arg(long, env = "DISTRIBUTOR_RETRY_DELAY", value_name = "DURATION", default_value = "100ms",
          value_parser = parse_retry_delay)]
    pub retry_delay: Duration,

    /// Longest wait between two attempts of one packet. At most half of --ack-wait is used, so
    /// JetStream does not redeliver a packet while it waits for its retry.
    #[arg(long, env = "DISTRIBUTOR_RETRY_MAX_DELAY", value_name = "DURATION", default_value = "2s",
          value_parser = parse_retry_delay)]
    pub retry_max_delay: Duration,

    /// For this long after this replica reconnected to NATS, or got its JetStream consumer back
    /// after losing it, a failed delivery is the infrastructure's fault (the analyzers'
    /// clients re-subscribe on their own schedule, up to seconds later): the packet goes back to
    /// the stream, no attempt counted. 0s turns the grace period off.
    #[arg(long, env = "DISTRIBUTOR_RECONNECT_GRACE", value_name = "DURATION", default_value = "5s",
          value_parser = parse_reconnect_grace)]
    pub reconnect_grace: Duration,

    /// Most packets in flight (sent, not yet acknowledged) to one analyzer.
    #[arg(long, env = "DISTRIBUTOR_ANALYZER_WINDOW", value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub analyzer_window: usize,

    /// Most packets in flight on this replica altogether.
    #[arg(long, env = "DISTRIBUTOR_MAX_IN_FLIGHT", value_name = "N", default_value_t = 4000,
          value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub max_in_flight: usize,

    /// Most payload bytes in flight on this replica altogether (default 32 MiB): what bounds
    /// its memory with large packets, where --max-in-flight bounds it with small ones. A single
    /// larger packet still goes out, alone.
    #[arg(long, env = "DISTRIBUTOR_MAX_IN_FLIGHT_BYTES", value_name = "BYTES",
          default_value_t = 32 << 20,
          value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub max_in_flight_bytes: usize,

    /// Packets asked from JetStream per pull request. What was asked arrives whether or not
    /// there is room in flight, and waits in the client: with 100-message packets (14 KB) the
    /// default 100 holds about 2 MB there (500 held 10 MB, and pinned the read buffers around
    /// them: 70 MiB peak RSS in a flood against 43 MiB).
    #[arg(long, env = "DISTRIBUTOR_FETCH_BATCH", value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000).map(|v| v as usize))]
    pub fetch_batch: usize,

    /// On shutdown, how long to wait for requests in flight before exiting (what is not acked
    /// by then is redelivered by JetStream).
    #[arg(long, env = "DISTRIBUTOR_SHUTDOWN_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_shutdown_timeout)]
    pub shutdown_timeout: Duration,
}

/// Coalescing: packets routed to one analyzer sent together as one NATS message (a batch,
/// docs/protocol.md "Batches"), only to analyzers that announce they read batches.
#[derive(Debug, Clone, Copy, Args)]
pub struct CoalesceArgs {
    /// Longest a routed packet waits for others to the same analyzer before its batch goes
    /// out. Batches form only under load: whenever the replica has no further packet waiting
    /// it sends what it gathered at once, so an idle pipeline adds no latency. 0 turns
    /// coalescing off (one NATS message per packet, as before batches existed).
    #[arg(long, env = "DISTRIBUTOR_LINGER", value_name = "DURATION",
          default_value = DEFAULT_LINGER, value_parser = parse_linger)]
    pub linger: Duration,

    /// Largest batch payload in bytes (the packets' payloads together; one larger packet still
    /// goes, alone). Default 256 KiB.
    #[arg(long, env = "DISTRIBUTOR_BATCH_MAX_BYTES", value_name = "BYTES",
          default_value_t = DEFAULT_BATCH_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1..).map(|v| v as usize))]
    pub batch_max_bytes: usize,

    /// Most log messages in one batch (a packet is never split: one with more goes alone).
    #[arg(long, env = "DISTRIBUTOR_BATCH_MAX_MESSAGES", value_name = "N",
          default_value_t = DEFAULT_BATCH_MAX_MESSAGES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_max_messages: u64,
}

/// Default `--linger`.
pub const DEFAULT_LINGER: &str = "1ms";
/// Default `--batch-max-bytes`.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 256 << 10;
/// Default `--batch-max-messages`.
pub const DEFAULT_BATCH_MAX_MESSAGES: u64 = 1000;

fn parse_linger(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::ZERO, Duration::from_secs(1))
}

impl RunArgs {
    /// The replica id given, or `<hostname>-<pid>` made key-safe.
    pub fn replica_id(&self) -> String {
        self.replica_id.clone().unwrap_or_else(default_replica_id)
    }
}

/// `<hostname>-<pid>` as a KV key token.
pub fn default_replica_id() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "distributor".to_string());
    logdist::protocol::stats::key_token(&format!("{host}-{}", std::process::id()))
}

/// Flags of `distributor stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub names: Names,

    /// Keep printing the table every --interval until Ctrl-C.
    #[arg(long, env = "DISTRIBUTOR_STATS_WATCH")]
    pub watch: bool,

    /// Print JSON (one object per refresh) instead of a table.
    #[arg(long, env = "DISTRIBUTOR_STATS_JSON")]
    pub json: bool,

    /// Refresh interval of --watch (100ms to 1h).
    #[arg(long, env = "DISTRIBUTOR_STATS_REFRESH", value_name = "DURATION",
          default_value = "1s", value_parser = parse_refresh)]
    pub interval: Duration,
}

/// Flags of `distributor weights`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Every distributor replica polls the bucket and applies a change within a second, as a new routing epoch. The same works with the nats CLI: `nats kv put logdist_weights 3 0.05`, `nats kv del logdist_weights 3`."
)]
pub struct WeightsArgs {
    #[command(subcommand)]
    pub action: WeightsAction,
}

/// What `distributor weights` does.
#[derive(Debug, Clone, Subcommand)]
pub enum WeightsAction {
    /// Every analyzer online and every override: announced, override and effective weight.
    List {
        /// Print JSON (one array of rows) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: WeightsTarget,
    },
    /// Override analyzer ID's weight in every replica; 0 drains it (online, routed nothing new).
    Set {
        /// The analyzer id (1-64 of A-Z a-z 0-9 - _).
        #[arg(value_parser = parse_analyzer_id)]
        id: String,
        /// The weight routing uses from now on: a number from 0 to 1000000.
        #[arg(value_parser = parse_override_weight, allow_negative_numbers = true)]
        weight: f64,
        #[command(flatten)]
        target: WeightsTarget,
    },
    /// Remove analyzer ID's override: it is routed by the weight it announces again.
    Clear {
        /// The analyzer id.
        #[arg(value_parser = parse_analyzer_id)]
        id: String,
        #[command(flatten)]
        target: WeightsTarget,
    },
}

/// Where `distributor weights` finds the buckets.
#[derive(Debug, Clone, Args)]
pub struct WeightsTarget {
    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub names: Names,
}

fn parse_analyzer_id(raw: &str) -> Result<String, String> {
    logdist::protocol::control::validate_name("analyzer id", raw)
        .map(|()| raw.to_string())
        .map_err(|e| e.to_string())
}

fn parse_override_weight(raw: &str) -> Result<f64, String> {
    crate::weight_overrides::parse_weight("ID", raw).map_err(|_| {
        format!(
            "{raw:?} is not a weight: give a number from 0 to {} (0 drains the analyzer)",
            logdist::protocol::control::MAX_WEIGHT
        )
    })
}

fn parse_replica_id(raw: &str) -> Result<String, String> {
    logdist::protocol::control::validate_name("replica id", raw)
        .map(|()| raw.to_string())
        .map_err(|e| e.to_string())
}

fn parse_max_weight(raw: &str) -> Result<f64, String> {
    let weight: f64 = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a number (e.g. 10)"))?;
    logdist::protocol::control::validate_weight(weight)
        .map(|()| weight)
        .map_err(|e| e.to_string())
}

fn parse_duration_in(raw: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration like 500ms or 2s: {e}"))?;
    if d < min || d > max {
        return Err(format!(
            "{} is out of range {}..={}",
            humantime::format_duration(d),
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

fn parse_stats_interval(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::from_millis(10), Duration::from_secs(1))
}

fn parse_slack(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=10.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "slack must be a number from 0 to 10 (e.g. 0.01 for 1 %), got {raw:?}"
        )),
    }
}

fn parse_js_name(raw: &str) -> Result<String, String> {
    // JetStream stream and consumer names become subject tokens.
    logdist::protocol::control::validate_name("name", raw)
        .map(|()| raw.to_string())
        .map_err(|e| e.to_string())
}

fn parse_max_age(raw: &str) -> Result<Duration, String> {
    parse_duration_in(
        raw,
        Duration::from_secs(1),
        Duration::from_secs(10 * 365 * 86400),
    )
}

fn parse_ack_wait(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::from_millis(500), Duration::from_secs(3600))
}

fn parse_request_timeout(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::from_millis(10), Duration::from_secs(600))
}

fn parse_retry_delay(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::from_millis(1), Duration::from_secs(600))
}

fn parse_reconnect_grace(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::ZERO, Duration::from_secs(600))
}

fn parse_shutdown_timeout(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::ZERO, Duration::from_secs(600))
}

fn parse_refresh(raw: &str) -> Result<Duration, String> {
    parse_duration_in(raw, Duration::from_millis(100), Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn ingest_read_buffer_defaults_and_refuses_what_the_client_cannot_take() {
        let run = |argv: &[&str]| {
            let argv = std::iter::once("distributor").chain(argv.iter().copied());
            match Cli::try_parse_from(argv).map(Cli::into_command) {
                Ok(Command::Run(args)) => Ok(args.ingest_read_buffer),
                Ok(_) => panic!("run expected"),
                Err(e) => Err(e.kind()),
            }
        };
        assert_eq!(run(&[]), Ok(DEFAULT_INGEST_READ_BUFFER));
        assert_eq!(run(&["--ingest-read-buffer", "4096"]), Ok(4096));
        for bad in ["100", "65536", "lots"] {
            assert_eq!(
                run(&["--ingest-read-buffer", bad]),
                Err(clap::error::ErrorKind::ValueValidation),
                "{bad}"
            );
        }
    }

    #[test]
    fn affinity_flags_parse_and_refuse_bad_values() {
        let cli = Cli::try_parse_from([
            "distributor",
            "--affinity",
            "header:Trace-Id",
            "--affinity-slack",
            "0.05",
        ])
        .unwrap();
        let Command::Run(args) = cli.into_command() else {
            panic!("run expected");
        };
        assert_eq!(args.affinity.to_string(), "header:Trace-Id");
        assert_eq!(args.affinity_slack, 0.05);
        let bad: [&[&str]; 3] = [
            &["--affinity", "host"],
            &["--affinity-slack=-1"],
            &["--affinity-slack", "nan"],
        ];
        for args in bad {
            let argv = std::iter::once("distributor").chain(args.iter().copied());
            let e = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_means_run_with_top_level_flags() {
        let cli = Cli::try_parse_from([
            "distributor",
            "--replica-id",
            "r1",
            "--hold-max-packets",
            "5",
        ])
        .unwrap();
        match cli.into_command() {
            Command::Run(args) => {
                assert_eq!(args.replica_id(), "r1");
                assert_eq!(args.hold_max_packets, 5);
                assert_eq!(args.stats_interval, Duration::from_secs(1));
                assert_eq!(args.heartbeat_timeout_factor, 3);
                assert_eq!(args.max_weight, logdist::protocol::control::MAX_WEIGHT);
                assert!(!args.legacy_control_subject);
                assert_eq!(args.deadletter_report_max_bytes, 1 << 20);
                assert_eq!(args.delivery, Delivery::AtMostOnce);
                assert_eq!(args.affinity, AffinityKey::None);
                assert_eq!(args.affinity_slack, 0.01);
                let alo = &args.at_least_once;
                assert_eq!(
                    (alo.stream.as_str(), alo.consumer.as_str()),
                    ("LOGS", "distributors")
                );
                assert_eq!(alo.stream_replicas, 1);
                assert_eq!(alo.max_attempts, 5);
                assert_eq!(alo.retry_delay, Duration::from_millis(100));
                assert_eq!(alo.retry_max_delay, Duration::from_secs(2));
                assert_eq!(alo.reconnect_grace, Duration::from_secs(5));
                assert!(alo.request_timeout < alo.ack_wait);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stats_subcommand_flags() {
        let cli = Cli::try_parse_from(["distributor", "stats", "--watch", "--interval", "250ms"])
            .unwrap();
        match cli.into_command() {
            Command::Stats(args) => {
                assert!(args.watch && !args.json);
                assert_eq!(args.interval, Duration::from_millis(250));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["distributor", "--replica-id", "a.b"][..],
            &["distributor", "--stats-interval", "5s"],
            &["distributor", "--heartbeat-timeout-factor", "0"],
            &["distributor", "stats", "--interval", "1ms"],
            &["distributor", "--delivery", "exactly-once"],
            &["distributor", "--stream", "a.b"],
            &["distributor", "--max-attempts", "0"],
            &["distributor", "--stream-replicas", "7"],
            &["distributor", "--retry-delay", "0s"],
            &["distributor", "--retry-max-delay", "soon"],
            &["distributor", "--reconnect-grace", "-1s"],
            &["distributor", "--max-weight", "0"],
            &["distributor", "--max-weight", "2e6"],
            &["distributor", "--max-weight", "lots"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn at_least_once_flags() {
        let cli = Cli::try_parse_from([
            "distributor",
            "--delivery",
            "at-least-once",
            "--stream",
            "L2",
            "--ack-wait",
            "2s",
            "--request-timeout",
            "700ms",
            "--retry-delay",
            "50ms",
            "--reconnect-grace",
            "0s",
        ])
        .unwrap();
        match cli.into_command() {
            Command::Run(args) => {
                assert_eq!(args.delivery, Delivery::AtLeastOnce);
                assert_eq!(args.delivery.as_str(), "at-least-once");
                assert_eq!(args.at_least_once.stream, "L2");
                assert_eq!(args.at_least_once.ack_wait, Duration::from_secs(2));
                assert_eq!(
                    args.at_least_once.request_timeout,
                    Duration::from_millis(700)
                );
                assert_eq!(args.at_least_once.retry_delay, Duration::from_millis(50));
                assert_eq!(args.at_least_once.reconnect_grace, Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn weights_subcommands() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(Cli::into_command);
        match parse(&["distributor", "weights", "set", "3", "0.05"]).unwrap() {
            Command::Weights(WeightsArgs {
                action: WeightsAction::Set { id, weight, .. },
            }) => assert_eq!((id.as_str(), weight), ("3", 0.05)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&[
                "distributor",
                "weights",
                "clear",
                "3",
                "--nats-url",
                "nats://h:1"
            ])
            .unwrap(),
            Command::Weights(WeightsArgs {
                action: WeightsAction::Clear { .. }
            })
        ));
        for bad in [
            &["distributor", "weights", "set", "3", "-1"][..],
            &["distributor", "weights", "set", "3", "lots"],
            &["distributor", "weights", "set", "a.b", "1"],
            &["distributor", "weights", "set", "3"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
        let err = parse(&["distributor", "weights", "set", "3", "lots"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not a weight: give a number from 0 to 1000000"),
            "{err}"
        );
    }

    #[test]
    fn default_replica_id_is_key_safe() {
        let id = default_replica_id();
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(id.ends_with(&std::process::id().to_string()));
    }
}

/// The ingest-format flags of `distributor run` (the HTTP gateway's `/messages?format=` reads
/// through the same mapping).
#[derive(Debug, Clone, Default, Args)]
pub struct IngestFormatArgs {
    /// Read payloads on subjects matching PATTERN (`*` one token, a final `>` the rest) as
    /// FORMAT: `logdist` (the wire contract, the default for every subject), `fluent-bit`
    /// (Fluent Bit's NATS output), `vector` (Vector's NATS sink, JSON codec) or `fields` (any
    /// JSON, read through --field). Repeat the flag (or separate with commas in the env
    /// variable); the first matching pattern wins. Patterns outside the ingest subjects are
    /// subscribed as well. See docs/agents.md.
    #[arg(
        long = "ingest-format",
        env = "DISTRIBUTOR_INGEST_FORMAT",
        value_name = "PATTERN=FORMAT",
        value_delimiter = ','
    )]
    pub ingest_format: Vec<FormatRule>,

    /// For the `fields` format: read the log field FIELD (timestamp, severity, source or
    /// message) from the record's field PATH (a key, or a dotted path into nested objects), e.g.
    /// `--field message=log --field source=kubernetes.pod_name`. A log field without --field is
    /// read from the record field of its own name.
    #[arg(
        long = "field",
        env = "DISTRIBUTOR_FIELD",
        value_name = "FIELD=PATH",
        value_delimiter = ','
    )]
    pub field: Vec<FieldAssignment>,

    /// Severity of mapped records that carry none (every format but `logdist`). Without it,
    /// `fluent-bit` and `vector` records default to INFO and `fields` records without their
    /// severity field are dead-lettered.
    #[arg(long, env = "DISTRIBUTOR_DEFAULT_SEVERITY", value_name = "SEVERITY", value_parser = parse_severity)]
    pub default_severity: Option<Severity>,

    /// Source of mapped records that carry none (every format but `logdist`). Without it such
    /// records are dead-lettered (`missing_field`).
    #[arg(long, env = "DISTRIBUTOR_DEFAULT_SOURCE", value_name = "SOURCE")]
    pub default_source: Option<String>,
}

impl IngestFormatArgs {
    /// The mapping these flags describe, and the subjects to subscribe to besides the ingest
    /// subjects of `names`; an error says which flag is wrong and why.
    pub fn mapping_and_subjects(&self, names: &Names) -> Result<(Mapping, Vec<String>), String> {
        let mapping = self.mapping()?;
        let extra = mapping.extra_subscriptions(&names.ingest_subject, &names.ingest_wildcard())?;
        Ok((mapping, extra))
    }

    /// The mapping these flags describe.
    pub fn mapping(&self) -> Result<Mapping, String> {
        if let Some(source) = &self.default_source {
            if source.trim().is_empty() {
                return Err("--default-source must not be empty".into());
            }
        }
        Ok(Mapping::new(
            self.ingest_format.clone(),
            &self.field,
            self.default_severity,
            self.default_source.clone(),
        ))
    }
}
