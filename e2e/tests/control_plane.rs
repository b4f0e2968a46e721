//! Control-plane hardening seen from outside: a running distributor ignores absurd heartbeats
//! (published with analyzer 1's user on its own control subject, the realistic source of a
//! forged one: a compromised or buggy analyzer). They never reach the membership bucket, and the distributor counts each in
//! `bad_heartbeats` of its stats record `distributor.<replica>`.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{Role, SecureServer};
use logdist_testing::{kv_keys, wait_until};

async fn bad_heartbeats(js: &jetstream::Context) -> Option<u64> {
    let stats = js.get_key_value("logdist_stats").await.ok()?;
    let value = stats.get("distributor.d1").await.ok()??;
    let record: serde_json::Value = serde_json::from_slice(&value).ok()?;
    record["bad_heartbeats"].as_u64()
}

#[tokio::test]
async fn a_distributor_ignores_absurd_heartbeats_and_counts_them() {
    let server = SecureServer::start();
    let url = server.url();
    let mut distributor = server.spawn(
        "distributor",
        &[
            "run",
            "--nats-url",
            &url,
            "--replica-id",
            "d1",
            "--stats-interval",
            "100ms",
        ],
        Role::Distributor,
    );
    let (viewer, _) = server.connect(Role::Viewer).await;
    let js = jetstream::new(viewer);
    wait_until(
        "the distributor's first stats",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            async move { bad_heartbeats(&js).await == Some(0) }
        },
    )
    .await;

    let (analyzer, errors) = server.connect(Role::Analyzer("1")).await;
    let long_id = "x".repeat(200);
    let absurd = [
        // Would starve every other analyzer.
        r#"{"id":"1","weight":1e300,"instance":"i","state":"up","interval_ms":1000}"#.to_string(),
        // Would never time out, or time out at once.
        r#"{"id":"1","weight":1,"instance":"i","state":"up","interval_ms":0}"#.to_string(),
        // Would break the subject `analyzer.<id>` and the KV key.
        r#"{"id":"a.b","weight":1,"instance":"i","state":"up","interval_ms":1000}"#.to_string(),
        r#"{"id":"a*","weight":1,"instance":"i","state":"up","interval_ms":1000}"#.to_string(),
        format!(
            r#"{{"id":"{long_id}","weight":1,"instance":"i","state":"up","interval_ms":1000}}"#
        ),
    ];
    let expected = absurd.len() as u64;
    for payload in &absurd {
        analyzer
            .publish("logdist.control.1", payload.clone().into())
            .await
            .unwrap();
    }
    // Then one sound heartbeat: once it is in the bucket, the distributor has handled the rest.
    analyzer
        .publish(
            "logdist.control.1",
            r#"{"id":"1","weight":1,"instance":"i","state":"up","interval_ms":60000}"#.into(),
        )
        .await
        .unwrap();
    analyzer.flush().await.unwrap();
    wait_until("the sound analyzer online", Duration::from_secs(30), || {
        let js = js.clone();
        async move { kv_keys(&js, "analyzers").await.contains(&"1".into()) }
    })
    .await;
    wait_until(
        "bad_heartbeats counting the five absurd ones",
        Duration::from_secs(15),
        || {
            let js = js.clone();
            async move { bad_heartbeats(&js).await == Some(expected) }
        },
    )
    .await;
    assert_eq!(kv_keys(&js, "analyzers").await, vec!["1"]);
    assert!(errors.all().is_empty(), "{:?}", errors.all());

    // It logged why each was rejected, and shuts down cleanly.
    let status = distributor.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{}", distributor.stderr());
    let log = distributor.stderr();
    for (code, times) in [("bad_weight", 1), ("bad_interval", 1), ("bad_name", 3)] {
        let logged = log.matches(&format!("\"{code}\"")).count();
        assert_eq!(logged, times, "log lines with code {code}:\n{log}");
    }
}
