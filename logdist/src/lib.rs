//! logdist: a weighted log distributor on NATS.
//!
//! This crate holds what the three binaries (`distributor`, `analyzer`, `agent-sim`) share: the
//! wire contract ([`wire`], [`headers`], [`control`], [`stats`]), the names of subjects and
//! buckets ([`names`]), NATS connection set-up ([`connect`], [`buckets`]), shutdown handling
//! ([`shutdown`]), logging ([`logging`]), and the Prometheus metrics ([`metrics`]) with the
//! `--metrics` listener that serves them beside the health probes ([`telemetry`]). With the `testing` feature it also provides the
//! real-nats-server test harness ([`testing`]).

pub mod buckets;
pub mod connect;
pub mod control;
pub mod headers;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod runtime;
pub mod shutdown;
pub mod snapshot;
pub mod stats;
pub mod telemetry;
pub mod wire;

#[cfg(feature = "testing")]
pub mod testing;

pub use connect::{connect, Connection, NatsArgs};
pub use names::Names;
pub use wire::{LogRecord, Packet, PacketError, PacketValidator, RecordError, Severity};
