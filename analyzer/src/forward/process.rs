//! Process analyzers (`--exec 'cmd'`): a child process (`sh -c cmd`) that reads one log object
//! per line (NDJSON) on its stdin.
//!
//! - **Backpressure**: lines are written as the child reads them; while the pipe is full the
//!   writer waits, packets wait in the subscription (at most `max_in_flight` are out), so a slow
//!   child slows its share instead of growing memory.
//! - **Restarts**: when the child exits (or is killed), it is started again after 100 ms,
//!   doubling to 10 s (back to 100 ms once a child ran for 10 s). While it is down the analyzer
//!   is withdrawn (the health channel is false), so distributors route elsewhere.
//! - **Acknowledgements** (`--exec-ack`): the child writes a line `ack` on its stdout for each
//!   input line it has finished with, in order; a packet is settled as delivered when all its
//!   lines are. Other stdout lines are copied to the analyzer's stdout. When the child dies, the
//!   packets not fully acknowledged settle as failed (at-least-once: not acknowledged, so the
//!   distributor re-routes them; at-most-once: dead-lettered). Without `--exec-ack` a packet is
//!   delivered once its lines are written to the pipe, and the child's stdout is passed through:
//!   what sits in the pipe (up to 64 KiB on Linux) and in the child's own buffers when it dies is
//!   lost, in either delivery mode.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Message;
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::forward::endpoint::Delivery;
use crate::forward::format::{request_bodies, ForwardFormat};
use crate::forward::Forwarded;

/// First pause before a restart; it doubles up to [`RESTART_MAX`].
pub const RESTART_MIN: Duration = Duration::from_millis(100);
pub const RESTART_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long resets the back-off.
pub const RAN_LONG_ENOUGH: Duration = Duration::from_secs(10);
/// The line a child writes to acknowledge one input line.
pub const ACK_LINE: &str = "ack";

/// How the child is run.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// Run with `sh -c`.
    pub command: String,
    /// Use the acknowledgement convention.
    pub ack: bool,
}

/// Counters for the stats record.
#[derive(Debug, Default)]
pub struct ProcessCounters {
    /// Lines written to the child.
    pub lines: AtomicU64,
    /// Children started after the first.
    pub restarts: AtomicU64,
    /// Packets settled as failed because the child died first.
    pub failed: AtomicU64,
}

/// The running supervisor, seen from the forwarder.
#[derive(Debug)]
pub struct ProcessSink {
    packets: mpsc::UnboundedSender<Message>,
    pub health: watch::Receiver<bool>,
    pub counters: Arc<ProcessCounters>,
    /// Ends the supervisor: close the child's stdin, wait for it, kill it if it lingers.
    close: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// A packet written (or being written) to the child and not fully acknowledged.
struct Unacked {
    message: Message,
    lines: usize,
}

impl ProcessSink {
    /// Starts the supervisor; settled packets go to `done`. `give_up` fails the packets still
    /// waiting to be written (shutdown).
    pub fn start(
        settings: ProcessSettings,
        done: mpsc::UnboundedSender<Forwarded>,
        give_up: CancellationToken,
    ) -> ProcessSink {
        let (packets, rx) = mpsc::unbounded_channel();
        let (health_tx, health) = watch::channel(false);
        let counters = Arc::new(ProcessCounters::default());
        let close = CancellationToken::new();
        let task = tokio::spawn(supervise(
            settings,
            rx,
            done,
            health_tx,
            counters.clone(),
            close.clone(),
            give_up,
        ));
        ProcessSink {
            packets,
            health,
            counters,
            close,
            task,
        }
    }

    pub fn send(&self, message: Message) {
        // The supervisor runs as long as the sink exists.
        let _ = self.packets.send(message);
    }

    /// Closes the child's stdin and waits for it to exit (killed after `limit`).
    pub async fn close(self, limit: Duration) {
        self.close.cancel();
        drop(self.packets);
        if tokio::time::timeout(limit + Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            tracing::warn!("the analyzer process did not stop in time");
        }
    }
}

fn failed(message: Message, why: &str) -> Forwarded {
    Forwarded {
        message,
        outcome: Ok(vec![(
            None,
            Delivery::Failed {
                attempts: 1,
                last_error: why.to_string(),
            },
        )]),
    }
}

fn delivered(message: Message) -> Forwarded {
    Forwarded {
        message,
        outcome: Ok(vec![(None, Delivery::Delivered)]),
    }
}

async fn supervise(
    settings: ProcessSettings,
    mut packets: mpsc::UnboundedReceiver<Message>,
    done: mpsc::UnboundedSender<Forwarded>,
    health: watch::Sender<bool>,
    counters: Arc<ProcessCounters>,
    close: CancellationToken,
    give_up: CancellationToken,
) {
    let mut pause = RESTART_MIN;
    let mut first = true;
    loop {
        let started = Instant::now();
        let spawned = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&settings.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        let exit = match spawned {
            Ok(child) => {
                if !first {
                    counters.restarts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(command = %settings.command, pid = child.id(), "analyzer process started");
                health.send_replace(true);
                run_child(
                    child,
                    &settings,
                    &mut packets,
                    &done,
                    &counters,
                    &close,
                    &give_up,
                )
                .await
            }
            Err(e) => ChildEnd::Exited(format!("cannot start `sh -c {:?}`: {e}", settings.command)),
        };
        health.send_replace(false);
        first = false;
        let reason = match exit {
            ChildEnd::Closed => return,
            ChildEnd::Exited(reason) => reason,
        };
        if started.elapsed() >= RAN_LONG_ENOUGH {
            pause = RESTART_MIN;
        }
        tracing::warn!(command = %settings.command, reason = %reason, restart_in = ?pause, "analyzer process down: withdrawn until it runs again");
        // While down: packets still arriving (routed before the withdrawal) fail at once when
        // shutdown gave up on them; otherwise they wait for the next child.
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = close.cancelled() => {
                while let Ok(message) = packets.try_recv() {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = done.send(failed(message, "the analyzer process was down at shutdown"));
                }
                return;
            }
        }
        pause = (pause * 2).min(RESTART_MAX);
    }
}

enum ChildEnd {
    /// Shutdown: stdin closed and the child gone.
    Closed,
    Exited(String),
}

async fn run_child(
    mut child: tokio::process::Child,
    settings: &ProcessSettings,
    packets: &mut mpsc::UnboundedReceiver<Message>,
    done: &mpsc::UnboundedSender<Forwarded>,
    counters: &ProcessCounters,
    close: &CancellationToken,
    give_up: &CancellationToken,
) -> ChildEnd {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let unacked: Arc<Mutex<VecDeque<Unacked>>> = Arc::default();
    let reader = tokio::spawn(read_stdout(
        stdout,
        settings.ack,
        unacked.clone(),
        done.clone(),
    ));
    let end = loop {
        let message = tokio::select! {
            message = packets.recv() => message,
            status = child.wait() => break ChildEnd::Exited(exit_text(status)),
            () = close.cancelled() => None,
        };
        let Some(message) = message else {
            // Shutdown: end of input; a well-behaved child finishes and exits.
            drop(stdin);
            let limit = Duration::from_secs(5);
            let status = match tokio::time::timeout(limit, child.wait()).await {
                Ok(status) => exit_text(status),
                Err(_) => {
                    let _ = child.kill().await;
                    format!("killed: still running {limit:?} after its stdin was closed")
                }
            };
            tracing::info!(status = %status, "analyzer process stopped");
            break ChildEnd::Closed;
        };
        let body = match request_bodies(ForwardFormat::Ndjson, &message.payload) {
            Ok(mut bodies) => bodies.remove(0).body,
            Err(e) => {
                // Not JSON (never from a distributor): the service counts it as invalid.
                let _ = done.send(Forwarded {
                    message,
                    outcome: Err(e),
                });
                continue;
            }
        };
        let lines = body.iter().filter(|&&b| b == b'\n').count();
        if settings.ack {
            lock(&unacked).push_back(Unacked {
                message: message.clone(),
                lines,
            });
        }
        let written = tokio::select! {
            written = write(&mut stdin, &body) => written,
            status = child.wait() => Err(exit_text(status)),
            () = give_up.cancelled() => Err("shutdown while the process was not reading".to_string()),
        };
        match written {
            Ok(()) => {
                counters.lines.fetch_add(lines as u64, Ordering::Relaxed);
                if !settings.ack {
                    let _ = done.send(delivered(message));
                }
            }
            Err(reason) => {
                if !settings.ack {
                    let _ = done.send(failed(message, &reason));
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
                break ChildEnd::Exited(reason);
            }
        }
    };
    // Every ack the child wrote before it ended is read before the rest count as failed.
    drop(child);
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    let left: Vec<Unacked> = lock(&unacked).drain(..).collect();
    if !left.is_empty() {
        tracing::warn!(
            packets = left.len(),
            "packets not acknowledged by the analyzer process before it ended"
        );
    }
    for Unacked { message, .. } in left {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        let _ = done.send(failed(
            message,
            "the analyzer process ended before acknowledging every line",
        ));
    }
    end
}

async fn write(stdin: &mut tokio::process::ChildStdin, body: &Bytes) -> Result<(), String> {
    stdin
        .write_all(body)
        .await
        .map_err(|e| format!("cannot write to the process: {e}"))?;
    stdin
        .flush()
        .await
        .map_err(|e| format!("cannot write to the process: {e}"))
}

/// Reads the child's stdout: `ack` lines settle packets in order (with `ack`), anything else
/// goes to our stdout.
async fn read_stdout(
    stdout: tokio::process::ChildStdout,
    ack: bool,
    unacked: Arc<Mutex<VecDeque<Unacked>>>,
    done: mpsc::UnboundedSender<Forwarded>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let mut warned = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if !(ack && line.trim_end() == ACK_LINE) {
            println!("{line}");
            continue;
        }
        let mut queue = lock(&unacked);
        let Some(front) = queue.front_mut() else {
            if !warned {
                tracing::warn!(
                    "the analyzer process acknowledged more lines than it was given; ignored"
                );
                warned = true;
            }
            continue;
        };
        front.lines = front.lines.saturating_sub(1);
        if front.lines == 0 {
            let Unacked { message, .. } = queue.pop_front().expect("front exists");
            drop(queue);
            let _ = done.send(delivered(message));
        }
    }
}

fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => format!("exited with {status}"),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
