//! `--delivery at-least-once` on a 3-node NATS cluster (stream replicas 3): two distributors and
//! three analyzers connected to different nodes, under steady load from agent-sim. Killing the
//! node that leads the stream mid-run loses no log message.
//!
//! Each process gets one node URL: `logdist::connect` does not accept a comma-separated list
//! yet (reported), so the processes use nodes 0 and 1, and node 2 is made the stream leader
//! (leader step-downs) and then killed.

mod pipeline;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use logdist::testing::{wait_until, NatsCluster};
use pipeline::*;

#[tokio::test]
#[ignore = "fails today: after the stream leader node is killed the pipeline loses messages and \
            dead-letters some as undeliverable (analyzers' KV checkpoints fail during fail-over); \
            see docs/delivery.md, open work"]
async fn killing_the_stream_leader_node_loses_nothing() {
    let mut cluster = NatsCluster::start(3);
    cluster.wait_jetstream_ready(0).await;
    let (n0, n1) = (cluster.url(0), cluster.url(1));

    // The buckets are created with 1 replica by whichever process comes first; here they are
    // made with 3 first, so losing a node cannot take the stats (the test's measure) with it.
    let js = jetstream(&cluster.url(0)).await;
    for bucket in ["analyzers", "logdist_stats"] {
        js.create_key_value(kv::Config {
            bucket: bucket.to_string(),
            history: 1,
            num_replicas: 3,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    }

    let replicas = ["--stream-replicas", "3"];
    let mut d1 = distributor(&n0, "d1", "at-least-once", &replicas);
    let _d2 = distributor(&n1, "d2", "at-least-once", &replicas);
    let _analyzers = three_analyzers(&[&n1, &n0]);
    wait_members(&js, 3).await;
    let js_ref = &js;
    wait_until("stream LOGS with 3 replicas", WAIT, || async move {
        match js_ref.get_stream("LOGS").await {
            Ok(mut s) => s.info().await.is_ok_and(|i| {
                i.config.num_replicas == 3 && i.cluster.as_ref().is_some_and(|c| c.leader.is_some())
            }),
            Err(_) => false,
        }
    })
    .await;
    // Move the stream's leadership to node 2, the one no process is connected to.
    let client = async_nats::connect(&n0).await.unwrap();
    wait_until("node 2 to lead stream LOGS", WAIT, || {
        let (js, client) = (js.clone(), client.clone());
        async move {
            let leader = match js.get_stream("LOGS").await {
                Ok(mut s) => s.info().await.ok().and_then(|i| i.cluster.clone()?.leader),
                Err(_) => None,
            };
            if leader.as_deref() == Some("n2") {
                return true;
            }
            let _ = client
                .request("$JS.API.STREAM.LEADER.STEPDOWN.LOGS", "".into())
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            false
        }
    })
    .await;
    let stats = stats_bucket(&js).await;

    let _load = LOAD.lock().await;
    // A new stream leader is elected within seconds; the verification waits past that.
    let mut sim = agent_sim_quiet(&n0, "12s");
    wait_analyzed(&stats, "1", 10_000).await;
    let node = 2;
    eprintln!("killing node {node}, the stream leader");
    cluster.kill(node);
    let (_, report) = report(&mut sim).await;
    let v = verification("cluster node killed", &report);
    assert_eq!(v["lost"], 0, "{v:#}");
    assert!(v["sent"].as_u64().unwrap() > 50_000, "{v:#}");
    assert_eq!(v["deadlettered"], 0, "{v:#}");

    let js = jetstream(&n0).await;
    let (captured, _) = wait_consumer_drained(&js).await;
    eprintln!("  stream captured {captured} packets, all acked");
    assert!(d1.terminate(Duration::from_secs(20)).await.success());
}
