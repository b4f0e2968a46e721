//! Diagnostics set-up shared by the binaries: `tracing` to stderr, filtered by `RUST_LOG`
//! (default `info`, with the NATS client's own chatter at `warn`), so stdout stays for what the
//! user asked to see.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once at the top of `main`.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
