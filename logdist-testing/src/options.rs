//! The workspace's binaries as child processes, with typed options: what tests vary (replica id,
//! delivery mode, intervals, analyzer id and weight) has a setter; anything else is an extra
//! flag. Each builder starts one [`Process`] with [`Process::spawn`].

use std::time::Duration;

use crate::Process;

/// `--delivery` of a distributor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    AtMostOnce,
    AtLeastOnce,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtMostOnce => "at-most-once",
            Delivery::AtLeastOnce => "at-least-once",
        }
    }
}

fn flag_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `distributor run` against `--nats-url urls`.
#[derive(Debug, Clone)]
pub struct DistributorOptions {
    urls: String,
    replica: Option<String>,
    stats_interval: Option<Duration>,
    delivery: Option<Delivery>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl DistributorOptions {
    /// The distributor's defaults for everything but the server.
    pub fn new(urls: &str) -> Self {
        DistributorOptions {
            urls: urls.to_string(),
            replica: None,
            stats_interval: None,
            delivery: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// `--replica-id`.
    pub fn replica(mut self, replica: &str) -> Self {
        self.replica = Some(replica.to_string());
        self
    }

    /// `--stats-interval`.
    pub fn stats_interval(mut self, interval: Duration) -> Self {
        self.stats_interval = Some(interval);
        self
    }

    /// `--delivery`.
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Extra flags, after the others.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable (e.g. NATS credentials of a role).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn spawn(&self) -> Process {
        let mut args = vec![
            "run".to_string(),
            "--nats-url".to_string(),
            self.urls.clone(),
        ];
        if let Some(replica) = &self.replica {
            args.extend(["--replica-id".to_string(), replica.clone()]);
        }
        if let Some(interval) = self.stats_interval {
            args.extend(["--stats-interval".to_string(), flag_duration(interval)]);
        }
        if let Some(delivery) = self.delivery {
            args.extend(["--delivery".to_string(), delivery.as_str().to_string()]);
        }
        args.extend(self.args.iter().cloned());
        spawn("distributor", &args, &self.envs)
    }
}

/// The `analyzer` binary: analyzer `id` with `weight`, instance `i<id>`, against `--nats-url
/// urls`.
#[derive(Debug, Clone)]
pub struct AnalyzerOptions {
    urls: String,
    id: String,
    weight: f64,
    instance: String,
    heartbeat_interval: Option<Duration>,
    report_interval: Option<Duration>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl AnalyzerOptions {
    /// Instance `i<id>`, the analyzer's default heartbeat and report intervals.
    pub fn new(urls: &str, id: &str, weight: f64) -> Self {
        AnalyzerOptions {
            urls: urls.to_string(),
            id: id.to_string(),
            weight,
            instance: format!("i{id}"),
            heartbeat_interval: None,
            report_interval: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// `--instance`.
    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = instance.to_string();
        self
    }

    /// `--heartbeat-interval`.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// `--report-interval`.
    pub fn report_interval(mut self, interval: Duration) -> Self {
        self.report_interval = Some(interval);
        self
    }

    /// Extra flags, after the others.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable (e.g. NATS credentials of a role).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn spawn(&self) -> Process {
        let mut args = vec![
            "--nats-url".to_string(),
            self.urls.clone(),
            "--id".to_string(),
            self.id.clone(),
            "--weight".to_string(),
            self.weight.to_string(),
            "--instance".to_string(),
            self.instance.clone(),
        ];
        if let Some(interval) = self.heartbeat_interval {
            args.extend(["--heartbeat-interval".to_string(), flag_duration(interval)]);
        }
        if let Some(interval) = self.report_interval {
            args.extend(["--report-interval".to_string(), flag_duration(interval)]);
        }
        args.extend(self.args.iter().cloned());
        spawn("analyzer", &args, &self.envs)
    }
}

/// `agent-sim` against `--nats-url urls`; with [`verify`](Self::verify), the pipeline check
/// that allows no loss, reported as JSON on stdout.
#[derive(Debug, Clone)]
pub struct AgentSimOptions {
    urls: String,
    verify: Option<Duration>,
    max_deviation: Option<f64>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl AgentSimOptions {
    pub fn new(urls: &str) -> Self {
        AgentSimOptions {
            urls: urls.to_string(),
            verify: None,
            max_deviation: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// `--verify --max-loss 0 --json`, once the counters stayed still for `quiet_period`.
    pub fn verify(mut self, quiet_period: Duration) -> Self {
        self.verify = Some(quiet_period);
        self
    }

    /// `--max-deviation` (percentage points) of the verification.
    pub fn max_deviation(mut self, pp: f64) -> Self {
        self.max_deviation = Some(pp);
        self
    }

    /// The load and anything else (`--rate`, `--count`, `--packet-size`, …).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable (e.g. NATS credentials of a role).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn spawn(&self) -> Process {
        let mut args = vec!["--nats-url".to_string(), self.urls.clone()];
        args.extend(self.args.iter().cloned());
        if let Some(quiet) = self.verify {
            args.extend(
                [
                    "--verify",
                    "--quiet-period",
                    &flag_duration(quiet),
                    "--max-loss",
                    "0",
                    "--json",
                ]
                .map(String::from),
            );
        }
        if let Some(pp) = self.max_deviation {
            args.extend(["--max-deviation".to_string(), pp.to_string()]);
        }
        spawn("agent-sim", &args, &self.envs)
    }
}

/// Waits (at most `timeout`) for an agent-sim started with [`AgentSimOptions::verify`] and
/// returns its exit status and JSON report; panics with its output when there is no report.
pub async fn agent_sim_report(
    sim: &mut Process,
    timeout: Duration,
) -> (std::process::ExitStatus, serde_json::Value) {
    let status = sim.wait(timeout).await;
    let report = serde_json::from_str(&sim.stdout()).unwrap_or_else(|e| {
        panic!(
            "agent-sim JSON report ({e}); stdout:\n{}\nstderr:\n{}",
            sim.stdout(),
            sim.stderr()
        )
    });
    (status, report)
}

fn spawn(name: &str, args: &[String], envs: &[(String, String)]) -> Process {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Process::spawn(name, &args, &envs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_the_binaries_parse_them() {
        assert_eq!(flag_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(flag_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(flag_duration(Duration::from_secs(2)), "2s");
        assert_eq!(0.3f64.to_string(), "0.3");
    }
}
