//! agent-sim --verify against a whole real pipeline: nats-server, one distributor and three
//! analyzers (weights 0.5 / 0.3 / 0.2), all started by the test as separate processes.

use std::time::Duration;

use logdist_testing::{
    agent_sim_report, wait_for_members, AgentSimOptions, AnalyzerOptions, DistributorOptions,
    NatsServer, Process, THREE_ANALYZERS, WAIT,
};

struct Pipeline {
    server: NatsServer,
    _distributor: Process,
    analyzers: Vec<Process>,
}

async fn start_pipeline() -> Pipeline {
    let server = NatsServer::start();
    let url = server.url();
    let distributor = DistributorOptions::new(&url)
        .replica("d1")
        .stats_interval(Duration::from_millis(200))
        .spawn();
    let analyzers = THREE_ANALYZERS
        .iter()
        .map(|(id, weight)| {
            AnalyzerOptions::new(&url, id, *weight)
                // 500 ms (timeout 1.5 s): a debug build on 2 cores can stall a 100 ms heartbeat
                // past its 300 ms timeout, which drops the analyzer mid-run and skews the shares.
                .heartbeat_interval(Duration::from_millis(500))
                .report_interval(Duration::from_millis(200))
                .spawn()
        })
        .collect();
    // Ready when the distributor has mirrored all three analyzers into the membership bucket.
    wait_for_members(&url, 3, WAIT).await;
    Pipeline {
        server,
        _distributor: distributor,
        analyzers,
    }
}

#[tokio::test]
async fn verify_reports_no_loss_and_shares_within_a_tenth_of_a_point() {
    let pipeline = start_pipeline().await;
    let mut sim = AgentSimOptions::new(&pipeline.server.url())
        .args(&[
            "--agents",
            "8",
            "--packet-size",
            "1..100",
            "--rate",
            "100000",
            "--count",
            "300000",
            "--invalid-ratio",
            "0.01",
        ])
        .verify(Duration::from_secs(2))
        .max_deviation(0.1)
        .spawn();
    let (status, report) = agent_sim_report(&mut sim, Duration::from_secs(90)).await;
    assert!(status.success(), "verify failed: {report:#}");
    let v = &report["verification"];
    assert_eq!(v["lost"], 0, "{v:#}");
    assert_eq!(v["sent"], v["received"], "{v:#}");
    assert_eq!(v["deadlettered"], v["invalid_sent"], "{v:#}");
    assert!(v["invalid_sent"].as_u64().unwrap() > 0);
    let rows = v["analyzers"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for (row, target) in rows.iter().zip([50.0, 30.0, 20.0]) {
        assert!(
            (row["target_pct"].as_f64().unwrap() - target).abs() < 1e-9,
            "{row}"
        );
        assert!(row["deviation_pp"].as_f64().unwrap().abs() <= 0.1, "{row}");
    }
    // The text report carries the same table (10 packets cannot match the shares: loss only).
    let mut text = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &pipeline.server.url(),
            "--count",
            "1000",
            "--verify",
            "--quiet-period",
            "2s",
            "--max-deviation",
            "100",
        ],
        &[],
    );
    assert!(
        text.wait(Duration::from_secs(60)).await.success(),
        "{}",
        text.stdout()
    );
    let out = text.stdout();
    assert!(
        out.contains("target %") && out.contains("verify: OK"),
        "{out}"
    );
}

#[tokio::test]
async fn verify_fails_when_an_analyzer_is_killed_mid_run_at_most_once() {
    let mut pipeline = start_pipeline().await;
    let mut sim = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &pipeline.server.url(),
            "--agents",
            "4",
            "--packet-size",
            "1..100",
            "--rate",
            "50000",
            "--duration",
            "4s",
            "--verify",
            "--quiet-period",
            "2s",
            "--max-loss",
            "0",
            "--json",
        ],
        &[],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pipeline.analyzers[1].kill().await; // SIGKILL: no withdraw, in-flight packets lost
    let (status, report) = agent_sim_report(&mut sim, Duration::from_secs(90)).await;
    assert_eq!(status.code(), Some(1), "the check must fail: {report:#}");
    let v = &report["verification"];
    assert!(v["lost"].as_u64().unwrap() > 0, "{v:#}");
    let failures = v["failures"].to_string();
    assert!(failures.contains("loss"), "{failures}");
}
