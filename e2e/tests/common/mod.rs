//! Shared by the e2e tests: a real nats-server running the `authorization` block of the repo's
//! `nats-secure.conf`, clients that log for each role, and a record of the server's error events
//! (permission violations) as a client sees them.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{Client, ConnectOptions, Event, ServerError};
use logdist_testing::{workspace_root, NatsServer};

/// The roles of `nats-secure.conf`: user name and the env variable its password comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    AckedAgent,
    Analyzer,
    Distributor,
    Viewer,
    Loadtest,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Agent,
        Role::AckedAgent,
        Role::Analyzer,
        Role::Distributor,
        Role::Viewer,
        Role::Loadtest,
    ];

    pub fn user(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::AckedAgent => "acked_agent",
            Role::Analyzer => "analyzer",
            Role::Distributor => "distributor",
            Role::Viewer => "viewer",
            Role::Loadtest => "loadtest",
        }
    }

    /// The server-side env variable holding this role's password.
    pub fn password_var(self) -> String {
        format!("LOGDIST_{}_PASSWORD", self.user().to_uppercase())
    }
}

/// Path of a file at the workspace root.
pub fn repo_file(name: &str) -> PathBuf {
    workspace_root().join(name)
}

/// A password for `role`, different in every test process.
pub fn password(role: Role) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{}-{nanos}", role.user(), std::process::id())
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
    passwords: Vec<(Role, String)>,
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

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn password(&self, role: Role) -> &str {
        &self
            .passwords
            .iter()
            .find(|(r, _)| *r == role)
            .expect("every role has a password")
            .1
    }

    /// `NATS_USER`/`NATS_PASSWORD` for a child process of `role`.
    pub fn env(&self, role: Role) -> [(&'static str, String); 2] {
        [
            ("NATS_USER", role.user().to_string()),
            ("NATS_PASSWORD", self.password(role).to_string()),
        ]
    }

    /// Connects as `role`, recording the server's errors.
    pub async fn connect(&self, role: Role) -> (Client, ServerErrors) {
        let errors = ServerErrors::default();
        let client = errors
            .options()
            .user_and_password(role.user().into(), self.password(role).into())
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

/// An authorization block with literal passwords, and those passwords.
type Authorization = (String, Vec<(Role, String)>);

/// The authorization block of `nats-secure.conf` with literal passwords, and those passwords.
pub fn secure_authorization() -> Authorization {
    static CACHE: Mutex<Option<Authorization>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(|| {
            let config = std::fs::read_to_string(repo_file("nats-secure.conf"))
                .expect("read nats-secure.conf");
            let mut block = authorization_block(&config);
            let mut passwords = Vec::new();
            for role in Role::ALL {
                let reference = format!("${}", role.password_var());
                assert!(
                    block.contains(&reference),
                    "nats-secure.conf has no {reference}"
                );
                let pw = password(role);
                block = block.replace(&reference, &format!("{pw:?}"));
                passwords.push((role, pw));
            }
            (block, passwords)
        })
        .clone()
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
        .map(|r| (r.password_var(), password(*r)))
        .collect()
}
