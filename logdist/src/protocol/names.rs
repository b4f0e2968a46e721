//! Names of every subject and KV bucket logdist uses, with their defaults, as one `clap` argument
//! group that each binary flattens into its own flags (so a deployment can rename them all
//! consistently, e.g. to run two pipelines on one NATS account).

use clap::Args;

pub const DEFAULT_INGEST_SUBJECT: &str = "logs.ingest";
pub const DEFAULT_CONTROL_SUBJECT: &str = "logdist.control";
pub const DEFAULT_DEADLETTER_SUBJECT: &str = "logs.deadletter";
pub const DEFAULT_ANALYZER_PREFIX: &str = "analyzer";
pub const DEFAULT_MEMBERSHIP_BUCKET: &str = "analyzers";
pub const DEFAULT_STATS_BUCKET: &str = "logdist_stats";
pub const DEFAULT_WEIGHTS_BUCKET: &str = "logdist_weights";
/// Queue group the distributor replicas share on the ingest subjects.
pub const DISTRIBUTOR_QUEUE_GROUP: &str = "distributors";

/// Subject and bucket names. Every binary takes these flags; they must agree across a pipeline.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct Names {
    /// Ingest subject. Agents publish to it or to `<it>.<agent-id>`; the distributor listens on both.
    #[arg(long, env = "LOGDIST_INGEST_SUBJECT", default_value = DEFAULT_INGEST_SUBJECT, value_name = "SUBJECT")]
    pub ingest_subject: String,

    /// Control subject prefix: analyzer `<id>` heartbeats and withdraws on `<it>.<id>`, and the
    /// distributors trust a control message only when its id is the subject's. (Analyzers before
    /// per-id subjects used `<it>` itself; see the distributor's --legacy-control-subject.)
    #[arg(long, env = "LOGDIST_CONTROL_SUBJECT", default_value = DEFAULT_CONTROL_SUBJECT, value_name = "SUBJECT")]
    pub control_subject: String,

    /// Dead-letter subject: rejected bytes with a `Logdist-Error` header.
    #[arg(long, env = "LOGDIST_DEADLETTER_SUBJECT", default_value = DEFAULT_DEADLETTER_SUBJECT, value_name = "SUBJECT")]
    pub deadletter_subject: String,

    /// Prefix of analyzer subjects: analyzer `<id>` receives on `<prefix>.<id>`.
    #[arg(long, env = "LOGDIST_ANALYZER_PREFIX", default_value = DEFAULT_ANALYZER_PREFIX, value_name = "PREFIX")]
    pub analyzer_prefix: String,

    /// JetStream KV bucket mirroring the analyzers online now (one key per analyzer id).
    #[arg(long, env = "LOGDIST_MEMBERSHIP_BUCKET", default_value = DEFAULT_MEMBERSHIP_BUCKET, value_name = "BUCKET")]
    pub membership_bucket: String,

    /// JetStream KV bucket holding live counters of distributors and analyzers.
    #[arg(long, env = "LOGDIST_STATS_BUCKET", default_value = DEFAULT_STATS_BUCKET, value_name = "BUCKET")]
    pub stats_bucket: String,

    /// JetStream KV bucket of the operators' weight overrides (key = analyzer id, value = the
    /// weight routing uses instead of the announced one; 0 drains). Every replica polls it.
    #[arg(long, env = "LOGDIST_WEIGHTS_BUCKET", default_value = DEFAULT_WEIGHTS_BUCKET, value_name = "BUCKET")]
    pub weights_bucket: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            ingest_subject: DEFAULT_INGEST_SUBJECT.to_string(),
            control_subject: DEFAULT_CONTROL_SUBJECT.to_string(),
            deadletter_subject: DEFAULT_DEADLETTER_SUBJECT.to_string(),
            analyzer_prefix: DEFAULT_ANALYZER_PREFIX.to_string(),
            membership_bucket: DEFAULT_MEMBERSHIP_BUCKET.to_string(),
            stats_bucket: DEFAULT_STATS_BUCKET.to_string(),
            weights_bucket: DEFAULT_WEIGHTS_BUCKET.to_string(),
        }
    }
}

impl Names {
    /// Subject on which agent `agent_id` publishes: `<ingest>.<agent_id>`.
    pub fn agent_ingest_subject(&self, agent_id: &str) -> String {
        format!("{}.{}", self.ingest_subject, agent_id)
    }

    /// Wildcard matching every per-agent ingest subject: `<ingest>.>`.
    pub fn ingest_wildcard(&self) -> String {
        format!("{}.>", self.ingest_subject)
    }

    /// Subject (and queue group) of analyzer `id`: `<prefix>.<id>`.
    pub fn analyzer_subject(&self, id: &str) -> String {
        format!("{}.{}", self.analyzer_prefix, id)
    }

    /// Subject on which analyzer `id` heartbeats and withdraws: `<control>.<id>`. The NATS server
    /// can then hold each analyzer to its own id (docs/security.md).
    pub fn analyzer_control_subject(&self, id: &str) -> String {
        format!("{}.{}", self.control_subject, id)
    }

    /// Wildcard matching every analyzer's control subject: `<control>.*`.
    pub fn control_wildcard(&self) -> String {
        format!("{}.*", self.control_subject)
    }

    /// The analyzer id an analyzer control subject belongs to (`<control>.<id>` → `<id>`);
    /// `None` for any other subject, the old shared `<control>` included.
    pub fn control_subject_id<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let id = subject
            .strip_prefix(self.control_subject.as_str())?
            .strip_prefix('.')?;
        (!id.is_empty() && !id.contains('.')).then_some(id)
    }

    /// Subject on which distributor replicas confirm the withdrawals of analyzer `id`'s
    /// instances: `<prefix>.<id>.withdrawn` (ids have no dots, so it is no analyzer's subject).
    pub fn withdrawn_subject(&self, id: &str) -> String {
        format!("{}.{}.withdrawn", self.analyzer_prefix, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_subjects() {
        let names = Names::default();
        assert_eq!(names.agent_ingest_subject("a7"), "logs.ingest.a7");
        assert_eq!(names.ingest_wildcard(), "logs.ingest.>");
        assert_eq!(names.analyzer_subject("3"), "analyzer.3");
        assert_eq!(names.withdrawn_subject("3"), "analyzer.3.withdrawn");
        assert_eq!(names.analyzer_control_subject("3"), "logdist.control.3");
        assert_eq!(names.control_wildcard(), "logdist.control.*");
        assert_eq!(names.control_subject_id("logdist.control.3"), Some("3"));
        for other in [
            "logdist.control",
            "logdist.control.",
            "logdist.control.3.x",
            "logdist.controlx.3",
            "analyzer.3",
        ] {
            assert_eq!(names.control_subject_id(other), None, "{other}");
        }
    }
}
