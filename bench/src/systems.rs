//! The systems under test, each started fresh for every run as child processes on 127.0.0.1
//! (port 0, the address read from the process's "… listening on ADDR" line) and killed when the
//! [`Running`] handle drops, whatever happened in between.
//!
//! - `confab`: `target/release/confab` with `CONFAB__*` settings, a fresh data directory,
//!   persistence on (every message fsynced before its acknowledgement).
//! - `confab-base`: the same with another build of confab (`--compare-bin`, which
//!   `scripts/bench --compare REV` builds from an earlier commit), so a change shows as a ratio
//!   measured in the same invocation.
//! - `relay`: `target/release/confab-relay`.
//! - `socketio`: `node bench/peers/socketio/server.js`, one process, in-memory adapter.
//! - `socketio-2node`: two such processes joined by `@socket.io/redis-adapter` through a
//!   `redis-server` started here on a spare port. CPU and memory are summed over all three.
//! - `confab-2node`: two `confab` nodes in cluster mode, bridged by such a `redis-server`, on a
//!   MongoDB database of their own (`--mongodb-uri`, else an `nx-27017` emulator started here,
//!   behind `tests/support/txn_proxy.py`, which gives the emulator's transactions the isolation
//!   a real MongoDB has).
//!   CPU and memory are summed over the two nodes and Redis, as for `socketio-2node`; the
//!   database's are not (it is storage, like the single node's embedded store files).
//! - `confab-mongo`: one `confab` node (no cluster) on a MongoDB set up as for `confab-2node`:
//!   the baseline that tells what the second node and Redis cost, apart from what the storage
//!   backend costs.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use crate::wire::{Dialect, Wire};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Confab,
    ConfabBase,
    Relay,
    SocketIo,
    SocketIo2,
    Confab2,
    ConfabMongo,
}

impl System {
    pub const ALL: [System; 7] = [
        System::Relay,
        System::SocketIo,
        System::SocketIo2,
        System::ConfabBase,
        System::Confab,
        System::Confab2,
        System::ConfabMongo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Confab => "confab",
            System::ConfabBase => "confab-base",
            System::Relay => "relay",
            System::SocketIo => "socketio",
            System::SocketIo2 => "socketio-2node",
            System::Confab2 => "confab-2node",
            System::ConfabMongo => "confab-mongo",
        }
    }

    pub fn parse(s: &str) -> Option<System> {
        System::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn wire(self) -> Wire {
        match self {
            System::Confab | System::ConfabBase | System::Confab2 | System::ConfabMongo => Wire::Confab,
            System::Relay => Wire::Relay,
            System::SocketIo | System::SocketIo2 => Wire::SocketIo,
        }
    }
}

/// Where the programs are and where logs go.
#[derive(Debug, Clone)]
pub struct Env {
    pub confab_bin: PathBuf,
    /// The build `confab-base` runs (`--compare-bin`).
    pub compare_bin: Option<PathBuf>,
    pub relay_bin: PathBuf,
    pub socketio_dir: PathBuf,
    pub node: String,
    pub redis_server: String,
    /// Per-run server logs (stderr), and confab's data directories.
    pub work_dir: PathBuf,
    /// confab's token secret for the run (the generator mints tokens with it).
    pub secret: String,
    /// MongoDB for `confab-2node`; when absent, `nx_27017` is started for the run.
    pub mongodb_uri: Option<String>,
    /// The `nx-27017` MongoDB emulator (a wire-protocol server over SQLite).
    pub nx_27017: PathBuf,
}

/// Settings a scenario needs from the server.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// The largest group the scenario creates.
    pub max_members: usize,
}

/// A started system. Dropping it kills every process and removes its data.
pub struct Running {
    pub system: System,
    /// The nodes' WebSocket addresses (two for `socketio-2node`).
    pub addrs: Vec<SocketAddr>,
    /// Every process of the system, for CPU and memory.
    pub pids: Vec<u32>,
    pub dialect: Dialect,
    children: Vec<Child>,
    data_dir: Option<PathBuf>,
}

impl Running {
    /// Processes that exited while they should be serving.
    pub fn dead(&mut self) -> Vec<String> {
        self.children
            .iter_mut()
            .filter_map(|c| match c.try_wait() {
                Ok(Some(status)) => Some(format!("pid {} exited: {status}", c.id())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Kills the children if starting the system fails half-way: the measured ones (`.0`) and the
/// ones only stopped with the run (`.1`).
struct Guard(Vec<Child>, Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in self.0.iter_mut().chain(self.1.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a `redis-server` on a spare port (measured with the system); returns its URL.
fn start_redis(env: &Env, log: &Path, guard: &mut Guard) -> anyhow::Result<String> {
    let port = free_port()?;
    let mut cmd = Command::new(&env.redis_server);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--protected-mode", "no", "--daemonize", "no", "--logfile"])
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    guard.0.push(cmd.spawn().with_context(|| format!("starting {}", env.redis_server))?);
    wait_port(port)?;
    Ok(format!("redis://127.0.0.1:{port}"))
}

/// `bin serve` (a confab build) with the settings every run uses; its embedded store (if used)
/// in `dir`.
fn confab_command(env: &Env, bin: &Path, tuning: Tuning, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("CONFAB__SERVER__BIND", "127.0.0.1:0")
        .env("CONFAB__SERVER__MAX_FRAME_BYTES", "1048576")
        .env("CONFAB__STORAGE__PATH", dir)
        .env("CONFAB__AUTH__SECRET", &env.secret)
        .env("CONFAB__GROUPS__MAX_MEMBERS", (tuning.max_members + 1).max(10_000).to_string())
        .env("CONFAB__SESSION__OUTBOUND_QUEUE", "4096")
        .env("CONFAB__SESSION__MAX_INFLIGHT_REQUESTS", "1024")
        .env("CONFAB__LOG__LEVEL", "warn")
        .env_remove("RUST_LOG");
    // The load comes from one address and a few processes standing for thousands of people: the
    // rate limits, made for people, are off (0 turns each off).
    for limit in [
        "REQUESTS_PER_CONN_PER_SEC",
        "SENDS_PER_CONN_PER_SEC",
        "SENDS_PER_USER_PER_SEC",
        "GROUP_CREATES_PER_USER_PER_HOUR",
        "GROUP_ADDS_PER_USER_PER_HOUR",
        "CONNECTIONS_PER_IP_PER_SEC",
        "MAX_CONNECTIONS_PER_IP",
    ] {
        cmd.env(format!("CONFAB__LIMITS__{limit}"), "0");
    }
    cmd
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns `cmd` and waits for the stdout line `<prefix> ADDR`.
fn spawn_listening(mut cmd: Command, prefix: &'static str, log: &Path) -> anyhow::Result<(Child, SocketAddr)> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining stdout for the life of the child so it never blocks on a full pipe.
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                if let Some(t) = tx.take() {
                    let _ = t.send(rest.trim().to_string());
                }
            }
        }
    });
    let addr = match rx.recv_timeout(START_TIMEOUT) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String =
                tail.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            bail!("{:?} did not print `{prefix} ADDR` (log {}):\n{tail}", cmd.get_program(), log.display());
        }
    };
    let addr = addr.parse().with_context(|| format!("bad address {addr:?}"))?;
    Ok((child, addr))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// Starts an `nx-27017` MongoDB emulator with its data in `dir`, behind the test suite's
/// transaction proxy; returns the proxy's URI.
fn start_nx_27017(env: &Env, dir: &Path, log: &Path, guard: &mut Guard) -> anyhow::Result<String> {
    let port = free_port()?;
    let mut cmd = Command::new(&env.nx_27017);
    cmd.args(["--host", "127.0.0.1", "-p", &port.to_string(), "--data-dir"])
        .arg(dir.join("mongo"))
        .arg("--pid-file")
        .arg(dir.join("nx.pid"))
        .arg("--log-file")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {} (or pass --mongodb-uri)", env.nx_27017.display()))?;
    guard.1.push(child);
    wait_port(port)?;
    let python = env.nx_27017.with_file_name("python");
    let proxy_port = free_port()?;
    let mut cmd = Command::new(&python);
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/support/txn_proxy.py"))
        .args([proxy_port.to_string(), "127.0.0.1".into(), port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    guard.1.push(cmd.spawn().with_context(|| format!("starting {}", python.display()))?);
    wait_port(proxy_port)?;
    Ok(format!("mongodb://127.0.0.1:{proxy_port}"))
}

/// Starts `system` for one run; `tag` names its logs.
pub fn start(system: System, env: &Env, tuning: Tuning, tag: &str) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&env.work_dir)?;
    let log = |what: &str| env.work_dir.join(format!("{tag}.{what}.log"));
    let dialect = Dialect { wire: system.wire(), secret: env.secret.clone() };
    let mut guard = Guard(Vec::new(), Vec::new());
    let mut addrs = Vec::new();
    let mut data_dir = None;
    match system {
        System::Confab | System::ConfabBase => {
            let bin = match system {
                System::ConfabBase => {
                    env.compare_bin.as_deref().ok_or_else(|| anyhow!("confab-base needs --compare-bin"))?
                }
                _ => env.confab_bin.as_path(),
            };
            let dir = std::env::temp_dir().join(format!("confab-bench-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let cmd = confab_command(env, bin, tuning, &dir);
            data_dir = Some(dir);
            let (child, addr) = spawn_listening(cmd, "confab listening on", &log("confab"))?;
            guard.0.push(child);
            addrs.push(addr);
        }
        System::Confab2 | System::ConfabMongo => {
            let cluster = system == System::Confab2;
            let redis_url = if cluster { Some(start_redis(env, &log("redis"), &mut guard)?) } else { None };
            let dir = std::env::temp_dir().join(format!("confab-bench-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            data_dir = Some(dir.clone());
            let mongodb_uri = match &env.mongodb_uri {
                Some(u) => u.clone(),
                None => start_nx_27017(env, &dir, &log("nx-27017"), &mut guard)?,
            };
            let database = format!("confab_bench_{}_{}", std::process::id(), tag.replace(['-', '/', '.'], "_"));
            for i in 0..(if cluster { 2 } else { 1 }) {
                let mut cmd = confab_command(env, &env.confab_bin, tuning, &dir.join(format!("n{i}")));
                cmd.env("CONFAB__STORAGE__BACKEND", "mongodb")
                    .env("CONFAB__STORAGE__MONGODB__URI", &mongodb_uri)
                    .env("CONFAB__STORAGE__MONGODB__DATABASE", &database);
                if let Some(redis_url) = &redis_url {
                    cmd.env("CONFAB__CLUSTER__ENABLED", "true")
                        .env("CONFAB__CLUSTER__NODE_ID", format!("bench{i}"))
                        .env("CONFAB__CLUSTER__REDIS_URL", redis_url);
                }
                let (child, addr) = spawn_listening(cmd, "confab listening on", &log(&format!("confab{i}")))?;
                guard.0.push(child);
                addrs.push(addr);
            }
        }
        System::Relay => {
            let mut cmd = Command::new(&env.relay_bin);
            cmd.args(["--bind", "127.0.0.1:0"]);
            let (child, addr) = spawn_listening(cmd, "relay listening on", &log("relay"))?;
            guard.0.push(child);
            addrs.push(addr);
        }
        System::SocketIo | System::SocketIo2 => {
            let script = env.socketio_dir.join("server.js");
            if !env.socketio_dir.join("node_modules").join("socket.io").exists() {
                bail!(
                    "{} has no node_modules: run `npm install` there (scripts/bench does)",
                    env.socketio_dir.display()
                );
            }
            let mut redis_url = None;
            if system == System::SocketIo2 {
                redis_url = Some(start_redis(env, &log("redis"), &mut guard)?);
            }
            let nodes = if system == System::SocketIo2 { 2 } else { 1 };
            for i in 0..nodes {
                let mut cmd = Command::new(&env.node);
                cmd.arg(&script).env("PORT", "0").env("HOST", "127.0.0.1");
                if let Some(u) = &redis_url {
                    cmd.env("REDIS_URL", u);
                }
                let (child, addr) = spawn_listening(cmd, "socketio listening on", &log(&format!("node{i}")))?;
                guard.0.push(child);
                addrs.push(addr);
            }
        }
    }
    let mut children = std::mem::take(&mut guard.0);
    let pids = children.iter().map(Child::id).collect();
    children.append(&mut guard.1);
    Ok(Running { system, addrs, pids, dialect, children, data_dir })
}
