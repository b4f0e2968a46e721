//! Key affinity (`--affinity agent`) against a real nats-server: 1,000 agents with Zipf-like
//! volumes (the heaviest 6.5 % of the messages), weights 0.5 / 0.3 / 0.2. Each analyzer's share
//! of messages stays within 1 percentage point of its target while at least 90 % of the packets
//! reach their key's first choice, with one replica and with two; a fourth analyzer joining
//! takes about a quarter of the keys and the shares re-converge; when it leaves, only its keys
//! move (back where they were). At-least-once delivery keeps affinity too, under agent-sim's
//! skewed load (`--agent-skew`), with nothing lost.

mod common;
mod pipeline;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use distributor::{AffinityRule, KeyHash};
use logdist_testing::NatsServer;

const KEYS: usize = 1_000;
/// Affinity by agent; a generous heartbeat timeout (10 s) so that a loaded machine delaying a
/// heartbeat cannot change the membership in the middle of a phase (the checks compare each
/// phase with the rule for one membership).
const DISTRIBUTOR_ARGS: &[&str] = &["--affinity", "agent", "--heartbeat-timeout-factor", "100"];
/// Zipf exponent of the agents' volumes: the heaviest of 1,000 sends 6.5 % of the messages.
const ZIPF: f64 = 0.8;
/// Packets published between two waits for the analyzers to catch up (at-most-once drops what
/// a replica cannot buffer, so the test never runs far ahead of it).
const BATCH: usize = 1_000;
const MAX_PACKET: u64 = 10;
/// Packets an agent must send in a phase for the analyzer that got most of them to count as its
/// home (for the movement checks).
const MIN_PACKETS_FOR_HOME: u64 = 5;

fn agent(i: usize) -> String {
    format!("agent-{i}")
}

/// Keyed, skewed traffic: agent `i` is drawn with probability ∝ (i+1)^-ZIPF, packets of
/// 1..=MAX_PACKET messages, from a fixed seed.
struct Traffic {
    cumulative: Vec<f64>,
    packets: Vec<Bytes>,
    rng: Lcg,
    sent_messages: u64,
}

impl Traffic {
    fn new(seed: u64) -> Self {
        let volumes: Vec<f64> = (1..=KEYS).map(|r| (r as f64).powf(-ZIPF)).collect();
        let sum: f64 = volumes.iter().sum();
        assert!(volumes[0] / sum >= 0.05, "the heaviest key sends ≥ 5 %");
        let cumulative = volumes
            .iter()
            .scan(0.0, |acc, v| {
                *acc += v / sum;
                Some(*acc)
            })
            .collect();
        Traffic {
            cumulative,
            packets: (0..=MAX_PACKET as usize)
                .map(|n| Bytes::from(packet(n)))
                .collect(),
            rng: Lcg::new(seed),
            sent_messages: 0,
        }
    }

    /// Publishes `count` packets, waiting after every batch until the analyzers got them all.
    async fn send(
        &mut self,
        client: &async_nats::Client,
        analyzers: &[&SimAnalyzer],
        count: usize,
    ) {
        let mut left = count;
        while left > 0 {
            for _ in 0..left.min(BATCH) {
                let u = self.rng.range(0, (1 << 53) - 1) as f64 / (1u64 << 53) as f64;
                let key = self.cumulative.partition_point(|&c| c < u).min(KEYS - 1);
                let n = self.rng.range(1, MAX_PACKET);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(logdist::protocol::headers::AGENT, agent(key).as_str());
                client
                    .publish_with_headers(
                        format!("{INGEST}.{}", agent(key)),
                        headers,
                        self.packets[n as usize].clone(),
                    )
                    .await
                    .unwrap();
                self.sent_messages += n;
            }
            left -= left.min(BATCH);
            client.flush().await.unwrap();
            wait_total(analyzers, "a batch delivered", self.sent_messages).await;
        }
        assert_eq!(total(analyzers, SimAnalyzer::messages), self.sent_messages);
    }
}

/// What every analyzer had received at one moment: messages, and packets per agent.
#[derive(Clone, Default)]
struct Snapshot {
    messages: HashMap<String, u64>,
    packets: HashMap<String, HashMap<String, u64>>,
}

fn snapshot(analyzers: &[&SimAnalyzer]) -> Snapshot {
    let mut s = Snapshot::default();
    for a in analyzers {
        let r = a.received();
        s.messages.insert(a.id.clone(), r.messages);
        s.packets.insert(a.id.clone(), r.agents);
    }
    s
}

/// What a phase (between two snapshots) did.
struct Phase {
    /// Message share by analyzer id, in percent.
    shares: HashMap<String, f64>,
    /// Share of the phase's packets that reached their key's first choice (by the documented
    /// rule for the analyzers online), in percent.
    kept_pct: f64,
    /// Per agent with at least [`MIN_PACKETS_FOR_HOME`] packets in the phase, the analyzer that
    /// got most of them.
    home: HashMap<String, String>,
}

fn phase(before: &Snapshot, after: &Snapshot, online: &[(&str, f64)]) -> Phase {
    let messages: HashMap<&str, u64> = after
        .messages
        .iter()
        .map(|(id, m)| {
            (
                id.as_str(),
                m - before.messages.get(id).copied().unwrap_or(0),
            )
        })
        .collect();
    let all: u64 = messages.values().sum();
    let shares = messages
        .iter()
        .map(|(id, m)| (id.to_string(), 100.0 * *m as f64 / all as f64))
        .collect();
    let mut rule = AffinityRule::new(0.01);
    rule.set_analyzers(online.iter().copied());
    let mut per_agent: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    for (id, agents) in &after.packets {
        for (agent, &n) in agents {
            let earlier = before
                .packets
                .get(id)
                .and_then(|a| a.get(agent))
                .copied()
                .unwrap_or(0);
            if n > earlier {
                per_agent.entry(agent).or_default().push((id, n - earlier));
            }
        }
    }
    let (mut kept, mut packets) = (0u64, 0u64);
    let mut home = HashMap::new();
    for (agent, got) in &per_agent {
        let first = online[rule.first_choice(KeyHash::of(agent.as_bytes())).unwrap()].0;
        for (id, n) in got {
            packets += n;
            if *id == first {
                kept += n;
            }
        }
        // A key with a handful of packets has no meaningful home: one spilled packet would
        // decide it.
        if got.iter().map(|(_, n)| n).sum::<u64>() >= MIN_PACKETS_FOR_HOME {
            let (id, _) = got.iter().max_by_key(|(id, n)| (*n, *id)).unwrap();
            home.insert(agent.to_string(), id.to_string());
        }
    }
    Phase {
        shares,
        kept_pct: 100.0 * kept as f64 / packets as f64,
        home,
    }
}

fn assert_shares(what: &str, phase: &Phase, online: &[(&str, f64)]) {
    let sum: f64 = online.iter().map(|(_, w)| w).sum();
    for (id, w) in online {
        let target = 100.0 * w / sum;
        let actual = phase.shares.get(*id).copied().unwrap_or(0.0);
        assert!(
            (actual - target).abs() <= 1.0,
            "{what}: analyzer {id} got {actual:.2} % of the messages, target {target:.2} %"
        );
    }
}

/// Keys whose home analyzer differs between two phases, among the agents seen in both.
fn moved(a: &Phase, b: &Phase) -> (Vec<String>, usize) {
    let both: Vec<&String> = a.home.keys().filter(|k| b.home.contains_key(*k)).collect();
    let moved = both
        .iter()
        .filter(|k| a.home[**k] != b.home[**k])
        .map(|k| k.to_string())
        .collect();
    (moved, both.len())
}

async fn wait_online(stats: &async_nats::jetstream::kv::Store, replica: &str, ids: &[&str]) {
    wait_distributor_stats(stats, replica, &format!("online: {ids:?}"), |s| {
        let online: Vec<&str> = s
            .analyzers
            .iter()
            .filter(|(_, r)| r.online)
            .map(|(id, _)| id.as_str())
            .collect();
        online == ids
    })
    .await;
}

#[tokio::test]
async fn affinity_keeps_keys_and_shares_and_moves_only_what_it_must() {
    let _load = pipeline::LOAD.lock().await;
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let _r1 = start_distributor(&server, "r1", DISTRIBUTOR_ARGS).await;
    let (_, stats) = buckets(&client).await;
    let three = [("1", 0.5), ("2", 0.3), ("3", 0.2)];
    let mut analyzers = Vec::new();
    for (id, w) in three {
        analyzers.push(SimAnalyzer::start(&client, id, "i", w).await);
    }
    wait_online(&stats, "r1", &["1", "2", "3"]).await;
    let mut traffic = Traffic::new(7);

    // 20,000 packets over three analyzers.
    let refs: Vec<&SimAnalyzer> = analyzers.iter().collect();
    let start = snapshot(&refs);
    traffic.send(&client, &refs, 20_000).await;
    let after_three = snapshot(&refs);
    let first = phase(&start, &after_three, &three);
    assert_shares("three analyzers", &first, &three);
    assert!(
        first.kept_pct >= 90.0,
        "only {:.1} % of packets on their key's first choice",
        first.kept_pct
    );
    let s = wait_distributor_stats(&stats, "r1", "stats count every packet", |s| {
        s.analyzers.values().map(|r| r.keyed_packets).sum::<u64>() == 20_000
    })
    .await;
    assert_eq!(s.affinity, "agent");
    assert_eq!(s.affinity_slack, 0.01);
    let kept: u64 = s.analyzers.values().map(|r| r.kept_packets).sum();
    let keyed: u64 = s.analyzers.values().map(|r| r.keyed_packets).sum();
    assert_eq!(keyed, 20_000, "every packet had a key");
    assert_eq!(s.keyless_packets, 0);
    let stats_kept = 100.0 * kept as f64 / keyed as f64;
    assert!(
        (stats_kept - first.kept_pct).abs() < 1e-9,
        "the stats' affinity kept {stats_kept} is what the analyzers saw, {}",
        first.kept_pct
    );
    let held: u64 = s.analyzers.values().map(|r| r.keys_held).sum();
    let agents_seen = after_three
        .packets
        .values()
        .flat_map(|a| a.keys())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(held as usize, agents_seen, "keys held = agents seen");

    // A fourth analyzer of weight 1/3 (a quarter of the total) joins.
    analyzers.push(SimAnalyzer::start(&client, "4", "i", 1.0 / 3.0).await);
    wait_online(&stats, "r1", &["1", "2", "3", "4"]).await;
    let four = [("1", 0.5), ("2", 0.3), ("3", 0.2), ("4", 1.0 / 3.0)];
    let refs: Vec<&SimAnalyzer> = analyzers.iter().collect();
    let before = snapshot(&refs);
    traffic.send(&client, &refs, 5_000).await;
    let after_four = snapshot(&refs);
    let joined = phase(&before, &after_four, &four);
    assert_shares("after the join", &joined, &four);

    let (moved_keys, seen) = moved(&first, &joined);
    let to_four = moved_keys.iter().filter(|k| joined.home[*k] == "4").count();
    assert!(
        moved_keys.len() as f64 <= 1.5 * 0.25 * seen as f64,
        "{} of {seen} keys moved on the join",
        moved_keys.len()
    );
    assert!(
        (moved_keys.len() - to_four) as f64 <= 0.02 * seen as f64,
        "keys that moved went to the newcomer: {to_four} of {}",
        moved_keys.len()
    );

    // It leaves: only its keys move, back to where they were.
    analyzers[3].withdraw().await;
    wait_online(&stats, "r1", &["1", "2", "3"]).await;
    let refs: Vec<&SimAnalyzer> = analyzers.iter().collect();
    let before = snapshot(&refs);
    traffic.send(&client, &refs, 5_000).await;
    let left = phase(&before, &snapshot(&refs), &three);
    assert_shares("after the leave", &left, &three);
    assert!(left.kept_pct >= 90.0, "kept {:.1} %", left.kept_pct);
    let (moved_keys, seen) = moved(&joined, &left);
    let others = moved_keys.iter().filter(|k| joined.home[*k] != "4").count();
    assert!(
        others as f64 <= 0.02 * seen as f64,
        "{others} keys not on the leaver moved (of {seen})"
    );
    let (back, seen) = moved(&first, &left);
    assert!(
        back.len() as f64 <= 0.02 * seen as f64,
        "after the leave {} of {seen} keys are not where they were with three analyzers",
        back.len()
    );
    eprintln!(
        "affinity: kept {:.1} / {:.1} / {:.1} %; join moved {} keys of {seen}",
        first.kept_pct, joined.kept_pct, left.kept_pct, to_four
    );
}

#[tokio::test]
async fn two_replicas_agree_on_every_key() {
    let _load = pipeline::LOAD.lock().await;
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let _r1 = start_distributor(&server, "r1", DISTRIBUTOR_ARGS).await;
    let _r2 = start_distributor(&server, "r2", DISTRIBUTOR_ARGS).await;
    let (_, stats) = buckets(&client).await;
    let three = [("1", 0.5), ("2", 0.3), ("3", 0.2)];
    let mut analyzers = Vec::new();
    for (id, w) in three {
        analyzers.push(SimAnalyzer::start(&client, id, "i", w).await);
    }
    for replica in ["r1", "r2"] {
        wait_online(&stats, replica, &["1", "2", "3"]).await;
    }
    let refs: Vec<&SimAnalyzer> = analyzers.iter().collect();
    let start = snapshot(&refs);
    let mut traffic = Traffic::new(7);
    traffic.send(&client, &refs, 20_000).await;
    let p = phase(&start, &snapshot(&refs), &three);
    assert_shares("two replicas", &p, &three);
    assert!(p.kept_pct >= 90.0, "kept {:.1} %", p.kept_pct);
    let (s1, s2) = (
        distributor_stats(&stats, "r1").await.unwrap(),
        distributor_stats(&stats, "r2").await.unwrap(),
    );
    assert!(
        s1.routed_packets > 1_000 && s2.routed_packets > 1_000,
        "both replicas routed: {} and {}",
        s1.routed_packets,
        s2.routed_packets
    );
}

#[tokio::test]
async fn at_least_once_keeps_affinity_under_agent_sims_skewed_load() {
    let _load = pipeline::LOAD.lock().await;
    let server = NatsServer::start();
    let url = server.url();
    let mut args = DISTRIBUTOR_ARGS.to_vec();
    args.extend(["--max-attempts", "10"]);
    let _d = pipeline::distributor(&url, "d1", pipeline::Delivery::AtLeastOnce, &args);
    let _analyzers = pipeline::three_analyzers(&[&url]);
    let js = pipeline::jetstream(&url).await;
    pipeline::wait_members(&js, 3).await;
    let stats = pipeline::stats_bucket(&js).await;

    let mut sim = logdist_testing::Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &url,
            "--agents",
            "1000",
            "--agent-skew",
            "0.8",
            "--rate",
            "10000",
            "--duration",
            "4s",
            "--packet-size",
            "1..10",
            "--verify",
            "--quiet-period",
            "2s",
            "--max-loss",
            "0",
            "--max-deviation",
            "1",
            "--json",
        ],
        &[],
    );
    let (status, report) = pipeline::report(&mut sim).await;
    let v = pipeline::verification("at-least-once affinity", &report);
    assert!(status.success(), "agent-sim: {v:#}");
    assert_eq!(v["lost"], 0, "{v:#}");
    let sent_packets = report["sent"]["packets"].as_u64().unwrap();
    let stats = &stats;
    let keyed_all = |s: &logdist::protocol::stats::DistributorStats| {
        s.analyzers.values().map(|r| r.keyed_packets).sum::<u64>() >= sent_packets
    };
    logdist_testing::wait_until("every packet counted as keyed", WAIT, || async {
        pipeline::distributor_stats(stats, "d1")
            .await
            .is_some_and(|s| keyed_all(&s))
    })
    .await;
    let s = pipeline::distributor_stats(stats, "d1").await.unwrap();
    pipeline::assert_epoch_shares(&s, 1.0);
    let kept: u64 = s.analyzers.values().map(|r| r.kept_packets).sum();
    let keyed: u64 = s.analyzers.values().map(|r| r.keyed_packets).sum();
    let kept_pct = 100.0 * kept as f64 / keyed as f64;
    eprintln!(
        "at-least-once: {kept} of {keyed} packets kept ({kept_pct:.1} %), {} redelivered",
        s.redelivered
    );
    // Random routing would keep Σ p² = 38 %; the rule keeps ~94 % of i.i.d. packets of these
    // keys (the at-most-once tests above). agent-sim on a starved machine falls behind and
    // catches up in bursts of one agent's packets, which spill off a full first choice; and a
    // packet whose analyzer did not answer in time is re-routed. So the bound here is looser.
    let rerouted = 100.0 * s.redelivered as f64 / keyed as f64;
    assert!(
        kept_pct + rerouted >= 75.0,
        "kept {kept_pct:.1} % (+ {rerouted:.1} % re-routed after a failure)"
    );
}

#[tokio::test]
async fn field_keys_route_by_the_records_field_and_keyless_packets_are_counted() {
    let _load = pipeline::LOAD.lock().await;
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let _r1 = start_distributor(
        &server,
        "r1",
        &[
            "--affinity",
            "field:service",
            "--heartbeat-timeout-factor",
            "100",
        ],
    )
    .await;
    let (_, stats) = buckets(&client).await;
    let three = [("1", 0.5), ("2", 0.3), ("3", 0.2)];
    let mut analyzers = Vec::new();
    for (id, w) in three {
        analyzers.push(SimAnalyzer::start(&client, id, "i", w).await);
    }
    wait_online(&stats, "r1", &["1", "2", "3"]).await;
    let refs: Vec<&SimAnalyzer> = analyzers.iter().collect();
    let start = snapshot(&refs);
    // 40 services; the packet's records carry `service`, and the (unrelated) agent header
    // `tag-<service>` lets the analyzers tell the services apart. Every tenth packet has no
    // `service` field: it has no key.
    let mut rng = Lcg::new(3);
    let (mut sent, mut keyed) = (0u64, 0u64);
    for i in 0..2_000u64 {
        let service = rng.range(0, 39);
        let n = rng.range(1, 5) as usize;
        let field = if i % 10 == 9 {
            String::new()
        } else {
            keyed += 1;
            format!(r#","service":"svc-{service}""#)
        };
        let records: Vec<String> = (0..n)
            .map(|m| {
                format!(
                    r#"{{"timestamp":{m},"severity":"INFO","source":"s","message":"m"{field}}}"#
                )
            })
            .collect();
        let mut headers = async_nats::HeaderMap::new();
        let tag = if field.is_empty() {
            "keyless".to_string()
        } else {
            format!("tag-svc-{service}")
        };
        headers.insert(logdist::protocol::headers::AGENT, tag.as_str());
        client
            .publish_with_headers(
                format!("{INGEST}.host-{i}"),
                headers,
                Bytes::from(format!("[{}]", records.join(","))),
            )
            .await
            .unwrap();
        sent += n as u64;
    }
    client.flush().await.unwrap();
    wait_total(&refs, "all packets", sent).await;
    let end = snapshot(&refs);
    let mut rule = AffinityRule::new(0.01);
    rule.set_analyzers(three);
    let mut on_first_choice = 0u64;
    for (id, agents) in &end.packets {
        for (tag, n) in agents {
            let Some(service) = tag.strip_prefix("tag-") else {
                continue;
            };
            let first = three[rule.first_choice(KeyHash::of(service.as_bytes())).unwrap()].0;
            let before = start.packets[id].get(tag).copied().unwrap_or(0);
            if first == id {
                on_first_choice += n - before;
            }
        }
    }
    let s = wait_distributor_stats(&stats, "r1", "every packet counted", |s| {
        s.keyless_packets + s.analyzers.values().map(|r| r.keyed_packets).sum::<u64>() == 2_000
    })
    .await;
    assert_eq!(s.affinity, "field:service");
    assert_eq!(s.keyless_packets, 2_000 - keyed);
    let kept: u64 = s.analyzers.values().map(|r| r.kept_packets).sum();
    assert_eq!(
        kept, on_first_choice,
        "the distributor's first choices are the rule's for the field's value"
    );
    let held: u64 = s.analyzers.values().map(|r| r.keys_held).sum();
    assert_eq!(held, 40, "40 services");
    assert!(kept as f64 >= 0.5 * keyed as f64, "kept {kept} of {keyed}");
    let p = phase(&start, &end, &three);
    assert_shares("field keys", &p, &three);
}
