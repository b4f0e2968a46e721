//! logdist: a weighted log distributor on NATS.
//!
//! This crate holds what the binaries (`distributor`, `analyzer`, `agent-sim`, the HTTP gateway)
//! share. Three kinds of things, kept apart:
//!
//! - the wire contract, [`protocol`]: packets, headers, dead letters, control messages, KV
//!   values and the names of subjects and buckets (change it together with `docs/protocol.md`);
//! - plumbing, re-exported here from private modules: NATS connection set-up ([`connect`],
//!   [`NatsArgs`]), opening the KV buckets ([`open_or_create_bucket`]), reading the stats bucket
//!   back ([`StatsSnapshot`]), shutdown on a signal ([`shutdown_on_signal`]), logging
//!   ([`init_logging`]) and the runtime ([`build_runtime`]); whether the NATS client can read a
//!   raw header block ([`check_header_block`]); the Prometheus metrics ([`metrics`])
//!   with the `--metrics` listener that serves them beside the health probes ([`telemetry`]);
//! - the ingest formats of common log shippers, mapped to the contract ([`ingest_format`]).
//!
//! The test harness is a crate of its own, `logdist-testing` (a dev-dependency).

mod buckets;
mod connect;
mod header_block;
pub mod ingest_format;
mod logging;
pub mod metrics;
pub mod protocol;
mod runtime;
mod shutdown;
mod snapshot;
pub mod telemetry;

pub use buckets::{open_or_create_bucket, BucketError};
pub use connect::{
    connect, connect_with_capacity, connection_task_stopped, server_addrs, ConnectError,
    Connection, ConnectionEvents, NatsArgs, DEFAULT_INBOX_PREFIX, DEFAULT_NATS_URL,
    DEFAULT_SUBSCRIPTION_CAPACITY,
};
pub use header_block::{check_header_block, readable_headers, UnreadableHeaders};
pub use logging::init_logging;
pub use protocol::names::Names;
pub use protocol::packet::{
    LogRecord, Packet, PacketError, PacketValidator, RecordError, Severity,
};
pub use runtime::build_runtime;
pub use shutdown::shutdown_on_signal;
pub use snapshot::{member_ids, SnapshotError, StatsSnapshot};
