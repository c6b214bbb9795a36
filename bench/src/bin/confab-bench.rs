//! `confab-bench`: runs the benchmark suite of issue 3 and writes `target/bench/results.jsonl`.
//! Usually started by `scripts/bench`, which builds everything, installs socket.io and raises
//! the open-file limit first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Parser;

use confab_bench::case::{Mode, Plan, Scenario};
use confab_bench::suite::{self, Options};
use confab_bench::systems::{Env, System};

/// Load generator and benchmark runner: confab vs a bare actix-ws relay vs socket.io.
#[derive(Parser)]
#[command(name = "confab-bench", version, about, long_about = None)]
struct Cli {
    /// Toy sizes and short windows: checks the harness end to end in under two minutes.
    #[arg(long)]
    quick: bool,
    /// Systems to run, comma-separated (confab, relay, socketio, socketio-2node, confab-2node,
    /// confab-mongo, confab-base). `--compare-bin` adds confab-base before confab.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "relay,socketio,socketio-2node,confab,confab-2node,confab-mongo"
    )]
    systems: Vec<String>,
    /// Scenarios to run, comma-separated (fanout, pairs, idle).
    #[arg(long, value_delimiter = ',', default_value = "fanout,pairs,idle")]
    scenarios: Vec<String>,
    /// Modes to run, comma-separated (closed, steady, senders, open, idle; see BENCHMARKS.md).
    #[arg(long, value_delimiter = ',', default_value = "closed,steady,senders,open,idle")]
    modes: Vec<String>,
    /// Fan-out group sizes (default: 500,5000; quick: 50).
    #[arg(long, value_delimiter = ',')]
    fanout_sizes: Option<Vec<usize>>,
    /// Fan-out messages in flight in the `closed` and `steady` loops (default: `closed` 16,000
    /// deliveries' worth, 4 to 64 messages; `steady` 1). `senders` keeps one per sender.
    #[arg(long)]
    fanout_window: Option<usize>,
    /// Numbers of pairs (default: 500; quick: 25).
    #[arg(long, value_delimiter = ',')]
    pairs_sizes: Option<Vec<usize>>,
    /// Idle connection counts (default: 10000,100000; quick: 300).
    #[arg(long, value_delimiter = ',')]
    idle_sizes: Option<Vec<usize>>,
    /// Seconds of measurement per messaging run (default 15; quick 1.5).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before measuring (default 3; quick 0.5).
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds given, after sending stops, for messages in flight (default 5; quick 2).
    #[arg(long)]
    drain: Option<f64>,
    /// Before each run, wait up to this many seconds for other processes to go quiet.
    #[arg(long, default_value_t = 0.0)]
    wait_quiet: f64,
    /// Generator threads (1 = single-threaded, about one core).
    #[arg(long, default_value_t = 1)]
    gen_threads: usize,
    /// Where to write one JSON object per run.
    #[arg(long, default_value = "target/bench/results.jsonl")]
    out: PathBuf,
    /// The confab server binary (default: next to this one).
    #[arg(long)]
    confab_bin: Option<PathBuf>,
    /// Another confab build, run as system `confab-base` beside `confab` (every ratio of confab
    /// against it is then measured in this invocation). `scripts/bench --compare REV` builds one.
    #[arg(long)]
    compare_bin: Option<PathBuf>,
    /// The relay binary (default: next to this one).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// The socket.io peer (server.js and its node_modules).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/socketio"))]
    socketio_dir: PathBuf,
    #[arg(long, default_value = "node")]
    node: String,
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// MongoDB for `confab-2node` (a database of its own is used per run). Without it, the
    /// `nx-27017` emulator is started for each run.
    #[arg(long)]
    mongodb_uri: Option<String>,
    /// The `nx-27017` MongoDB emulator (scripts/bench installs it into .test-env/venv).
    #[arg(long, default_value = ".test-env/venv/bin/nx-27017")]
    nx_27017: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let exe_dir =
        std::env::current_exe()?.parent().map(PathBuf::from).ok_or_else(|| anyhow!("no executable directory"))?;
    let mut systems = cli
        .systems
        .iter()
        .map(|s| System::parse(s).ok_or_else(|| anyhow!("unknown system {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    if cli.compare_bin.is_some() && !systems.contains(&System::ConfabBase) {
        let at = systems.iter().position(|&s| s == System::Confab).unwrap_or(systems.len());
        systems.insert(at, System::ConfabBase);
    }
    let scenarios = cli
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s).ok_or_else(|| anyhow!("unknown scenario {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let modes = cli
        .modes
        .iter()
        .map(|s| Mode::parse(s).ok_or_else(|| anyhow!("unknown mode {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut plan = if cli.quick { Plan::quick() } else { Plan::full() };
    if let Some(v) = cli.fanout_sizes {
        plan.fanout_sizes = v;
    }
    if let Some(w) = cli.fanout_window {
        plan.fanout_window = Some(w.max(1));
    }
    if let Some(v) = cli.pairs_sizes {
        plan.pairs_sizes = v;
    }
    if let Some(v) = cli.idle_sizes {
        plan.idle_sizes = v;
    }
    let secs = |s: f64| Duration::try_from_secs_f64(s).context("durations are positive seconds");
    if let Some(d) = cli.duration {
        plan.duration = secs(d)?;
    }
    if let Some(w) = cli.warmup {
        plan.warmup = secs(w)?;
    }
    if let Some(d) = cli.drain {
        plan.drain = secs(d)?;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let env = Env {
        confab_bin: cli.confab_bin.unwrap_or_else(|| exe_dir.join("confab")),
        compare_bin: cli.compare_bin,
        relay_bin: cli.relay_bin.unwrap_or_else(|| exe_dir.join("confab-relay")),
        socketio_dir: cli.socketio_dir,
        node: cli.node,
        redis_server: cli.redis_server,
        work_dir: cli.out.parent().map(|p| p.join("logs")).unwrap_or_else(|| PathBuf::from("logs")),
        secret: format!("confab-bench-{}-{nanos:09}", std::process::id()),
        mongodb_uri: cli.mongodb_uri,
        nx_27017: cli.nx_27017,
    };
    let opts = Options {
        quick: cli.quick,
        plan,
        systems,
        scenarios,
        modes,
        out: cli.out,
        env,
        wait_quiet: secs(cli.wait_quiet)?,
        gen_threads: cli.gen_threads,
    };
    suite::run_suite(&opts)
}
