//! What the distributor's integration tests share beyond `logdist-testing`: a distributor
//! process that is ready (its first stats written), simulated analyzers (heartbeats on their
//! control subject `logdist.control.<id>`, a queue subscription on `analyzer.<id>`) and a
//! dead-letter collector.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use logdist::protocol::control::{ControlMessage, Heartbeat, Withdraw};
use logdist::protocol::names::{
    DEFAULT_CONTROL_SUBJECT, DEFAULT_DEADLETTER_SUBJECT, DEFAULT_INGEST_SUBJECT,
};
use logdist::Names;
#[allow(unused_imports)] // each test binary uses its own few
pub use logdist_testing::{
    distributor_stats, member_record, message, packet, seq_headers, wait_distributor_stats, WAIT,
};
use logdist_testing::{
    membership_bucket, stats_bucket, wait_until, DistributorOptions, NatsServer, Process,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Heartbeat interval of the simulated analyzers: short so timeouts are fast to test.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// Prefix of the analyzers' control subjects: analyzer `<id>` speaks on `logdist.control.<id>`.
pub const CONTROL: &str = DEFAULT_CONTROL_SUBJECT;

/// Analyzer `id`'s control subject.
pub fn control_subject(id: &str) -> String {
    Names::default().analyzer_control_subject(id)
}
pub const DEADLETTER: &str = DEFAULT_DEADLETTER_SUBJECT;
pub const INGEST: &str = DEFAULT_INGEST_SUBJECT;

/// A small deterministic pseudo-random sequence (xorshift), so runs are reproducible.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed.max(1))
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

/// Starts `distributor run` against `server` with replica id `replica` and a fast stats
/// interval, and waits until it has written its first stats (so it is subscribed).
pub async fn start_distributor(server: &NatsServer, replica: &str, extra: &[&str]) -> Process {
    let process = DistributorOptions::new(&server.url())
        .replica(replica)
        .stats_interval(Duration::from_millis(100))
        .args(extra)
        .spawn();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client);
    let bucket = Names::default().stats_bucket;
    wait_until("the distributor's first stats", WAIT, || {
        let js = js.clone();
        let bucket = bucket.clone();
        async move {
            match js.get_key_value(bucket).await {
                Ok(store) => distributor_stats(&store, replica).await.is_some(),
                Err(_) => false,
            }
        }
    })
    .await;
    process
}

/// The two KV buckets (membership, stats), once a distributor has created them.
pub async fn buckets(client: &Client) -> (kv::Store, kv::Store) {
    let js = jetstream::new(client.clone());
    (membership_bucket(&js).await, stats_bucket(&js).await)
}

/// Waits until the membership bucket has (or has not) key `id`.
pub async fn wait_member(members: &kv::Store, id: &str, present: bool) {
    let what = format!(
        "analyzer {id} {} the membership bucket",
        if present { "in" } else { "gone from" }
    );
    wait_until(&what, WAIT, || async move {
        member_record(members, id).await.is_some() == present
    })
    .await;
}

/// What one simulated analyzer received.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub packets: u64,
    pub messages: u64,
    /// `Logdist-Seq` header of each packet, in arrival order (when set).
    pub seqs: Vec<u64>,
    /// Headers and payloads of the first 100 packets.
    pub first: Vec<(Option<HeaderMap>, Bytes)>,
    /// Packets by `Logdist-Agent` header (when set).
    pub agents: HashMap<String, u64>,
}

/// A simulated analyzer: queue-subscribes `analyzer.<id>` and heartbeats on the control subject.
pub struct SimAnalyzer {
    pub id: String,
    pub instance: String,
    pub weight: f64,
    client: Client,
    received: Arc<Mutex<Received>>,
    packets: watch::Receiver<u64>,
    heartbeat: Option<JoinHandle<()>>,
    consumer: JoinHandle<()>,
}

impl SimAnalyzer {
    /// Subscribes, then starts heartbeating (the first heartbeat goes out at once).
    pub async fn start(client: &Client, id: &str, instance: &str, weight: f64) -> SimAnalyzer {
        let mut analyzer = SimAnalyzer::subscribe(client, id, instance, weight).await;
        analyzer.resume_heartbeats();
        analyzer
    }

    /// Subscribes without heartbeating (an analyzer known only from the membership bucket).
    pub async fn subscribe(client: &Client, id: &str, instance: &str, weight: f64) -> SimAnalyzer {
        let subject = Names::default().analyzer_subject(id);
        let mut sub = client
            .queue_subscribe(subject.clone(), subject)
            .await
            .expect("subscribe analyzer subject");
        client.flush().await.expect("flush");
        let received = Arc::new(Mutex::new(Received::default()));
        let (tx, rx) = watch::channel(0u64);
        let sink = received.clone();
        let consumer = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let count: u64 = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(logdist::protocol::headers::COUNT))
                    .map(|v| v.as_str().parse().expect("numeric Logdist-Count"))
                    .expect("every forwarded packet has Logdist-Count");
                let seq = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(logdist::protocol::headers::SEQ))
                    .and_then(|v| v.as_str().parse().ok());
                let packets = {
                    let mut r = sink.lock().unwrap();
                    r.packets += 1;
                    r.messages += count;
                    if let Some(seq) = seq {
                        r.seqs.push(seq);
                    }
                    if let Some(agent) = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(logdist::protocol::headers::AGENT))
                    {
                        *r.agents.entry(agent.as_str().to_string()).or_default() += 1;
                    }
                    if r.first.len() < 100 {
                        r.first.push((msg.headers.clone(), msg.payload.clone()));
                    }
                    r.packets
                };
                let _ = tx.send(packets);
            }
        });
        SimAnalyzer {
            id: id.to_string(),
            instance: instance.to_string(),
            weight,
            client: client.clone(),
            received,
            packets: rx,
            heartbeat: None,
            consumer,
        }
    }

    pub fn heartbeat_message(&self) -> ControlMessage {
        ControlMessage::Up(Heartbeat {
            id: self.id.clone(),
            weight: self.weight,
            instance: self.instance.clone(),
            interval_ms: HEARTBEAT.as_millis() as u64,
            batch: 0,
        })
    }

    /// Starts (or restarts) heartbeating every [`HEARTBEAT`].
    pub fn resume_heartbeats(&mut self) {
        let client = self.client.clone();
        let payload = Bytes::from(self.heartbeat_message().to_json());
        let subject = control_subject(&self.id);
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let _ = client.publish(subject.clone(), payload.clone()).await;
                let _ = client.flush().await;
            }
        }));
    }

    /// Stops heartbeating without withdrawing (a crash, as far as distributors can tell).
    pub fn go_silent(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }

    /// Stops heartbeating and withdraws.
    pub async fn withdraw(&mut self) {
        self.go_silent();
        let down = ControlMessage::Down(Withdraw {
            id: self.id.clone(),
            instance: self.instance.clone(),
        });
        self.client
            .publish(control_subject(&self.id), down.to_json().into())
            .await
            .expect("publish withdraw");
        self.client.flush().await.expect("flush");
    }

    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }

    pub fn messages(&self) -> u64 {
        self.received.lock().unwrap().messages
    }

    pub fn packets(&self) -> u64 {
        self.received.lock().unwrap().packets
    }

    /// Waits until this analyzer has received at least `n` packets.
    pub async fn wait_packets(&self, n: u64) {
        let mut rx = self.packets.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|&p| p >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "analyzer {} got {} packets, expected {n}, within {WAIT:?}",
                    self.id,
                    self.packets()
                )
            })
            .expect("consumer alive");
    }
}

impl Drop for SimAnalyzer {
    fn drop(&mut self) {
        self.go_silent();
        self.consumer.abort();
    }
}

/// Sum of `f` over analyzers.
pub fn total(analyzers: &[&SimAnalyzer], f: impl Fn(&SimAnalyzer) -> u64) -> u64 {
    analyzers.iter().map(|a| f(a)).sum()
}

/// Waits until `condition` holds over the analyzers, polling their counters.
pub async fn wait_total(analyzers: &[&SimAnalyzer], what: &str, expected_messages: u64) {
    wait_until(what, WAIT, || async {
        total(analyzers, SimAnalyzer::messages) >= expected_messages
    })
    .await;
}

/// Collects dead letters (headers and payload) in arrival order.
pub struct DeadLetters {
    items: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    count: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl DeadLetters {
    pub async fn subscribe(client: &Client) -> DeadLetters {
        let mut sub = client
            .subscribe(DEADLETTER)
            .await
            .expect("subscribe dead letters");
        client.flush().await.expect("flush");
        let items = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let sink = items.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let n = {
                    let mut items = sink.lock().unwrap();
                    items.push((msg.headers.unwrap_or_default(), msg.payload));
                    items.len()
                };
                let _ = tx.send(n);
            }
        });
        DeadLetters { items, count, task }
    }

    pub async fn wait(&self, n: usize) -> Vec<(HeaderMap, Bytes)> {
        let mut rx = self.count.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|&c| c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "expected {n} dead letters within {WAIT:?}, got {}",
                    self.items.lock().unwrap().len()
                )
            })
            .expect("dead-letter consumer alive");
        self.items.lock().unwrap().clone()
    }

    pub fn all(&self) -> Vec<(HeaderMap, Bytes)> {
        self.items.lock().unwrap().clone()
    }
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Value of header `name`, as a string ("" when absent).
pub fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// Message shares by analyzer id, in percent.
pub fn shares(analyzers: &[&SimAnalyzer]) -> HashMap<String, f64> {
    let all = total(analyzers, SimAnalyzer::messages) as f64;
    analyzers
        .iter()
        .map(|a| (a.id.clone(), 100.0 * a.messages() as f64 / all))
        .collect()
}
