//! Live weight overrides (bucket `logdist_weights`) against a real nats-server and two
//! distributor replicas: an override reaches both within a second as a new epoch and the shares
//! follow it, clearing it restores the announced weight, weight 0 drains an analyzer with nothing
//! lost, and a bad value is refused (by `distributor weights set`, and by the replicas when it is
//! written to the bucket directly).

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::Client;
use common::{start_distributor, SimAnalyzer, INGEST};
use logdist::protocol::stats::DistributorStats;
use logdist_testing::{
    distributor_stats as read_stats, packet, wait_until, NatsServer, Process, WAIT,
};

const REPLICAS: [&str; 2] = ["w1", "w2"];

/// Three simulated analyzers (weights 0.5, 0.3, 0.2) behind two replicas, both routing to all
/// three.
async fn pipeline(server: &NatsServer) -> (Client, Vec<SimAnalyzer>, Vec<Process>, kv::Store) {
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut analyzers = Vec::new();
    for (id, weight) in [("1", 0.5), ("2", 0.3), ("3", 0.2)] {
        analyzers.push(SimAnalyzer::start(&client, id, &format!("i{id}"), weight).await);
    }
    // The simulated analyzers heartbeat every 100 ms; a generous timeout keeps a loaded machine
    // from dropping one (a new epoch would restart the shares these tests measure).
    let mut replicas = Vec::new();
    for replica in REPLICAS {
        replicas
            .push(start_distributor(server, replica, &["--heartbeat-timeout-factor", "50"]).await);
    }
    let stats = jetstream::new(client.clone())
        .get_key_value("logdist_stats")
        .await
        .unwrap();
    wait_all(&stats, "both replicas route to three analyzers", |s| {
        s.analyzers.values().filter(|r| r.online).count() == 3
    })
    .await;
    (client, analyzers, replicas, stats)
}

/// Waits until every replica's stats satisfy `check`.
async fn wait_all(stats: &kv::Store, what: &str, check: impl Fn(&DistributorStats) -> bool) {
    let check = &check;
    wait_until(what, WAIT, || async move {
        for replica in REPLICAS {
            match read_stats(stats, replica).await {
                Some(s) if check(&s) => {}
                _ => return false,
            }
        }
        true
    })
    .await;
}

async fn all_stats(stats: &kv::Store) -> Vec<DistributorStats> {
    let mut out = Vec::new();
    for replica in REPLICAS {
        out.push(read_stats(stats, replica).await.unwrap());
    }
    out
}

/// Runs `distributor weights <args>` against `server`; its exit code, stdout and stderr.
async fn weights_command(server: &NatsServer, args: &[&str]) -> (i32, String, String) {
    let url = server.url();
    let mut all = vec!["weights"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--nats-url", &url]);
    let mut process = Process::spawn("distributor", &all, &[]);
    let status = process.wait(WAIT).await;
    (
        status.code().unwrap_or(-1),
        process.stdout(),
        process.stderr(),
    )
}

/// Publishes `n` single-message packets to the ingest subject and flushes.
async fn send(client: &Client, n: usize) {
    let payload = bytes::Bytes::from(packet(1));
    for _ in 0..n {
        client.publish(INGEST, payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
}

/// Messages the analyzers received altogether.
fn received(analyzers: &[SimAnalyzer]) -> u64 {
    analyzers.iter().map(SimAnalyzer::messages).sum()
}

#[tokio::test]
async fn an_override_reaches_both_replicas_within_a_second_and_the_shares_follow_it() {
    let server = NatsServer::start();
    let (client, analyzers, _replicas, stats) = pipeline(&server).await;
    let epochs: Vec<u64> = all_stats(&stats).await.iter().map(|s| s.epoch).collect();

    // `distributor weights set` writes the override; time from its exit to both replicas' stats.
    let (code, stdout, stderr) = weights_command(&server, &["set", "3", "0.05"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let set_at = Instant::now();
    wait_all(&stats, "both replicas use the override", |s| {
        s.analyzers["3"].weight == 0.05
    })
    .await;
    let took = set_at.elapsed();
    assert!(took < Duration::from_secs(1), "the override took {took:?}");
    let after = all_stats(&stats).await;
    for (s, before) in after.iter().zip(&epochs) {
        assert!(s.epoch > *before, "no new epoch in {}", s.replica);
        let three = &s.analyzers["3"];
        assert_eq!(three.announced_weight, 0.2);
        assert!((three.target_share - 0.05 / 0.85).abs() < 1e-12);
    }

    // Shares by message count over the new epoch, both replicas together.
    let n = 20_000;
    send(&client, n).await;
    wait_until("every message received", WAIT, || async {
        received(&analyzers) >= n as u64
    })
    .await;
    wait_until("the stats count every message", WAIT, || async {
        let all = all_stats(&stats).await;
        all.iter()
            .flat_map(|s| s.analyzers.values())
            .map(|r| r.epoch_messages)
            .sum::<u64>()
            == n as u64
    })
    .await;
    let all = all_stats(&stats).await;
    for (id, weight) in [("1", 0.5), ("2", 0.3), ("3", 0.05)] {
        let epoch: u64 = all.iter().map(|s| s.analyzers[id].epoch_messages).sum();
        let share = epoch as f64 / n as f64;
        let target = weight / 0.85;
        assert!(
            (share - target).abs() < 0.001,
            "analyzer {id}: share {share:.5} over the epoch, target {target:.5}"
        );
    }
    assert_eq!(
        received(&analyzers),
        n as u64,
        "messages lost or duplicated"
    );

    // `weights list` shows the announced, override and effective weights.
    let (code, list, stderr) = weights_command(&server, &["list"]).await;
    assert_eq!(code, 0, "{stderr}");
    let row = list
        .lines()
        .find(|l| l.starts_with("3 "))
        .expect("row of 3");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["3", "yes", "0.2", "0.05", "0.05"], "{list}");

    // Clearing it: back to the announced weight in both replicas.
    let (code, _, stderr) = weights_command(&server, &["clear", "3"]).await;
    assert_eq!(code, 0, "{stderr}");
    wait_all(&stats, "both replicas back to the announced weight", |s| {
        s.analyzers["3"].weight == 0.2 && (s.analyzers["3"].target_share - 0.2).abs() < 1e-12
    })
    .await;
}

#[tokio::test]
async fn weight_zero_drains_with_nothing_lost_and_bad_values_are_refused() {
    let server = NatsServer::start();
    let (client, analyzers, _replicas, stats) = pipeline(&server).await;
    let weights = jetstream::new(client.clone())
        .get_key_value("logdist_weights")
        .await
        .expect("the replicas create the overrides bucket");

    // Drain analyzer 2 while packets flow.
    let sender = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, 10_000).await })
    };
    weights.put("2", "0".into()).await.unwrap();
    wait_all(&stats, "both replicas drained analyzer 2", |s| {
        let two = &s.analyzers["2"];
        two.online && two.weight == 0.0 && two.target_share == 0.0
    })
    .await;
    sender.await.unwrap();
    wait_until("every message received", WAIT, || async {
        received(&analyzers) >= 10_000
    })
    .await;
    // After the drain 2 gets nothing new: what it has is what the replicas routed to it before.
    let drained_at = analyzers[1].messages();
    send(&client, 5_000).await;
    wait_until("every message received", WAIT, || async {
        received(&analyzers) >= 15_000
    })
    .await;
    assert_eq!(
        analyzers[1].messages(),
        drained_at,
        "a drained analyzer got packets"
    );
    assert_eq!(received(&analyzers), 15_000, "messages lost or duplicated");
    let all = all_stats(&stats).await;
    for s in &all {
        assert_eq!(s.analyzers["2"].epoch_messages, 0, "{}", s.replica);
        assert_eq!(s.analyzers["2"].announced_weight, 0.3);
    }
    let routed_to_two: u64 = all.iter().map(|s| s.analyzers["2"].messages).sum();
    assert_eq!(routed_to_two, drained_at);

    // A bad value written to the bucket: refused and counted by both replicas, weights kept.
    weights.put("2", "heavy".into()).await.unwrap();
    wait_all(&stats, "both replicas refused the bad value", |s| {
        s.refused_weight_overrides == 1
    })
    .await;
    for s in all_stats(&stats).await {
        assert_eq!(s.analyzers["2"].weight, 0.0, "{}", s.replica);
    }
    // The command refuses one before writing it: a usage error naming the value.
    let (code, _, stderr) = weights_command(&server, &["set", "2", "-3"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("\"-3\" is not a weight"), "{stderr}");
    let (_, list, _) = weights_command(&server, &["list"]).await;
    assert!(list.contains("refused \"heavy\""), "{list}");

    // Deleting the key returns 2 to its announced weight; it is routed again.
    weights.delete("2").await.unwrap();
    wait_all(&stats, "analyzer 2 routed again", |s| {
        s.analyzers["2"].weight == 0.3
    })
    .await;
    send(&client, 1_000).await;
    wait_until("analyzer 2 receives again", WAIT, || async {
        analyzers[1].messages() > drained_at
    })
    .await;
}
