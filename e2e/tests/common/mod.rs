//! Shared by the e2e tests: a real nats-server running the `authorization` block of the repo's
//! `nats-secure.conf`, clients that log for each role, and a record of the server's error events
//! (permission violations) as a client sees them.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{Client, ConnectOptions, Event, ServerError};
use logdist_testing::{workspace_root, NatsServer, Process};

/// The roles of `nats-secure.conf`: user name and the env variable its password comes from.
/// Analyzers have one user per id (`distributor auth` writes them; the repo's file holds ids 1
/// and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    AckedAgent,
    Analyzer(&'static str),
    Distributor,
    Viewer,
    Loadtest,
}

impl Role {
    /// The roles of the repo's `nats-secure.conf`.
    pub const ALL: [Role; 7] = [
        Role::Agent,
        Role::AckedAgent,
        Role::Analyzer("1"),
        Role::Analyzer("2"),
        Role::Distributor,
        Role::Viewer,
        Role::Loadtest,
    ];

    pub fn user(self) -> String {
        match self {
            Role::Agent => "agent".into(),
            Role::AckedAgent => "acked_agent".into(),
            Role::Analyzer(id) => format!("analyzer-{id}"),
            Role::Distributor => "distributor".into(),
            Role::Viewer => "viewer".into(),
            Role::Loadtest => "loadtest".into(),
        }
    }

    /// The server-side env variable holding this role's password.
    pub fn password_var(self) -> String {
        format!(
            "LOGDIST_{}_PASSWORD",
            self.user().to_uppercase().replace('-', "_")
        )
    }

    /// The inbox prefix the role's permissions allow, when it is not async-nats' default.
    pub fn inbox_prefix(self) -> Option<String> {
        match self {
            Role::AckedAgent => Some("_INBOX_acked_agent".into()),
            Role::Analyzer(id) => Some(format!("_INBOX_analyzer_{id}")),
            _ => None,
        }
    }
}

/// Path of a file at the workspace root.
pub fn repo_file(name: &str) -> PathBuf {
    workspace_root().join(name)
}

/// A password for env variable `var`, different in every test process.
pub fn password(var: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{}-{nanos}", var.to_lowercase(), std::process::id())
}

/// The `authorization { … }` block of a nats-server config, verbatim (braces counted outside
/// `#` comments).
pub fn authorization_block(config: &str) -> String {
    let start = config
        .lines()
        .position(|l| l.trim_start().starts_with("authorization {"))
        .expect("config has an `authorization {` block");
    let mut depth = 0i32;
    let mut block = Vec::new();
    for line in config.lines().skip(start) {
        let code = line.split('#').next().unwrap_or_default();
        depth += code.matches('{').count() as i32;
        depth -= code.matches('}').count() as i32;
        block.push(line);
        if depth == 0 {
            return block.join("\n");
        }
    }
    panic!("unbalanced braces in the authorization block");
}

/// A nats-server whose users and permissions are those of the repo's `nats-secure.conf`.
pub struct SecureServer {
    pub server: NatsServer,
    /// Password by env variable name.
    passwords: Vec<(String, String)>,
}

impl SecureServer {
    /// Starts nats-server with the `authorization` block of `nats-secure.conf`, each `$LOGDIST_…`
    /// password reference replaced by a fresh password (what nats-server does with the env).
    pub fn start() -> SecureServer {
        SecureServer::start_with_extra("")
    }

    /// Like [`SecureServer::start`], with more config lines after the authorization block.
    pub fn start_with_extra(extra: &str) -> SecureServer {
        let (block, passwords) = secure_authorization();
        let server = NatsServer::with_config(&format!("{block}\n{extra}"));
        SecureServer { server, passwords }
    }

    /// Like [`SecureServer::start`], with the analyzer users of `ids` written into a copy of
    /// `nats-secure.conf` by `distributor auth <ids> --config <copy>`, as an operator does.
    pub fn start_with_analyzers(ids: &[&str]) -> SecureServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("nats-secure.conf");
        std::fs::copy(repo_file("nats-secure.conf"), &copy).expect("copy nats-secure.conf");
        let mut args = vec!["auth"];
        args.extend_from_slice(ids);
        args.push("--config");
        args.push(copy.to_str().expect("utf-8 path"));
        let out = std::process::Command::new(logdist_testing::binary("distributor"))
            .args(&args)
            .output()
            .expect("run distributor auth");
        assert!(
            out.status.success(),
            "distributor auth: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = std::fs::read_to_string(&copy).expect("read the written config");
        let (block, passwords) = with_passwords(authorization_block(&config));
        let server = NatsServer::with_config(&block);
        SecureServer { server, passwords }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn password(&self, role: Role) -> &str {
        let var = role.password_var();
        &self
            .passwords
            .iter()
            .find(|(v, _)| *v == var)
            .unwrap_or_else(|| panic!("the config has no user {}", role.user()))
            .1
    }

    /// `NATS_USER`/`NATS_PASSWORD` (and `NATS_INBOX_PREFIX` where the role has its own) for a
    /// child process of `role`.
    pub fn env(&self, role: Role) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("NATS_USER", role.user()),
            ("NATS_PASSWORD", self.password(role).to_string()),
        ];
        if let Some(prefix) = role.inbox_prefix() {
            env.push(("NATS_INBOX_PREFIX", prefix));
        }
        env
    }

    /// Spawns binary `name` with `args`, as `role`.
    pub fn spawn(&self, name: &str, args: &[&str], role: Role) -> Process {
        let env = self.env(role);
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Process::spawn(name, args, &refs)
    }

    /// Connects as `role` (on its own inbox prefix, if it has one), recording the server's
    /// errors.
    pub async fn connect(&self, role: Role) -> (Client, ServerErrors) {
        let errors = ServerErrors::default();
        let mut options = errors
            .options()
            .user_and_password(role.user(), self.password(role).into());
        if let Some(prefix) = role.inbox_prefix() {
            options = options.custom_inbox_prefix(prefix);
        }
        let client = options
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect as {}: {e}", role.user()));
        (client, errors)
    }

    /// Lines of the server log that report a permission violation (`Publish Violation`,
    /// `Subscription Violation`).
    pub fn violations_in_log(&self) -> Vec<String> {
        self.server
            .log()
            .lines()
            .filter(|l| l.contains(" Violation - "))
            .map(str::to_string)
            .collect()
    }
}

/// An authorization block with literal passwords, and those passwords by env variable.
type Authorization = (String, Vec<(String, String)>);

/// The authorization block of `nats-secure.conf` with literal passwords, and those passwords.
pub fn secure_authorization() -> Authorization {
    static CACHE: Mutex<Option<Authorization>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(|| {
            let config = std::fs::read_to_string(repo_file("nats-secure.conf"))
                .expect("read nats-secure.conf");
            let authorization = with_passwords(authorization_block(&config));
            let vars: Vec<&str> = authorization.1.iter().map(|(v, _)| v.as_str()).collect();
            for role in Role::ALL {
                assert!(
                    vars.contains(&role.password_var().as_str()),
                    "nats-secure.conf has no ${}",
                    role.password_var()
                );
            }
            authorization
        })
        .clone()
}

/// `block` with every `$LOGDIST_…_PASSWORD` reference replaced by a fresh password (what
/// nats-server does with its environment), and those passwords.
fn with_passwords(mut block: String) -> Authorization {
    let mut passwords = Vec::new();
    for var in password_vars(&block) {
        let pw = password(&var);
        block = block.replace(&format!("${var}"), &format!("{pw:?}"));
        passwords.push((var, pw));
    }
    (block, passwords)
}

/// The `$LOGDIST_…_PASSWORD` variables a config refers to, outside comments, longest first (so
/// replacing one never cuts into another).
pub fn password_vars(config: &str) -> Vec<String> {
    let mut vars: Vec<String> = Vec::new();
    for line in config.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("$LOGDIST_") {
            let name: String = rest[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + 1 + name.len()..];
            if name.ends_with("_PASSWORD") && !vars.contains(&name) {
                vars.push(name);
            }
        }
    }
    vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
    vars
}

/// The server errors (`-ERR`) one client received, as async-nats reports them in its events.
#[derive(Clone, Default)]
pub struct ServerErrors(Arc<Mutex<Vec<String>>>);

impl ServerErrors {
    /// Connect options that record server errors here. Requests time out after 2 s, so a request
    /// the server silently drops (a denied publish) fails fast.
    pub fn options(&self) -> ConnectOptions {
        let errors = self.clone();
        ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |event| {
                let errors = errors.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let text = match e {
                            ServerError::Other(text) => text,
                            other => other.to_string(),
                        };
                        errors.0.lock().unwrap().push(text);
                    }
                }
            })
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) for a permission violation whose text names `subject`, e.g.
    /// `permissions violation for publish to "logdist.control"`. `kind` is `publish` or
    /// `subscription`.
    pub async fn expect_violation(&self, kind: &str, subject: &str) {
        let wanted = format!("permissions violation for {kind} to \"{subject}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self
                .all()
                .iter()
                .any(|e| e.to_lowercase().contains(&wanted.to_lowercase()))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no server error `{wanted}` within 5 s; errors seen: {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `nats-server -c <config> -t` with exactly `env` as the password variables.
pub fn check_config(config: &Path, env: &[(String, String)]) -> std::process::Output {
    let mut command = std::process::Command::new(logdist_testing::nats_server_bin());
    command.arg("-c").arg(config).arg("-t");
    for role in Role::ALL {
        command.env_remove(role.password_var());
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run nats-server -t")
}

/// Every role's password variable, set to a fresh password.
pub fn password_env() -> Vec<(String, String)> {
    Role::ALL
        .iter()
        .map(|r| (r.password_var(), password(&r.password_var())))
        .collect()
}
