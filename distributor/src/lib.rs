//! The logdist distributor: takes log packets from the ingest subjects, validates them, and
//! routes each to one analyzer so that every analyzer receives a share of log messages
//! proportional to its weight among the analyzers online now.
//!
//! Every module is private; what other crates use is re-exported below. The map (see also
//! `ARCHITECTURE.md`):
//!
//! Pure logic, unit-tested without NATS:
//! - `selector`: [`WeightedSelector`], the deterministic message-weighted choice and its bound;
//! - `affinity`: [`AffinityRule`], key affinity by weighted rendezvous hashing with bounded loads,
//!   and [`KeyExtractor`], a packet's key as `--affinity` says;
//! - `membership`: [`Membership`], analyzers online from heartbeats, withdrawals and timeouts;
//! - `router`: [`Router`], the routing table, epochs and per-analyzer counters;
//! - `hold_queue`: [`HoldQueue`], the bounded FIFO used while no analyzer is online;
//! - `outgoing`: a validated packet and the headers it is forwarded with;
//! - `redelivery`: at-least-once's retry delays, and whose fault a failed delivery is;
//! - `log_throttle`: `LogThrottle`, a few log lines per kind of bad input;
//! - `weight_overrides`: the operators' weight overrides of the `logdist_weights` bucket;
//! - `report`: the `distributor stats` table;
//! - `auth`: `distributor auth`, the NATS users of analyzer ids rendered from a template
//!   ([`run_auth`]).
//!
//! The core both delivery modes share, `core`: validation and dead letters, control messages
//! and membership events, expiry, the stats snapshot, and the `biased` order of the event loop.
//!
//! The two delivery modes, siblings over the core that never import each other:
//! - `at_most_once`: core-NATS queue subscriptions, publish once, hold while no analyzer is
//!   online;
//! - `at_least_once`: a JetStream consumer, requests to analyzers, ack after their reply;
//!   before it pulls, `unreadable` takes out of the stream the messages whose headers the NATS
//!   client cannot read.
//!
//! The async shell: `service` (the wiring of `distributor run` and the choice of mode, [`run`]),
//! `stats_publisher` and `membership_mirror` (KV writers), `config` (the command line, [`Cli`]),
//! `bridges` (the old service's analyzers registered over HTTP, each bridged by an in-process
//! HTTP analyzer), `weights_command` (`distributor weights`, [`run_weights`]).

mod affinity;
mod at_least_once;
mod at_most_once;
mod auth;
mod bridges;
mod coalescer;
mod config;
mod core;
mod hold_queue;
mod log_throttle;
mod membership;
mod membership_mirror;
mod outgoing;
mod redelivery;
mod report;
mod round_robin;
mod router;
mod selector;
mod service;
mod stats_publisher;
mod unreadable;
mod weight_overrides;
mod weights_command;

pub use affinity::{
    AffinityKey, AffinityRule, Choice, KeyCensus, KeyExtractor, KeyHash, ParseAffinityKeyError,
    DEFAULT_SLACK, MAX_COUNTED_KEYS,
};
pub use auth::{run as run_auth, AuthArgs, AuthError};
pub use config::{
    Cli, CoalesceArgs, Command, RunArgs, StatsArgs, WeightsAction, WeightsArgs,
    DEFAULT_INGEST_BUFFER,
};
pub use core::RunError;
pub use hold_queue::HoldQueue;
pub use membership::{Membership, MembershipEvent};
pub use report::run as run_stats;
pub use router::Router;
pub use selector::WeightedSelector;
pub use service::run;
pub use stats_publisher::StatsPublisher;
pub use weights_command::{run as run_weights, WeightsError};
