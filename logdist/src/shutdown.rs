//! Shutdown on SIGINT/SIGTERM: one [`CancellationToken`] that every long-lived task watches, so
//! each finishes its current unit of work and returns, and `main` waits for them.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGINT (Ctrl-C) or SIGTERM. A second signal while
/// shutting down exits the process at once with status 130, for an operator who cannot wait.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let first = wait_for_signal().await;
        tracing::info!(
            signal = first,
            "shutting down (send the signal again to exit at once)"
        );
        trigger.cancel();
        let second = wait_for_signal().await;
        tracing::warn!(signal = second, "second signal: exiting now");
        std::process::exit(130);
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
