//! The deployment files agree with what they deploy: every flag and environment variable that
//! `compose.yaml` gives a logdist binary is one that binary's `--help` lists, the nats service's
//! flags are nats-server's, the Dockerfile builds every binary compose runs, and the server
//! configs (`nats.conf`, `nats-secure.conf`, the cluster nodes) pass `nats-server -t`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{check_config, password_env, repo_file};
use serde_yaml::Value;

/// `--help` of a binary (or of one of its subcommands), whitespace collapsed so wrapped lines
/// read as one.
fn help(command: &[&str]) -> String {
    let bin = if command[0] == "nats-server" {
        logdist_testing::nats_server_bin()
    } else {
        logdist_testing::binary(command[0])
    };
    let out = Command::new(&bin)
        .args(&command[1..])
        .arg("--help")
        .output()
        .expect("run --help");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `help` documents the flag `--name` (followed by a space, `=`, `,` or `]`).
fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before_ok = i == 0 || help.as_bytes()[i - 1] == b' ' || help.as_bytes()[i - 1] == b',';
        let after = help.as_bytes().get(i + flag.len()).copied();
        before_ok && matches!(after, None | Some(b' ' | b'=' | b',' | b']'))
    })
}

/// Whether `help` lists `name` as the env variable of a flag (`[env: NAME=…]`, or `[env: NAME]`
/// for hidden values).
fn has_env(help: &str, name: &str) -> bool {
    help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]"))
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_string(),
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Null => Vec::new(),
        other => panic!("unexpected command form {other:?}"),
    }
}

fn compose() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(repo_file("compose.yaml")).expect("read compose.yaml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("compose.yaml is YAML");
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"].as_mapping().expect("services").clone();
    services
        .into_iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v))
        .collect()
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                };
                (k.as_str().unwrap().to_string(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| {
                let (k, v) = i
                    .as_str()
                    .unwrap()
                    .split_once('=')
                    .unwrap_or((i.as_str().unwrap(), ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("unexpected environment form {other:?}"),
    }
}

#[test]
fn every_flag_and_env_var_in_compose_is_one_the_binaries_accept() {
    let services = compose();
    // `RUST_LOG` is read by the tracing filter every binary installs (logdist::init_logging), not by a
    // flag, so --help does not list it.
    let logging = std::fs::read_to_string(repo_file("logdist/src/logging.rs")).unwrap();
    assert!(logging.contains("RUST_LOG"));

    let mut checked = 0;
    let mut binaries_used = Vec::new();
    for (name, service) in &services {
        // nats and the monitoring services (Prometheus, Grafana) run images of their own.
        if service["image"].as_str() != Some("logdist:latest") {
            continue;
        }
        let command = strings(&service["command"]);
        let bin = command
            .first()
            .unwrap_or_else(|| panic!("{name}: no command"));
        assert!(
            ["distributor", "analyzer", "agent-sim"].contains(&bin.as_str()),
            "{name}: runs {bin}, not a logdist binary"
        );
        binaries_used.push(bin.clone());
        // `distributor run|stats` takes its flags after the subcommand.
        let mut help_command = vec![bin.as_str()];
        if let Some(sub) = command.get(1).filter(|s| !s.starts_with('-')) {
            help_command.push(sub);
        }
        let help = help(&help_command);
        for word in command.iter().filter(|w| w.starts_with("--")) {
            let flag = word.split('=').next().unwrap();
            assert!(
                has_flag(&help, flag),
                "{name}: `{}` has no flag {flag}",
                help_command.join(" ")
            );
            checked += 1;
        }
        for key in env_of(service).keys() {
            if key == "RUST_LOG" {
                continue;
            }
            assert!(
                has_env(&help, key),
                "{name}: `{}` reads no env {key}",
                help_command.join(" ")
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} flags and variables checked");

    // The deployment the docs promise.
    let env = |s: &str| env_of(&services[s]);
    let weights: Vec<(String, String)> = ["analyzer-1", "analyzer-2", "analyzer-3"]
        .iter()
        .map(|s| {
            (
                env(s)["ANALYZER_ID"].clone(),
                env(s)["ANALYZER_WEIGHT"].clone(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        [("1", "0.5"), ("2", "0.3"), ("3", "0.2")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let replicas: Vec<String> = services
        .iter()
        .filter(|(_, s)| strings(&s["command"]).first().map(String::as_str) == Some("distributor"))
        .map(|(n, _)| env(n)["DISTRIBUTOR_REPLICA_ID"].clone())
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    assert_ne!(replicas[0], replicas[1]);
    assert!(
        services["agent-sim"]["profiles"]
            .as_sequence()
            .is_some_and(|p| !p.is_empty()),
        "agent-sim must be under a profile"
    );

    // The image builds every binary compose runs, and does not run as root.
    let dockerfile = std::fs::read_to_string(repo_file("Dockerfile")).unwrap();
    for bin in &binaries_used {
        assert!(
            dockerfile.contains(&format!("--bin {bin}")),
            "Dockerfile does not build {bin}"
        );
    }
    assert!(
        dockerfile.matches("\nFROM ").count() >= 2,
        "not multi-stage"
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("Dockerfile sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
}

#[test]
fn the_nats_service_runs_nats_conf_with_jetstream_on_a_volume() {
    let services = compose();
    let nats = &services["nats"];
    assert!(nats["image"].as_str().unwrap().starts_with("nats:"));
    let help = help(&["nats-server"]);
    let command = strings(&nats["command"]);
    for flag in command.iter().filter(|w| w.starts_with('-')) {
        assert!(has_flag(&help, flag), "nats-server has no flag {flag}");
    }
    let volumes = strings(&nats["volumes"]);
    let config_mount = volumes
        .iter()
        .find(|v| v.starts_with("./nats.conf:"))
        .expect("nats.conf is mounted");
    let in_container = config_mount.split(':').nth(1).unwrap();
    assert!(
        command.iter().any(|w| w == in_container),
        "{command:?} does not use {in_container}"
    );
    // nats.conf's store_dir is relative: it lands on the named volume mounted at working_dir.
    let workdir = nats["working_dir"].as_str().expect("working_dir");
    assert!(volumes
        .iter()
        .any(|v| v.ends_with(&format!(":{workdir}")) && !v.starts_with('.')));
    let conf = std::fs::read_to_string(repo_file("nats.conf")).unwrap();
    assert!(
        conf.contains("store_dir: \"./"),
        "nats.conf store_dir is no longer relative"
    );
    let out = check_config(&repo_file("nats.conf"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cluster_node_configs_are_valid_and_route_to_each_other() {
    let env = password_env();
    let mut names = Vec::new();
    for i in 1..=3 {
        let path = repo_file(&format!("deploy/cluster/node-{i}.conf"));
        let out = check_config(Path::new(&path), &env);
        assert!(
            out.status.success(),
            "node-{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        for j in 1..=3 {
            assert!(
                text.contains(&format!("nats-route://node-{j}:6222")),
                "node-{i} lacks a route to node-{j}"
            );
        }
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("server_name: "))
            .expect("server_name")
            .to_string();
        names.push(name);
        // The roles come from nats-secure.conf: without its passwords the node does not start.
        assert!(!check_config(Path::new(&path), &[]).status.success());
    }
    names.dedup();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
}

#[test]
fn prometheus_scrapes_every_logdist_service_on_its_metrics_port() {
    let services = compose();
    let config = repo_file("deploy/prometheus.yml");
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool (make tools installs Debian's prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let mut targets = Vec::new();
    for job in doc["scrape_configs"].as_sequence().expect("scrape_configs") {
        for group in job["static_configs"].as_sequence().unwrap() {
            targets.extend(strings(&group["targets"]));
        }
    }
    // Every logdist service that runs long serves --metrics, and Prometheus scrapes it there.
    let mut expected = Vec::new();
    for (name, service) in &services {
        let env = env_of(service);
        let Some(addr) = env
            .iter()
            .find(|(k, _)| k.ends_with("_METRICS"))
            .map(|(_, v)| v.clone())
        else {
            continue;
        };
        let port = addr.rsplit(':').next().unwrap();
        expected.push(format!("{name}:{port}"));
        let check = strings(&service["healthcheck"]["test"]).join(" ");
        assert!(
            check.contains(&format!("/dev/tcp/127.0.0.1/{port}")) && check.contains("/readyz"),
            "{name}: the health check does not ask /readyz on {port}: {check}"
        );
    }
    for name in [
        "distributor-1",
        "distributor-2",
        "analyzer-1",
        "analyzer-2",
        "analyzer-3",
    ] {
        assert!(
            expected.iter().any(|t| t.starts_with(&format!("{name}:"))),
            "{name} serves no --metrics"
        );
    }
    targets.sort();
    expected.sort();
    assert_eq!(targets, expected);
    for monitoring in ["prometheus", "grafana"] {
        assert!(
            services[monitoring]["profiles"]
                .as_sequence()
                .is_some_and(|p| p.iter().any(|p| p.as_str() == Some("monitoring"))),
            "{monitoring} must be under the monitoring profile"
        );
    }
    let mounts = strings(&services["prometheus"]["volumes"]);
    assert!(mounts
        .iter()
        .any(|m| m.starts_with("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml")));
    let mounts = strings(&services["grafana"]["volumes"]);
    assert!(mounts
        .iter()
        .any(|m| m.starts_with("./deploy/grafana/logdist.json:")));
}
