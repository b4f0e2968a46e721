//! Test support of the logdist workspace, a dev-dependency of every crate's tests (never part of
//! the production library): real `nats-server` processes on free loopback ports, a 3-node
//! cluster, the workspace's own binaries as child processes ([`Process`], started with typed
//! options: [`DistributorOptions`], [`AnalyzerOptions`]), packet builders ([`packet`],
//! [`message`], [`seq_headers`]; raw `HPUB`s: [`publish_raw`]), readers of the stats and
//! membership buckets ([`distributor_stats`], [`analyzer_stats`], [`member_record`]) and bounded
//! waits. Nothing is mocked.
//!
//! The server binary is found through `NATS_SERVER_BIN`, then `<workspace>/.tools/bin/nats-server`
//! (what `make tools` installs), then `PATH`. Every wait is bounded, by [`WAIT`] unless a test
//! says otherwise: a server that does not accept connections within it fails the test with the
//! tail of its log.

mod options;
mod packets;
mod stats;

pub use options::{
    agent_sim_report, AgentSimOptions, AnalyzerOptions, Delivery, DistributorOptions,
};
pub use packets::{message, packet, publish_raw, seq_headers};
pub use stats::{
    analyzer_stats, distributor_stats, member_record, membership_bucket, stats_bucket,
    wait_distributor_stats,
};

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The bound of every wait in the tests (a server's start, a process's exit, a counter to reach
/// a value) unless a test says otherwise: generous, because two shared cores running debug
/// builds are slow, and a wait ends as soon as what it waits for happens.
pub const WAIT: Duration = Duration::from_secs(30);

/// Name of the at-least-once stream (`distributor run --stream`'s default).
pub const STREAM: &str = "LOGS";
/// Name of the at-least-once consumer (`distributor run --consumer`'s default).
pub const CONSUMER: &str = "distributors";

/// Analyzer ids and weights of the three-analyzer pipelines.
pub const THREE_ANALYZERS: [(&str, f64); 3] = [("1", 0.5), ("2", 0.3), ("3", 0.2)];

/// Path of the nats-server binary, or a panic that says how to get one.
pub fn nats_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NATS_SERVER_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    let tools = workspace_root().join(".tools/bin/nats-server");
    if tools.is_file() {
        return tools;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no nats-server binary found: run `make tools` (installs it into .tools/bin), \
         or set NATS_SERVER_BIN, or put nats-server on PATH"
    );
}

/// Root of the cargo workspace (the folder with the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("logdist-testing crate sits inside the workspace")
        .to_path_buf()
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
///
/// Taken below the kernel's ephemeral range when there is room: a port from that range can be
/// handed to an outgoing connection (a cluster node dialling its routes, a test client) between
/// our release and nats-server's bind, which once failed a cluster start with "address already
/// in use". Below the range only another test's pick can collide, and picks are random.
pub fn free_port() -> u16 {
    static PICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if ephemeral_low > LOW + 1000 {
        let span = u64::from(ephemeral_low - LOW);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        for _ in 0..200 {
            let n = PICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // SplitMix64 step: a different, well-spread port for every pick.
            let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let port = LOW + (z % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// One nats-server process with JetStream, its store in a temp dir. Killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    extra_config: String,
    name: String,
}

impl NatsServer {
    /// Starts a server with JetStream on a free loopback port.
    pub fn start() -> NatsServer {
        NatsServer::with_config("")
    }

    /// Starts a server whose config file is the harness's lines (listen address, JetStream store)
    /// followed by `extra_config` (e.g. an `authorization { … }` block or `max_payload`).
    pub fn with_config(extra_config: &str) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("logdist-nats-")
            .tempdir()
            .expect("create temp dir");
        let mut server = NatsServer {
            child: None,
            port: 0,
            dir,
            extra_config: extra_config.to_string(),
            name: "logdist-test".to_string(),
        };
        // A port found free may be taken before the server binds it: try a few.
        for attempt in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) if attempt < 4 => eprintln!("nats-server did not start ({e}); retrying"),
                Err(e) => panic!("nats-server did not start: {e}"),
            }
        }
        unreachable!()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (for its CPU figures in the bench).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Folder holding the config, the log and the JetStream store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server abruptly (SIGKILL), as a crash would. The store is kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if running and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        // The old process has exited; its port may linger briefly in the kernel.
        let deadline = Instant::now() + WAIT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("nats-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    fn config_text(&self) -> String {
        let store = self.dir.path().join("jetstream");
        format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}\n}}\n{extra}\n",
            name = self.name,
            port = self.port,
            store = store.display().to_string(),
            extra = self.extra_config,
        )
    }

    fn spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("server.conf");
        std::fs::write(&conf, self.config_text()).map_err(|e| e.to_string())?;
        let log = self.dir.path().join("server.log");
        let child = spawn_server(&conf, &log)?;
        self.child = Some(child);
        wait_accepting(self.port, self.child.as_mut().unwrap(), &log)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_server(conf: &Path, log: &Path) -> Result<Child, String> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    Command::new(nats_server_bin())
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", nats_server_bin().display()))
}

/// Waits until the server on `port` sends its INFO line, or the process exits, or time runs out.
fn wait_accepting(port: u16, child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "nats-server exited with {status}; log:\n{}",
                tail(log)
            ));
        }
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "nats-server did not accept connections on port {port} within {WAIT:?}; log:\n{}",
                tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A cluster of nats-server nodes with JetStream, on loopback ports. Killed on drop.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    _dir: TempDir,
}

struct ClusterNode {
    child: Option<Child>,
    client_port: u16,
    conf: PathBuf,
    log: PathBuf,
}

impl NatsCluster {
    /// Starts `size` nodes (3 for JetStream replicas 3) fully routed to each other, and waits
    /// until every node accepts clients. Call [`NatsCluster::wait_jetstream_ready`] before
    /// creating streams.
    pub fn start(size: usize) -> NatsCluster {
        let dir = tempfile::Builder::new()
            .prefix("logdist-cluster-")
            .tempdir()
            .expect("create temp dir");
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..size {
            let store = dir.path().join(format!("n{i}-js"));
            let conf_text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\njetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: logdist-test\n  listen: 127.0.0.1:{cluster}\n  routes: [{routes}]\n}}\n",
                client = client_ports[i],
                cluster = cluster_ports[i],
                store = store.display().to_string(),
                routes = routes.join(", "),
            );
            let conf = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&conf, conf_text).expect("write node config");
            nodes.push(ClusterNode {
                child: None,
                client_port: client_ports[i],
                conf,
                log: dir.path().join(format!("n{i}.log")),
            });
        }
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = spawn_server(&node.conf, &node.log).unwrap_or_else(|e| panic!("node {i}: {e}"));
        node.child = Some(child);
        wait_accepting(node.client_port, node.child.as_mut().unwrap(), &node.log)
            .unwrap_or_else(|e| panic!("node {i}: {e}"));
    }

    /// URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// All node URLs, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with its store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_node(i);
    }

    /// Waits (bounded) until JetStream answers on node `i` with a meta leader elected.
    pub async fn wait_jetstream_ready(&self, i: usize) {
        let client = async_nats::connect(self.url(i))
            .await
            .expect("connect to node");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if js.query_account().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "JetStream cluster not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Path of one of the workspace's binaries (`distributor`, `analyzer`, `agent-sim`), built first
/// with `cargo build --bin <name>` (once per name and test process) so a test never runs a stale
/// binary. Inside `cargo test --workspace` the build is already done and this is a no-op.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace_root())
            .args(["build", "--quiet", "--bin", name]);
        // Cargo sets these for the running test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …). Some
        // build scripts (ring's) rerun when they change, so passing them on would rebuild the
        // TLS stack here and again at the next plain `cargo test`, every time.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|prefix| key.starts_with(prefix))
                || key == "CARGO_TARGET_TMPDIR"
            {
                command.env_remove(key.as_ref());
            }
        }
        let status = command.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
        built.push(name.to_string());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// `--ingest-buffer` of the distributors that [`Process::spawn`] starts: the NATS client's own
/// default, what every distributor buffered before the flag existed.
pub const TEST_INGEST_BUFFER: usize = 65_536;

/// A child process of one of the workspace's binaries; its stdout and stderr go to files, and it
/// is killed on drop.
pub struct Process {
    child: Option<tokio::process::Child>,
    dir: TempDir,
    name: String,
}

impl Process {
    /// Starts `binary(name)` with `args` and extra environment variables. `RUST_LOG` defaults to
    /// `info` so the logs tell what happened when a test fails.
    ///
    /// Tests run debug builds, several times slower than release: a burst that a release
    /// distributor routes as it arrives piles up in a debug one. So distributors started here
    /// buffer up to [`TEST_INGEST_BUFFER`] packets (`DISTRIBUTOR_INGEST_BUFFER`, which `envs` or
    /// an `--ingest-buffer` flag override); `distributor/tests/overload.rs` tests the bound.
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Process {
        let buffer = TEST_INGEST_BUFFER.to_string();
        let mut all = vec![("DISTRIBUTOR_INGEST_BUFFER", buffer.as_str())];
        all.extend_from_slice(envs);
        Process::spawn_at(&binary(name), args, &all)
    }

    /// Like [`Process::spawn`], for a binary at `path` (e.g. a release build for benchmarks).
    pub fn spawn_at(path: &Path, args: &[&str], envs: &[(&str, &str)]) -> Process {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = name.as_str();
        let dir = tempfile::Builder::new()
            .prefix(&format!("logdist-{name}-"))
            .tempdir()
            .expect("create temp dir");
        let stdout = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut command = tokio::process::Command::new(path);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            child: Some(child),
            dir,
            name: name.to_string(),
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// What the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// What the process logged on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Sends a signal (`libc`-free: through the `kill` command).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.id() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }

    /// SIGKILL, as a crash would, and reap the process.
    pub async fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill().await;
        }
    }

    /// Waits for the process to exit, at most `timeout`; panics with its logs otherwise.
    pub async fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("process already reaped");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then wait for a clean exit (bounded).
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait(timeout).await
    }
}

/// Keys of KV `bucket` now; empty when the bucket cannot be read (not created yet, server down).
pub async fn kv_keys(js: &async_nats::jetstream::Context, bucket: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let Ok(kv) = js.get_key_value(bucket).await else {
        return Vec::new();
    };
    let Ok(keys) = kv.keys().await else {
        return Vec::new();
    };
    keys.try_collect().await.unwrap_or_default()
}

/// Waits (at most `timeout`) until exactly `n` analyzers are in the default membership bucket,
/// i.e. a distributor has heard them and mirrored them: the pipeline is ready to route to them.
pub async fn wait_for_members(url: &str, n: usize, timeout: Duration) {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    wait_members_within(&async_nats::jetstream::new(client), n, timeout).await;
}

/// [`wait_for_members`] on a JetStream context the test already has, bounded by [`WAIT`].
pub async fn wait_members(js: &async_nats::jetstream::Context, n: usize) {
    wait_members_within(js, n, WAIT).await;
}

async fn wait_members_within(js: &async_nats::jetstream::Context, n: usize, timeout: Duration) {
    let bucket = logdist::protocol::names::DEFAULT_MEMBERSHIP_BUCKET;
    wait_until(&format!("{n} analyzers in KV {bucket}"), timeout, || {
        let js = js.clone();
        async move { kv_keys(&js, bucket).await.len() == n }
    })
    .await;
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; for states that publish no
/// event (a KV value, a counter in another process). Panics with `what` on time-out.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
