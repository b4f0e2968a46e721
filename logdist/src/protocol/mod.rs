//! The wire contract of logdist: everything a process outside this repository can see on NATS.
//! **Change it together with `docs/protocol.md`**, which specifies the same things for people;
//! a change here that the document does not describe (or the reverse) is a bug.
//!
//! - [`packet`]: log packets on the ingest subjects and how they are validated;
//! - [`headers`]: the NATS headers agents and distributors set;
//! - [`batch`]: several packets for one analyzer in one NATS message, and how to read them;
//! - [`deadletter`]: the reason codes and headers of a dead letter;
//! - [`control`]: heartbeats, withdrawals and withdrawal confirmations;
//! - [`stats`]: the values of the membership and stats KV buckets;
//! - [`names`]: the subjects and buckets, with their defaults.
//!
//! How a process connects, opens buckets or shuts down is not contract and lives outside this
//! module (`connect`, `buckets`, `shutdown`, … in the crate root).

pub mod batch;
pub mod control;
pub mod deadletter;
pub mod headers;
pub mod names;
pub mod packet;
mod packet_scan;
pub mod stats;
mod structural;
