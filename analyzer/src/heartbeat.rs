//! Membership on this analyzer's control subject (`<control>.<id>`): the announcement and
//! periodic heartbeats that keep this instance in the distributors' routing, and the withdrawal
//! that takes it out. The subject is the analyzer's identity: distributors refuse a control
//! message whose id is not the subject's, and the NATS server can allow each analyzer's user
//! only its own subject (docs/security.md).
//!
//! Heartbeats are skipped while the client is disconnected (they would only queue up and arrive
//! stale); the next tick after a reconnect announces the instance again, so a distributor that
//! dropped it during the outage re-learns it within one interval.
//!
//! An HTTP analyzer heartbeats only while its endpoint is healthy: when it turns unhealthy the
//! task sends the withdrawal (distributors re-balance at once instead of waiting for the
//! heartbeat time-out), and when it is healthy again the next heartbeat goes out at once.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::Client;
use logdist::protocol::control::{ControlMessage, Heartbeat, Withdraw};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Why a control message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ControlPublishError {
    #[error("cannot publish on control subject {subject:?}: {detail}")]
    Publish { subject: String, detail: String },
    #[error("cannot flush control message on {subject:?}: {detail}")]
    Flush { subject: String, detail: String },
}

/// Publishes `heartbeat` on `subject` at once, then every `interval` until `stop` is cancelled,
/// while `healthy` holds (a closed channel counts as healthy for ever); withdraws when it turns
/// false. Returns after the last publication, so the caller can send the withdrawal strictly
/// after it.
pub async fn run_heartbeats(
    client: Client,
    subject: String,
    heartbeat: Heartbeat,
    interval: Duration,
    stop: CancellationToken,
    mut healthy: watch::Receiver<bool>,
) {
    let payload = bytes::Bytes::from(ControlMessage::Up(heartbeat.clone()).to_json());
    let mut ticks = tokio::time::interval(interval);
    // After a stall, keep the cadence instead of sending a burst of catch-up heartbeats.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut skipped = false;
    let mut follow_health = true;
    let mut is_healthy = *healthy.borrow_and_update();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            changed = healthy.changed(), if follow_health => {
                if changed.is_err() {
                    follow_health = false;
                    is_healthy = true;
                    continue;
                }
                let now = *healthy.borrow_and_update();
                if now == is_healthy {
                    continue;
                }
                is_healthy = now;
                if !now {
                    if let Err(e) = withdraw(&client, &subject, &heartbeat.id, &heartbeat.instance).await {
                        tracing::warn!(error = %e, "withdrawal of the unhealthy analyzer not sent");
                    }
                    continue;
                }
                // Healthy again: announce at once.
                ticks.reset_immediately();
                continue;
            }
            _ = ticks.tick() => {}
        }
        if !is_healthy {
            continue;
        }
        if client.connection_state() != State::Connected {
            if !skipped {
                tracing::warn!(
                    analyzer_id = %heartbeat.id,
                    instance = %heartbeat.instance,
                    "not connected to NATS: heartbeats paused until the client reconnects"
                );
            }
            skipped = true;
            continue;
        }
        if skipped {
            tracing::info!(
                analyzer_id = %heartbeat.id,
                instance = %heartbeat.instance,
                "reconnected: heartbeats resumed"
            );
            skipped = false;
        }
        if let Err(e) = client.publish(subject.clone(), payload.clone()).await {
            tracing::warn!(error = %e, subject = %subject, "heartbeat not sent");
        }
    }
}

/// Sends the withdrawal of `id`/`instance` on `subject` and waits until the server has it.
pub async fn withdraw(
    client: &Client,
    subject: &str,
    id: &str,
    instance: &str,
) -> Result<(), ControlPublishError> {
    let message = ControlMessage::Down(Withdraw {
        id: id.to_string(),
        instance: instance.to_string(),
    });
    client
        .publish(subject.to_string(), message.to_json().into())
        .await
        .map_err(|e| ControlPublishError::Publish {
            subject: subject.to_string(),
            detail: e.to_string(),
        })?;
    client
        .flush()
        .await
        .map_err(|e| ControlPublishError::Flush {
            subject: subject.to_string(),
            detail: e.to_string(),
        })
}
