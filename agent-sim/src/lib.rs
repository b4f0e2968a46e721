//! agent-sim: a load generator that simulates many log agents publishing to logdist, shows live
//! progress, and with `--verify` checks from the analyzers' own counters that nothing was lost
//! and that each analyzer received its share.
//!
//! Every module is private; the entry points are [`run`], [`Config`] and [`Report`]. Modules: `config` (flags), `generator` (realistic log content), `sender` (the agents),
//! `progress` (live display), `verify` (the pipeline check), `report` (what is printed).

mod config;
mod generator;
mod progress;
mod report;
mod sender;
mod verify;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use report::Report;
use sender::SendCounters;

/// Runs agent-sim as configured. Returns the report (also for a failed verification: the caller
/// prints it and chooses the exit code).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Report> {
    let mut clients = Vec::new();
    for n in 0..config.connections {
        let conn = logdist::connect(&config.nats, &format!("agent-sim-{n}"), &shutdown)
            .await
            .with_context(|| format!("connecting to NATS at {}", config.nats.nats_url))?;
        clients.push(conn.client);
    }

    let buckets = if config.verify {
        let js = async_nats::jetstream::new(clients[0].clone());
        let stats = logdist::open_or_create_bucket(
            &js,
            &config.names.stats_bucket,
            "logdist live counters",
        )
        .await?;
        let membership = logdist::open_or_create_bucket(
            &js,
            &config.names.membership_bucket,
            "logdist analyzers online",
        )
        .await?;
        let baseline = verify::read_counts(&stats)
            .await
            .context("reading the stats baseline")?;
        Some((stats, membership, baseline))
    } else {
        None
    };

    let counters = Arc::new(SendCounters::default());
    let plan = match config.count {
        Some(n) => progress::Plan::Messages(n),
        None => progress::Plan::Seconds(config.duration.as_secs()),
    };
    let progress = tokio::spawn(progress::show(counters.clone(), plan));
    let sent = sender::send_all(&config, &clients, counters.clone(), shutdown.clone()).await;
    counters
        .done
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = progress.await;
    let sent = sent?;

    let verification = match buckets {
        Some((stats, membership, baseline)) => {
            eprintln!(
                "agent-sim: sent {} messages; waiting for the pipeline to go quiet (at most {})",
                progress::thousands(sent.messages),
                humantime::format_duration(config.verify_timeout)
            );
            // With --publish jetstream, the stream that stored the packets is a second witness.
            let witness = match (config.publish, &sent.stream) {
                (config::PublishMode::Jetstream, Some(stream)) => Some(verify::StreamWitness::new(
                    clients[0].clone(),
                    stream.clone(),
                    config.subject.as_deref(),
                    &config.names.ingest_subject,
                    &config.agent_prefix,
                )),
                _ => None,
            };
            let (last, stream) = verify::wait_quiet(
                &stats,
                &baseline,
                &sent,
                config.quiet_period,
                config.verify_timeout,
                witness.as_ref(),
            )
            .await?;
            let online = verify::read_online(&membership).await?;
            Some(verify::compare(
                &baseline,
                &last,
                &online,
                &sent,
                config.max_loss,
                config.max_deviation,
                stream.as_ref(),
            ))
        }
        None => None,
    };
    Ok(Report { sent, verification })
}
