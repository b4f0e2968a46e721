//! agent-sim --verify against a whole real pipeline: nats-server, one distributor and three
//! analyzers (weights 0.5 / 0.3 / 0.2), all started by the test as separate processes.

use std::time::Duration;

use logdist::testing::{wait_for_members, NatsServer, Process};

struct Pipeline {
    server: NatsServer,
    _distributor: Process,
    analyzers: Vec<Process>,
}

async fn start_pipeline() -> Pipeline {
    let server = NatsServer::start();
    let url = server.url();
    let distributor = Process::spawn(
        "distributor",
        &[
            "run",
            "--nats-url",
            &url,
            "--replica-id",
            "d1",
            "--stats-interval",
            "200ms",
        ],
        &[],
    );
    let analyzers = [("1", "0.5"), ("2", "0.3"), ("3", "0.2")]
        .iter()
        .map(|(id, weight)| {
            Process::spawn(
                "analyzer",
                &[
                    "--nats-url",
                    &url,
                    "--id",
                    id,
                    "--weight",
                    weight,
                    "--instance",
                    &format!("i{id}"),
                    // 500 ms (timeout 1.5 s): a debug build on 2 cores can stall a 100 ms heartbeat
                    // past its 300 ms timeout, which drops the analyzer mid-run and skews the shares.
                    "--heartbeat-interval",
                    "500ms",
                    "--report-interval",
                    "200ms",
                ],
                &[],
            )
        })
        .collect();
    // Ready when the distributor has mirrored all three analyzers into the membership bucket.
    wait_for_members(&url, 3, Duration::from_secs(30)).await;
    Pipeline {
        server,
        _distributor: distributor,
        analyzers,
    }
}

#[tokio::test]
async fn verify_reports_no_loss_and_shares_within_a_tenth_of_a_point() {
    let pipeline = start_pipeline().await;
    let mut sim = Process::spawn(
        "agent-sim",
        &[
            "--nats-url",
            &pipeline.server.url(),
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
            "--verify",
            "--quiet-period",
            "2s",
            "--max-loss",
            "0",
            "--max-deviation",
            "0.1",
            "--json",
        ],
        &[],
    );
    let status = sim.wait(Duration::from_secs(90)).await;
    let report: serde_json::Value = serde_json::from_str(&sim.stdout())
        .unwrap_or_else(|e| panic!("JSON report ({e}); stderr:\n{}", sim.stderr()));
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
    let status = sim.wait(Duration::from_secs(90)).await;
    let report: serde_json::Value = serde_json::from_str(&sim.stdout())
        .unwrap_or_else(|e| panic!("JSON report ({e}); stderr:\n{}", sim.stderr()));
    assert_eq!(status.code(), Some(1), "the check must fail: {report:#}");
    let v = &report["verification"];
    assert!(v["lost"].as_u64().unwrap() > 0, "{v:#}");
    let failures = v["failures"].to_string();
    assert!(failures.contains("loss"), "{failures}");
}
