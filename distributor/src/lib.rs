//! The logdist distributor: takes log packets from the ingest subjects, validates them, and
//! routes each to one analyzer so that every analyzer receives a share of log messages
//! proportional to its weight among the analyzers online now.
//!
//! Pure logic, unit-tested without NATS:
//! - [`selector`]: [`WeightedSelector`], the deterministic message-weighted choice and its bound;
//! - [`membership`]: [`Membership`], analyzers online from heartbeats, withdrawals and timeouts;
//! - [`router`]: [`Router`], the routing table, epochs and per-analyzer counters;
//! - [`hold_queue`]: [`HoldQueue`], the bounded FIFO used while no analyzer is online;
//! - [`outgoing`]: the headers of forwarded packets and dead letters;
//! - [`report`]: the `distributor stats` table.
//!
//! The async shell: [`service`] (the event loop of `distributor run`), [`stats_publisher`] and
//! [`membership_mirror`] (KV writers), [`config`] (the command line).

pub mod at_least_once;
pub mod config;
pub mod hold_queue;
pub mod membership;
pub mod membership_mirror;
pub mod outgoing;
pub mod report;
pub mod router;
pub mod selector;
pub mod service;
pub mod stats_publisher;

pub use config::{Cli, Command, RunArgs, StatsArgs};
pub use hold_queue::HoldQueue;
pub use membership::{Membership, MembershipEvent};
pub use router::Router;
pub use selector::WeightedSelector;
pub use stats_publisher::StatsPublisher;
