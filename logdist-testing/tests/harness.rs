//! Self-tests of the test harness and of the shared connection code, against real nats-server
//! processes: a server starts and is reachable, keeps its JetStream store across a restart on the
//! same port, clients reconnect by themselves, and a 3-node cluster forms with JetStream.

use std::time::Duration;

use futures::StreamExt;
use logdist::{connect, open_or_create_bucket, NatsArgs};
use logdist_testing::{NatsCluster, NatsServer};
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn server_starts_and_carries_messages() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("harness.ping").await.unwrap();
    client.flush().await.unwrap();
    client
        .publish("harness.ping", "hello".into())
        .await
        .unwrap();
    let msg = tokio::time::timeout(STEP, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&msg.payload[..], b"hello");
}

#[tokio::test]
async fn restart_keeps_port_and_store_and_clients_reconnect() {
    let mut server = NatsServer::start();
    let port = server.port();
    let shutdown = CancellationToken::new();
    let conn = connect(&NatsArgs::url(server.url()), "harness-test", &shutdown)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(conn.client.clone());
    let kv = open_or_create_bucket(&js, "harness", "harness self-test")
        .await
        .unwrap();
    kv.put("k", "before restart".into()).await.unwrap();

    server.restart();
    assert_eq!(server.port(), port, "restart must reuse the port");

    // The same client reconnects by itself and finds the value in the kept store.
    let value = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(Some(v)) = kv.get("k").await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("KV readable again after restart");
    assert_eq!(&value[..], b"before restart");
    assert!(conn.events.disconnects() >= 1, "the disconnect was counted");
    assert!(conn.events.reconnects() >= 1, "the reconnect was counted");
}

#[tokio::test]
async fn connect_gives_up_cleanly_on_shutdown_when_no_server() {
    let port = logdist_testing::free_port();
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let result = connect(
        &NatsArgs::url(format!("nats://127.0.0.1:{port}")),
        "nobody-home",
        &shutdown,
    )
    .await;
    let err = result.err().expect("no server: connect must not succeed");
    assert!(err.to_string().contains("shutdown requested"), "{err}");
}

#[tokio::test]
async fn three_node_cluster_forms_with_jetstream() {
    let cluster = NatsCluster::start(3);
    cluster.wait_jetstream_ready(0).await;
    let client = async_nats::connect(cluster.url(1)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = tokio::time::timeout(
        Duration::from_secs(30),
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "HARNESS".into(),
            subjects: vec!["harness.>".into()],
            num_replicas: 3,
            ..Default::default()
        }),
    )
    .await
    .expect("stream created in time")
    .expect("replicated stream");
    assert_eq!(stream.cached_info().config.num_replicas, 3);
    // A message published on node 2 is stored by the replicated stream.
    let client2 = async_nats::connect(cluster.url(2)).await.unwrap();
    let ack = async_nats::jetstream::new(client2)
        .publish("harness.x", "v".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "HARNESS");
}
