//! Two distributor replicas sharing the ingest queue group on one real nats-server: nothing lost
//! or duplicated, shares still close to the targets, stats of both add up.

mod common;

use bytes::Bytes;
use common::*;
use logdist_testing::{NatsServer, Process};

#[tokio::test]
async fn two_replicas_lose_and_duplicate_nothing() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut r1 = start_distributor(&server, "r1", &[]).await;
    let mut r2 = start_distributor(&server, "r2", &[]).await;
    let (_, stats) = buckets(&client).await;
    let analyzers = [
        SimAnalyzer::start(&client, "1", "i", 0.5).await,
        SimAnalyzer::start(&client, "2", "i", 0.3).await,
        SimAnalyzer::start(&client, "3", "i", 0.2).await,
    ];
    for replica in ["r1", "r2"] {
        wait_distributor_stats(&stats, replica, "three analyzers online", |s| {
            s.analyzers.values().filter(|r| r.online).count() == 3
        })
        .await;
    }
    let refs: Vec<&SimAnalyzer> = analyzers.iter().collect();

    let packets: Vec<Bytes> = (0..=100).map(|n| Bytes::from(packet(n))).collect();
    let mut rng = Lcg::new(11);
    let (mut sent, mut seq) = (0u64, 0u64);
    for batch in 0..4 {
        for _ in 0..1000 {
            let n = rng.range(1, 100);
            sent += n;
            client
                .publish_with_headers(INGEST, seq_headers(seq), packets[n as usize].clone())
                .await
                .unwrap();
            seq += 1;
        }
        client.flush().await.unwrap();
        wait_total(&refs, &format!("batch {batch}"), sent).await;
    }
    assert_eq!(total(&refs, SimAnalyzer::messages), sent);
    let mut seqs: Vec<u64> = analyzers.iter().flat_map(|a| a.received().seqs).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..seq).collect::<Vec<_>>(),
        "every packet exactly once"
    );
    let shares = shares(&refs);
    for a in &analyzers {
        let actual = shares[&a.id];
        assert!(
            (actual - 100.0 * a.weight).abs() < 0.5,
            "analyzer {}: {actual:.3}% vs {}%",
            a.id,
            100.0 * a.weight
        );
    }

    // Each replica wrote its own key; together they account for everything.
    let stats_ref = &stats;
    logdist_testing::wait_until("both replicas' stats add up", WAIT, || async move {
        let r1 = distributor_stats(stats_ref, "r1")
            .await
            .map_or(0, |s| s.routed_messages);
        let r2 = distributor_stats(stats_ref, "r2")
            .await
            .map_or(0, |s| s.routed_messages);
        r1 + r2 == sent
    })
    .await;
    let s1 = distributor_stats(&stats, "r1").await.unwrap();
    let s2 = distributor_stats(&stats, "r2").await.unwrap();
    assert!(
        s1.received_packets > 0 && s2.received_packets > 0,
        "both replicas took traffic"
    );
    assert_eq!(s1.received_packets + s2.received_packets, seq);

    let url = server.url();
    let mut cli = Process::spawn("distributor", &["stats", "--json", "--nats-url", &url], &[]);
    assert!(cli.wait(WAIT).await.success(), "{}", cli.stderr());
    let report: serde_json::Value = serde_json::from_str(cli.stdout().trim()).unwrap();
    assert_eq!(report["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(report["totals"]["routed_messages"], sent);

    assert!(r1.terminate(WAIT).await.success());
    assert!(r2.terminate(WAIT).await.success());
}
