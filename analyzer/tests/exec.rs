//! Process analyzers (`analyzer --exec`) against a real nats-server and distributor: a child
//! SIGKILLed mid-run is restarted (the analyzer withdrawn meanwhile), and with the `ack`
//! convention in at-least-once mode no log message is lost.

mod pipeline;

use std::time::Duration;

use futures::StreamExt;
use logdist::protocol::control::ControlMessage;
use logdist_testing::{wait_for_members, NatsServer};
use pipeline::*;

/// The child: records each log message's id in `argv[1]` (flushed per line), then acknowledges
/// it; appends its pid to `argv[2]` when it starts.
const CHILD: &str = r#"
import json, os, sys
with open(sys.argv[2], "a") as pids:
    pids.write(f"{os.getpid()}\n")
out = open(sys.argv[1], "a", buffering=1)
for line in sys.stdin:
    out.write(json.loads(line)["message"] + "\n")
    print("ack", flush=True)
"#;

fn lines(path: &std::path::Path) -> Vec<String> {
    file_lines(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_child_is_restarted_and_with_acks_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("child.py");
    let out = dir.path().join("analyzed.txt");
    let pids = dir.path().join("pids.txt");
    std::fs::write(&script, CHILD).unwrap();
    let command = format!(
        "exec '{}' -u '{}' '{}' '{}'",
        python().display(),
        script.display(),
        out.display(),
        pids.display()
    );

    let server = NatsServer::start();
    let url = server.url();
    let _distributor = distributor(&url, "d1", "at-least-once");
    let one = analyzer(&url, "1", "0.5", &["--print"]);
    let two = analyzer(&url, "2", "0.2", &["--print"]);
    let child = analyzer(&url, "8", "0.3", &["--exec", &command, "--exec-ack"]);
    wait_for_members(&url, 3, WAIT).await;
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut control = client.subscribe("logdist.control.*").await.unwrap();
    client.flush().await.unwrap();

    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            publish(&client, "x", 0..4_000, 100, Duration::from_millis(100)).await
        })
    };
    let out_ref = &out;
    eventually("the child to analyze 1,000 messages", || async move {
        lines(out_ref).len() >= 1_000
    })
    .await;
    let first = lines(&pids);
    assert_eq!(first.len(), 1, "{first:?}");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &first[0]])
        .status()
        .unwrap();
    assert!(status.success());

    // Withdrawn while the child is down, announced again once it runs.
    let mut down = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, control.next())
            .await
            .expect("a withdrawal, then an announcement, of analyzer 8")
            .unwrap();
        match ControlMessage::parse(&message.payload) {
            Ok(ControlMessage::Down(w)) if w.instance == "i8" => down = true,
            Ok(ControlMessage::Up(hb)) if hb.instance == "i8" && down => break,
            _ => {}
        }
    }
    let pids_ref = &pids;
    eventually(
        "a second child",
        || async move { lines(pids_ref).len() == 2 },
    )
    .await;
    let sent = load.await.unwrap();
    wait_consumer_drained(&js).await;

    let mut seen: std::collections::BTreeSet<String> = lines(&out).into_iter().collect();
    let by_child = seen.len();
    seen.extend(printed_ids(&one));
    seen.extend(printed_ids(&two));
    let lost = sent.difference(&seen).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} messages lost; analyzer 8 stderr:\n{}",
        sent.len(),
        child.stderr()
    );
    eprintln!(
        "sent {} messages; the children analyzed {by_child}",
        sent.len()
    );
    assert!(lines(&out).len() > 1_000);
}
