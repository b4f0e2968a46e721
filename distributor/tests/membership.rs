//! Membership against a real nats-server: joins, withdrawals, silent deaths, weight changes, the
//! KV mirror, start-up from the bucket, and rejected control messages.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::{FutureExt, StreamExt};
use logdist::protocol::stats::MemberRecord;
use logdist_testing::NatsServer;

/// Publishes `count` packets of `size` messages and flushes.
async fn send(client: &async_nats::Client, count: usize, size: usize) {
    let payload = Bytes::from(packet(size));
    for _ in 0..count {
        client.publish(INGEST, payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
}

/// Replica `r1` routing to analyzers `a` and `b` (instance `i1`, weight 1 each), both online.
struct AAndB {
    client: async_nats::Client,
    distributor: logdist_testing::Process,
    members: async_nats::jetstream::kv::Store,
    stats: async_nats::jetstream::kv::Store,
    a: SimAnalyzer,
    b: SimAnalyzer,
}

async fn replica_with_a_and_b(server: &NatsServer) -> AAndB {
    let client = async_nats::connect(server.url()).await.unwrap();
    let distributor = start_distributor(server, "r1", &[]).await;
    let (members, stats) = buckets(&client).await;
    let a = SimAnalyzer::start(&client, "a", "i1", 1.0).await;
    let b = SimAnalyzer::start(&client, "b", "i1", 1.0).await;
    wait_member(&members, "a", true).await;
    wait_member(&members, "b", true).await;
    AAndB {
        client,
        distributor,
        members,
        stats,
        a,
        b,
    }
}

/// The confirmation of a withdrawal comes after every packet routed to the instance: once it is
/// read, those packets are all in the instance's subscription, even while the replica is busy.
#[tokio::test]
async fn a_withdrawal_is_confirmed_after_every_packet_routed_before_it() {
    let server = NatsServer::start();
    let AAndB {
        client,
        mut distributor,
        stats,
        mut a,
        b,
        ..
    } = replica_with_a_and_b(&server).await;
    // What the withdrawing instance sees, on a connection of its own.
    let watcher = async_nats::connect(server.url()).await.unwrap();
    let mut to_a = watcher
        .subscribe(logdist::Names::default().analyzer_subject("a"))
        .await
        .unwrap();
    let mut confirmations = watcher
        .subscribe(logdist::Names::default().withdrawn_subject("a"))
        .await
        .unwrap();
    watcher.flush().await.unwrap();

    // The withdrawal goes out while thousands of packets are still queued for the replica.
    let payload = Bytes::from(packet(5));
    for _ in 0..4000 {
        client.publish(INGEST, payload.clone()).await.unwrap();
    }
    a.withdraw().await;
    let confirmation = tokio::time::timeout(WAIT, confirmations.next())
        .await
        .expect("a confirmation within the wait")
        .expect("subscription open");
    let confirmed: logdist::protocol::control::WithdrawalConfirmed =
        serde_json::from_slice(&confirmation.payload).unwrap();
    assert_eq!(
        (
            confirmed.id.as_str(),
            confirmed.instance.as_str(),
            confirmed.distributor.as_str()
        ),
        ("a", "i1", "r1")
    );
    // Everything routed to `a` is already delivered to this connection: take what is there
    // without waiting (`unconstrained`: tokio's task budget would otherwise say "pending" after
    // 128 messages).
    let mut before = 0u64;
    while let Some(Some(_)) = tokio::task::unconstrained(to_a.next()).now_or_never() {
        before += 1;
    }
    let done = wait_distributor_stats(&stats, "r1", "all 4000 packets routed", |s| {
        s.routed_packets == 4000
    })
    .await;
    assert!(before > 0, "some packets went to `a` before it withdrew");
    assert_eq!(
        done.analyzers["a"].packets, before,
        "every packet routed to `a` arrived before the confirmation"
    );
    b.wait_packets(4000 - before).await;
    assert_eq!(b.packets(), 4000 - before);
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn withdraw_newcomer_and_silent_death_reshape_the_shares() {
    let server = NatsServer::start();
    let AAndB {
        client,
        mut distributor,
        members,
        stats,
        mut a,
        b,
    } = replica_with_a_and_b(&server).await;
    let record = member_record(&members, "a").await.unwrap();
    assert_eq!(
        (record.weight, record.instances.clone()),
        (1.0, vec!["i1".to_string()])
    );
    assert_eq!(record.interval_ms, HEARTBEAT.as_millis() as u64);

    send(&client, 100, 10).await;
    wait_total(&[&a, &b], "first 1000 messages", 1000).await;
    assert_eq!((a.messages(), b.messages()), (500, 500));

    // Withdraw: no packet published after it reaches `a` (the distributor handles control
    // messages before ingest messages that arrived after them), and KV drops the key.
    a.withdraw().await;
    send(&client, 100, 10).await;
    wait_total(&[&a, &b], "second 1000 messages", 2000).await;
    assert_eq!(
        a.messages(),
        500,
        "traffic to a withdrawn analyzer stops at once"
    );
    assert_eq!(b.messages(), 1500);
    wait_member(&members, "a", false).await;

    // A newcomer with weight 3 gets 3/4 from the moment it joins, nothing "owed".
    let c = SimAnalyzer::start(&client, "c", "i1", 3.0).await;
    wait_member(&members, "c", true).await;
    send(&client, 400, 10).await;
    wait_total(&[&a, &b, &c], "third 4000 messages", 6000).await;
    assert_eq!(c.messages(), 3000);
    assert_eq!(b.messages(), 2500);

    // `c` dies silently: dropped within 3 × 100 ms (plus scheduling slack), b gets everything.
    let mut c = c;
    c.go_silent();
    let silent_at = Instant::now();
    wait_member(&members, "c", false).await;
    let dropped_after = silent_at.elapsed();
    assert!(
        dropped_after < Duration::from_millis(300) + Duration::from_millis(700),
        "dropped after {dropped_after:?}"
    );
    send(&client, 100, 10).await;
    wait_total(&[&a, &b, &c], "fourth 1000 messages", 7000).await;
    assert_eq!(
        (a.messages(), b.messages(), c.messages()),
        (500, 3500, 3000)
    );

    let s = wait_distributor_stats(&stats, "r1", "stats after the changes", |s| {
        s.routed_messages == 7000
    })
    .await;
    assert!(!s.analyzers["a"].online && !s.analyzers["c"].online);
    assert_eq!(s.analyzers["c"].messages, 3000);
    assert_eq!(s.analyzers["b"].epoch_messages, 1000);
    assert_eq!(s.analyzers["b"].target_share, 1.0);
    assert!(
        s.epoch >= 5,
        "join a, join b, a left, c joined, c left: epoch {}",
        s.epoch
    );
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn weight_change_and_conflicting_instances_use_the_newest() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &[]).await;
    let (members, _) = buckets(&client).await;
    let _old = SimAnalyzer::start(&client, "x", "old", 1.0).await;
    wait_member(&members, "x", true).await;
    // A second instance of x announces 4.0: being the newest, its weight is in force.
    let mut new = SimAnalyzer::start(&client, "x", "new", 4.0).await;
    let members_ref = &members;
    logdist_testing::wait_until("x at weight 4 with two instances", WAIT, || async move {
        member_record(members_ref, "x")
            .await
            .is_some_and(|r| r.weight == 4.0 && r.instances.len() == 2)
    })
    .await;
    // The newest withdraws: back to the older instance's weight, x stays online.
    new.withdraw().await;
    logdist_testing::wait_until("x back at weight 1", WAIT, || async move {
        member_record(members_ref, "x")
            .await
            .is_some_and(|r| r.weight == 1.0 && r.instances == vec!["old".to_string()])
    })
    .await;
    assert!(
        distributor.stderr().contains("different weights"),
        "a warning is logged"
    );
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn a_starting_replica_routes_to_the_bucket_members_then_confirms_them() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    // A membership record left by an earlier replica; the analyzer listens but has not
    // heartbeated to this replica yet.
    let js = async_nats::jetstream::new(client.clone());
    let members = logdist::open_or_create_bucket(
        &js,
        logdist::protocol::names::DEFAULT_MEMBERSHIP_BUCKET,
        "test",
    )
    .await
    .unwrap();
    let record = MemberRecord {
        id: "k".into(),
        weight: 1.0,
        instances: vec!["i1".into()],
        interval_ms: 200,
        since_ms: 1,
        updated_at_ms: 1,
    };
    members
        .put("k", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    let mut k = SimAnalyzer::subscribe(&client, "k", "i1", 1.0).await;
    let mut distributor = start_distributor(&server, "r1", &[]).await;
    send(&client, 1, 5).await;
    k.wait_packets(1).await;

    // Confirmed by heartbeats, it stays past the provisional deadline (3 × 200 ms).
    k.resume_heartbeats();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(member_record(&members, "k").await.is_some());
    // Silent again: dropped, and the key deleted.
    k.go_silent();
    wait_member(&members, "k", false).await;
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn an_unconfirmed_bucket_member_expires() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let members = logdist::open_or_create_bucket(
        &js,
        logdist::protocol::names::DEFAULT_MEMBERSHIP_BUCKET,
        "test",
    )
    .await
    .unwrap();
    let record = MemberRecord {
        id: "ghost".into(),
        weight: 1.0,
        instances: vec!["i1".into()],
        interval_ms: 100,
        since_ms: 1,
        updated_at_ms: 1,
    };
    members
        .put("ghost", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    let mut distributor = start_distributor(&server, "r1", &[]).await;
    wait_member(&members, "ghost", false).await;
    assert!(distributor.terminate(WAIT).await.success());
}

#[tokio::test]
async fn bad_control_messages_are_counted_and_ignored() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut distributor = start_distributor(&server, "r1", &[]).await;
    let (members, stats) = buckets(&client).await;
    for bad in [
        r#"{"id":"z","weight":0,"instance":"i","state":"up","interval_ms":100}"#,
        r#"{"id":"z","weight":-2,"instance":"i","state":"up","interval_ms":100}"#,
        r#"{"id":"z","weight":1e300,"instance":"i","state":"up","interval_ms":100}"#,
        r#"{"id":"z.y","weight":1,"instance":"i","state":"up","interval_ms":100}"#,
        r#"{"id":"z","weight":1,"instance":"i","state":"up","interval_ms":0}"#,
        "not json",
    ] {
        client
            .publish(control_subject("z"), bad.into())
            .await
            .unwrap();
    }
    // On analyzer z's subject, a message about analyzer a (who is not online).
    let about_a = r#"{"id":"a","weight":1,"instance":"i","state":"up","interval_ms":100}"#;
    client
        .publish(control_subject("z"), about_a.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let s =
        wait_distributor_stats(&stats, "r1", "7 bad heartbeats", |s| s.bad_heartbeats == 7).await;
    assert!(s.analyzers.is_empty());
    assert!(member_record(&members, "z").await.is_none());
    assert!(member_record(&members, "a").await.is_none());
    assert!(distributor.stderr().contains("rejected control message"));
    assert!(distributor.stderr().contains("\"id_mismatch\""));
    // Still running and routing.
    let a = SimAnalyzer::start(&client, "a", "i", 1.0).await;
    wait_member(&members, "a", true).await;
    send(&client, 1, 1).await;
    a.wait_packets(1).await;
    assert!(distributor.terminate(WAIT).await.success());
}

/// The old shared control subject is read only with `--legacy-control-subject`, for analyzers
/// that predate per-id subjects; without it a heartbeat there changes nothing.
#[tokio::test]
async fn the_old_control_subject_is_read_only_behind_the_migration_flag() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let old = r#"{"id":"old","weight":1,"instance":"i","state":"up","interval_ms":100}"#;
    let mut plain = start_distributor(&server, "r1", &[]).await;
    let mut legacy = start_distributor(&server, "r2", &["--legacy-control-subject"]).await;
    let (members, stats) = buckets(&client).await;
    client.publish(CONTROL, old.into()).await.unwrap();
    client.flush().await.unwrap();
    wait_member(&members, "old", true).await;
    wait_distributor_stats(&stats, "r2", "r2 routes to the old analyzer", |s| {
        s.analyzers.contains_key("old")
    })
    .await;
    // r1 writes stats every 100 ms: two rounds after r2 saw it, r1 still has nothing.
    for _ in 0..3 {
        let before = distributor_stats(&stats, "r1").await.unwrap().updated_at_ms;
        wait_distributor_stats(&stats, "r1", "a newer r1 record", |s| {
            s.updated_at_ms > before
        })
        .await;
    }
    let s = distributor_stats(&stats, "r1").await.unwrap();
    assert!(s.analyzers.is_empty(), "{:?}", s.analyzers);
    assert_eq!(s.bad_heartbeats, 0);
    assert!(plain.terminate(WAIT).await.success());
    assert!(legacy.terminate(WAIT).await.success());
    assert!(legacy.stderr().contains("--legacy-control-subject"));
}
