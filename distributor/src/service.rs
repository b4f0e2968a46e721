//! The running distributor (`distributor run`), wiring only: connects, opens the buckets,
//! subscribes to the control subject, seeds the [`Distributor`] core from the membership bucket,
//! starts the HTTP gateway (with the bridges of the old service's registered analyzers,
//! [`crate::bridges`]) and the KV writers, runs the delivery mode chosen by `--delivery`
//! ([`crate::at_most_once`] or [`crate::at_least_once`]), and at shutdown finishes the gateway,
//! flushes and writes the final stats. KV writes (stats, membership mirror) go to tasks of their
//! own so a KV round trip never stalls routing.
//!
//! See [`crate::core`] for the event loop both modes share and `docs/delivery.md` for what each
//! mode can lose or duplicate.

use async_nats::jetstream;
use logdist::metrics::{DistributorCollector, LatestSnapshot, NatsCollector};
use logdist::protocol::stats::{distributor_key, DistributorStats};
use logdist::telemetry::{self, Condition, NatsCondition, Readiness, Telemetry};
use logdist::{open_or_create_bucket, ConnectError};
use tokio_util::sync::CancellationToken;

use crate::bridges::{self, BridgeSettings};
use crate::config::{Delivery, RunArgs};
use crate::core::{
    subscribe_control, ConnectionWatch, Distributor, ModeStats, RunError, WeightsPoller,
    FINAL_WRITE_TIMEOUT,
};
use crate::membership_mirror::{read_members, MembershipMirror, MEMBERSHIP_BUCKET_DESCRIPTION};
use crate::stats_publisher::StatsPublisher;
use crate::weights_command::WEIGHTS_BUCKET_DESCRIPTION;
use crate::{at_least_once, at_most_once};

/// Heartbeat interval of the bridges of registered analyzers.
const BRIDGE_HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What `/metrics` and `/readyz` report (on `--metrics`, and on the gateway's address with
/// `--http`), and the handles that feed them.
struct Observed {
    telemetry: Telemetry,
    latest: LatestSnapshot<DistributorStats>,
    nats: NatsCollector,
    connected: NatsCondition,
    membership_loaded: Condition,
    /// At-least-once only (unregistered otherwise).
    consumer_bound: Condition,
}

impl Observed {
    fn new(delivery: Delivery) -> Observed {
        let readiness = Readiness::default();
        let connected = readiness.nats();
        let membership_loaded = readiness.condition("membership loaded");
        let consumer_bound = match delivery {
            Delivery::AtLeastOnce => readiness.condition("JetStream consumer bound"),
            Delivery::AtMostOnce => Condition::default(),
        };
        let latest = LatestSnapshot::default();
        // The record carries both connections' events; only the state is read live.
        let nats = NatsCollector::new(false);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(DistributorCollector {
            latest: latest.clone(),
        }));
        registry.register_collector(Box::new(nats.clone()));
        Observed {
            telemetry: Telemetry::new(registry, readiness),
            latest,
            nats,
            connected,
            membership_loaded,
            consumer_bound,
        }
    }
}

/// Runs the distributor until `shutdown` is cancelled, then shuts down cleanly.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let (mapping, _) = args
        .formats
        .mapping_and_subjects(&args.names)
        .map_err(RunError::Config)?;
    let replica = args.replica_id();
    let names = &args.names;
    // Listening before the first connect, so /readyz says what it waits for meanwhile.
    let observed = Observed::new(args.delivery);
    if let Some(addr) = args.metrics {
        telemetry::serve(addr, &observed.telemetry, shutdown.child_token()).await?;
    }
    let connection =
        match logdist::connect(&args.nats, &format!("distributor {replica}"), &shutdown).await {
            Ok(c) => c,
            Err(ConnectError::Cancelled { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    observed.nats.connected(&connection);
    observed.connected.connected(&connection.client);
    let client = connection.client.clone();
    let connection_watch = ConnectionWatch::default();
    connection_watch.watch(&client, "main", &shutdown);
    let js = jetstream::new(client.clone());
    let members_kv =
        open_or_create_bucket(&js, &names.membership_bucket, MEMBERSHIP_BUCKET_DESCRIPTION).await?;
    let stats_kv = open_or_create_bucket(
        &js,
        &names.stats_bucket,
        "logdist: live counters of distributors and analyzers",
    )
    .await?;
    let weights_kv =
        open_or_create_bucket(&js, &names.weights_bucket, WEIGHTS_BUCKET_DESCRIPTION).await?;

    // Control first, so no heartbeat falls between reading the bucket and listening.
    let mut control = subscribe_control(&client, &args).await?;

    let mut distributor = Distributor::new(
        &args,
        mapping.clone(),
        &replica,
        client.clone(),
        connection.events,
    );
    distributor.set_membership_condition(observed.membership_loaded.clone());
    // The overrides first, so the first routing table has them; the poller follows the bucket
    // from what this read saw.
    let overrides = WeightsPoller::read_current(&weights_kv)
        .await
        .map_err(|detail| RunError::ReadWeights {
            bucket: names.weights_bucket.clone(),
            detail,
        })?;
    let poller = WeightsPoller::spawn(weights_kv, &overrides);
    distributor.seed_overrides(&overrides, poller);
    match read_members(&members_kv).await {
        Ok(records) => distributor.seed_members(&records),
        Err(e) => tracing::warn!(bucket = %names.membership_bucket, error = %e,
            "cannot read the membership bucket; waiting for heartbeats"),
    }

    // The HTTP gateway: at-most-once it hands its packets to this replica's router through a
    // bounded queue (no round trip through NATS to ourselves); at-least-once it publishes to the
    // stream, which is the guarantee. It stops taking requests at shutdown, before the ingest
    // side drains. With it come the old service's analyzer registrations, which every replica
    // bridges.
    let mut routing_shutdown = shutdown.clone();
    let mut local_queue = None;
    let http = match args.http {
        Some(listen) => {
            let registrations = open_or_create_bucket(
                &js,
                &args.registrations_bucket,
                "logdist: the old service's analyzers registered over HTTP (one key per id)",
            )
            .await?;
            let local_router = (args.delivery == Delivery::AtMostOnce).then(|| {
                let (queue, receiver) = tokio::sync::mpsc::channel(args.http_queue);
                local_queue = Some(receiver);
                logdist_http::LocalRouter {
                    queue,
                    max_wait: logdist_http::DEFAULT_LOCAL_MAX_WAIT,
                }
            });
            let gateway = logdist_http::start_with_registrations(
                logdist_http::GatewayConfig {
                    listen,
                    names: names.clone(),
                    max_body_bytes: args.http_max_body_bytes,
                    acknowledged: args.delivery == Delivery::AtLeastOnce,
                    mapping,
                    local_router,
                    deadletter_report_max_bytes: args.deadletter_report_max_bytes,
                    telemetry: Some(observed.telemetry.clone()),
                },
                client.clone(),
                shutdown.child_token(),
                Some(logdist_http::Registrations {
                    store: registrations.clone(),
                    bridge_host: args.bridge_host.clone(),
                }),
            )
            .await?;
            routing_shutdown = bridges::spawn(
                registrations,
                BridgeSettings {
                    nats: args.nats.clone(),
                    names: names.clone(),
                    instance: replica.clone(),
                    heartbeat_interval: BRIDGE_HEARTBEAT_INTERVAL,
                },
                &shutdown,
            );
            Some(gateway)
        }
        None => None,
    };
    // The bridges withdraw before this replica stops routing, so it confirms their withdrawals.
    let shutdown = routing_shutdown;

    let publisher = StatsPublisher::spawn(stats_kv, distributor_key(&replica))
        .with_metrics(observed.latest.clone());
    // Seeded analyzers are already in the bucket: mirror only what changes from now on.
    distributor.set_mirror(MembershipMirror::spawn(members_kv));
    let mode_stats = match args.delivery {
        Delivery::AtMostOnce => {
            at_most_once::run(
                &args,
                &mut distributor,
                &mut control,
                local_queue,
                &publisher,
                &connection_watch,
                &shutdown,
            )
            .await?
        }
        Delivery::AtLeastOnce => {
            tracing::info!(
                replica = %replica,
                stream = %args.at_least_once.stream,
                consumer = %args.at_least_once.consumer,
                delivery = args.delivery.as_str(),
                analyzers_online = distributor.analyzers_online(),
                "distributor running"
            );
            at_least_once::run(
                &args,
                &js,
                &mut distributor,
                &mut control,
                &publisher,
                &observed.consumer_bound,
                &shutdown,
            )
            .await;
            ModeStats::default()
        }
    };
    if let Some(http) = http {
        // Requests in progress finish (graceful shutdown) before the final flush.
        if tokio::time::timeout(FINAL_WRITE_TIMEOUT, http.task)
            .await
            .is_err()
        {
            tracing::warn!("HTTP gateway did not finish its requests in time");
        }
    }
    if tokio::time::timeout(FINAL_WRITE_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("flush to NATS did not finish in time");
    }
    if let Some(mirror) = distributor.take_mirror() {
        mirror.finish(FINAL_WRITE_TIMEOUT).await;
    }
    let last = distributor.snapshot(&mode_stats);
    tracing::info!(
        received_packets = last.received_packets,
        routed_messages = last.routed_messages,
        deadletter_packets = last.deadletter_packets,
        redelivered = last.redelivered,
        "writing final stats"
    );
    publisher.finish(last, FINAL_WRITE_TIMEOUT).await;
    if connection_watch.stopped() {
        return Err(RunError::ConnectionTaskStopped);
    }
    tracing::info!("distributor stopped");
    Ok(())
}
