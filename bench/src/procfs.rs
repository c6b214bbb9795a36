//! Readings from `/proc`: a process's CPU time and memory, every other process's CPU time, the
//! machine's load, and
//! this process's open-file limit. Everything is plain text parsing; a missing process reads as
//! zero so a server that died mid-run shows up as an error elsewhere, not as a panic here.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Clock ticks per second for `/proc/*/stat` (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU ticks of `pid` from `/proc/<pid>/stat`: (utime + stime, cutime + cstime: its reaped
/// children's).
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((ticks(11) + ticks(12), ticks(13) + ticks(14)))
}

/// User + system CPU seconds used so far by process `pid` (all its threads).
pub fn cpu_secs(pid: u32) -> f64 {
    cpu_ticks(pid).map_or(0.0, |(own, _)| own as f64 / clk_tck())
}

/// CPU ticks used so far by every process but `exclude` (all their threads, kernel threads
/// included), with what each has reaped of its children (so a compiler that ran and exited
/// between two readings still counts, through its parent): pid -> ticks.
pub fn others_ticks(exclude: &[u32]) -> HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return HashMap::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !exclude.contains(pid))
        .filter_map(|pid| cpu_ticks(pid).map(|(own, reaped)| (pid, own + reaped)))
        .collect()
}

/// Cores used by other processes between two [`others_ticks`] readings `wall_s` apart: the sum
/// of each process's growth (a process new in `b` counts whole: it started in between).
pub fn others_cores(a: &HashMap<u32, u64>, b: &HashMap<u32, u64>, wall_s: f64) -> f64 {
    let ticks: u64 = b.iter().map(|(pid, &t)| t.saturating_sub(a.get(pid).copied().unwrap_or(0))).sum();
    ticks as f64 / clk_tck() / wall_s.max(1e-9)
}

/// Resident memory of `pid`: (current VmRSS, peak VmHWM) in KiB.
pub fn mem_kib(pid: u32) -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return (0, 0) };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// This process's soft limit on open files (children inherit it).
pub fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What the machine is: for the report.
pub fn machine_info() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "nofile_limit": nofile_limit(),
    })
}

/// A snapshot of CPU counters, to take at both ends of a measured window.
#[derive(Debug, Clone, Default)]
pub struct CpuSnap {
    pub server: f64,
    pub generator: f64,
    /// Every other process's ticks ([`others_ticks`]).
    pub others: HashMap<u32, u64>,
}

impl CpuSnap {
    pub fn take(server_pids: &[u32]) -> CpuSnap {
        let me = std::process::id();
        let exclude: Vec<u32> = server_pids.iter().copied().chain([me]).collect();
        CpuSnap {
            server: server_pids.iter().map(|&p| cpu_secs(p)).sum(),
            generator: cpu_secs(me),
            others: others_ticks(&exclude),
        }
    }
}

/// CPU use between two snapshots, and how busy the rest of the machine was.
#[derive(Debug, Clone, Copy)]
pub struct CpuDelta {
    pub server_s: f64,
    pub generator_s: f64,
    /// Cores used by every other process on the machine (other engineers' builds, kernel
    /// threads…), summed per process: not the machine's total minus ours, which under wake-up
    /// heavy loads mis-attributes interrupt time and can come out negative.
    pub others_cores: f64,
}

impl CpuDelta {
    pub fn between(a: &CpuSnap, b: &CpuSnap, wall_s: f64) -> CpuDelta {
        CpuDelta {
            server_s: (b.server - a.server).max(0.0),
            generator_s: (b.generator - a.generator).max(0.0),
            others_cores: others_cores(&a.others, &b.others, wall_s),
        }
    }
}

/// Sum of (VmRSS, VmHWM) over processes, KiB.
pub fn mem_sum_kib(pids: &[u32]) -> (u64, u64) {
    pids.iter().map(|&p| mem_kib(p)).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let (rss, hwm) = super::mem_kib(std::process::id());
        assert!(rss > 0 && hwm >= rss);
        assert!(super::nofile_limit().is_some());
    }

    #[test]
    fn counts_a_busy_child() {
        let me = std::process::id();
        let a = super::others_ticks(&[me]);
        let t0 = std::time::Instant::now();
        // A child that burns about half a second of CPU and exits (reaped by us: counted
        // through its own entry while alive, or not at all once gone, since we are excluded).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = super::others_ticks(&[me]);
        let cores = super::others_cores(&a, &b, t0.elapsed().as_secs_f64());
        let _ = child.kill();
        let _ = child.wait();
        assert!(cores > 0.05, "a spinning child shows as busy: {cores}");
    }
}
