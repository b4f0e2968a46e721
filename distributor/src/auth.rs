//! `distributor auth`: the NATS users of analyzer ids, one per id, rendered from a template, so
//! an operator never hand-edits the subjects that keep one analyzer from speaking for another.
//!
//! Each user may heartbeat and withdraw only on its own control subject (`<control>.<id>`),
//! receive only `<prefix>.<id>` (in its queue group) and `<prefix>.<id>.withdrawn`, write only
//! the stats keys `analyzer.<id>.*`, and read replies only on its own inbox prefix
//! (`_INBOX_analyzer_<id>`). The template is `distributor/templates/analyzer-user.conf` (built
//! in; `--template` reads another). The users go to stdout, or replace the region between
//! [`BEGIN_MARKER`] and [`END_MARKER`] of a nats-server config (`--config`), as in the repo's
//! `nats-secure.conf`.
//!
//! Rendering is pure and unit-tested; [`run`] only reads and writes the files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use logdist::protocol::control::ControlError;
use logdist::Names;

/// The built-in template of one analyzer user.
pub const DEFAULT_TEMPLATE: &str = include_str!("../templates/analyzer-user.conf");
/// First line of the generated region (the text after it on that line is free).
pub const BEGIN_MARKER: &str = "# BEGIN analyzer users";
/// Last line of the generated region.
pub const END_MARKER: &str = "# END analyzer users";

/// Flags of `distributor auth`.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Analyzer ids to write users for, e.g. `1 2 3` or `1,2,3`. Each gets the user
    /// `analyzer-<id>` with the password `$LOGDIST_ANALYZER_<ID>_PASSWORD` (from the server's
    /// environment; the id upper-cased, `-` as `_`).
    #[arg(required = true, value_delimiter = ',', env = "LOGDIST_ANALYZER_IDS",
          value_name = "ID", value_parser = parse_id)]
    pub ids: Vec<String>,

    /// nats-server config to update in place: the lines from `# BEGIN analyzer users` to
    /// `# END analyzer users` (inside its `users: [...]` list) are replaced by the users of these
    /// ids. Without it, the region is printed to stdout.
    #[arg(long, env = "DISTRIBUTOR_AUTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Template of one analyzer user. Default: the built-in
    /// distributor/templates/analyzer-user.conf.
    #[arg(long, env = "DISTRIBUTOR_AUTH_TEMPLATE", value_name = "FILE")]
    pub template: Option<PathBuf>,

    #[command(flatten)]
    pub names: Names,
}

/// Why the users could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("analyzer id {0:?} is given twice")]
    DuplicateId(String),
    #[error(
        "analyzer ids {first:?} and {second:?} would share the password variable {var}: rename one"
    )]
    PasswordVarClash {
        first: String,
        second: String,
        var: String,
    },
    #[error("template line {line}: unknown placeholder {{{{{name}}}}} (known: {})", PLACEHOLDERS.join(", "))]
    UnknownPlaceholder { line: usize, name: String },
    #[error("template line {line}: `{{{{` without a closing `}}}}`")]
    UnclosedPlaceholder { line: usize },
    #[error("the template has no user (only its `#` header)")]
    EmptyTemplate,
    #[error("{path}: no line starting with `{BEGIN_MARKER}` followed by a line `{END_MARKER}`; add the two lines inside the `users: [...]` list where the analyzer users belong")]
    NoRegion { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 8] = [
    "id",
    "user",
    "password_var",
    "control_subject",
    "analyzer_subject",
    "withdrawn_subject",
    "stats_bucket",
    "inbox_prefix",
];

/// What one analyzer id's user is called and where its secrets and replies live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzerUser {
    pub id: String,
    /// `analyzer-<id>`.
    pub user: String,
    /// `LOGDIST_ANALYZER_<ID>_PASSWORD`: the server's env variable with its password.
    pub password_var: String,
    /// `_INBOX_analyzer_<id>`: the analyzer's `--inbox-prefix` (`NATS_INBOX_PREFIX`).
    pub inbox_prefix: String,
}

impl AnalyzerUser {
    /// The user of analyzer `id` (an id that passed [`logdist::protocol::control::validate_name`]).
    pub fn new(id: &str) -> Self {
        let var_token: String = id
            .chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect();
        AnalyzerUser {
            id: id.to_string(),
            user: format!("analyzer-{id}"),
            password_var: format!("LOGDIST_ANALYZER_{var_token}_PASSWORD"),
            inbox_prefix: format!("_INBOX_analyzer_{id}"),
        }
    }

    fn values(&self, names: &Names) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("id", self.id.clone()),
            ("user", self.user.clone()),
            ("password_var", self.password_var.clone()),
            (
                "control_subject",
                format!("{}.{}", names.control_subject, self.id),
            ),
            ("analyzer_subject", names.analyzer_subject(&self.id)),
            ("withdrawn_subject", names.withdrawn_subject(&self.id)),
            ("stats_bucket", names.stats_bucket.clone()),
            ("inbox_prefix", self.inbox_prefix.clone()),
        ])
    }
}

/// The users of `ids`, checked: no id twice, no two ids with one password variable.
pub fn analyzer_users(ids: &[String]) -> Result<Vec<AnalyzerUser>, AuthError> {
    let mut users: Vec<AnalyzerUser> = Vec::with_capacity(ids.len());
    for id in ids {
        let user = AnalyzerUser::new(id);
        if let Some(other) = users.iter().find(|u| u.id == *id) {
            return Err(AuthError::DuplicateId(other.id.clone()));
        }
        if let Some(other) = users.iter().find(|u| u.password_var == user.password_var) {
            return Err(AuthError::PasswordVarClash {
                first: other.id.clone(),
                second: id.clone(),
                var: user.password_var,
            });
        }
        users.push(user);
    }
    Ok(users)
}

/// The generated region: the markers around one rendered template per id.
pub fn render_region(template: &str, ids: &[String], names: &Names) -> Result<String, AuthError> {
    let users = analyzer_users(ids)?;
    let body = template_body(template);
    if body.iter().all(|(_, l)| l.trim().is_empty()) {
        return Err(AuthError::EmptyTemplate);
    }
    let mut out = format!(
        "    {BEGIN_MARKER}: written by `distributor auth {}`; change them with it, not by hand.\n",
        ids.join(" ")
    );
    for user in &users {
        let values = user.values(names);
        for (line, text) in &body {
            out.push_str(&substitute(text, *line, &values)?);
            out.push('\n');
        }
    }
    out.push_str("    ");
    out.push_str(END_MARKER);
    out.push('\n');
    Ok(out)
}

/// The template without its leading `#` header, as (1-based line number, text).
fn template_body(template: &str) -> Vec<(usize, &str)> {
    template
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.starts_with('#'))
        .map(|(i, l)| (i + 1, l))
        .collect()
}

fn substitute(
    text: &str,
    line: usize,
    values: &BTreeMap<&'static str, String>,
) -> Result<String, AuthError> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(AuthError::UnclosedPlaceholder { line })?;
        let name = after[..end].trim();
        let value = values
            .get(name)
            .ok_or_else(|| AuthError::UnknownPlaceholder {
                line,
                name: name.to_string(),
            })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `config` with the lines from the [`BEGIN_MARKER`] line to the next [`END_MARKER`] line
/// (both included) replaced by `region`; `None` when there is no such pair.
pub fn replace_region(config: &str, region: &str) -> Option<String> {
    let lines: Vec<&str> = config.lines().collect();
    let begin = lines
        .iter()
        .position(|l| l.trim_start().starts_with(BEGIN_MARKER))?;
    let end = begin + lines[begin..].iter().position(|l| l.trim() == END_MARKER)?;
    let mut out = String::with_capacity(config.len() + region.len());
    for line in &lines[..begin] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(region);
    for line in &lines[end + 1..] {
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}

/// Runs `distributor auth`: prints the region, or rewrites it in `--config` (through a
/// temporary file in the same directory, so a reader never sees half a file).
pub fn run(args: &AuthArgs) -> Result<(), AuthError> {
    let template = match &args.template {
        Some(path) => read(path)?,
        None => DEFAULT_TEMPLATE.to_string(),
    };
    let region = render_region(&template, &args.ids, &args.names)?;
    let users = analyzer_users(&args.ids)?;
    let Some(path) = &args.config else {
        print!("{region}");
        return Ok(());
    };
    let config = read(path)?;
    let updated = replace_region(&config, &region)
        .ok_or_else(|| AuthError::NoRegion { path: path.clone() })?;
    let tmp = path.with_extension("auth-tmp");
    std::fs::write(&tmp, updated)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| AuthError::Write {
            path: path.clone(),
            source,
        })?;
    let vars: Vec<&str> = users.iter().map(|u| u.password_var.as_str()).collect();
    eprintln!(
        "distributor auth: wrote the users of analyzers {} to {}.\nThe server needs {} in its environment; then reload it (nats-server --signal reload).",
        args.ids.join(", "),
        path.display(),
        vars.join(", ")
    );
    Ok(())
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_id(raw: &str) -> Result<String, String> {
    logdist::protocol::control::validate_name("analyzer id", raw)
        .map(|()| raw.to_string())
        .map_err(|e: ControlError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_id_gets_its_own_subjects_keys_inbox_and_password() {
        let region =
            render_region(DEFAULT_TEMPLATE, &ids(&["1", "web-2"]), &Names::default()).unwrap();
        assert!(
            region.starts_with("    # BEGIN analyzer users: written by `distributor auth 1 web-2`")
        );
        assert!(region.ends_with("    # END analyzer users\n"));
        assert!(!region.contains("{{"), "{region}");
        for (id, var) in [
            ("1", "LOGDIST_ANALYZER_1_PASSWORD"),
            ("web-2", "LOGDIST_ANALYZER_WEB_2_PASSWORD"),
        ] {
            for wanted in [
                format!("user: \"analyzer-{id}\""),
                format!("password: ${var}"),
                format!("\"logdist.control.{id}\""),
                format!("\"$KV.logdist_stats.analyzer.{id}.>\""),
                format!("\"analyzer.{id} analyzer.{id}\""),
                format!("\"analyzer.{id}.withdrawn\""),
                format!("\"_INBOX_analyzer_{id}.>\""),
            ] {
                assert!(region.contains(&wanted), "no {wanted} in\n{region}");
            }
        }
        // Nothing that lets one id act for all: no wildcard over ids, no shared subjects.
        for forbidden in [
            "analyzer.>",
            "analyzer.*",
            "logdist.control\"",
            "logdist.control.*",
            "_INBOX.>",
        ] {
            assert!(!region.contains(forbidden), "{forbidden} in\n{region}");
        }
        // The template's header is not copied.
        assert!(!region.contains("Placeholders"));
    }

    #[test]
    fn renamed_subjects_and_buckets_follow_the_names() {
        let names = Names {
            control_subject: "p2.control".into(),
            analyzer_prefix: "p2.analyzer".into(),
            stats_bucket: "p2_stats".into(),
            ..Names::default()
        };
        let region = render_region(DEFAULT_TEMPLATE, &ids(&["7"]), &names).unwrap();
        for wanted in [
            "\"p2.control.7\"",
            "\"p2.analyzer.7 p2.analyzer.7\"",
            "\"p2.analyzer.7.withdrawn\"",
            "\"$KV.p2_stats.analyzer.7.>\"",
            "\"$JS.API.STREAM.INFO.KV_p2_stats\"",
        ] {
            assert!(region.contains(wanted), "no {wanted} in\n{region}");
        }
    }

    #[test]
    fn clashing_or_repeated_ids_are_refused() {
        let names = Names::default();
        assert!(matches!(
            render_region(DEFAULT_TEMPLATE, &ids(&["a", "a"]), &names),
            Err(AuthError::DuplicateId(id)) if id == "a"
        ));
        let err = render_region(DEFAULT_TEMPLATE, &ids(&["web-1", "WEB_1"]), &names).unwrap_err();
        assert!(matches!(err, AuthError::PasswordVarClash { .. }));
        assert!(
            err.to_string().contains("LOGDIST_ANALYZER_WEB_1_PASSWORD"),
            "{err}"
        );
    }

    #[test]
    fn template_errors_name_the_line() {
        let names = Names::default();
        let err = render_region("# header\n{ user: {{usr}} }", &ids(&["1"]), &names).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "template line 2: unknown placeholder {{{{usr}}}} (known: {})",
                PLACEHOLDERS.join(", ")
            )
        );
        let err = render_region("x\n{{id", &ids(&["1"]), &names).unwrap_err();
        assert!(matches!(err, AuthError::UnclosedPlaceholder { line: 2 }));
        assert!(matches!(
            render_region("# only a header\n", &ids(&["1"]), &names),
            Err(AuthError::EmptyTemplate)
        ));
    }

    #[test]
    fn the_region_is_replaced_and_the_rest_kept() {
        let config = "a\n  users: [\n    { user: agent }\n    # BEGIN analyzer users: old\n    old 1\n    # END analyzer users\n  ]\nb\n";
        let region = "    # BEGIN analyzer users: new\n    new\n    # END analyzer users\n";
        assert_eq!(
            replace_region(config, region).unwrap(),
            "a\n  users: [\n    { user: agent }\n    # BEGIN analyzer users: new\n    new\n    # END analyzer users\n  ]\nb\n"
        );
        // Applying it twice changes nothing more.
        let once = replace_region(config, region).unwrap();
        assert_eq!(replace_region(&once, region).unwrap(), once);
        assert!(replace_region("no markers\n", region).is_none());
        assert!(replace_region("# BEGIN analyzer users\nno end\n", region).is_none());
    }

    #[test]
    fn the_repo_config_holds_what_the_generator_writes() {
        // nats-secure.conf ships the users of analyzers 1 and 2, exactly as rendered now.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats-secure.conf");
        let config = std::fs::read_to_string(path).unwrap();
        let region = render_region(DEFAULT_TEMPLATE, &ids(&["1", "2"]), &Names::default()).unwrap();
        assert!(
            config.contains(&region),
            "nats-secure.conf is out of date: run `distributor auth 1 2 --config nats-secure.conf`"
        );
    }
}
