//! The logdist analyzer: receives its share of log packets on `<prefix>.<id>`, analyzes them, and
//! tells the rest of the pipeline about itself.
//!
//! Every module is private; the entry points are re-exported below ([`run`], [`AnalyzerConfig`],
//! [`Analysis`]). The modules:
//!
//! - `config`: the command line (`clap`), with every value checked while parsing;
//! - `analysis`: the per-packet analysis and its counters (pure, synchronous);
//! - `dedup`: the window of recent packet ids that drops redeliveries;
//! - `latency`: end-to-end latency percentiles from `Logdist-Sent-At`;
//! - `report`: the stats record for the `logdist_stats` bucket and the summary line;
//! - `printer`: `--print`, one line per log message;
//! - `work`: `--work-per-message`, the simulated analysis cost for load tests;
//! - `forward`: analyzers that are not our code: `--forward-http` (packets POSTed to an
//!   endpoint) and `--exec` (written to a child process) instead of analyzed here;
//! - `heartbeat`: announce, heartbeat and withdraw on the control subject;
//! - `withdrawal`: the distributor replicas to hear from before a withdrawn instance stops;
//! - `service`: the async shell that runs all of it and shuts down in protocol order.

mod analysis;
mod config;
mod dedup;
mod forward;
mod heartbeat;
mod latency;
mod printer;
mod report;
mod service;
mod withdrawal;
mod work;

pub use analysis::{Analysis, PacketMeta, PacketOutcome};
pub use config::AnalyzerConfig;
pub use forward::ForwardFormat;
pub use service::{run, ServiceError};
