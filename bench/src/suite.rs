//! A whole benchmark: every case against every system, one fresh server per run, results
//! appended to `results.jsonl` case by case (each case's lines carry its `ratio` section), then
//! the targets and a table.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::case::{Case, Mode, Plan, Scenario};
use crate::procfs;
use crate::report;
use crate::run::{self, Target, BUSY_CORES};
use crate::systems::{self, Env, System, Tuning};

pub struct Options {
    pub quick: bool,
    pub plan: Plan,
    pub systems: Vec<System>,
    pub scenarios: Vec<Scenario>,
    pub modes: Vec<Mode>,
    pub out: PathBuf,
    pub env: Env,
    /// Before each run, wait up to this long for the machine to be quiet.
    pub wait_quiet: Duration,
    /// Generator threads (1: a single-threaded runtime, about one core).
    pub gen_threads: usize,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Cores the rest of the machine uses (summed per process), sampled over `d` while nothing of
/// ours runs.
fn others_now(d: Duration) -> f64 {
    let me = [std::process::id()];
    let a = procfs::others_ticks(&me);
    std::thread::sleep(d);
    procfs::others_cores(&a, &procfs::others_ticks(&me), d.as_secs_f64())
}

fn wait_quiet(limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let others = others_now(Duration::from_millis(500));
        if others < BUSY_CORES || start.elapsed() >= limit {
            return others;
        }
        eprintln!("  machine busy ({others:.2} cores used by others); waiting…");
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
}

/// Why a case is not run on a system, if it is not.
fn skipped(opts: &Options, case: &Case, system: System) -> Option<&'static str> {
    let emulated = matches!(system, System::Confab2 | System::ConfabMongo) && opts.env.mongodb_uri.is_none();
    (emulated && case.scenario == Scenario::Fanout && case.size > 1000).then_some(
        "the nx-27017 emulator cannot store a group this large within confab's 10 s store timeout; \
         run with --mongodb-uri",
    )
}

/// One run: start `system`, run `case`, stop it. Failures become a result line with `error`.
fn run_one(opts: &Options, case: &Case, system: System, n: usize) -> Value {
    let others_before = if opts.wait_quiet > Duration::ZERO { Some(wait_quiet(opts.wait_quiet)) } else { None };
    let loadavg_before = procfs::loadavg();
    let tag = format!("{n:02}-{}-{}", case.key().replace('/', "-"), system.name());
    let mut line = json!({
        "ts": now_unix(),
        "case": case.key(),
        "scenario": case.scenario.name(),
        "system": system.name(),
        "mode": case.mode.name(),
        "size": case.size,
        "requested_size": case.requested,
        "capped_by": case.capped_by,
        "quick": opts.quick,
    });
    if let Some(why) = skipped(opts, case, system) {
        if let Some(o) = line.as_object_mut() {
            o.insert("skipped".into(), json!(why));
        }
        return line;
    }
    let result = (|| {
        let tuning = Tuning { max_members: if case.scenario == Scenario::Fanout { case.size } else { 0 } };
        let mut running = systems::start(system, &opts.env, tuning, &tag)?;
        let rt = runtime(opts.gen_threads)?;
        let target = Target { addrs: &running.addrs, pids: &running.pids, dialect: &running.dialect };
        let res = rt.block_on(run::run_case(case, &target));
        // Dropping the runtime closes every client before the server goes.
        drop(rt);
        let dead = running.dead();
        match res {
            Ok(v) if dead.is_empty() => Ok(v),
            Ok(_) => anyhow::bail!("server died: {}", dead.join("; ")),
            Err(e) if !dead.is_empty() => Err(e.context(format!("server died: {}", dead.join("; ")))),
            Err(e) => Err(e),
        }
    })();
    let obj = line.as_object_mut();
    match (result, obj) {
        (Ok(Value::Object(m)), Some(o)) => o.extend(m),
        (Err(e), Some(o)) => {
            o.insert("error".into(), json!(format!("{e:#}")));
        }
        _ => {}
    }
    let others = line["others_cores"].as_f64();
    line["load"] = json!({
        "loadavg_before": loadavg_before,
        "loadavg_after": procfs::loadavg(),
        "others_cores_before": others_before.map(|o| (o * 1000.0).round() / 1000.0),
        "others_cores_during": others,
    });
    line["busy"] = json!(others.is_some_and(|o| o >= BUSY_CORES) || others_before.is_some_and(|o| o >= BUSY_CORES));
    line
}

fn short(l: &Value) -> String {
    if let Some(e) = l.get("error").and_then(Value::as_str) {
        return format!("ERROR {e}");
    }
    if let Some(why) = l.get("skipped").and_then(Value::as_str) {
        return format!("skipped: {why}");
    }
    let f = |k: &str| l.get(k).and_then(Value::as_f64).map(|x| format!("{x}")).unwrap_or_else(|| "-".into());
    if l["mode"] == "idle" {
        format!(
            "conns={} KiB/conn={} cores={} others={}",
            f("conns"),
            f("kib_per_conn"),
            f("server_cores"),
            f("others_cores")
        )
    } else {
        format!(
            "deliv/s={} deliv/cpu-s={} p50={}ms p99={}ms cores={} others={} lost={} errors={}",
            f("deliveries_per_s"),
            f("deliveries_per_cpu_s"),
            f("p50_ms"),
            f("p99_ms"),
            f("server_cores"),
            f("others_cores"),
            f("lost"),
            f("errors")
        )
    }
}

pub fn run_suite(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::fs::File::create(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let machine = procfs::machine_info();
    let mut cases = opts.plan.cases(&opts.scenarios, procfs::nofile_limit());
    cases.retain(|c| opts.modes.contains(&c.mode));
    eprintln!(
        "confab-bench: {} cases x {} systems{}; machine {machine}",
        cases.len(),
        opts.systems.len(),
        if opts.quick { " (quick)" } else { "" }
    );
    let mut all = Vec::new();
    let mut n = 0;
    for case in &cases {
        let mut lines = Vec::new();
        for &system in &opts.systems {
            n += 1;
            eprint!("[{:>5.1}s] {:<22} {:<15} ", started.elapsed().as_secs_f64(), case.key(), system.name());
            let _ = std::io::stderr().flush();
            let line = run_one(opts, case, system, n);
            eprintln!("{}", short(&line));
            lines.push(line);
        }
        report::add_ratios(&mut lines);
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        all.extend(lines);
    }
    let first = |v: &[usize]| v.first().copied().unwrap_or(0);
    let idle_big = opts.plan.idle_sizes.iter().copied().max().unwrap_or(0);
    let targets = report::targets(
        &all,
        first(&opts.plan.fanout_sizes),
        opts.plan.fanout_sizes.iter().copied().max().unwrap_or(0),
        first(&opts.plan.pairs_sizes),
        first(&opts.plan.idle_sizes),
        idle_big,
    );
    let summary = json!({
        "ts": now_unix(),
        "quick": opts.quick,
        "machine": machine,
        "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "results": opts.out,
        "targets": targets,
    });
    // results.jsonl -> summary.json; other names (subsets, profiles) get their own summary.
    let summary_path = match opts.out.file_stem().and_then(|s| s.to_str()) {
        Some("results") | None => opts.out.with_file_name("summary.json"),
        Some(stem) => opts.out.with_file_name(format!("{stem}.summary.json")),
    };
    std::fs::write(&summary_path, format!("{summary:#}\n"))?;
    println!("\n{}", report::table(&all));
    println!("targets{}:", if opts.quick { " (quick sizes: not the issue's, only a smoke test)" } else { "" });
    println!("{}", report::targets_table(&targets));
    println!(
        "results: {}  summary: {}  ({:.0} s)",
        opts.out.display(),
        summary_path.display(),
        started.elapsed().as_secs_f64()
    );
    if all.iter().any(|l| l.get("error").is_some()) {
        anyhow::bail!("some runs failed (see `error` in {})", opts.out.display());
    }
    Ok(())
}
