//! agent-sim against a real nats-server, with the test itself as the only subscriber: what it
//! sends (counts, subjects, headers, content) and how it reports it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use logdist::PacketValidator;
use logdist_testing::{NatsServer, Process, WAIT};

/// Receives everything on `logs.ingest.>` until `messages` log messages arrived (bounded), and
/// returns every packet: with --rate 0 one agent can send dozens before the others start, so the
/// header checks look at all of them.
async fn collect(
    sub: &mut async_nats::Subscriber,
    messages: u64,
    invalid_packets: u64,
) -> (u64, u64, Vec<async_nats::Message>) {
    let validator = PacketValidator::default();
    let (mut valid, mut invalid, mut packets) = (0u64, 0u64, Vec::new());
    while valid < messages || invalid < invalid_packets {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("agent-sim's packets arrive")
            .expect("subscription open");
        match validator.parse(&msg.payload) {
            Ok(packet) => valid += packet.records.len() as u64,
            Err(_) => invalid += 1,
        }
        packets.push(msg);
    }
    (valid, invalid, packets)
}

#[tokio::test]
async fn count_mode_sends_exactly_the_count_with_agent_headers() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut sub = client
        .subscribe(logdist::Names::default().ingest_wildcard())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut sim = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &server.url(),
            "--agents",
            "4",
            "--packet-size",
            "1..50",
            "--rate",
            "0",
            "--count",
            "5000",
            "--json",
        ],
        &[],
    );
    assert!(sim.wait(WAIT).await.success(), "{}", sim.stderr());
    let (valid, invalid, sample) = collect(&mut sub, 5000, 0).await;
    assert_eq!((valid, invalid), (5000, 0));

    let report: serde_json::Value = serde_json::from_str(&sim.stdout()).expect("JSON report");
    assert_eq!(report["sent"]["messages"], 5000);
    assert!(report["verification"].is_null());

    let mut agents = HashSet::new();
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for msg in &sample {
        let headers = msg.headers.as_ref().expect("agent headers");
        let agent = headers
            .get(logdist::protocol::headers::AGENT)
            .unwrap()
            .to_string();
        assert_eq!(
            msg.subject.as_str(),
            logdist::Names::default().agent_ingest_subject(&agent)
        );
        let sent_at: u128 = headers
            .get(logdist::protocol::headers::SENT_AT)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let age = logdist::protocol::headers::unix_nanos_now().saturating_sub(sent_at);
        assert!(
            age < 60_000_000_000,
            "Sent-At is a current unix-nanosecond time"
        );
        let seq: u64 = headers
            .get(logdist::protocol::headers::SEQ)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        seqs.entry(agent.clone()).or_default().push(seq);
        agents.insert(agent);
    }
    assert!(agents.len() > 1, "several agents sent: {agents:?}");
    for (agent, seq) in seqs {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "{agent}: sequence increases: {seq:?}"
        );
    }
}

#[tokio::test]
async fn invalid_ratio_sends_malformed_packets_and_rate_paces_the_send() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut sub = client
        .subscribe(logdist::Names::default().ingest_wildcard())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut sim = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &server.url(),
            "--agents",
            "2",
            "--packet-size",
            "10",
            "--rate",
            "4000",
            "--duration",
            "1s",
            "--invalid-ratio",
            "0.2",
            "--json",
        ],
        &[],
    );
    assert!(sim.wait(WAIT).await.success(), "{}", sim.stderr());
    let report: serde_json::Value = serde_json::from_str(&sim.stdout()).expect("JSON report");
    let sent = report["sent"]["messages"].as_u64().unwrap();
    let invalid = report["sent"]["invalid_packets"].as_u64().unwrap();
    // 4000 msg/s for 1 s, malformed packets counting one each: about 3,300 valid messages and
    // 80 malformed packets; pacing keeps it far from the thousands per second unpaced.
    assert!(
        (2000..=4200).contains(&(sent + invalid)),
        "sent {sent} + {invalid} invalid"
    );
    assert!(invalid > 20 && invalid < 200, "invalid packets {invalid}");
    let (valid, got_invalid, _) = collect(&mut sub, sent, invalid).await;
    assert_eq!((valid, got_invalid), (sent, invalid));
}

#[tokio::test]
async fn bad_flags_exit_2_and_name_the_flag() {
    for (args, flag) in [
        (vec!["--invalid-ratio", "2"], "--invalid-ratio"),
        (vec!["--packet-size", "0"], "--packet-size"),
        (vec!["--agent-prefix", "a b"], "--agent-prefix"),
        (vec!["--count", "0"], "--count"),
    ] {
        let mut sim = Process::spawn("agent-sim", &args, &[]);
        let status = sim.wait(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(2), "{args:?}");
        assert!(sim.stderr().contains(flag), "{args:?}: {}", sim.stderr());
    }
}
