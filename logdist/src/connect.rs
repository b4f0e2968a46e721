//! Connecting to NATS: the connection flags every binary shares (`--nats-url`, credentials, TLS),
//! a first connect that retries with a clear message instead of failing, and counters of the
//! client's connection events (disconnects, reconnects, slow consumers) for stats.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event};
use clap::Args;
use tokio_util::sync::CancellationToken;

/// Default NATS URL of every binary.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to reach and authenticate to NATS.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (e.g. all nodes of a cluster).
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL, value_name = "URL")]
    pub nats_url: String,

    /// NATS credentials file (JWT + nkey seed), for servers in operator mode.
    #[arg(long, env = "NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,

    /// User name for user/password authentication (with --password).
    #[arg(long, env = "NATS_USER", value_name = "USER", requires = "password")]
    pub user: Option<String>,

    /// Password for user/password authentication (with --user). Prefer the env variable: a flag
    /// is visible to other users of the machine in the process list.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,

    /// CA certificate (PEM) to verify the server's TLS certificate; turns TLS on.
    #[arg(long, env = "NATS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS (with --tls-key).
    #[arg(long, env = "NATS_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Client private key (PEM) for mutual TLS (with --tls-cert).
    #[arg(long, env = "NATS_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Prefix of the subjects this client receives replies on (`<prefix>.<random>`). A user
    /// whose permissions allow only its own inbox (e.g. `acked_agent` in nats-secure.conf) sets
    /// it to that prefix, so no other user's replies are readable.
    #[arg(long, env = "NATS_INBOX_PREFIX", value_name = "PREFIX", default_value = DEFAULT_INBOX_PREFIX,
          value_parser = parse_inbox_prefix)]
    pub inbox_prefix: String,
}

/// The NATS clients' usual reply-subject prefix.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// An inbox prefix is one or more subject tokens without wildcards.
fn parse_inbox_prefix(prefix: &str) -> Result<String, String> {
    let valid_token =
        |t: &str| !t.is_empty() && !t.contains(['*', '>']) && !t.chars().any(|c| c.is_whitespace());
    if prefix.split('.').all(valid_token) {
        Ok(prefix.to_string())
    } else {
        Err(format!(
            "{prefix:?} is not a subject prefix: use dot-separated tokens without spaces, '*' or '>' (e.g. _INBOX_agent7)"
        ))
    }
}

impl NatsArgs {
    /// Arguments for a plain connection to `url`, as tests and tools use.
    pub fn url(url: impl Into<String>) -> Self {
        NatsArgs {
            nats_url: url.into(),
            creds: None,
            user: None,
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            inbox_prefix: DEFAULT_INBOX_PREFIX.to_string(),
        }
    }
}

/// Why connecting failed for good (as opposed to a server that is not up yet, which is retried).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("NATS refused the connection to {url} (check --user/--password or --creds)")]
    Auth {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot connect to NATS at {url} (check --nats-url / NATS_URL and the --tls-* flags)")]
    Config {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("{url:?} is not a NATS server URL (check --nats-url / NATS_URL)")]
    BadUrl {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no NATS server URL given (check --nats-url / NATS_URL)")]
    NoUrl,
    #[error("gave up connecting to NATS at {url}: shutdown requested")]
    Cancelled { url: String },
}

/// Counts of the client's connection events, shared with the stats publisher.
#[derive(Debug, Default)]
pub struct ConnectionEvents {
    pub disconnects: AtomicU64,
    /// Reconnections after a disconnect (the first connect is not counted).
    pub reconnects: AtomicU64,
    pub slow_consumer_events: AtomicU64,
    connected_once: std::sync::atomic::AtomicBool,
    /// When the client last reconnected (a few per hour at most: a lock is fine).
    last_reconnect: std::sync::Mutex<Option<Instant>>,
}

impl ConnectionEvents {
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    pub fn slow_consumer_events(&self) -> u64 {
        self.slow_consumer_events.load(Ordering::Relaxed)
    }
    /// When the client last reconnected after a disconnect (`None` before the first one): the
    /// subscriptions of other clients may not all be back on the server for a while after it.
    pub fn last_reconnect(&self) -> Option<Instant> {
        *self
            .last_reconnect
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, event: &Event) {
        match event {
            Event::Connected => {
                if self.connected_once.swap(true, Ordering::Relaxed) {
                    *self
                        .last_reconnect
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("reconnected to NATS");
                } else {
                    tracing::debug!("connected to NATS");
                }
            }
            Event::Disconnected => {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("disconnected from NATS; reconnecting");
            }
            Event::SlowConsumer(sid) => {
                // One event per dropped message: under overload that is thousands a second, so
                // only the 1st, 2nd, 4th, 8th... are logged, each with the total so far.
                let total = self.slow_consumer_events.fetch_add(1, Ordering::Relaxed) + 1;
                if total.is_power_of_two() {
                    tracing::warn!(
                        subscription = sid,
                        total,
                        "slow consumer: messages dropped because this client fell behind"
                    );
                }
            }
            // Closed is the normal end of a client that is shutting down.
            Event::Closed => tracing::debug!("NATS connection closed"),
            other => tracing::info!(event = %other, "NATS connection event"),
        }
    }
}

/// A live connection plus its event counters.
#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    pub events: Arc<ConnectionEvents>,
}

/// How often [`connection_task_stopped`] checks the client.
const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Resolves once `client`'s connection task has stopped for good, which a live client never
/// does: it reconnects by itself for as long as a `Client` exists. async-nats 0.51 ends the task
/// when it panics while reading, as it does on a header value with a bare carriage return from
/// any publisher (nats-io/nats.rs#1612); the process then runs on but receives nothing, and
/// every publish fails. A binary that selects on this can stop with an error instead, so a
/// supervisor restarts it.
///
/// It asks the client for a flush every second: that fails at once, with `SendError`, only
/// when nothing takes the client's commands any more. A flush that waits (the server is gone
/// and the client reconnecting) or fails otherwise is no sign of it.
pub async fn connection_task_stopped(client: &Client) {
    loop {
        tokio::time::sleep(CONNECTION_CHECK_INTERVAL).await;
        if let Err(e) = client.flush().await {
            if e.kind() == async_nats::client::FlushErrorKind::SendError {
                return;
            }
        }
    }
}

/// Messages each subscription buffers in the client by default (the async-nats default): past
/// it the client drops what arrives and reports a slow consumer.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 64 * 1024;

/// Connects as `name`, retrying every second (with a warning naming the URL and the error) while
/// the server cannot be reached, until `shutdown` is cancelled. Once connected, the client
/// reconnects by itself forever. Authentication errors are final.
pub async fn connect(
    args: &NatsArgs,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<Connection, ConnectError> {
    connect_with_capacity(
        args,
        name,
        DEFAULT_SUBSCRIPTION_CAPACITY,
        DEFAULT_READ_BUFFER,
        shutdown,
    )
    .await
}

/// Bytes the client reads from the socket at most at a time by default (the async-nats default,
/// its largest).
pub const DEFAULT_READ_BUFFER: u16 = u16::MAX;

/// [`connect`] with each subscription buffering at most `subscription_capacity` messages in the
/// client: what bounds a process's memory when the server delivers faster than it handles.
/// Messages arriving at a full buffer are dropped and counted as slow-consumer events.
/// `read_buffer` is the most bytes read from the socket at a time: each message the client
/// buffers is a slice of the read buffer it came in, so under overload, where most of a read is
/// dropped and a few messages are kept, every kept message holds a whole read buffer in memory.
pub async fn connect_with_capacity(
    args: &NatsArgs,
    name: &str,
    subscription_capacity: usize,
    read_buffer: u16,
    shutdown: &CancellationToken,
) -> Result<Connection, ConnectError> {
    let events = Arc::new(ConnectionEvents::default());
    let servers = server_addrs(&args.nats_url)?;
    let mut attempt: u32 = 0;
    loop {
        let options = options(args, name, events.clone())
            .await?
            .subscription_capacity(subscription_capacity.max(1))
            .read_buffer_capacity(read_buffer.max(1024));
        match options.connect(servers.as_slice()).await {
            Ok(client) => {
                return Ok(Connection { client, events });
            }
            Err(e) => {
                use async_nats::ConnectErrorKind as Kind;
                match e.kind() {
                    Kind::AuthorizationViolation | Kind::Authentication => {
                        return Err(ConnectError::Auth {
                            url: args.nats_url.clone(),
                            source: e,
                        })
                    }
                    Kind::ServerParse | Kind::Tls => {
                        return Err(ConnectError::Config {
                            url: args.nats_url.clone(),
                            source: e,
                        })
                    }
                    _ => {}
                }
                attempt += 1;
                tracing::warn!(
                    url = %args.nats_url,
                    attempt,
                    error = %e,
                    "cannot reach NATS; retrying in 1 s (is nats-server running? set --nats-url / NATS_URL)"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        return Err(ConnectError::Cancelled { url: args.nats_url.clone() })
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Parses `--nats-url`: one URL or several, comma-separated (the nodes of a cluster).
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
    let addrs: Result<Vec<_>, _> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|source| ConnectError::BadUrl {
                    url: u.to_string(),
                    source,
                })
        })
        .collect();
    let addrs = addrs?;
    if addrs.is_empty() {
        return Err(ConnectError::NoUrl);
    }
    Ok(addrs)
}

async fn options(
    args: &NatsArgs,
    name: &str,
    events: Arc<ConnectionEvents>,
) -> Result<ConnectOptions, ConnectError> {
    let mut options = ConnectOptions::new();
    if let Some(path) = &args.creds {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &args.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options
        .custom_inbox_prefix(&args.inbox_prefix)
        .name(name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let events = events.clone();
            async move { events.record(&event) }
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_several_urls() {
        assert_eq!(server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        let many = server_addrs("nats://a:4222, nats://b:4223,nats://c:4224").unwrap();
        assert_eq!(many.len(), 3);
        assert_eq!(many[1].port(), 4223);
        assert!(server_addrs("").is_err());
        let err = server_addrs("nats://a:4222,nats://b:notaport").unwrap_err();
        assert!(err.to_string().contains("nats://b:notaport"), "{err}");
    }

    #[test]
    fn inbox_prefixes() {
        for good in ["_INBOX", "_INBOX_acked_agent", "inbox.agent-7"] {
            assert_eq!(parse_inbox_prefix(good).as_deref(), Ok(good));
        }
        for bad in ["", "a..b", "_INBOX.>", "in*", "two words", "trailing."] {
            let err = parse_inbox_prefix(bad).unwrap_err();
            assert!(err.contains("not a subject prefix"), "{bad:?}: {err}");
        }
    }
}
